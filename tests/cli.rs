//! The `sse-relay` binary as an operator runs it: `check`, `tail`, `run` with
//! signals, and the errors it prints.

mod support;

use support::OutputWithin;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{numbered, Ending, Reply, TestServer};

fn sse_relay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sse-relay"));
    command.env_remove("RUST_LOG");
    command
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"data_dir = "/tmp/sse-relay-test-state"

[streams.wiki]
url = "https://user:hunter2@stream.example.org/v2/recentchange?access_token=abc"
headers = { Authorization = "Bearer ${CLI_TEST_TOKEN}" }

[sinks.console]
type = "stdout"
inputs = ["*"]
"#;

#[test]
fn check_summarises_without_showing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let out = sse_relay()
        .args(["check", "--config"])
        .arg(&path)
        .env("CLI_TEST_TOKEN", "t0psecret")
        .output_within(Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("wiki -> console"), "{stdout}");
    for secret in ["t0psecret", "hunter2", "abc"] {
        assert!(
            !stdout.contains(secret),
            "check printed secret {secret}: {stdout}"
        );
    }
}

#[test]
fn check_rejects_a_bad_config_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = GOOD.replace("[sinks.console]", "bogus_key = 1\n\n[sinks.console]");
    let path = write(dir.path(), "bad.toml", &bad);
    let out = sse_relay()
        .args(["check", "--config"])
        .arg(&path)
        .env("CLI_TEST_TOKEN", "x")
        .output_within(Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key `bogus_key`"), "{stderr}");
    assert!(stderr.contains("bad.toml:7:1"), "{stderr}");
    assert!(stderr.contains("[streams.wiki]"), "{stderr}");
    assert!(stderr.contains("help: expected one of"), "{stderr}");
}

#[test]
fn check_names_an_unset_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "env.toml", GOOD);
    let out = sse_relay()
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("CLI_TEST_TOKEN")
        .output_within(Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CLI_TEST_TOKEN") && stderr.contains("env.toml:5:"),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = sse_relay()
        .args(["run", "--config", "/nonexistent/sse-relay.toml"])
        .output_within(Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/sse-relay.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tail_prints_records_and_data() {
    let server = TestServer::start(|n, request| match n {
        0 => {
            assert_eq!(request.header("last-event-id"), Some("41"));
            assert_eq!(request.header("x-api-key"), Some("k"));
            Reply::events([numbered(42, 43)])
        }
        _ => Reply::status(204),
    })
    .await;
    let url = server.url("/");
    let out = tokio::task::spawn_blocking(move || {
        sse_relay()
            .args(["tail", &url, "-H", "X-Api-Key: k", "--last-event-id", "41"])
            .output_within(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(
            r#"{"stream":"tail","id":"42","event":"message","data":"event 42","received_at":""#
        ),
        "{}",
        lines[0]
    );

    let server = TestServer::start(|n, _| match n {
        0 => Reply::events(["data: a\ndata: b\n\ndata: c\n\n"]),
        _ => Reply::status(204),
    })
    .await;
    let url = server.url("/");
    let out = tokio::task::spawn_blocking(move || {
        sse_relay()
            .args(["tail", &url, "--format", "data"])
            .output_within(Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "a\nb\nc\n");
}

#[tokio::test]
async fn sigterm_drains_saves_the_checkpoint_and_exits_zero() {
    let server = TestServer::start(|_, _| {
        Reply::events([numbered(1, 3)]).ending(Ending::Hold(Duration::from_secs(60)))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let path = write(
        dir.path(),
        "run.toml",
        &format!(
            "data_dir = \"{d}/state\"\ncheckpoint_interval = \"1h\"\n[streams.s]\nurl = \"{}\"\n\
             [sinks.f]\ntype = \"file\"\ninputs = [\"s\"]\npath = \"{d}/out.jsonl\"\n",
            server.url("/")
        ),
    );
    let child = sse_relay()
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_for_records(&dir.path().join("out.jsonl"), 3, Duration::from_secs(10)).await;
    // kill(1) sends the signal without a libc dependency in the tests.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        status.status.success(),
        "exit {:?}: {}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );
    // The interval is an hour: only the shutdown path can have written this.
    let saved = std::fs::read_to_string(dir.path().join("state/checkpoints/s.json")).unwrap();
    assert!(saved.contains("\"last_event_id\":\"3\""), "{saved}");
}

#[tokio::test]
async fn tail_stops_when_its_reader_goes_away() {
    let server = support::NumberedServer::start(u64::MAX, 1, Duration::from_millis(5)).await;
    let url = server.url();
    let result = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader};
        let mut child = sse_relay()
            .args(["tail", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        drop(lines); // `| head -n 1`: the reader exits
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (first, status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("tail kept running after its reader went away");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(result.0.contains("\"id\":\"1\""), "{}", result.0);
    assert!(result.1.success(), "{:?}", result.1);
}

#[test]
fn man_page_completions_and_version_come_from_the_cli_definitions() {
    let run = |args: &[&str]| {
        let output = support::output_within(sse_relay().args(args), Duration::from_secs(20));
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let man = run(&["man"]);
    assert!(man.contains(".TH sse-relay 1"), "{man}");
    for subcommand in ["run", "check", "tail", "demo"] {
        assert!(man.contains(subcommand), "{subcommand} not in the man page");
    }
    assert!(
        run(&["completions", "bash"]).contains("_sse-relay()")
            || run(&["completions", "bash"]).contains("_sse__relay()")
    );
    assert!(run(&["completions", "zsh"]).contains("#compdef sse-relay"));
    assert!(run(&["completions", "fish"]).contains("complete -c sse-relay"));
    let version = run(&["--version"]);
    assert!(
        version.starts_with(concat!("sse-relay ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // Built from a git checkout here: the commit is named.
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
        assert!(version.contains("(commit "), "{version}");
    }
}
