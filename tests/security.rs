//! Trust at the edges, against the real binary: redirects never carry
//! credentials where they must not go (both clients, real TLS), compressed
//! bodies cost bounded memory, the relay never destroys bytes it did not
//! write, the files it creates are private, and secrets reach no output.

mod support;

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::relay::{assert_no_panic, log_line, Relay};
use support::tls::{redirect, TlsServer};
use support::{numbered, write_and_close, RawServer, Reply, TestServer};

const WITHIN: Duration = Duration::from_secs(20);
const SECRET: &str = "k3y-0f-the-kingd0m";
const PASSWORD: &str = "pa55w0rd-in-url";

/// Events 1 and 2 then 204, as a raw HTTP/1.1 answer.
fn events_then_close() -> Vec<u8> {
    let mut out = support::SSE_HEAD_CLOSE_DELIMITED.to_vec();
    out.extend(numbered(1, 2));
    out
}

fn no_content() -> Vec<u8> {
    b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec()
}

/// The keys of a stream that sends a credential header and trusts `tls`.
fn credentials_and_ca(relay_dir: &std::path::Path, tls: &TlsServer) -> String {
    let ca = relay_dir.join("ca.pem");
    std::fs::write(&ca, &tls.cert_pem).unwrap();
    format!(
        "ca_file = \"{}\"\nheaders = {{ X-Api-Key = \"{SECRET}\", Authorization = \"Bearer {SECRET}\" }}",
        ca.display()
    )
}

fn carries_credentials(request: &support::Request) -> bool {
    request.header("x-api-key").is_some() || request.header("authorization").is_some()
}

// ---------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_https_to_http_redirect_is_refused_by_default_with_both_urls_and_backoff() {
    let plain = TestServer::start(|_, _| Reply::events([numbered(1, 2)])).await;
    let to = plain.url("/plain?token=hidden");
    let tls = TlsServer::start(move |_, _| redirect(302, &to)).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}\nbackoff_initial = \"300ms\"\nbackoff_max = \"300ms\"",
        credentials_and_ca(dir.path(), &tls)
    );
    let mut relay = Relay::start(&tls.url("/events"), &extra);
    let deadline = Instant::now() + WITHIN;
    while tls.requests().len() < 3 {
        relay.assert_running();
        assert!(Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = relay.stop().await;
    assert!(plain.requests().is_empty(), "nothing went over plain HTTP");
    let line = log_line(&log, &["refused a redirect from", "(attempt 1"]);
    assert!(
        line.contains(&tls.url("/events")) && line.contains(&plain.url("/plain")),
        "both URLs named: {line}"
    );
    assert!(line.contains("allow_insecure_redirects = true"), "{line}");
    assert!(
        line.contains("token=REDACTED") && !line.contains("hidden"),
        "{line}"
    );
    assert!(
        line.starts_with(|_| true) && line.contains("WARN"),
        "{line}"
    );
    // Backoff applies between attempts.
    let requests = tls.requests();
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(250), "waited {gap:?}");
    assert!(!log.contains(SECRET));
}

#[tokio::test]
async fn an_allowed_https_to_http_redirect_carries_no_credentials() {
    let plain = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 2)]),
        _ => Reply::status(204),
    })
    .await;
    let to = plain.url("/plain");
    let tls = TlsServer::start(move |_, _| redirect(307, &to)).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}\nallow_insecure_redirects = true",
        credentials_and_ca(dir.path(), &tls)
    );
    let url = tls
        .url("/events")
        .replace("https://", &format!("https://user:{PASSWORD}@"));
    let mut relay = Relay::start_traced(&url, &extra);
    let log = relay.wait_for_exit(WITHIN).await;
    assert_eq!(relay.ids(), ["1", "2"]);
    let at_plain = plain.requests();
    assert_eq!(at_plain.len(), 2);
    for request in &at_plain {
        assert!(!carries_credentials(request), "{request:?}");
        assert_eq!(request.header("accept"), Some("text/event-stream"));
    }
    // The TLS origin itself got them (the operator chose that URL), the
    // password as Basic only where no Authorization header was configured.
    assert!(tls.requests().iter().all(carries_credentials));
    log_line(
        &log,
        &["connected to", &plain.url("/plain"), "(HTTP 200 OK)"],
    );
    log_line(&log, &["following the redirect to", "credentials dropped"]);
    assert!(!log.contains(SECRET) && !log.contains(PASSWORD), "{log}");
}

#[tokio::test]
async fn plain_redirects_keep_credentials_on_their_origin_and_drop_them_for_good_elsewhere() {
    // Origin A: /start -> /same (same origin) -> B/elsewhere -> A/back.
    let a_back = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let back = a_back.clone();
    let b = TestServer::start(move |_, _| {
        Reply::status(302).header("Location", &back.lock().unwrap().clone())
    })
    .await;
    let b_url = b.url("/elsewhere");
    let a = TestServer::start(move |_, request| match request.path.as_str() {
        "/start" => Reply::status(301).header("Location", "/same"),
        "/same" => Reply::status(308).header("Location", &b_url),
        _ => Reply::status(204),
    })
    .await;
    *a_back.lock().unwrap() = a.url("/back");
    let url = a
        .url("/start")
        .replace("http://", &format!("http://user:{PASSWORD}@"));
    let extra = format!("headers = {{ X-Api-Key = \"{SECRET}\" }}");
    let mut relay = Relay::start_traced(&url, &extra);
    let log = relay.wait_for_exit(WITHIN).await;
    let at_a = a.requests();
    let paths: Vec<&str> = at_a.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/start", "/same", "/back"]);
    for request in &at_a[..2] {
        assert_eq!(request.header("x-api-key"), Some(SECRET), "{request:?}");
        // The URL's user info as Basic auth: base64("user:pa55w0rd-in-url").
        assert_eq!(
            request.header("authorization"),
            Some("Basic dXNlcjpwYTU1dzByZC1pbi11cmw=")
        );
    }
    assert!(!carries_credentials(&at_a[2]), "sticky: {:?}", at_a[2]);
    assert!(b.requests().iter().all(|r| !carries_credentials(r)));
    assert_eq!(b.requests().len(), 1);
    log_line(
        &log,
        &["following the redirect to", "/same", "credentials kept"],
    );
    log_line(
        &log,
        &[
            "following the redirect to",
            "/elsewhere",
            "credentials dropped",
        ],
    );
    assert!(!log.contains(SECRET) && !log.contains(PASSWORD), "{log}");
}

#[tokio::test]
async fn https_redirects_to_another_origin_drop_credentials_and_same_origin_keeps_them() {
    let b = TlsServer::start(|n, _| {
        if n == 0 {
            events_then_close()
        } else {
            no_content()
        }
    })
    .await;
    let b_url = b.url("/b");
    let a = TlsServer::start(move |_, request| match request.path.as_str() {
        "/start" => redirect(302, "/same"),
        _ => redirect(303, &b_url),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // One CA file trusting both servers.
    let ca = dir.path().join("both.pem");
    std::fs::write(&ca, format!("{}{}", a.cert_pem, b.cert_pem)).unwrap();
    let extra = format!(
        "ca_file = \"{}\"\nheaders = {{ X-Api-Key = \"{SECRET}\" }}",
        ca.display()
    );
    let mut relay = Relay::start(&a.url("/start"), &extra);
    let log = relay.wait_for_exit(WITHIN).await;
    assert_eq!(relay.ids(), ["1", "2"]);
    let at_a = a.requests();
    assert_eq!(at_a[0].path, "/start");
    assert_eq!(at_a[1].path, "/same");
    assert!(at_a.iter().all(|r| r.header("x-api-key") == Some(SECRET)));
    assert!(b.requests().iter().all(|r| !carries_credentials(r)));
    assert_eq!(
        b.requests()[1].header("last-event-id"),
        Some("2"),
        "resume still works across origins"
    );
    log_line(&log, &["connected to", &b.url("/b"), "(HTTP 200 OK)"]);
}

// ---------------------------------------------------------------------------
// Decompression
// ---------------------------------------------------------------------------

fn compressed_head(encoding: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: {encoding}\r\nConnection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn deflate_zlib_and_raw_are_decoded_and_accept_encoding_says_so() {
    let server = RawServer::start(|n, _, socket| async move {
        let body = numbered(2 * n as u64 + 1, 2 * n as u64 + 2);
        match n {
            0 => {
                let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Default::default());
                z.write_all(&body).unwrap();
                let bytes = z.finish().unwrap();
                write_and_close(socket, compressed_head("deflate").as_bytes(), &bytes).await
            }
            1 => {
                let mut r = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
                r.write_all(&body).unwrap();
                let bytes = r.finish().unwrap();
                write_and_close(socket, compressed_head("Deflate").as_bytes(), &bytes).await
            }
            _ => support::no_content(socket).await,
        }
    })
    .await;
    let mut relay = Relay::start(&server.url("/"), "");
    relay.wait_for_exit(WITHIN).await;
    assert_eq!(relay.ids(), ["1", "2", "3", "4"]);
    for request in server.requests() {
        assert_eq!(request.header("accept-encoding"), Some("gzip, deflate"));
    }
}

#[tokio::test]
async fn an_encoding_it_cannot_decode_fails_the_attempt_naming_it_with_its_own_metric() {
    let metrics_port = support::free_port();
    let server = RawServer::start(|n, _, socket| async move {
        match n {
            0..=3 => {
                write_and_close(socket, compressed_head("br").as_bytes(), b"\x0b\x02\x80").await
            }
            _ => support::no_content(socket).await,
        }
    })
    .await;
    let top =
        format!("shutdown_timeout = \"5s\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"");
    // The [metrics] table must come after the top-level keys and before the
    // stream table: Relay::start_with puts `top` there.
    let mut relay = Relay::start_with(
        &server.url("/"),
        &top,
        "backoff_initial = \"300ms\"\nbackoff_max = \"300ms\"",
    );
    let deadline = Instant::now() + WITHIN;
    let metrics = loop {
        relay.assert_running();
        assert!(Instant::now() < deadline, "{}", relay.log_text());
        if let Ok(text) = support::http_get(metrics_port, "/metrics").await {
            if text.contains("reason=\"content_encoding\"") {
                break text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = relay.wait_for_exit(WITHIN).await;
    assert!(relay.records().is_empty());
    let line = log_line(&log, &["unsupported Content-Encoding \"br\"", "(attempt 1"]);
    assert!(line.contains("gzip and deflate"), "{line}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sse_relay_stream_reconnects_total")
                && l.contains("content_encoding")),
        "{metrics}"
    );
}

/// Peak RSS (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    support::process_usage(pid).map_or(0, |(_, _, peak)| peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gzip_bombs_stay_under_64_mib_and_the_event_after_a_giant_line_arrives() {
    // One bomb of many small events, one of a single giant line followed by
    // one event: each 2-3 MB on the wire. Sizes are chosen for a debug
    // build's speed; the bound does not depend on them (the closing note has
    // the 1 GiB figures from a release build).
    // BOMB_MIB=1024 makes both 1 GiB decoded (the closing note's figure).
    let mib: usize = std::env::var("BOMB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let small_events: usize = if mib > 0 { mib << 10 } else { 120_000 };
    let giant_line: usize = if mib > 0 { mib << 20 } else { 768 << 20 };
    let small = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let event = format!("data: {}\n\n", "e".repeat(1000));
        for _ in 0..small_events {
            gz.write_all(event.as_bytes()).unwrap();
        }
        gz.write_all(b"id: last\ndata: end of small\n\n").unwrap();
        std::sync::Arc::new(gz.finish().unwrap())
    };
    let giant = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"data: ").unwrap();
        let block = vec![b'g'; 1 << 20];
        for _ in 0..giant_line >> 20 {
            gz.write_all(&block).unwrap();
        }
        gz.write_all(b"\n\nid: after\ndata: after the giant line\n\n")
            .unwrap();
        std::sync::Arc::new(gz.finish().unwrap())
    };
    let serve = |body: std::sync::Arc<Vec<u8>>| {
        move |n: usize, _, socket| {
            let body = body.clone();
            async move {
                if n == 0 {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    write_and_close(socket, head.as_bytes(), &body).await
                } else {
                    support::no_content(socket).await
                }
            }
        }
    };
    let small_server = RawServer::start(serve(small)).await;
    let giant_server = RawServer::start(serve(giant)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bombs.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{d}/state"
[streams.small]
url = "{small}"
[streams.giant]
url = "{giant}"
[sinks.out]
type = "stdout"
inputs = ["*"]
"#,
            d = dir.path().display(),
            small = small_server.url("/"),
            giant = giant_server.url("/"),
        ),
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak.max(peak_rss_kib(child.id()));
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay did not finish the bombs in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert_no_panic(&log);
    eprintln!("peak RSS with two gzip bombs: {} KiB", peak);
    assert!(peak < 64 << 10, "peak RSS {peak} KiB\n{log}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        small_events + 2,
        "every small event, and the one after the giant line"
    );
    assert!(
        text.contains("\"id\":\"after\",\"event\":\"message\",\"data\":\"after the giant line\"")
    );
    assert!(text.contains("end of small"));
    log_line(
        &log,
        &["stream=giant dropped 1 event(s) over the size limits"],
    );
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_sink_file_without_a_final_newline_that_the_relay_did_not_write_is_kept_whole() {
    let server = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 2)]),
        _ => Reply::status(204),
    })
    .await;
    // The file exists before the relay starts: Relay::start writes the
    // config first, so write it into the directory it will use.
    let dir = tempfile::tempdir().unwrap();
    let foreign = "an operator's notes, not records ".repeat(125_000);
    assert!(foreign.len() > 4_000_000);
    let out = dir.path().join("notes.log");
    std::fs::write(&out, &foreign).unwrap();
    let extra = "";
    let mut relay = Relay::start_into(&server.url("/"), extra, &out);
    let log = relay.wait_for_exit(WITHIN).await;
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with(&foreign), "every byte kept");
    let rest = &text[foreign.len()..];
    assert!(
        rest.starts_with("\n{\"stream\":\"s\",\"id\":\"1\""),
        "{:?}",
        &rest[..60.min(rest.len())]
    );
    assert_eq!(rest.lines().filter(|l| !l.is_empty()).count(), 2);
    let line = log_line(&log, &[&out.display().to_string(), "kept them"]);
    assert!(
        line.contains(&format!("last {} bytes", foreign.len())),
        "{line}"
    );
    assert!(!log.contains("removed a torn"), "{log}");
}

#[tokio::test]
async fn a_symlink_planted_at_the_checkpoint_writers_temporary_path_is_not_followed() {
    let server = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 3)]),
        _ => Reply::status(204),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let checkpoints = dir.path().join("relay/state/checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    // The name the old writer used, and the obvious guesses.
    for name in [".s.json.tmp", "s.json.tmp", ".s.json.new"] {
        std::os::unix::fs::symlink(&victim, checkpoints.join(name)).unwrap();
    }
    let mut relay = Relay::start_in(&dir.path().join("relay/state"), &server.url("/"), "");
    relay.wait_for_exit(WITHIN).await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let saved = std::fs::read_to_string(checkpoints.join("s.json")).unwrap();
    assert!(saved.contains("\"last_event_id\":\"3\""), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_directories_the_relay_creates_are_private_under_umask_000() {
    let server = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 2)]),
        _ => Reply::status(204),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let d = dir.path().display();
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{d}/state\"\n[streams.s]\nurl = \"{}\"\n[sinks.out]\ntype = \"file\"\ninputs = [\"*\"]\npath = \"{d}/logs/deep/{{stream}}.jsonl\"\n",
            server.url("/")
        ),
    )
    .unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_sse-relay"))
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status_within(WITHIN);
    assert!(status.success());
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("logs"), 0o750);
    assert_eq!(mode("logs/deep"), 0o750);
    assert_eq!(mode("logs/deep/s.jsonl"), 0o640);
    assert_eq!(mode("state/checkpoints"), 0o750);
    assert_eq!(mode("state/checkpoints/s.json"), 0o600);
}

// ---------------------------------------------------------------------------
// Secrets in output
// ---------------------------------------------------------------------------

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        config.replace("{d}", &dir.path().display().to_string()),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args(["check", "--config"])
        .arg(&path)
        .output_within(WITHIN);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn check_never_shows_a_nats_password_and_warns_about_exposed_credentials() {
    let (ok, text) = check(
        "data_dir = \"{d}\"\n[streams.s]\nurl = \"http://h/\"\n[sinks.n]\ntype = \"nats\"\ninputs = [\"*\"]\nurl = \"bogus://user:hunter2secret@host:4222\"\nsubject = \"x\"\n",
    );
    assert!(!ok, "{text}");
    assert!(text.contains("unsupported NATS url"), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");

    let (ok, text) = check(
        "data_dir = \"{d}\"\n[metrics]\nlisten = \"0.0.0.0:9464\"\n[streams.s]\nurl = \"http://u:pw-in-url@h/s?jwt=JWTVALUE&access=ACCESSVALUE&sig=SIGVALUE&topic=public\"\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"*\"]\n",
    );
    assert!(ok, "{text}");
    for secret in ["pw-in-url", "JWTVALUE", "ACCESSVALUE", "SIGVALUE"] {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
    assert!(text.contains("topic=public"), "{text}");
    assert!(
        text.contains("credentials in a plain http:// URL"),
        "{text}"
    );
    assert!(text.contains("is not a loopback address"), "{text}");
}

#[test]
fn a_malformed_tail_header_is_not_echoed() {
    let output = Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args([
            "tail",
            "http://127.0.0.1:9/",
            "-H",
            "Authorization Bearer T0PS3CRET",
        ])
        .output_within(WITHIN);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("-H/--header"), "{stderr}");
    assert!(!stderr.contains("T0PS3CRET"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answers_that_echo_secrets_are_masked_and_cut_in_logs_and_dead_letters() {
    let receiver = RawServer::start(|_, request, socket| async move {
        // A receiver that echoes the request's headers back, at length.
        let echo = format!(
            "rejected; you sent x-api-key: {} and {}",
            request.header("x-api-key").unwrap_or_default(),
            "padding ".repeat(500)
        );
        let head = format!(
            "HTTP/1.1 422 Unprocessable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            echo.len()
        );
        write_and_close(socket, head.as_bytes(), echo.as_bytes()).await;
    })
    .await;
    let source = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 1)]),
        _ => Reply::status(204),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{d}/state"
[streams.s]
url = "{source}"
[sinks.hook]
type = "webhook"
inputs = ["*"]
url = "{hook}"
headers = {{ X-Api-Key = "{SECRET}" }}
dead_letter_path = "{d}/dead.jsonl"
batch = {{ timeout = "10ms" }}
"#,
            source = source.url("/"),
            hook = receiver.url("/hook"),
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args(["--log-level", "trace", "run", "--config"])
        .arg(&config)
        .output_within(WITHIN);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(!receiver.requests().is_empty());
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    for text in [&dead, &log.to_string()] {
        assert!(!text.contains(SECRET), "secret in:\n{text}");
        assert!(text.contains("x-api-key: REDACTED"), "{text}");
    }
    let record: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    let response = record["response"].as_str().unwrap();
    assert!(response.len() < 400, "{} bytes: {response}", response.len());
}

// ---------------------------------------------------------------------------
// Deadlines for spawned processes
// ---------------------------------------------------------------------------

trait Within {
    fn output_within(&mut self, within: Duration) -> std::process::Output;
    fn status_within(&mut self, within: Duration) -> std::process::ExitStatus {
        self.output_within(within).status
    }
}

impl Within for Command {
    /// As `output()`, but kills the process and fails the test if it runs
    /// past `within`: a regression fails fast instead of hanging.
    fn output_within(&mut self, within: Duration) -> std::process::Output {
        support::output_within(self, within)
    }
}
