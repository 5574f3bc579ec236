//! Every case in `tests/data/conformance/parse.json` (the project's shared SSE
//! conformance vectors, copied in; see the README beside them), fed as
//! written, byte by byte, and split at every point.

use serde_json::Value;
use sse_relay::sse::{Event, Parser};

struct Case {
    name: String,
    chunks: Vec<Vec<u8>>,
    expect: Vec<(String, String, String, Option<u64>)>,
    last_event_id_after: String,
    retry_after: Option<u64>,
}

fn conformance_path() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.join("tests/data/conformance/parse.json")
}

fn decode_b64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s.as_bytes() {
        if c == b'=' {
            break;
        }
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn load_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(conformance_path()).expect("read conformance vectors");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("parse conformance vectors");
    cases
        .into_iter()
        .map(|c| {
            let chunks = if let Some(b64) = c.get("chunks_b64") {
                b64.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| decode_b64(s.as_str().unwrap()))
                    .collect()
            } else {
                c["chunks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().as_bytes().to_vec())
                    .collect()
            };
            let expect = c["expect"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["event"].as_str().unwrap().to_owned(),
                        e["data"].as_str().unwrap().to_owned(),
                        e["id"].as_str().unwrap().to_owned(),
                        e["retry"].as_u64(),
                    )
                })
                .collect();
            Case {
                name: c["name"].as_str().unwrap().to_owned(),
                chunks,
                expect,
                last_event_id_after: c["last_event_id_after"].as_str().unwrap().to_owned(),
                retry_after: c["retry_after"].as_u64(),
            }
        })
        .collect()
}

fn run(chunks: &[&[u8]]) -> (Vec<Event>, String, Option<u64>) {
    let mut parser = Parser::default();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut |e| events.push(e));
    }
    (events, parser.last_event_id().to_owned(), parser.retry())
}

fn check(case: &Case, chunks: &[&[u8]], how: &str) {
    let (events, last_id, retry) = run(chunks);
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.event.to_string(),
                e.data.clone(),
                e.id.to_string(),
                e.retry,
            )
        })
        .collect();
    assert_eq!(got, case.expect, "case {} ({how}): events", case.name);
    assert_eq!(
        last_id, case.last_event_id_after,
        "case {} ({how}): last id",
        case.name
    );
    assert_eq!(retry, case.retry_after, "case {} ({how}): retry", case.name);
}

#[test]
fn every_conformance_case_passes_as_written() {
    let cases = load_cases();
    assert!(
        cases.len() >= 40,
        "expected the full conformance set, got {}",
        cases.len()
    );
    for case in &cases {
        let chunks: Vec<&[u8]> = case.chunks.iter().map(Vec::as_slice).collect();
        check(case, &chunks, "as written");
    }
}

#[test]
fn every_conformance_case_passes_byte_by_byte() {
    for case in &load_cases() {
        let body: Vec<u8> = case.chunks.concat();
        let chunks: Vec<&[u8]> = body.chunks(1).collect();
        check(case, &chunks, "one byte per chunk");
    }
}

#[test]
fn every_conformance_case_passes_at_every_split_point() {
    for case in &load_cases() {
        let body: Vec<u8> = case.chunks.concat();
        for split in 0..=body.len() {
            let (a, b) = body.split_at(split);
            check(case, &[a, b], &format!("split at {split}"));
        }
    }
}
