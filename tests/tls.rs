//! `https://` streams through the lean client's TLS (`src/stream/wire/tls.rs`):
//! the real binary against rustls servers on loopback, with TLS records cut at
//! every size on the wire, a key update in the middle of a stream, and a
//! server that closes without `close_notify`; and what `http2 = true`
//! negotiates with a server offering HTTP/2 (hyper).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::relay::{log_line, Relay};
use support::tls::{server_config, server_config_with_fillers, TlsServer};
use support::{numbered, read_request, SSE_HEAD_CLOSE_DELIMITED};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WITHIN: Duration = Duration::from_secs(30);

const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";

/// Events 1 to 60; 20 and 40 carry 40,000 bytes of data each, so they span
/// three TLS records (a record holds at most 16 KiB).
fn mixed_events() -> (Vec<u8>, Vec<String>) {
    let mut body = Vec::new();
    let mut data = Vec::new();
    for id in 1..=60 {
        let text = if id % 20 == 0 {
            format!("{id}:{}", "x".repeat(40_000))
        } else {
            format!("event {id}")
        };
        body.extend_from_slice(format!("id: {id}\ndata: {text}\n\n").as_bytes());
        data.push(text);
    }
    (body, data)
}

/// A TCP relay to `target` that hands the server's bytes on in pieces of
/// 1 to 700 bytes (cycling), each its own write with a pause now and then, so
/// that TLS records and the handshake reach the client cut everywhere.
async fn splitting_forwarder(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                client.set_nodelay(true).unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
                    let _ = to_server.shutdown().await;
                });
                const SIZES: [usize; 9] = [1, 2, 3, 5, 8, 13, 64, 700, 5];
                let mut buffer = vec![0u8; 64 << 10];
                let mut turn = 0;
                loop {
                    let n = match from_server.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut rest = &buffer[..n];
                    while !rest.is_empty() {
                        let take = SIZES[turn % SIZES.len()].min(rest.len());
                        if to_client.write_all(&rest[..take]).await.is_err() {
                            return;
                        }
                        rest = &rest[take..];
                        turn += 1;
                        if turn % 8 == 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                let _ = to_client.shutdown().await;
            });
        }
    });
    addr
}

fn trusting(relay_dir: &std::path::Path, cert_pem: &str) -> String {
    let ca = relay_dir.join("ca.pem");
    std::fs::write(&ca, cert_pem).unwrap();
    format!("ca_file = \"{}\"\nmax_event_bytes = 1048576", ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_records_cut_anywhere_on_the_wire_give_the_same_events() {
    let (body, expected) = mixed_events();
    let server = TlsServer::start(move |n, _| {
        if n == 0 {
            let mut out = SSE_HEAD_CLOSE_DELIMITED.to_vec();
            out.extend_from_slice(&body);
            out
        } else {
            NO_CONTENT.to_vec()
        }
    })
    .await;
    let forwarder = splitting_forwarder(server.addr).await;
    let url = format!("https://{forwarder}/events");
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&url, &trusting(dir.path(), &server.cert_pem));
    let log = relay.wait_for_exit(WITHIN).await;

    let ids: Vec<String> = (1..=60).map(|i| i.to_string()).collect();
    assert_eq!(relay.ids(), ids, "{log}");
    let data: Vec<String> = relay
        .records()
        .iter()
        .map(|r| r["data"].as_str().unwrap().to_owned())
        .collect();
    assert!(data == expected, "every event's data arrives whole");
    assert_eq!(server.requests().len(), 2, "one stream, then the 204");
    log_line(&log, &["stream=s connected to https://127.0.0.1"]);
}

/// One TLS 1.3 connection at a time: `serve(n, tls)` answers the n-th.
async fn tls_server<F, Fut>(serve: F) -> (std::net::SocketAddr, String)
where
    F: Fn(usize, tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (config, cert_pem) = server_config();
    (tls_server_with(config, serve).await, cert_pem)
}

/// As [`tls_server`], with these TLS settings.
async fn tls_server_with<F, Fut>(
    config: Arc<rustls::ServerConfig>,
    serve: F,
) -> std::net::SocketAddr
where
    F: Fn(usize, tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(socket).await {
                    serve(n, tls).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_update_in_the_middle_of_a_stream_changes_nothing() {
    let (addr, cert_pem) = tls_server(|n, mut tls| async move {
        let _ = read_request(&mut tls).await;
        if n > 0 {
            let _ = tls.write_all(NO_CONTENT).await;
            let _ = tls.shutdown().await;
            return;
        }
        let mut out = SSE_HEAD_CLOSE_DELIMITED.to_vec();
        out.extend(numbered(1, 3));
        tls.write_all(&out).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // New keys for what the server sends from here on (TLS 1.3 KeyUpdate).
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        tls.write_all(&numbered(4, 6)).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tls.shutdown().await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        &format!("https://{addr}/events"),
        &trusting(dir.path(), &cert_pem),
    );
    let log = relay.wait_for_exit(WITHIN).await;
    assert_eq!(relay.ids(), ["1", "2", "3", "4", "5", "6"], "{log}");
    assert!(!log.contains("error"), "{log}");
}

/// Serves events 1 and 2, then ends that connection with `cut` (handed the
/// TCP socket under TLS); then event 3 and a clean close; then 204. A relay
/// of it must show 1, 2, 3 within `within`, resumed with `Last-Event-ID 2`.
/// Returns the log.
async fn cut_then_resumed(cut: fn(TcpStream), within: Duration) -> String {
    let (addr, cert_pem) = tls_server(move |n, mut tls| async move {
        let _ = read_request(&mut tls).await;
        match n {
            0 => {
                let mut out = SSE_HEAD_CLOSE_DELIMITED.to_vec();
                out.extend(numbered(1, 2));
                tls.write_all(&out).await.unwrap();
                tls.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                cut(tls.into_inner().0);
            }
            1 => {
                let mut out = SSE_HEAD_CLOSE_DELIMITED.to_vec();
                out.extend(numbered(3, 3));
                tls.write_all(&out).await.unwrap();
                let _ = tls.shutdown().await;
            }
            _ => {
                let _ = tls.write_all(NO_CONTENT).await;
                let _ = tls.shutdown().await;
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        &format!("https://{addr}/events"),
        &format!(
            "{}\nbackoff_initial = \"50ms\"",
            trusting(dir.path(), &cert_pem)
        ),
    );
    let log = relay.wait_for_exit(within).await;
    assert_eq!(relay.ids(), ["1", "2", "3"], "{log}");
    log_line(&log, &["stream=s reconnecting in", "Last-Event-ID 2"]);
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_without_close_notify_is_reported_and_resumed() {
    // Closing the TCP connection under TLS, as an attacker cutting the body
    // short would.
    let log = cut_then_resumed(drop, WITHIN).await;
    log_line(&log, &["after error reading the body", "close_notify"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systems_trusted_roots_are_trusted_without_a_ca_file() {
    let server = TlsServer::start(|n, _| match n {
        0 => {
            let mut out = SSE_HEAD_CLOSE_DELIMITED.to_vec();
            out.extend(numbered(1, 2));
            out
        }
        _ => NO_CONTENT.to_vec(),
    })
    .await;
    // The system's store, as the platform's TLS libraries read it: here a
    // file that holds only the test server's certificate.
    let roots = tempfile::tempdir().unwrap();
    let bundle = roots.path().join("system-roots.pem");
    std::fs::write(&bundle, &server.cert_pem).unwrap();
    let mut relay = Relay::start_with_env(
        &server.url("/events"),
        "",
        &["--log-level", "debug"],
        &[("SSL_CERT_FILE", bundle.to_str().unwrap())],
    );
    let log = relay.wait_for_exit(Duration::from_secs(10)).await;
    assert_eq!(relay.ids(), ["1", "2"], "{log}");
    log_line(&log, &["GET https://127.0.0.1", "built-in HTTP/1.1 client"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_hangs_up_during_the_handshake_is_reported_as_such() {
    // Reads the ClientHello, then closes the TCP connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut hello = [0u8; 512];
            let _ = socket.read(&mut hello).await;
        }
    });
    let mut relay = Relay::start(
        &format!("https://{addr}/events"),
        "backoff_initial = \"50ms\"",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !relay.log_text().contains("reconnecting in") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = relay.stop().await;
    log_line(
        &log,
        &[
            "connect error",
            "closed the connection during the TLS handshake",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_under_tls_is_reported_and_resumed() {
    // A reset (RST), not a close.
    let log = cut_then_resumed(
        |socket| {
            socket2::SockRef::from(&socket)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        },
        Duration::from_secs(10),
    )
    .await;
    log_line(&log, &["after error reading the body", "reset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_message_of_many_records_cut_anywhere_is_read_in_bounded_memory() {
    let (config, cert_pem, chain_bytes) = server_config_with_fillers(140);
    assert!(
        (48_000..60_000).contains(&chain_bytes),
        "a chain of {chain_bytes} bytes: over three records, under rustls' 64 KiB"
    );
    let addr = tls_server_with(config, |_, mut tls| async move {
        let _ = read_request(&mut tls).await;
        let mut out = SSE_HEAD_CLOSE_DELIMITED.to_vec();
        out.extend(numbered(1, 3));
        tls.write_all(&out).await.unwrap();
        tls.flush().await.unwrap();
        // Stay connected while the relay's memory is looked at.
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    // The handshake reaches the relay in pieces of 1 to 700 bytes: the
    // certificate message is held across many reads before it is whole.
    let forwarder = splitting_forwarder(addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        &format!("https://{forwarder}/events"),
        &trusting(dir.path(), &cert_pem),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while relay.records().len() < 3 && std::time::Instant::now() < deadline {
        relay.assert_running();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, _, peak_kib) = support::process_usage(relay.pid()).unwrap();
    let log = relay.stop().await;
    assert_eq!(relay.ids(), ["1", "2", "3"], "{log}");
    assert!(peak_kib < 100 << 10, "peak RSS {peak_kib} KiB");
}

/// An HTTPS server offering HTTP/2 and HTTP/1.1 by ALPN (hyper), as most
/// real endpoints do. The first request gets two events, every later one a
/// 204. It keeps each request's HTTP version and `Last-Event-ID`.
async fn h2_server() -> (
    std::net::SocketAddr,
    String,
    Arc<std::sync::Mutex<Vec<Seen>>>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;

    let (config, cert_pem) = server_config();
    let mut config = Arc::try_unwrap(config).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let mut log = log.lock().unwrap();
                    log.push(Seen {
                        version: request.version(),
                        alpn: alpn.clone(),
                        last_event_id: request
                            .headers()
                            .get("last-event-id")
                            .map(|v| v.to_str().unwrap().to_owned()),
                    });
                    let response = if log.len() == 1 {
                        hyper::Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(Full::new(Bytes::from_static(
                                b"id: 1\ndata: one\n\nid: 2\ndata: two\n\n",
                            )))
                    } else {
                        hyper::Response::builder()
                            .status(204)
                            .body(Full::new(Bytes::new()))
                    };
                    std::future::ready(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, cert_pem, seen)
}

/// One request as [`h2_server`] saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    version: hyper::Version,
    alpn: Option<Vec<u8>>,
    last_event_id: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_true_speaks_http2_to_a_server_offering_it_and_streams_speak_http1_by_default() {
    for (setting, version, alpn) in [
        ("http2 = true", hyper::Version::HTTP_2, &b"h2"[..]),
        ("", hyper::Version::HTTP_11, &b"http/1.1"[..]),
    ] {
        let (addr, cert_pem, seen) = h2_server().await;
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("{}\n{setting}", trusting(dir.path(), &cert_pem));
        let mut relay = Relay::start_with_env(
            &format!("https://{addr}/events"),
            &extra,
            &["--log-level", "debug"],
            &[],
        );
        let log = relay.wait_for_exit(WITHIN).await;
        assert_eq!(relay.ids(), ["1", "2"], "{setting:?}: {log}");
        let seen = seen.lock().unwrap().clone();
        let resumed = Seen {
            version,
            alpn: Some(alpn.to_vec()),
            last_event_id: Some("2".to_owned()),
        };
        assert_eq!(
            seen,
            [
                Seen {
                    last_event_id: None,
                    ..resumed.clone()
                },
                resumed
            ],
            "{setting:?}: the stream, then the 204 it resumes into"
        );
        let client = if setting.is_empty() {
            "built-in HTTP/1.1 client"
        } else {
            "reqwest"
        };
        log_line(&log, &["GET https://127.0.0.1", client]);
    }
}
