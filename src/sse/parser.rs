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
//! Scanning for line ends runs at gigabytes a second; what decides the speed
//! is what happens per event and per byte of data (see `DESIGN.md`,
//! "Performance facts"). So:
//!
//! * line ends come from [`LineEnds`], 64 bytes classified at a time, so a
//!   short line costs a few instructions rather than a `memchr2` call; a long
//!   line is still found by `memchr2`;
//! * events come out as [`EventRef`]s that borrow their text
//!   ([`Parser::feed_ref`]): an event's only `data` line, lying wholly inside the
//!   chunk, is handed out in place, never copied; an event with several data
//!   lines is joined in one buffer that is reused from event to event; the id
//!   and the type live in reused buffers too. A steady stream costs no
//!   allocation per event. [`Parser::feed`] makes owned [`Event`]s on top of that
//!   for callers that keep events (one allocation per event, for the data);
//! * a `data` line cut by the chunk's end streams its bytes into the data buffer,
//!   so a line spanning many chunks (8 MiB lines in 16 KiB chunks) is copied once,
//!   never re-assembled, and its cost is linear in its length;
//! * UTF-8 is validated once per event, over the whole data (an ASCII check a
//!   word at a time first); lossy decoding runs only when that fails.
//!
//! Memory is bounded by [`Limits`]: a line longer than `max_line_bytes` or an
//! event whose data grows past `max_event_bytes` is not buffered; the event it
//! belongs to is dropped at its blank line and counted in
//! [`ParserStats::oversized_events`]. The rule depends only on the bytes, never on
//! how they were split.

use std::sync::Arc;

use super::lines::LineEnds;
use super::{Event, EventRef};

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
    /// Times the last event id took a new value (at the dispatch of a block
    /// whose `id` field differed from the id in effect, or by
    /// [`Parser::set_last_event_id`]): while this stays the same, so does the
    /// id, and a caller need not compare it.
    pub id_updates: u64,
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

/// An incremental SSE parser for one event stream.
///
/// Feed it body chunks with [`Parser::feed_ref`] (or [`Parser::feed`]); call
/// [`Parser::start_connection`] when a new response body begins (after a
/// reconnect). The last event id and the reconnection time survive reconnects,
/// as the spec requires.
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
    /// The data lines of the pending event, each followed by `\n`, when they
    /// cannot be handed out in place (see [`FirstData`]). Reused.
    data: Vec<u8>,
    /// The type named by the pending block's last `event` field, decoded; kept
    /// between events so a repeated type is compared, not copied.
    event_type: String,
    /// The pending block named a type (a non-empty `event` field).
    named_type: bool,
    /// The pending event was over a limit; it will be dropped at dispatch.
    event_too_large: bool,
    /// The id the pending block set, while `id_changed`; otherwise the
    /// buffer an earlier id left, kept for the next one.
    pending_id: String,
    /// The pending block set an id: it becomes the last event id at dispatch.
    id_changed: bool,
    last_event_id: String,
    block_retry: Option<u64>,
    retry: Option<u64>,
    stats: ParserStats,
    /// The strings [`Parser::feed`] shares between the owned events it makes
    /// (`None` until it is first called).
    owned: Option<OwnedStrings>,
}

/// The pending event's only data line so far, in place in the chunk being
/// parsed: handed out without a copy if the event ends in the same chunk. A
/// second data line, or the end of the chunk, moves it into `Parser::data`.
type FirstData<'c> = Option<&'c [u8]>;

/// The `Arc`s the last owned event got, reused while the next one's type or id
/// is the same: streams repeat their types, and their ids between events.
#[derive(Debug)]
struct OwnedStrings {
    event: Arc<str>,
    id: Arc<str>,
}

impl OwnedStrings {
    fn event(&mut self, event: EventRef<'_>) -> Event {
        if *self.event != *event.event {
            self.event = Arc::from(event.event);
        }
        if *self.id != *event.id {
            self.id = Arc::from(event.id);
        }
        Event {
            event: self.event.clone(),
            data: event.data.to_owned(),
            id: self.id.clone(),
            retry: event.retry,
        }
    }
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new(Limits::default())
    }
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        Parser {
            limits,
            bom_seen: 0,
            after_cr: false,
            carry: Carry::Nothing,
            carry_len: 0,
            partial_line: Vec::new(),
            data: Vec::new(),
            event_type: String::new(),
            named_type: false,
            event_too_large: false,
            pending_id: String::new(),
            id_changed: false,
            last_event_id: String::new(),
            block_retry: None,
            retry: None,
            stats: ParserStats::default(),
            owned: None,
        }
    }

    /// Sets the last event id, e.g. from a checkpoint, before the first connection.
    pub fn set_last_event_id(&mut self, id: &str) {
        self.last_event_id.clear();
        self.last_event_id.push_str(id);
        self.id_changed = false;
        self.stats.id_updates += 1;
    }

    /// The id to send as `Last-Event-ID` on the next connection (empty: send none).
    pub fn last_event_id(&self) -> &str {
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
        self.id_changed = false;
    }

    /// Parses one chunk of the body, calling `emit` with an owned [`Event`] for
    /// every event it completes. For callers that keep events; see
    /// [`Parser::feed_ref`] for those that consume them at once.
    pub fn feed(&mut self, chunk: &[u8], emit: &mut impl FnMut(Event)) {
        let mut owned = self.owned.take().unwrap_or_else(|| OwnedStrings {
            event: Arc::from("message"),
            id: Arc::from(""),
        });
        self.feed_ref(chunk, &mut |event| emit(owned.event(event)));
        self.owned = Some(owned);
    }

    /// Parses one chunk of the body, calling `emit` for every event it
    /// completes, with the event's text borrowed from the chunk or the parser:
    /// no allocation per event.
    pub fn feed_ref(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(EventRef<'_>)) {
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
    fn feed_lines<'c>(&mut self, mut chunk: &'c [u8], emit: &mut impl FnMut(EventRef<'_>)) {
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
                    self.finish_carry(&chunk[..end]);
                    chunk = &chunk[self.past_line_end(chunk, end)..];
                }
            }
        }
        let mut first_data: FirstData<'c> = None;
        // The hot loop: the line from `start` to the next line end, handled
        // where it lies.
        let mut ends = LineEnds::new(chunk);
        let mut start = 0;
        while let Some(end) = ends.next_from(start) {
            let line = &chunk[start..end];
            if line.len() > self.limits.max_line_bytes {
                self.long_line_ended(line[0]);
            } else if let Some(value) = line.strip_prefix(b"data:") {
                // Most lines are `data:`; tested before splitting on the colon.
                self.data_line(value.strip_prefix(b" ").unwrap_or(value), &mut first_data);
            } else {
                self.process_line(line, &mut first_data, emit);
            }
            start = self.past_line_end(chunk, end);
            // Every event ends with a blank line, usually right after a line end:
            // dispatch it without looking for its end.
            if chunk.get(start) == Some(&b'\n') {
                self.dispatch(first_data.take(), emit);
                start += 1;
            }
            // Each turn ends past the line end it found, or the loop would
            // never end.
            debug_assert!(start > end, "the line loop stood still at {end}");
        }
        // The pending event goes on in the next chunk: its data must outlive
        // this one.
        self.spill(first_data);
        if start < chunk.len() {
            self.start_carry(&chunk[start..]);
        }
    }

    /// Where the rest of `chunk` starts after the line ending at `end` (CR,
    /// LF or CRLF). A CR that ends the chunk may be the first half of a CRLF:
    /// the next chunk says.
    #[inline]
    fn past_line_end(&mut self, chunk: &[u8], end: usize) -> usize {
        let next = if chunk[end] == b'\r' {
            match chunk.get(end + 1) {
                Some(b'\n') => end + 2,
                Some(_) => end + 1,
                None => {
                    self.after_cr = true;
                    end + 1
                }
            }
        } else {
            end + 1
        };
        // The line loops rely on this to end: the rest starts past the ending.
        debug_assert!(next > end && next <= chunk.len());
        next
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

    /// The carried line ends with `rest`. A carried line is never blank, so it
    /// never dispatches an event.
    fn finish_carry(&mut self, mut rest: &[u8]) {
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
                let mut first_data = None;
                self.process_line(&line, &mut first_data, &mut |_| {
                    unreachable!("a carried line is not blank")
                });
                self.spill(first_data);
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
                self.data.push(b'\n');
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
    /// (A [`FirstData`] the caller holds is ignored from now on.)
    fn drop_event(&mut self) {
        self.event_too_large = true;
        self.data = Vec::new();
    }

    /// Any line but one starting `data:` (those take the fast path).
    fn process_line<'l>(
        &mut self,
        line: &'l [u8],
        first_data: &mut FirstData<'l>,
        emit: &mut impl FnMut(EventRef<'_>),
    ) {
        if let Some(value) = line.strip_prefix(b"data:") {
            self.data_line(value.strip_prefix(b" ").unwrap_or(value), first_data);
            return;
        }
        let Some(&first) = line.first() else {
            self.dispatch(first_data.take(), emit);
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
            b"data" => self.data_line(value, first_data),
            // An empty type means `message`.
            b"event" => {
                self.named_type = !value.is_empty();
                // Streams repeat their types: one equal to the last is not copied.
                if !same_bytes(value, self.event_type.as_bytes()) {
                    set_text(&mut self.event_type, value);
                }
            }
            // An id holding NUL is ignored.
            b"id" if !same_bytes(value, self.current_id().as_bytes()) && !value.contains(&0) => {
                set_text(&mut self.pending_id, value);
                self.id_changed = true;
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

    /// A whole `data` line with value `value`. The event's first one is kept
    /// in place; the rest are joined in `data`.
    #[inline]
    fn data_line<'l>(&mut self, value: &'l [u8], first_data: &mut FirstData<'l>) {
        if self.event_too_large {
            return;
        }
        if first_data.is_none() && self.data.is_empty() {
            if value.len() > self.limits.max_event_bytes {
                self.drop_event();
            } else {
                *first_data = Some(value);
            }
            return;
        }
        self.spill(first_data.take());
        self.push_data(value);
        if !self.event_too_large {
            self.data.push(b'\n');
        }
    }

    /// Moves an event's first data line from the chunk into `data`.
    fn spill(&mut self, first_data: FirstData<'_>) {
        if let Some(value) = first_data {
            if !self.event_too_large {
                self.push_data(value);
                self.data.push(b'\n');
            }
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
        self.data.extend_from_slice(value);
    }

    /// The id in effect for the pending block: the one it set, or the last
    /// event id.
    #[inline]
    fn current_id(&self) -> &str {
        if self.id_changed {
            &self.pending_id
        } else {
            &self.last_event_id
        }
    }

    /// A blank line: the pending block becomes an event, if it has data.
    fn dispatch(&mut self, first_data: FirstData<'_>, emit: &mut impl FnMut(EventRef<'_>)) {
        // The last event id moves at dispatch, even for a block without data, so an
        // event cut off mid-way never moves the resume point.
        if self.id_changed {
            self.id_changed = false;
            // The two buffers trade places: the id is not copied again, and
            // `pending_id` keeps a buffer for the next one.
            std::mem::swap(&mut self.last_event_id, &mut self.pending_id);
            self.stats.id_updates += 1;
        }
        if self.event_too_large {
            self.stats.oversized_events += 1;
            self.reset_block();
            return;
        }
        let data = match first_data {
            Some(value) => value,
            None if self.data.is_empty() => {
                self.reset_block();
                return;
            }
            // Without the final `\n`.
            None => &self.data[..self.data.len() - 1],
        };
        let decoded = utf8_lossy(data);
        self.stats.events += 1;
        emit(EventRef {
            event: if self.named_type {
                &self.event_type
            } else {
                "message"
            },
            data: &decoded,
            id: &self.last_event_id,
            retry: self.block_retry,
        });
        self.reset_block();
    }

    fn reset_block(&mut self) {
        self.data.clear();
        self.named_type = false;
        self.event_too_large = false;
        self.block_retry = None;
        // A buffer that grew for one huge event is not kept for the rest of the
        // stream's life.
        if self.data.capacity() > 64 << 10 {
            self.data = Vec::new();
        }
    }
}

/// Whether two short byte strings (ids, types) are equal. A plain loop: the
/// `memcmp` call `==` makes was 14% of the time on small events.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Replaces `text` with `bytes`, invalid UTF-8 replaced with U+FFFD, reusing
/// its buffer.
#[inline]
fn set_text(text: &mut String, bytes: &[u8]) {
    text.clear();
    if bytes.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        text.push_str(unsafe { std::str::from_utf8_unchecked(bytes) });
    } else {
        text.push_str(&String::from_utf8_lossy(bytes));
    }
}

/// `bytes` as text, invalid UTF-8 replaced with U+FFFD; borrowed unless invalid.
#[inline]
fn utf8_lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    // Most event data is ASCII. `is_ascii` checks a word at a time and is several
    // times cheaper than full UTF-8 validation on short data (the `small` corpus
    // spent ~10% of its time validating).
    if bytes.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        return std::borrow::Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Limits = Limits {
        max_line_bytes: 1 << 20,
        max_event_bytes: 1 << 20,
    };

    /// The events `chunks` give, as (type, data, id).
    fn events(parser: &mut Parser, chunks: &[&[u8]]) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed_ref(chunk, &mut |e| {
                out.push((e.event.to_owned(), e.data.to_owned(), e.id.to_owned()))
            });
        }
        out
    }

    /// See [`crate::test_deadline::promptly`]: a parser that loops must fail
    /// at once, not leave the suite hanging until an outer timeout.
    fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        crate::test_deadline::promptly("the parser", f)
    }

    #[test]
    fn a_checkpointed_id_is_in_effect_until_the_stream_sets_another() {
        let mut parser = Parser::new(ROOMY);
        parser.set_last_event_id("42");
        assert_eq!(parser.last_event_id(), "42");
        let got = events(&mut parser, &[b"data: a\n\nid: 43\ndata: b\n\n"]);
        assert_eq!(got[0].2, "42", "the first event carries the resumed id");
        assert_eq!(got[1].2, "43");
        assert_eq!(parser.last_event_id(), "43");
    }

    #[test]
    fn an_id_coming_back_to_an_earlier_value_is_the_last_event_id_again() {
        let mut parser = Parser::new(ROOMY);
        let body: &[u8] = b"id: 3\ndata: a\n\nid: 4\ndata: b\n\nid: 3\ndata: c\n\n\
            id: 5\nid: 3\ndata: d\n\nid: 4\n\ndata: e\n\n";
        let ids: Vec<String> = events(&mut parser, &[body])
            .into_iter()
            .map(|e| e.2)
            .collect();
        assert_eq!(ids, ["3", "4", "3", "3", "4"]);
        assert_eq!(parser.last_event_id(), "4");
        // An id the cut-off block set is forgotten with it.
        events(&mut parser, &[b"id: 9\ndata: f\n"]);
        parser.start_connection();
        let got = events(&mut parser, &[b"data: g\n\nid: 9\ndata: h\n\n"]);
        assert_eq!((got[0].2.as_str(), got[1].2.as_str()), ("4", "9"));
        // A checkpoint's id, then the same id and another from the stream.
        parser.set_last_event_id("7");
        let got = events(&mut parser, &[b"id: 8\n", b"id: 7\ndata: i\n\n"]);
        assert_eq!(got[0].2, "7");
    }

    #[test]
    fn id_updates_count_each_new_last_event_id_and_nothing_else() {
        let mut parser = Parser::new(ROOMY);
        let updates = |p: &Parser| p.stats().id_updates;
        parser.set_last_event_id("1");
        assert_eq!(updates(&parser), 1);
        events(
            &mut parser,
            &[b": heartbeat\n\ndata: no id\n\nretry: 5\n\n"],
        );
        assert_eq!(updates(&parser), 1, "comments, events without ids, retry");
        events(&mut parser, &[b"id: 2\ndata: a\n\nid: 3\n\nid: 3\n", b"\n"]);
        assert_eq!(
            updates(&parser),
            3,
            "an event's id and an id-only block; a repeat of the id is no update"
        );
        events(&mut parser, &[b"id: 4\ndata: cut off\n"]);
        parser.start_connection();
        assert_eq!(updates(&parser), 3, "a block never dispatched sets nothing");
        assert_eq!(parser.last_event_id(), "3");
    }

    #[test]
    fn every_line_ending_at_every_place_in_a_chunk_ends_its_line_once() {
        let got = promptly(|| {
            let mut all = Vec::new();
            for ending in ["\r\n", "\r", "\n"] {
                let body = format!("id: 1{ending}data: a{ending}{ending}data: b{ending}{ending}");
                for split in 0..=body.len() {
                    let (head, tail) = body.as_bytes().split_at(split);
                    let mut parser = Parser::new(ROOMY);
                    all.push(events(&mut parser, &[head, tail]));
                }
            }
            all
        });
        for (n, got) in got.iter().enumerate() {
            let data: Vec<&str> = got.iter().map(|e| e.1.as_str()).collect();
            assert_eq!(data, ["a", "b"], "case {n}");
            assert!(got.iter().all(|e| e.2 == "1"), "case {n}: {got:?}");
        }
    }

    #[test]
    fn buffers_grown_for_one_huge_event_or_line_are_let_go_and_small_ones_kept() {
        let mut parser = Parser::new(ROOMY);
        // A small event and a small named line, each cut across two chunks:
        // both buffers are used, and kept for the next one.
        let got = events(&mut parser, &[b"event: ti", b"ck\ndata: sm", b"all\n\n"]);
        assert_eq!(got, [("tick".into(), "small".into(), String::new())]);
        assert!(parser.data.capacity() > 0, "a small data buffer is kept");
        assert!(
            parser.partial_line.capacity() > 0,
            "a small line buffer is kept"
        );
        // A 100 KiB event type and 100 KiB of data, cut the same way.
        let big = "x".repeat(100 << 10);
        let (type_line, data_line) = (format!("event: {big}\n"), format!("data: {big}\n\n"));
        let (t1, t2) = type_line.as_bytes().split_at(50 << 10);
        let (d1, d2) = data_line.as_bytes().split_at(50 << 10);
        let got = events(&mut parser, &[t1, t2, d1, d2]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.len(), big.len());
        assert_eq!(got[0].1.len(), big.len());
        assert_eq!(parser.data.capacity(), 0, "the huge data buffer is freed");
        assert_eq!(
            parser.partial_line.capacity(),
            0,
            "the huge line buffer is freed"
        );
    }
}
