//! One `[sinks.NAME]` table: the keys every sink has (`type`, `inputs`,
//! `event_types`, `queue_size`, `when_full`, `encoding`), and the dispatch on
//! `type` to the sink type that validates the rest (see [`super::registry`]).

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use serde::Deserialize;
use toml::de::DeTable;
use toml::Spanned;

use super::registry::{SinkKind, TYPE_NAMES};
use crate::record::Encoding;
use crate::validate::{field_names, split_table, ConfigError, Validator};

/// The largest `queue_size` (events; the queue's bytes are bounded too).
pub const MAX_QUEUE_SIZE: usize = 1 << 20;

/// Default `queue_size`: events queued per sink. Large enough that it is the
/// sink's byte budget (2 MiB) that bounds a queue of small events, so reading
/// and writing overlap in big batches; 1,024 held a stream of 70-byte events
/// to short batches and many hand-offs.
pub const DEFAULT_QUEUE_SIZE: usize = 16_384;

/// One validated `[sinks.NAME]` table.
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

/// What a sink does when its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The stream waits (and stops reading its socket): nothing is lost.
    Block,
    /// The event is dropped for this sink, counted and logged.
    DropNewest,
}

/// The keys every sink has, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSinkCommon {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    inputs: Spanned<Vec<Spanned<String>>>,
    event_types: Option<Spanned<Vec<String>>>,
    queue_size: Option<Spanned<usize>>,
    when_full: Option<WhenFull>,
    encoding: Option<Spanned<Encoding>>,
}

/// Validates the table of sink `name`; `streams` are the configured streams'
/// names, which `inputs` must name.
pub fn parse_sink(
    v: &Validator,
    name: &str,
    table: Spanned<DeTable<'_>>,
    streams: &[&str],
) -> Result<SinkConfig, ConfigError> {
    let span = table.span();
    v.check_name("sink", name, span.clone())?;
    let common_keys = field_names::<RawSinkCommon>();
    let (common, own) = split_table(table, common_keys);
    let raw: RawSinkCommon = v.table(common)?;
    let mut inputs = Vec::new();
    let mut all = false;
    for input in raw.inputs.get_ref() {
        let input_name = input.get_ref();
        if input_name == "*" {
            all = true;
        } else if streams.contains(&input_name.as_str()) {
            inputs.push(input_name.clone());
        } else {
            return Err(v
                .error(
                    input.span(),
                    format!("sink input `{input_name}` names no stream"),
                )
                .with_key("inputs")
                .with_help(format!(
                    "configured streams: {}; or use \"*\" for all of them",
                    streams.join(", ")
                )));
        }
    }
    if !all && inputs.is_empty() {
        return Err(v
            .error(raw.inputs.span(), "sink has no inputs")
            .with_key("inputs")
            .with_help("list the streams it takes, or \"*\" for all of them"));
    }
    let queue_size = raw
        .queue_size
        .as_ref()
        .map_or(DEFAULT_QUEUE_SIZE, |q| *q.get_ref());
    if !(1..=MAX_QUEUE_SIZE).contains(&queue_size) {
        let at = raw.queue_size.as_ref().map_or(span.clone(), |q| q.span());
        return Err(v
            .error(
                at,
                format!("`queue_size` must be between 1 and {MAX_QUEUE_SIZE}"),
            )
            .with_key("queue_size")
            .with_help("it counts events; memory is bounded by bytes as well (2 MiB per sink)"));
    }
    if let Some(types) = &raw.event_types {
        if types.get_ref().is_empty() {
            return Err(v
                .error(
                    types.span(),
                    "`event_types` is empty: the sink would take no event",
                )
                .with_key("event_types")
                .with_help("list the event types it takes, or leave the key out for all"));
        }
    }
    let type_name = raw.kind.get_ref().as_str();
    let Some(own_keys) = SinkKind::keys_of(type_name) else {
        return Err(v
            .error(raw.kind.span(), format!("unknown sink type `{type_name}`"))
            .with_key("type")
            .with_help(format!("expected one of: {}", TYPE_NAMES.join(", "))));
    };
    refuse_foreign_keys(v, type_name, &own, common_keys, &own_keys)?;
    let kind = SinkKind::parse(v, type_name, own).expect("the type is registered")?;
    let encoding = match raw.encoding {
        None => Encoding::Json,
        Some(encoding) => {
            if let Err(help) = kind.check_encoding(*encoding.get_ref()) {
                return Err(v
                    .error(
                        encoding.span(),
                        format!(
                            "encoding \"{}\" does not apply to sinks of type \"{type_name}\"",
                            encoding.get_ref().name()
                        ),
                    )
                    .with_key("encoding")
                    .with_help(help));
            }
            *encoding.get_ref()
        }
    };
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

/// Refuses a key of `table` that its type does not take, saying which types
/// take it, or that none does.
fn refuse_foreign_keys(
    v: &Validator,
    type_name: &str,
    table: &Spanned<DeTable<'_>>,
    common_keys: &[&str],
    own_keys: &[&'static str],
) -> Result<(), ConfigError> {
    for (key, at) in crate::validate::keys_of(table.get_ref()) {
        if own_keys.contains(&key.as_str()) {
            continue;
        }
        let takers: Vec<String> = TYPE_NAMES
            .iter()
            .filter(|other| {
                SinkKind::keys_of(other).is_some_and(|keys| keys.contains(&key.as_str()))
            })
            .map(|other| format!("\"{other}\""))
            .collect();
        if takers.is_empty() {
            let known: Vec<&str> = common_keys.iter().chain(own_keys).copied().collect();
            return Err(v.unknown_key(key, at, &known));
        }
        return Err(v
            .error(
                at,
                format!(
                    "key `{key}` only applies to sinks of type {}",
                    takers.join(" or ")
                ),
            )
            .with_help(format!("this sink's type is \"{type_name}\""))
            .with_key(key));
    }
    Ok(())
}
