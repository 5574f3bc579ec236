//! `type = "webhook"`: where requests go (`url`, `method`, `headers`, TLS),
//! how batches close (`[sinks.NAME.batch]`), compression, signing, dead
//! letters and retry backoff.

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use super::{dead_letter_torn_tail, WebhookSink};
use crate::auth::config::validate_auth;
use crate::auth::{AuthConfig, RawAuth};
use crate::http::redact::url_has_credentials;
use crate::http::redact_url;
use crate::preflight::Findings;
use crate::record::Encoding;
use crate::sink::sink_type::{read_table, SinkType, Start, StartError};
use crate::validate::{spanned_duration, ConfigError, Secret, Validator};

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
    /// Credentials renewed without a reload (`[sinks.NAME.auth]`).
    pub auth: Option<AuthConfig>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
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
    auth: Option<Spanned<RawAuth>>,
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

impl SinkType for WebhookConfig {
    const TYPE: &'static str = "webhook";
    type Raw = RawWebhook;
    type Sink = WebhookSink;

    fn from_table(v: &Validator, table: Spanned<DeTable<'_>>) -> Result<Self, ConfigError> {
        let (span, raw) = read_table::<Self>(v, table)?;
        let url = raw.url.as_ref().ok_or_else(|| {
            v.error(span.clone(), "missing key `url` for a webhook sink")
                .with_key("url")
                .with_help("e.g. url = \"https://collector.example.com/events\"")
        })?;
        let url = v.http_url(url)?;
        let method = match &raw.method {
            None => reqwest::Method::POST,
            Some(method) => match method.get_ref().to_ascii_uppercase().as_str() {
                "POST" => reqwest::Method::POST,
                "PUT" => reqwest::Method::PUT,
                "PATCH" => reqwest::Method::PATCH,
                _ => {
                    return Err(v
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
            Some(headers) => v.headers(headers.get_ref())?,
            None => HeaderMap::new(),
        };
        let timeout = v.above_zero("timeout", &raw.timeout, Duration::from_secs(30))?;
        let connect_timeout = v.above_zero(
            "connect_timeout",
            &raw.connect_timeout,
            Duration::from_secs(10),
        )?;
        let (backoff_initial, backoff_max) = v.backoff(
            span,
            &raw.backoff_initial,
            &raw.backoff_max,
            (Duration::from_secs(1), Duration::from_secs(60)),
        )?;
        let retry_max = raw
            .retry_max
            .as_ref()
            .map_or(Duration::from_secs(3600), |r| *r.get_ref());
        let auth = validate_auth(v, &raw.auth, &url, &headers)?;
        Ok(WebhookConfig {
            auth,
            url,
            method,
            headers,
            timeout,
            connect_timeout,
            ca_file: v.path_value(&raw.ca_file)?,
            tls_insecure: raw.tls_insecure.as_ref().is_some_and(|t| *t.get_ref()),
            batch: batch(v, raw.batch.as_ref())?,
            compression: raw.compression.as_ref().map(|c| *c.get_ref()),
            dead_letter_path: v.path_value(&raw.dead_letter_path)?,
            secret: v.secret_or_file(("secret", &raw.secret), ("secret_file", &raw.secret_file))?,
            backoff_initial,
            backoff_max,
            retry_max,
        })
    }

    fn check_encoding(encoding: Encoding) -> Result<(), &'static str> {
        match encoding {
            Encoding::Data => Err(
                "a webhook sends records: \"json\" (a JSON array a request) or \"ndjson\" (one record a line)",
            ),
            Encoding::Json | Encoding::Ndjson => Ok(()),
        }
    }

    fn describe(&self, encoding: Encoding) -> String {
        summary(self, encoding)
    }

    fn warnings(&self, sink: &str, out: &mut Vec<String>) {
        if let Some(auth) = &self.auth {
            auth.warnings(&format!("sink `{sink}`"), &self.url, out);
        }
        if self.tls_insecure {
            out.push(format!(
                "sink `{}` has tls_insecure = true: TLS certificates are not verified",
                sink
            ));
        }
        if self.url.scheme() == "http" && !self.headers.is_empty() {
            out.push(format!(
            "sink `{}` sends headers over plain http://; credentials in them travel unencrypted",
            sink
        ));
        }
        if self.url.scheme() == "http" && url_has_credentials(&self.url) {
            out.push(format!(
            "sink `{}` has credentials in a plain http:// URL (user info or a parameter named like a secret): they travel unencrypted",
            sink
        ));
        }
        if self.dead_letter_path.is_none() {
            out.push(format!(
            "sink `{}` has no dead_letter_path: batches its receiver rejects with a 4xx are logged and dropped",
            sink
        ));
        }
    }

    fn prepare(&self, _streams: &[&str], findings: &mut Findings) {
        if let Some(ca_file) = &self.ca_file {
            findings.ca_file("ca_file", ca_file);
        }
        if let Some(dead) = &self.dead_letter_path {
            findings.append_target("dead_letter_path", dead);
        }
    }

    fn build(&self, start: &Start<'_>) -> Result<WebhookSink, StartError> {
        WebhookSink::new(
            start.name,
            Box::new(self.clone()),
            start.encoding,
            dead_letter_torn_tail(start.record_limits, start.longest_stream_name),
        )
    }
}

/// The `[sinks.NAME.batch]` table.
fn batch(v: &Validator, raw: Option<&Spanned<RawBatch>>) -> Result<BatchConfig, ConfigError> {
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
                return Err(v
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

/// One line about a webhook sink: where, how, and whether signed, never the
/// secret or header values.
fn summary(webhook: &WebhookConfig, encoding: Encoding) -> String {
    let batch = &webhook.batch;
    let mut out = format!(
        "webhook {} {} ({}, batch {} events / {} bytes / {}, timeout {}",
        webhook.method,
        redact_url(&webhook.url),
        match encoding {
            Encoding::Ndjson => "ndjson",
            Encoding::Json | Encoding::Data => "json",
        },
        batch.max_events,
        batch.max_bytes,
        humantime::format_duration(batch.timeout),
        humantime::format_duration(webhook.timeout),
    );
    if webhook.compression.is_some() {
        out.push_str(", gzip");
    }
    if webhook.secret.is_some() {
        out.push_str(", signed");
    }
    if !webhook.headers.is_empty() {
        let names: Vec<&str> = webhook.headers.keys().map(|k| k.as_str()).collect();
        out.push_str(&format!(", headers: {}", names.join(", ")));
    }
    if let Some(auth) = &webhook.auth {
        out.push_str(&format!(", auth: {}", auth.describe()));
    }
    if let Some(path) = &webhook.dead_letter_path {
        out.push_str(&format!(", dead letters: {}", path.display()));
    }
    out.push(')');
    out
}
