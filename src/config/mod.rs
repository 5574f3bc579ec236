//! The TOML configuration: schema, `${VAR}` expansion and validation.
//!
//! Loading happens in two steps. `serde` + `toml` turn the text into the raw
//! schema below (unknown keys, missing keys, wrong types and bad durations are
//! caught here, with their position). Then [`Config::from_raw`] checks what a
//! schema cannot express (a sink input naming no stream, an unset `${VAR}`, a key
//! that does not fit the sink's type) and builds the validated [`Config`] the rest
//! of the program uses. Every error names the file, line, column and key.

// A config error is built once, on the way to exiting; boxing it to keep
// `Result` small would buy nothing.
#![allow(clippy::result_large_err)]

mod env;
mod error;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use toml::Spanned;

pub use env::{expand, ExpandError};
pub use error::ConfigError;

use crate::sse::Limits;

/// The largest `queue_size` (events; the queue's bytes are bounded too).
pub const MAX_QUEUE_SIZE: usize = 1 << 20;
/// Bounds of `max_line_bytes` and `max_event_bytes`.
pub const MIN_LIMIT_BYTES: usize = 16;
pub const MAX_LIMIT_BYTES: usize = 1 << 30;
/// The largest `max_redirects`.
pub const MAX_REDIRECTS: usize = 50;
/// The longest stream or sink name: names become file names.
pub const MAX_NAME_BYTES: usize = 128;

/// Default `queue_size`: events queued per sink. Large enough that it is the
/// sink's byte budget (2 MiB) that bounds a queue of small events, so reading
/// and writing overlap in big batches; 1,024 held a stream of 70-byte events
/// to short batches and many hand-offs.
pub const DEFAULT_QUEUE_SIZE: usize = 16_384;

/// Where `run` and `check` look for the configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sse-relay/sse-relay.toml";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The state directory: checkpoints live here.
    pub data_dir: PathBuf,
    pub checkpoint_interval: Duration,
    pub shutdown_timeout: Duration,
    pub streams: BTreeMap<String, StreamConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub metrics: Option<MetricsConfig>,
    /// Where checkpoints are kept: the state directory unless `[checkpoints]`
    /// says `backend = "nats"`.
    pub checkpoints: CheckpointBackendConfig,
    /// `[cluster]`: several instances split the streams through leases.
    pub cluster: Option<ClusterConfig>,
}

/// The `[checkpoints]` table.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CheckpointBackendConfig {
    /// `<data_dir>/checkpoints/<stream>.json` (the default).
    #[default]
    Local,
    /// One key per stream in a JetStream key-value bucket.
    Nats(NatsCheckpointConfig),
}

/// `[checkpoints] backend = "nats"`.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsCheckpointConfig {
    pub connection: NatsConnection,
    /// The key-value bucket, created if missing.
    pub bucket: String,
}

/// The `[cluster]` table: stream leases in a JetStream key-value bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Unique among the instances sharing `bucket`.
    pub instance_id: String,
    /// How long a lease lives without renewal; every instance must use the same.
    pub lease_ttl: Duration,
    /// The key-value bucket of leases and heartbeats (its `max_age` is `lease_ttl`).
    pub bucket: String,
}

/// How to reach a NATS server: used by `nats` sinks and by the NATS
/// checkpoint backend (and so by `[cluster]`).
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConnection {
    /// `nats://host:port` or `tls://host:port`, one or more (a cluster's seeds).
    pub urls: Vec<String>,
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A `.creds` file (JWT + NKey seed), as `nsc` writes them.
    pub credentials_file: Option<PathBuf>,
    pub tls_required: bool,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

/// A `type = "nats"` sink: records published to JetStream.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSinkConfig {
    pub connection: NatsConnection,
    /// A subject template with `{stream}` and `{event}` placeholders.
    pub subject: String,
    /// The JetStream stream expected to take the subjects (checked through
    /// the `Nats-Expected-Stream` header), if named.
    pub stream: Option<String>,
    /// Create `stream` if it does not exist.
    pub create_stream: bool,
    /// The stream's duplicate window when this sink creates it.
    pub duplicate_window: Duration,
    /// Publishes awaiting JetStream's ack at once.
    pub max_in_flight: usize,
    /// How long one publish waits for its ack before the batch is retried.
    pub ack_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// The `[metrics]` table: where `/metrics` and `/health` are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: std::net::SocketAddr,
}

/// One `[streams.NAME]` table. Its `Debug` output shows the URL as logs do
/// (see [`crate::http::redact_url`]), without credentials.
#[derive(Clone, PartialEq)]
pub struct StreamConfig {
    pub name: String,
    pub url: reqwest::Url,
    /// Extra request headers; values are marked sensitive so they never print.
    pub headers: HeaderMap,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// The largest server `retry:` honoured; larger values are clamped to it.
    pub retry_max: Duration,
    pub initial_last_event_id: Option<String>,
    pub limits: Limits,
    pub max_redirects: usize,
    pub http2: bool,
    pub ca_file: Option<PathBuf>,
    pub tls_insecure: bool,
    /// Follow redirects from `https` to plain `http` (credentials never go
    /// along); refused when false.
    pub allow_insecure_redirects: bool,
    /// Stop the stream for good after this many attempts in a row answered
    /// with a status in `give_up_statuses`; `None` retries forever.
    pub give_up_after: Option<u32>,
    pub give_up_statuses: Vec<u16>,
}

impl std::fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field, the URL redacted; header values are marked sensitive,
        // so `HeaderMap`'s own Debug hides them.
        f.debug_struct("StreamConfig")
            .field("name", &self.name)
            .field("url", &crate::http::redact_url(&self.url))
            .field("headers", &self.headers)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_max", &self.retry_max)
            .field("initial_last_event_id", &self.initial_last_event_id)
            .field("limits", &self.limits)
            .field("max_redirects", &self.max_redirects)
            .field("http2", &self.http2)
            .field("ca_file", &self.ca_file)
            .field("tls_insecure", &self.tls_insecure)
            .field("allow_insecure_redirects", &self.allow_insecure_redirects)
            .field("give_up_after", &self.give_up_after)
            .field("give_up_statuses", &self.give_up_statuses)
            .finish()
    }
}

/// The statuses `give_up_after` counts unless `give_up_statuses` says otherwise:
/// the ones that mean "not you" or "not here", which waiting does not fix.
pub const DEFAULT_GIVE_UP_STATUSES: [u16; 4] = [401, 403, 404, 410];

/// One `[sinks.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// The streams this sink takes; `None` means all (`inputs = ["*"]`).
    pub inputs: Option<Vec<String>>,
    /// Only events of these types reach the sink; `None` means every type.
    pub event_types: Option<Vec<String>>,
    /// The most events queued for the sink (its byte budget bounds memory too).
    pub queue_size: usize,
    pub when_full: WhenFull,
    pub encoding: Encoding,
}

impl SinkConfig {
    /// Whether events of `stream` are routed to this sink at all.
    pub fn takes_stream(&self, stream: &str) -> bool {
        self.inputs
            .as_ref()
            .is_none_or(|inputs| inputs.iter().any(|i| i == stream))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    Stdout,
    File {
        /// A path that may contain `{stream}`.
        path: String,
        fsync: FsyncPolicy,
        fsync_interval: Duration,
    },
    /// Boxed: it is several times the size of the others.
    Webhook(Box<WebhookConfig>),
    Nats(Box<NatsSinkConfig>),
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Stdout => "stdout",
            SinkKind::File { .. } => "file",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Nats(_) => "nats",
        }
    }
}

/// A `type = "webhook"` sink: batches of records sent as HTTP requests.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: reqwest::Url,
    pub method: reqwest::Method,
    /// Extra request headers; values are marked sensitive so they never print.
    pub headers: HeaderMap,
    /// The whole request, from connecting to reading the answer.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub tls_insecure: bool,
    pub batch: BatchConfig,
    pub compression: Option<Compression>,
    /// JSON-lines file for batches the receiver rejected for good (4xx).
    pub dead_letter_path: Option<PathBuf>,
    /// The HMAC-SHA256 signing key, if requests are signed.
    pub secret: Option<Secret>,
    /// Retry backoff bounds, as for streams.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` honoured; longer ones are clamped to it.
    pub retry_max: Duration,
}

/// When a webhook batch closes: at whichever limit comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_events: usize,
    /// The largest uncompressed request body; a single record larger than this
    /// is sent alone.
    pub max_bytes: usize,
    /// How long the first event of a batch waits for others.
    pub timeout: Duration,
}

/// Request body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    Gzip,
}

/// A secret from the configuration. It never prints: not in `Debug`, logs,
/// `check` output or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a sink does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The stream waits (and stops reading its socket): nothing is lost.
    Block,
    /// The event is dropped for this sink, counted and logged.
    DropNewest,
}

/// How the file sink makes writes durable before acknowledging them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Acknowledge once written to the operating system: survives a crash of the
    /// process, not of the machine.
    Never,
    /// fsync every `fsync_interval` and acknowledge what it covered: survives
    /// power loss, acknowledgements lag by up to the interval.
    Interval,
    /// fsync after every batch before acknowledging it.
    EveryBatch,
}

/// How records are written. stdout and file sinks take `json` and `data`;
/// webhook sinks take `json` and `ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One JSON object per line (see `record`); for a webhook, a JSON array of
    /// them per request.
    Json,
    /// The event's data only, one event per line.
    Data,
    /// One JSON object per line: the webhook's name for what `json` means to
    /// stdout and file sinks.
    Ndjson,
}

// ---------------------------------------------------------------------------
// The raw schema, exactly as the file spells it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "nonzero_duration")]
    checkpoint_interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    shutdown_timeout: Option<Duration>,
    #[serde(default)]
    streams: BTreeMap<String, Spanned<RawStream>>,
    #[serde(default)]
    sinks: BTreeMap<String, Spanned<RawSink>>,
    metrics: Option<RawMetrics>,
    checkpoints: Option<Spanned<RawCheckpoints>>,
    cluster: Option<Spanned<RawCluster>>,
}

/// The connection keys a NATS client takes, wherever they are written.
struct RawNatsKeys<'a> {
    url: &'a Option<Spanned<String>>,
    urls: &'a Option<Spanned<Vec<Spanned<String>>>>,
    token: &'a Option<Spanned<String>>,
    user: &'a Option<Spanned<String>>,
    password: &'a Option<Spanned<String>>,
    credentials_file: &'a Option<Spanned<String>>,
    tls_required: &'a Option<Spanned<bool>>,
    ca_file: &'a Option<Spanned<String>>,
    connect_timeout: &'a Option<Spanned<Duration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoints {
    backend: Spanned<String>,
    bucket: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    token: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
    tls_required: Option<Spanned<bool>>,
    ca_file: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    connect_timeout: Option<Spanned<Duration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    instance_id: Spanned<String>,
    #[serde(default, deserialize_with = "spanned_duration")]
    lease_ttl: Option<Spanned<Duration>>,
    bucket: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    url: Spanned<String>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default, deserialize_with = "duration")]
    backoff_initial: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    backoff_max: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "nonzero_duration")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    retry_max: Option<Duration>,
    initial_last_event_id: Option<Spanned<String>>,
    max_line_bytes: Option<Spanned<usize>>,
    max_event_bytes: Option<Spanned<usize>>,
    max_redirects: Option<Spanned<usize>>,
    http2: Option<bool>,
    ca_file: Option<Spanned<String>>,
    tls_insecure: Option<bool>,
    allow_insecure_redirects: Option<bool>,
    give_up_after: Option<Spanned<u32>>,
    give_up_statuses: Option<Spanned<Vec<u16>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    inputs: Spanned<Vec<Spanned<String>>>,
    event_types: Option<Spanned<Vec<String>>>,
    queue_size: Option<Spanned<usize>>,
    when_full: Option<WhenFull>,
    encoding: Option<Spanned<Encoding>>,
    path: Option<Spanned<String>>,
    fsync: Option<Spanned<FsyncPolicy>>,
    #[serde(default, deserialize_with = "nonzero_duration")]
    fsync_interval: Option<Duration>,
    // Webhook sinks only (checked in `Validator::sink`).
    url: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    timeout: Option<Spanned<Duration>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    connect_timeout: Option<Spanned<Duration>>,
    ca_file: Option<Spanned<String>>,
    tls_insecure: Option<Spanned<bool>>,
    batch: Option<Spanned<RawBatch>>,
    compression: Option<Spanned<Compression>>,
    dead_letter_path: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    backoff_initial: Option<Spanned<Duration>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    backoff_max: Option<Spanned<Duration>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    retry_max: Option<Spanned<Duration>>,
    // NATS sinks only (url, ca_file, connect_timeout and backoff_* are shared
    // with webhooks).
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    subject: Option<Spanned<String>>,
    stream: Option<Spanned<String>>,
    create_stream: Option<Spanned<bool>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    duplicate_window: Option<Spanned<Duration>>,
    max_in_flight: Option<Spanned<usize>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    ack_timeout: Option<Spanned<Duration>>,
    token: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
    tls_required: Option<Spanned<bool>>,
}

/// Keys both webhook and NATS sinks take.
const WEBHOOK_AND_NATS: &[&str] = &[
    "url",
    "ca_file",
    "connect_timeout",
    "backoff_initial",
    "backoff_max",
];

impl RawSink {
    /// The NATS-only keys present in the table, with where they are.
    fn nats_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        [
            ("urls", self.urls.as_ref().map(Spanned::span)),
            ("subject", self.subject.as_ref().map(Spanned::span)),
            ("stream", self.stream.as_ref().map(Spanned::span)),
            (
                "create_stream",
                self.create_stream.as_ref().map(Spanned::span),
            ),
            (
                "duplicate_window",
                self.duplicate_window.as_ref().map(Spanned::span),
            ),
            (
                "max_in_flight",
                self.max_in_flight.as_ref().map(Spanned::span),
            ),
            ("ack_timeout", self.ack_timeout.as_ref().map(Spanned::span)),
            ("token", self.token.as_ref().map(Spanned::span)),
            ("user", self.user.as_ref().map(Spanned::span)),
            ("password", self.password.as_ref().map(Spanned::span)),
            (
                "credentials_file",
                self.credentials_file.as_ref().map(Spanned::span),
            ),
            (
                "tls_required",
                self.tls_required.as_ref().map(Spanned::span),
            ),
        ]
        .into_iter()
        .filter_map(|(key, span)| Some((key, span?)))
        .collect()
    }

    /// The webhook-only keys present in the table, with where they are.
    fn webhook_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        [
            ("url", self.url.as_ref().map(Spanned::span)),
            ("method", self.method.as_ref().map(Spanned::span)),
            ("headers", self.headers.as_ref().map(Spanned::span)),
            ("timeout", self.timeout.as_ref().map(Spanned::span)),
            (
                "connect_timeout",
                self.connect_timeout.as_ref().map(Spanned::span),
            ),
            ("ca_file", self.ca_file.as_ref().map(Spanned::span)),
            (
                "tls_insecure",
                self.tls_insecure.as_ref().map(Spanned::span),
            ),
            ("batch", self.batch.as_ref().map(Spanned::span)),
            ("compression", self.compression.as_ref().map(Spanned::span)),
            (
                "dead_letter_path",
                self.dead_letter_path.as_ref().map(Spanned::span),
            ),
            ("secret", self.secret.as_ref().map(Spanned::span)),
            ("secret_file", self.secret_file.as_ref().map(Spanned::span)),
            (
                "backoff_initial",
                self.backoff_initial.as_ref().map(Spanned::span),
            ),
            ("backoff_max", self.backoff_max.as_ref().map(Spanned::span)),
            ("retry_max", self.retry_max.as_ref().map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| Some((key, span?)))
        .collect()
    }
}

/// A webhook sink's `[sinks.NAME.batch]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_events: Option<Spanned<usize>>,
    max_bytes: Option<Spanned<usize>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    timeout: Option<Spanned<Duration>>,
}

/// A duration that remembers where it was written, for later errors about it.
fn spanned_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<Duration>>, D::Error> {
    let text = Spanned::<String>::deserialize(d)?;
    let span = text.span();
    humantime::parse_duration(text.get_ref())
        .map(|value| Some(Spanned::new(span, value)))
        .map_err(|e| {
            serde::de::Error::custom(format!("invalid duration `{}`: {e}", text.get_ref()))
        })
}

const DURATION_HELP: &str = "durations are written like \"250ms\", \"30s\", \"2m\" or \"1h\"";

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    let value = humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration `{text}`: {e}")))?;
    if value > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "invalid duration `{text}`: durations are at most 10 years"
        )));
    }
    Ok(Some(value))
}

/// The longest duration any setting takes: far beyond any sensible timeout,
/// and far from the clock's limits.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration that must be above zero: an interval (a zero period would spin or
/// panic a timer) or a timeout (zero would fail every attempt).
fn nonzero_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match duration(d)? {
        Some(zero) if zero.is_zero() => Err(serde::de::Error::custom(
            "invalid duration `0s`: this setting must be above zero",
        )),
        other => Ok(other),
    }
}

// ---------------------------------------------------------------------------
// Loading and validation.

impl Config {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::file(path, format!("cannot read the configuration: {e}")).with_help(
                "pass the right file with --config, or create it from config/sse-relay.toml",
            )
        })?;
        Config::parse(path, &source, |name| std::env::var(name).ok())
    }

    /// Validates `source` as if read from `path`, taking `${VAR}`s from `env`.
    pub fn parse(
        path: &Path,
        source: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(source).map_err(|e| toml_error(path, source, &e))?;
        Validator {
            path,
            source,
            env: &env,
        }
        .config(raw)
    }
}

/// Turns a `toml` error into ours, in the words of this file's keys.
fn toml_error(path: &Path, source: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().to_owned();
    let span = error.span().unwrap_or(0..0);
    let mut err = ConfigError::at(path, source, span, &message);
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (key, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        err.message = format!("unknown key {key}");
        err.key = Some(key.trim_matches('`').to_owned());
        if !expected.is_empty() {
            let expected = expected.trim_start_matches("one of ").replace('`', "");
            err.help = Some(format!("expected one of: {expected}"));
        }
    } else if let Some(key) = message.strip_prefix("missing field ") {
        err.message = format!("missing key {key}");
        err.key = Some(key.trim_matches('`').to_owned());
    } else if message.starts_with("invalid duration") {
        err.help = Some(DURATION_HELP.to_owned());
    } else if message.starts_with("unknown variant") {
        err.message = message.replace("unknown variant", "unknown value");
    }
    err
}

struct Validator<'a> {
    path: &'a Path,
    source: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, self.source, span, message)
    }

    /// An error about `key` of the table at `span`: at the line that sets the
    /// key if the table spells it out (a value given as a duration has no
    /// span of its own), else at the table. The key is named either way.
    fn error_at_key(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        // The span may cover the header only: read on to the next table.
        let text = &self.source[span.start.min(self.source.len())..];
        let mut offset = span.start;
        let mut at = span.clone();
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            if n > 0 && trimmed.starts_with('[') {
                break;
            }
            if let Some((k, _)) = trimmed.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    let start = offset + (line.len() - trimmed.len());
                    at = start..start + key.len();
                    break;
                }
            }
            offset += line.len();
        }
        self.error(at, message).with_key(key.to_owned())
    }

    /// Expands `${VAR}`s in a string value, pointing at the reference on error.
    fn expand(&self, value: &Spanned<String>) -> Result<String, ConfigError> {
        expand(value.get_ref(), |name| (self.env)(name)).map_err(|e| {
            // +1 skips the opening quote of the TOML string.
            let at = |offset: usize| value.span().start + 1 + offset;
            match e {
                ExpandError::Unset { name, offset } => self
                    .error(at(offset)..at(offset), format!("environment variable `{name}` is not set"))
                    .with_help(format!(
                        "set {name} in the environment (Environment= or EnvironmentFile= under systemd), \
                         give a default with ${{{name}:-value}}, or write $$ for a literal $"
                    )),
                ExpandError::Unclosed { offset } => self
                    .error(at(offset)..at(offset), "`${` without a closing `}`")
                    .with_help("write ${NAME}, or $$ for a literal $"),
            }
        })
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        if raw.streams.is_empty() {
            return Err(ConfigError::file(self.path, "no streams are configured")
                .with_help("add a [streams.NAME] table with a `url`"));
        }
        let data_dir = match &raw.data_dir {
            Some(dir) => {
                let text = self.expand(dir)?;
                if text.trim().is_empty() {
                    return Err(self
                        .error(dir.span(), "`data_dir` is empty")
                        .with_key("data_dir")
                        .with_help(
                            "name the directory for checkpoints, e.g. \"/var/lib/sse-relay\"",
                        ));
                }
                PathBuf::from(text)
            }
            None => PathBuf::from("/var/lib/sse-relay"),
        };
        let mut streams = BTreeMap::new();
        for (name, stream) in raw.streams {
            let span = stream.span();
            let stream = self.stream(&name, span, stream.into_inner())?;
            streams.insert(name, stream);
        }
        let checkpoints = match &raw.checkpoints {
            Some(c) => self.checkpoints(c)?,
            None => CheckpointBackendConfig::Local,
        };
        let cluster = match &raw.cluster {
            Some(c) => Some(self.cluster(c, &checkpoints)?),
            None => None,
        };
        let mut sinks = BTreeMap::new();
        for (name, sink) in raw.sinks {
            let span = sink.span();
            let sink = self.sink(&name, span, sink.into_inner(), &streams)?;
            sinks.insert(name, sink);
        }
        Ok(Config {
            data_dir,
            checkpoint_interval: raw.checkpoint_interval.unwrap_or(Duration::from_secs(1)),
            shutdown_timeout: raw.shutdown_timeout.unwrap_or(Duration::from_secs(10)),
            streams,
            sinks,
            metrics: raw.metrics.map(|m| self.metrics(&m)).transpose()?,
            checkpoints,
            cluster,
        })
    }

    fn metrics(&self, raw: &RawMetrics) -> Result<MetricsConfig, ConfigError> {
        let text = self.expand(&raw.listen)?;
        let listen = text.parse().map_err(|_| {
            self.error(
                raw.listen.span(),
                format!("invalid listen address `{text}`"),
            )
            .with_key("listen")
            .with_help("write an IP address and port, e.g. \"127.0.0.1:9464\"")
        })?;
        Ok(MetricsConfig { listen })
    }

    /// A number within `range`, or `default` when the key is absent.
    fn bounded(
        &self,
        value: &Option<Spanned<usize>>,
        key: &str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let n = *value.get_ref();
        if range.contains(&n) {
            return Ok(n);
        }
        Err(self
            .error(
                value.span(),
                format!(
                    "`{key}` is {n}; it must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            )
            .with_key(key.to_owned()))
    }

    fn check_name(&self, kind: &str, name: &str, span: Range<usize>) -> Result<(), ConfigError> {
        if name.len() > MAX_NAME_BYTES {
            return Err(self
                .error(
                    span,
                    format!(
                        "{kind} name `{}…` is {} bytes long; at most {MAX_NAME_BYTES}",
                        &name[..name.char_indices().nth(32).map_or(name.len(), |(i, _)| i)],
                        name.len()
                    ),
                )
                .with_help("names become file names (checkpoints, `{stream}` paths), which have a length limit"));
        }
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !name.starts_with('.');
        if valid {
            Ok(())
        } else {
            Err(self
                .error(span, format!("invalid {kind} name `{name}`"))
                .with_help("names use letters, digits, `_`, `-` and `.` (they become file names)"))
        }
    }

    fn stream(
        &self,
        name: &str,
        span: Range<usize>,
        raw: RawStream,
    ) -> Result<StreamConfig, ConfigError> {
        self.check_name("stream", name, span.clone())?;
        let url = self.http_url(&raw.url)?;
        let headers = self.headers(&raw.headers)?;
        let backoff_initial = raw.backoff_initial.unwrap_or(Duration::from_secs(1));
        let backoff_max = raw.backoff_max.unwrap_or(Duration::from_secs(60));
        if backoff_initial.is_zero() || backoff_initial > backoff_max {
            return Err(self
                .error_at_key(
                    span,
                    "backoff_initial",
                    "`backoff_initial` must be above zero and at most `backoff_max`",
                )
                .with_help(format!(
                    "they are {} and {}",
                    humantime::format_duration(backoff_initial),
                    humantime::format_duration(backoff_max)
                )));
        }
        let idle_timeout = raw.idle_timeout.unwrap_or(Duration::from_secs(60));
        if idle_timeout.is_zero() {
            return Err(self
                .error_at_key(span, "idle_timeout", "`idle_timeout` must be above zero")
                .with_help("servers send comments as keep-alives; set it above their interval"));
        }
        let initial_last_event_id = raw
            .initial_last_event_id
            .as_ref()
            .map(|id| self.expand(id))
            .transpose()?;
        let defaults = Limits::default();
        let limits = Limits {
            max_line_bytes: self.bounded(
                &raw.max_line_bytes,
                "max_line_bytes",
                MIN_LIMIT_BYTES..=MAX_LIMIT_BYTES,
                defaults.max_line_bytes,
            )?,
            max_event_bytes: self.bounded(
                &raw.max_event_bytes,
                "max_event_bytes",
                MIN_LIMIT_BYTES..=MAX_LIMIT_BYTES,
                defaults.max_event_bytes,
            )?,
        };
        let max_redirects =
            self.bounded(&raw.max_redirects, "max_redirects", 0..=MAX_REDIRECTS, 10)?;
        let ca_file = raw
            .ca_file
            .as_ref()
            .map(|f| self.expand(f).map(PathBuf::from))
            .transpose()?;
        Ok(StreamConfig {
            name: name.to_owned(),
            url,
            headers,
            backoff_initial,
            backoff_max,
            idle_timeout,
            connect_timeout: raw.connect_timeout.unwrap_or(Duration::from_secs(10)),
            retry_max: raw.retry_max.unwrap_or(Duration::from_secs(3600)),
            initial_last_event_id,
            limits,
            max_redirects,
            http2: raw.http2.unwrap_or(false),
            ca_file,
            tls_insecure: raw.tls_insecure.unwrap_or(false),
            allow_insecure_redirects: raw.allow_insecure_redirects.unwrap_or(false),
            give_up_after: match &raw.give_up_after {
                Some(n) if *n.get_ref() == 0 => {
                    return Err(self
                        .error(n.span(), "`give_up_after` must be at least 1")
                        .with_key("give_up_after")
                        .with_help("leave it out to retry forever"))
                }
                other => other.as_ref().map(|n| *n.get_ref()),
            },
            give_up_statuses: match &raw.give_up_statuses {
                Some(list) => {
                    if let Some(bad) = list.get_ref().iter().find(|s| !(400..=599).contains(*s)) {
                        return Err(self
                            .error(list.span(), format!("`{bad}` is not an HTTP error status"))
                            .with_key("give_up_statuses")
                            .with_help("list 4xx or 5xx statuses, e.g. [401, 403, 404, 410]"));
                    }
                    list.get_ref().clone()
                }
                None => DEFAULT_GIVE_UP_STATUSES.to_vec(),
            },
        })
    }

    /// An `http://` or `https://` URL, after `${VAR}` expansion.
    fn http_url(&self, value: &Spanned<String>) -> Result<reqwest::Url, ConfigError> {
        let url_text = self.expand(value)?;
        let url = reqwest::Url::parse(&url_text).map_err(|e| {
            self.error(value.span(), format!("invalid url: {e}"))
                .with_key("url")
                .with_help("write a full URL, e.g. \"https://example.com/events\"")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self
                .error(
                    value.span(),
                    format!("unsupported url scheme `{}`", url.scheme()),
                )
                .with_key("url")
                .with_help("use http:// or https://"));
        }
        Ok(url)
    }

    /// Request headers, `${VAR}`s expanded and every value marked sensitive.
    fn headers(&self, raw: &BTreeMap<String, Spanned<String>>) -> Result<HeaderMap, ConfigError> {
        let mut headers = HeaderMap::new();
        for (header, value) in raw {
            let header_name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                self.error(value.span(), format!("invalid header name `{header}`"))
                    .with_key(header.clone())
            })?;
            let text = self.expand(value)?;
            let mut header_value = HeaderValue::from_str(&text).map_err(|_| {
                // The value may hold a secret: say where, never what.
                self.error(value.span(), format!("invalid value for header `{header}`"))
                    .with_key(header.clone())
                    .with_help("header values cannot contain line breaks or control characters")
            })?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }
        Ok(headers)
    }

    fn sink(
        &self,
        name: &str,
        span: Range<usize>,
        raw: RawSink,
        streams: &BTreeMap<String, StreamConfig>,
    ) -> Result<SinkConfig, ConfigError> {
        self.check_name("sink", name, span.clone())?;
        let mut inputs = Vec::new();
        let mut all = false;
        for input in raw.inputs.get_ref() {
            let input_name = input.get_ref();
            if input_name == "*" {
                all = true;
            } else if streams.contains_key(input_name) {
                inputs.push(input_name.clone());
            } else {
                let known: Vec<&str> = streams.keys().map(String::as_str).collect();
                return Err(self
                    .error(
                        input.span(),
                        format!("sink input `{input_name}` names no stream"),
                    )
                    .with_key("inputs")
                    .with_help(format!(
                        "configured streams: {}; or use \"*\" for all of them",
                        known.join(", ")
                    )));
            }
        }
        if !all && inputs.is_empty() {
            return Err(self
                .error(raw.inputs.span(), "sink has no inputs")
                .with_key("inputs")
                .with_help("list the streams it takes, or \"*\" for all of them"));
        }
        let queue_size = raw
            .queue_size
            .as_ref()
            .map_or(DEFAULT_QUEUE_SIZE, |q| *q.get_ref());
        if !(1..=MAX_QUEUE_SIZE).contains(&queue_size) {
            let q_span = raw.queue_size.as_ref().map_or(span.clone(), |q| q.span());
            return Err(self
                .error(
                    q_span,
                    format!("`queue_size` must be between 1 and {MAX_QUEUE_SIZE}"),
                )
                .with_key("queue_size")
                .with_help(
                    "it counts events; memory is bounded by bytes as well (2 MiB per sink)",
                ));
        }
        if let Some(types) = &raw.event_types {
            if types.get_ref().is_empty() {
                return Err(self
                    .error(
                        types.span(),
                        "`event_types` is empty: the sink would take no event",
                    )
                    .with_key("event_types")
                    .with_help("list the event types it takes, or leave the key out for all"));
            }
        }
        let only_for_file = |key: &str, present: Option<Range<usize>>| match present {
            Some(at) => Err(self
                .error(
                    at,
                    format!("key `{key}` only applies to sinks of type \"file\""),
                )
                .with_key(key.to_owned())),
            None => Ok(()),
        };
        let only_for_nats = |raw: &RawSink| match raw.nats_keys().into_iter().next() {
            Some((key, at)) => Err(self
                .error(
                    at,
                    format!("key `{key}` only applies to sinks of type \"nats\""),
                )
                .with_key(key)),
            None => Ok(()),
        };
        let only_for_webhook = |raw: &RawSink| match raw.webhook_keys().into_iter().next() {
            Some((key, at)) => Err(self
                .error(
                    at,
                    format!("key `{key}` only applies to sinks of type \"webhook\""),
                )
                .with_key(key)),
            None => Ok(()),
        };
        let kind = match raw.kind.get_ref().as_str() {
            "stdout" => {
                only_for_webhook(&raw)?;
                only_for_nats(&raw)?;
                only_for_file("path", raw.path.as_ref().map(Spanned::span))?;
                only_for_file("fsync", raw.fsync.as_ref().map(Spanned::span))?;
                SinkKind::Stdout
            }
            "file" => {
                only_for_webhook(&raw)?;
                only_for_nats(&raw)?;
                let path = raw.path.as_ref().ok_or_else(|| {
                    self.error(span.clone(), "missing key `path` for a file sink")
                        .with_key("path")
                        .with_help("e.g. path = \"/var/log/sse-relay/{stream}.jsonl\"")
                })?;
                SinkKind::File {
                    path: self.expand(path)?,
                    fsync: raw.fsync.map_or(FsyncPolicy::Never, Spanned::into_inner),
                    fsync_interval: raw.fsync_interval.unwrap_or(Duration::from_secs(1)),
                }
            }
            "webhook" => {
                only_for_file("path", raw.path.as_ref().map(Spanned::span))?;
                only_for_file("fsync", raw.fsync.as_ref().map(Spanned::span))?;
                only_for_nats(&raw)?;
                SinkKind::Webhook(Box::new(self.webhook(span.clone(), &raw)?))
            }
            "nats" => {
                only_for_file("path", raw.path.as_ref().map(Spanned::span))?;
                only_for_file("fsync", raw.fsync.as_ref().map(Spanned::span))?;
                let webhook_only = raw
                    .webhook_keys()
                    .into_iter()
                    .find(|(key, _)| !WEBHOOK_AND_NATS.contains(key));
                if let Some((key, at)) = webhook_only {
                    return Err(self
                        .error(
                            at,
                            format!("key `{key}` only applies to sinks of type \"webhook\""),
                        )
                        .with_key(key));
                }
                SinkKind::Nats(Box::new(self.nats_sink(span.clone(), &raw)?))
            }
            other => {
                return Err(self
                    .error(raw.kind.span(), format!("unknown sink type `{other}`"))
                    .with_key("type")
                    .with_help("expected one of: stdout, file, webhook, nats"))
            }
        };
        let encoding = self.encoding(&kind, raw.encoding)?;
        Ok(SinkConfig {
            name: name.to_owned(),
            kind,
            inputs: (!all).then_some(inputs),
            event_types: raw.event_types.map(Spanned::into_inner),
            queue_size,
            when_full: raw.when_full.unwrap_or(WhenFull::Block),
            encoding,
        })
    }

    /// The sink's `encoding`, checked against what its type can write.
    fn encoding(
        &self,
        kind: &SinkKind,
        raw: Option<Spanned<Encoding>>,
    ) -> Result<Encoding, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Encoding::Json);
        };
        let encoding = *raw.get_ref();
        let help = match (kind, encoding) {
            (SinkKind::Nats(_), Encoding::Data | Encoding::Ndjson) => {
                "a nats sink publishes one JSON record a message: \"json\""
            }
            (SinkKind::Webhook(_), Encoding::Data) => {
                "a webhook sends records: \"json\" (a JSON array a request) or \"ndjson\" (one record a line)"
            }
            (SinkKind::Stdout | SinkKind::File { .. }, Encoding::Ndjson) => {
                "\"json\" already writes one JSON record a line; \"data\" writes the data alone"
            }
            _ => return Ok(encoding),
        };
        let shown = match encoding {
            Encoding::Json => "json",
            Encoding::Data => "data",
            Encoding::Ndjson => "ndjson",
        };
        Err(self
            .error(
                raw.span(),
                format!(
                    "encoding \"{shown}\" does not apply to sinks of type \"{}\"",
                    kind.type_name()
                ),
            )
            .with_key("encoding")
            .with_help(help))
    }

    /// The keys of a `type = "webhook"` sink.
    fn webhook(&self, span: Range<usize>, raw: &RawSink) -> Result<WebhookConfig, ConfigError> {
        let url = raw.url.as_ref().ok_or_else(|| {
            self.error(span.clone(), "missing key `url` for a webhook sink")
                .with_key("url")
                .with_help("e.g. url = \"https://collector.example.com/events\"")
        })?;
        let url = self.http_url(url)?;
        let method = match &raw.method {
            None => reqwest::Method::POST,
            Some(method) => match method.get_ref().to_ascii_uppercase().as_str() {
                "POST" => reqwest::Method::POST,
                "PUT" => reqwest::Method::PUT,
                "PATCH" => reqwest::Method::PATCH,
                _ => {
                    return Err(self
                        .error(
                            method.span(),
                            format!("unsupported method `{}`", method.get_ref()),
                        )
                        .with_key("method")
                        .with_help("expected one of: POST, PUT, PATCH"))
                }
            },
        };
        let headers = match &raw.headers {
            Some(headers) => self.headers(headers.get_ref())?,
            None => HeaderMap::new(),
        };
        let above_zero =
            |key: &str, value: &Option<Spanned<Duration>>, default: Duration| match value {
                None => Ok(default),
                Some(v) if v.get_ref().is_zero() => Err(self
                    .error(v.span(), format!("`{key}` must be above zero"))
                    .with_key(key.to_owned())),
                Some(v) => Ok(*v.get_ref()),
            };
        let timeout = above_zero("timeout", &raw.timeout, Duration::from_secs(30))?;
        let connect_timeout = above_zero(
            "connect_timeout",
            &raw.connect_timeout,
            Duration::from_secs(10),
        )?;
        let backoff_initial = above_zero(
            "backoff_initial",
            &raw.backoff_initial,
            Duration::from_secs(1),
        )?;
        let backoff_max = above_zero("backoff_max", &raw.backoff_max, Duration::from_secs(60))?;
        if backoff_initial > backoff_max {
            let at = raw
                .backoff_initial
                .as_ref()
                .map_or(span.clone(), Spanned::span);
            return Err(self
                .error(at, "`backoff_initial` must be at most `backoff_max`")
                .with_key("backoff_initial"));
        }
        let retry_max = raw
            .retry_max
            .as_ref()
            .map_or(Duration::from_secs(3600), |r| *r.get_ref());
        let path = |value: &Option<Spanned<String>>| {
            value
                .as_ref()
                .map(|v| self.expand(v).map(PathBuf::from))
                .transpose()
        };
        Ok(WebhookConfig {
            url,
            method,
            headers,
            timeout,
            connect_timeout,
            ca_file: path(&raw.ca_file)?,
            tls_insecure: raw.tls_insecure.as_ref().is_some_and(|t| *t.get_ref()),
            batch: self.batch(raw.batch.as_ref())?,
            compression: raw.compression.as_ref().map(|c| *c.get_ref()),
            dead_letter_path: path(&raw.dead_letter_path)?,
            secret: self.secret(raw)?,
            backoff_initial,
            backoff_max,
            retry_max,
        })
    }

    /// The `[checkpoints]` table.
    fn checkpoints(
        &self,
        raw: &Spanned<RawCheckpoints>,
    ) -> Result<CheckpointBackendConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.get_ref();
        let keys = RawNatsKeys {
            url: &raw.url,
            urls: &raw.urls,
            token: &raw.token,
            user: &raw.user,
            password: &raw.password,
            credentials_file: &raw.credentials_file,
            tls_required: &raw.tls_required,
            ca_file: &raw.ca_file,
            connect_timeout: &raw.connect_timeout,
        };
        match raw.backend.get_ref().as_str() {
            "local" => {
                let nats_key = [
                    ("bucket", raw.bucket.as_ref().map(Spanned::span)),
                    ("url", raw.url.as_ref().map(Spanned::span)),
                    ("urls", raw.urls.as_ref().map(Spanned::span)),
                ]
                .into_iter()
                .find_map(|(key, at)| Some((key, at?)));
                if let Some((key, at)) = nats_key {
                    return Err(self
                        .error(
                            at,
                            format!("key `{key}` only applies to backend = \"nats\""),
                        )
                        .with_key(key));
                }
                Ok(CheckpointBackendConfig::Local)
            }
            "nats" => Ok(CheckpointBackendConfig::Nats(NatsCheckpointConfig {
                connection: self.nats_connection(span, &keys)?,
                bucket: self.bucket_name(&raw.bucket, "sse-relay-checkpoints")?,
            })),
            other => Err(self
                .error(
                    raw.backend.span(),
                    format!("unknown checkpoint backend `{other}`"),
                )
                .with_key("backend")
                .with_help("expected one of: local, nats")),
        }
    }

    /// The `[cluster]` table; it needs checkpoints every instance can read.
    fn cluster(
        &self,
        raw: &Spanned<RawCluster>,
        checkpoints: &CheckpointBackendConfig,
    ) -> Result<ClusterConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.get_ref();
        if *checkpoints == CheckpointBackendConfig::Local {
            return Err(self
                .error(span, "[cluster] needs shared checkpoints")
                .with_help(
                    "add [checkpoints] backend = \"nats\": a stream taken over by another \
                     instance must resume from where this one left it",
                ));
        }
        let instance_id = self.expand(&raw.instance_id)?;
        let valid = !instance_id.is_empty()
            && instance_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !valid {
            return Err(self
                .error(
                    raw.instance_id.span(),
                    format!("invalid instance_id `{instance_id}`"),
                )
                .with_key("instance_id")
                .with_help("use letters, digits, `_` and `-`, e.g. \"${HOSTNAME}\""));
        }
        let lease_ttl =
            match &raw.lease_ttl {
                None => Duration::from_secs(10),
                Some(ttl) if *ttl.get_ref() < Duration::from_secs(1) => return Err(self
                    .error(ttl.span(), "`lease_ttl` must be at least 1s")
                    .with_key("lease_ttl")
                    .with_help(
                        "leases are renewed every third of it; shorter ones churn on any hiccup",
                    )),
                // Deadlines are computed as now + lease_ttl: an absurd value
                // would overflow the clock, and a lease that outlives a day
                // means a dead instance's streams wait a day for a new owner.
                Some(ttl) if *ttl.get_ref() > Duration::from_secs(86_400) => return Err(self
                    .error(ttl.span(), "`lease_ttl` must be at most 24h")
                    .with_key("lease_ttl")
                    .with_help(
                        "a dead instance's streams wait up to lease_ttl for another instance; 10s is the default",
                    )),
                Some(ttl) => *ttl.get_ref(),
            };
        Ok(ClusterConfig {
            instance_id,
            lease_ttl,
            bucket: self.bucket_name(&raw.bucket, "sse-relay-leases")?,
        })
    }

    fn bucket_name(
        &self,
        raw: &Option<Spanned<String>>,
        default: &str,
    ) -> Result<String, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default.to_owned());
        };
        let name = self.expand(raw)?;
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if valid {
            Ok(name)
        } else {
            Err(self
                .error(raw.span(), format!("invalid bucket name `{name}`"))
                .with_key("bucket")
                .with_help("bucket names use letters, digits, `_` and `-`"))
        }
    }

    /// NATS connection keys. Errors name keys, never secret values.
    fn nats_connection(
        &self,
        span: Range<usize>,
        raw: &RawNatsKeys<'_>,
    ) -> Result<NatsConnection, ConfigError> {
        let mut urls = Vec::new();
        let mut given = Vec::new();
        if let Some(url) = raw.url {
            given.push(url);
        }
        if let Some(list) = raw.urls {
            if raw.url.is_some() {
                return Err(self
                    .error(list.span(), "set `url` or `urls`, not both")
                    .with_key("urls"));
            }
            given.extend(list.get_ref().iter());
        }
        if given.is_empty() {
            return Err(self
                .error(span, "missing key `url` for a NATS connection")
                .with_key("url")
                .with_help("e.g. url = \"nats://127.0.0.1:4222\""));
        }
        for value in given {
            let text = self.expand(value)?;
            let scheme = text.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("nats" | "tls")) {
                return Err(self
                    .error(
                        value.span(),
                        format!(
                            "unsupported NATS url `{}`",
                            crate::http::redact::redact_url_text(&text)
                        ),
                    )
                    .with_key("url")
                    .with_help("write nats://host:port, or tls://host:port for TLS"));
            }
            urls.push(text);
        }
        let secret = |value: &Option<Spanned<String>>, key: &str| -> Result<_, ConfigError> {
            match value {
                None => Ok(None),
                Some(v) => {
                    let text = self.expand(v)?;
                    if text.is_empty() {
                        return Err(self
                            .error(v.span(), format!("`{key}` is empty"))
                            .with_key(key.to_owned()));
                    }
                    Ok(Some(Secret::new(text)))
                }
            }
        };
        let token = secret(raw.token, "token")?;
        let password = secret(raw.password, "password")?;
        let user = raw.user.as_ref().map(|u| self.expand(u)).transpose()?;
        let credentials_file = raw
            .credentials_file
            .as_ref()
            .map(|f| self.expand(f).map(PathBuf::from))
            .transpose()?;
        if user.is_some() != password.is_some() {
            let at = raw
                .user
                .as_ref()
                .or(raw.password.as_ref())
                .map_or(span.clone(), Spanned::span);
            return Err(self
                .error(at, "`user` and `password` go together")
                .with_key(if user.is_some() { "password" } else { "user" }));
        }
        let methods = [token.is_some(), user.is_some(), credentials_file.is_some()];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(self
                .error(span, "more than one way to authenticate to NATS")
                .with_help("set one of: `token`, `user` + `password`, `credentials_file`"));
        }
        let connect_timeout = match raw.connect_timeout {
            None => Duration::from_secs(5),
            Some(t) if t.get_ref().is_zero() => {
                return Err(self
                    .error(t.span(), "`connect_timeout` must be above zero")
                    .with_key("connect_timeout"))
            }
            Some(t) => *t.get_ref(),
        };
        Ok(NatsConnection {
            urls,
            token,
            user,
            password,
            credentials_file,
            tls_required: raw.tls_required.as_ref().is_some_and(|t| *t.get_ref()),
            ca_file: raw
                .ca_file
                .as_ref()
                .map(|f| self.expand(f).map(PathBuf::from))
                .transpose()?,
            connect_timeout,
        })
    }

    /// The keys of a `type = "nats"` sink.
    fn nats_sink(&self, span: Range<usize>, raw: &RawSink) -> Result<NatsSinkConfig, ConfigError> {
        let keys = RawNatsKeys {
            url: &raw.url,
            urls: &raw.urls,
            token: &raw.token,
            user: &raw.user,
            password: &raw.password,
            credentials_file: &raw.credentials_file,
            tls_required: &raw.tls_required,
            ca_file: &raw.ca_file,
            connect_timeout: &raw.connect_timeout,
        };
        let connection = self.nats_connection(span.clone(), &keys)?;
        let subject_raw = raw.subject.as_ref().ok_or_else(|| {
            self.error(span.clone(), "missing key `subject` for a nats sink")
                .with_key("subject")
                .with_help("e.g. subject = \"sse.{stream}.{event}\"")
        })?;
        let subject = self.expand(subject_raw)?;
        if let Err(problem) = crate::sink::nats::check_subject_template(&subject) {
            return Err(self
                .error(
                    subject_raw.span(),
                    format!("invalid subject `{subject}`: {problem}"),
                )
                .with_key("subject")
                .with_help(
                    "tokens are separated by `.`; `{stream}` and `{event}` are replaced by the \
                     stream name and event type (with `.`, `*`, `>` and spaces made `_`)",
                ));
        }
        let stream = match &raw.stream {
            None => None,
            Some(s) => {
                let name = self.expand(s)?;
                let valid = !name.is_empty()
                    && !name
                        .chars()
                        .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace());
                if !valid {
                    return Err(self
                        .error(s.span(), format!("invalid JetStream stream name `{name}`"))
                        .with_key("stream")
                        .with_help("stream names cannot hold `.`, `*`, `>`, `/`, `\\` or spaces"));
                }
                Some(name)
            }
        };
        let create_stream = raw.create_stream.as_ref().is_some_and(|c| *c.get_ref());
        if create_stream && stream.is_none() {
            let at = raw
                .create_stream
                .as_ref()
                .map_or(span.clone(), Spanned::span);
            return Err(self
                .error(at, "`create_stream = true` needs `stream`")
                .with_key("create_stream")
                .with_help("name the JetStream stream to create, e.g. stream = \"SSE\""));
        }
        let max_in_flight = match &raw.max_in_flight {
            None => 256,
            Some(m) if *m.get_ref() == 0 => {
                return Err(self
                    .error(m.span(), "`max_in_flight` must be at least 1")
                    .with_key("max_in_flight"))
            }
            Some(m) => *m.get_ref(),
        };
        let above_zero =
            |key: &str, value: &Option<Spanned<Duration>>, default: Duration| match value {
                None => Ok(default),
                Some(v) if v.get_ref().is_zero() => Err(self
                    .error(v.span(), format!("`{key}` must be above zero"))
                    .with_key(key.to_owned())),
                Some(v) => Ok(*v.get_ref()),
            };
        let backoff_initial = above_zero(
            "backoff_initial",
            &raw.backoff_initial,
            Duration::from_millis(100),
        )?;
        let backoff_max = above_zero("backoff_max", &raw.backoff_max, Duration::from_secs(10))?;
        if backoff_initial > backoff_max {
            let at = raw.backoff_initial.as_ref().map_or(span, Spanned::span);
            return Err(self
                .error(at, "`backoff_initial` must be at most `backoff_max`")
                .with_key("backoff_initial"));
        }
        Ok(NatsSinkConfig {
            connection,
            subject,
            stream,
            create_stream,
            duplicate_window: above_zero(
                "duplicate_window",
                &raw.duplicate_window,
                Duration::from_secs(120),
            )?,
            max_in_flight,
            ack_timeout: above_zero("ack_timeout", &raw.ack_timeout, Duration::from_secs(5))?,
            backoff_initial,
            backoff_max,
        })
    }

    fn batch(&self, raw: Option<&Spanned<RawBatch>>) -> Result<BatchConfig, ConfigError> {
        let mut batch = BatchConfig {
            max_events: 500,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(1),
        };
        let Some(raw) = raw else {
            return Ok(batch);
        };
        let raw = raw.get_ref();
        for (key, value, target) in [
            ("max_events", &raw.max_events, &mut batch.max_events),
            ("max_bytes", &raw.max_bytes, &mut batch.max_bytes),
        ] {
            if let Some(value) = value {
                if *value.get_ref() == 0 {
                    return Err(self
                        .error(value.span(), format!("`batch.{key}` must be at least 1"))
                        .with_key(key));
                }
                *target = *value.get_ref();
            }
        }
        if let Some(timeout) = &raw.timeout {
            batch.timeout = *timeout.get_ref();
        }
        Ok(batch)
    }

    /// The signing key from `secret` or `secret_file`. Errors name the key and
    /// the file, never the value.
    fn secret(&self, raw: &RawSink) -> Result<Option<Secret>, ConfigError> {
        let secret = match (&raw.secret, &raw.secret_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(file)) => {
                return Err(self
                    .error(file.span(), "set `secret` or `secret_file`, not both")
                    .with_key("secret_file"))
            }
            (Some(secret), None) => {
                let text = self.expand(secret)?;
                if text.is_empty() {
                    return Err(self
                        .error(secret.span(), "`secret` is empty")
                        .with_key("secret")
                        .with_help("give it a value, e.g. secret = \"${WEBHOOK_SECRET}\""));
                }
                text.into_bytes()
            }
            (None, Some(file)) => {
                let path = PathBuf::from(self.expand(file)?);
                let mut bytes = std::fs::read(&path).map_err(|e| {
                    self.error(
                        file.span(),
                        format!("cannot read secret_file {}: {e}", path.display()),
                    )
                    .with_key("secret_file")
                })?;
                // Files written by `echo` or an editor end with a newline that
                // is not part of the key.
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                if bytes.is_empty() {
                    return Err(self
                        .error(
                            file.span(),
                            format!("secret_file {} is empty", path.display()),
                        )
                        .with_key("secret_file"));
                }
                bytes
            }
        };
        Ok(Some(Secret::new(secret)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/sse-relay/sse-relay.toml"), src, |name| {
            (name == "WIKI_TOKEN").then(|| "t0ken".to_owned())
        })
    }

    const GOOD: &str = r#"
data_dir = "/var/lib/sse-relay"

[streams.wiki]
url = "https://stream.wikimedia.org/v2/stream/recentchange"
headers = { Authorization = "Bearer ${WIKI_TOKEN}" }
backoff_initial = "1s"
backoff_max = "60s"
idle_timeout = "60s"
initial_last_event_id = "abc"

[sinks.console]
type = "stdout"
inputs = ["*"]

[sinks.archive]
type = "file"
inputs = ["wiki"]
path = "/var/log/sse-relay/{stream}.jsonl"
"#;

    #[test]
    fn the_documented_example_loads() {
        let config = parse(GOOD).unwrap();
        let wiki = &config.streams["wiki"];
        assert_eq!(wiki.backoff_max, Duration::from_secs(60));
        assert_eq!(wiki.initial_last_event_id.as_deref(), Some("abc"));
        assert_eq!(wiki.headers["authorization"], "Bearer t0ken");
        assert!(wiki.headers["authorization"].is_sensitive());
        assert_eq!(config.sinks["console"].inputs, None);
        assert_eq!(
            config.sinks["archive"].inputs,
            Some(vec!["wiki".to_owned()])
        );
        assert!(
            !format!("{config:?}").contains("t0ken"),
            "secrets must not print"
        );
    }

    #[test]
    fn unknown_key_names_line_table_and_choices() {
        let src = GOOD.replace("idle_timeout = \"60s\"", "bogus_key = 1");
        let err = parse(&src).unwrap_err();
        assert_eq!(err.position, Some((9, 1)));
        assert_eq!(err.key.as_deref(), Some("bogus_key"));
        assert_eq!(err.table.as_deref(), Some("streams.wiki"));
        assert!(err.help.as_deref().unwrap().contains("backoff_initial"));
        assert!(err.to_string().contains("sse-relay.toml:9:1"));
    }

    #[test]
    fn zero_intervals_are_refused_where_they_would_spin() {
        let src = GOOD.replace("data_dir = ", "checkpoint_interval = \"0s\"\ndata_dir = ");
        let err = parse(&src).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("checkpoint_interval"), "{err}");
        assert!(err.message.contains("above zero"), "{err}");
    }

    #[test]
    fn debug_output_carries_no_credentials() {
        let src = GOOD.replace("url = \"https://", "url = \"https://operator:hunter2@");
        let config = parse(&src).unwrap();
        let shown = format!("{:?}", config.streams["wiki"]);
        assert!(
            !shown.contains("operator") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("url:"), "{shown}");
    }

    #[test]
    fn lease_ttl_is_bounded_both_ways() {
        let cluster = |ttl: &str| {
            format!(
                "{GOOD}\n[checkpoints]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n\
                 [cluster]\ninstance_id = \"a\"\nlease_ttl = \"{ttl}\"\n"
            )
        };
        assert!(parse(&cluster("10s")).is_ok());
        for ttl in ["500ms", "25h", "1000000000d"] {
            let err = parse(&cluster(ttl)).unwrap_err();
            assert_eq!(err.key.as_deref(), Some("lease_ttl"), "{ttl}: {err}");
        }
    }

    #[test]
    fn missing_url_is_named() {
        let err = parse("[streams.a]\nidle_timeout = \"5s\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("url"));
        assert_eq!(err.position.map(|p| p.0), Some(1));
    }

    #[test]
    fn bad_duration_points_at_value() {
        let src = GOOD.replace("backoff_max = \"60s\"", "backoff_max = \"sixty\"");
        let err = parse(&src).unwrap_err();
        assert_eq!(err.position, Some((8, 15)));
        assert_eq!(err.key.as_deref(), Some("backoff_max"));
        assert!(err.help.unwrap().contains("30s"));
    }

    #[test]
    fn unset_variable_is_named_without_leaking_others() {
        let src = GOOD.replace("${WIKI_TOKEN}", "${NOT_SET_ANYWHERE}");
        let err = parse(&src).unwrap_err();
        assert!(err.message.contains("NOT_SET_ANYWHERE"), "{err}");
        assert_eq!(err.position.map(|p| p.0), Some(6));
        assert_eq!(err.key.as_deref(), Some("headers"));
    }

    #[test]
    fn sink_input_must_name_a_stream() {
        let src = GOOD.replace("inputs = [\"wiki\"]", "inputs = [\"wikii\"]");
        let err = parse(&src).unwrap_err();
        assert!(err.message.contains("wikii"));
        assert_eq!(err.position.map(|p| p.0), Some(18));
        assert!(err.help.unwrap().contains("wiki"));
    }

    #[test]
    fn keys_must_fit_the_sink_type() {
        let src = GOOD.replace("type = \"stdout\"", "type = \"stdout\"\npath = \"/x\"");
        let err = parse(&src).unwrap_err();
        assert!(err.message.contains("path"), "{err}");
        let src = GOOD.replace("type = \"stdout\"", "type = \"kafka\"");
        assert!(parse(&src).unwrap_err().message.contains("kafka"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("[streams.a\nurl = \"http://x\"\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(1));
    }
}
