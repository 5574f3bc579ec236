//! LaunchDarkly's `eventsource-client` (the peer client of `bench/run.sh`): reads
//! one URL over loopback and counts events until it has `--events` of them, then
//! prints `events=N seconds=S`. Reconnects are off: the run is one body.

use std::time::Instant;

use clap::Parser;
use eventsource_client::{Client, ClientBuilder, ReconnectOptionsBuilder, SSE};
use futures::StreamExt;
use launchdarkly_sdk_transport::HyperTransport;

#[derive(Parser)]
struct Args {
    url: String,
    /// Stop after this many events.
    #[arg(long)]
    events: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let transport = HyperTransport::builder()
        .disable_proxy()
        .build_http()
        .expect("hyper transport");
    let client = ClientBuilder::for_url(&args.url)
        .expect("url")
        .reconnect(ReconnectOptionsBuilder::new(false).build())
        .build_with_transport(transport);
    let start = Instant::now();
    let mut stream = client.stream();
    let mut events = 0u64;
    let mut data_bytes = 0u64;
    while let Some(item) = stream.next().await {
        match item {
            Ok(SSE::Event(event)) => {
                events += 1;
                data_bytes += event.data.len() as u64;
                if events == args.events {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("ld-client: {e:?}");
                break;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!("events={events} data_bytes={data_bytes} seconds={seconds:.6}");
    if events != args.events {
        std::process::exit(1);
    }
}
