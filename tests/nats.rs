//! The NATS JetStream sink, shared checkpoints and failover, against a real
//! `nats-server -js`: records land in order with their headers, a replay after
//! SIGKILL is deduplicated, a NATS restart loses nothing, and instances split
//! streams and take over a killed one's within the lease TTL.
//!
//! The server: `NATS_URL` if set (.ci/run starts one), else a `nats-server`
//! this file starts on a free loopback port with a temporary store. Without
//! either the tests fail, saying so: they never pass silently. The restart
//! test always starts its own server, since it kills it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use support::NumberedServer;

/// A `nats-server -js` started by a test; killed when dropped.
struct NatsServer {
    child: Child,
    port: u16,
    store: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on a free port, trying another port if the chosen one
    /// was taken between choosing and binding.
    fn start() -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let log = dir.path().join("nats-server.log");
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn_nats(port, &store, &log);
            if wait_ready(&mut child, port, &log) {
                return NatsServer {
                    child,
                    port,
                    store,
                    log,
                    _dir: dir,
                };
            }
        }
        panic!(
            "nats-server did not start on any of 5 ports:\n{}",
            read_log(&log)
        );
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server the way an operator's restart does (SIGTERM): it
    /// writes out what it has acknowledged. A SIGKILL can lose acknowledged
    /// messages still in nats-server 2.9's write-behind buffers, a JetStream
    /// durability window the relay cannot see or close.
    fn stop(&mut self) {
        support::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }

    /// Starts again on the same port with the same store. The port can be
    /// briefly held by a closing socket; the start is retried for a while.
    fn restart(&mut self) {
        for _ in 0..10 {
            self.child = spawn_nats(self.port, &self.store, &self.log);
            if wait_ready(&mut self.child, self.port, &self.log) {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "nats-server did not start again on port {}:\n{}",
            self.port,
            read_log(&self.log)
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `nats-server -js` on `port`, appending its log to `log`.
fn spawn_nats(port: u16, store: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start nats-server ({e}): these tests need NATS with JetStream. \
                 Set NATS_URL to a running `nats-server -js`, or install nats-server \
                 (apt-get install nats-server)"
            )
        })
}

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A free port for a nats-server, below the kernel's ephemeral range
/// (32768 and up). A test that stops and restarts its server on the same port
/// must not find it taken meanwhile by a socket some other test bound to port
/// 0; the relay would then reconnect to that other server.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Start where this process's id points, so parallel test binaries rarely meet.
    let start = (std::process::id() % 600) as u16 * 20;
    loop {
        let port = 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until `child` answers on `port` as a NATS server does (its `INFO`
/// line): a bare TCP connect is not proof, since it can reach some other
/// listener, or even connect the socket to itself. False if the server
/// exited (a port taken, say); panics with its log if it neither exits nor
/// answers within 15 s.
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if answers_as_nats(port) {
            return true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "nats-server did not answer on {port} within 15 s:\n{}",
                read_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a NATS server greets a connection to `port` with its `INFO` line.
fn answers_as_nats(port: u16) -> bool {
    use std::io::Read;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut socket) = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1))
    else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    let mut greeting = [0u8; 5];
    socket.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}

/// The server shared by the tests that do not kill it: `NATS_URL`, or one
/// started here under a shell that exits with it, and that kills it and
/// removes its store when this process exits (the shell's stdin, held open by
/// this process, closes then). The shell hands its stdin to the background
/// reader as fd 3: a background job's own stdin is /dev/null.
fn shared_url() -> String {
    static SHARED: OnceLock<(String, Option<std::sync::Mutex<Child>>)> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("NATS_URL") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => {
                let dir = tempfile::tempdir().unwrap().keep();
                let log = dir.join("nats-server.log");
                for _ in 0..5 {
                    let port = free_port();
                    let script = format!(
                        "command -v nats-server >/dev/null || exit 127; exec 3<&0; \
                         nats-server -js -a 127.0.0.1 -p {port} -sd '{dir}/store' \
                         >/dev/null 2>>'{dir}/nats-server.log' & n=$!; \
                         (read _ <&3; kill $n; rm -rf '{dir}') & wait $n",
                        dir = dir.display(),
                    );
                    let mut child = Command::new("sh")
                        .args(["-c", &script])
                        .stdin(Stdio::piped())
                        .spawn()
                        .unwrap();
                    if wait_ready(&mut child, port, &log) {
                        return (
                            format!("nats://127.0.0.1:{port}"),
                            Some(std::sync::Mutex::new(child)),
                        );
                    }
                    if child.wait().unwrap().code() == Some(127) {
                        panic!(
                            "NATS_URL is not set and nats-server is not installed: these tests \
                             need NATS with JetStream (apt-get install nats-server, or set NATS_URL)"
                        );
                    }
                }
                panic!("nats-server did not start on any of 5 ports:\n{}", read_log(&log));
            }
        })
        .0
        .clone()
}

/// A name no other test (or earlier run against the same server) uses.
fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{nanos}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn wait_exit(child: &mut Child, within: Duration, log: &Path) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "sse-relay failed: {status}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "sse-relay did not finish within {within:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message as JetStream stores it.
#[derive(Debug)]
struct Stored {
    subject: String,
    msg_id: Option<String>,
    stream: String,
    event: String,
    id: u64,
    record: serde_json::Value,
}

/// A JetStream context on the server at `url`, connecting within 10 s.
async fn jetstream_at(url: &str) -> jetstream::Context {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match async_nats::connect(url).await {
            Ok(client) => return jetstream::new(client),
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The number of messages in JetStream stream `name` (0 if it does not exist yet).
async fn count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(stream) => stream
            .get_info()
            .await
            .map(|info| info.state.messages)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of JetStream stream `name`, in stream order.
async fn read_all(js: &jetstream::Context, name: &str) -> Vec<Stored> {
    let stream = js.get_stream(name).await.unwrap();
    let info = stream.get_info().await.unwrap();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let record: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        out.push(Stored {
            subject: message.subject.to_string(),
            msg_id: header("Nats-Msg-Id"),
            stream: header("SSE-Stream").unwrap_or_default(),
            event: header("SSE-Event").unwrap_or_default(),
            id: header("SSE-Id").and_then(|v| v.parse().ok()).unwrap_or(0),
            record,
        });
    }
    out
}

async fn wait_count(js: &jetstream::Context, name: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while count(js, name).await < n {
        assert!(
            Instant::now() < deadline,
            "JetStream stream {name} has {} messages, expected {n}",
            count(js, name).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config with `streams` (name, url), one nats sink, and `extra` tables.
fn write_config(
    dir: &Path,
    nats_url: &str,
    js_stream: &str,
    streams: &[(String, String)],
    extra: &str,
) -> PathBuf {
    let d = dir.display();
    let mut text = format!(
        r#"
data_dir = "{d}/state"
checkpoint_interval = "200ms"
shutdown_timeout = "5s"
{extra}
[sinks.js]
type = "nats"
inputs = ["*"]
url = "{nats_url}"
subject = "{js_stream}.{{stream}}.{{event}}"
stream = "{js_stream}"
create_stream = true
max_in_flight = 64
ack_timeout = "1s"
backoff_max = "500ms"
"#
    );
    for (name, url) in streams {
        text.push_str(&format!(
            "\n[streams.\"{name}\"]\nurl = \"{url}\"\nbackoff_initial = \"20ms\"\nbackoff_max = \"200ms\"\n"
        ));
    }
    let path = dir.join("sse-relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every id 1..=total of `stream` present exactly once and in order.
fn check_exactly_once(messages: &[Stored], stream: &str, total: u64) {
    let ids: Vec<u64> = messages
        .iter()
        .filter(|m| m.stream == stream)
        .map(|m| m.id)
        .collect();
    let expected: Vec<u64> = (1..=total).collect();
    if ids != expected {
        let seen: BTreeSet<u64> = ids.iter().copied().collect();
        let missing: Vec<u64> = (1..=total).filter(|i| !seen.contains(i)).take(10).collect();
        panic!(
            "stream {stream}: {} messages for {total} events; missing e.g. {missing:?}; duplicates {}",
            ids.len(),
            ids.len() - seen.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_in_order_with_headers() {
    let url = shared_url();
    let js = jetstream_at(&url).await;
    let sse = NumberedServer::start(300, 7, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let js_stream = unique("ORDER");
    let config = write_config(
        dir.path(),
        &url,
        &js_stream,
        &[("wiki.en".to_owned(), sse.url())],
        "",
    );
    let log = dir.path().join("relay.log");
    let mut relay = support::spawn_run(&config, &log, &[]);
    // Every stream stops with 204 after event 300, and then the daemon exits.
    wait_exit(&mut relay, Duration::from_secs(30), &log).await;

    let messages = read_all(&js, &js_stream).await;
    assert_eq!(messages.len(), 300);
    for (n, m) in messages.iter().enumerate() {
        let n = n as u64 + 1;
        // `.` in the stream name would split the subject: it became `_`.
        assert_eq!(m.subject, format!("{js_stream}.wiki_en.message"));
        assert_eq!(m.msg_id.as_deref(), Some(format!("wiki.en:{n}").as_str()));
        assert_eq!(
            (m.stream.as_str(), m.event.as_str(), m.id),
            ("wiki.en", "message", n)
        );
        assert_eq!(m.record["stream"], "wiki.en");
        assert_eq!(m.record["id"], n.to_string());
        assert_eq!(m.record["data"], format!("event {n}"));
        let keys: Vec<&String> = m.record.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "{:?}", m.record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_sigkill_is_deduplicated() {
    let url = shared_url();
    let js = jetstream_at(&url).await;
    let total = 3000;
    let sse = NumberedServer::start(total, 5, Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let js_stream = unique("REPLAY");
    // Checkpoints every 2 s: the restart replays up to 2 s of events that
    // JetStream already holds.
    let config = write_config(
        dir.path(),
        &url,
        &js_stream,
        &[("a".to_owned(), sse.url())],
        "",
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "checkpoint_interval = \"200ms\"",
        "checkpoint_interval = \"2s\"",
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("relay.log");
    let mut relay = support::spawn_run(&config, &log, &[]);
    wait_count(&js, &js_stream, 800, Duration::from_secs(30)).await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    let before = count(&js, &js_stream).await;
    let mut relay = support::spawn_run(&config, &log, &[]);
    wait_exit(&mut relay, Duration::from_secs(60), &log).await;

    let messages = read_all(&js, &js_stream).await;
    check_exactly_once(&messages, "a", total);
    // The server sent more than `total` events: the replay happened, and
    // JetStream dropped it.
    let one_pass = support::numbered(1, total).len() as u64;
    let replayed = sse.bytes_written().saturating_sub(one_pass);
    eprintln!(
        "killed with {before} stored; the restart re-sent {replayed} bytes of events; {} stored, no duplicate",
        messages.len()
    );
    assert!(
        replayed > 0,
        "the restart replayed nothing: the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_run_loses_nothing() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let total = 2000;
    let sse = NumberedServer::start(total, 5, Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let js_stream = unique("RESTART");
    let config = write_config(
        dir.path(),
        &url,
        &js_stream,
        &[("a".to_owned(), sse.url())],
        "",
    );
    // A queue far smaller than the stream: NATS going down must stop the
    // stream reading (backpressure), not let it read the rest into the queue,
    // get its 204 and start the shutdown drain while NATS is still down.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "max_in_flight = 64\n",
            "max_in_flight = 64\nqueue_size = 64\n",
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let mut relay = support::spawn_run(&config, &log, &[]);
    let stored_before_kill = {
        let js = jetstream_at(&url).await;
        wait_count(&js, &js_stream, 300, Duration::from_secs(30)).await;
        count(&js, &js_stream).await
    };
    nats.stop();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent_while_down = sse.bytes_written();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Backpressure: with NATS down the stream stopped reading.
    let growth = sse.bytes_written() - sent_while_down;
    nats.restart();
    // The restarted server is ours and recovered what it had acknowledged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        nats.child.try_wait().unwrap().is_none(),
        "the restarted nats-server exited (port {} taken?)",
        nats.port
    );
    {
        let js = jetstream_at(&url).await;
        let recovered = count(&js, &js_stream).await;
        assert!(
            recovered >= stored_before_kill,
            "JetStream recovered {recovered} of {stored_before_kill} messages after the restart"
        );
    }
    eprintln!(
        "NATS down for {:?}; the SSE server got {growth} bytes out in the last second of it",
        down.elapsed()
    );
    wait_exit(&mut relay, Duration::from_secs(60), &log).await;
    let js = jetstream_at(&url).await;
    let messages = read_all(&js, &js_stream).await;
    check_exactly_once(&messages, "a", total);
    assert!(
        growth < 512 << 10,
        "the stream kept reading {growth} bytes/s while NATS was down"
    );
}

/// Which instance holds each stream's lease.
async fn leases(js: &jetstream::Context, bucket: &str) -> BTreeMap<String, String> {
    let Ok(kv) = js.get_key_value(bucket).await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let Ok(mut keys) = kv.keys().await else {
        return out;
    };
    let mut names = Vec::new();
    while let Some(Ok(key)) = keys.next().await {
        names.push(key);
    }
    for key in names {
        if let Some(stream) = key.strip_prefix("stream.") {
            if let Ok(Some(value)) = kv.get(&key).await {
                let value: serde_json::Value = serde_json::from_slice(&value).unwrap();
                out.insert(
                    stream.to_owned(),
                    value["instance"].as_str().unwrap_or("").to_owned(),
                );
            }
        }
    }
    out
}

/// `instances` instances split 20 streams; instance i0 is SIGKILLed while
/// they run; its streams must resume elsewhere within the lease TTL, and
/// JetStream must end with every event of every stream.
async fn failover(instances: usize) {
    let url = shared_url();
    let js = jetstream_at(&url).await;
    let total = 400;
    let streams: usize = 20;
    let ttl = Duration::from_secs(3);
    let sse = NumberedServer::start(total, 1, Duration::from_millis(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let js_stream = unique("FAIL");
    let leases_bucket = unique("leases");
    let extra = format!(
        r#"
[checkpoints]
backend = "nats"
url = "{url}"
bucket = "{}"

[cluster]
instance_id = "${{INSTANCE}}"
lease_ttl = "3s"
bucket = "{leases_bucket}"
"#,
        unique("ckpt")
    );
    let names: Vec<(String, String)> = (0..streams)
        .map(|i| (format!("s{i:02}"), sse.url()))
        .collect();
    let config = write_config(dir.path(), &url, &js_stream, &names, &extra);
    let mut relays: Vec<(String, Child, PathBuf)> = (0..instances)
        .map(|i| {
            let id = format!("i{i}");
            let log = dir.path().join(format!("{id}.log"));
            let child = support::spawn_run(&config, &log, &[("INSTANCE", &id)]);
            (id, child, log)
        })
        .collect();
    let logs = |relays: &[(String, Child, PathBuf)]| -> String {
        relays
            .iter()
            .map(|(id, _, log)| {
                format!(
                    "--- {id}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    };

    // Every stream leased, and split fairly.
    let share = streams.div_ceil(instances);
    let deadline = Instant::now() + Duration::from_secs(20);
    let split = loop {
        let held = leases(&js, &leases_bucket).await;
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for owner in held.values() {
            *per.entry(owner.clone()).or_default() += 1;
        }
        if held.len() == streams && per.len() == instances && per.values().all(|n| *n <= share) {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "streams not split over {instances} instances: {per:?}\n{}",
            logs(&relays)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let victim_streams: Vec<String> = split
        .iter()
        .filter(|(_, owner)| *owner == "i0")
        .map(|(s, _)| s.clone())
        .collect();
    // Let them all run a while, then kill i0.
    wait_count(
        &js,
        &js_stream,
        (streams * 40) as u64,
        Duration::from_secs(20),
    )
    .await;
    relays[0].1.kill().unwrap();
    relays[0].1.wait().unwrap();
    let killed = Instant::now();
    let stored_at_kill = count(&js, &js_stream).await;

    // Its streams are leased by survivors again.
    let takeover = loop {
        let held = leases(&js, &leases_bucket).await;
        let moved = victim_streams
            .iter()
            .all(|s| held.get(s).is_some_and(|owner| owner != "i0"));
        if moved {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < ttl * 3,
            "i0's streams {victim_streams:?} not taken over after {:?}: {held:?}\n{}",
            killed.elapsed(),
            logs(&relays)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Every event of every stream ends up in JetStream.
    let all = (streams as u64) * total;
    let deadline = Instant::now() + Duration::from_secs(40);
    while count(&js, &js_stream).await < all {
        assert!(
            Instant::now() < deadline,
            "{} of {all} events stored\n{}",
            count(&js, &js_stream).await,
            logs(&relays)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = read_all(&js, &js_stream).await;
    let mut missing = 0;
    let mut duplicates = 0;
    for (name, _) in &names {
        let ids: Vec<u64> = messages
            .iter()
            .filter(|m| m.stream == *name)
            .map(|m| m.id)
            .collect();
        let seen: BTreeSet<u64> = ids.iter().copied().collect();
        missing += (1..=total).filter(|i| !seen.contains(i)).count();
        duplicates += ids.len() - seen.len();
    }
    eprintln!(
        "{instances} instances, {streams} streams x {total} events: split {:?}; i0 held {} streams, \
         killed with {stored_at_kill} stored; taken over {takeover:?} after the kill (lease_ttl {ttl:?}); \
         {} stored, {missing} missing, {duplicates} duplicates",
        split.values().fold(BTreeMap::<&str, usize>::new(), |mut m, o| {
            *m.entry(o).or_default() += 1;
            m
        }),
        victim_streams.len(),
        messages.len()
    );
    assert_eq!(missing, 0, "{}", logs(&relays));
    assert_eq!(duplicates, 0, "Nats-Msg-Id should drop every replay");
    assert!(
        // The lease expires after `ttl`; the survivors look for free streams
        // every ttl/10 and need a moment to connect. The slack absorbs a
        // loaded 2-core machine (5.3 s was seen with ttl 3 s under load).
        takeover <= ttl * 2 + Duration::from_secs(2),
        "takeover took {takeover:?} (lease_ttl {ttl:?})"
    );
    for (_, child, _) in relays.iter_mut().skip(1) {
        support::signal(child.id(), "TERM");
    }
    for (_, child, log) in relays.iter_mut().skip(1) {
        let log = log.clone();
        wait_exit(child, Duration::from_secs(20), &log).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_and_fail_over() {
    failover(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_split_and_fail_over() {
    failover(3).await;
}
