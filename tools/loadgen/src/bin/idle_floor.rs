//! `idle-floor ADDR STREAMS`: the least an idle-streams daemon can cost on
//! this machine, for `bench/run.sh scale` to put beside the relay's idle CPU.
//!
//! It opens STREAMS plain HTTP/1.1 requests to loadgen's `/idle/` streams on
//! the runtime the relay uses (tokio's multi-thread scheduler, its default
//! workers), and then only waits for each socket to be readable and reads
//! what came: no parsing, timers, metrics or checkpoints. Each heartbeat still
//! wakes a thread, so its CPU is what the wake-ups alone cost. Prints
//! `connected N` once every request is sent, and runs until killed.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(streams)) = (args.next(), args.next()) else {
        eprintln!("usage: idle-floor ADDR STREAMS");
        std::process::exit(2);
    };
    let streams: usize = streams.parse().expect("STREAMS is a number");
    let mut readers = Vec::with_capacity(streams);
    for i in 0..streams {
        let mut socket = TcpStream::connect(&addr).await.expect("connect");
        let request = format!(
            "GET /idle/floor{i} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await.expect("send");
        readers.push(tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            loop {
                if socket.readable().await.is_err() {
                    return;
                }
                match socket.try_read(&mut buffer) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }));
    }
    println!("connected {streams}");
    for reader in readers {
        let _ = reader.await;
    }
}
