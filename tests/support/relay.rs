//! The real binary under test: `sse-relay run` with one stream `s` into a
//! JSON-lines file sink, its log in a file, and helpers to read both.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Relay {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
    out: PathBuf,
}

impl Relay {
    /// Starts `sse-relay run` with one stream `s` from `url` (plus `extra` keys)
    /// into a JSON-lines file sink; stderr goes to a log file.
    pub fn start(url: &str, extra: &str) -> Relay {
        Relay::start_with(url, "shutdown_timeout = \"5s\"", extra)
    }

    /// As [`Relay::start`], with `top` as the top-level keys of the config.
    pub fn start_with(url: &str, top: &str, extra: &str) -> Relay {
        Relay::launch(url, top, extra, &[])
    }

    /// As [`Relay::start`], logging everything (`--log-level trace`).
    pub fn start_traced(url: &str, extra: &str) -> Relay {
        Relay::launch(
            url,
            "shutdown_timeout = \"5s\"",
            extra,
            &["--log-level", "trace"],
        )
    }

    /// As [`Relay::start`], writing records to `out`.
    pub fn start_into(url: &str, extra: &str, out: &Path) -> Relay {
        Relay::launch_full(
            url,
            "shutdown_timeout = \"5s\"",
            extra,
            &[],
            Some(out),
            None,
        )
    }

    /// As [`Relay::start`], with `data_dir` as its state directory.
    pub fn start_in(data_dir: &Path, url: &str, extra: &str) -> Relay {
        Relay::launch_full(
            url,
            "shutdown_timeout = \"5s\"",
            extra,
            &[],
            None,
            Some(data_dir),
        )
    }

    /// As [`Relay::start_with`], with more arguments for the binary.
    pub fn launch(url: &str, top: &str, extra: &str, args: &[&str]) -> Relay {
        Relay::launch_full(url, top, extra, args, None, None)
    }

    /// As [`Relay::start`], with more arguments for the binary and these
    /// variables set in its environment.
    pub fn start_with_env(url: &str, extra: &str, args: &[&str], envs: &[(&str, &str)]) -> Relay {
        Relay::launch_env(
            url,
            "shutdown_timeout = \"5s\"",
            extra,
            args,
            None,
            None,
            envs,
        )
    }

    /// Every choice: records into `out` and state in `data_dir` (both in
    /// the relay's own temporary directory if not given).
    pub fn launch_full(
        url: &str,
        top: &str,
        extra: &str,
        args: &[&str],
        out: Option<&Path>,
        data_dir: Option<&Path>,
    ) -> Relay {
        Relay::launch_env(url, top, extra, args, out, data_dir, &[])
    }

    fn launch_env(
        url: &str,
        top: &str,
        extra: &str,
        args: &[&str],
        out: Option<&Path>,
        data_dir: Option<&Path>,
        envs: &[(&str, &str)],
    ) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let out = out.map_or_else(|| dir.path().join("out.jsonl"), Path::to_owned);
        let data_dir = data_dir.map_or_else(|| dir.path().join("state"), Path::to_owned);
        let (o, s) = (out.display(), data_dir.display());
        let config = dir.path().join("sse-relay.toml");
        let backoff = if extra.contains("backoff_") {
            ""
        } else {
            "backoff_initial = \"10ms\"\nbackoff_max = \"20ms\""
        };
        std::fs::write(
            &config,
            format!(
                r#"
data_dir = "{s}"
checkpoint_interval = "50ms"
{top}

[streams.s]
url = "{url}"
{backoff}
{extra}

[sinks.out]
type = "file"
inputs = ["*"]
path = "{o}"
"#
            ),
        )
        .unwrap();
        let log = dir.path().join("relay.log");
        let child = Command::new(env!("CARGO_BIN_EXE_sse-relay"))
            .args(args)
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env("NO_COLOR", "1")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Relay {
            dir,
            child: Some(child),
            log,
            out,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Panics with the log if the relay has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "sse-relay exited early with {status:?}:\n{}",
                self.log_text()
            );
        }
    }

    pub fn out(&self) -> PathBuf {
        self.out.clone()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        super::read_records(&self.out())
    }

    /// `(id, data)` of every record, in file order.
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        self.records()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().map(str::to_owned),
                    r["data"].as_str().expect("data is a string").to_owned(),
                )
            })
            .collect()
    }

    pub fn ids(&self) -> Vec<String> {
        self.records()
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("null").to_owned())
            .collect()
    }

    /// Waits for the relay to stop by itself (every stream told 204), then
    /// checks it exited cleanly and did not panic. Returns the log.
    pub async fn wait_for_exit(&mut self, within: Duration) -> String {
        let mut child = self.child.take().expect("running");
        let Some(status) = super::exit_within(&mut child, within).await else {
            panic!(
                "sse-relay did not stop within {within:?}; log:\n{}",
                self.log_text()
            );
        };
        let log = self.log_text();
        assert!(status.success(), "sse-relay exited with {status:?}:\n{log}");
        assert_no_panic(&log);
        log
    }

    /// SIGTERM, then as [`Relay::wait_for_exit`].
    pub async fn stop(&mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_for_exit(Duration::from_secs(10)).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "the relay panicked:\n{log}");
}

/// Asserts the log holds a line containing every one of `parts`, and returns it.
#[track_caller]
pub fn log_line<'a>(log: &'a str, parts: &[&str]) -> &'a str {
    log.lines()
        .find(|line| parts.iter().all(|p| line.contains(p)))
        .unwrap_or_else(|| panic!("no log line with all of {parts:?} in:\n{log}"))
}

/// The delay a "reconnecting in NNNms" log line says, in milliseconds.
#[track_caller]
pub fn reconnect_delay_ms(line: &str) -> u64 {
    line.split("reconnecting in ")
        .nth(1)
        .and_then(|rest| rest.split("ms ").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no reconnect delay in milliseconds: {line}"))
}

/// The log lines containing `part`.
pub fn log_lines<'a>(log: &'a str, part: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(part)).collect()
}

pub fn data_of(events: &[(Option<String>, String)]) -> Vec<&str> {
    events.iter().map(|(_, d)| d.as_str()).collect()
}

pub fn last_event_ids(requests: &[super::Request]) -> Vec<Option<&str>> {
    requests.iter().map(|r| r.header("last-event-id")).collect()
}
