//! `type = "stdout"`: no keys of its own.

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use super::StdoutSink;
use crate::record::Encoding;
use crate::sink::sink_type::{line_encodings, read_table, SinkType, Start, StartError};
use crate::validate::{ConfigError, Validator};

/// A stdout sink's settings: there are none beyond the common keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StdoutConfig {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStdout {}

impl SinkType for StdoutConfig {
    const TYPE: &'static str = "stdout";
    type Raw = RawStdout;
    type Sink = StdoutSink;

    fn from_table(v: &Validator, table: Spanned<DeTable<'_>>) -> Result<Self, ConfigError> {
        let (_, RawStdout {}) = read_table::<Self>(v, table)?;
        Ok(StdoutConfig {})
    }

    fn check_encoding(encoding: Encoding) -> Result<(), &'static str> {
        line_encodings(encoding)
    }

    fn describe(&self, _: Encoding) -> String {
        "stdout".to_owned()
    }

    fn build(&self, start: &Start<'_>) -> Result<StdoutSink, StartError> {
        Ok(StdoutSink::new(
            start.encoding,
            start.stop_when_closed.clone(),
        ))
    }
}
