//! The benchmark corpora of issue 7, generated deterministically (same bytes on
//! every run and machine). Shared by `benches/parser.rs` (included with `#[path]`)
//! and the `loadgen` server, so the in-memory and the loopback figures are about
//! the same bytes. Plain std: no dependency, no I/O.

/// One generated corpus: the whole body and what a correct parser must find in it.
pub struct Corpus {
    pub name: &'static str,
    pub body: Vec<u8>,
    pub events: u64,
}

impl Corpus {
    /// The longest prefix of whole events holding at most `max_bytes` (at least one
    /// event): used to keep the quadratic comparators' runs short.
    pub fn prefix(&self, max_bytes: usize) -> (&[u8], u64) {
        if self.body.len() <= max_bytes {
            return (&self.body, self.events);
        }
        let sep: &[u8] = if self.body.windows(2).take(4096).any(|w| w == b"\r\n") {
            b"\r\n\r\n"
        } else {
            b"\n\n"
        };
        let mut end = 0;
        let mut events = 0;
        let mut at = 0;
        while let Some(pos) = find(&self.body[at..], sep) {
            let next = at + pos + sep.len();
            if next > max_bytes && events > 0 {
                break;
            }
            end = next;
            events += 1;
            at = next;
        }
        (&self.body[..end], events)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A tiny deterministic generator (xorshift64*), so corpora need no `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `small`: `count` events of ~70 bytes: `id`, `event`, one JSON `data` line.
pub fn small(count: u64) -> Corpus {
    let mut rng = Rng(0x5EED_0001);
    let mut body = Vec::with_capacity(count as usize * 72);
    for seq in 0..count {
        let user = rng.below(1000);
        let value = rng.below(100_000);
        let line = format!(
            "id: {seq}\nevent: update\ndata: {{\"seq\":{seq},\"user\":\"u{user}\",\"v\":{value}}}\n\n"
        );
        body.extend_from_slice(line.as_bytes());
    }
    Corpus {
        name: "small",
        body,
        events: count,
    }
}

/// A JSON-looking line of exactly `len` bytes (quotes included, as real payloads
/// have them: they cost the JSON encoder escapes).
fn json_line(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let mut line = Vec::with_capacity(len + 64);
    line.push(b'{');
    let mut key = 0;
    while line.len() < len {
        let word = WORDS[rng.below(8) as usize];
        let n = rng.below(1_000_000);
        line.extend_from_slice(format!("\"k{key}\":\"{word} {n}\",").as_bytes());
        key += 1;
    }
    line.truncate(len - 1);
    line.push(b'}');
    line
}

/// `large`: `count` events with an `id` and one `data` line of `line_len` bytes.
pub fn large(count: u64, line_len: usize) -> Corpus {
    let mut rng = Rng(0x5EED_0002);
    // A few distinct lines, reused: generating 320 MB of JSON takes seconds.
    let lines: Vec<Vec<u8>> = (0..16).map(|_| json_line(&mut rng, line_len)).collect();
    let mut body = Vec::with_capacity(count as usize * (line_len + 24));
    for seq in 0..count {
        body.extend_from_slice(format!("id: {seq}\ndata: ").as_bytes());
        body.extend_from_slice(&lines[(seq % 16) as usize]);
        body.extend_from_slice(b"\n\n");
    }
    Corpus {
        name: if line_len >= 1 << 20 { "huge" } else { "large" },
        body,
        events: count,
    }
}

/// `multiline`: `count` events of `id`, `event` and 5 `data` lines, CRLF endings.
pub fn multiline(count: u64) -> Corpus {
    let mut rng = Rng(0x5EED_0003);
    let mut body = Vec::with_capacity(count as usize * 380);
    for seq in 0..count {
        body.extend_from_slice(format!("id: {seq}\r\nevent: tick\r\n").as_bytes());
        for part in 0..5 {
            let a = rng.below(1_000_000);
            let b = rng.below(1_000_000);
            body.extend_from_slice(
                format!("data: {{\"part\":{part},\"a\":{a},\"b\":{b},\"note\":\"the quick brown fox\"}}\r\n")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n");
    }
    Corpus {
        name: "multiline",
        body,
        events: count,
    }
}

/// A corpus by name, at the sizes issue 7 specifies.
pub fn by_name(name: &str) -> Option<Corpus> {
    Some(match name {
        "small" => small(1_000_000),
        "large" => large(20_000, 16 << 10),
        "multiline" => multiline(200_000),
        "huge" => large(4, 8 << 20),
        _ => return None,
    })
}
