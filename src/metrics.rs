//! Metrics and health: what an operator's Prometheus scrapes.
//!
//! Built on `prometheus-client` (the Prometheus project's own Rust client).
//! Streams and sinks take their handles once when they start, so the hot path
//! only bumps atomics; nothing is looked up by label per event. Ages ("seconds
//! since the last event", "checkpoint age") are computed at scrape time from
//! stored timestamps, so they keep growing while nothing happens.
//!
//! `GET /metrics` serves the text exposition format. `GET /health` answers 200
//! only while the daemon runs normally: every stream connected or in ordinary
//! backoff, no sink failing for longer than [`SINK_UNHEALTHY_AFTER`], and no
//! stream's latest checkpoint save failed. Otherwise 503, with a JSON body
//! naming each unhealthy stream, sink or checkpoint and why. A reload is not
//! unhealthy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A gauge holding seconds (or a Unix timestamp) as a float.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// A stream's name as a label value. Every series of a stream shares one
/// allocation of it, where a `String` per series cost about 150 bytes a
/// stream (1.5 MiB at 10,000 streams) in copies of the same name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct StreamName(pub Arc<str>);

impl EncodeLabelValue for StreamName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub stream: StreamName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconnectLabels {
    pub stream: StreamName,
    /// A fixed word (`closed`, `idle_timeout`, ...).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

/// The daemon's life stage, for `/health` and the systemd status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Starting = 0,
    Running = 1,
    Draining = 2,
}

/// A stream's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Connection {
    Connecting = 0,
    Connected = 1,
    Reconnecting = 2,
    Stopped = 3,
    /// Stopped by `give_up_after`: an operator has to look.
    GaveUp = 4,
}

/// How long a sink may fail every write before `/health` says so.
pub const SINK_UNHEALTHY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Every reconnect reason word, so a removed stream's series can all go.
const RECONNECT_REASONS: &[&str] = &[
    "closed",
    "idle_timeout",
    "http_status",
    "content_type",
    "content_encoding",
    "timeout",
    "connect_error",
    "request_error",
    "body_error",
    "redirects",
    "insecure_redirect",
    "auth",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `refused`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: &'static str,
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    stage: AtomicU8,
    stream_events: Family<StreamLabel, Counter>,
    stream_bytes: Family<StreamLabel, Counter>,
    stream_oversized: Family<StreamLabel, Counter>,
    stream_id_gaps: Family<StreamLabel, Counter>,
    stream_missing_ids: Family<StreamLabel, Counter>,
    stream_id_regressions: Family<StreamLabel, Counter>,
    stream_ids_unparsable: Family<StreamLabel, Counter>,
    stream_connected: Family<StreamLabel, Gauge>,
    stream_reconnects: Family<ReconnectLabels, Counter>,
    stream_last_event: Family<StreamLabel, SecondsGauge>,
    stream_since_last_event: Family<StreamLabel, SecondsGauge>,
    stream_retry_delay: Family<StreamLabel, SecondsGauge>,
    stream_http_status: Family<StreamLabel, Gauge>,
    checkpoint_saved: Family<StreamLabel, SecondsGauge>,
    checkpoint_age: Family<StreamLabel, SecondsGauge>,
    sink_written: Family<SinkLabel, Counter>,
    sink_failures: Family<SinkLabel, Counter>,
    sink_retries: Family<SinkLabel, Counter>,
    sink_dropped: Family<SinkLabel, Counter>,
    sink_queue_depth: Family<SinkLabel, Gauge>,
    stream_up: Family<StreamLabel, Gauge>,
    checkpoint_save_errors: Family<StreamLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    build_info: Family<VersionLabel, Gauge>,
    sinks: Mutex<Vec<SinkEntry>>,
    /// The running streams, for the status line and the ages computed at scrape.
    streams: Mutex<Vec<StreamEntry>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sse_relay");
        let metrics = Metrics {
            registry: Registry::default(),
            stage: AtomicU8::new(Stage::Starting as u8),
            stream_events: Family::default(),
            stream_bytes: Family::default(),
            stream_oversized: Family::default(),
            stream_id_gaps: Family::default(),
            stream_missing_ids: Family::default(),
            stream_id_regressions: Family::default(),
            stream_ids_unparsable: Family::default(),
            stream_connected: Family::default(),
            stream_reconnects: Family::default(),
            stream_last_event: Family::default(),
            stream_since_last_event: Family::default(),
            stream_retry_delay: Family::default(),
            stream_http_status: Family::default(),
            checkpoint_saved: Family::default(),
            checkpoint_age: Family::default(),
            sink_written: Family::default(),
            sink_failures: Family::default(),
            sink_retries: Family::default(),
            sink_dropped: Family::default(),
            sink_queue_depth: Family::default(),
            stream_up: Family::default(),
            checkpoint_save_errors: Family::default(),
            config_reloads: Family::default(),
            build_info: Family::default(),
            sinks: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
        };
        let m = &metrics;
        registry.register(
            "stream_events",
            "Events received and dispatched",
            m.stream_events.clone(),
        );
        registry.register(
            "stream_received_bytes",
            "Body bytes received",
            m.stream_bytes.clone(),
        );
        registry.register(
            "stream_oversized_events",
            "Events dropped for exceeding max_line_bytes or max_event_bytes",
            m.stream_oversized.clone(),
        );
        registry.register(
            "stream_id_gaps",
            "Ids that skipped ahead of the one expected (id_gap_check)",
            m.stream_id_gaps.clone(),
        );
        registry.register(
            "stream_missing_ids",
            "Ids skipped over by gaps (id_gap_check = \"sequential\")",
            m.stream_missing_ids.clone(),
        );
        registry.register(
            "stream_id_regressions",
            "Ids not above the one before (id_gap_check)",
            m.stream_id_regressions.clone(),
        );
        registry.register(
            "stream_ids_unparsable",
            "Ids that are not integers, skipped by id_gap_check",
            m.stream_ids_unparsable.clone(),
        );
        registry.register(
            "stream_connected",
            "1 while the stream's connection is open",
            m.stream_connected.clone(),
        );
        registry.register(
            "stream_reconnects",
            "Connection attempts that ended, by reason",
            m.stream_reconnects.clone(),
        );
        registry.register(
            "stream_last_event_timestamp_seconds",
            "Unix time of the last event received",
            m.stream_last_event.clone(),
        );
        registry.register(
            "stream_seconds_since_last_event",
            "Seconds since the last event (since start if none)",
            m.stream_since_last_event.clone(),
        );
        registry.register(
            "stream_retry_delay_seconds",
            "The current (or last) delay before reconnecting",
            m.stream_retry_delay.clone(),
        );
        registry.register(
            "stream_last_http_status",
            "HTTP status of the last response (0 before the first)",
            m.stream_http_status.clone(),
        );
        registry.register(
            "checkpoint_saved_timestamp_seconds",
            "Unix time the stream's checkpoint was last written",
            m.checkpoint_saved.clone(),
        );
        registry.register(
            "checkpoint_age_seconds",
            "Seconds since the stream's checkpoint was last written",
            m.checkpoint_age.clone(),
        );
        registry.register(
            "sink_events_written",
            "Events written and acknowledged",
            m.sink_written.clone(),
        );
        registry.register(
            "sink_write_failures",
            "Failed write attempts",
            m.sink_failures.clone(),
        );
        registry.register(
            "sink_retries",
            "Writes retried after a failure",
            m.sink_retries.clone(),
        );
        registry.register(
            "sink_dropped_events",
            "Events dropped because the queue was full (when_full = drop_newest)",
            m.sink_dropped.clone(),
        );
        registry.register(
            "sink_queue_depth",
            "Events given to the sink (queued or being written) and not yet acknowledged",
            m.sink_queue_depth.clone(),
        );
        registry.register(
            "stream_up",
            "1 while the stream runs (connected or in ordinary backoff), 0 once stopped (204 or give_up_after)",
            m.stream_up.clone(),
        );
        registry.register(
            "checkpoint_save_errors",
            "Checkpoint saves that failed",
            m.checkpoint_save_errors.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (ok, refused)",
            m.config_reloads.clone(),
        );
        registry.register(
            "build_info",
            "1, labelled with the version of this build",
            m.build_info.clone(),
        );
        m.build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn set_stage(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Relaxed);
    }

    pub fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Relaxed) {
            0 => Stage::Starting,
            1 => Stage::Running,
            _ => Stage::Draining,
        }
    }

    /// The handles one stream updates.
    pub fn stream(self: &Arc<Self>, name: &str) -> StreamMetrics {
        let label = StreamLabel {
            stream: StreamName(Arc::from(name)),
        };
        let state = Arc::new(AtomicU8::new(Connection::Connecting as u8));
        let last_event = self.stream_last_event.get_or_create_owned(&label);
        if last_event.get() == 0.0 {
            last_event.set(unix_now());
        }
        let checkpoint_saved = self.checkpoint_saved.get_or_create_owned(&label);
        let checkpoint_failing = Arc::new(AtomicBool::new(false));
        let up = self.stream_up.get_or_create_owned(&label);
        up.set(1);
        let mut streams = self.lock_streams();
        streams.retain(|s| s.label != label);
        streams.push(StreamEntry {
            label: label.clone(),
            state: state.clone(),
            last_event: last_event.clone(),
            checkpoint_saved: checkpoint_saved.clone(),
            checkpoint_failing: checkpoint_failing.clone(),
        });
        drop(streams);
        StreamMetrics {
            events: self.stream_events.get_or_create_owned(&label),
            bytes: self.stream_bytes.get_or_create_owned(&label),
            oversized: self.stream_oversized.get_or_create_owned(&label),
            connected: self.stream_connected.get_or_create_owned(&label),
            last_event,
            retry_delay: self.stream_retry_delay.get_or_create_owned(&label),
            http_status: self.stream_http_status.get_or_create_owned(&label),
            checkpoint_saved,
            checkpoint_save_errors: self.checkpoint_save_errors.get_or_create_owned(&label),
            checkpoint_failing,
            up,
            state,
            name: label.stream,
            metrics: self.clone(),
        }
    }

    /// A reload ended: applied (`true`) or refused.
    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "ok" } else { "refused" };
        self.config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// What `/health` says: `None` when healthy, else the problems.
    pub fn health(&self) -> Result<(), Vec<(String, String, String)>> {
        let mut problems = Vec::new();
        match self.stage() {
            Stage::Running => {}
            Stage::Starting => problems.push(("daemon".into(), "".into(), "starting".into())),
            Stage::Draining => problems.push(("daemon".into(), "".into(), "draining".into())),
        }
        for entry in self.lock_streams().iter() {
            let name = entry.label.stream.0.to_string();
            if entry.state.load(Ordering::Relaxed) == Connection::GaveUp as u8 {
                problems.push((
                    "stream".into(),
                    name.clone(),
                    "gave up after repeated refusals (give_up_after); reload or restart to try again".into(),
                ));
            }
            if entry.checkpoint_failing.load(Ordering::Relaxed) {
                problems.push((
                    "checkpoint".into(),
                    name,
                    "the latest checkpoint save failed (see the log)".into(),
                ));
            }
        }
        let now = unix_now();
        for sink in lock(&self.sinks).iter() {
            let since = f64::from_bits(sink.failing_since.load(Ordering::Relaxed));
            if since > 0.0 && now - since >= SINK_UNHEALTHY_AFTER.as_secs_f64() {
                problems.push((
                    "sink".into(),
                    sink.name.clone(),
                    format!("every write has failed for {:.0}s", now - since),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Forgets a stream that was removed from the configuration.
    pub fn remove_stream(&self, name: &str) {
        let label = StreamLabel {
            stream: StreamName(Arc::from(name)),
        };
        for family in [
            &self.stream_events,
            &self.stream_bytes,
            &self.stream_oversized,
            &self.stream_id_gaps,
            &self.stream_missing_ids,
            &self.stream_id_regressions,
            &self.stream_ids_unparsable,
        ] {
            family.remove(&label);
        }
        self.stream_connected.remove(&label);
        self.stream_http_status.remove(&label);
        self.stream_up.remove(&label);
        self.checkpoint_save_errors.remove(&label);
        for reason in RECONNECT_REASONS {
            self.stream_reconnects.remove(&ReconnectLabels {
                stream: label.stream.clone(),
                reason,
            });
        }
        for family in [
            &self.stream_last_event,
            &self.stream_since_last_event,
            &self.stream_retry_delay,
            &self.checkpoint_saved,
            &self.checkpoint_age,
        ] {
            family.remove(&label);
        }
        self.lock_streams().retain(|s| s.label != label);
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, Vec<StreamEntry>> {
        // Entries are replaced whole; a panic elsewhere cannot leave one torn.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handles one sink updates.
    pub fn sink(&self, name: &str) -> SinkMetrics {
        let label = SinkLabel {
            sink: name.to_owned(),
        };
        SinkMetrics {
            written: self.sink_written.get_or_create_owned(&label),
            failures: self.sink_failures.get_or_create_owned(&label),
            retries: self.sink_retries.get_or_create_owned(&label),
            dropped: self.sink_dropped.get_or_create_owned(&label),
            queue_depth: self.sink_queue_depth.get_or_create_owned(&label),
            failing_since: {
                let mut sinks = lock(&self.sinks);
                sinks.retain(|s| s.name != name);
                let failing_since = Arc::new(AtomicU64::new(0));
                sinks.push(SinkEntry {
                    name: name.to_owned(),
                    failing_since: failing_since.clone(),
                });
                failing_since
            },
        }
    }

    /// How many streams are in each connection state.
    pub fn connection_counts(&self) -> ConnectionCounts {
        let streams = self.lock_streams();
        let mut counts = ConnectionCounts {
            total: streams.len(),
            ..ConnectionCounts::default()
        };
        for entry in streams.iter() {
            match entry.state.load(Ordering::Relaxed) {
                s if s == Connection::Connected as u8 => counts.connected += 1,
                s if s == Connection::Reconnecting as u8 => counts.reconnecting += 1,
                s if s == Connection::Stopped as u8 || s == Connection::GaveUp as u8 => {
                    counts.stopped += 1
                }
                _ => counts.connecting += 1,
            }
        }
        counts
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let now = unix_now();
        for entry in self.lock_streams().iter() {
            let since = (now - entry.last_event.get()).max(0.0);
            self.stream_since_last_event
                .get_or_create(&entry.label)
                .set(since);
            let saved = entry.checkpoint_saved.get();
            if saved > 0.0 {
                let age = (now - saved).max(0.0);
                self.checkpoint_age.get_or_create(&entry.label).set(age);
            }
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!("cannot encode metrics: {e}");
        }
        text
    }

    /// Serves `/metrics` and `/health` on `listen` until the runtime ends.
    pub async fn serve(self: Arc<Self>, listen: SocketAddr) -> std::io::Result<SocketAddr> {
        use axum::http::{header, StatusCode};
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let for_metrics = self.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let metrics = for_metrics.clone();
                    async move {
                        (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            metrics.render(),
                        )
                    }
                }),
            )
            .route(
                "/health",
                get(move || {
                    let metrics = self.clone();
                    async move {
                        match metrics.health() {
                            // As it always was: probes match on it.
                            Ok(()) => (
                                StatusCode::OK,
                                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                                "running\n".to_owned(),
                            ),
                            Err(problems) => {
                                let problems: Vec<serde_json::Value> = problems
                                    .into_iter()
                                    .map(|(what, name, why)| {
                                        serde_json::json!({"component": what, "name": name, "problem": why})
                                    })
                                    .collect();
                                let body = serde_json::json!({"status": "unhealthy", "problems": problems});
                                (
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    [(header::CONTENT_TYPE, "application/json")],
                                    format!("{body}\n"),
                                )
                            }
                        }
                    }
                }),
            );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics endpoint stopped: {e}");
            }
        });
        Ok(addr)
    }
}

struct StreamEntry {
    label: StreamLabel,
    state: Arc<AtomicU8>,
    last_event: SecondsGauge,
    checkpoint_saved: SecondsGauge,
    checkpoint_failing: Arc<AtomicBool>,
}

struct SinkEntry {
    name: String,
    /// Unix time (f64 bits) of the first failure in a row; 0 while writing.
    failing_since: Arc<AtomicU64>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Streams by connection state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub total: usize,
    pub connected: usize,
    pub connecting: usize,
    pub reconnecting: usize,
    pub stopped: usize,
}

/// One stream's metric handles.
/// A stream's `id_gap_check` counters.
#[derive(Clone)]
pub struct IdCheckMetrics {
    pub gaps: Counter,
    pub missing: Counter,
    pub regressions: Counter,
    pub unparsable: Counter,
}

#[derive(Clone)]
pub struct StreamMetrics {
    pub events: Counter,
    pub bytes: Counter,
    pub oversized: Counter,
    connected: Gauge,
    pub last_event: SecondsGauge,
    pub retry_delay: SecondsGauge,
    pub http_status: Gauge,
    pub checkpoint_saved: SecondsGauge,
    pub checkpoint_save_errors: Counter,
    /// Set while the stream's latest checkpoint save failed.
    pub checkpoint_failing: Arc<AtomicBool>,
    up: Gauge,
    state: Arc<AtomicU8>,
    name: StreamName,
    metrics: Arc<Metrics>,
}

impl StreamMetrics {
    pub fn set_connection(&self, state: Connection) {
        self.state.store(state as u8, Ordering::Relaxed);
        self.connected
            .set(i64::from(state == Connection::Connected));
        self.up.set(i64::from(!matches!(
            state,
            Connection::Stopped | Connection::GaveUp
        )));
    }

    /// The counters of `id_gap_check`, created (at zero) only for streams
    /// that check, so the others cost nothing.
    pub fn id_checks(&self) -> IdCheckMetrics {
        let label = StreamLabel {
            stream: self.name.clone(),
        };
        let m = &self.metrics;
        IdCheckMetrics {
            gaps: m.stream_id_gaps.get_or_create_owned(&label),
            missing: m.stream_missing_ids.get_or_create_owned(&label),
            regressions: m.stream_id_regressions.get_or_create_owned(&label),
            unparsable: m.stream_ids_unparsable.get_or_create_owned(&label),
        }
    }

    /// An attempt ended for `reason` (a short, fixed word such as `closed`).
    pub fn reconnect(&self, reason: &'static str) {
        self.metrics
            .stream_reconnects
            .get_or_create(&ReconnectLabels {
                stream: self.name.clone(),
                reason,
            })
            .inc();
    }
}

/// One sink's metric handles.
#[derive(Clone)]
pub struct SinkMetrics {
    pub written: Counter,
    pub failures: Counter,
    pub retries: Counter,
    pub dropped: Counter,
    pub queue_depth: Gauge,
    /// Unix time (f64 bits) of the first failed write in a row; 0 while
    /// writes succeed. `/health` reads it.
    failing_since: Arc<AtomicU64>,
}

impl SinkMetrics {
    /// A write failed: the sink is failing from now, unless it already was.
    pub fn write_failed(&self) {
        let _ = self.failing_since.compare_exchange(
            0,
            unix_now().to_bits(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A write succeeded.
    pub fn write_succeeded(&self) {
        self.failing_since.store(0, Ordering::Relaxed);
    }
}

impl SinkMetrics {
    /// Handles that count into nothing anyone reads, for sinks run outside a
    /// supervisor.
    pub fn detached() -> Self {
        Metrics::new().sink("detached")
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
