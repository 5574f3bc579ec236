//! JSON string escaping throughput: `sse_relay::escape` (AVX-512 or SSSE3
//! blocks, SWAR words for short strings) against `serde_json`, in one run. (The SWAR-only
//! encoder it replaced measured 1,469 MB/s on `large` and 1,026 MB/s on
//! `small-data` in the run that adopted it, against 5,846 and 2,329.)
//!
//! Inputs (from the corpora of `tools/loadgen/src/corpus.rs`, the bytes the load
//! generator serves):
//!
//! * `large`: the data of one `large` event, a 16 KiB JSON-looking line with a
//!   `"` every five bytes or so;
//! * `small-data`: the data of 1000 `small` events (`{"seq":1,"user":"u12","v":345}`);
//! * `small-fields`: the id, event type and data of the same 1000 events, the
//!   three strings a record escapes (ids like `12345`, types like `update`).
//!
//! Throughput is per input byte. The `len` group times `json_string_len` (run
//! on every record for batch limits) on the same inputs.
//! Run: `cargo bench --bench escape` (a filter such as `-- large` narrows it).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "../tools/loadgen/src/corpus.rs"]
#[allow(dead_code)]
mod corpus;

/// The value of each `field: ` line of `body` (an SSE stream of single-line fields).
fn fields<'a>(body: &'a str, field: &str) -> Vec<&'a str> {
    let prefix = format!("{field}: ");
    body.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect()
}

fn inputs() -> Vec<(&'static str, Vec<String>)> {
    let large = corpus::large(1, 16 << 10);
    let large = String::from_utf8(large.body).expect("UTF-8");
    let large_data: Vec<String> = fields(&large, "data")
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(large_data.len(), 1);
    assert_eq!(large_data[0].len(), 16 << 10);

    let small = corpus::small(1000);
    let small = String::from_utf8(small.body).expect("UTF-8");
    let small_data: Vec<String> = fields(&small, "data")
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(small_data.len(), 1000);
    let mut small_fields = Vec::new();
    for ((id, event), data) in fields(&small, "id")
        .into_iter()
        .zip(fields(&small, "event"))
        .zip(fields(&small, "data"))
    {
        small_fields.extend([id, event, data].map(String::from));
    }
    vec![
        ("large", large_data),
        ("small-data", small_data),
        ("small-fields", small_fields),
    ]
}

/// Escapes every string of `strings` into one reused buffer.
fn escape_all(strings: &[String], out: &mut Vec<u8>, write: impl Fn(&str, &mut Vec<u8>)) {
    out.clear();
    for s in strings {
        write(s, out);
    }
    black_box(&out);
}

/// The sum of `len` over `strings` (generic, like `escape_all`, so that `len`
/// is called directly rather than through a pointer).
fn total_len(strings: &[String], len: impl Fn(&str) -> usize) -> usize {
    strings.iter().map(|s| len(black_box(s))).sum()
}

fn escape(c: &mut Criterion) {
    for (name, strings) in inputs() {
        let bytes: usize = strings.iter().map(String::len).sum();
        // Same bytes from both before anything is timed.
        let mut expected = Vec::new();
        let mut out = Vec::new();
        escape_all(&strings, &mut expected, |s, out| {
            serde_json::to_writer(out, s).expect("write to a Vec")
        });
        escape_all(&strings, &mut out, sse_relay::escape::write_json_string);
        assert_eq!(out, expected);

        let mut group = c.benchmark_group(format!("escape/{name}"));
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(BenchmarkId::from_parameter("sse-relay"), |b| {
            b.iter(|| escape_all(&strings, &mut out, sse_relay::escape::write_json_string))
        });
        group.bench_function(BenchmarkId::from_parameter("serde_json"), |b| {
            b.iter(|| {
                escape_all(&strings, &mut out, |s, out| {
                    serde_json::to_writer(out, s).expect("write to a Vec")
                })
            })
        });
        group.finish();

        let new = sse_relay::escape::json_string_len;
        assert_eq!(total_len(&strings, new), expected.len());
        let mut group = c.benchmark_group(format!("len/{name}"));
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(BenchmarkId::from_parameter("sse-relay"), |b| {
            b.iter(|| total_len(&strings, new))
        });
        group.finish();
    }
}

criterion_group!(benches, escape);
criterion_main!(benches);
