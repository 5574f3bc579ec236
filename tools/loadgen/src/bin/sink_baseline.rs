//! `sink-baseline`: the raw clients `bench/run.sh sinks` compares the relay's
//! webhook and NATS sinks with, sending the same records (the NDJSON lines a
//! file sink wrote for the same corpus).
//!
//! * `webhook URL FILE`: the lines in batches as the webhook sink makes them by
//!   default (500 records or 1 MiB, NDJSON), POSTed one after another through
//!   one keep-alive reqwest client. The receiver times it.
//! * `nats-reset SERVER`: (re)creates the JetStream stream `BENCH` (subjects
//!   `bench.>`, memory storage), so every run starts empty.
//! * `nats SERVER FILE`: publishes each line to `bench.bench` with the headers
//!   the NATS sink sets (`Nats-Msg-Id`, `Nats-Expected-Stream` and three
//!   informational ones), `--max-in-flight` acks outstanding (the sink's
//!   default, 256), awaited in order.
//! * `nats-report SERVER`: `stored messages=N seconds=S`, S from the stream's
//!   first message to its last, by the server's clock (the same measure for
//!   the relay and for `nats`).

use std::collections::VecDeque;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Webhook {
        url: String,
        file: std::path::PathBuf,
        #[arg(long, default_value_t = 500)]
        max_events: usize,
        #[arg(long, default_value_t = 1 << 20)]
        max_bytes: usize,
    },
    NatsReset {
        server: String,
    },
    Nats {
        server: String,
        file: std::path::PathBuf,
        #[arg(long, default_value_t = 256)]
        max_in_flight: usize,
    },
    NatsReport {
        server: String,
    },
}

const STREAM: &str = "BENCH";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match Args::parse().command {
        Command::Webhook {
            url,
            file,
            max_events,
            max_bytes,
        } => webhook(&url, &file, max_events, max_bytes).await,
        Command::NatsReset { server } => {
            let context = async_nats::jetstream::new(connect(&server).await);
            let _ = context.delete_stream(STREAM).await;
            context
                .create_stream(async_nats::jetstream::stream::Config {
                    name: STREAM.to_owned(),
                    subjects: vec!["bench.>".to_owned()],
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await
                .expect("create the stream");
        }
        Command::Nats {
            server,
            file,
            max_in_flight,
        } => nats(&server, &file, max_in_flight).await,
        Command::NatsReport { server } => {
            let context = async_nats::jetstream::new(connect(&server).await);
            let mut stream = context.get_stream(STREAM).await.expect("the stream");
            let state = stream.info().await.expect("stream info").state.clone();
            let seconds = (state.last_timestamp.unix_timestamp_nanos()
                - state.first_timestamp.unix_timestamp_nanos()) as f64
                / 1e9;
            println!("stored messages={} seconds={seconds:.6}", state.messages);
        }
    }
}

async fn connect(server: &str) -> async_nats::Client {
    async_nats::connect(server).await.expect("connect to NATS")
}

fn lines(file: &std::path::Path) -> Vec<bytes::Bytes> {
    let text = std::fs::read(file).expect("the records file");
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(bytes::Bytes::copy_from_slice)
        .collect()
}

async fn webhook(url: &str, file: &std::path::Path, max_events: usize, max_bytes: usize) {
    // Bodies built before the clock starts: an upper bound for any client.
    let mut bodies = Vec::new();
    let mut body = Vec::new();
    let mut count = 0;
    for line in lines(file) {
        if count == max_events || (count > 0 && body.len() + line.len() + 1 > max_bytes) {
            bodies.push(std::mem::take(&mut body));
            count = 0;
        }
        body.extend_from_slice(&line);
        body.push(b'\n');
        count += 1;
    }
    if count > 0 {
        bodies.push(body);
    }
    let client = reqwest::Client::new();
    for body in bodies {
        let answer = client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .expect("POST");
        assert!(answer.status().is_success(), "{}", answer.status());
    }
}

async fn nats(server: &str, file: &std::path::Path, max_in_flight: usize) {
    let records = lines(file);
    let context = async_nats::jetstream::new(connect(server).await);
    let started = std::time::Instant::now();
    let mut pending = VecDeque::with_capacity(max_in_flight);
    for (i, record) in records.iter().enumerate() {
        if pending.len() >= max_in_flight {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                pending.pop_front().unwrap();
            ack.await.expect("ack");
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("bench:{}", i + 1).as_str());
        headers.insert("Nats-Expected-Stream", STREAM);
        headers.insert("SSE-Stream", "bench");
        headers.insert("SSE-Event", "message");
        headers.insert("SSE-Id", format!("{}", i + 1).as_str());
        let ack = context
            .publish_with_headers("bench.bench", headers, record.clone())
            .await
            .expect("publish");
        pending.push_back(ack);
    }
    while let Some(ack) = pending.pop_front() {
        ack.await.expect("ack");
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "published n={} seconds={seconds:.6} events_per_s={:.0}",
        records.len(),
        records.len() as f64 / seconds
    );
}
