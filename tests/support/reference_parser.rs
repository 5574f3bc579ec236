//! A slow, obviously-correct reference for the WHATWG "Server-sent events"
//! parsing rules (see `DESIGN.md`, "The SSE format"), written from the rules,
//! not from `src/sse/parser.rs`. It is the oracle for the property tests.
//!
//! It works on one whole response body at a time: decode it (lossy UTF-8), drop
//! one leading U+FEFF, split it into lines, then interpret the lines one by one.
//! The last event id and the reconnection time survive from one body to the next,
//! as they survive reconnects.
//!
//! Optionally it also models the parser's memory [`RefLimits`] (not part of the
//! spec; the rule documented in `src/sse/parser.rs`): a line longer than
//! `max_line_bytes` is not interpreted and, unless it is a comment, its event is
//! dropped; an event whose data buffer (every data value plus its `\n`) would grow
//! past `max_event_bytes` is dropped. A dropped event is counted at its blank line.

use std::ops::Range;

use sse_relay::sse::ParserStats;

/// The counts the reference keeps (see [`Reference::oversized_events`]), as
/// the parser's [`ParserStats`] has them: what the two are compared on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    pub oversized_events: u64,
}

impl From<ParserStats> for Counts {
    fn from(s: ParserStats) -> Self {
        Counts {
            events: s.events,
            oversized_events: s.oversized_events,
        }
    }
}

/// A dispatched event: type, data, id, and the `retry` of its own block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    pub event: String,
    pub data: String,
    pub id: String,
    pub retry: Option<u64>,
}

/// Memory limits, measured in bytes of the body as received.
#[derive(Debug, Clone, Copy)]
pub struct RefLimits {
    pub max_line_bytes: usize,
    pub max_event_bytes: usize,
}

#[derive(Debug, Default)]
pub struct Reference {
    pub limits: Option<RefLimits>,
    /// The stream's last event id (sent as `Last-Event-ID`; empty: none).
    pub last_event_id: String,
    /// The last valid `retry` seen anywhere, in milliseconds.
    pub retry: Option<u64>,
    /// Events dropped for exceeding the limits.
    pub oversized_events: u64,
}

/// The pending event of the block being read.
#[derive(Default)]
struct Block {
    event_type: String,
    data: String,
    /// Bytes the data buffer holds as received (it may differ from `data.len()`
    /// where invalid UTF-8 was replaced).
    data_bytes: usize,
    retry: Option<u64>,
    too_large: bool,
}

/// The ranges of the lines of `bytes`, without their line endings. A line ends at
/// CRLF, LF or a lone CR; text after the last line ending is not a line.
fn line_ranges(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                lines.push(start..i);
                i += 2;
                start = i;
            }
            b'\r' | b'\n' => {
                lines.push(start..i);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    lines
}

/// Splits a line into field name and value: the name is everything before the
/// first `:`, the value everything after it minus one leading space. No colon:
/// the whole line is the name and the value is empty.
fn field(line: &str) -> (&str, &str) {
    match line.split_once(':') {
        Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    }
}

/// How many bytes, as received, the value of a field line has (see [`field`]).
fn raw_value_len(line: &[u8]) -> usize {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            value.strip_prefix(b" ").unwrap_or(value).len()
        }
        None => 0,
    }
}

impl Reference {
    pub fn new(limits: Option<RefLimits>) -> Self {
        Reference {
            limits,
            ..Reference::default()
        }
    }

    /// Parses one complete response body and returns the events it dispatches.
    pub fn parse_body(&mut self, body: &[u8]) -> Vec<RefEvent> {
        let text = String::from_utf8_lossy(body);
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
        // The same lines as received, to measure them against the limits.
        let raw = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        let lines = line_ranges(text.as_bytes());
        let raw_lines = line_ranges(raw);
        assert_eq!(lines.len(), raw_lines.len(), "decoding changed the lines");

        // The id the next dispatch commits: it starts as the stream's last id.
        let mut pending_id = self.last_event_id.clone();
        let mut block = Block::default();
        let mut events = Vec::new();
        for (range, raw_range) in lines.into_iter().zip(raw_lines) {
            let line = &text[range];
            let raw_line = &raw[raw_range];

            if let Some(limits) = self.limits {
                if raw_line.len() > limits.max_line_bytes {
                    if !line.starts_with(':') {
                        block.too_large = true;
                        block.data.clear();
                    }
                    continue;
                }
            }

            if line.is_empty() {
                // Dispatch.
                self.last_event_id = pending_id.clone();
                let block = std::mem::take(&mut block);
                if block.too_large {
                    self.oversized_events += 1;
                } else if !block.data.is_empty() {
                    let mut data = block.data;
                    data.pop(); // the `\n` after the last data line
                    let event = if block.event_type.is_empty() {
                        "message".to_owned()
                    } else {
                        block.event_type
                    };
                    events.push(RefEvent {
                        event,
                        data,
                        id: self.last_event_id.clone(),
                        retry: block.retry,
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment
            }

            let (name, value) = field(line);
            match name {
                "event" => block.event_type = value.to_owned(),
                "data" => {
                    if block.too_large {
                        continue;
                    }
                    let value_bytes = raw_value_len(raw_line);
                    if let Some(limits) = self.limits {
                        // The joining `\n`s count, the final one does not.
                        if block.data_bytes + value_bytes > limits.max_event_bytes {
                            block.too_large = true;
                            block.data.clear();
                            continue;
                        }
                    }
                    block.data_bytes += value_bytes + 1;
                    block.data.push_str(value);
                    block.data.push('\n');
                }
                "id" if !value.contains('\0') => pending_id = value.to_owned(),
                "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                    // Too big for u64: as long as it can be.
                    let ms = value.parse::<u64>().unwrap_or(u64::MAX);
                    self.retry = Some(ms);
                    block.retry = Some(ms);
                }
                // Any other field, an id with a NUL, a retry that is not all digits.
                _ => {}
            }
        }
        // Whatever follows the last blank line is an incomplete event: discarded.
        events
    }
}
