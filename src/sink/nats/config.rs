//! `type = "nats"`: the JetStream subject template and stream, publishing
//! limits and retry backoff, and the NATS connection keys (see
//! [`crate::nats::config`]).

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use super::{check_subject_template, NatsSink};
use crate::nats::config::RawConnection;
use crate::nats::NatsConnection;
use crate::preflight::Findings;
use crate::record::Encoding;
use crate::sink::sink_type::{SinkType, Start, StartError};
use crate::validate::{field_names, spanned_duration, split_table, ConfigError, Validator};

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

/// The keys of a nats sink beyond its connection's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNatsSink {
    subject: Option<Spanned<String>>,
    stream: Option<Spanned<String>>,
    create_stream: Option<Spanned<bool>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    duplicate_window: Option<Spanned<Duration>>,
    max_in_flight: Option<Spanned<usize>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    ack_timeout: Option<Spanned<Duration>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    backoff_initial: Option<Spanned<Duration>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    backoff_max: Option<Spanned<Duration>>,
}

impl NatsSinkConfig {
    /// Validates the sink's own keys, given its validated connection.
    fn validate(
        v: &Validator,
        span: Range<usize>,
        raw: RawNatsSink,
        connection: NatsConnection,
    ) -> Result<Self, ConfigError> {
        let subject_raw = raw.subject.as_ref().ok_or_else(|| {
            v.error(span.clone(), "missing key `subject` for a nats sink")
                .with_key("subject")
                .with_help("e.g. subject = \"sse.{stream}.{event}\"")
        })?;
        let subject = v.expand(subject_raw)?;
        if let Err(problem) = check_subject_template(&subject) {
            return Err(v
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
                let name = v.expand(s)?;
                let valid = !name.is_empty()
                    && !name
                        .chars()
                        .any(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace());
                if !valid {
                    return Err(v
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
            return Err(v
                .error(at, "`create_stream = true` needs `stream`")
                .with_key("create_stream")
                .with_help("name the JetStream stream to create, e.g. stream = \"SSE\""));
        }
        let max_in_flight = match &raw.max_in_flight {
            None => 256,
            Some(m) if *m.get_ref() == 0 => {
                return Err(v
                    .error(m.span(), "`max_in_flight` must be at least 1")
                    .with_key("max_in_flight"))
            }
            Some(m) => *m.get_ref(),
        };
        let (backoff_initial, backoff_max) = v.backoff(
            span,
            &raw.backoff_initial,
            &raw.backoff_max,
            (Duration::from_millis(100), Duration::from_secs(10)),
        )?;
        Ok(NatsSinkConfig {
            connection,
            subject,
            stream,
            create_stream,
            duplicate_window: v.above_zero(
                "duplicate_window",
                &raw.duplicate_window,
                Duration::from_secs(120),
            )?,
            max_in_flight,
            ack_timeout: v.above_zero("ack_timeout", &raw.ack_timeout, Duration::from_secs(5))?,
            backoff_initial,
            backoff_max,
        })
    }
}

impl SinkType for NatsSinkConfig {
    const TYPE: &'static str = "nats";
    type Raw = RawNatsSink;
    type Sink = NatsSink;

    fn from_table(v: &Validator, table: Spanned<DeTable<'_>>) -> Result<Self, ConfigError> {
        let span = table.span();
        let (connection, own) = split_table(table, RawConnection::keys());
        let raw: RawNatsSink = v.table(own)?;
        let connection = v
            .table::<RawConnection>(connection)?
            .validate(v, span.clone())?;
        NatsSinkConfig::validate(v, span, raw, connection)
    }

    fn keys() -> Vec<&'static str> {
        let mut keys = field_names::<RawNatsSink>().to_vec();
        keys.extend_from_slice(RawConnection::keys());
        keys
    }

    fn check_encoding(encoding: Encoding) -> Result<(), &'static str> {
        match encoding {
            Encoding::Json => Ok(()),
            Encoding::Data | Encoding::Ndjson => {
                Err("a nats sink publishes one JSON record a message: \"json\"")
            }
        }
    }

    fn describe(&self, _: Encoding) -> String {
        format!(
            "nats {} subject {}{}",
            crate::nats::shown_urls(&self.connection),
            self.subject,
            self.stream
                .as_ref()
                .map_or(String::new(), |s| format!(" (JetStream stream {s})"))
        )
    }

    fn prepare(&self, _streams: &[&str], findings: &mut Findings) {
        if let Some(ca_file) = &self.connection.ca_file {
            findings.ca_file("ca_file", ca_file);
        }
    }

    fn build(&self, start: &Start<'_>) -> Result<NatsSink, StartError> {
        Ok(NatsSink::new(start.name, Box::new(self.clone())))
    }
}
