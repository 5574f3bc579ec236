//! GraphQL over SSE against the protocol's reference server: the npm package
//! `graphql-sse` (with `graphql`) under Node, from `tests/graphql/` (the
//! README's test command installs it). The relay opens the subscription with
//! a POST and its query as the body; the server's `next` messages arrive in
//! order as records with the GraphQL payload in `data`.
//!
//! Without Node or the packages the test fails, saying what to install: it
//! never passes silently.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::relay::Relay;

/// The reference server; killed when dropped.
struct GraphqlServer {
    child: Child,
    port: u16,
}

impl GraphqlServer {
    fn start() -> GraphqlServer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphql");
        assert!(
            dir.join("node_modules/graphql-sse").is_dir(),
            "tests/graphql/node_modules is missing: run tools/test.sh (the README's test \
             command), or `npm ci --prefix tests/graphql`"
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start node ({e}): install Node.js (apt-get install nodejs)")
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the graphql-sse server did not say it was listening within 20 s");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
        GraphqlServer { child, port }
    }
}

impl Drop for GraphqlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_sse_next_messages_arrive_in_order_with_their_payload() {
    let server = GraphqlServer::start();
    let query = r#"{"query":"subscription { ticks(count: 12) { n label } }"}"#;
    let mut relay = Relay::start(
        &format!("http://127.0.0.1:{}/graphql/stream", server.port),
        // The subscription completes after its ticks; a long backoff keeps
        // the relay from opening a second one before the test stops it.
        &format!(
            "method = \"POST\"\nbody = '{query}'\nheaders = {{ Content-Type = \"application/json\" }}\n\
             backoff_initial = \"30s\"\nbackoff_max = \"30s\"\n"
        ),
    );
    let records = support::wait_for_records(&relay.out(), 13, Duration::from_secs(20)).await;
    let log = relay.stop().await;
    let next: Vec<&serde_json::Value> = records.iter().filter(|r| r["event"] == "next").collect();
    assert_eq!(next.len(), 12, "{records:?}\n{log}");
    for (n, record) in (1..).zip(&next) {
        let payload: serde_json::Value =
            serde_json::from_str(record["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"data": {"ticks": {"n": n, "label": format!("tick {n}")}}}),
            "record {n}"
        );
        assert_eq!(record["stream"], "s");
    }
    assert_eq!(
        records.last().unwrap()["event"],
        "complete",
        "the subscription's end is relayed too"
    );
    assert!(log.contains("connected to"), "{log}");
}
