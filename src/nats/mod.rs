//! Connections to NATS, shared by the `nats` sink, the NATS checkpoint
//! backend and `[cluster]` leases.
//!
//! The client reconnects by itself after the first connection (forever, with
//! the backoff given here); the first connection is tried once per call so the
//! caller decides how to wait (the sink runner's retry, the supervisor's
//! start-up error). Credentials go to the client only: nothing here formats a
//! token, password or credentials file's content into a message, and URLs are
//! shown without their user-info part.

use std::time::Duration;

use async_nats::{Client, ConnectOptions};

pub mod config;

use crate::http::redact::redact_url_text;
pub use config::NatsConnection;

/// The configured servers as logs may show them.
pub fn shown_urls(connection: &NatsConnection) -> String {
    connection
        .urls
        .iter()
        .map(|u| redact_url_text(u))
        .collect::<Vec<_>>()
        .join(",")
}

/// Connects once (no retry of the first connection); later disconnections are
/// retried by the client with exponential backoff up to `backoff_max`.
pub async fn connect(
    connection: &NatsConnection,
    client_name: &str,
    backoff_max: Duration,
) -> Result<Client, String> {
    let mut options = ConnectOptions::new()
        .name(client_name)
        .connection_timeout(connection.connect_timeout)
        .reconnect_delay_callback(move |attempts| {
            // 0, 50 ms, 100 ms, ... doubling to backoff_max: a server restart is
            // noticed within a second, a long outage costs little.
            if attempts <= 1 {
                return Duration::ZERO;
            }
            let ms = 50u64.saturating_mul(1 << attempts.min(16));
            Duration::from_millis(ms).min(backoff_max)
        });
    if let Some(token) = &connection.token {
        let token = String::from_utf8_lossy(token.expose()).into_owned();
        options = options.token(token);
    }
    if let (Some(user), Some(password)) = (&connection.user, &connection.password) {
        let password = String::from_utf8_lossy(password.expose()).into_owned();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(path) = &connection.credentials_file {
        options = options.credentials_file(path).await.map_err(|e| {
            // The io error names the problem, not the file's content.
            format!("cannot read credentials_file {}: {e}", path.display())
        })?;
    }
    if connection.tls_required {
        options = options.require_tls(true);
    }
    if let Some(ca_file) = &connection.ca_file {
        options = options.add_root_certificates(ca_file.clone());
    }
    let addrs: Vec<async_nats::ServerAddr> = connection
        .urls
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("invalid NATS url {}: {e}", redact_url_text(u)))
        })
        .collect::<Result<_, _>>()?;
    options
        .connect(addrs.as_slice())
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", shown_urls(connection)))
}

/// A stream name as a key-value key: stream names may hold `.` (a key token
/// separator, and not allowed at a key's end); `=` never appears in them, so
/// `=2E` stands for it unambiguously.
pub fn key_for(stream: &str) -> String {
    stream.replace('.', "=2E")
}

/// How long one key-value request may take before it counts as failed.
pub const KV_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the key-value bucket `bucket`, creating it (one value per key, file
/// storage) if it does not exist. `max_age` expires keys not written for that
/// long (zero: never).
pub async fn open_bucket(
    client: &Client,
    bucket: &str,
    max_age: Duration,
) -> Result<async_nats::jetstream::kv::Store, String> {
    let context = async_nats::jetstream::new(client.clone());
    match context.get_key_value(bucket).await {
        Ok(store) => {
            let status = store
                .status()
                .await
                .map_err(|e| format!("cannot read key-value bucket `{bucket}`: {e}"))?;
            let actual = status.info.config.max_age;
            if actual != max_age {
                return Err(format!(
                    "key-value bucket `{bucket}` exists with max_age {} where {} is needed                      (lease_ttl must be the same on every instance); fix the configuration,                      or delete the bucket when no instance runs",
                    humantime::format_duration(actual),
                    humantime::format_duration(max_age)
                ));
            }
            Ok(store)
        }
        Err(_) => {
            // The stream a key-value bucket is, made directly: the client's
            // `create_key_value` first asks for account information in a form
            // nats-server 2.9 does not answer.
            let config = async_nats::jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: async_nats::jetstream::stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                num_replicas: 1,
                ..Default::default()
            };
            if let Err(create) = context.get_or_create_stream(config).await {
                return Err(format!(
                    "cannot create key-value bucket `{bucket}` (is JetStream enabled?): {create}"
                ));
            }
            context
                .get_key_value(bucket)
                .await
                .map_err(|e| format!("cannot open key-value bucket `{bucket}`: {e}"))
        }
    }
}
