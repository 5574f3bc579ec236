//! The webhook sink end to end, in process: a scripted SSE server, the real
//! supervisor, and a real HTTP receiver (axum) that answers each request as a
//! test scripts it: 2xx, 4xx, 5xx, 429 with `Retry-After`, a stall past the
//! sink's timeout, or a connection dropped without an answer.

mod support;

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sse_relay::config::Config;
use sse_relay::supervisor::{self, Checkpoints, Shutdown};
use support::{numbered, Reply, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// The receiver.

/// How the receiver answers one request.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Ok,
    Status(u16),
    TooManyRequests {
        retry_after_secs: u64,
    },
    /// Wait this long, then answer 200 (to a client that gave up).
    Stall(Duration),
    /// Read the request, then close the connection without an answer.
    Drop,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    headers: HeaderMap,
    /// The body as it came over the wire (compressed, if it was).
    raw: Vec<u8>,
    answer: Answer,
}

impl Attempt {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The records in the body, decompressed and decoded per its headers.
    fn records(&self) -> Vec<serde_json::Value> {
        let body = if self.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&self.raw[..])
                .read_to_end(&mut out)
                .expect("a gzip body decodes");
            out
        } else {
            self.raw.clone()
        };
        if self.header("content-type") == Some("application/x-ndjson") {
            let text = String::from_utf8(body).expect("utf-8 body");
            assert!(text.ends_with('\n'), "ndjson ends with a newline");
            text.lines()
                .map(|l| serde_json::from_str(l).expect("one JSON record a line"))
                .collect()
        } else {
            assert_eq!(self.header("content-type"), Some("application/json"));
            serde_json::from_slice(&body).expect("a JSON array of records")
        }
    }

    fn ids(&self) -> Vec<String> {
        support::ids(&self.records())
    }
}

type Script = dyn Fn(usize) -> Answer + Send + Sync;

struct ReceiverState {
    script: Box<Script>,
    connections: AtomicUsize,
    /// Answers for accepted connections, in order; each connection carries one
    /// request (every answer says `Connection: close`).
    answers: Mutex<VecDeque<Answer>>,
    attempts: Mutex<Vec<Attempt>>,
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers the n-th request (0-based) with `script(n)`.
    async fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ReceiverState {
            script: Box::new(script),
            connections: AtomicUsize::new(0),
            answers: Mutex::new(VecDeque::new()),
            attempts: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let listener = ScriptedListener {
            inner: listener,
            state: state.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.state.attempts.lock().unwrap().clone()
    }

    /// The ids of every record the receiver accepted (answered 2xx), in order.
    fn delivered(&self) -> Vec<String> {
        self.attempts()
            .iter()
            .filter(|a| a.answer == Answer::Ok)
            .flat_map(Attempt::ids)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections for axum, except those the script drops: those it
/// reads a request from and closes, which axum cannot do from a handler.
struct ScriptedListener {
    inner: TcpListener,
    state: Arc<ReceiverState>,
}

impl axum::serve::Listener for ScriptedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Ok((mut socket, addr)) = self.inner.accept().await else {
                continue;
            };
            let n = self.state.connections.fetch_add(1, Ordering::SeqCst);
            let answer = (self.state.script)(n);
            if answer != Answer::Drop {
                self.state.answers.lock().unwrap().push_back(answer);
                return (socket, addr);
            }
            let state = self.state.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                state.attempts.lock().unwrap().push(Attempt {
                    at: Instant::now(),
                    headers: HeaderMap::new(),
                    raw: Vec::new(),
                    answer: Answer::Drop,
                });
                drop(socket);
            });
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

async fn handle(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = state
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Answer::Ok);
    state.attempts.lock().unwrap().push(Attempt {
        at: Instant::now(),
        headers,
        raw: body.to_vec(),
        answer: answer.clone(),
    });
    let close = [("connection", "close")];
    match answer {
        Answer::Ok | Answer::Drop => (StatusCode::OK, close, "ok").into_response(),
        Answer::Status(status) => (
            StatusCode::from_u16(status).unwrap(),
            close,
            format!("scripted {status}: bad batch"),
        )
            .into_response(),
        Answer::TooManyRequests { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("connection", "close".to_owned()),
                ("retry-after", retry_after_secs.to_string()),
            ],
            "slow down",
        )
            .into_response(),
        Answer::Stall(time) => {
            tokio::time::sleep(time).await;
            (StatusCode::OK, close, "too late").into_response()
        }
    }
}

// ---------------------------------------------------------------------------
// Running the daemon.

// A config error is built once per test; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn parse(source: &str) -> Result<Config, sse_relay::config::ConfigError> {
    Config::parse(Path::new("test.toml"), source, |name| match name {
        "TEST_TOKEN" => Some("t0ken-value".to_owned()),
        "HOOK_SECRET" => Some("whsec-test-123".to_owned()),
        _ => None,
    })
}

/// One stream `s` from `sse_url` into a webhook sink `hook` at `hook_url`;
/// `extra` goes at the end of the sink's table.
fn config(dir: &Path, sse_url: &str, hook_url: &str, extra: &str) -> Config {
    parse(&format!(
        r#"
data_dir = "{dir}/state"
checkpoint_interval = "50ms"
shutdown_timeout = "60s"

[streams.s]
url = "{sse_url}"
backoff_initial = "10ms"
backoff_max = "20ms"

[sinks.hook]
type = "webhook"
inputs = ["*"]
url = "{hook_url}"
backoff_initial = "10ms"
backoff_max = "50ms"
{extra}
"#,
        dir = dir.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// An SSE server that sends events `1..=n` once, then answers 204.
async fn sse_once(n: u64) -> TestServer {
    TestServer::start(move |i, _| match i {
        0 => Reply::events([numbered(1, n)]),
        _ => Reply::status(204),
    })
    .await
}

fn range(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(|n| n.to_string()).collect()
}

fn checkpoint(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("state/checkpoints/s.json")).unwrap_or_default()
}

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------
// Delivery and retries.

#[tokio::test]
async fn events_survive_errors_drops_stalls_and_429_without_loss_or_reordering() {
    let sse = sse_once(50).await;
    let receiver = Receiver::start(|n| match n {
        0 => Answer::Status(500),
        1 => Answer::Drop,
        2 => Answer::Stall(Duration::from_secs(3)),
        3 => Answer::TooManyRequests {
            retry_after_secs: 1,
        },
        4 => Answer::Status(503),
        5 => Answer::Status(408),
        _ => Answer::Ok,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
timeout = "300ms"
[sinks.hook.batch]
max_events = 10
timeout = "100ms"
"#;
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), extra),
        Duration::from_secs(30),
    )
    .await;

    assert_eq!(
        receiver.delivered(),
        range(1, 50),
        "each event once, in order"
    );
    let attempts = receiver.attempts();
    let answers: Vec<&Answer> = attempts.iter().map(|a| &a.answer).collect();
    assert_eq!(
        answers[..7],
        [
            &Answer::Status(500),
            &Answer::Drop,
            &Answer::Stall(Duration::from_secs(3)),
            &Answer::TooManyRequests {
                retry_after_secs: 1
            },
            &Answer::Status(503),
            &Answer::Status(408),
            &Answer::Ok
        ],
        "every failure was retried"
    );
    // The same batch, byte for byte, until it was accepted.
    let first = &attempts[0].raw;
    for i in [2, 3, 4, 5, 6] {
        assert_eq!(&attempts[i].raw, first, "attempt {i} resends the batch");
    }
    assert!(attempts[6].ids().len() <= 10, "batch.max_events = 10");
    let after_429 = attempts[4].at - attempts[3].at;
    assert!(
        after_429 >= Duration::from_millis(1000) && after_429 < Duration::from_secs(3),
        "Retry-After: 1 honoured, waited {after_429:?}"
    );
    let after_500 = attempts[1].at - attempts[0].at;
    assert!(
        after_500 < Duration::from_millis(900),
        "backoff alone is short, waited {after_500:?}"
    );
    let after_stall = attempts[3].at - attempts[2].at;
    assert!(
        after_stall >= Duration::from_millis(300) && after_stall < Duration::from_secs(2),
        "a stalled request times out after 300ms, next attempt after {after_stall:?}"
    );
    assert!(checkpoint(dir.path()).contains("\"last_event_id\":\"50\""));
}

#[tokio::test]
async fn a_rejected_batch_goes_to_the_dead_letter_file_and_is_acknowledged() {
    let sse = sse_once(20).await;
    let receiver = Receiver::start(|n| match n {
        1 => Answer::Status(400),
        2 => Answer::Status(500),
        _ => Answer::Ok,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead/hook.jsonl");
    let extra = format!(
        r#"
dead_letter_path = "{}"
[sinks.hook.batch]
max_events = 5
timeout = "200ms"
"#,
        dead.display()
    );
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), &extra),
        Duration::from_secs(20),
    )
    .await;

    let attempts = receiver.attempts();
    assert_eq!(attempts[1].answer, Answer::Status(400));
    let rejected = attempts[1].ids();
    assert!(!rejected.is_empty());
    assert_eq!(
        attempts[2].ids(),
        attempts[3].ids(),
        "the batch after the rejected one is retried, not the rejected one"
    );

    let letters = support::read_records(&dead);
    assert_eq!(
        letters.len(),
        rejected.len(),
        "one dead letter per rejected event"
    );
    for (letter, id) in letters.iter().zip(&rejected) {
        assert_eq!(letter["sink"], "hook");
        assert_eq!(letter["status"], 400);
        assert_eq!(letter["response"], "scripted 400: bad batch");
        assert!(letter["rejected_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(letter["record"]["stream"], "s");
        assert_eq!(letter["record"]["id"], id.as_str());
        assert_eq!(letter["record"]["data"], format!("event {id}"));
    }

    let mut everything = receiver.delivered();
    assert!(everything.iter().all(|id| !rejected.contains(id)));
    everything.extend(rejected);
    everything.sort_by_key(|id| id.parse::<u64>().unwrap());
    assert_eq!(everything, range(1, 20), "delivered + dead letters = all");
    assert!(
        checkpoint(dir.path()).contains("\"last_event_id\":\"20\""),
        "dead-lettered events are acknowledged: {}",
        checkpoint(dir.path())
    );
}

#[tokio::test]
async fn without_a_dead_letter_path_a_rejected_batch_is_dropped_not_retried() {
    let sse = sse_once(9).await;
    let receiver = Receiver::start(|n| match n {
        0 => Answer::Status(422),
        _ => Answer::Ok,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[sinks.hook.batch]\nmax_events = 3\ntimeout = \"200ms\"\n";
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), extra),
        Duration::from_secs(20),
    )
    .await;
    let attempts = receiver.attempts();
    let rejected = attempts[0].ids();
    assert!(
        attempts[1..].iter().all(|a| a.ids() != rejected),
        "a 422 is not retried"
    );
    let delivered = receiver.delivered();
    assert_eq!(delivered.len() + rejected.len(), 9);
    assert_eq!(delivered, range(rejected.len() as u64 + 1, 9));
    assert!(checkpoint(dir.path()).contains("\"last_event_id\":\"9\""));
}

// ---------------------------------------------------------------------------
// Signing, compression, headers.

/// Checks the signature headers of `attempt` against `secret`.
fn assert_signed(attempt: &Attempt, secret: &[u8]) {
    let timestamp = attempt
        .header("x-sse-relay-timestamp")
        .expect("a timestamp header");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sent: u64 = timestamp.parse().expect("unix seconds");
    assert!(now.abs_diff(sent) < 60, "timestamp {sent} is now ({now})");
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(&attempt.raw);
    assert_eq!(
        attempt.header("x-sse-relay-signature"),
        Some(format!("sha256={}", hmac_hex(secret, &message)).as_str()),
        "HMAC-SHA256 over \"<timestamp>.<body as sent>\""
    );
}

#[tokio::test]
async fn requests_are_signed_over_the_gzip_body_and_carry_the_configured_headers() {
    let sse = sse_once(30).await;
    let receiver = Receiver::start(|n| match n {
        0 => Answer::Status(502),
        _ => Answer::Ok,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
method = "PUT"
encoding = "ndjson"
compression = "gzip"
secret = "${HOOK_SECRET}"
headers = { Authorization = "Bearer ${TEST_TOKEN}", X-Source = "relay-test" }
[sinks.hook.batch]
max_events = 8
"#;
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), extra),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(receiver.delivered(), range(1, 30));
    let attempts = receiver.attempts();
    assert!(attempts.len() >= 5, "4 batches and a retry");
    for attempt in &attempts {
        assert_signed(attempt, b"whsec-test-123");
        assert_eq!(attempt.header("content-encoding"), Some("gzip"));
        assert_eq!(attempt.header("authorization"), Some("Bearer t0ken-value"));
        assert_eq!(attempt.header("x-source"), Some("relay-test"));
        assert!(attempt.raw.starts_with(&[0x1f, 0x8b]), "a gzip stream");
        let records = attempt.records();
        assert!(records.len() <= 8);
        let keys: Vec<&str> = records[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 5);
        assert_eq!(records[0]["stream"], "s");
        assert_eq!(records[0]["event"], "message");
    }
}

#[tokio::test]
async fn a_secret_file_signs_plain_json_bodies() {
    let sse = sse_once(4).await;
    let receiver = Receiver::start(|_| Answer::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let extra = format!("secret_file = \"{}\"\n", secret_file.display());
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), &extra),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(receiver.delivered(), range(1, 4));
    for attempt in receiver.attempts() {
        assert_signed(&attempt, b"from-a-file");
        assert_eq!(attempt.header("content-encoding"), None);
        assert!(attempt.raw.starts_with(b"[{\"stream\":\"s\",\"id\":"));
    }
}

// ---------------------------------------------------------------------------
// Batching.

#[tokio::test]
async fn max_events_1_sends_one_event_a_request() {
    let sse = sse_once(6).await;
    let receiver = Receiver::start(|_| Answer::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[sinks.hook.batch]\nmax_events = 1\n";
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), extra),
        Duration::from_secs(20),
    )
    .await;
    let attempts = receiver.attempts();
    assert_eq!(attempts.len(), 6);
    for (n, attempt) in attempts.iter().enumerate() {
        assert_eq!(attempt.ids(), [(n + 1).to_string()]);
    }
}

#[tokio::test]
async fn bodies_stay_within_max_bytes() {
    // Each record is about 110 bytes: three fit in 400, four do not.
    for (encoding, max_bytes) in [("json", 400), ("ndjson", 400), ("json", 120)] {
        let receiver = Receiver::start(|_| Answer::Ok).await;
        let sse = sse_once(40).await;
        let extra = format!(
            "encoding = \"{encoding}\"\n[sinks.hook.batch]\nmax_bytes = {max_bytes}\ntimeout = \"200ms\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        support::run_to_end(
            &config(dir.path(), &sse.url("/"), &receiver.url(), &extra),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(receiver.delivered(), range(1, 40), "{encoding}");
        let attempts = receiver.attempts();
        for attempt in &attempts {
            assert!(
                attempt.raw.len() <= max_bytes,
                "{encoding}: a {}-byte body over max_bytes = {max_bytes}",
                attempt.raw.len()
            );
        }
        let full = attempts.iter().filter(|a| a.ids().len() == 3).count();
        if max_bytes == 400 {
            assert!(full >= 10, "{encoding}: batches fill up to the limit");
        }
    }
}

#[tokio::test]
async fn a_batch_closes_at_its_timeout() {
    // Three events, then two more a second later.
    let sse = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 3), numbered(4, 5)]).pause(Duration::from_secs(1)),
        _ => Reply::status(204),
    })
    .await;
    let receiver = Receiver::start(|_| Answer::Ok).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[sinks.hook.batch]\nmax_events = 1000\ntimeout = \"300ms\"\n";
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), extra),
        Duration::from_secs(20),
    )
    .await;
    let batches: Vec<Vec<String>> = receiver.attempts().iter().map(Attempt::ids).collect();
    assert_eq!(batches, [range(1, 3), range(4, 5)]);
}

// ---------------------------------------------------------------------------
// Backpressure.

/// An SSE server that writes `events` events of `size` bytes of data, one
/// write each, and counts how many the socket took; later connections get 204.
async fn counting_sse_server(events: usize, size: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            if !std::mem::take(&mut first) {
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
                continue;
            }
            let counter = counter.clone();
            tokio::spawn(async move {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                socket.write_all(head.as_bytes()).await?;
                let data = "x".repeat(size);
                for n in 1..=events {
                    socket
                        .write_all(format!("id: {n}\ndata: {data}\n\n").as_bytes())
                        .await?;
                    counter.store(n, Ordering::SeqCst);
                }
                socket.shutdown().await
            });
        }
    });
    (addr, written)
}

#[tokio::test]
async fn a_down_receiver_stops_the_stream_reading_and_nothing_is_lost() {
    const EVENTS: usize = 4000;
    const SIZE: usize = 16 << 10;
    let (sse_addr, written) = counting_sse_server(EVENTS, SIZE).await;
    let down = Arc::new(AtomicBool::new(true));
    let receiver = Receiver::start({
        let down = down.clone();
        move |_| {
            if down.load(Ordering::SeqCst) {
                Answer::Status(503)
            } else {
                Answer::Ok
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "queue_size = 4\n[sinks.hook.batch]\nmax_events = 4\ntimeout = \"10ms\"\n";
    let config = config(
        dir.path(),
        &format!("http://{sse_addr}/"),
        &receiver.url(),
        extra,
    );
    let daemon = tokio::spawn(async move {
        supervisor::run(&config, Checkpoints::OnDisk, Shutdown::default()).await
    });

    // While the receiver answers 503 the stream reads until the queue, the
    // batch being retried and the socket buffers are full, then stops.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = written.load(Ordering::SeqCst);
    let stalled_at = loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = written.load(Ordering::SeqCst);
        if now == last && now > 0 {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the server never stopped writing ({now} events)"
        );
        last = now;
    };
    assert!(
        stalled_at < EVENTS / 2,
        "{stalled_at} of {EVENTS} events left the server while the receiver was down: the stream did not stop reading"
    );
    assert!(receiver.attempts().len() >= 3, "the sink keeps retrying");
    assert!(receiver.delivered().is_empty());

    down.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(60), daemon)
        .await
        .expect("the daemon drains once the receiver is back")
        .unwrap()
        .unwrap();
    assert_eq!(written.load(Ordering::SeqCst), EVENTS);
    assert_eq!(
        receiver.delivered(),
        range(1, EVENTS as u64),
        "everything arrives after the receiver recovers, in order"
    );
}

// ---------------------------------------------------------------------------
// Configuration and `check`.

const BASE: &str = r#"
data_dir = "/tmp/x"
[streams.s]
url = "http://127.0.0.1:1/"
"#;

fn sink_error(sink: &str) -> sse_relay::config::ConfigError {
    match parse(&format!("{BASE}{sink}")) {
        Ok(_) => panic!("should not validate:\n{sink}"),
        Err(e) => e,
    }
}

#[test]
fn webhook_keys_are_validated_with_located_errors() {
    // BASE takes lines 1-4, the sink's header and first two keys 5-7.
    let webhook = "[sinks.h]\ntype = \"webhook\"\ninputs = [\"*\"]\n";
    let with_url = format!("{webhook}url = \"https://h.example/in\"\n");
    let e = sink_error(&format!("{with_url}encoding = \"data\"\n"));
    assert_eq!(e.key.as_deref(), Some("encoding"));
    assert!(e.message.contains("\"data\""), "{e}");
    assert_eq!(e.position.map(|p| p.0), Some(9), "{e}");

    let e = sink_error(
        "[sinks.f]\ntype = \"file\"\ninputs = [\"*\"]\npath = \"/tmp/f\"\nencoding = \"ndjson\"\n",
    );
    assert_eq!(e.key.as_deref(), Some("encoding"));

    let e = sink_error("[sinks.f]\ntype = \"stdout\"\ninputs = [\"*\"]\nurl = \"http://x/\"\n");
    assert!(
        e.message
            .contains("only applies to sinks of type \"webhook\""),
        "{e}"
    );
    assert_eq!(e.key.as_deref(), Some("url"));
    assert_eq!(e.position.map(|p| p.0), Some(8), "{e}");

    let e = sink_error(webhook);
    assert!(e.message.contains("missing key `url`"), "{e}");

    let e = sink_error(&format!("{with_url}method = \"GET\"\n"));
    assert_eq!(e.key.as_deref(), Some("method"));
    let e = sink_error(&format!("{with_url}path = \"/x\"\n"));
    assert_eq!(e.key.as_deref(), Some("path"));
    let e = sink_error(&format!("{with_url}[sinks.h.batch]\nmax_events = 0\n"));
    assert_eq!(e.key.as_deref(), Some("max_events"));
    assert_eq!(e.position.map(|p| p.0), Some(10), "{e}");
    let e = sink_error(&format!("{with_url}[sinks.h.batch]\ntimeout = \"soon\"\n"));
    assert!(e.message.contains("invalid duration"), "{e}");
    assert_eq!(e.position.map(|p| p.0), Some(10), "{e}");
    let e = sink_error(&format!("{with_url}[sinks.h.batch]\nmax_event = 3\n"));
    assert!(e.help.unwrap_or_default().contains("max_events"));
    let e = sink_error(&format!("{with_url}compression = \"zstd\"\n"));
    assert_eq!(e.key.as_deref(), Some("compression"));
    let e = sink_error(&format!("{with_url}secret = \"${{NOT_SET_HERE}}\"\n"));
    assert!(e.message.contains("NOT_SET_HERE"), "{e}");
    let e = sink_error(&format!(
        "{with_url}secret = \"${{HOOK_SECRET}}\"\nsecret_file = \"/x\"\n"
    ));
    assert_eq!(e.key.as_deref(), Some("secret_file"));
    assert!(!e.to_string().contains("whsec"), "{e}");
    let e = sink_error(&format!(
        "{with_url}secret_file = \"/nonexistent/secret\"\n"
    ));
    assert!(e.message.contains("/nonexistent/secret"), "{e}");
    let e = sink_error(&format!("{with_url}timeout = \"0s\"\n"));
    assert_eq!(e.key.as_deref(), Some("timeout"));
}

#[test]
fn check_and_debug_output_never_show_secrets() {
    let source = format!(
        "{BASE}[sinks.h]
type = \"webhook\"
inputs = [\"*\"]
url = \"https://user:pw@h.example/in?token=abc\"
encoding = \"ndjson\"
headers = {{ Authorization = \"Bearer ${{TEST_TOKEN}}\" }}
secret = \"${{HOOK_SECRET}}\"
compression = \"gzip\"
tls_insecure = true
"
    );
    let config = parse(&source).unwrap_or_else(|e| panic!("{e}"));
    let summary = sse_relay::check::summary(Path::new("test.toml"), &config);
    let debug = format!("{config:?}");
    for shown in [&summary, &debug] {
        for secret in ["whsec-test-123", "t0ken-value"] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
    }
    for secret in ["pw", "abc"] {
        assert!(!summary.contains(secret), "{secret} shown in:\n{summary}");
    }
    assert!(
        summary.contains("webhook POST https://h.example/in"),
        "{summary}"
    );
    assert!(summary.contains("ndjson"), "{summary}");
    assert!(summary.contains("signed"), "{summary}");
    assert!(summary.contains("gzip"), "{summary}");
    assert!(summary.contains("headers: authorization"), "{summary}");
    assert!(summary.contains("tls_insecure"), "{summary}");
    assert!(summary.contains("no dead_letter_path"), "{summary}");
}

#[tokio::test]
async fn a_401_renews_the_webhook_token_and_sends_the_same_batch_again_never_dead_lettering_it() {
    let sse = sse_once(20).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hook-token");
    std::fs::write(&token, "hook-token-1\n").unwrap();
    let rotate = token.clone();
    // The receiver refuses the second request, as after a rotation; the
    // new token is on disk by the time the relay reads it again.
    let receiver = Receiver::start(move |n| match n {
        1 => {
            std::fs::write(&rotate, "hook-token-2\n").unwrap();
            Answer::Status(401)
        }
        _ => Answer::Ok,
    })
    .await;
    let dead = dir.path().join("dead.jsonl");
    let extra = format!(
        "dead_letter_path = \"{}\"\n[sinks.hook.batch]\nmax_events = 5\ntimeout = \"200ms\"\n\
         [sinks.hook.auth]\ntype = \"bearer_file\"\npath = \"{}\"\n",
        dead.display(),
        token.display()
    );
    support::run_to_end(
        &config(dir.path(), &sse.url("/"), &receiver.url(), &extra),
        Duration::from_secs(20),
    )
    .await;
    let attempts = receiver.attempts();
    let auth: Vec<Option<&str>> = attempts.iter().map(|a| a.header("authorization")).collect();
    assert_eq!(auth[0], Some("Bearer hook-token-1"), "{auth:?}");
    assert_eq!(auth[1], Some("Bearer hook-token-1"), "{auth:?}");
    assert!(
        auth[2..].iter().all(|a| *a == Some("Bearer hook-token-2")),
        "{auth:?}"
    );
    assert_eq!(attempts[1].answer, Answer::Status(401));
    assert_eq!(
        attempts[2].ids(),
        attempts[1].ids(),
        "the refused batch is sent again"
    );
    assert!(
        !dead.exists() || support::read_records(&dead).is_empty(),
        "a 401 is not a rejection"
    );
    assert_eq!(receiver.delivered(), range(1, 20));
}
