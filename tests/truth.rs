//! The signals an operator trusts, against the real binary: the exit status,
//! `check`, `/health`, the metrics and the log say what happened.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use support::{numbered, Reply, TestServer};

/// A daemon started from a configuration text (`{d}` is its directory).
struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
    log: PathBuf,
    config: PathBuf,
}

impl Daemon {
    fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            config.replace("{d}", &dir.path().display().to_string()),
        )
        .unwrap();
        let log = dir.path().join("relay.log");
        let child = support::spawn_run(&path, &log, &[]);
        Daemon {
            dir,
            child,
            log,
            config: path,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        support::signal(self.child.id(), name);
    }

    /// The exit code, failing the test (with the log) after `within`.
    async fn exit_code(&mut self, within: Duration) -> i32 {
        let Some(status) = support::exit_within(&mut self.child, within).await else {
            panic!("the daemon did not exit within {within:?}:\n{}", self.log());
        };
        assert!(!self.log().contains("panicked"), "{}", self.log());
        status.code().expect("exited, not killed")
    }

    #[track_caller]
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the daemon exited with {status:?}:\n{}", self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A webhook receiver that answers request n with `script(n)`: a status, or
/// `None` to stall past the relay's timeout. Ids of accepted records are kept.
struct Receiver {
    addr: std::net::SocketAddr,
    delivered: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(
        script: impl Fn(usize) -> Option<StatusCode> + Send + Sync + 'static,
    ) -> Receiver {
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(script);
        let (d, r) = (delivered.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (d, r, script) = (d.clone(), r.clone(), script.clone());
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst);
                    match script(n) {
                        None => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            (StatusCode::OK, [("retry-after", "0")])
                        }
                        Some(status) => {
                            if status.is_success() {
                                let records: Vec<serde_json::Value> =
                                    serde_json::from_slice(&body).unwrap();
                                let mut d = d.lock().unwrap();
                                for record in records {
                                    d.push(record["id"].as_str().unwrap().to_owned());
                                }
                            }
                            (status, [("retry-after", "1")])
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            delivered,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn delivered(&self) -> Vec<String> {
        self.delivered.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn webhook_config(sse: &str, hook: &str, extra: &str) -> String {
    format!(
        r#"
data_dir = "{{d}}/state"
shutdown_timeout = "1s"
checkpoint_interval = "50ms"
{extra}
[streams.s]
url = "{sse}"
backoff_initial = "10ms"
backoff_max = "20ms"

[sinks.hook]
type = "webhook"
inputs = ["*"]
url = "{hook}"
timeout = "300ms"
backoff_initial = "10ms"
backoff_max = "50ms"
batch = {{ max_events = 250, timeout = "20ms" }}
"#
    )
}

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_stream_ends_every_event_is_delivered_before_exit_0() {
    // 5,000 events, then 204. The receiver fails 45% of its requests: 500,
    // 429 with Retry-After, and stalls past the relay's timeout; its first
    // failures last longer than shutdown_timeout.
    let sse = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 5000)]),
        _ => Reply::status(204),
    })
    .await;
    let receiver = Receiver::start(|n| match n {
        0..=5 => Some(StatusCode::INTERNAL_SERVER_ERROR),
        _ => match n % 20 {
            0 | 3 | 7 | 11 | 15 => Some(StatusCode::INTERNAL_SERVER_ERROR),
            1 | 9 => Some(StatusCode::TOO_MANY_REQUESTS),
            5 | 13 => None,
            _ => Some(StatusCode::OK),
        },
    })
    .await;
    let mut daemon = Daemon::start(&webhook_config(&sse.url("/"), &receiver.url(), ""));
    let code = daemon.exit_code(WITHIN).await;
    let log = daemon.log();
    let delivered: BTreeSet<u64> = receiver
        .delivered()
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    eprintln!(
        "webhook scenario: 5000 sent, {} delivered (unique), {} requests, exit {code}",
        delivered.len(),
        receiver.requests.load(Ordering::SeqCst)
    );
    assert_eq!(delivered, (1..=5000).collect::<BTreeSet<u64>>(), "{log}");
    assert_eq!(code, 0, "{log}");
    let saved =
        std::fs::read_to_string(daemon.dir.path().join("state/checkpoints/s.json")).unwrap();
    assert!(saved.contains("\"last_event_id\":\"5000\""), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_that_leaves_events_unacknowledged_exits_non_zero_and_says_how_many() {
    let sse = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 300)]).pause(Duration::from_secs(30)),
        _ => Reply::status(204),
    })
    .await;
    let receiver = Receiver::start(|_| Some(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let port = support::free_port();
    let metrics = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"");
    let mut daemon = Daemon::start(&webhook_config(&sse.url("/"), &receiver.url(), &metrics));
    // While the sink fails, its queue depth shows the events it holds.
    let deadline = Instant::now() + WITHIN;
    loop {
        daemon.assert_running();
        assert!(Instant::now() < deadline, "{}", daemon.log());
        if let Ok(text) = support::http_get(port, "/metrics").await {
            if text.contains("sse_relay_sink_queue_depth{sink=\"hook\"} 300") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.signal("TERM");
    let code = daemon.exit_code(WITHIN).await;
    let log = daemon.log();
    assert_eq!(code, 3, "{log}");
    let line = support::relay::log_line(
        &log,
        &["300 event(s) given to this sink were never acknowledged"],
    );
    assert!(
        line.contains("sink=hook") && line.contains("sends them again"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_gives_up_shows_in_health_and_the_exit_status() {
    let refusing = TestServer::start(|_, _| Reply::status(401)).await;
    let good = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(1, 2)]).pause(Duration::from_millis(1500)),
        _ => Reply::status(204),
    })
    .await;
    let port = support::free_port();
    let mut daemon = Daemon::start(&format!(
        r#"
data_dir = "{{d}}/state"
[metrics]
listen = "127.0.0.1:{port}"
[streams.bad]
url = "{bad}"
give_up_after = 2
backoff_initial = "10ms"
backoff_max = "20ms"
[streams.good]
url = "{good}"
backoff_initial = "10ms"
backoff_max = "20ms"
[sinks.out]
type = "file"
inputs = ["*"]
path = "{{d}}/out.jsonl"
"#,
        bad = refusing.url("/"),
        good = good.url("/"),
    ));
    let deadline = Instant::now() + WITHIN;
    let body = loop {
        daemon.assert_running();
        assert!(Instant::now() < deadline, "{}", daemon.log());
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
            if response.status() == 503 {
                let body = response.text().await.unwrap();
                if body.contains("\"component\":\"stream\"") {
                    break body;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "unhealthy");
    let problem = &health["problems"][0];
    assert_eq!(problem["component"], "stream", "{body}");
    assert_eq!(problem["name"], "bad", "{body}");
    assert!(problem["problem"]
        .as_str()
        .unwrap()
        .contains("give_up_after"));
    let metrics = support::http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("sse_relay_stream_up{stream=\"bad\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sse_relay_stream_up{stream=\"good\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sse_relay_build_info{version=\""),
        "{metrics}"
    );
    let code = daemon.exit_code(WITHIN).await;
    let log = daemon.log();
    assert_eq!(code, 4, "{log}");
    support::relay::log_line(&log, &["stream(s) bad gave up"]);
    assert_eq!(
        support::read_records(&daemon.dir.path().join("out.jsonl")).len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_run_is_refused_and_the_old_configuration_keeps_running() {
    let sse = support::NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let port = support::free_port();
    let config = format!(
        r#"
data_dir = "{{d}}/state"
[metrics]
listen = "127.0.0.1:{port}"
[streams.s]
url = "{url}"
[sinks.out]
type = "file"
inputs = ["*"]
path = "{{d}}/out.jsonl"
"#,
        url = sse.url()
    );
    let mut daemon = Daemon::start(&config);
    let out = daemon.dir.path().join("out.jsonl");
    support::wait_for_records(&out, 3, Duration::from_secs(20)).await;
    // A ca_file that does not exist, then a queue_size tokio cannot allocate.
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    for bad in [
        text.replace(
            "[sinks.out]",
            "ca_file = \"/nonexistent/ca.pem\"\n[sinks.out]",
        ),
        text.replace(
            "[sinks.out]",
            "[sinks.out]\nqueue_size = 4611686018427387904",
        ),
    ] {
        std::fs::write(&daemon.config, bad).unwrap();
        daemon.signal("HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
        daemon.assert_running();
    }
    let before = support::read_records(&out).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.assert_running();
    assert!(
        support::read_records(&out).len() > before,
        "the stream still runs"
    );
    let log = daemon.log();
    let refused = log.matches("reload refused").count();
    assert_eq!(refused, 2, "{log}");
    assert!(log.contains("/nonexistent/ca.pem"), "{log}");
    assert!(log.contains("queue_size"), "{log}");
    assert!(!log.contains("restarted"), "{log}");
    let metrics = support::http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("sse_relay_config_reloads_total{result=\"refused\"} 2"),
        "{metrics}"
    );
    let health = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checkpoint_saves_turn_health_to_503_and_count() {
    let sse = support::NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let port = support::free_port();
    let mut daemon = Daemon::start(&format!(
        "data_dir = \"{{d}}/state\"\ncheckpoint_interval = \"50ms\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[streams.s]\nurl = \"{}\"\n[sinks.out]\ntype = \"file\"\ninputs = [\"*\"]\npath = \"{{d}}/out.jsonl\"\n",
        sse.url()
    ));
    let checkpoints = daemon.dir.path().join("state/checkpoints");
    let saved = checkpoints.join("s.json");
    let deadline = Instant::now() + WITHIN;
    while !saved.exists() {
        daemon.assert_running();
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Break the directory: a file where it was (fails even for root).
    std::fs::remove_dir_all(&checkpoints).unwrap();
    std::fs::write(&checkpoints, "not a directory").unwrap();
    let broke = Instant::now();
    let body = loop {
        daemon.assert_running();
        assert!(
            broke.elapsed() < Duration::from_secs(5),
            "health still 200:\n{}",
            daemon.log()
        );
        let response = reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .unwrap();
        if response.status() == 503 {
            break response.text().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        body.contains("\"component\":\"checkpoint\"") && body.contains("\"name\":\"s\""),
        "{body}"
    );
    let metrics = support::http_get(port, "/metrics").await.unwrap();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sse_relay_checkpoint_save_errors_total{stream=\"s\"} "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert!(errors >= 1.0);
    // Repaired: healthy again.
    std::fs::remove_file(&checkpoints).unwrap();
    std::fs::create_dir(&checkpoints).unwrap();
    let repaired = Instant::now();
    loop {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(repaired.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_clean_close_after_events_is_info_and_waits_the_servers_retry() {
    let sse = TestServer::start(|n, _| match n {
        0..=3 => Reply::events([format!("retry: 300\nid: {}\ndata: x\n\n", n + 1).into_bytes()]),
        _ => Reply::status(204),
    })
    .await;
    let mut relay = support::relay::Relay::start(
        &sse.url("/"),
        "backoff_initial = \"200ms\"\nbackoff_max = \"10s\"",
    );
    let log = relay.wait_for_exit(WITHIN).await;
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reconnecting in"))
        .collect();
    assert_eq!(lines.len(), 4, "{log}");
    for line in &lines {
        assert!(
            line.contains(" INFO ") && !line.contains(" WARN "),
            "{line}"
        );
        assert!(
            (300..=330).contains(&support::relay::reconnect_delay_ms(line)),
            "the server's retry, within 10%: {line}"
        );
    }
    let requests = sse.requests();
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(290) && gap < Duration::from_millis(600),
            "{gap:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// check refuses what run cannot run
// ---------------------------------------------------------------------------

fn check(config: &str, dir: &Path) -> (bool, String) {
    let path = dir.join("c.toml");
    std::fs::write(&path, config.replace("{d}", &dir.display().to_string())).unwrap();
    let output = support::output_within(
        Command::new(env!("CARGO_BIN_EXE_sse-relay"))
            .args(["check", "--config"])
            .arg(&path),
        Duration::from_secs(20),
    );
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn check_refuses_every_configuration_run_cannot_run_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a-directory")).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "no certificate here\n").unwrap();
    let stream = "[streams.s]\nurl = \"http://127.0.0.1:9/\"\n";
    let sink = "[sinks.out]\ntype = \"stdout\"\ninputs = [\"*\"]\n";
    let long = "n".repeat(300);
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("{stream}{sink}queue_size = 4611686018427387904\n"), "queue_size", ":6:"),
        (format!("{stream}max_line_bytes = 0\n{sink}"), "max_line_bytes", ":3:"),
        (format!("{stream}max_event_bytes = 0\n{sink}"), "max_event_bytes", ":3:"),
        (format!("{stream}{sink}event_types = []\n"), "event_types", ":6:"),
        (format!("data_dir = \"\"\n{stream}{sink}"), "data_dir", ":1:"),
        (format!("{stream}ca_file = \"{{d}}/missing.pem\"\n{sink}"), "missing.pem", ""),
        (format!("{stream}ca_file = \"{{d}}/empty.pem\"\n{sink}"), "no PEM certificate", ""),
        (
            format!("{stream}[sinks.out]\ntype = \"file\"\ninputs = [\"*\"]\npath = \"{{d}}/a-directory\"\n"),
            "is a directory",
            "",
        ),
        (format!("[streams.{long}]\nurl = \"http://h/\"\n{sink}"), "at most 128", ":1:"),
        (
            format!("shutdown_timeout = \"300000000000years\"\n{stream}{sink}"),
            "at most 10 years",
            ":1:",
        ),
        (format!("{stream}max_redirects = 51\n{sink}"), "max_redirects", ":3:"),
        (
            format!("{stream}[sinks.n]\ntype = \"nats\"\ninputs = [\"*\"]\nurl = \"nats://127.0.0.1:4222\"\nsubject = \"x\"\nca_file = \"{{d}}/missing-nats-ca.pem\"\n"),
            "missing-nats-ca.pem",
            ":8:",
        ),
    ];
    for (config, expect, at) in cases {
        let (ok, text) = check(&config, dir.path());
        assert!(!ok, "check accepted:\n{config}\n{text}");
        assert!(text.contains(expect), "{expect:?} not in:\n{text}");
        assert!(text.contains("c.toml"), "no file named:\n{text}");
        assert!(text.contains(at), "no line {at} in:\n{text}");
        assert!(!text.contains("panicked"), "{text}");
    }
}

#[test]
fn config_errors_name_the_table_they_are_in_and_the_key_s_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[streams.wiki]\nurl = \"http://h/\"\n[sinks.out]\ntype = \"stdout\"\n",
            "in [sinks.out]",
            ":3:",
        ),
        (
            "[streams.wiki]\nheaders = {}\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"*\"]\n",
            "missing key `url` in [streams.wiki]",
            ":1:",
        ),
        (
            "[streams.a]\nurl = \"http://h/\"\nurl = \"http://x/\"\n",
            "[streams.a]",
            ":3:",
        ),
        (
            "[streams.wiki]\nurl = \"http://h/\"\nbackoff_initial = \"10s\"\nbackoff_max = \"1s\"\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"*\"]\n",
            "backoff_initial",
            ":3:",
        ),
    ];
    for (config, expect, at) in cases {
        let (ok, text) = check(config, dir.path());
        assert!(!ok, "{text}");
        assert!(text.contains(expect), "{expect:?} not in:\n{text}");
        assert!(text.contains(at), "{at} not in:\n{text}");
        assert!(
            !text.contains("[streams.wiki]") || !expect.contains("sinks"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_stream_as_a_field_and_text_logs_no_colour() {
    // Every other request gets an event, the next a 204: one run each.
    let sse = TestServer::start(|n, _| match n % 2 {
        0 => Reply::events([numbered(1, 1)]),
        _ => Reply::status(204),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}/state\"\n[streams.wiki]\nurl = \"{}\"\nbackoff_initial = \"10ms\"\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"*\"]\n",
            dir.path().display(),
            sse.url("/")
        ),
    )
    .unwrap();
    for format in ["json", "text"] {
        let output = tokio::task::spawn_blocking({
            let config = config.clone();
            move || {
                support::output_within(
                    Command::new(env!("CARGO_BIN_EXE_sse-relay"))
                        .args(["--log-format", format, "run", "--config"])
                        .arg(&config)
                        .env_remove("RUST_LOG")
                        .env_remove("JOURNAL_STREAM"),
                    Duration::from_secs(20),
                )
            }
        })
        .await
        .unwrap();
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{log}");
        assert!(!log.contains('\u{1b}'), "colour codes in:\n{log}");
        if format == "json" {
            let connected = log
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|v| {
                    v["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("connected to"))
                })
                .unwrap_or_else(|| panic!("{log}"));
            assert_eq!(connected["fields"]["stream"], "wiki", "{connected}");
        } else {
            support::relay::log_line(&log, &[" INFO stream=wiki connected to "]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_not_unhealthy_and_a_removed_streams_series_all_go() {
    let a = support::NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let b = support::NumberedServer::start(u64::MAX, 1, Duration::from_millis(20)).await;
    let port = support::free_port();
    let config = format!(
        r#"
data_dir = "{{d}}/state"
[metrics]
listen = "127.0.0.1:{port}"
[streams.a]
url = "{a}"
[streams.b]
url = "{b}"
[sinks.out]
type = "file"
inputs = ["*"]
path = "{{d}}/{{stream}}.jsonl"
"#,
        a = a.url(),
        b = b.url()
    );
    let mut daemon = Daemon::start(&config);
    support::wait_for_records(
        &daemon.dir.path().join("b.jsonl"),
        3,
        Duration::from_secs(20),
    )
    .await;
    let before = support::http_get(port, "/metrics").await.unwrap();
    assert!(before.contains("stream=\"b\""), "{before}");
    // Remove stream b, and watch /health all through the reload.
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    let without_b = text.replace(&format!("[streams.b]\nurl = \"{}\"\n", b.url()), "");
    assert_ne!(text, without_b);
    std::fs::write(&daemon.config, without_b).unwrap();
    daemon.signal("HUP");
    // One client for every poll: building one (its TLS roots) per poll takes
    // longer than the poll on a busy machine.
    let client = reqwest::Client::new();
    let watch_until = Instant::now() + Duration::from_millis(1500);
    let mut polls = 0;
    while Instant::now() < watch_until {
        let response = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        polls += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(polls > 20);
    daemon.assert_running();
    let log = daemon.log();
    assert!(log.contains("1 removed"), "{log}");
    let after = support::http_get(port, "/metrics").await.unwrap();
    let left: Vec<&str> = after
        .lines()
        .filter(|l| l.contains("stream=\"b\""))
        .collect();
    assert!(
        left.is_empty(),
        "series of the removed stream remain: {left:?}"
    );
    assert!(after.contains("stream=\"a\""), "{after}");
    assert!(
        after.contains("sse_relay_config_reloads_total{result=\"ok\"} 1"),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_restarts_a_stream_waits_for_its_acknowledgements_first() {
    // Acknowledgements lag up to 2 s (fsync every 2 s): a stream restarted by
    // a reload before they arrive would resume from an older checkpoint and
    // write its events twice.
    let server = support::NumberedServer::start(u64::MAX, 20, Duration::from_millis(5)).await;
    let config = format!(
        r#"data_dir = "{{d}}/state"
checkpoint_interval = "50ms"
shutdown_timeout = "10s"
[streams.a]
url = "{}"
idle_timeout = "60s"
backoff_initial = "10ms"
backoff_max = "20ms"
[sinks.out]
type = "file"
inputs = ["*"]
path = "{{d}}/a.jsonl"
fsync = "interval"
fsync_interval = "2s"
"#,
        server.url()
    );
    let mut daemon = Daemon::start(&config);
    let out = daemon.dir.path().join("a.jsonl");
    support::wait_for_records(&out, 200, Duration::from_secs(20)).await;
    let text = std::fs::read_to_string(&daemon.config).unwrap();
    std::fs::write(&daemon.config, text.replace("\"60s\"", "\"61s\"")).unwrap();
    daemon.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.log().contains("1 restarted") {
        assert!(Instant::now() < deadline, "no reload:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reloaded_at = support::read_records(&out).len();
    support::wait_for_records(&out, reloaded_at + 200, Duration::from_secs(20)).await;
    daemon.signal("TERM");
    assert_eq!(daemon.exit_code(Duration::from_secs(20)).await, 0);
    let ids: Vec<u64> = support::ids(&support::read_records(&out))
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    assert!(ids.len() > 400, "{} records", ids.len());
    if let Some(at) = (0..ids.len()).find(|&i| ids[i] != i as u64 + 1) {
        panic!(
            "the restarted stream repeated or skipped events: record {} has id {} ({} records)",
            at + 1,
            ids[at],
            ids.len()
        );
    }
}
