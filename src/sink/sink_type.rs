//! What a sink type provides ([`SinkType`]): its table's keys and their
//! validation, its `check` line and warnings, what start-up must find usable,
//! and how to build it. [`super::registry`] lists the types.

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use std::ops::Range;

use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use super::Sink;
use crate::preflight::Findings;
use crate::record::Encoding;
use crate::shutdown::Shutdown;
use crate::sse::Limits;
use crate::validate::{ConfigError, Validator};

/// What one sink type provides. `Self` is its validated settings (the keys
/// of its table beyond the ones every sink has: `type`, `inputs`,
/// `event_types`, `queue_size`, `when_full`, `encoding`).
pub trait SinkType: Sized {
    /// The `type = "..."` that selects it.
    const TYPE: &'static str;
    /// Its table's own keys as written in the file, with serde's spans.
    type Raw: for<'de> Deserialize<'de>;
    /// The running sink.
    type Sink: Sink + Send + Sync + 'static;

    /// Validates the type's own keys in `table` (usually read with
    /// [`read_table`]; a type whose keys come from more than one struct, as
    /// NATS's own and its connection's, splits the table first).
    fn from_table(v: &Validator, table: Spanned<DeTable<'_>>) -> Result<Self, ConfigError>;

    /// The keys its table takes beyond the common ones.
    fn keys() -> Vec<&'static str> {
        crate::validate::field_names::<Self::Raw>().to_vec()
    }

    /// `Err(help)` if this type cannot write `encoding`; the help says what
    /// it writes instead.
    fn check_encoding(encoding: Encoding) -> Result<(), &'static str>;

    /// Where it sends records, for `check`'s summary; never a secret.
    fn describe(&self, encoding: Encoding) -> String;

    /// What `check` should warn about (each line names the sink).
    fn warnings(&self, _sink: &str, _out: &mut Vec<String>) {}

    /// Checks that what it writes to or reads exists and is usable (see
    /// [`crate::prepare`]); `streams` are the streams it takes.
    fn prepare(&self, _streams: &[&str], _findings: &mut Findings) {}

    /// Builds the running sink.
    fn build(&self, start: &Start<'_>) -> Result<Self::Sink, StartError>;
}

/// What a sink is built from beyond its own settings.
pub struct Start<'a> {
    pub name: &'a str,
    pub encoding: Encoding,
    /// The largest limits among the streams it takes, and the longest of
    /// their names: what bounds the records it can be given.
    pub record_limits: Limits,
    pub longest_stream_name: usize,
    /// Without checkpoints (`tail`, `demo`), a closed stdout ends the run.
    pub stop_when_closed: Option<Shutdown>,
}

/// Why a sink could not be built: today, only its HTTP client can fail
/// (see [`crate::http::ClientError`]).
pub type StartError = crate::http::ClientError;

/// Reads `table` as `T`'s raw keys, returning the table's span with them.
pub fn read_table<T: SinkType>(
    v: &Validator,
    table: Spanned<DeTable<'_>>,
) -> Result<(Range<usize>, T::Raw), ConfigError> {
    let span = table.span();
    Ok((span, v.table(table)?))
}

/// [`SinkType::check_encoding`] for sinks that write one record a line
/// (stdout, files): `json` or `data`.
pub fn line_encodings(encoding: Encoding) -> Result<(), &'static str> {
    match encoding {
        Encoding::Ndjson => {
            Err("\"json\" already writes one JSON record a line; \"data\" writes the data alone")
        }
        Encoding::Json | Encoding::Data => Ok(()),
    }
}
