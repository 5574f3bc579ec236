//! A scriptable HTTP/1.1 server on loopback for integration tests.
//!
//! Written on raw sockets so a test controls every byte and every write: how the
//! body is split into writes, the delay between them, whether the connection
//! ends cleanly, is cut mid-event, or is held open in silence.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod relay;
pub mod tls;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The body, read by its `Content-Length` (empty without one).
    pub body: Vec<u8>,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`, one HTTP chunk per write.
    Chunked,
    /// No length: the body ends when the connection closes (HTTP/1.0 style).
    CloseDelimited,
}

/// What happens after the last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// End the body properly and close.
    Close,
    /// Close without ending a chunked body (a cut connection).
    Cut,
    /// Keep the connection open and silent for this long.
    Hold(Duration),
}

/// One response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub writes: Vec<Vec<u8>>,
    pub pause: Duration,
    pub framing: Framing,
    pub ending: Ending,
}

impl Reply {
    /// A 200 `text/event-stream` response writing `writes` one by one.
    pub fn events<I, B>(writes: I) -> Reply
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "text/event-stream".into())],
            writes: writes.into_iter().map(|w| w.as_ref().to_vec()).collect(),
            pause: Duration::ZERO,
            framing: Framing::Chunked,
            ending: Ending::Close,
        }
    }

    /// A response with `status` and no body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Length".into(), "0".into())],
            writes: Vec::new(),
            pause: Duration::ZERO,
            framing: Framing::Chunked,
            ending: Ending::Close,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn pause(mut self, pause: Duration) -> Reply {
        self.pause = pause;
        self
    }

    pub fn ending(mut self, ending: Ending) -> Reply {
        self.ending = ending;
        self
    }

    pub fn framing(mut self, framing: Framing) -> Reply {
        self.framing = framing;
        self
    }
}

type Handler = dyn Fn(usize, &Request) -> Reply + Send + Sync;

/// The server; it stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Serves `handler(n, request)` for the n-th request (0-based).
    pub async fn start(
        handler: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, handler, seen).await;
                });
            }
        });
        TestServer {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for_requests(&self, n: usize, within: Duration) -> Vec<Request> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.requests();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} requests, got {}: {seen:?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<Request>>>,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let Some(request) = read_request(&mut socket).await else {
        return Ok(());
    };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(request.clone());
        seen.len() - 1
    };
    let reply = handler(index, &request);

    let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let has_body = !reply.writes.is_empty() || reply.status == 200;
    let chunked = has_body && reply.framing == Framing::Chunked;
    if chunked {
        out.push_str("Transfer-Encoding: chunked\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    socket.write_all(out.as_bytes()).await?;
    socket.flush().await?;
    for write in &reply.writes {
        if !reply.pause.is_zero() {
            tokio::time::sleep(reply.pause).await;
        }
        if write.is_empty() {
            continue;
        }
        if chunked {
            let mut frame = format!("{:x}\r\n", write.len()).into_bytes();
            frame.extend_from_slice(write);
            frame.extend_from_slice(b"\r\n");
            socket.write_all(&frame).await?;
        } else {
            socket.write_all(write).await?;
        }
        socket.flush().await?;
    }
    match reply.ending {
        Ending::Close => {
            if chunked {
                socket.write_all(b"0\r\n\r\n").await?;
            }
        }
        Ending::Cut => {}
        Ending::Hold(time) => tokio::time::sleep(time).await,
    }
    socket.shutdown().await?;
    Ok(())
}

/// Numbered events `from..=to` as one SSE body: `id: n`, `data: event n`.
pub fn numbered(from: u64, to: u64) -> Vec<u8> {
    (from..=to)
        .map(|n| format!("id: {n}\ndata: event {n}\n\n"))
        .collect::<String>()
        .into_bytes()
}

/// Splits `body` into writes of the given sizes, cycling through them.
pub fn split_cycling(body: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = body;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (*size).clamp(1, rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// Reads JSON-lines records from a file, or none if it does not exist yet. A
/// final line without its `\n` is being written right now and is left out.
pub fn read_records(path: &std::path::Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record line {l:?}: {e}"))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until `path` holds at least `n` records.
pub async fn wait_for_records(
    path: &std::path::Path,
    n: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_records(path);
        if records.len() >= n {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} records in {}, got {}",
            path.display(),
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server of numbered events `1..=total` that resumes after the
/// `Last-Event-ID` it is sent, writing `batch` events per write with `pause`
/// between writes, and answers 204 once every event was served. With
/// `total == u64::MAX` it never ends. It counts the body bytes it managed to
/// write, so a test can see TCP backpressure.
pub struct NumberedServer {
    pub addr: SocketAddr,
    pub bytes_written: Arc<std::sync::atomic::AtomicU64>,
    pub connections: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl NumberedServer {
    pub async fn start(total: u64, batch: u64, pause: Duration) -> NumberedServer {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes_written = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (bytes, conns) = (bytes_written.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::Relaxed);
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let after: u64 = text
                        .lines()
                        .find_map(|l| l.strip_prefix("last-event-id:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if after >= total {
                        let _ = socket
                            .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut next = after + 1;
                    while next <= total {
                        let last = (next + batch - 1).min(total);
                        let body = numbered(next, last);
                        if socket.write_all(&body).await.is_err() {
                            return;
                        }
                        bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        next = last + 1;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    // Close-delimited body: closing ends it; the client comes back
                    // and is told 204.
                });
            }
        });
        NumberedServer {
            addr,
            bytes_written,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for NumberedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Raw connections, for fault injection (tests/faults.rs)
// ---------------------------------------------------------------------------

/// Reads one HTTP/1.x request head from `socket`; `None` if the peer closed or
/// failed first. Header names in lower case.
pub async fn read_request<S>(socket: &mut S) -> Option<Request>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    };
    let mut body = head.split_off(end);
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let method = request_line.split(' ').next().unwrap_or("GET").to_owned();
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    while body.len() < length {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    Some(Request {
        method,
        path,
        body,
        headers,
        at: Instant::now(),
    })
}

type RawHandler = dyn Fn(usize, Request, TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    + Send
    + Sync;

/// A server that reads each request head and then hands the raw socket to the
/// test: it may answer anything, drip bytes, never answer, or reset.
pub struct RawServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    /// Serves `handler(n, request, socket)` for the n-th request (0-based).
    pub async fn start<F, Fut>(handler: F) -> RawServer
    where
        F: Fn(usize, Request, TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<RawHandler> = Arc::new(move |n, request, socket| {
            Box::pin(handler(n, request, socket))
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        });
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = socket.set_nodelay(true);
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let index = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(request.clone());
                        seen.len() - 1
                    };
                    handler(index, request, socket).await;
                });
            }
        });
        RawServer {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The head of a 200 `text/event-stream` response with a close-delimited body.
pub const SSE_HEAD_CLOSE_DELIMITED: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

/// Writes `head`, then `body` close-delimited, then closes.
pub async fn write_and_close(mut socket: TcpStream, head: &[u8], body: &[u8]) {
    let _ = socket.write_all(head).await;
    let _ = socket.write_all(body).await;
    let _ = socket.shutdown().await;
}

/// Answers 204 No Content and closes.
pub async fn no_content(socket: TcpStream) {
    write_and_close(
        socket,
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
}

/// The open file descriptors and resident memory (KiB) of process `pid`, and its
/// peak resident memory (KiB, `VmHWM`), from /proc.
pub fn process_usage(pid: u32) -> Option<(usize, u64, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((fds, kib("VmRSS:")?, kib("VmHWM:")?))
}

/// Runs the daemon in process until every stream has stopped for good and the
/// sinks have drained, or panics after `within`.
pub async fn run_to_end(config: &sse_relay::config::Config, within: Duration) {
    use sse_relay::supervisor::{run, Checkpoints, Shutdown};
    tokio::time::timeout(
        within,
        run(config, Checkpoints::OnDisk, Shutdown::default()),
    )
    .await
    .expect("the daemon should drain and stop once every server answered 204")
    .expect("the daemon should run");
}

/// The `id` of each record, `"null"` where it has none.
pub fn ids(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("null").to_owned())
        .collect()
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET http://127.0.0.1:{port}{path}`.
pub async fn http_get(port: u16, path: &str) -> Result<String, String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .map_err(|e| e.to_string())?;
    response.text().await.map_err(|e| e.to_string())
}

/// As `Command::output()`, but kills the process and fails the test if it
/// runs past `within`: a regression fails fast with a message instead of
/// hanging the suite.
pub fn output_within(
    command: &mut std::process::Command,
    within: Duration,
) -> std::process::Output {
    use std::io::Read as _;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("{command:?} still ran after {within:?}; killed. stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits up to `within` for `child` to exit by itself; past that, kills it
/// and returns `None`, so the caller fails the test with its own context
/// instead of hanging.
pub async fn exit_within(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `sse-relay run --config CONFIG` with `envs` set, its stderr
/// appended to `log` and its stdout discarded. The environment a developer's
/// shell or a systemd session leaves (RUST_LOG, NOTIFY_SOCKET, WATCHDOG_USEC)
/// is removed, so the daemon behaves as the test says.
pub fn spawn_run(
    config: &std::path::Path,
    log: &std::path::Path,
    envs: &[(&str, &str)],
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"));
    command
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.spawn().unwrap()
}

/// Sends signal `name` (`TERM`, `HUP`, `KILL`, ...) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `Command::output()` with a deadline: see [`output_within`].
pub trait OutputWithin {
    /// Runs to the end and collects the output, failing the test (after
    /// killing the process) if that takes longer than `within`.
    fn output_within(&mut self, within: Duration) -> std::process::Output;
}

impl OutputWithin for std::process::Command {
    fn output_within(&mut self, within: Duration) -> std::process::Output {
        output_within(self, within)
    }
}
