//! The incremental `text/event-stream` parser.
//!
//! Bytes arrive in chunks of any size, split anywhere (inside a line, inside a
//! CRLF, inside a multi-byte character, inside the BOM). The parser keeps just
//! enough state to make its output independent of those splits:
//!
//! * a partial line (only the bytes of a line that has not ended yet),
//! * whether the previous chunk ended in CR (so a following LF is not a new line),
//! * how much of a leading BOM has been seen,
//! * the pending event: data buffer, type buffer, pending id, the block's retry.
//!
//! Lines are split on bytes (CR and LF never occur inside a UTF-8 sequence), and
//! text is decoded once per field value with U+FFFD for invalid sequences, which
//! is what decoding the whole stream first would give.
//!
//! Memory is bounded by [`Limits`]: a line longer than `max_line_bytes` or an
//! event whose data grows past `max_event_bytes` is not buffered; the event it
//! belongs to is dropped at its blank line and counted in
//! [`ParserStats::oversized_events`]. The rule depends only on the bytes, never on
//! how they were split.

use std::sync::Arc;

use super::Event;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
/// `bom_seen` once the start of the stream has been checked for a BOM.
const BOM_DONE: usize = usize::MAX;

/// Bounds that keep a hostile or broken server from growing memory without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line kept, in bytes, not counting its line ending.
    pub max_line_bytes: usize,
    /// Largest event data kept, in bytes (the data lines plus their joining `\n`s).
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 1 << 20,
            max_event_bytes: 8 << 20,
        }
    }
}

/// Counters a stream reports in its logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParserStats {
    /// Events dispatched.
    pub events: u64,
    /// Events dropped because a line or the data exceeded [`Limits`].
    pub oversized_events: u64,
}

/// An incremental SSE parser for one event stream.
///
/// Feed it body chunks with [`Parser::feed`]; call [`Parser::start_connection`]
/// when a new response body begins (after a reconnect). The last event id and the
/// reconnection time survive reconnects, as the spec requires.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    /// Bytes of the BOM matched at the start of the body, or `BOM_DONE`.
    bom_seen: usize,
    /// The previous chunk ended with CR: an LF at the start of the next is part of
    /// the same line ending.
    after_cr: bool,
    /// The start of a line whose end has not arrived yet.
    partial_line: Vec<u8>,
    /// The current line passed `max_line_bytes`; its bytes are being skipped.
    line_too_long: bool,
    /// The first byte of the line being skipped (a comment may be as long as it likes).
    long_line_first_byte: u8,
    data: Vec<u8>,
    event_type: Vec<u8>,
    /// The pending event was over a limit; it will be dropped at dispatch.
    event_too_large: bool,
    pending_id: Arc<str>,
    last_event_id: Arc<str>,
    block_retry: Option<u64>,
    retry: Option<u64>,
    /// The `Arc` handed out for the most recent event type, reused while it repeats.
    type_cache: Arc<str>,
    message_type: Arc<str>,
    stats: ParserStats,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new(Limits::default())
    }
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        let message_type: Arc<str> = Arc::from("message");
        let empty: Arc<str> = Arc::from("");
        Parser {
            limits,
            bom_seen: 0,
            after_cr: false,
            partial_line: Vec::new(),
            line_too_long: false,
            long_line_first_byte: 0,
            data: Vec::new(),
            event_type: Vec::new(),
            event_too_large: false,
            pending_id: empty.clone(),
            last_event_id: empty,
            block_retry: None,
            retry: None,
            type_cache: message_type.clone(),
            message_type,
            stats: ParserStats::default(),
        }
    }

    /// Sets the last event id, e.g. from a checkpoint, before the first connection.
    pub fn set_last_event_id(&mut self, id: &str) {
        self.last_event_id = Arc::from(id);
        self.pending_id = self.last_event_id.clone();
    }

    /// The id to send as `Last-Event-ID` on the next connection (empty: send none).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The last event id as the shared string events carry.
    pub fn last_event_id_shared(&self) -> &Arc<str> {
        &self.last_event_id
    }

    /// The reconnection time the server asked for with `retry:`, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    pub fn stats(&self) -> ParserStats {
        self.stats
    }

    /// Begins a new response body. Whatever the previous body left unfinished (a
    /// partial line, an event without its blank line) is discarded, as the spec
    /// discards an incomplete event at end of stream. The last event id and retry
    /// are kept.
    pub fn start_connection(&mut self) {
        self.bom_seen = 0;
        self.after_cr = false;
        self.partial_line.clear();
        self.line_too_long = false;
        self.reset_block();
        self.pending_id = self.last_event_id.clone();
    }

    /// Parses one chunk of the body, calling `emit` for every event it completes.
    pub fn feed(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(Event)) {
        if self.bom_seen != BOM_DONE {
            // One BOM at the very start of the body is skipped, even when it
            // arrives one byte at a time.
            while self.bom_seen < BOM.len() {
                match chunk.first() {
                    None => return,
                    Some(&b) if b == BOM[self.bom_seen] => {
                        self.bom_seen += 1;
                        chunk = &chunk[1..];
                    }
                    Some(_) => {
                        // Not a BOM after all: the bytes matched so far are text.
                        let matched = self.bom_seen;
                        self.bom_seen = BOM_DONE;
                        self.feed_lines(&BOM[..matched], emit);
                        break;
                    }
                }
            }
            self.bom_seen = BOM_DONE;
        }
        self.feed_lines(chunk, emit);
    }

    /// Splits a chunk into lines. Lines that lie wholly inside the chunk are
    /// handled in place; only a line cut by the chunk's end is copied.
    fn feed_lines(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(Event)) {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) {
            let line_bytes = &chunk[..end];
            if self.line_too_long {
                self.finish_long_line();
            } else if self.partial_line.is_empty() {
                self.check_line_length(line_bytes.len(), line_bytes.first());
                if self.line_too_long {
                    self.finish_long_line();
                } else {
                    self.process_line(line_bytes, emit);
                }
            } else {
                self.check_line_length(self.partial_line.len() + line_bytes.len(), None);
                if self.line_too_long {
                    self.partial_line.clear();
                    self.finish_long_line();
                } else {
                    let mut line = std::mem::take(&mut self.partial_line);
                    line.extend_from_slice(line_bytes);
                    self.process_line(&line, emit);
                    line.clear();
                    self.partial_line = line;
                }
            }
            if chunk[end] == b'\r' {
                match chunk.get(end + 1) {
                    Some(b'\n') => chunk = &chunk[end + 2..],
                    Some(_) => chunk = &chunk[end + 1..],
                    None => {
                        self.after_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[end + 1..];
            }
        }
        if !chunk.is_empty() && !self.line_too_long {
            let first = self
                .partial_line
                .first()
                .copied()
                .or(chunk.first().copied());
            self.check_line_length(self.partial_line.len() + chunk.len(), first.as_ref());
            if self.line_too_long {
                self.partial_line.clear();
            } else {
                self.partial_line.extend_from_slice(chunk);
            }
        }
    }

    /// Marks the current line as too long once it passes the limit. `first` is
    /// the line's first byte when it is not already in `partial_line`.
    fn check_line_length(&mut self, len: usize, first: Option<&u8>) {
        if len > self.limits.max_line_bytes {
            self.line_too_long = true;
            self.long_line_first_byte = first
                .copied()
                .or(self.partial_line.first().copied())
                .unwrap_or(0);
        }
    }

    /// The end of a line that was too long to keep. A comment is harmless; any
    /// field may have been data, so the event it belongs to is dropped.
    fn finish_long_line(&mut self) {
        self.line_too_long = false;
        if self.long_line_first_byte != b':' {
            self.event_too_large = true;
            self.data.clear();
        }
    }

    fn process_line(&mut self, line: &[u8], emit: &mut impl FnMut(Event)) {
        if line.is_empty() {
            self.dispatch(emit);
            return;
        }
        if line[0] == b':' {
            return; // comment: a keep-alive, nothing to do
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..colon], value)
            }
            None => (line, &line[line.len()..]),
        };
        match name {
            b"data" => {
                if self.event_too_large {
                    return;
                }
                // `data` holds a `\n` after every line so far: the joining ones of the
                // final data, which count, and none yet after this line, which does not.
                if self.data.len() + value.len() > self.limits.max_event_bytes {
                    self.event_too_large = true;
                    self.data = Vec::new();
                    return;
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            // An id holding NUL is ignored.
            b"id" if memchr::memchr(0, value).is_none() => {
                self.pending_id = Arc::from(String::from_utf8_lossy(value).as_ref());
            }
            // Only ASCII digits make a valid retry.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // Absurd values saturate here; the stream clamps them to its bounds.
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.retry = Some(ms);
                self.block_retry = Some(ms);
            }
            _ => {} // unknown fields are ignored
        }
    }

    /// A blank line: the pending block becomes an event, if it has data.
    fn dispatch(&mut self, emit: &mut impl FnMut(Event)) {
        // The last event id moves at dispatch, even for a block without data, so an
        // event cut off mid-way never moves the resume point.
        if !Arc::ptr_eq(&self.pending_id, &self.last_event_id) {
            self.last_event_id = self.pending_id.clone();
        }
        if self.event_too_large {
            self.stats.oversized_events += 1;
            self.reset_block();
            return;
        }
        if self.data.is_empty() {
            self.reset_block();
            return;
        }
        let data = &self.data[..self.data.len() - 1]; // drop the final `\n`
        let data = String::from_utf8_lossy(data).into_owned();
        let event = Event {
            event: self.take_event_type(),
            data,
            id: self.last_event_id.clone(),
            retry: self.block_retry,
        };
        self.stats.events += 1;
        self.reset_block();
        emit(event);
    }

    fn take_event_type(&mut self) -> Arc<str> {
        if self.event_type.is_empty() {
            return self.message_type.clone();
        }
        if self.type_cache.as_bytes() != self.event_type.as_slice() {
            self.type_cache = Arc::from(String::from_utf8_lossy(&self.event_type).as_ref());
        }
        self.type_cache.clone()
    }

    fn reset_block(&mut self) {
        self.data.clear();
        self.event_type.clear();
        self.event_too_large = false;
        self.block_retry = None;
        // A buffer that grew for one huge event is not kept for the rest of the
        // stream's life.
        if self.data.capacity() > 64 << 10 {
            self.data = Vec::new();
        }
    }
}
