//! Differential fuzzing of the incremental SSE parser against the slow reference
//! of `tests/support/reference_parser.rs` (the same oracle the proptests use).
//!
//! The input is read as:
//! * byte 0: bit 0 set: small limits (bytes 1 and 2 give `max_line_bytes` and
//!   `max_event_bytes`, so the limits are crossed all the time); otherwise the
//!   default limits and no limit modelling in the reference;
//! * byte 3: how many cut points follow (at most 31), each two bytes, little
//!   endian, taken modulo the body length + 1. A cut whose high bit is set also
//!   ends the response body there (a reconnect: `start_connection`);
//! * the rest: the body.
//!
//! Checked: the events, the last event id, the retry and the counters equal the
//! reference's, and feeding the same bodies whole gives the same as the chunked run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_relay::sse::{Limits, Parser};

#[path = "../../tests/support/reference_parser.rs"]
#[allow(dead_code)]
mod reference_parser;

use reference_parser::{Counts, RefLimits, Reference};

type Tuple = (String, String, String, Option<u64>);

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Tuple>,
    last_event_id: String,
    retry: Option<u64>,
    stats: Counts,
}

/// Feeds each body's chunks, with `start_connection` between bodies.
fn run(limits: Limits, bodies: &[Vec<&[u8]>]) -> Outcome {
    let mut parser = Parser::new(limits);
    let mut events = Vec::new();
    for (i, chunks) in bodies.iter().enumerate() {
        if i > 0 {
            parser.start_connection();
        }
        for chunk in chunks {
            let (id_before, updates_before) =
                (parser.last_event_id().to_owned(), parser.stats().id_updates);
            parser.feed(chunk, &mut |e| {
                events.push((
                    e.event.to_string(),
                    e.data.clone(),
                    e.id.to_string(),
                    e.retry,
                ))
            });
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

fn reference(limits: Option<Limits>, bodies: &[&[u8]]) -> Outcome {
    let mut r = Reference::new(limits.map(|l| RefLimits {
        max_line_bytes: l.max_line_bytes,
        max_event_bytes: l.max_event_bytes,
    }));
    let mut events = Vec::new();
    for body in bodies {
        events.extend(
            r.parse_body(body)
                .into_iter()
                .map(|e| (e.event, e.data, e.id, e.retry)),
        );
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

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let small = input[0] & 1 == 1;
    let limits = if small {
        Limits {
            max_line_bytes: usize::from(input[1] % 64),
            max_event_bytes: usize::from(input[2]),
        }
    } else {
        Limits::default()
    };
    let n_cuts = usize::from(input[3] % 32);
    let rest = &input[4..];
    let cut_bytes = (n_cuts * 2).min(rest.len() & !1);
    let (cut_spec, body) = rest.split_at(cut_bytes);

    // Cut points, sorted; some of them also end a response body.
    let mut cuts: Vec<(usize, bool)> = cut_spec
        .chunks_exact(2)
        .map(|c| {
            let v = u16::from_le_bytes([c[0], c[1]]);
            (usize::from(v & 0x7FFF) % (body.len() + 1), v & 0x8000 != 0)
        })
        .collect();
    cuts.sort_unstable();

    let mut bodies: Vec<Vec<&[u8]>> = vec![Vec::new()];
    let mut whole_bodies: Vec<&[u8]> = Vec::new();
    let mut body_start = 0;
    let mut start = 0;
    for (at, ends_body) in cuts {
        bodies.last_mut().unwrap().push(&body[start..at]);
        start = at;
        if ends_body {
            whole_bodies.push(&body[body_start..at]);
            body_start = at;
            bodies.push(Vec::new());
        }
    }
    bodies.last_mut().unwrap().push(&body[start..]);
    whole_bodies.push(&body[body_start..]);

    let chunked = run(limits, &bodies);
    let whole: Vec<Vec<&[u8]>> = whole_bodies.iter().map(|b| vec![*b]).collect();
    assert_eq!(chunked, run(limits, &whole), "chunking changed the outcome");
    let expected = reference(small.then_some(limits), &whole_bodies);
    assert_eq!(chunked, expected, "parser and reference disagree");
});
