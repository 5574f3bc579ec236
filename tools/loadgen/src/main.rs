//! `loadgen`: an SSE server on loopback for `bench/run.sh`.
//!
//! It speaks just enough HTTP/1.1 (one request per connection, chunked bodies) to
//! be fast and predictable, so what is measured is the client, not the server.
//!
//! * `GET /corpus/{small|large|multiline|huge}`: the corpus of issue 7 (the bytes
//!   `benches/parser.rs` parses), pre-framed in `--chunk`-byte HTTP chunks and
//!   written as fast as the socket takes them; then the response ends. With
//!   `--once`, a second request for the same corpus gets 204 (an SSE client that
//!   honours 204 stops, so a relay run ends by itself), and once every corpus
//!   has been refused so, loadgen exits.
//! * `GET /idle/{key}`: an idle stream for the scale test: one event
//!   `id: {key}-{generation}` then a comment every `--heartbeat` (each stream at
//!   its own phase). With `--drop-after`, the server closes it after that long
//!   (each stream jittered). A request carrying `Last-Event-ID: {key}-{generation-1}`
//!   is a correct resume after a server restart (start the next server with
//!   `--generation` one higher on the same port).
//!
//! * `GET /paced`: `--paced-rate` events a second for `--paced-secs`, each
//!   carrying the time it was written (`data: {"sent_us":<unix µs>}`), then the
//!   response ends (a second request gets 204). With `--tail FILE`, a thread
//!   follows the relay's output file, polling every 50 µs, and when every event
//!   has appeared prints `latency n=.. p50_us=.. p99_us=.. max_us=..` (server
//!   write to record in the file, as seen by the poll) and exits.
//!
//! With `--tls-dir DIR`, it serves HTTPS instead: TLS 1.3 only, with the
//! certificate and key in `DIR/cert.pem` and `DIR/key.pem`, made there (ECDSA
//! P-256, for 127.0.0.1) if absent. The next generation on the same DIR keeps
//! the certificate the client trusts through `ca_file = "DIR/cert.pem"`.
//!
//! Every request is logged to `--log` as `<ms since start> <path> <Last-Event-ID or ->`.
//! It stops by itself after `--exit-after` (and on SIGTERM/SIGINT).
//! Only loopback addresses are accepted for `--addr`.

#[allow(dead_code)] // the benches use the rest of it
mod corpus;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

#[derive(Parser, Clone)]
struct Args {
    /// Where to listen (loopback only); port 0 picks one. Prints `listening ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Corpora to generate and serve (comma-separated).
    #[arg(long, default_value = "small,large,multiline")]
    corpora: String,
    /// HTTP chunk size of corpus bodies, in bytes.
    #[arg(long, default_value_t = 16 << 10)]
    chunk: usize,
    /// Serve each corpus once; later requests for it get 204.
    #[arg(long)]
    once: bool,
    /// Seconds between heartbeat comments on idle streams.
    #[arg(long, default_value_t = 15.0)]
    heartbeat: f64,
    /// Close each idle stream after about this many seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    drop_after: f64,
    /// This server's generation; ids are `{key}-{generation}`.
    #[arg(long, default_value_t = 1)]
    generation: u64,
    /// Request log.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
    /// Events a second on `/paced`.
    #[arg(long, default_value_t = 1000)]
    paced_rate: u64,
    /// How long `/paced` lasts, in seconds.
    #[arg(long, default_value_t = 10)]
    paced_secs: u64,
    /// The relay's output file to follow for `/paced` latencies.
    #[arg(long)]
    tail: Option<std::path::PathBuf>,
    /// Stop after this many seconds whatever happens.
    #[arg(long, default_value_t = 600.0)]
    exit_after: f64,
    /// Serve HTTPS with DIR/cert.pem and DIR/key.pem (made if absent).
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
}

/// TLS 1.3 with the certificate in `dir` (made there first if absent: ECDSA
/// P-256, for 127.0.0.1).
fn tls_acceptor(dir: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert_path.exists() {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("a certificate");
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).expect("write the key");
        std::fs::write(&cert_path, certified.cert.pem()).expect("write the certificate");
    }
    let cert = rustls::pki_types::CertificateDer::from_pem_file(&cert_path).expect("cert.pem");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key_path).expect("key.pem");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("the certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

struct Server {
    args: Args,
    start: Instant,
    /// Pre-framed corpus bodies by name, and how often each was served.
    corpora: HashMap<String, (Bytes, Mutex<u64>)>,
    /// How often `/paced` was served.
    paced_served: Mutex<u64>,
    log: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
    /// Notified (by the request that got the last 204 of `--once`) when
    /// every corpus has been served and refused: `serve` waits on it to end.
    finished: tokio::sync::Notify,
}

fn main() {
    let args = Args::parse();
    assert!(
        args.addr.ip().is_loopback(),
        "loadgen serves on loopback only"
    );
    let mut corpora = HashMap::new();
    for name in args.corpora.split(',').filter(|n| !n.is_empty()) {
        let corpus = corpus::by_name(name).unwrap_or_else(|| panic!("unknown corpus {name}"));
        corpora.insert(
            name.to_owned(),
            (frame(&corpus.body, args.chunk), Mutex::new(0)),
        );
    }
    let log = args
        .log
        .as_ref()
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("log file")));
    let server = Arc::new(Server {
        start: Instant::now(),
        corpora,
        paced_served: Mutex::new(0),
        log: Mutex::new(log),
        finished: tokio::sync::Notify::new(),
        args,
    });
    // Two worker threads at most: the machine it is made for has two cores, and
    // the client under test needs them too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(path) = server.args.tail.clone() {
        let expected = server.args.paced_rate * server.args.paced_secs;
        let limit = Duration::from_secs_f64(server.args.exit_after);
        std::thread::spawn(move || tail(&path, expected, limit));
    }
    rt.block_on(serve(server.clone()));
    if let Some(log) = server.log.lock().unwrap().as_mut() {
        let _ = log.flush();
    }
    // Idle connections may still be open: exit without waiting for them.
    std::process::exit(0);
}

/// `body` as HTTP/1.1 chunked transfer coding, `size` bytes a chunk, with the
/// terminating zero chunk.
fn frame(body: &[u8], size: usize) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + body.len() / size * 12 + 16);
    for piece in body.chunks(size) {
        write!(out, "{:x}\r\n", piece.len()).unwrap();
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    Bytes::from(out)
}

async fn serve(server: Arc<Server>) {
    // Before "listening": the certificate file is there once a client is told to connect.
    let tls = server.args.tls_dir.as_deref().map(tls_acceptor);
    let listener = TcpListener::bind(server.args.addr).await.expect("bind");
    println!("listening {}", listener.local_addr().unwrap());
    let _ = std::io::stdout().flush();
    let deadline = tokio::time::sleep(Duration::from_secs_f64(server.args.exit_after));
    tokio::pin!(deadline);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = server.finished.notified() => break,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = flush.tick() => {
                if let Some(log) = server.log.lock().unwrap().as_mut() {
                    let _ = log.flush();
                }
            }
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                let _ = socket.set_nodelay(true);
                let server = server.clone();
                match tls.clone() {
                    None => { tokio::spawn(handle(server, socket)); }
                    Some(acceptor) => {
                        tokio::spawn(async move {
                            if let Ok(socket) = acceptor.accept(socket).await {
                                handle(server, socket).await;
                            }
                        });
                    }
                }
            }
        }
    }
}

/// The request line's path and the `Last-Event-ID` header, from the request head.
fn parse_head(head: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (_method, path) = (request.next()?, request.next()?);
    let last_id = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("last-event-id")
            .then(|| value.trim().to_owned())
    });
    Some((path.to_owned(), last_id))
}

/// Writes `bytes` and pushes them out (through TLS too).
async fn send<S: AsyncWrite + Unpin>(socket: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    socket.write_all(bytes).await?;
    socket.flush().await
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(server: Arc<Server>, mut socket: S) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 << 10 {
            return;
        }
    }
    let Some((path, last_id)) = parse_head(&head) else {
        return;
    };
    if let Some(log) = server.log.lock().unwrap().as_mut() {
        let _ = writeln!(
            log,
            "{:.3} {path} {}",
            server.start.elapsed().as_secs_f64() * 1000.0,
            last_id.as_deref().unwrap_or("-")
        );
    }
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
    if let Some(name) = path.strip_prefix("/corpus/") {
        let Some((body, served)) = server.corpora.get(name) else {
            let _ = send(
                &mut socket,
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
            return;
        };
        let first = {
            let mut served = served.lock().unwrap();
            *served += 1;
            *served == 1
        };
        if server.args.once && !first {
            let _ = send(&mut socket, b"HTTP/1.1 204 No Content\r\n\r\n").await;
            let all_refused = server
                .corpora
                .values()
                .all(|(_, served)| *served.lock().unwrap() >= 2);
            if all_refused {
                // A stored permit: `serve` may be between waits.
                server.finished.notify_one();
            }
            return;
        }
        if send(&mut socket, OK).await.is_ok() {
            let _ = send(&mut socket, body).await;
        }
        let _ = socket.shutdown().await;
    } else if path == "/paced" {
        let first = {
            let mut served = server.paced_served.lock().unwrap();
            *served += 1;
            *served == 1
        };
        if !first {
            let _ = send(&mut socket, b"HTTP/1.1 204 No Content\r\n\r\n").await;
            return;
        }
        if send(&mut socket, OK).await.is_err() {
            return;
        }
        let rate = server.args.paced_rate.max(1);
        let start = tokio::time::Instant::now();
        for i in 0..rate * server.args.paced_secs {
            tokio::time::sleep_until(start + Duration::from_micros(i * 1_000_000 / rate)).await;
            let event = format!("id: {i}\ndata: {{\"sent_us\":{}}}\n\n", unix_micros());
            if send(&mut socket, &chunk(event.as_bytes())).await.is_err() {
                return;
            }
        }
        let _ = send(&mut socket, b"0\r\n\r\n").await;
        let _ = socket.shutdown().await;
    } else if let Some(key) = path.strip_prefix("/idle/") {
        idle(&server, socket, key, OK).await;
    } else {
        let _ = send(
            &mut socket,
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
    }
}

/// A cheap per-key hash for phases and jitter (FNV-1a).
fn hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn chunk(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    mut socket: S,
    key: &str,
    ok: &[u8],
) {
    let args = &server.args;
    let event = format!("id: {key}-{}\ndata: hello {key}\n\n", args.generation);
    if send(&mut socket, ok).await.is_err()
        || send(&mut socket, &chunk(event.as_bytes())).await.is_err()
    {
        return;
    }
    let h = hash(key);
    // Each stream's heartbeats at its own phase, as independent servers would be.
    let phase = Duration::from_secs_f64(args.heartbeat * (h % 1000) as f64 / 1000.0);
    let mut beat = tokio::time::interval_at(
        tokio::time::Instant::now() + phase,
        Duration::from_secs_f64(args.heartbeat),
    );
    let drop_at = (args.drop_after > 0.0).then(|| {
        let jitter = 0.5 + ((h >> 20) % 1000) as f64 / 1000.0;
        tokio::time::Instant::now() + Duration::from_secs_f64(args.drop_after * jitter)
    });
    let dropped = async {
        match drop_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(dropped);
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if send(&mut socket, &chunk(b":\n")).await.is_err() {
                    return;
                }
            }
            // The client closed the connection.
            read = socket.read(&mut scratch) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            _ = &mut dropped => return,
        }
    }
}

fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Follows `path` (created later by the relay) until `expected` records with a
/// `sent_us` stamp have appeared or `limit` has passed; prints their latencies.
fn tail(path: &std::path::Path, expected: u64, limit: Duration) {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    let mut file = loop {
        if let Ok(f) = std::fs::File::open(path) {
            break f;
        }
        if Instant::now() > deadline {
            println!("latency n=0 (no output file)");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut latencies = Vec::with_capacity(expected as usize);
    const KEY: &[u8] = br#"sent_us\":"#;
    while (latencies.len() as u64) < expected && Instant::now() < deadline {
        let n = file.read(&mut buf).unwrap_or(0);
        if n == 0 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let seen = unix_micros();
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Some(at) = line.windows(KEY.len()).position(|w| w == KEY) else {
                continue;
            };
            let digits = &line[at + KEY.len()..];
            let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if let Ok(sent) = std::str::from_utf8(&digits[..len])
                .unwrap_or("")
                .parse::<u64>()
            {
                latencies.push(seen.saturating_sub(sent));
            }
        }
    }
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "latency n={} p50_us={} p99_us={} max_us={}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    let _ = std::io::stdout().flush();
    std::process::exit(if latencies.len() as u64 == expected {
        0
    } else {
        1
    });
}
