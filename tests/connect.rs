//! `sse-relay check --connect` against real loopback servers: a healthy
//! stream (with `auth`), a 401 and a wrong content type, reported on one
//! line each; the exit status says whether all would run; no checkpoint is
//! written.

mod support;

use std::time::Duration;

use support::{Ending, Reply, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_reports_each_stream_and_fails_when_one_would_not_run() {
    let healthy = TestServer::start(|_, request| {
        if request.header("authorization") != Some("Bearer probe-token-77") {
            return Reply::status(401);
        }
        Reply::events([
            ": hello\n\n",
            "id: 41\ndata: first\n\n",
            "id: 42\ndata: second\n\n",
        ])
        .pause(Duration::from_millis(20))
        .ending(Ending::Hold(Duration::from_secs(30)))
    })
    .await;
    let refusing = TestServer::start(|_, _| Reply::status(401)).await;
    let html = TestServer::start(|_, _| {
        Reply::events(["<html></html>"]).header("Content-Type", "text/html")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "probe-token-77\n").unwrap();
    let state = dir.path().join("state");
    let write = |streams: &str| {
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!("data_dir = \"{}\"\n{streams}", state.display()),
        )
        .unwrap();
        config
    };
    let healthy_table = format!(
        "[streams.healthy]\nurl = \"{}\"\n[streams.healthy.auth]\ntype = \"bearer_file\"\npath = \"{}\"\n",
        healthy.url("/events?key=sekrit"),
        token.display()
    );
    let run = |config: &std::path::Path| {
        let output = support::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
                .args(["check", "--connect", "--connect-timeout", "5s", "--config"])
                .arg(config),
            Duration::from_secs(30),
        );
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let config = write(&healthy_table);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || run(&config))
        .await
        .unwrap();
    eprintln!("{stdout}");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("healthy") && l.contains(" ok "))
        .expect(&stdout);
    assert!(line.contains("HTTP 200 text/event-stream"), "{line}");
    assert!(
        line.contains("first event") && line.contains("id \"41\""),
        "{line}"
    );
    assert!(
        line.contains("key=REDACTED") && !stdout.contains("sekrit"),
        "{line}"
    );
    assert!(!stdout.contains("probe-token-77") && !stderr.contains("probe-token-77"));

    let config = write(&format!(
        "{healthy_table}[streams.refusing]\nurl = \"{}\"\n[streams.html]\nurl = \"{}\"\n",
        refusing.url("/events"),
        html.url("/events")
    ));
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || run(&config))
        .await
        .unwrap();
    eprintln!("{stdout}");
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("some streams failed to connect"),
        "{stderr}"
    );
    let report = stdout.split("connect (").nth(1).expect(&stdout);
    assert!(report.contains("healthy          ok"), "{report}");
    let refused = report
        .lines()
        .skip_while(|l| !l.contains("refusing"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        refused.contains("FAILED") && refused.contains("HTTP 401"),
        "{refused}"
    );
    let wrong = report
        .lines()
        .skip_while(|l| !l.contains("html"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        wrong.contains("FAILED") && wrong.contains("text/html"),
        "{wrong}"
    );
    assert!(wrong.contains("expected text/event-stream"), "{wrong}");
    assert!(
        !state.join("checkpoints").exists(),
        "check --connect writes no checkpoint"
    );
}
