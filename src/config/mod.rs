//! The configuration file: its top-level keys, `[streams.NAME]`,
//! `[checkpoints]`, `[cluster]` and `[metrics]`, and the dispatch of each
//! `[sinks.NAME]` table to its sink type (see [`crate::sink::registry`]).
//!
//! Loading happens in two steps. `toml` parses the text into tables that keep
//! every key's position, and `serde` turns each table into its raw schema
//! (unknown keys, missing keys, wrong types and bad durations are caught
//! there). Then each table is validated for what a schema cannot express (a
//! sink input naming no stream, an unset `${VAR}`, a key that does not fit
//! the sink's type) into the [`Config`] the rest of the program uses. Every
//! error names the file, line, column and key; the tools for that are in
//! [`crate::validate`], shared with the sink types.

// A config error is built once, on the way to exiting; boxing it to keep
// `Result` small would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::auth::config::validate_auth;
use crate::auth::{AuthConfig, RawAuth};
use crate::gaps::IdGapCheck;
use crate::nats::config::RawConnection;
use crate::nats::NatsConnection;
use crate::sink::config::parse_sink;
use crate::sink::SinkConfig;
use crate::sse::Limits;
use crate::validate::{
    duration, field_names, keys_of, nonzero_duration, spanned_duration, split_table, toml_error,
    Validator,
};
pub use crate::validate::{expand, ConfigError, ExpandError, Secret};

/// Bounds of `max_line_bytes` and `max_event_bytes`.
pub const MIN_LIMIT_BYTES: usize = 16;
pub const MAX_LIMIT_BYTES: usize = 1 << 30;
/// The largest `max_redirects`.
pub const MAX_REDIRECTS: usize = 50;

/// Where `run` and `check` look for the configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sse-relay/sse-relay.toml";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The state directory: checkpoints live here.
    pub data_dir: PathBuf,
    pub checkpoint_interval: Duration,
    pub shutdown_timeout: Duration,
    /// Shared with the running streams: at 10,000 streams a second copy of
    /// each would cost ~10 MiB.
    pub streams: BTreeMap<String, Arc<StreamConfig>>,
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
    /// Credentials renewed without a reload (`[streams.NAME.auth]`).
    pub auth: Option<AuthConfig>,
    /// `GET` (the default) or `POST`.
    pub method: reqwest::Method,
    /// Sent with every connection attempt (`body` or `body_file`).
    pub body: Option<bytes::Bytes>,
    /// The URL query parameter that carries the last event id, if the server
    /// reads it there.
    pub last_event_id_query: Option<String>,
    pub id_gap_check: IdGapCheck,
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
            .field("auth", &self.auth)
            .field("method", &self.method)
            // A subscription body may hold an API key: its size only.
            .field("body_bytes", &self.body.as_ref().map(bytes::Bytes::len))
            .field("last_event_id_query", &self.last_event_id_query)
            .field("id_gap_check", &self.id_gap_check)
            .finish()
    }
}

/// The statuses `give_up_after` counts unless `give_up_statuses` says otherwise:
/// the ones that mean "not you" or "not here", which waiting does not fix.
pub const DEFAULT_GIVE_UP_STATUSES: [u16; 4] = [401, 403, 404, 410];

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
    metrics: Option<RawMetrics>,
    cluster: Option<Spanned<RawCluster>>,
    // Split off and validated by their owners before the rest is read; named
    // here so an unknown key's help lists them.
    #[allow(dead_code)]
    checkpoints: Option<serde::de::IgnoredAny>,
    #[allow(dead_code)]
    sinks: Option<serde::de::IgnoredAny>,
}

/// The `[checkpoints]` keys beyond a NATS connection's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheckpoints {
    backend: Spanned<String>,
    bucket: Option<Spanned<String>>,
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
    auth: Option<Spanned<RawAuth>>,
    method: Option<Spanned<String>>,
    body: Option<Spanned<String>>,
    body_file: Option<Spanned<String>>,
    last_event_id_query: Option<Spanned<String>>,
    id_gap_check: Option<IdGapCheck>,
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
        let v = Validator::new(path, source, &env);
        let document = DeTable::parse(source).map_err(|e| toml_error(path, source, &e))?;
        let (apart, rest) = split_table(document, &["checkpoints", "sinks"]);
        let mut apart = apart.into_inner();
        let mut take = |name: &str| {
            let key = apart.keys().find(|k| k.get_ref() == name)?.clone();
            apart.remove(&key)
        };
        let (checkpoints, sinks) = (take("checkpoints"), take("sinks"));
        let raw: RawConfig = v.table(rest)?;
        config(&v, raw, checkpoints, sinks)
    }
}

/// Validates the whole file: its top-level keys (`raw`) and the tables
/// deserialized apart, each by its owner (`[checkpoints]`, `[sinks.*]`).
fn config(
    v: &Validator,
    raw: RawConfig,
    checkpoints_table: Option<Spanned<DeValue<'_>>>,
    sinks_table: Option<Spanned<DeValue<'_>>>,
) -> Result<Config, ConfigError> {
    if raw.streams.is_empty() {
        return Err(ConfigError::file(v.path(), "no streams are configured")
            .with_help("add a [streams.NAME] table with a `url`"));
    }
    let data_dir = match &raw.data_dir {
        Some(dir) => {
            let text = v.expand(dir)?;
            if text.trim().is_empty() {
                return Err(v
                    .error(dir.span(), "`data_dir` is empty")
                    .with_key("data_dir")
                    .with_help("name the directory for checkpoints, e.g. \"/var/lib/sse-relay\""));
            }
            PathBuf::from(text)
        }
        None => PathBuf::from("/var/lib/sse-relay"),
    };
    let mut streams = BTreeMap::new();
    for (name, stream) in raw.streams {
        let span = stream.span();
        let stream = stream_table(v, &name, span, stream.into_inner())?;
        streams.insert(name, Arc::new(stream));
    }
    let checkpoints = match checkpoints_table {
        Some(table) => checkpoints(v, table)?,
        None => CheckpointBackendConfig::Local,
    };
    let cluster = match &raw.cluster {
        Some(c) => Some(cluster(v, c, &checkpoints)?),
        None => None,
    };
    let stream_names: Vec<&str> = streams.keys().map(String::as_str).collect();
    let mut sinks = BTreeMap::new();
    if let Some(table) = sinks_table {
        for (name, sink) in
            as_table(v, table, "sinks", "write one [sinks.NAME] table a sink")?.into_inner()
        {
            let table_name = format!("sinks.{}", name.get_ref());
            let sink = as_table(
                v,
                sink,
                &table_name,
                &format!("write it as a [{table_name}] table"),
            )?;
            let sink = parse_sink(v, name.get_ref(), sink, &stream_names)?;
            sinks.insert(name.get_ref().to_string(), sink);
        }
    }
    Ok(Config {
        data_dir,
        checkpoint_interval: raw.checkpoint_interval.unwrap_or(Duration::from_secs(1)),
        shutdown_timeout: raw.shutdown_timeout.unwrap_or(Duration::from_secs(10)),
        streams,
        sinks,
        metrics: raw.metrics.map(|m| metrics(v, &m)).transpose()?,
        checkpoints,
        cluster,
    })
}

fn metrics(v: &Validator, raw: &RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let text = v.expand(&raw.listen)?;
    let listen = text.parse().map_err(|_| {
        v.error(
            raw.listen.span(),
            format!("invalid listen address `{text}`"),
        )
        .with_key("listen")
        .with_help("write an IP address and port, e.g. \"127.0.0.1:9464\"")
    })?;
    Ok(MetricsConfig { listen })
}

fn stream_table(
    v: &Validator,
    name: &str,
    span: Range<usize>,
    raw: RawStream,
) -> Result<StreamConfig, ConfigError> {
    v.check_name("stream", name, span.clone())?;
    let url = v.http_url(&raw.url)?;
    let headers = v.headers(&raw.headers)?;
    let auth = validate_auth(v, &raw.auth, &url, &headers)?;
    let (method, body) = method_and_body(v, span.clone(), &raw)?;
    let last_event_id_query = match &raw.last_event_id_query {
        None => None,
        Some(name) => {
            let text = v.expand(name)?;
            if text.is_empty()
                || text.contains(['&', '=', '#'])
                || text.chars().any(char::is_whitespace)
            {
                return Err(v
                    .error(name.span(), format!("invalid query parameter name {text:?}"))
                    .with_key("last_event_id_query")
                    .with_help("name the parameter the server reads the last event id from, e.g. \"lastEventID\""));
            }
            Some(text)
        }
    };
    let backoff_initial = raw.backoff_initial.unwrap_or(Duration::from_secs(1));
    let backoff_max = raw.backoff_max.unwrap_or(Duration::from_secs(60));
    if backoff_initial.is_zero() || backoff_initial > backoff_max {
        return Err(v
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
        return Err(v
            .error_at_key(span, "idle_timeout", "`idle_timeout` must be above zero")
            .with_help("servers send comments as keep-alives; set it above their interval"));
    }
    let initial_last_event_id = raw
        .initial_last_event_id
        .as_ref()
        .map(|id| v.expand(id))
        .transpose()?;
    let defaults = Limits::default();
    let limits = Limits {
        max_line_bytes: v.bounded(
            &raw.max_line_bytes,
            "max_line_bytes",
            MIN_LIMIT_BYTES..=MAX_LIMIT_BYTES,
            defaults.max_line_bytes,
        )?,
        max_event_bytes: v.bounded(
            &raw.max_event_bytes,
            "max_event_bytes",
            MIN_LIMIT_BYTES..=MAX_LIMIT_BYTES,
            defaults.max_event_bytes,
        )?,
    };
    let max_redirects = v.bounded(&raw.max_redirects, "max_redirects", 0..=MAX_REDIRECTS, 10)?;
    let ca_file = raw
        .ca_file
        .as_ref()
        .map(|f| v.expand(f).map(PathBuf::from))
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
                return Err(v
                    .error(n.span(), "`give_up_after` must be at least 1")
                    .with_key("give_up_after")
                    .with_help("leave it out to retry forever"))
            }
            other => other.as_ref().map(|n| *n.get_ref()),
        },
        give_up_statuses: match &raw.give_up_statuses {
            Some(list) => {
                if let Some(bad) = list.get_ref().iter().find(|s| !(400..=599).contains(*s)) {
                    return Err(v
                        .error(list.span(), format!("`{bad}` is not an HTTP error status"))
                        .with_key("give_up_statuses")
                        .with_help("list 4xx or 5xx statuses, e.g. [401, 403, 404, 410]"));
                }
                list.get_ref().clone()
            }
            None => DEFAULT_GIVE_UP_STATUSES.to_vec(),
        },
        auth,
        method,
        body,
        last_event_id_query,
        id_gap_check: raw.id_gap_check.unwrap_or_default(),
    })
}

/// A stream's `method` and its `body` or `body_file`.
fn method_and_body(
    v: &Validator,
    span: Range<usize>,
    raw: &RawStream,
) -> Result<(reqwest::Method, Option<bytes::Bytes>), ConfigError> {
    let method = match &raw.method {
        None => reqwest::Method::GET,
        Some(method) => match method.get_ref().to_ascii_uppercase().as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            _ => {
                return Err(v
                    .error(
                        method.span(),
                        format!("unsupported method `{}`", method.get_ref()),
                    )
                    .with_key("method")
                    .with_help("expected GET (the default) or POST"))
            }
        },
    };
    let body = match (&raw.body, &raw.body_file) {
        (None, None) => None,
        (Some(_), Some(file)) => {
            return Err(v
                .error(file.span(), "set `body` or `body_file`, not both")
                .with_key("body_file"))
        }
        (Some(body), None) => Some(bytes::Bytes::from(v.expand(body)?)),
        (None, Some(file)) => {
            let path = PathBuf::from(v.expand(file)?);
            let bytes = std::fs::read(&path).map_err(|e| {
                v.error(
                    file.span(),
                    format!("cannot read body_file {}: {e}", path.display()),
                )
                .with_key("body_file")
            })?;
            Some(bytes::Bytes::from(bytes))
        }
    };
    if body.is_some() && method == reqwest::Method::GET {
        let at = raw
            .body
            .as_ref()
            .or(raw.body_file.as_ref())
            .map_or(span, Spanned::span);
        return Err(v
            .error(at, "a GET request carries no body")
            .with_key(if raw.body.is_some() {
                "body"
            } else {
                "body_file"
            })
            .with_help("set method = \"POST\" to send it"));
    }
    Ok((method, body))
}

/// The `[checkpoints]` table: its own keys, and a NATS connection's.
fn checkpoints(
    v: &Validator,
    table: Spanned<DeValue<'_>>,
) -> Result<CheckpointBackendConfig, ConfigError> {
    let span = table.span();
    let table = as_table(v, table, "checkpoints", "write it as a [checkpoints] table")?;
    let connection_keys = RawConnection::keys();
    let (connection, own) = split_table(table, connection_keys);
    let own_keys = field_names::<RawCheckpoints>();
    let known: Vec<&str> = own_keys.iter().chain(connection_keys).copied().collect();
    v.refuse_unknown_keys(own.get_ref(), &known)?;
    let raw: RawCheckpoints = v.table(own)?;
    match raw.backend.get_ref().as_str() {
        "local" => {
            let nats_key = keys_of(connection.get_ref())
                .into_iter()
                .chain(raw.bucket.as_ref().map(|b| ("bucket".to_owned(), b.span())))
                .next();
            if let Some((key, at)) = nats_key {
                return Err(v
                    .error(
                        at,
                        format!("key `{key}` only applies to backend = \"nats\""),
                    )
                    .with_key(key));
            }
            Ok(CheckpointBackendConfig::Local)
        }
        "nats" => Ok(CheckpointBackendConfig::Nats(NatsCheckpointConfig {
            connection: v.table::<RawConnection>(connection)?.validate(v, span)?,
            bucket: bucket_name(v, &raw.bucket, "sse-relay-checkpoints")?,
        })),
        other => Err(v
            .error(
                raw.backend.span(),
                format!("unknown checkpoint backend `{other}`"),
            )
            .with_key("backend")
            .with_help("expected one of: local, nats")),
    }
}

/// `value` as a table, or an error saying `name` must be one, and `help`.
fn as_table<'de>(
    v: &Validator,
    value: Spanned<DeValue<'de>>,
    name: &str,
    help: &str,
) -> Result<Spanned<DeTable<'de>>, ConfigError> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(table) => Ok(Spanned::new(span, table)),
        _ => Err(v
            .error(span, format!("`{name}` must be a table"))
            .with_help(help.to_owned())),
    }
}

/// The `[cluster]` table; it needs checkpoints every instance can read.
fn cluster(
    v: &Validator,
    raw: &Spanned<RawCluster>,
    checkpoints: &CheckpointBackendConfig,
) -> Result<ClusterConfig, ConfigError> {
    let span = raw.span();
    let raw = raw.get_ref();
    if *checkpoints == CheckpointBackendConfig::Local {
        return Err(v
            .error(span, "[cluster] needs shared checkpoints")
            .with_help(
                "add [checkpoints] backend = \"nats\": a stream taken over by another \
                 instance must resume from where this one left it",
            ));
    }
    let instance_id = v.expand(&raw.instance_id)?;
    let valid = !instance_id.is_empty()
        && instance_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !valid {
        return Err(v
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
            Some(ttl) if *ttl.get_ref() < Duration::from_secs(1) => return Err(v
                .error(ttl.span(), "`lease_ttl` must be at least 1s")
                .with_key("lease_ttl")
                .with_help(
                    "leases are renewed every third of it; shorter ones churn on any hiccup",
                )),
            // Deadlines are computed as now + lease_ttl: an absurd value
            // would overflow the clock, and a lease that outlives a day
            // means a dead instance's streams wait a day for a new owner.
            Some(ttl) if *ttl.get_ref() > Duration::from_secs(86_400) => return Err(v
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
        bucket: bucket_name(v, &raw.bucket, "sse-relay-leases")?,
    })
}

fn bucket_name(
    v: &Validator,
    raw: &Option<Spanned<String>>,
    default: &str,
) -> Result<String, ConfigError> {
    let Some(raw) = raw else {
        return Ok(default.to_owned());
    };
    let name = v.expand(raw)?;
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if valid {
        Ok(name)
    } else {
        Err(v
            .error(raw.span(), format!("invalid bucket name `{name}`"))
            .with_key("bucket")
            .with_help("bucket names use letters, digits, `_` and `-`"))
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
