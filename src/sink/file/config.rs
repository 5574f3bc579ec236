//! `type = "file"`: `path` (which may hold `{stream}`), `fsync` and
//! `fsync_interval`.

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use super::{torn_tail, FileSink};
use crate::preflight::Findings;
use crate::record::Encoding;
use crate::sink::sink_type::{line_encodings, read_table, SinkType, Start, StartError};
use crate::validate::{nonzero_duration, ConfigError, Validator};

/// A file sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// A path that may contain `{stream}`.
    pub path: String,
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
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

impl FsyncPolicy {
    /// The name the configuration writes it by.
    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Never => "never",
            FsyncPolicy::Interval => "interval",
            FsyncPolicy::EveryBatch => "every_batch",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSink {
    path: Option<Spanned<String>>,
    fsync: Option<Spanned<FsyncPolicy>>,
    #[serde(default, deserialize_with = "nonzero_duration")]
    fsync_interval: Option<Duration>,
}

impl SinkType for FileSinkConfig {
    const TYPE: &'static str = "file";
    type Raw = RawFileSink;
    type Sink = FileSink;

    fn from_table(v: &Validator, table: Spanned<DeTable<'_>>) -> Result<Self, ConfigError> {
        let (span, raw) = read_table::<Self>(v, table)?;
        let path = raw.path.as_ref().ok_or_else(|| {
            v.error(span, "missing key `path` for a file sink")
                .with_key("path")
                .with_help("e.g. path = \"/var/log/sse-relay/{stream}.jsonl\"")
        })?;
        Ok(FileSinkConfig {
            path: v.expand(path)?,
            fsync: raw.fsync.map_or(FsyncPolicy::Never, Spanned::into_inner),
            fsync_interval: raw.fsync_interval.unwrap_or(Duration::from_secs(1)),
        })
    }

    fn check_encoding(encoding: Encoding) -> Result<(), &'static str> {
        line_encodings(encoding)
    }

    fn describe(&self, _: Encoding) -> String {
        format!("file {} (fsync {})", self.path, self.fsync.name())
    }

    /// Every file it will append to (one per stream with `{stream}`).
    fn prepare(&self, streams: &[&str], findings: &mut Findings) {
        for stream in streams {
            let target = self.path.replace("{stream}", stream);
            findings.append_target("path", Path::new(&target));
            if !self.path.contains("{stream}") {
                break;
            }
        }
    }

    fn build(&self, start: &Start<'_>) -> Result<FileSink, StartError> {
        let torn = torn_tail(
            start.encoding,
            start.record_limits,
            start.longest_stream_name,
        );
        Ok(FileSink::new(
            start.name,
            &self.path,
            start.encoding,
            self.fsync,
            self.fsync_interval,
            torn,
        ))
    }
}
