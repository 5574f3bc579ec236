//! Per-stream resume points, and the writer that saves them.
//!
//! Two back ends keep them side by side: [`local`] (the default) has one small
//! JSON file per stream, `<data_dir>/checkpoints/<stream>.json`, and
//! [`nats_kv`] a key per stream in a JetStream key-value bucket every instance
//! can read. Both store the same record:
//!
//! ```text
//! {"stream":"wiki","last_event_id":"12345","saved_at":"2026-11-25T23:36:07Z"}
//! ```
//!
//! A file is replaced atomically: the new content goes to a temporary file that
//! is fsynced, renamed over the old one, and the directory is fsynced, so after a
//! crash or power loss the file holds either the old checkpoint or the new one,
//! never a mix. A file that exists but cannot be read or understood stops the
//! daemon with an error naming it: silently starting over could skip events.
//!
//! [`CheckpointBackend`] puts both behind one interface.

pub mod local;
pub mod nats_kv;

pub use local::CheckpointStore;
pub use nats_kv::KvCheckpoints;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Why a checkpoint could not be read or written.
#[derive(Debug)]
pub struct CheckpointError {
    pub path: PathBuf,
    pub problem: String,
    pub help: String,
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "error: checkpoint {}: {}\n  = help: {}",
            self.path.display(),
            self.problem,
            self.help
        )
    }
}

impl std::error::Error for CheckpointError {}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    stream: String,
    last_event_id: String,
    #[serde(default)]
    saved_at: Option<String>,
}

/// The checkpoint record of `stream`, as stored by every backend.
pub(crate) fn encode(stream: &str, last_event_id: &str) -> io::Result<Vec<u8>> {
    let record = CheckpointFile {
        stream: stream.to_owned(),
        last_event_id: last_event_id.to_owned(),
        saved_at: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
    };
    let mut bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The last event id in a stored record, refusing one that is corrupt or
/// belongs to another stream.
pub(crate) fn decode(
    stream: &str,
    bytes: &[u8],
    path: PathBuf,
    way_out: String,
) -> Result<String, CheckpointError> {
    let file: CheckpointFile = serde_json::from_slice(bytes).map_err(|e| CheckpointError {
        path: path.clone(),
        problem: format!("is corrupt: {e}"),
        help: way_out.clone(),
    })?;
    if file.stream != stream {
        return Err(CheckpointError {
            path,
            problem: format!("belongs to stream `{}`, not `{stream}`", file.stream),
            help: way_out,
        });
    }
    Ok(file.last_event_id)
}

/// Where checkpoints are kept: the state directory, or a JetStream key-value
/// bucket every instance can read.
#[derive(Debug, Clone)]
pub enum CheckpointBackend {
    Local(CheckpointStore),
    /// Boxed: a key-value handle is large, and cloned once per save round.
    Nats(Box<KvCheckpoints>),
}

impl CheckpointBackend {
    /// The saved last event id of `stream`, or `None` if it has none yet.
    pub async fn load(&self, stream: &str) -> Result<Option<String>, CheckpointError> {
        match self {
            CheckpointBackend::Local(store) => store.load(stream),
            CheckpointBackend::Nats(kv) => {
                let path = PathBuf::from(kv.describe(stream));
                let bytes = kv.load(stream).await.map_err(|problem| CheckpointError {
                    path: path.clone(),
                    problem,
                    help: "check that the NATS server is reachable and JetStream enabled".into(),
                })?;
                let Some(bytes) = bytes else {
                    return Ok(None);
                };
                let way_out = format!(
                    "put a valid record ({{\"stream\":\"{stream}\",\"last_event_id\":\"<id>\"}}) with \
                     `nats kv put`, or delete the key to start from `initial_last_event_id` (events \
                     since the last checkpoint may then be missed)"
                );
                decode(stream, &bytes, path, way_out).map(Some)
            }
        }
    }

    /// Saves `stream`'s checkpoint. Blocks (fsync, or a NATS round trip):
    /// call it from a blocking thread.
    pub fn save_blocking(&self, stream: &str, last_event_id: &str) -> io::Result<()> {
        match self {
            CheckpointBackend::Local(store) => store.save(stream, last_event_id),
            CheckpointBackend::Nats(kv) => kv.save_blocking(stream, encode(stream, last_event_id)?),
        }
    }

    /// Where `stream`'s checkpoint lives, for messages.
    pub fn describe(&self, stream: &str) -> String {
        match self {
            CheckpointBackend::Local(store) => store.path(stream).display().to_string(),
            CheckpointBackend::Nats(kv) => kv.describe(stream),
        }
    }
}

/// One stream's checkpoint as the writer tracks it.
pub struct Tracked {
    pub stream: String,
    pub tracker: Arc<crate::ack::AckTracker>,
    /// What is on disk now.
    pub saved: Arc<str>,
    /// Set to the Unix time of each save, for the checkpoint-age metric.
    pub saved_at: crate::metrics::SecondsGauge,
    /// Counts failed saves (`sse_relay_checkpoint_save_errors_total`).
    pub save_errors: prometheus_client::metrics::counter::Counter,
    /// Set while the latest save failed, for `/health`.
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Tracked {
    /// Saves the tracker's checkpoint if it moved. Errors are logged, not fatal:
    /// the next round tries again, and an old checkpoint only means replays.
    pub fn flush(&mut self, store: &CheckpointBackend) {
        // Before the checkpoint is read: an update after this lists the
        // stream for the next round.
        self.tracker.unlist();
        let current = self.tracker.checkpoint();
        if *current == *self.saved {
            return;
        }
        match store.save_blocking(&self.stream, &current) {
            Ok(()) => {
                self.saved = current;
                self.saved_at.set(crate::metrics::unix_now());
                self.failing
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                self.save_errors.inc();
                self.tracker.list();
                self.failing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    stream = %self.stream,
                    "cannot save checkpoint to {}: {e}; retrying at the next interval",
                    store.describe(&self.stream)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::{AckTracker, ChangeList};
    use std::path::Path;

    fn tracked(tracker: &Arc<AckTracker>) -> Tracked {
        Tracked {
            stream: "s".to_owned(),
            tracker: tracker.clone(),
            saved: Arc::from(""),
            saved_at: Default::default(),
            save_errors: Default::default(),
            failing: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_moved_checkpoint_is_saved_once_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointBackend::Local(CheckpointStore::open(dir.path()).unwrap());
        assert_eq!(store.load("s").await.unwrap(), None);
        let tracker = Arc::new(AckTracker::new(1, ""));
        let mut entry = tracked(&tracker);
        let seq = tracker.dispatched_many(1, "41", &[(0, 0)]);
        entry.flush(&store);
        assert_eq!(store.load("s").await.unwrap(), None, "not acknowledged yet");
        tracker.acknowledge(0, seq, "41");
        entry.flush(&store);
        assert_eq!(store.load("s").await.unwrap().as_deref(), Some("41"));
        assert_eq!(&*entry.saved, "41");
        assert!(entry.saved_at.get() > 0.0);
        // Unchanged: not written again (the file's removal shows it).
        let path = store.describe("s");
        assert!(path.ends_with("checkpoints/s.json"), "{path}");
        std::fs::remove_file(&path).unwrap();
        entry.flush(&store);
        assert!(
            !Path::new(&path).exists(),
            "an unchanged checkpoint is not rewritten"
        );
    }

    #[tokio::test]
    async fn a_failing_save_is_counted_flagged_and_listed_again_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointBackend::Local(CheckpointStore::open(dir.path()).unwrap());
        let list = Arc::new(ChangeList::default());
        let tracker =
            Arc::new(AckTracker::new(0, "").listing_changes(list.clone(), Arc::from("s")));
        tracker.dispatched_many(1, "7", &[]);
        let mut entry = tracked(&tracker);
        assert_eq!(list.take().len(), 1);
        // A directory where the file goes: the rename into place fails.
        std::fs::create_dir_all(dir.path().join("checkpoints/s.json/x")).unwrap();
        entry.flush(&store);
        assert_eq!(entry.save_errors.get(), 1);
        assert!(entry.failing.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(&*entry.saved, "", "nothing saved");
        assert_eq!(list.take().len(), 1, "tried again next round");
        std::fs::remove_dir_all(dir.path().join("checkpoints/s.json")).unwrap();
        entry.flush(&store);
        assert!(!entry.failing.load(std::sync::atomic::Ordering::Relaxed));
        assert_eq!(store.load("s").await.unwrap().as_deref(), Some("7"));
        assert!(
            list.take().is_empty(),
            "saved: nothing to do until it moves"
        );
        tracker.observe_id("8");
        assert_eq!(list.take().len(), 1, "a look unlists it");
    }
}
