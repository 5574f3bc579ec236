//! `receiver`: a fast webhook receiver for `bench/run.sh sinks`.
//!
//! HTTP/1.1 with keep-alive and `Content-Length` bodies (what the webhook sink
//! and the baseline client send); each body is NDJSON, one record a line. Every
//! request gets `200 OK` at once. When `--expect` records have arrived it
//! prints `received records=N requests=R seconds=S` (from the first request's
//! arrival to the last record's) and exits. Loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// Where to listen (loopback only); prints `listening ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Records to wait for.
    #[arg(long)]
    expect: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    exit_after: f64,
}

struct Counts {
    expect: u64,
    records: AtomicU64,
    requests: AtomicU64,
    first: OnceLock<Instant>,
}

fn main() {
    let args = Args::parse();
    assert!(args.addr.ip().is_loopback(), "loopback only");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await.expect("bind");
        println!("listening {}", listener.local_addr().unwrap());
        let counts = Arc::new(Counts {
            expect: args.expect,
            records: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            first: OnceLock::new(),
        });
        let deadline = tokio::time::sleep(Duration::from_secs_f64(args.exit_after));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    println!("received records={} (gave up)", counts.records.load(Ordering::SeqCst));
                    std::process::exit(1);
                }
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { continue };
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(serve(socket, counts.clone()));
                }
            }
        }
    });
}

/// The `Content-Length` of a request head.
fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

async fn serve(mut socket: TcpStream, counts: Arc<Counts>) {
    let mut buffer: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        // The head.
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        counts.first.get_or_init(Instant::now);
        let length = content_length(&buffer[..head_end]).unwrap_or(0);
        while buffer.len() < head_end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body = &buffer[head_end..head_end + length];
        let lines = memchr_count(body);
        buffer.drain(..head_end + length);
        if socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let requests = counts.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let records = counts.records.fetch_add(lines, Ordering::SeqCst) + lines;
        if records >= counts.expect {
            let seconds = counts
                .first
                .get()
                .map_or(0.0, |t| t.elapsed().as_secs_f64());
            println!("received records={records} requests={requests} seconds={seconds:.6}");
            std::process::exit(0);
        }
    }
}

fn memchr_count(body: &[u8]) -> u64 {
    body.iter().filter(|&&b| b == b'\n').count() as u64
}
