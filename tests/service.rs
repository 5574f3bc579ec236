//! sse-relay as a systemd service: readiness, watchdog and status over
//! `NOTIFY_SOCKET`, reload on SIGHUP, file reopening for logrotate, and the
//! metrics endpoint. The real binary runs; this test plays systemd.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::NumberedServer;

fn signal(child: &Child, name: &str) {
    support::signal(child.id(), name);
}

fn spawn(config: &Path, log: &Path, envs: &[(&str, &str)]) -> Child {
    support::spawn_run(config, log, envs)
}

fn stream_toml(name: &str, url: &str) -> String {
    format!("[streams.{name}]\nurl = \"{url}\"\nbackoff_initial = \"50ms\"\n")
}

fn base_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "data_dir = \"{d}/state\"\ncheckpoint_interval = \"100ms\"\n\
         [sinks.files]\ntype = \"file\"\ninputs = [\"*\"]\npath = \"{d}/out/{{stream}}.jsonl\"\n"
    )
}

async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Collects every message on a notify socket until `deadline`.
fn receive(
    socket: &UnixDatagram,
    messages: &mut Vec<String>,
    until: impl Fn(&[String]) -> bool,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !until(messages) {
        assert!(
            Instant::now() < deadline,
            "timed out; systemd was told: {messages:?}"
        );
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn count(messages: &[String], line: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == line))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_status_watchdog_reloading_and_stopping() {
    let server = NumberedServer::start(u64::MAX, 1, Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        base_toml(dir.path()) + &stream_toml("a", &server.url()),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log = dir.path().join("relay.log");
    let mut child = spawn(
        &config,
        &log,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut messages = Vec::new();
    receive(
        &socket,
        &mut messages,
        |m| count(m, "READY=1") == 1,
        Duration::from_secs(10),
    );
    let ready = messages.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains("STATUS=") && ready.contains("streams connected"),
        "{ready}"
    );
    // Half of WatchdogSec is 200 ms: several pings within a second.
    receive(
        &socket,
        &mut messages,
        |m| count(m, "WATCHDOG=1") >= 3,
        Duration::from_secs(3),
    );
    receive(
        &socket,
        &mut messages,
        |m| m.iter().any(|s| s.contains("STATUS=1/1 streams connected")),
        Duration::from_secs(10),
    );

    signal(&child, "HUP");
    receive(
        &socket,
        &mut messages,
        |m| count(m, "READY=1") == 2,
        Duration::from_secs(10),
    );
    let reloading = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .expect("RELOADING=1 before the second READY=1");
    assert!(
        messages[reloading].contains("MONOTONIC_USEC="),
        "{}",
        messages[reloading]
    );

    signal(&child, "TERM");
    receive(
        &socket,
        &mut messages,
        |m| count(m, "STOPPING=1") == 1,
        Duration::from_secs(10),
    );
    assert!(child.wait().unwrap().success(), "{}", log_text(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_unchanged_streams_connected_and_starts_added_ones() {
    let server_a = NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let server_b = NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let base = base_toml(dir.path());
    std::fs::write(&config, base.clone() + &stream_toml("a", &server_a.url())).unwrap();
    let log = dir.path().join("relay.log");
    let mut child = spawn(&config, &log, &[]);
    let out_a = dir.path().join("out/a.jsonl");
    support::wait_for_records(&out_a, 5, Duration::from_secs(10)).await;

    // An invalid configuration is refused and the running one stays.
    std::fs::write(
        &config,
        base.clone() + &stream_toml("a", &server_a.url()) + "bogus_key = 1\n",
    )
    .unwrap();
    signal(&child, "HUP");
    wait_until("the refusal", Duration::from_secs(10), || {
        log_text(&log).contains("reload refused")
    })
    .await;
    assert!(
        log_text(&log).contains("unknown key `bogus_key`"),
        "{}",
        log_text(&log)
    );

    // Add stream b.
    let both = base + &stream_toml("a", &server_a.url()) + &stream_toml("b", &server_b.url());
    std::fs::write(&config, both).unwrap();
    signal(&child, "HUP");
    let out_b = dir.path().join("out/b.jsonl");
    support::wait_for_records(&out_b, 5, Duration::from_secs(10)).await;
    let before = support::read_records(&out_a).len();
    support::wait_for_records(&out_a, before + 5, Duration::from_secs(10)).await;
    assert_eq!(
        server_a.connections.load(Ordering::Relaxed),
        1,
        "stream a kept its connection through two reloads:\n{}",
        log_text(&log)
    );
    assert_eq!(server_b.connections.load(Ordering::Relaxed), 1);
    assert!(
        log_text(&log).contains("reloaded: 1 stream(s) unchanged, 1 added"),
        "{}",
        log_text(&log)
    );

    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    // No event was lost or repeated on stream a across the reloads.
    let ids: Vec<u64> = support::read_records(&out_a)
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_stream_restarts_from_its_checkpoint_and_a_removed_one_stops() {
    let server = NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let base = base_toml(dir.path());
    std::fs::write(
        &config,
        base.clone() + &stream_toml("a", &server.url()) + &stream_toml("gone", &server.url()),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let mut child = spawn(&config, &log, &[]);
    let out_a = dir.path().join("out/a.jsonl");
    support::wait_for_records(&out_a, 5, Duration::from_secs(10)).await;

    let changed = stream_toml("a", &server.url()).replace("50ms", "60ms");
    std::fs::write(&config, base + &changed).unwrap();
    signal(&child, "HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        log_text(&log).contains("reloaded:")
    })
    .await;
    assert!(
        log_text(&log).contains("0 added, 1 restarted, 1 removed"),
        "{}",
        log_text(&log)
    );
    let before = support::read_records(&out_a).len();
    support::wait_for_records(&out_a, before + 5, Duration::from_secs(10)).await;
    let gone = support::read_records(&dir.path().join("out/gone.jsonl")).len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        support::read_records(&dir.path().join("out/gone.jsonl")).len(),
        gone,
        "removed stream stopped"
    );
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    // The restart resumed right after the last acknowledged event: no gap, no repeat.
    let ids: Vec<u64> = support::read_records(&out_a)
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "{}",
        log_text(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_files_moved_away_by_logrotate() {
    let server = NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        base_toml(dir.path()) + &stream_toml("a", &server.url()),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let mut child = spawn(&config, &log, &[]);
    let out = dir.path().join("out/a.jsonl");
    support::wait_for_records(&out, 5, Duration::from_secs(10)).await;
    let rotated = dir.path().join("out/a.jsonl.1");
    std::fs::rename(&out, &rotated).unwrap();
    signal(&child, "HUP");
    support::wait_for_records(&out, 5, Duration::from_secs(10)).await;
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let mut ids: Vec<u64> = support::read_records(&rotated)
        .iter()
        .chain(support::read_records(&out).iter())
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let in_order = ids.clone();
    ids.sort();
    assert_eq!(
        in_order, ids,
        "the new file continues where the rotated one stopped"
    );
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_and_counters_move() {
    let server = NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let port = support::free_port();
    let toml = format!(
        "{}{}[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
        base_toml(dir.path()),
        stream_toml("a", &server.url())
    );
    std::fs::write(&config, toml).unwrap();
    let log = dir.path().join("relay.log");
    let mut child = spawn(&config, &log, &[]);
    support::wait_for_records(&dir.path().join("out/a.jsonl"), 3, Duration::from_secs(10)).await;
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        get(&format!("{base}/health")).await,
        (200, "running\n".to_owned())
    );

    let (status, first) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let events = metric(&first, "sse_relay_stream_events_total{stream=\"a\"}");
    assert!(events >= 3.0, "{first}");
    assert_eq!(
        metric(&first, "sse_relay_stream_connected{stream=\"a\"}"),
        1.0
    );
    assert_eq!(
        metric(&first, "sse_relay_stream_last_http_status{stream=\"a\"}"),
        200.0
    );
    assert!(
        metric(
            &first,
            "sse_relay_stream_received_bytes_total{stream=\"a\"}"
        ) > 0.0
    );
    assert!(
        metric(
            &first,
            "sse_relay_stream_seconds_since_last_event{stream=\"a\"}"
        ) < 5.0
    );
    assert!(
        metric(
            &first,
            "sse_relay_sink_events_written_total{sink=\"files\"}"
        ) >= 1.0
    );
    metric(&first, "sse_relay_sink_queue_depth{sink=\"files\"}");
    metric(
        &first,
        "sse_relay_sink_write_failures_total{sink=\"files\"}",
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, second) = get(&format!("{base}/metrics")).await;
    assert!(metric(&second, "sse_relay_stream_events_total{stream=\"a\"}") > events);
    assert!(
        metric(&second, "sse_relay_checkpoint_age_seconds{stream=\"a\"}") < 5.0,
        "{second}"
    );

    signal(&child, "TERM");
    assert!(child.wait().unwrap().success(), "{}", log_text(&log));
}
