//! The incremental `text/event-stream` parser.
//!
//! Bytes arrive in chunks of any size, split anywhere (inside a line, inside a
//! CRLF, inside a multi-byte character, inside the BOM). The parser keeps just
//! enough state to make its output independent of those splits:
//!
//! * the line whose end has not arrived yet ([`Carry`]): a `data` line's value goes
//!   straight into the data buffer; any other line is kept in `partial_line`,
//! * whether the previous chunk ended in CR (so a following LF is not a new line),
//! * how much of a leading BOM has been seen,
//! * the pending event: data buffer, type buffer, pending id, the block's retry.
//!
//! Lines are split on bytes (CR and LF never occur inside a UTF-8 sequence), and
//! text is decoded once per field value with U+FFFD for invalid sequences, which
//! is what decoding the whole stream first would give.
//!
//! # Where the time goes, and why the code looks like this
//!
//! Scanning for line ends (memchr) runs at ~20 GB/s; what decides the speed is
//! what happens per event and per byte of data (see `DESIGN.md`, "Performance
//! facts"). So:
//!
//! * a data value is copied once, from the chunk into the buffer that becomes the
//!   event's `String`: the buffer is handed over, not copied again, and the next
//!   event's buffer is allocated at the size the previous event needed, so a
//!   steady stream costs one allocation per event and no reallocation;
//! * a `data` line cut by the chunk's end streams its bytes into that buffer too,
//!   so a line spanning many chunks (8 MiB lines in 16 KiB chunks) is copied once,
//!   never re-assembled, and its cost is linear in its length;
//! * UTF-8 is validated once per event, over the whole data (the fast path of
//!   `String::from_utf8`); lossy decoding runs only when that fails;
//! * an id or type equal to the previous one reuses its `Arc` (no allocation).
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

/// The line whose end has not arrived yet, carried from one chunk to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// The previous chunk ended at a line end.
    Nothing,
    /// A line of any kind, its bytes so far in `partial_line`.
    Line,
    /// A `data` line whose value goes straight into `data` as it arrives. With
    /// `skip_space`, no value byte has arrived yet, so a leading space is dropped.
    Data { skip_space: bool },
    /// A line over `max_line_bytes`, being skipped to its end. A comment may be as
    /// long as it likes; any other line drops its event.
    TooLong,
}

/// The pending event's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeState {
    /// No `event` field (or an empty one): `message`.
    Message,
    /// The same type as `type_cache`.
    Cached,
    /// Another type, in `event_type`.
    New,
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
    /// What is held of the line the last chunk cut.
    carry: Carry,
    /// Bytes of the carried line so far (all kinds), for `max_line_bytes`.
    carry_len: usize,
    /// The start of a carried line (`Carry::Line` only).
    partial_line: Vec<u8>,
    /// The data lines of the pending event, each followed by `\n`. Handed over as
    /// the event's `data` at dispatch.
    data: Vec<u8>,
    /// The capacity to give the next event's data buffer: the size of the last one.
    data_hint: usize,
    /// The pending event's type when it differs from `type_cache`.
    event_type: Vec<u8>,
    /// Which type the pending event has.
    type_state: TypeState,
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
            carry: Carry::Nothing,
            carry_len: 0,
            partial_line: Vec::new(),
            data: Vec::new(),
            data_hint: 0,
            event_type: Vec::new(),
            type_state: TypeState::Message,
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
        self.carry = Carry::Nothing;
        self.carry_len = 0;
        self.partial_line.clear();
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

    /// Splits a chunk into lines: first the end of the line the previous chunk
    /// cut, then the lines wholly inside the chunk, handled in place (no copy),
    /// then the start of a line this chunk cuts.
    fn feed_lines(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(Event)) {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        if self.carry != Carry::Nothing {
            match memchr::memchr2(b'\n', b'\r', chunk) {
                None => {
                    self.extend_carry(chunk);
                    return;
                }
                Some(end) => {
                    self.finish_carry(&chunk[..end], emit);
                    chunk = self.after_line_end(chunk, end);
                }
            }
        }
        // The hot loop: one memchr per line, the line handled where it lies.
        while let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) {
            let line = &chunk[..end];
            if line.len() > self.limits.max_line_bytes {
                self.long_line_ended(line[0]);
            } else {
                self.process_line(line, emit);
            }
            chunk = self.after_line_end(chunk, end);
            // Every event ends with a blank line, usually right after a line end:
            // dispatch it without a memchr call.
            if chunk.first() == Some(&b'\n') {
                self.dispatch(emit);
                chunk = &chunk[1..];
            }
        }
        if !chunk.is_empty() {
            self.start_carry(chunk);
        }
    }

    /// The rest of `chunk` after the line ending at `end` (CR, LF or CRLF). A CR
    /// that ends the chunk may be the first half of a CRLF: the next chunk says.
    #[inline]
    fn after_line_end<'c>(&mut self, chunk: &'c [u8], end: usize) -> &'c [u8] {
        if chunk[end] == b'\r' {
            match chunk.get(end + 1) {
                Some(b'\n') => &chunk[end + 2..],
                Some(_) => &chunk[end + 1..],
                None => {
                    self.after_cr = true;
                    &[]
                }
            }
        } else {
            &chunk[end + 1..]
        }
    }

    /// The chunk ends inside a line: keep what is needed of its start.
    fn start_carry(&mut self, start: &[u8]) {
        self.carry_len = start.len();
        if start.len() > self.limits.max_line_bytes {
            self.start_long_line(start[0]);
        } else if let Some(value) = start.strip_prefix(b"data:") {
            // The common case for long lines: stream the value into `data`.
            match value.split_first() {
                None => self.carry = Carry::Data { skip_space: true },
                Some((&first, rest)) => {
                    self.carry = Carry::Data { skip_space: false };
                    self.push_data(if first == b' ' { rest } else { value });
                }
            }
        } else {
            self.carry = Carry::Line;
            self.partial_line.extend_from_slice(start);
        }
    }

    /// A chunk without a line end, inside the carried line.
    fn extend_carry(&mut self, mut more: &[u8]) {
        if more.is_empty() {
            return;
        }
        self.carry_len += more.len();
        if self.carry != Carry::TooLong && self.carry_len > self.limits.max_line_bytes {
            let first = self.partial_line.first().copied().unwrap_or(b'd');
            self.partial_line.clear();
            self.start_long_line(first);
            return;
        }
        match self.carry {
            Carry::Line => self.partial_line.extend_from_slice(more),
            Carry::Data { skip_space } => {
                if skip_space {
                    more = more.strip_prefix(b" ").unwrap_or(more);
                    self.carry = Carry::Data { skip_space: false };
                }
                self.push_data(more);
            }
            Carry::TooLong | Carry::Nothing => {}
        }
    }

    /// The carried line ends with `rest`.
    fn finish_carry(&mut self, mut rest: &[u8], emit: &mut impl FnMut(Event)) {
        let carry = std::mem::replace(&mut self.carry, Carry::Nothing);
        let too_long =
            carry != Carry::TooLong && self.carry_len + rest.len() > self.limits.max_line_bytes;
        if too_long {
            let first = self.partial_line.first().copied().unwrap_or(b'd');
            self.partial_line.clear();
            self.start_long_line(first);
        }
        match if too_long { self.carry } else { carry } {
            Carry::Line => {
                let mut line = std::mem::take(&mut self.partial_line);
                line.extend_from_slice(rest);
                self.process_line(&line, emit);
                line.clear();
                if line.capacity() > 64 << 10 {
                    line = Vec::new(); // not kept after one long line
                }
                self.partial_line = line;
            }
            Carry::Data { skip_space } => {
                if skip_space {
                    rest = rest.strip_prefix(b" ").unwrap_or(rest);
                }
                self.push_data(rest);
                self.end_data_line();
            }
            Carry::TooLong => {} // `start_long_line` dealt with its event
            Carry::Nothing => unreachable!("finish_carry without a carried line"),
        }
        self.carry = Carry::Nothing;
        self.carry_len = 0;
    }

    /// A line has passed `max_line_bytes`: its bytes are skipped from here to its
    /// end. Unless it is a comment it may have been data, so its event is dropped.
    fn start_long_line(&mut self, first: u8) {
        self.carry = Carry::TooLong;
        if first != b':' {
            self.drop_event();
        }
    }

    /// A line over `max_line_bytes` that lies wholly inside a chunk.
    fn long_line_ended(&mut self, first: u8) {
        if first != b':' {
            self.drop_event();
        }
    }

    /// The pending event is over a limit: forget its data, drop it at dispatch.
    fn drop_event(&mut self) {
        self.event_too_large = true;
        self.data = Vec::new();
    }

    fn process_line(&mut self, line: &[u8], emit: &mut impl FnMut(Event)) {
        // Most lines are `data:`; test for it before splitting on the colon.
        if let Some(value) = line.strip_prefix(b"data:") {
            self.push_data(value.strip_prefix(b" ").unwrap_or(value));
            self.end_data_line();
            return;
        }
        let Some(&first) = line.first() else {
            self.dispatch(emit);
            return;
        };
        if first == b':' {
            return; // comment: a keep-alive, nothing to do
        }
        // Field names are short: a plain loop finds the colon sooner than a call.
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        match name {
            b"data" => {
                self.push_data(value);
                self.end_data_line();
            }
            // Streams repeat their types: one equal to the last is not copied.
            b"event" if value == self.type_cache.as_bytes() => {
                self.type_state = TypeState::Cached;
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
                self.type_state = TypeState::New;
            }
            // An id holding NUL is ignored. An id equal to the pending one (a
            // stream that repeats it) keeps its `Arc`.
            b"id" if self.pending_id.as_bytes() != value => self.set_pending_id(value),
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

    /// An `id` field whose value differs from the pending id.
    fn set_pending_id(&mut self, value: &[u8]) {
        // Ids are short and usually ASCII: one plain loop checks for NUL and for
        // non-ASCII at once, cheaper than a memchr call plus UTF-8 validation.
        if value.iter().all(|&b| b != 0 && b.is_ascii()) {
            // SAFETY: every ASCII byte sequence is valid UTF-8.
            self.pending_id = Arc::from(unsafe { std::str::from_utf8_unchecked(value) });
        } else if !value.contains(&0) {
            self.pending_id = Arc::from(String::from_utf8_lossy(value).as_ref());
        }
    }

    /// Appends (part of) a data value, within `max_event_bytes`.
    #[inline]
    fn push_data(&mut self, value: &[u8]) {
        if self.event_too_large {
            return;
        }
        // `data` holds a `\n` after every line so far: the joining ones of the final
        // data, which count, and none yet after this line, which does not.
        if self.data.len() + value.len() > self.limits.max_event_bytes {
            self.drop_event();
            return;
        }
        if self.data.capacity() == 0 {
            // The event's first data: size its buffer like the previous event's
            // (plus this value and its `\n`), so a steady stream never reallocates.
            let hint = self.data_hint.min(self.limits.max_event_bytes + 1);
            self.data.reserve_exact(hint.max(value.len() + 1));
        }
        self.data.extend_from_slice(value);
    }

    /// The end of a data line: its `\n` (the last one is removed at dispatch).
    #[inline]
    fn end_data_line(&mut self) {
        if !self.event_too_large {
            self.data.push(b'\n');
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
        // Hand the buffer over as the event's data: no copy. The next event's
        // buffer gets this one's size, with room for small variations.
        let mut data = std::mem::take(&mut self.data);
        self.data_hint = data.len() + data.len() / 8 + 16;
        data.pop(); // the final `\n`
        if data.capacity() > data.len() * 2 + 64 {
            // The hint was far too big (a small event after a large one): give the
            // memory back rather than queue it with the event.
            data.shrink_to_fit();
        }
        let data = utf8_lossy(data);
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
        match self.type_state {
            TypeState::Message => self.message_type.clone(),
            TypeState::Cached => self.type_cache.clone(),
            TypeState::New if self.event_type.is_empty() => self.message_type.clone(),
            TypeState::New => {
                self.type_cache = Arc::from(String::from_utf8_lossy(&self.event_type).as_ref());
                self.type_cache.clone()
            }
        }
    }

    fn reset_block(&mut self) {
        self.data.clear();
        self.type_state = TypeState::Message;
        self.event_too_large = false;
        self.block_retry = None;
        // A buffer that grew for one huge event is not kept for the rest of the
        // stream's life.
        if self.data.capacity() > 64 << 10 {
            self.data = Vec::new();
        }
    }
}

/// `bytes` as a `String`, invalid UTF-8 replaced with U+FFFD, without copying
/// valid input.
fn utf8_lossy(bytes: Vec<u8>) -> String {
    // Most event data is ASCII. `is_ascii` checks a word at a time and is several
    // times cheaper than full UTF-8 validation on short data (the `small` corpus
    // spent ~10% of its time validating).
    if bytes.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        return unsafe { String::from_utf8_unchecked(bytes) };
    }
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(invalid) => String::from_utf8_lossy(invalid.as_bytes()).into_owned(),
    }
}
