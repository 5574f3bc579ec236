//! The daemon end to end, in process: a scripted SSE server on loopback, the
//! real supervisor, streams and file sinks, and the files they write.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sse_relay::config::Config;
use sse_relay::supervisor::{self, Checkpoints, Shutdown};
use support::relay::Relay;
use support::{numbered, split_cycling, Ending, Reply, TestServer};

fn config(source: &str) -> Config {
    Config::parse(Path::new("test.toml"), source, |name| {
        (name == "TEST_TOKEN").then(|| "s3cret".to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A config with one stream `s` from `url` into a file sink in `dir`.
fn one_stream(dir: &Path, url: &str, stream_extra: &str) -> Config {
    config(&format!(
        r#"
data_dir = "{dir}/state"
checkpoint_interval = "50ms"

[streams.s]
url = "{url}"
backoff_initial = "10ms"
backoff_max = "20ms"
{stream_extra}

[sinks.out]
type = "file"
inputs = ["*"]
path = "{dir}/out/{{stream}}.jsonl"
"#,
        dir = dir.display()
    ))
}

fn out_file(dir: &Path) -> PathBuf {
    dir.join("out/s.jsonl")
}

#[tokio::test]
async fn events_arrive_intact_whatever_the_chunking_and_the_file_holds_exact_records() {
    let body =
        "\u{feff}: hello\r\nid: 1\r\nevent: edit\r\ndata: line one\r\ndata: line \"two\"\r\n\r\n\
                data: no id change, é ü 😀\n\n\
                id: 2\rdata: tab\there\r\r\
                : keep-alive\n\
                id\ndata: id reset\n\n\
                id: 3\ndata: {\"json\":true}\n\ndata: cut off at the end";
    let expected_prefixes = [
        r#"{"stream":"s","id":"1","event":"edit","data":"line one\nline \"two\"","received_at":""#,
        r#"{"stream":"s","id":"1","event":"message","data":"no id change, é ü 😀","received_at":""#,
        r#"{"stream":"s","id":"2","event":"message","data":"tab\there","received_at":""#,
        r#"{"stream":"s","id":null,"event":"message","data":"id reset","received_at":""#,
        r#"{"stream":"s","id":"3","event":"message","data":"{\"json\":true}","received_at":""#,
    ];
    for sizes in [&[1usize][..], &[2, 3, 5, 7], &[64, 1, 13], &[4096]] {
        let writes = split_cycling(body.as_bytes(), sizes);
        let server = TestServer::start(move |n, _| match n {
            0 => Reply::events(writes.clone()),
            _ => Reply::status(204),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        support::run_to_end(
            &one_stream(dir.path(), &server.url("/"), ""),
            Duration::from_secs(20),
        )
        .await;

        let text = std::fs::read_to_string(out_file(dir.path())).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(
            lines.len(),
            expected_prefixes.len(),
            "chunk sizes {sizes:?}: {text}"
        );
        for (line, prefix) in lines.iter().zip(expected_prefixes) {
            assert!(
                line.starts_with(prefix),
                "chunk sizes {sizes:?}:\n got {line}\nwant {prefix}..."
            );
            let stamp = line[prefix.len()..]
                .strip_suffix("\"}\n")
                .expect("record ends with \"}\\n");
            assert!(stamp.ends_with('Z'), "received_at is UTC: {stamp}");
            humantime::parse_rfc3339(stamp).expect("received_at is RFC 3339");
        }
    }
}

#[tokio::test]
async fn reconnects_after_a_cut_and_resumes_from_the_last_complete_event() {
    let server = TestServer::start(|n, _| match n {
        0 => {
            let mut body = numbered(1, 3);
            body.extend_from_slice(b"id: 4\ndata: cut mid-event");
            Reply::events([body]).ending(support::Ending::Cut)
        }
        1 => Reply::events([numbered(4, 6)]),
        _ => Reply::status(204),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"headers = { Authorization = "Bearer ${TEST_TOKEN}", X-Client = "relay-test" }"#;
    support::run_to_end(
        &one_stream(dir.path(), &server.url("/feed"), extra),
        Duration::from_secs(10),
    )
    .await;

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].path, "/feed");
    assert_eq!(
        requests[0].header("last-event-id"),
        None,
        "nothing to resume from yet"
    );
    assert_eq!(
        requests[1].header("last-event-id"),
        Some("3"),
        "event 4 never completed"
    );
    assert_eq!(requests[2].header("last-event-id"), Some("6"));
    for request in &requests {
        assert_eq!(request.header("accept"), Some("text/event-stream"));
        assert_eq!(request.header("cache-control"), Some("no-cache"));
        assert_eq!(request.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(request.header("x-client"), Some("relay-test"));
    }
    let records = support::read_records(&out_file(dir.path()));
    assert_eq!(support::ids(&records), ["1", "2", "3", "4", "5", "6"]);
}

/// The time between the first and second request when the first answers `reply`.
async fn reconnect_gap(first: Reply, extra: &str) -> Duration {
    let server = TestServer::start(move |n, _| {
        if n == 0 {
            first.clone()
        } else {
            Reply::status(204)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    support::run_to_end(
        &one_stream(dir.path(), &server.url("/"), extra),
        Duration::from_secs(20),
    )
    .await;
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    requests[1].at - requests[0].at
}

#[tokio::test]
async fn the_server_retry_field_sets_the_reconnect_delay() {
    let without = reconnect_gap(Reply::events(["data: x\n\n"]), "").await;
    assert!(
        without < Duration::from_millis(400),
        "backoff alone is 10-20ms, took {without:?}"
    );
    let with = reconnect_gap(Reply::events(["retry: 700\ndata: x\n\n"]), "").await;
    assert!(
        with >= Duration::from_millis(700) && with < Duration::from_millis(1500),
        "retry: 700 should delay ~700ms, took {with:?}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured_on_503_and_429() {
    for status in [503, 429] {
        let gap = reconnect_gap(Reply::status(status).header("Retry-After", "1"), "").await;
        assert!(
            gap >= Duration::from_millis(1000) && gap < Duration::from_millis(2500),
            "HTTP {status} with Retry-After: 1 should wait ~1s, took {gap:?}"
        );
    }
}

#[tokio::test]
async fn an_idle_connection_is_dropped_after_idle_timeout() {
    let silent = Reply::events([": hello\n\n"]).ending(Ending::Hold(Duration::from_secs(30)));
    let gap = reconnect_gap(silent, r#"idle_timeout = "300ms""#).await;
    assert!(
        gap >= Duration::from_millis(300) && gap < Duration::from_secs(3),
        "idle_timeout 300ms, reconnected after {gap:?}"
    );
}

#[tokio::test]
async fn a_204_stops_the_stream_for_good() {
    let server = TestServer::start(|_, _| Reply::status(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    support::run_to_end(
        &one_stream(dir.path(), &server.url("/"), ""),
        Duration::from_secs(5),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.requests().len(), 1, "no reconnect after 204");
}

#[tokio::test]
async fn server_errors_and_wrong_content_types_are_retried() {
    let server = TestServer::start(|n, _| match n {
        0 => Reply::status(500),
        1 => Reply::events(["data: not sse\n\n"]).header("Content-Type", "text/plain"),
        2 => Reply::events(["data: no type\n\n"]).header("Content-Type", ""),
        3 => Reply::status(404),
        4 => Reply::events([numbered(1, 2)])
            .header("Content-Type", "text/event-stream; charset=utf-8"),
        _ => Reply::status(204),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    support::run_to_end(
        &one_stream(dir.path(), &server.url("/"), ""),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(server.requests().len(), 6);
    let records = support::read_records(&out_file(dir.path()));
    assert_eq!(
        support::ids(&records),
        ["1", "2"],
        "only the text/event-stream body is relayed"
    );
}

#[tokio::test]
async fn a_restart_resumes_from_the_saved_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(|_, _| {
        Reply::events([numbered(1, 5)]).ending(Ending::Hold(Duration::from_secs(30)))
    })
    .await;
    let config = one_stream(dir.path(), &server.url("/"), "");
    let shutdown = Shutdown::default();
    let daemon = tokio::spawn({
        let config = config.clone();
        let shutdown = shutdown.clone();
        async move { supervisor::run(&config, Checkpoints::OnDisk, shutdown).await }
    });
    support::wait_for_records(&out_file(dir.path()), 5, Duration::from_secs(10)).await;
    shutdown.drain.cancel();
    tokio::time::timeout(Duration::from_secs(5), daemon)
        .await
        .expect("drains and stops")
        .unwrap()
        .unwrap();
    let saved = std::fs::read_to_string(dir.path().join("state/checkpoints/s.json")).unwrap();
    assert!(saved.contains("\"last_event_id\":\"5\""), "{saved}");

    let server = TestServer::start(|n, _| match n {
        0 => Reply::events([numbered(6, 7)]),
        _ => Reply::status(204),
    })
    .await;
    let config = one_stream(
        dir.path(),
        &server.url("/"),
        r#"initial_last_event_id = "ignored-when-a-checkpoint-exists""#,
    );
    support::run_to_end(&config, Duration::from_secs(10)).await;
    assert_eq!(server.requests()[0].header("last-event-id"), Some("5"));
    let records = support::read_records(&out_file(dir.path()));
    assert_eq!(support::ids(&records), ["1", "2", "3", "4", "5", "6", "7"]);
}

#[tokio::test]
async fn initial_last_event_id_is_used_without_a_checkpoint() {
    let server = TestServer::start(|_, _| Reply::status(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_stream(
        dir.path(),
        &server.url("/"),
        r#"initial_last_event_id = "héllo-42""#,
    );
    support::run_to_end(&config, Duration::from_secs(5)).await;
    // A non-ASCII id goes out as its UTF-8 bytes; the test server reads them lossily.
    assert_eq!(
        server.requests()[0].header("last-event-id"),
        Some("héllo-42")
    );
}

#[tokio::test]
async fn sinks_take_only_their_inputs_and_event_types() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let body = "event: keep\nid: 1\ndata: a\n\nevent: skip\nid: 2\ndata: b\n\nevent: keep\nid: 3\ndata: c\n\n";
    let served_s = AtomicBool::new(false);
    let served_other = AtomicBool::new(false);
    let server = TestServer::start(move |_, request| {
        let served = if request.path == "/s" {
            &served_s
        } else {
            &served_other
        };
        if served.swap(true, Ordering::SeqCst) {
            Reply::status(204)
        } else {
            Reply::events([body])
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = config(&format!(
        r#"
data_dir = "{d}/state"
[streams.s]
url = "{url}s"
backoff_initial = "10ms"
[streams.other]
url = "{url}other"
backoff_initial = "10ms"
[sinks.kept]
type = "file"
inputs = ["s"]
event_types = ["keep"]
path = "{d}/kept.jsonl"
[sinks.all]
type = "file"
inputs = ["*"]
path = "{d}/all-{{stream}}.jsonl"
"#,
        url = server.url("/")
    ));
    support::run_to_end(&config, Duration::from_secs(10)).await;
    let kept = support::read_records(&dir.path().join("kept.jsonl"));
    assert_eq!(support::ids(&kept), ["1", "3"]);
    assert!(kept.iter().all(|r| r["stream"] == "s"));
    for stream in ["s", "other"] {
        let all = support::read_records(&dir.path().join(format!("all-{stream}.jsonl")));
        assert_eq!(support::ids(&all), ["1", "2", "3"], "stream {stream}");
        assert!(all.iter().all(|r| r["stream"] == stream));
    }
}

#[tokio::test]
async fn give_up_after_stops_a_stream_the_server_keeps_refusing() {
    // A 500 in between breaks the run of refusals and starts the count again.
    let server = TestServer::start(|n, _| match n {
        1 => Reply::status(500),
        _ => Reply::status(401),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_stream(dir.path(), &server.url("/"), "give_up_after = 3");
    support::run_to_end(&config, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.requests().len(),
        5,
        "401, 500, then three 401s in a row"
    );

    // Statuses outside the list never count.
    let server = TestServer::start(|n, _| match n {
        0..=4 => Reply::status(403),
        _ => Reply::status(204),
    })
    .await;
    let extra = "give_up_after = 2\ngive_up_statuses = [401]";
    support::run_to_end(
        &one_stream(dir.path(), &server.url("/"), extra),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(server.requests().len(), 6, "403 is retried until the 204");
}

#[test]
fn give_up_settings_are_validated() {
    for (extra, key) in [
        ("give_up_after = 0", "give_up_after"),
        ("give_up_statuses = [200]", "give_up_statuses"),
    ] {
        let source = format!("[streams.s]\nurl = \"http://127.0.0.1:1/\"\n{extra}\n");
        let err = Config::parse(Path::new("t.toml"), &source, |_| None).unwrap_err();
        assert_eq!(err.key.as_deref(), Some(key), "{err}");
        assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_only_block_moves_the_saved_checkpoint_after_sigterm() {
    // Event 1, then a block with an id and no data: no event, a new resume point.
    let server = TestServer::start(|_, _| {
        Reply::events(["id: 1\ndata: one\n\n", "id: 2\n\n"])
            .pause(Duration::from_millis(20))
            .ending(Ending::Hold(Duration::from_secs(30)))
    })
    .await;
    let state = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_in(state.path(), &server.url("/"), "");
    support::wait_for_records(&relay.out(), 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    let checkpoint =
        std::fs::read_to_string(state.path().join("checkpoints/s.json")).expect("a checkpoint");
    let saved: serde_json::Value = serde_json::from_str(&checkpoint).unwrap();
    assert_eq!(saved["last_event_id"], "2", "{checkpoint}");
    assert_eq!(relay.ids(), vec!["1"]);
}
