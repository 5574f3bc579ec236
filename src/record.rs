//! The output record, how records travel ([`Records`]: a chunk's worth in one
//! allocation), and the JSON-lines encoding.
//!
//! Every stdout and file sink line is one JSON object with the keys in this
//! order (outside tooling depends on it):
//!
//! ```text
//! {"stream":"wiki","id":"42","event":"message","data":"...","received_at":"2026-11-25T23:36:07.123456Z"}
//! ```
//!
//! `id` is `null` when no id is in effect. The encoder writes straight into the
//! sink's buffer; it is on the hot path, and its strings are escaped by
//! [`crate::escape`].

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

pub use crate::escape::{json_string_len, write_json_string};
use crate::sse::{same_bytes, EventRef};

/// How records are written. stdout and file sinks take `json` and `data`;
/// webhook sinks take `json` and `ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// One JSON object per line (see `record`); for a webhook, a JSON array of
    /// them per request.
    Json,
    /// The event's data only, one event per line.
    Data,
    /// One JSON object per line: the webhook's name for what `json` means to
    /// stdout and file sinks.
    Ndjson,
}

impl Encoding {
    /// The name the configuration writes it by.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Data => "data",
            Encoding::Ndjson => "ndjson",
        }
    }
}

/// The records one stream received in one chunk, stored together: all their
/// text in one buffer, and per record where its parts lie in it.
///
/// This is what travels from a stream to its sinks (shared, in an `Arc`): a
/// chunk of small events costs two allocations, not several per event, and
/// each event's text is copied once, from the parser's borrowed event.
///
/// Records made by [`Records::sharing`] copy nothing of the data that lies
/// whole in the chunk read off the socket: they keep the chunk itself (a
/// reference count) and point into it. Relaying 16 KiB events, that copy
/// was a fifth of the time.
#[derive(Debug)]
pub struct Records {
    stream: Arc<str>,
    /// When the chunk arrived, as RFC 3339 text: formatted once for all its
    /// records.
    received_at: String,
    /// The bytes read off the socket, when the records' data is kept in them
    /// (spans with `data_in_chunk`); `None` once [`Records::trim_excess`]
    /// found too little of it used to be worth holding.
    chunk: Option<Bytes>,
    /// How many bytes of `chunk` the records point at.
    chunk_used: usize,
    text: String,
    spans: Vec<Span>,
}

/// Where one record's parts lie: in [`Records::text`], and the data in
/// [`Records::chunk`] instead when `data_in_chunk`.
#[derive(Debug, Clone)]
struct Span {
    event: Range<usize>,
    id: Range<usize>,
    data: Range<usize>,
    data_in_chunk: bool,
}

/// What one record counts against a sink queue's byte budget besides its
/// text: its place in [`Records`] and its share of the delivery, roughly.
pub(crate) const QUEUE_OVERHEAD: usize = 64;

impl Records {
    /// Records of `stream` received at `received_at`, with room for about
    /// `text_bytes` of event text.
    pub fn new(stream: Arc<str>, received_at: SystemTime, text_bytes: usize) -> Self {
        let mut stamp = Vec::with_capacity(32);
        write_timestamp(received_at, &mut stamp);
        Records {
            stream,
            // The formatter writes ASCII only.
            received_at: String::from_utf8_lossy(&stamp).into_owned(),
            chunk: None,
            chunk_used: 0,
            text: String::with_capacity(text_bytes),
            spans: Vec::new(),
        }
    }

    /// Like [`Records::new`], for events parsed from `chunk`: the data of an
    /// event that lies whole in it is not copied (the `text_bytes` of room
    /// are for the rest: types, ids, data that began in an earlier chunk).
    pub fn sharing(
        stream: Arc<str>,
        received_at: SystemTime,
        chunk: &Bytes,
        text_bytes: usize,
    ) -> Self {
        let mut records = Records::new(stream, received_at, text_bytes);
        records.chunk = Some(chunk.clone());
        records
    }

    /// Appends a copy of `event`. A type or id equal to the previous record's
    /// is not stored again.
    pub fn push(&mut self, event: &EventRef<'_>) {
        let (event_range, id_range) = match self.spans.last() {
            Some(prev) => (
                if same_bytes(
                    self.part(prev.event.clone()).as_bytes(),
                    event.event.as_bytes(),
                ) {
                    prev.event.clone()
                } else {
                    append(&mut self.text, event.event)
                },
                if same_bytes(self.part(prev.id.clone()).as_bytes(), event.id.as_bytes()) {
                    prev.id.clone()
                } else {
                    append(&mut self.text, event.id)
                },
            ),
            None => (
                append(&mut self.text, event.event),
                append(&mut self.text, event.id),
            ),
        };
        let (data, data_in_chunk) = match self.chunk.as_ref().and_then(|c| within(c, event.data)) {
            Some(range) => {
                self.chunk_used += range.len();
                (range, true)
            }
            None => (append(&mut self.text, event.data), false),
        };
        self.spans.push(Span {
            event: event_range,
            id: id_range,
            data,
            data_in_chunk,
        });
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Gives back room reserved for text that never came, before the records
    /// are queued: queues count the text, not the room. (Shrinking in place is
    /// cheap: the allocator splits the block, nothing is copied.) A chunk the
    /// records use little of is let go, their data copied out of it first.
    pub fn trim_excess(&mut self) {
        if let Some(chunk) = &self.chunk {
            // What the queues will count for these records, as they count it.
            // Kept while that is at least half the chunk, a queue's byte budget
            // bounds the memory its records hold: a chunk is 3/4 of its
            // allocation or more (`wire::SHARE_FROM`), so within 2.7x.
            let counted = self.text.len() + self.chunk_used + self.spans.len() * QUEUE_OVERHEAD;
            if counted < chunk.len() / 2 {
                self.copy_out_of_chunk();
            }
        }
        if self.text.capacity() > self.text.len() + self.text.len() / 4 + 1024 {
            self.text.shrink_to_fit();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn stream(&self) -> &Arc<str> {
        &self.stream
    }

    /// The bytes of the `i`th record's type, id and data (what queues count),
    /// without looking at them.
    pub fn text_len(&self, i: usize) -> usize {
        let span = &self.spans[i];
        span.event.len() + span.id.len() + span.data.len()
    }

    /// The `i`th record. Panics if there is none.
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        let span = &self.spans[i];
        RecordRef {
            stream: &self.stream,
            event: self.part(span.event.clone()),
            id: self.part(span.id.clone()),
            data: if span.data_in_chunk {
                self.chunk_part(span.data.clone())
            } else {
                self.part(span.data.clone())
            },
            received_at: &self.received_at,
        }
    }

    /// Moves the data the records keep in their chunk into `text`, and drops
    /// the chunk.
    fn copy_out_of_chunk(&mut self) {
        let Some(chunk) = self.chunk.take() else {
            return;
        };
        self.text.reserve(self.chunk_used);
        for span in self.spans.iter_mut().filter(|span| span.data_in_chunk) {
            // SAFETY: a span with `data_in_chunk` was made by `within` on
            // this chunk.
            let data = unsafe { str_in(&chunk, span.data.clone()) };
            span.data = append(&mut self.text, data);
            span.data_in_chunk = false;
        }
        self.chunk_used = 0;
    }

    /// The data of a span with `data_in_chunk`.
    fn chunk_part(&self, range: Range<usize>) -> &str {
        let chunk = self
            .chunk
            .as_ref()
            .expect("a span in the chunk comes with the chunk");
        // SAFETY: such spans are made by `within` on this chunk, and lose
        // `data_in_chunk` before the chunk is let go (`copy_out_of_chunk`).
        unsafe { str_in(chunk, range) }
    }

    /// The text of one span. Every sink reads every record through here, once
    /// to size its batch and once to encode it: checked slicing looked at the
    /// bytes on both sides of each end (six places in a buffer another core
    /// just wrote) and took 5% of the relay's time on small events.
    fn part(&self, range: Range<usize>) -> &str {
        debug_assert!(range.start <= range.end && range.end <= self.text.len());
        debug_assert!(self.text.is_char_boundary(range.start));
        debug_assert!(self.text.is_char_boundary(range.end));
        // SAFETY: spans are made only by `append`, from the length of `text`
        // before and after a whole `&str` was pushed onto it, so both ends are
        // in bounds and on char boundaries; `text` only ever grows (`push`),
        // and `trim_excess` gives back capacity, never length.
        unsafe { self.text.get_unchecked(range) }
    }
}

/// The text of a span of a chunk, unchecked (see [`Records::part`] on why).
///
/// # Safety
///
/// `range` must come from [`within`] for this chunk: then it is in bounds,
/// and its bytes are those of the `&str` it was made from (valid UTF-8;
/// `Bytes` never changes its bytes).
unsafe fn str_in(chunk: &Bytes, range: Range<usize>) -> &str {
    debug_assert!(std::str::from_utf8(&chunk[range.clone()]).is_ok());
    // SAFETY: as the caller promises (above).
    unsafe { std::str::from_utf8_unchecked(chunk.get_unchecked(range)) }
}

/// Where `part` lies in `chunk`, if it lies there whole. (Compared by
/// address: no two live buffers overlap, so a string in these addresses is
/// these bytes.)
fn within(chunk: &Bytes, part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(chunk.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= chunk.len()).then_some(start..end)
}

fn append(text: &mut String, part: &str) -> Range<usize> {
    let start = text.len();
    text.push_str(part);
    start..text.len()
}

/// One output record: an event as it leaves a stream for its sinks.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub stream: &'a str,
    pub event: &'a str,
    /// Empty when no id is in effect.
    pub id: &'a str,
    pub data: &'a str,
    /// RFC 3339 in UTC with microseconds: `2025-11-25T23:36:07.123456Z`.
    pub received_at: &'a str,
}

impl<'a> RecordRef<'a> {
    /// The id as the record shows it: `None` when no id is in effect.
    pub fn id(&self) -> Option<&'a str> {
        (!self.id.is_empty()).then_some(self.id)
    }

    /// Appends the record in `encoding`, followed by `\n`.
    pub fn encode(&self, encoding: Encoding, out: &mut Vec<u8>) {
        match encoding {
            Encoding::Json | Encoding::Ndjson => self.write_json(out),
            Encoding::Data => out.extend_from_slice(self.data.as_bytes()),
        }
        out.push(b'\n');
    }

    /// Appends the JSON object (without a line ending).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        json_head(self.stream, out);
        self.write_json_middle(|out| json_event(self.event, out), out);
        json_tail(self.received_at, out);
    }

    /// The part of the JSON object between [`json_head`] and [`json_tail`]:
    /// the id, the event type (which `event` writes, see [`json_event`]) and
    /// the data.
    fn write_json_middle(&self, event: impl FnOnce(&mut Vec<u8>), out: &mut Vec<u8>) {
        match self.id() {
            Some(id) => write_json_string(id, out),
            None => out.extend_from_slice(b"null"),
        }
        event(out);
        out.extend_from_slice(b",\"data\":");
        write_json_string(self.data, out);
    }

    /// The exact length of what [`RecordRef::write_json`] appends, without
    /// encoding: batch size limits are checked before a batch is encoded.
    pub fn json_len(&self) -> usize {
        let id = self.id().map_or(4, json_string_len);
        JSON_FRAME
            + self.received_at.len()
            + json_string_len(self.stream)
            + id
            + json_string_len(self.event)
            + json_string_len(self.data)
    }

    /// What [`RecordRef::json_len`] would be if nothing needed escaping: a
    /// lower bound, from the lengths alone (no pass over the text), for
    /// sizing a buffer.
    pub fn json_len_unescaped(&self) -> usize {
        // Each value's two quotes, or `null` for no id.
        let id = self.id().map_or(4, |id| id.len() + 2);
        JSON_FRAME
            + self.received_at.len()
            + (self.stream.len() + 2)
            + id
            + (self.event.len() + 2)
            + (self.data.len() + 2)
    }
}

/// The keys, quotes and punctuation around a record's values (see
/// [`RecordRef::write_json`]).
const JSON_FRAME: usize = r#"{"stream":,"id":,"event":,"data":,"received_at":""}"#.len();

/// Appends `records` in `encoding`, each followed by `\n`: the same bytes as
/// [`RecordRef::encode`] on each in turn. For JSON, the parts records share
/// are escaped once rather than per record: the stream name and the arrival
/// time (the same for all of one [`Records`]), and an event type the
/// previous record had too (stored once, so recognised by address). On
/// small events those were a third of the encoding.
pub fn encode_all<'a>(
    records: impl IntoIterator<Item = RecordRef<'a>>,
    encoding: Encoding,
    out: &mut Vec<u8>,
) {
    if encoding == Encoding::Data {
        for record in records {
            record.encode(encoding, out);
        }
        return;
    }
    // `json_head` and `json_tail` + `\n` of the stream and arrival time in
    // `shared`.
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut shared: Option<(&str, &str)> = None;
    // `json_event` of `event`.
    let mut event_json = Vec::new();
    let mut event: Option<&str> = None;
    for record in records {
        if !shared.is_some_and(|(stream, at)| {
            same_str(stream, record.stream) && same_str(at, record.received_at)
        }) {
            head.clear();
            json_head(record.stream, &mut head);
            tail.clear();
            json_tail(record.received_at, &mut tail);
            tail.push(b'\n');
            shared = Some((record.stream, record.received_at));
        }
        if !event.is_some_and(|event| same_str(event, record.event)) {
            event_json.clear();
            json_event(record.event, &mut event_json);
            event = Some(record.event);
        }
        out.extend_from_slice(&head);
        record.write_json_middle(|out| out.extend_from_slice(&event_json), out);
        out.extend_from_slice(&tail);
    }
}

/// The start of a record's JSON object, up to its id: `{"stream":"…","id":`.
fn json_head(stream: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"stream\":");
    write_json_string(stream, out);
    out.extend_from_slice(b",\"id\":");
}

/// The event type's member, after the id: `,"event":"…"`.
fn json_event(event: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"event\":");
    write_json_string(event, out);
}

/// The end of a record's JSON object, after its data:
/// `,"received_at":"…"}`.
fn json_tail(received_at: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"received_at\":\"");
    out.extend_from_slice(received_at.as_bytes());
    out.extend_from_slice(b"\"}");
}

/// Whether two strings are the same string in memory (same address and
/// length), which makes them equal without reading them.
fn same_str(a: &str, b: &str) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()
}

/// Appends `at` as RFC 3339 in UTC with microseconds:
/// `2025-11-25T23:36:07.123456Z`.
///
/// Every record carries one, so this is on the hot path: the
/// `YYYY-MM-DDTHH:MM:SS` part is formatted once per second per thread and
/// reused; only the microseconds are written per record.
fn write_timestamp(at: SystemTime, out: &mut Vec<u8>) {
    use std::cell::Cell;
    thread_local! {
        /// The last second formatted on this thread, and its text.
        static PREFIX: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let Ok(since_epoch) = at.duration_since(std::time::UNIX_EPOCH) else {
        // Before 1970: not worth a fast path.
        let _ = std::io::Write::write_fmt(
            out,
            format_args!("{}", humantime::format_rfc3339_micros(at)),
        );
        return;
    };
    let secs = since_epoch.as_secs();
    let (cached_secs, mut prefix) = PREFIX.get();
    if cached_secs != secs {
        match format_second(secs) {
            Some(text) => prefix = text,
            None => {
                // Past year 9999: humantime knows what to do.
                let _ = std::io::Write::write_fmt(
                    out,
                    format_args!("{}", humantime::format_rfc3339_micros(at)),
                );
                return;
            }
        }
        PREFIX.set((secs, prefix));
    }
    out.extend_from_slice(&prefix);
    let micros = since_epoch.subsec_micros();
    let mut frac = *b".000000Z";
    let mut rest = micros;
    for digit in frac[1..7].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` for `secs` after the Unix epoch, in UTC; `None` after
/// year 9999.
fn format_second(secs: u64) -> Option<[u8; 19]> {
    let days = secs / 86_400;
    let in_day = secs % 86_400;
    // Days to a civil date (Howard Hinnant's `civil_from_days`), with eras of
    // 400 years counted from 0000-03-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        return None;
    }
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u64| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, in_day / 3600);
    put(14, 2, in_day / 60 % 60);
    put(17, 2, in_day % 60);
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record<'a>(id: &'a str, data: &'a str) -> RecordRef<'a> {
        RecordRef {
            stream: "wiki",
            event: "edit",
            id,
            data,
            received_at: "2025-11-25T23:36:07.123456Z",
        }
    }

    #[test]
    fn records_keep_each_event_and_share_repeated_parts() {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        let mut records = Records::new(Arc::from("wiki"), at, 0);
        let events = [
            ("edit", "1", "a"),
            ("edit", "1", "b"),
            ("talk", "", ""),
            ("edit", "2", "é\n"),
        ];
        for (event, id, data) in events {
            records.push(&EventRef {
                event,
                id,
                data,
                retry: None,
            });
        }
        assert_eq!(records.len(), 4);
        for (i, (event, id, data)) in events.into_iter().enumerate() {
            let r = records.get(i);
            assert_eq!(
                (r.stream, r.event, r.id, r.data, r.received_at),
                ("wiki", event, id, data, "1970-01-01T00:00:01.000000Z")
            );
        }
        // "edit" and "1" were stored once for the first two records.
        assert_eq!(records.text.len(), "edit1abtalkedit2é\n".len());
    }

    fn event<'a>(id: &'a str, data: &'a str) -> EventRef<'a> {
        EventRef {
            event: "update",
            id,
            data,
            retry: None,
        }
    }

    /// Whether `part` lies in `chunk`'s bytes (was not copied).
    fn points_into(chunk: &Bytes, part: &str) -> bool {
        let start = chunk.as_ptr() as usize;
        let at = part.as_ptr() as usize;
        at >= start && at + part.len() <= start + chunk.len()
    }

    #[test]
    fn data_in_the_chunk_stays_there_and_the_rest_is_copied() {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        // Data lines of 60 bytes: what the records use is most of the chunk.
        let line = |n: usize| format!("{n:02}{}", "x".repeat(58));
        let wire: String = (0..8).map(|n| format!("data: {}\n\n", line(n))).collect();
        let chunk = Bytes::from(wire.into_bytes());
        let text = std::str::from_utf8(&chunk).unwrap();
        let mut records = Records::sharing(Arc::from("s"), at, &chunk, 0);
        let elsewhere = line(99);
        for n in 0..8 {
            let start = text.find(&line(n)).unwrap();
            records.push(&event(&n.to_string(), &text[start..start + 60]));
        }
        // An event that began in an earlier chunk: its data is the parser's.
        records.push(&event("8", &elsewhere));
        records.trim_excess();
        assert_eq!(records.len(), 9);
        for n in 0..8 {
            let r = records.get(n);
            assert_eq!((r.id, r.data), (n.to_string().as_str(), line(n).as_str()));
            assert!(points_into(&chunk, r.data), "record {n} was copied");
        }
        let last = records.get(8);
        assert_eq!(last.data, elsewhere);
        assert!(!points_into(&chunk, last.data));
        // The text holds the type, the ids and the one copied data only.
        assert_eq!(records.text.len(), "update".len() + 9 + 60);
    }

    #[test]
    fn only_a_string_wholly_inside_the_chunk_is_found_in_it() {
        let chunk = Bytes::from_static(b"0123456789");
        let text = std::str::from_utf8(&chunk).unwrap();
        assert_eq!(within(&chunk, &text[2..5]), Some(2..5));
        assert_eq!(within(&chunk, text), Some(0..10));
        assert_eq!(within(&chunk, &text[10..]), Some(10..10));
        // Elsewhere, even with the same bytes.
        let copy = text.to_owned();
        let before = chunk.slice(0..0);
        assert_eq!(within(&chunk.slice(5..), &copy[..2]), None);
        assert_eq!(
            within(&chunk.slice(5..), &text[2..7]),
            None,
            "starts before"
        );
        assert_eq!(within(&chunk.slice(..5), &text[3..7]), None, "ends after");
        assert_eq!(within(&before, &text[..1]), None);
    }

    /// Records of one event of `data` bytes after a comment of `comment`
    /// bytes, all in one chunk, after `trim_excess`; and the chunk.
    fn one_event_after_a_comment(comment: usize, data: usize) -> (Records, Bytes) {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        let wire = format!(": {}\ndata: {}\n\n", "c".repeat(comment), "d".repeat(data));
        let chunk = Bytes::from(wire.into_bytes());
        let text = std::str::from_utf8(&chunk).unwrap();
        let value = &text[text.len() - data - 2..text.len() - 2];
        let mut records = Records::sharing(Arc::from("s"), at, &chunk, 0);
        records.push(&event("1", value));
        records.trim_excess();
        assert_eq!(records.get(0).data, "d".repeat(data));
        (records, chunk)
    }

    #[test]
    fn a_chunk_that_is_mostly_one_events_data_is_kept() {
        // The data is what the queues count here: with no record overhead
        // to speak of, it alone keeps the chunk.
        let (records, chunk) = one_event_after_a_comment(900, 1000);
        assert!(records.chunk.is_some(), "the chunk was let go");
        assert!(points_into(&chunk, records.get(0).data));
    }

    #[test]
    fn a_chunk_counted_at_under_half_is_let_go() {
        // 991 bytes; the record counts 6 + 1 + 200 + 64 = 271, under half.
        let (records, chunk) = one_event_after_a_comment(780, 200);
        assert!(records.chunk.is_none(), "the chunk is still held");
        assert!(!points_into(&chunk, records.get(0).data));
    }

    /// Records of `count` events whose data is `size` bytes, all in one
    /// chunk, after `trim_excess`: whether they still hold the chunk.
    fn keeps_chunk_of(count: usize, size: usize) -> bool {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        let data = |n: usize| format!("{:0size$}", n % 10);
        let wire: String = (0..count)
            .map(|n| format!("id: {n}\ndata: {}\n\n", data(n)))
            .collect();
        let chunk = Bytes::from(wire.into_bytes());
        let text = std::str::from_utf8(&chunk).unwrap();
        let mut records = Records::sharing(Arc::from("s"), at, &chunk, 0);
        let mut at_byte = 0;
        for n in 0..count {
            let start = at_byte + text[at_byte..].find("data: ").unwrap() + 6;
            records.push(&event(&n.to_string(), &text[start..start + size]));
            at_byte = start + size;
        }
        records.trim_excess();
        for n in 0..count {
            assert_eq!(records.get(n).data, data(n));
        }
        records.chunk.is_some()
    }

    #[test]
    fn small_events_keep_their_chunk_for_what_queues_count_per_record() {
        // One-byte data: the records' text is a sliver of the chunk, but the
        // queues count 64 bytes a record on top, which keeps it.
        assert!(keeps_chunk_of(100, 1));
        // 60-byte data, 73 bytes an event on the wire: counted a little under
        // twice the chunk.
        assert!(keeps_chunk_of(100, 60));
    }

    #[test]
    fn room_for_text_that_never_came_is_given_back_and_a_little_spare_kept() {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        let mut records = Records::new(Arc::from("s"), at, 100_000);
        records.push(&event("1", &"x".repeat(2000)));
        records.trim_excess();
        let used = records.text.len();
        assert!(
            records.text.capacity() < used + used / 4 + 1024,
            "{}",
            records.text.capacity()
        );
        // Within a quarter and 1 KiB over: not worth a reallocation.
        let mut records = Records::new(Arc::from("s"), at, 3000);
        records.push(&event("1", &"x".repeat(2000)));
        records.trim_excess();
        assert_eq!(records.text.capacity(), 3000);
    }

    #[test]
    fn a_chunk_the_records_use_little_of_is_let_go() {
        let at = UNIX_EPOCH + Duration::from_secs(1);
        // One short event among 64 KiB of comments.
        let mut wire = ": keep-alive\n".repeat(5000);
        wire.push_str("data: hello\n\n");
        let chunk = Bytes::from(wire.into_bytes());
        let text = std::str::from_utf8(&chunk).unwrap();
        let hello = &text[text.len() - 7..text.len() - 2];
        assert_eq!(hello, "hello");
        let mut records = Records::sharing(Arc::from("s"), at, &chunk, 0);
        records.push(&event("1", hello));
        assert!(points_into(&chunk, records.get(0).data));
        records.trim_excess();
        assert!(records.chunk.is_none(), "the chunk is still held");
        let r = records.get(0);
        assert_eq!((r.event, r.id, r.data), ("update", "1", "hello"));
        assert!(!points_into(&chunk, r.data));
    }

    /// One record's parts for `encode_all_writes_what_encode_writes`.
    fn parts() -> impl Strategy<Value = (u8, u8, Option<String>, String)> {
        (
            0u8..3,
            0u8..3,
            proptest::option::of("[a-z0-9\"\\\\\u{1}]{0,6}"),
            "[ -~\u{0}-\u{1f}é]{0,40}",
        )
    }

    proptest! {
        /// Byte for byte, for runs of records that share streams, arrival
        /// times and event types or not, with escapes in every part.
        #[test]
        fn encode_all_writes_what_encode_writes(records in proptest::collection::vec(parts(), 0..20)) {
            let streams = ["wiki", "a\"b", "\u{1}"];
            let types = ["message", "edit\n", "é"];
            let ats = ["2025-11-25T23:36:07.123456Z", "2025-11-25T23:36:08.000001Z"];
            // Equal text at different addresses must not pass for the same.
            let copies: Vec<String> = types.iter().map(|t| t.to_string()).collect();
            let refs: Vec<RecordRef<'_>> = records
                .iter()
                .enumerate()
                .map(|(n, (stream, event, id, data))| RecordRef {
                    stream: streams[*stream as usize],
                    event: if n % 2 == 0 { types[*event as usize] } else { &copies[*event as usize] },
                    id: id.as_deref().unwrap_or(""),
                    data,
                    received_at: ats[(*stream as usize + n / 3) % 2],
                })
                .collect();
            for encoding in [Encoding::Json, Encoding::Ndjson, Encoding::Data] {
                let mut one_by_one = Vec::new();
                for record in &refs {
                    record.encode(encoding, &mut one_by_one);
                }
                let mut all = Vec::new();
                encode_all(refs.iter().copied(), encoding, &mut all);
                prop_assert_eq!(String::from_utf8_lossy(&all), String::from_utf8_lossy(&one_by_one));
            }
        }
    }

    #[test]
    fn json_record_has_keys_in_order() {
        let mut out = Vec::new();
        record("42", "a \"quote\"\nline\u{1}\\ é").encode(Encoding::Json, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"stream\":\"wiki\",\"id\":\"42\",\"event\":\"edit\",\
             \"data\":\"a \\\"quote\\\"\\nline\\u0001\\\\ é\",\
             \"received_at\":\"2025-11-25T23:36:07.123456Z\"}\n"
        );
    }

    #[test]
    fn missing_id_is_null_and_data_encoding_is_raw() {
        let mut out = Vec::new();
        record("", "x").write_json(&mut out);
        assert!(String::from_utf8(out).unwrap().contains("\"id\":null"));
        let mut out = Vec::new();
        record("", "raw\ndata").encode(Encoding::Data, &mut out);
        assert_eq!(out, b"raw\ndata\n");
    }

    #[test]
    fn json_len_is_exact() {
        let all: String = (0u8..0x80).map(char::from).collect::<String>() + "ü€😀";
        for r in [record("42", &all), record("", ""), record("\"q\"", "x")] {
            let mut out = Vec::new();
            r.write_json(&mut out);
            assert_eq!(r.json_len(), out.len(), "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn json_len_unescaped_is_the_length_without_escapes() {
        // Nothing to escape: the exact length.
        for r in [record("42", "plain é"), record("", "")] {
            assert_eq!(r.json_len_unescaped(), r.json_len());
        }
        // Each escape adds to the exact length only: `"` 1 byte, U+0001 5.
        let r = record("\"q\"", "a\u{1}");
        assert_eq!(r.json_len_unescaped() + 2 + 5, r.json_len());
    }

    #[test]
    fn every_control_character_round_trips_through_a_json_parser() {
        let all: String = (0u8..0x80).map(char::from).collect::<String>() + "ü€😀";
        let mut out = Vec::new();
        write_json_string(&all, &mut out);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn timestamps_match_humantime() {
        let mut seconds = vec![
            0u64,
            59,
            86_399,
            86_400,
            951_782_400,
            1_764_113_767,
            253_402_300_799,
        ];
        // Every day boundary across leap years, and a spread of times in between.
        seconds.extend((0..20_000u64).map(|d| d * 86_400 + d % 86_400));
        seconds.extend((0..10_000u64).map(|i| i * 25_340_230));
        for secs in seconds {
            for micros in [0u32, 7, 123_456, 999_999] {
                let at = UNIX_EPOCH + Duration::new(secs, micros * 1000 + 999);
                let mut out = Vec::new();
                write_timestamp(at, &mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    humantime::format_rfc3339_micros(at).to_string(),
                    "{secs}.{micros}"
                );
            }
        }
    }

    #[test]
    fn long_strings_with_many_escapes_round_trip() {
        // Past the staging buffer, with escapes of every length at its edges.
        let s: String = (0..20_000u32)
            .map(|i| match i % 7 {
                0 => '"',
                3 => '\u{2}',
                5 => 'é',
                _ => 'x',
            })
            .collect();
        let mut out = Vec::new();
        write_json_string(&s, &mut out);
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        assert_eq!(json_string_len(&s), out.len());
    }

    #[test]
    fn escapes_are_found_at_every_position() {
        // Each special byte at every offset of a 20-byte plain string, so it
        // lands in each lane of a word and in the tail.
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
            for at in 0..20 {
                let mut s: Vec<char> = "abcdefghij\u{7f}é€lmnop".chars().collect();
                s.insert(at.min(s.len()), special);
                let s: String = s.into_iter().collect();
                let mut out = Vec::new();
                write_json_string(&s, &mut out);
                assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
                assert_eq!(json_string_len(&s), out.len());
            }
        }
    }
}
