//! Checkpoints in a JetStream key-value bucket (`[checkpoints] backend =
//! "nats"`), shared by every instance of a cluster.

use std::time::Duration;

use crate::nats::{connect, key_for, open_bucket, KV_TIMEOUT};

/// Checkpoints in a JetStream key-value bucket: the value of key
/// `<stream>` (see [`key_for`]) is the same JSON the local backend writes.
#[derive(Clone)]
pub struct KvCheckpoints {
    store: async_nats::jetstream::kv::Store,
    bucket: String,
    /// Saves run on blocking threads (the checkpoint writer's); they drive the
    /// request on the runtime through this handle.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for KvCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvCheckpoints({})", self.bucket)
    }
}

impl KvCheckpoints {
    pub async fn open(config: &crate::config::NatsCheckpointConfig) -> Result<Self, String> {
        let client = connect(
            &config.connection,
            "sse-relay checkpoints",
            Duration::from_secs(5),
        )
        .await?;
        let store = open_bucket(&client, &config.bucket, Duration::ZERO).await?;
        Ok(KvCheckpoints {
            store,
            bucket: config.bucket.clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Where a stream's checkpoint lives, for messages.
    pub fn describe(&self, stream: &str) -> String {
        format!("nats kv {}/{}", self.bucket, key_for(stream))
    }

    /// The stored JSON of `stream`'s checkpoint, if any.
    pub async fn load(&self, stream: &str) -> Result<Option<Vec<u8>>, String> {
        let got = tokio::time::timeout(KV_TIMEOUT, self.store.get(key_for(stream))).await;
        match got {
            Err(_) => Err(format!(
                "no answer from NATS within {}",
                humantime::format_duration(KV_TIMEOUT)
            )),
            Ok(Err(e)) => Err(format!("cannot be read: {e}")),
            Ok(Ok(value)) => Ok(value.map(|v| v.to_vec())),
        }
    }

    /// Stores `json` as `stream`'s checkpoint. Blocks: call it from a
    /// blocking thread, never from an async task.
    pub fn save_blocking(&self, stream: &str, json: Vec<u8>) -> std::io::Result<()> {
        let key = key_for(stream);
        let put = self.store.put(key, json.into());
        match self
            .runtime
            .block_on(async { tokio::time::timeout(KV_TIMEOUT, put).await })
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(_) => Err(std::io::Error::other("no answer from NATS")),
        }
    }
}
