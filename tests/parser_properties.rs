//! Properties of the incremental SSE parser, checked against a slow reference
//! implementation of the spec (`support/reference_parser.rs`), and the memory
//! limits, checked whatever the chunking.

#[path = "support/heap.rs"]
mod heap;
#[path = "support/reference_parser.rs"]
mod reference_parser;

use proptest::prelude::*;
use proptest::sample::{select, Index};
use reference_parser::{Counts, RefEvent, RefLimits, Reference};
use sse_relay::sse::{Event, Limits, Parser};

#[global_allocator]
static HEAP: heap::Counting = heap::Counting;

// ---------------------------------------------------------------------------
// Running the parser
// ---------------------------------------------------------------------------

/// Everything observable after feeding a stream: the events as
/// `(type, data, id, retry)`, then the parser's last id, retry and stats.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    events: Vec<(String, String, String, Option<u64>)>,
    last_event_id: String,
    retry: Option<u64>,
    stats: Counts,
}

fn tuple(e: &Event) -> (String, String, String, Option<u64>) {
    (
        e.event.to_string(),
        e.data.clone(),
        e.id.to_string(),
        e.retry,
    )
}

fn ref_tuple(e: RefEvent) -> (String, String, String, Option<u64>) {
    (e.event, e.data, e.id, e.retry)
}

/// Feeds each body (a list of chunks) in turn, with `start_connection` between
/// bodies, as the stream does on reconnect.
fn run_bodies(limits: Limits, bodies: &[Vec<&[u8]>]) -> Outcome {
    let mut parser = Parser::new(limits);
    let mut events = Vec::new();
    for (i, chunks) in bodies.iter().enumerate() {
        if i > 0 {
            parser.start_connection();
        }
        for chunk in chunks {
            let (id_before, updates_before) =
                (parser.last_event_id().to_owned(), parser.stats().id_updates);
            parser.feed(chunk, &mut |e| events.push(tuple(&e)));
            // The stream looks at the id only when this count moved.
            assert!(
                parser.last_event_id() == id_before || parser.stats().id_updates != updates_before,
                "the id went from {id_before:?} to {:?} and id_updates stayed {updates_before}",
                parser.last_event_id()
            );
        }
    }
    Outcome {
        events,
        last_event_id: parser.last_event_id().to_owned(),
        retry: parser.retry(),
        stats: parser.stats().into(),
    }
}

fn run(limits: Limits, chunks: &[&[u8]]) -> Outcome {
    run_bodies(limits, &[chunks.to_vec()])
}

/// What the reference says the bodies produce. The stats follow from the events
/// and the reference's count of dropped events.
fn reference(limits: Option<Limits>, bodies: &[&[u8]]) -> Outcome {
    let mut r = Reference::new(limits.map(|l| RefLimits {
        max_line_bytes: l.max_line_bytes,
        max_event_bytes: l.max_event_bytes,
    }));
    let mut events = Vec::new();
    for body in bodies {
        events.extend(r.parse_body(body).into_iter().map(ref_tuple));
    }
    Outcome {
        stats: Counts {
            events: events.len() as u64,
            oversized_events: r.oversized_events,
        },
        events,
        last_event_id: r.last_event_id,
        retry: r.retry,
    }
}

/// Cuts `body` at the given points (duplicates make empty chunks).
fn split_at<'a>(body: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for p in points {
        chunks.push(&body[start..p]);
        start = p;
    }
    chunks.push(&body[start..]);
    chunks
}

/// Feeds `body` whole, one byte at a time, and in chunks of several fixed sizes;
/// asserts every chunking gives the same outcome, and returns it.
fn run_every_way(limits: Limits, body: &[u8]) -> Outcome {
    let whole = run(limits, &[body]);
    let bytewise = run(limits, &body.chunks(1).collect::<Vec<_>>());
    assert_eq!(bytewise, whole, "one byte at a time vs whole");
    for size in [2, 3, 5, 7, 16, 64] {
        let chunked = run(limits, &body.chunks(size).collect::<Vec<_>>());
        assert_eq!(chunked, whole, "chunks of {size} vs whole");
    }
    whole
}

// ---------------------------------------------------------------------------
// Generating SSE-ish bodies
// ---------------------------------------------------------------------------

fn concat(parts: Vec<&[u8]>) -> Vec<u8> {
    parts.concat()
}

/// Pieces of field values: text, digits (one number too big for u64), separators, NUL,
/// a BOM and pieces of it, multi-byte characters whole and truncated, bytes that
/// are never UTF-8.
const VALUE_PIECES: &[&[u8]] = &[
    b"a",
    b"xyz",
    b"0",
    b"7",
    b"42",
    b"99999999999999999999999",
    b" ",
    b":",
    b": ",
    b"\0",
    b"\xEF\xBB\xBF",
    b"\xEF",
    b"\xEF\xBB",
    b"\xBF",
    "é".as_bytes(),
    "€".as_bytes(),
    "😀".as_bytes(),
    b"\xFF",
    b"\x80",
    b"\xC3",
    b"\xE2\x82",
    b"\xF0\x9F\x98",
];

const FIELD_NAMES: &[&[u8]] = &[
    b"data",
    b"data",
    b"event",
    b"id",
    b"id",
    b"retry",
    b"retry",
    b"foo",
    b"",
    b"Data",
    b"data ",
    b" data",
    b"dat\xC3",
    b"\xEF\xBB\xBFdata",
    b"id\0",
];

const SEPARATORS: &[&[u8]] = &[b"", b":", b":", b": ", b": ", b":  ", b"::", b": :"];

const LINE_ENDINGS: &[&[u8]] = &[b"\n", b"\n", b"\r", b"\r\n"];

/// Everything above, plus line endings, for bodies that are token soup.
fn soup_token() -> impl Strategy<Value = &'static [u8]> {
    prop_oneof![
        3 => select(VALUE_PIECES),
        2 => select(FIELD_NAMES),
        2 => select(SEPARATORS),
        3 => select(LINE_ENDINGS),
    ]
}

const DIGITS: &[&[u8]] = &[b"0", b"7", b"42", b"1000", b"99999999999999999999999"];

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(select(VALUE_PIECES), 0..5).prop_map(concat),
        // Digits only, so that `retry` is often valid.
        1 => prop::collection::vec(select(DIGITS), 1..3).prop_map(concat),
    ]
}

/// One line, with its ending: a field, a comment, or a blank line.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let field = (
        select(FIELD_NAMES),
        select(SEPARATORS),
        value(),
        select(LINE_ENDINGS),
    )
        .prop_map(|(name, sep, value, end)| [name, sep, &value, end].concat());
    let comment = (value(), select(LINE_ENDINGS))
        .prop_map(|(value, end)| [b":".as_slice(), &value, end].concat());
    let blank = select(LINE_ENDINGS).prop_map(<[u8]>::to_vec);
    prop_oneof![5 => field, 1 => comment, 3 => blank]
}

/// A body of whole lines, maybe after a BOM (or part of one), maybe ending in
/// the middle of a line.
fn structured_body() -> impl Strategy<Value = Vec<u8>> {
    const STARTS: &[&[u8]] = &[b"", b"", b"\xEF\xBB\xBF", b"\xEF\xBB", b"\xEF"];
    let start = select(STARTS);
    (start, prop::collection::vec(line(), 0..24), value()).prop_map(|(start, lines, tail)| {
        let mut body = start.to_vec();
        body.extend(lines.concat());
        body.extend(tail);
        body
    })
}

fn soup_body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(soup_token(), 0..80).prop_map(concat)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => structured_body(), 1 => soup_body()]
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..10)
}

/// Small limits, so that random bodies often cross them.
fn small_limits() -> impl Strategy<Value = Limits> {
    (0usize..24, 0usize..48).prop_map(|(max_line_bytes, max_event_bytes)| Limits {
        max_line_bytes,
        max_event_bytes,
    })
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The parser, fed in random chunks, does exactly what the spec says.
    #[test]
    fn parser_matches_reference(body in body(), cuts in cuts()) {
        let expected = reference(None, &[&body]);
        let got = run(Limits::default(), &split_at(&body, &cuts));
        prop_assert_eq!(got, expected);
    }

    /// Several response bodies with `start_connection` between them: each body
    /// starts afresh (BOM, partial line, partial event) but the last event id and
    /// retry carry over.
    #[test]
    fn reconnects_match_reference(
        bodies in prop::collection::vec((body(), cuts()), 1..4),
    ) {
        let whole: Vec<&[u8]> = bodies.iter().map(|(b, _)| b.as_slice()).collect();
        let expected = reference(None, &whole);
        let split: Vec<Vec<&[u8]>> = bodies.iter().map(|(b, c)| split_at(b, c)).collect();
        prop_assert_eq!(run_bodies(Limits::default(), &split), expected);
    }

    /// Whole, one byte at a time, or cut anywhere: the same events and state.
    #[test]
    fn output_is_independent_of_chunking(body in body(), cuts in cuts()) {
        let limits = Limits::default();
        let whole = run(limits, &[&body]);
        prop_assert_eq!(&run(limits, &body.chunks(1).collect::<Vec<_>>()), &whole);
        prop_assert_eq!(&run(limits, &split_at(&body, &cuts)), &whole);
    }

    /// With limits small enough to be hit all the time, the outcome still does not
    /// depend on the chunking, and it is the reference's model of the limits.
    #[test]
    fn limits_are_independent_of_chunking(
        limits in small_limits(),
        body in body(),
        cuts in cuts(),
    ) {
        let whole = run(limits, &[&body]);
        prop_assert_eq!(&run(limits, &body.chunks(1).collect::<Vec<_>>()), &whole);
        prop_assert_eq!(&run(limits, &split_at(&body, &cuts)), &whole);
        prop_assert_eq!(whole, reference(Some(limits), &[&body]));
    }
}

// ---------------------------------------------------------------------------
// The reference itself, on cases whose answer is known by heart
// ---------------------------------------------------------------------------

#[test]
fn reference_knows_the_basics() {
    let out = reference(
        None,
        &[b"\xEF\xBB\xBFdata: a\r\ndata:b\rid: 7\n\nevent: x\nretry: 12\ndata\n\nid\n\ndata: cut"],
    );
    assert_eq!(
        out.events,
        vec![
            ("message".into(), "a\nb".into(), "7".into(), None),
            ("x".into(), "".into(), "7".into(), Some(12)),
        ]
    );
    assert_eq!(out.last_event_id, "");
    assert_eq!(out.retry, Some(12));
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

fn limits(max_line_bytes: usize, max_event_bytes: usize) -> Limits {
    Limits {
        max_line_bytes,
        max_event_bytes,
    }
}

fn message(data: &str, id: &str) -> (String, String, String, Option<u64>) {
    ("message".into(), data.into(), id.into(), None)
}

#[test]
fn overlong_data_line_drops_its_event_and_the_next_one_arrives() {
    let long = "x".repeat(100);
    let body = format!("id: 1\ndata: before\ndata: {long}\ndata: after\n\ndata: next\n\n");
    let out = run_every_way(limits(16, 1024), body.as_bytes());
    // The id of the dropped event still moves the resume point: it was dispatched.
    assert_eq!(out.events, vec![message("next", "1")]);
    assert_eq!(
        out.stats,
        Counts {
            events: 1,
            oversized_events: 1
        }
    );
}

#[test]
fn line_limit_is_exact_and_excludes_the_line_ending() {
    // "data: " is 6 bytes: a 10-byte value makes a 16-byte line.
    for ending in ["\n", "\r", "\r\n"] {
        let fits = format!("data: 0123456789{ending}{ending}");
        let out = run_every_way(limits(16, 1024), fits.as_bytes());
        assert_eq!(out.events, vec![message("0123456789", "")], "{ending:?}");
        assert_eq!(out.stats.oversized_events, 0);

        let over = format!("data: 0123456789a{ending}{ending}");
        let out = run_every_way(limits(16, 1024), over.as_bytes());
        assert_eq!(out.events, vec![], "{ending:?}");
        assert_eq!(out.stats.oversized_events, 1);
    }
}

#[test]
fn overlong_comment_line_drops_nothing() {
    let long = "c".repeat(1000);
    let body = format!("data: a\n:{long}\ndata: b\n\n:{long}\r\n\r\ndata: c\n\n");
    let out = run_every_way(limits(16, 1024), body.as_bytes());
    assert_eq!(out.events, vec![message("a\nb", ""), message("c", "")]);
    assert_eq!(
        out.stats,
        Counts {
            events: 2,
            oversized_events: 0
        }
    );
}

#[test]
fn overlong_field_line_of_any_other_kind_drops_its_event() {
    // An over-long line is not read, so it could have been anything: the event is
    // dropped, and an over-long `id` or `retry` does not take effect.
    let long = "9".repeat(40);
    for line in [
        format!("id: {long}"),
        format!("retry: {long}"),
        format!("event: {long}"),
        format!("unknown: {long}"),
        long.clone(),
    ] {
        let body = format!("id: 1\n\ndata: a\n{line}\n\ndata: b\n\n");
        let out = run_every_way(limits(16, 1024), body.as_bytes());
        assert_eq!(out.events, vec![message("b", "1")], "{line}");
        assert_eq!(out.last_event_id, "1", "{line}");
        assert_eq!(out.retry, None, "{line}");
        assert_eq!(out.stats.oversized_events, 1, "{line}");
    }
}

#[test]
fn event_over_max_event_bytes_is_dropped_and_counted() {
    // Ten lines of 10 bytes each hold 110 bytes of data buffer: over 32.
    let mut body = String::from("event: big\nid: 5\n");
    for _ in 0..10 {
        body.push_str("data: 0123456789\n");
    }
    body.push_str("\nevent: small\ndata: 0123456789\n\n");
    let out = run_every_way(limits(64, 32), body.as_bytes());
    // The dropped event's type does not leak into the next one; its id committed.
    assert_eq!(
        out.events,
        vec![("small".into(), "0123456789".into(), "5".into(), None)]
    );
    assert_eq!(
        out.stats,
        Counts {
            events: 1,
            oversized_events: 1
        }
    );
}

/// `Limits::max_event_bytes` is "largest event data kept, in bytes (the data
/// lines plus their joining `\n`s)": an event whose data is exactly that long is
/// kept, one byte more is dropped.
#[test]
fn event_whose_data_is_exactly_max_event_bytes_is_kept() {
    let out = run_every_way(limits(64, 3), b"data: abc\n\n");
    assert_eq!(out.events, vec![message("abc", "")]);
    assert_eq!(out.stats.oversized_events, 0);
    let body = b"data: 0123456789\ndata: 01234\n\n"; // data is 16 bytes
    let fits = run_every_way(limits(64, 16), body);
    assert_eq!(fits.events, vec![message("0123456789\n01234", "")]);
    let over = run_every_way(limits(64, 15), body);
    assert_eq!(over.events, vec![]);
    assert_eq!(over.stats.oversized_events, 1);
}

#[test]
fn fifty_megabyte_line_in_64k_chunks_is_skipped_and_the_next_event_arrives() {
    const CHUNK: usize = 64 << 10;
    const TOTAL: usize = 50 << 20;
    const MAX_LINE: usize = 1 << 20;
    for first in ["data: ", ": "] {
        let ((events, stats), peak) = heap::peak_during(|| {
            let filler = vec![b'x'; CHUNK];
            let mut parser = Parser::new(limits(MAX_LINE, 8 << 20));
            let mut events = Vec::new();
            let mut emit = |e: Event| events.push(tuple(&e));
            parser.feed(b"id: 3\n", &mut emit);
            parser.feed(first.as_bytes(), &mut emit);
            let mut fed = 0;
            while fed < TOTAL {
                parser.feed(&filler, &mut emit);
                fed += CHUNK;
            }
            parser.feed(b"\n\ndata: next\n\n", &mut emit);
            (events, Counts::from(parser.stats()))
        });
        // A long comment is harmless; a long field line drops its event.
        let dropped = u64::from(first == "data: ");
        assert_eq!(events, vec![message("next", "3")], "{first:?}");
        assert_eq!(
            stats,
            Counts {
                events: 1,
                oversized_events: dropped
            },
            "{first:?}"
        );
        // About the line limit is buffered (a Vec may reserve up to twice what it
        // holds), plus the chunk: nowhere near the 50 MB that went through.
        assert!(peak < 4 * MAX_LINE, "{first:?}: peak heap {peak}");
    }
}

#[test]
fn many_data_lines_over_max_event_bytes_are_not_buffered() {
    // 20 MB of 1000-byte data lines into one event with a 1 MiB limit, in 64 KB
    // chunks: the event is dropped, the following one arrives, and the data
    // buffer never grows much past the limit.
    const MAX_EVENT: usize = 1 << 20;
    let line = format!("data: {}\n", "y".repeat(994));
    let block: Vec<u8> = line.repeat(64).into_bytes(); // 64_000 bytes
    let ((events, stats), peak) = heap::peak_during(|| {
        let mut parser = Parser::new(limits(1 << 20, MAX_EVENT));
        let mut events = Vec::new();
        for _ in 0..(20_000_000 / block.len()) {
            parser.feed(&block, &mut |e| events.push(tuple(&e)));
        }
        parser.feed(b"\ndata: next\n\n", &mut |e| events.push(tuple(&e)));
        (events, Counts::from(parser.stats()))
    });
    assert_eq!(events, vec![message("next", "")]);
    assert_eq!(
        stats,
        Counts {
            events: 1,
            oversized_events: 1
        }
    );
    assert!(peak < 4 * MAX_EVENT, "peak heap {peak}");
}

// ---------------------------------------------------------------------------
// start_connection
// ---------------------------------------------------------------------------

#[test]
fn start_connection_discards_the_partial_event_and_keeps_id_and_retry() {
    let first: &[u8] = b"id: 1\ndata: a\n\nretry: 500\nid: 2\nevent: half\ndata: part";
    // If the partial line were kept, "ial" would complete "data: partial"; if the
    // partial event were kept, "half"/"2" would leak into the next one; if the BOM
    // were not stripped, the first line would be an unknown field.
    let second: &[u8] = b"\xEF\xBB\xBFial\n\ndata: b\n\n";
    for split in 0..=second.len() {
        let (x, y) = second.split_at(split);
        let out = run_bodies(Limits::default(), &[vec![first], vec![x, y]]);
        assert_eq!(
            out.events,
            vec![
                message("a", "1"),
                ("message".into(), "b".into(), "1".into(), None),
            ],
            "second body split at {split}"
        );
        assert_eq!(out.last_event_id, "1");
        assert_eq!(out.retry, Some(500));
    }
}

#[test]
fn start_connection_re_enables_bom_stripping_byte_by_byte() {
    let body: &[u8] = b"\xEF\xBB\xBFdata: x\n\n";
    let bytewise: Vec<&[u8]> = body.chunks(1).collect();
    let out = run_bodies(
        Limits::default(),
        &[bytewise.clone(), bytewise.clone(), vec![body]],
    );
    assert_eq!(out.events, vec![message("x", ""); 3]);
    // Within one body only the first BOM is skipped.
    let out = run(Limits::default(), &[body, body]);
    assert_eq!(out.events, vec![message("x", "")]);
}

#[test]
fn start_connection_forgets_an_overlong_line_in_progress() {
    let mut parser = Parser::new(limits(16, 1024));
    let mut events = Vec::new();
    parser.feed(b"data: ok\n\ndata: 0123456789abcdefghij", &mut |e| {
        events.push(tuple(&e))
    });
    parser.start_connection();
    parser.feed(b"data: fresh\n\n", &mut |e| events.push(tuple(&e)));
    assert_eq!(events, vec![message("ok", ""), message("fresh", "")]);
    assert_eq!(parser.stats().oversized_events, 0);
}
