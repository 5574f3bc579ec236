//! The output record and its JSON-lines encoding.
//!
//! Every stdout and file sink line is one JSON object with the keys in this
//! order (outside tooling depends on it):
//!
//! ```text
//! {"stream":"wiki","id":"42","event":"message","data":"...","received_at":"2026-11-25T23:36:07.123456Z"}
//! ```
//!
//! `id` is `null` when no id is in effect. The encoder writes straight into the
//! sink's buffer; it is on the hot path, so string escaping copies runs of plain
//! bytes in blocks and consults a table only for the bytes that need escaping.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Encoding;
use crate::sse::Event;

/// An event as it leaves a stream for its sinks.
#[derive(Debug, Clone)]
pub struct Record {
    pub stream: Arc<str>,
    pub event: Event,
    pub received_at: SystemTime,
}

impl Record {
    /// Appends the record in `encoding`, followed by `\n`.
    pub fn encode(&self, encoding: Encoding, out: &mut Vec<u8>) {
        match encoding {
            Encoding::Json | Encoding::Ndjson => self.write_json(out),
            Encoding::Data => out.extend_from_slice(self.event.data.as_bytes()),
        }
        out.push(b'\n');
    }

    /// Appends the JSON object (without a line ending).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"stream\":");
        write_json_string(&self.stream, out);
        out.extend_from_slice(b",\"id\":");
        match self.event.id() {
            Some(id) => write_json_string(id, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"event\":");
        write_json_string(&self.event.event, out);
        out.extend_from_slice(b",\"data\":");
        write_json_string(&self.event.data, out);
        out.extend_from_slice(b",\"received_at\":\"");
        use std::io::Write;
        // humantime writes RFC 3339 in UTC with a `Z`; writing into a Vec cannot fail.
        let _ = write!(
            out,
            "{}",
            humantime::format_rfc3339_micros(self.received_at)
        );
        out.extend_from_slice(b"\"}");
    }

    /// The exact length of what [`Record::write_json`] appends, without
    /// encoding: batch size limits are checked before a batch is encoded.
    pub fn json_len(&self) -> usize {
        // The keys, quotes and punctuation around the values (see `write_json`).
        const FRAME: usize = r#"{"stream":,"id":,"event":,"data":,"received_at":""}"#.len();
        // RFC 3339 with microseconds in UTC: `2025-11-25T23:36:07.123456Z`.
        const TIMESTAMP: usize = 27;
        let id = self.event.id().map_or(4, json_string_len);
        FRAME
            + TIMESTAMP
            + json_string_len(&self.stream)
            + id
            + json_string_len(&self.event.event)
            + json_string_len(&self.event.data)
    }
}

/// The length of `s` written by [`write_json_string`], quotes included.
pub fn json_string_len(s: &str) -> usize {
    let escapes: usize = s
        .bytes()
        .map(|b| match ESCAPE[b as usize] {
            0 => 0,
            b'u' => 5,
            _ => 1,
        })
        .sum();
    s.len() + escapes + 2
}

/// For each byte: 0 if it is copied as is, otherwise the letter of its short
/// escape (`n` for `\n`), or `u` for the `\u00XX` form.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[0x08] = b'b';
    table[0x0C] = b'f';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a quoted JSON string.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..i]);
        match escape {
            b'u' => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xF) as usize],
            ]),
            letter => out.extend_from_slice(&[b'\\', letter]),
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(id: &str, data: &str) -> Record {
        Record {
            stream: Arc::from("wiki"),
            event: Event {
                event: Arc::from("edit"),
                data: data.to_owned(),
                id: Arc::from(id),
                retry: None,
            },
            received_at: UNIX_EPOCH + Duration::from_micros(1_764_113_767_123_456),
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
    fn every_control_character_round_trips_through_a_json_parser() {
        let all: String = (0u8..0x80).map(char::from).collect::<String>() + "ü€😀";
        let mut out = Vec::new();
        write_json_string(&all, &mut out);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, all);
    }
}
