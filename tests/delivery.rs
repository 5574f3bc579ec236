//! No event lost: the real binary killed with SIGKILL at random moments, sinks
//! that fail and recover, a stalled sink under a fast server, and a broken
//! checkpoint. Every test here fails if a single event goes missing.

mod support;

use support::OutputWithin;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rand::Rng;
use support::NumberedServer;

fn spawn_relay(config: &Path, log: &Path) -> Child {
    support::spawn_run(config, log, &[])
}

/// Waits for the child to exit by itself.
async fn wait_exit(mut child: Child, within: Duration) -> std::process::ExitStatus {
    support::exit_within(&mut child, within)
        .await
        .unwrap_or_else(|| panic!("sse-relay did not finish within {within:?}"))
}

/// The ids in a JSON-lines file, in file order.
fn file_ids(path: &Path) -> Vec<u64> {
    support::read_records(path)
        .iter()
        .map(|r| {
            r["id"]
                .as_str()
                .expect("every event has an id")
                .parse()
                .unwrap()
        })
        .collect()
}

/// Checks a file against at-least-once, in order: every id 1..=total present,
/// no id skipped ahead, and backward jumps (replays after a restart) at most
/// `restarts`. Returns the number of duplicates.
fn check_delivery(path: &Path, total: u64, restarts: usize) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.ends_with('\n'),
        "{} ends with a torn line",
        path.display()
    );
    let ids = file_ids(path);
    assert_eq!(ids.first(), Some(&1), "{} starts at 1", path.display());
    let mut replays = 0;
    for pair in ids.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        assert!(
            after <= before + 1,
            "{}: id {after} follows {before}: events {}..{} skipped",
            path.display(),
            before + 1,
            after - 1
        );
        if after <= before {
            replays += 1;
        }
    }
    assert!(
        replays <= restarts,
        "{}: {replays} replays for {restarts} restarts",
        path.display()
    );
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for id in &ids {
        *counts.entry(*id).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=total)
        .filter(|id| !counts.contains_key(id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{}: lost events, e.g. {missing:?}",
        path.display()
    );
    assert_eq!(
        counts.len() as u64,
        total,
        "{}: ids beyond 1..={total}",
        path.display()
    );
    ids.len() - counts.len()
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
}

impl Setup {
    /// Streams `a` and `b` from `url`. Sink `all` takes both with periodic
    /// fsync; sink `a_only` takes `a` with an fsync per batch, so stream `a`'s
    /// checkpoint must follow the slower of two sinks.
    fn new(url: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = dir.path().join("sse-relay.toml");
        std::fs::write(
            &config,
            format!(
                r#"
data_dir = "{d}/state"
checkpoint_interval = "100ms"
shutdown_timeout = "5s"

[streams.a]
url = "{url}"
backoff_initial = "20ms"
backoff_max = "200ms"

[streams.b]
url = "{url}"
backoff_initial = "20ms"
backoff_max = "200ms"

[sinks.all]
type = "file"
inputs = ["*"]
path = "{d}/out/{{stream}}-all.jsonl"
fsync = "interval"
fsync_interval = "200ms"
queue_size = 256

[sinks.a_only]
type = "file"
inputs = ["a"]
path = "{d}/out/{{stream}}-a-only.jsonl"
fsync = "every_batch"
queue_size = 64
"#
            ),
        )
        .unwrap();
        let log = dir.path().join("relay.log");
        Setup { dir, config, log }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join("out").join(name)
    }

    fn outputs(&self) -> [PathBuf; 3] {
        [
            self.out("a-all.jsonl"),
            self.out("b-all.jsonl"),
            self.out("a-a-only.jsonl"),
        ]
    }

    fn checkpoint(&self, stream: &str) -> Option<String> {
        let text = std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("state/checkpoints/{stream}.json")),
        )
        .ok()?;
        let value: serde_json::Value =
            serde_json::from_str(&text).expect("checkpoint is valid JSON");
        Some(value["last_event_id"].as_str().unwrap().to_owned())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_event() {
    const TOTAL: u64 = 100_000;
    // About 5,000 events a second per stream: a run of kills ends long before
    // the server runs out of events.
    let server = NumberedServer::start(TOTAL, 25, Duration::from_millis(5)).await;
    let setup = Setup::new(&server.url());
    let mut rng = rand::rng();
    let started = Instant::now();
    let mut restarts = 0;
    while restarts < 20 && started.elapsed() < Duration::from_secs(40) {
        let mut child = spawn_relay(&setup.config, &setup.log);
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1200))).await;
        child.kill().unwrap(); // SIGKILL: no chance to flush or save anything
        child.wait().unwrap();
        restarts += 1;
    }
    let progress_before_final_run = file_ids(&setup.out("a-all.jsonl")).len();
    let status = wait_exit(
        spawn_relay(&setup.config, &setup.log),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        status.success(),
        "final run: {status:?}\n{}",
        setup.log_text()
    );

    let mut duplicates = Vec::new();
    for path in setup.outputs() {
        duplicates.push(check_delivery(&path, TOTAL, restarts));
    }
    assert_eq!(setup.checkpoint("a").as_deref(), Some("100000"));
    assert_eq!(setup.checkpoint("b").as_deref(), Some("100000"));
    eprintln!(
        "crash test: {restarts} SIGKILLs over {:.1}s, {TOTAL} events per stream, {progress_before_final_run} \
         records in a-all before the final run, lost 0, duplicates per file {duplicates:?}",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_stalls_the_stream_and_resumes_without_loss() {
    const TOTAL: u64 = 20_000;
    let server = NumberedServer::start(TOTAL, 10, Duration::from_millis(5)).await;
    let setup = Setup::new(&server.url());
    let out = setup.dir.path().join("out");
    let parked = setup.dir.path().join("out.parked");

    // Run normally for a while, then die hard.
    let mut child = spawn_relay(&setup.config, &setup.log);
    support::wait_for_records(&setup.out("a-all.jsonl"), 1000, Duration::from_secs(20)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // Make the output directory unusable: a regular file where it was. Even
    // root cannot open files below it.
    std::fs::rename(&out, &parked).unwrap();
    std::fs::write(&out, "not a directory").unwrap();
    let checkpoint_before = setup.checkpoint("a");
    let mut child = spawn_relay(&setup.config, &setup.log);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        setup.checkpoint("a"),
        checkpoint_before,
        "nothing was written, so the checkpoint must not move"
    );
    assert!(
        setup.log_text().contains("write failed"),
        "the failure is logged:\n{}",
        setup.log_text()
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Restart while the sink still fails, then repair it mid-run.
    let child = spawn_relay(&setup.config, &setup.log);
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::remove_file(&out).unwrap();
    std::fs::rename(&parked, &out).unwrap();
    let status = wait_exit(child, Duration::from_secs(90)).await;
    assert!(status.success(), "{status:?}\n{}", setup.log_text());
    for path in setup.outputs() {
        check_delivery(&path, TOTAL, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_stops_reading_and_memory_stays_bounded() {
    // An endless, as-fast-as-possible server.
    let server = NumberedServer::start(u64::MAX, 100, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("blocked"),
        "a file where the sink wants a directory",
    )
    .unwrap();
    let config = dir.path().join("stall.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{d}/state\"\n[streams.fast]\nurl = \"{}\"\n\
             [sinks.stalled]\ntype = \"file\"\ninputs = [\"*\"]\npath = \"{d}/blocked/{{stream}}.jsonl\"\nqueue_size = 1024\n",
            server.url()
        ),
    )
    .unwrap();
    let mut child = spawn_relay(&config, &dir.path().join("relay.log"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (bytes_early, rss_early) = (server.bytes_written(), support::rss_kib(child.id()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (bytes_late, rss_late) = (server.bytes_written(), support::rss_kib(child.id()));
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "stalled sink: server wrote {bytes_early} then {bytes_late} bytes; relay RSS {rss_early} KiB then {rss_late} KiB"
    );
    assert!(bytes_early > 0, "the server got to send something");
    assert!(
        bytes_late - bytes_early < 64 << 10,
        "the relay kept reading while its sink was stalled: {bytes_early} -> {bytes_late} bytes"
    );
    assert!(
        rss_late < 64 << 10,
        "RSS {rss_late} KiB with a 1024-event queue"
    );
    assert!(
        rss_late < rss_early + (4 << 10),
        "RSS grew from {rss_early} to {rss_late} KiB while stalled"
    );
    let checkpoint = dir.path().join("state/checkpoints/fast.json");
    assert!(
        !checkpoint.exists(),
        "nothing was acknowledged, so no checkpoint"
    );
}

#[tokio::test]
async fn drop_newest_sinks_lose_only_their_own_events_and_never_hold_the_checkpoint() {
    let server = NumberedServer::start(5_000, 50, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("blocked"), "not a directory").unwrap();
    let config = dir.path().join("lossy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{d}/state\"\ncheckpoint_interval = \"50ms\"\nshutdown_timeout = \"1s\"\n\
             [streams.s]\nurl = \"{}\"\nbackoff_initial = \"10ms\"\n\
             [sinks.kept]\ntype = \"file\"\ninputs = [\"s\"]\npath = \"{d}/kept.jsonl\"\n\
             [sinks.lossy]\ntype = \"file\"\ninputs = [\"s\"]\npath = \"{d}/blocked/lossy.jsonl\"\n\
             when_full = \"drop_newest\"\nqueue_size = 4\n",
            server.url()
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let child = spawn_relay(&config, &log);
    // The kept sink gets everything and the checkpoint reaches the end while
    // the lossy sink is still broken.
    support::wait_for_records(
        &dir.path().join("kept.jsonl"),
        5_000,
        Duration::from_secs(30),
    )
    .await;
    let checkpoint = dir.path().join("state/checkpoints/s.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&checkpoint)
        .unwrap_or_default()
        .contains("\"last_event_id\":\"5000\"")
    {
        assert!(
            Instant::now() < deadline,
            "the checkpoint did not reach 5000"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stream has ended (204), but the lossy sink still owes what it
    // holds: the daemon waits for it until a signal says stop, and then
    // exits non-zero saying those events are lost for that sink.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "it must not exit while a sink owes events"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_exit(child, Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "{status:?}");
    check_delivery(&dir.path().join("kept.jsonl"), 5_000, 0);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("sink lossy queue is full: dropped event"),
        "{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("sink=lossy") && l.contains("never acknowledged"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("lost for it") && !line.contains("sends them again"),
        "{line}"
    );
}

/// Starts the daemon (one stream `s`, state in a temporary directory) after
/// `spoil` has put something in place of its checkpoint, and returns its
/// exit code and stderr once it refuses to start.
fn start_with_spoiled_checkpoint(spoil: impl FnOnce(&Path)) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{d}/state\"\n[streams.s]\nurl = \"http://127.0.0.1:9/\"\n"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("state/checkpoints")).unwrap();
    spoil(&dir.path().join("state/checkpoints/s.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_sse-relay"))
        .args(["run", "--config"])
        .arg(&config)
        .output_within(Duration::from_secs(30));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_corrupt_checkpoint_stops_start_up_with_the_way_out() {
    let (code, stderr) = start_with_spoiled_checkpoint(|checkpoint| {
        std::fs::write(checkpoint, "{\"stream\":\"s\",\"last_ev").unwrap()
    });
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("checkpoints/s.json") && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert!(stderr.contains("delete it"), "{stderr}");
}

#[tokio::test]
async fn an_unreadable_checkpoint_stops_start_up_naming_it_instead_of_starting_over() {
    // A directory where the checkpoint file belongs: it exists, and cannot
    // be read; starting from scratch would replay or skip the stream.
    let (code, stderr) =
        start_with_spoiled_checkpoint(|checkpoint| std::fs::create_dir(checkpoint).unwrap());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("checkpoints/s.json") && stderr.contains("cannot be read"),
        "{stderr}"
    );
}
