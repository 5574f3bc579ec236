//! Subscriptions beyond a plain GET, over real sockets: POST with a body on
//! every connection (and through redirects, by the Fetch rules), resume
//! through a query parameter across hang-ups and a SIGKILL, and the gaps and
//! regressions `id_gap_check` sees in a server's ids.

mod support;

use std::time::{Duration, Instant};

use support::relay::{log_lines, Relay};
use support::{Ending, Reply, TestServer};

fn events(from: u64, to: u64) -> Vec<String> {
    (from..=to)
        .map(|n| format!("id: {n}\ndata: event {n}\n\n"))
        .collect()
}

fn range(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(|n| n.to_string()).collect()
}

fn last_id(request: &support::Request) -> u64 {
    request
        .header("last-event-id")
        .and_then(|id| id.parse().ok())
        .unwrap_or(0)
}

const QUERY: &str = r#"{"query":"subscription { orderPlaced { id total } }"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_subscription_sends_its_body_on_every_connection_with_last_event_id() {
    let server = TestServer::start(|_, request| {
        let from = last_id(request) + 1;
        if from > 15 {
            return Reply::status(204);
        }
        Reply::events(events(from, from + 4))
    })
    .await;
    let mut relay = Relay::start(
        &server.url("/graphql/stream"),
        &format!(
            "method = \"POST\"\nbody = '{QUERY}'\nheaders = {{ Content-Type = \"application/json\" }}\n"
        ),
    );
    relay.wait_for_exit(Duration::from_secs(20)).await;
    assert_eq!(relay.ids(), range(1, 15));
    let requests = server.requests();
    assert_eq!(requests.len(), 4, "three connections and the 204");
    for (n, request) in requests.iter().enumerate() {
        assert_eq!(request.method, "POST", "request {n}");
        assert_eq!(request.body, QUERY.as_bytes(), "request {n}");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("accept"), Some("text/event-stream"));
    }
    assert_eq!(
        support::relay::last_event_ids(&requests),
        vec![None, Some("5"), Some("10"), Some("15")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_keep_a_post_through_307_and_308_and_turn_it_into_a_get_on_303() {
    for (status, method, body) in [
        (307, "POST", true),
        (308, "POST", true),
        (303, "GET", false),
    ] {
        let server = TestServer::start(move |_, request| {
            if request.path == "/subscribe" {
                return Reply::status(status).header("Location", "/events");
            }
            if last_id(request) >= 3 {
                return Reply::status(204);
            }
            Reply::events(events(1, 3))
        })
        .await;
        let mut relay = Relay::start(
            &server.url("/subscribe"),
            &format!(
                "method = \"POST\"\nbody = '{QUERY}'\nheaders = {{ Content-Type = \"application/json\" }}\n"
            ),
        );
        relay.wait_for_exit(Duration::from_secs(20)).await;
        assert_eq!(relay.ids(), range(1, 3), "{status}");
        let requests = server.requests();
        let followed: Vec<_> = requests.iter().filter(|r| r.path == "/events").collect();
        assert!(!followed.is_empty(), "{status}: {requests:?}");
        for request in followed {
            assert_eq!(request.method, method, "after {status}");
            if body {
                assert_eq!(request.body, QUERY.as_bytes(), "after {status}");
                assert_eq!(request.header("content-type"), Some("application/json"));
            } else {
                assert!(request.body.is_empty(), "after {status}");
                assert_eq!(request.header("content-length"), None, "after {status}");
                assert_eq!(request.header("content-type"), None, "after {status}");
            }
        }
        for request in requests.iter().filter(|r| r.path == "/subscribe") {
            assert_eq!(request.method, "POST");
            assert_eq!(request.body, QUERY.as_bytes());
        }
    }
}

/// A Mercure-like hub that ignores `Last-Event-ID` and resumes only from
/// the `lastEventID` query parameter, hanging up every 10 events.
fn query_hub(total: u64) -> impl Fn(usize, &support::Request) -> Reply + Send + Sync {
    move |_, request| {
        let from = request
            .path
            .split_once('?')
            .and_then(|(_, query)| {
                query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("lastEventID="))
            })
            .and_then(|id| id.parse::<u64>().ok())
            .map_or(1, |id| id + 1);
        if from > total {
            return Reply::status(204);
        }
        Reply::events(events(from, (from + 9).min(total))).pause(Duration::from_millis(2))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_resumes_only_from_a_query_parameter_loses_nothing_across_hangups_and_sigkill(
) {
    let total = 400;
    let server = TestServer::start(query_hub(total)).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let state = dir.path().join("state");
    let url = format!("{}?topic=orders", server.url("/hub"));
    let extra = "last_event_id_query = \"lastEventID\"\nid_gap_check = \"sequential\"\n";
    let start = || {
        Relay::launch_full(
            &url,
            "shutdown_timeout = \"5s\"",
            extra,
            &[],
            Some(&out),
            Some(&state),
        )
    };
    let first = start();
    support::wait_for_records(&out, 150, Duration::from_secs(20)).await;
    support::signal(first.pid(), "KILL");
    let first_log = first.log_text();
    drop(first);
    let mut second = start();
    let log = second.wait_for_exit(Duration::from_secs(30)).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut previous = 0u64;
    for id in second.ids() {
        let id: u64 = id.parse().unwrap();
        // A replay after SIGKILL goes back, never skips ahead.
        assert!(id <= previous + 1, "{id} after {previous}: events skipped");
        previous = id;
        seen.insert(id);
    }
    assert_eq!(seen.len() as u64, total, "every event at least once");
    let requests = server.requests();
    // Every request after the first (the restart's first included: it
    // resumes from the checkpoint) says where to resume, in the URL and the
    // header alike, and keeps the configured parameters.
    for request in requests.iter().skip(1) {
        let (_, query) = request.path.split_once('?').expect("a query");
        assert!(query.starts_with("topic=orders&lastEventID="), "{query}");
        let in_query: u64 = query.rsplit('=').next().unwrap().parse().unwrap();
        assert_eq!(
            request.header("last-event-id"),
            Some(in_query.to_string().as_str())
        );
    }
    assert!(
        log_lines(&log, "connected to")
            .iter()
            .any(|l| l.contains("lastEventID=")),
        "the logged URL shows the id:\n{log}"
    );
    for text in [&first_log, &log] {
        assert!(log_lines(text, "id gap").is_empty(), "{text}");
        assert!(log_lines(text, "id regression").is_empty(), "{text}");
    }
}

/// Scrapes one metric of the relay's `/metrics`.
async fn metric(port: u16, name_and_labels: &str) -> f64 {
    let text = support::http_get(port, "/metrics").await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{text}"))
}

/// Runs a relay with `id_gap_check = mode` against connections that serve
/// the given id ranges in turn (the last one held open), and returns its
/// log and `(gaps, missing, regressions, unparsable)`.
async fn gap_run(mode: &str, connections: Vec<Vec<String>>) -> (String, [f64; 4]) {
    let count = connections.len();
    let server = TestServer::start(move |n, _| match connections.get(n) {
        Some(writes) if n + 1 == count => {
            Reply::events(writes.clone()).ending(Ending::Hold(Duration::from_secs(30)))
        }
        Some(writes) => Reply::events(writes.clone()),
        None => Reply::status(204),
    })
    .await;
    let port = support::free_port();
    let mut relay = Relay::start_with(
        &server.url("/events"),
        &format!("shutdown_timeout = \"5s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\""),
        &format!("id_gap_check = \"{mode}\"\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.requests().len() < count {
        assert!(Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last connection's events are in once the file has them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let label = "{stream=\"s\"}";
    let counts = [
        metric(port, &format!("sse_relay_stream_id_gaps_total{label}")).await,
        metric(port, &format!("sse_relay_stream_missing_ids_total{label}")).await,
        metric(
            port,
            &format!("sse_relay_stream_id_regressions_total{label}"),
        )
        .await,
        metric(
            port,
            &format!("sse_relay_stream_ids_unparsable_total{label}"),
        )
        .await,
    ];
    let log = relay.stop().await;
    (log, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_skips_five_ids_on_reconnect_gives_one_warning_and_five_missing() {
    let (log, counts) = gap_run("sequential", vec![events(1, 5), events(11, 15)]).await;
    assert_eq!(counts, [1.0, 5.0, 0.0, 0.0], "{log}");
    let warnings = log_lines(&log, "id gap");
    assert_eq!(warnings.len(), 1, "{log}");
    let line = warnings[0];
    assert!(line.contains("WARN") && line.contains("stream=s"), "{line}");
    assert!(
        line.contains("expected id 6, received 11: 5 id(s) missing"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_replays_from_an_older_id_counts_regressions_and_odd_ids_are_skipped() {
    let mut second = events(6, 8);
    second.push("id: not-a-number\ndata: odd\n\n".to_owned());
    second.extend(events(9, 12));
    let (log, counts) = gap_run("sequential", vec![events(1, 10), second]).await;
    // 6 after 10 is one regression; 7..12 then follow in order, the odd id
    // is counted and skipped.
    assert_eq!(counts, [0.0, 0.0, 1.0, 1.0], "{log}");
    let line = log_lines(&log, "id regression")[0];
    assert!(line.contains("id 6 after 10"), "{line}");

    let (log, counts) = gap_run(
        "increasing",
        vec![events(1, 3), events(10, 12), events(5, 6)],
    )
    .await;
    assert_eq!(
        counts,
        [0.0, 0.0, 1.0, 0.0],
        "skips are fine when increasing: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_id_gap_check_no_counter_exists() {
    let server = TestServer::start(|_, _| {
        Reply::events(events(1, 3)).ending(Ending::Hold(Duration::from_secs(30)))
    })
    .await;
    let port = support::free_port();
    let mut relay = Relay::start_with(
        &server.url("/events"),
        &format!("shutdown_timeout = \"5s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\""),
        "",
    );
    support::wait_for_records(&relay.out(), 3, Duration::from_secs(20)).await;
    let text = support::http_get(port, "/metrics").await.unwrap();
    assert!(!text.contains("sse_relay_stream_id_gaps_total{"), "{text}");
    assert!(
        text.contains("sse_relay_stream_events_total{stream=\"s\"} 3"),
        "{text}"
    );
    relay.stop().await;
}
