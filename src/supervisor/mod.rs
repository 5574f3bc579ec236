//! The supervisor: starts a task per sink and per stream, keeps checkpoints,
//! reloads the configuration, and shuts everything down in the order that
//! loses nothing.
//!
//! Start: load each stream's checkpoint (a broken one stops start-up with an
//! error), start the sinks, then the streams, then the checkpoint writer.
//!
//! Reload (SIGHUP): read the configuration again; an invalid one is refused and
//! the running one kept. Streams whose settings and routes did not change keep
//! their connections. Removed streams stop; changed ones stop, wait until their
//! sinks acknowledged what they were given, and start again from that point.
//! A sink whose settings changed is drained and replaced (and the streams it
//! takes restart with it). File sinks reopen their files (for logrotate).
//!
//! Stop (`drain` fired, or every stream stopped for good: 204 or give-up):
//! 1. streams stop reading; dropping their routes closes the sink queues;
//! 2. sinks write and acknowledge what is queued: after a signal for up to
//!    `shutdown_timeout`; after the last stream ended, for as long as it takes
//!    (a signal during that wait starts the `shutdown_timeout` clock);
//! 3. checkpoints are written one last time;
//! 4. the [`Outcome`] says what is left unacknowledged per sink and which
//!    streams gave up: the exit status is 0 only when both are empty.
//!
//! `abort` (a second signal) skips the wait in step 2; step 3 still runs, and a
//! checkpoint only ever names acknowledged events, so nothing is skipped on the
//! next start.
//!
//! With `[cluster]`, no stream starts by itself: the cluster coordinator
//! ([`crate::cluster`]) claims leases and tells the supervisor which streams to
//! start, release (stop, wait for acknowledgements, save the checkpoint) or
//! forget (lease lost: the coordinator already cancelled it).

mod cluster;
mod drain;
mod reload;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::{AckTracker, ChangeList};
use crate::checkpoint::{CheckpointBackend, CheckpointError, CheckpointStore, Tracked};
use crate::cluster::Cluster;
use crate::config::{CheckpointBackendConfig, Config, StreamConfig};
use crate::http::ClientError;
use crate::metrics::{Metrics, Stage};
use crate::notify;
use crate::route::{Route, Router};
pub use crate::shutdown::Shutdown;
use crate::sink::queue::{self, Budget};
use crate::sink::registry::{Start, StartError};
use crate::sink::{Delivery, SinkConfig, SinkTask, WhenFull};
use crate::stream::{Stream, StreamEnd};
use cluster::next_command;
use drain::{drain_sinks, Drain};

/// Why the daemon could not run.
#[derive(Debug)]
pub enum RunError {
    Checkpoint(CheckpointError),
    Stream {
        stream: String,
        problem: ClientError,
    },
    Sink {
        sink: String,
        problem: StartError,
    },
    Metrics(String),
    Cluster(String),
    /// Something the configuration names cannot be used (see [`crate::prepare`]).
    Prepare(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Checkpoint(e) => write!(f, "{e}"),
            RunError::Stream { stream, problem } => {
                write!(f, "error: stream `{stream}`: {problem}")
            }
            RunError::Sink { sink, problem } => write!(f, "error: sink `{sink}`: {problem}"),
            RunError::Metrics(problem) => write!(f, "error: metrics: {problem}"),
            RunError::Cluster(problem) => write!(f, "error: cluster: {problem}"),
            RunError::Prepare(problem) => write!(f, "{problem}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Whether checkpoints are kept on disk (`run`) or only in memory (`tail`, `demo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoints {
    OnDisk,
    InMemory,
}

/// How a run ended, for the exit status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Events given to each sink and never acknowledged (a signal's drain ran
    /// out, or a second signal cut it short).
    pub unacknowledged: BTreeMap<String, u64>,
    /// Streams stopped by `give_up_after`.
    pub gave_up: BTreeSet<String>,
}

impl Outcome {
    /// Everything read was acknowledged and no stream gave up: exit 0.
    pub fn clean(&self) -> bool {
        self.unacknowledged.is_empty() && self.gave_up.is_empty()
    }
}

/// Reads the configuration again for a reload and prepares it
/// ([`crate::prepare`], in `Mode::Reload`) before anything running is touched;
/// the error text is what `check` would print.
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Runs `config` until every stream has stopped for good or `shutdown` says so.
pub async fn run(
    config: &Config,
    checkpoints: Checkpoints,
    shutdown: Shutdown,
) -> Result<Outcome, RunError> {
    run_with_reload(config, checkpoints, shutdown, None).await
}

/// Like [`run`], re-reading the configuration with `reloader` whenever
/// `shutdown.reload` is notified.
pub async fn run_with_reload(
    config: &Config,
    checkpoints: Checkpoints,
    shutdown: Shutdown,
    reloader: Option<Reloader>,
) -> Result<Outcome, RunError> {
    crate::prepare::prepare(config, crate::prepare::Mode::Start, None)
        .map_err(RunError::Prepare)?;
    let metrics = Arc::new(Metrics::new());
    if let Some(metrics_config) = &config.metrics {
        let addr = metrics
            .clone()
            .serve(metrics_config.listen)
            .await
            .map_err(|e| {
                RunError::Metrics(format!("cannot listen on {}: {e}", metrics_config.listen))
            })?;
        tracing::info!("serving /metrics and /health on http://{addr}");
    }
    let store = match (checkpoints, &config.checkpoints) {
        (Checkpoints::OnDisk, CheckpointBackendConfig::Local) => Some(CheckpointBackend::Local(
            CheckpointStore::open(&config.data_dir).map_err(RunError::Checkpoint)?,
        )),
        (Checkpoints::OnDisk, CheckpointBackendConfig::Nats(nats)) => {
            Some(CheckpointBackend::Nats(Box::new(
                crate::checkpoint::KvCheckpoints::open(nats)
                    .await
                    .map_err(|problem| {
                        RunError::Checkpoint(CheckpointError {
                            path: format!("nats kv {}", nats.bucket).into(),
                            problem,
                            help:
                                "start the NATS server with JetStream (-js), or fix [checkpoints]"
                                    .into(),
                        })
                    })?,
            )))
        }
        (Checkpoints::InMemory, _) => None,
    };
    let cluster = match (&config.cluster, &config.checkpoints, &store) {
        (Some(cluster), CheckpointBackendConfig::Nats(nats), Some(_)) => Some(
            Cluster::start(
                cluster,
                nats,
                config.streams.keys().cloned().collect(),
                shutdown.drain.clone(),
            )
            .await
            .map_err(RunError::Cluster)?,
        ),
        _ => None,
    };
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let (reopen, _) = watch::channel(0u64);
    let mut supervisor = Supervisor {
        config: Cow::Borrowed(config),
        store,
        metrics,
        shutdown,
        sinks: BTreeMap::new(),
        streams: BTreeMap::new(),
        checkpoints: Arc::new(Mutex::new(BTreeMap::new())),
        changed: Arc::default(),
        ended_tx,
        generation: 0,
        reopen,
        cluster,
        gave_up: BTreeSet::new(),
    };
    supervisor.start().await?;
    let keepalive = notify::spawn_keepalive(supervisor.metrics.clone());
    let outcome = supervisor.serve(ended_rx, reloader).await;
    if let Some(keepalive) = keepalive {
        keepalive.abort();
    }
    Ok(outcome)
}

/// How a stream task ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// A 204.
    ForGood,
    /// `give_up_after` refusals.
    GaveUp,
    Panicked,
}

struct RunningSink {
    config: SinkConfig,
    queue: mpsc::Sender<Delivery>,
    abort: CancellationToken,
    task: JoinHandle<()>,
    dropped: prometheus_client::metrics::counter::Counter,
    /// Bytes of records its queue may hold, shared by the streams routed to it.
    budget: Arc<Budget>,
}

struct RunningStream {
    /// Shared with the stream's task.
    config: Arc<StreamConfig>,
    /// The sinks it is routed to, by name.
    routes: Vec<String>,
    stop: CancellationToken,
    task: JoinHandle<StreamEnd>,
    tracker: Arc<AckTracker>,
    generation: u64,
}

struct Supervisor<'c> {
    /// The caller's configuration until a reload replaces it: not a copy of
    /// it (with 10,000 streams a copy is several MiB).
    config: Cow<'c, Config>,
    store: Option<CheckpointBackend>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    sinks: BTreeMap<String, RunningSink>,
    streams: BTreeMap<String, RunningStream>,
    /// Shared with the checkpoint writer.
    checkpoints: Arc<Mutex<BTreeMap<String, Tracked>>>,
    /// The streams of `checkpoints` to look at next: the trackers list them
    /// (when checkpoints are stored), the checkpoint writer takes the list.
    changed: Arc<ChangeList>,
    /// Stream tasks that ended by themselves (204, give-up, panic) report here,
    /// with their generation; [`Supervisor::serve`] receives.
    ended_tx: mpsc::UnboundedSender<(String, u64, Ended)>,
    generation: u64,
    reopen: watch::Sender<u64>,
    /// Set with `[cluster]`: streams start and stop when its coordinator says.
    cluster: Option<Cluster>,
    /// Streams stopped by `give_up_after` (until a reload starts them again).
    gave_up: BTreeSet<String>,
}

impl Supervisor<'_> {
    async fn start(&mut self) -> Result<(), RunError> {
        let mut resume = BTreeMap::new();
        for (name, stream) in &self.config.streams {
            if self.cluster.is_none() {
                resume.insert(name.clone(), self.resume_point(name, stream).await?);
            }
        }
        let sinks: Vec<SinkConfig> = self.config.sinks.values().cloned().collect();
        for sink in &sinks {
            self.start_sink(sink)?;
        }
        let streams: Vec<Arc<StreamConfig>> = match self.cluster {
            Some(_) => Vec::new(),
            None => self.config.streams.values().cloned().collect(),
        };
        for stream in streams {
            let from = resume.remove(&stream.name).unwrap_or_default();
            self.start_stream(stream, &from)?;
        }
        tracing::info!(
            "started {} stream(s) and {} sink(s)",
            self.config.streams.len(),
            self.config.sinks.len()
        );
        self.metrics.set_stage(Stage::Running);
        notify::ready(&notify::status_line(&self.metrics));
        Ok(())
    }

    /// Where `stream` starts: its checkpoint, else `initial_last_event_id`.
    async fn resume_point(&self, name: &str, stream: &StreamConfig) -> Result<String, RunError> {
        let saved = match &self.store {
            Some(store) => store.load(name).await.map_err(RunError::Checkpoint)?,
            None => None,
        };
        if let Some(id) = &saved {
            if !id.is_empty() {
                tracing::info!(
                    stream = %name, "resuming from checkpoint, Last-Event-ID {}",
                    id.escape_debug()
                );
            }
        }
        Ok(saved
            .or_else(|| stream.initial_last_event_id.clone())
            .unwrap_or_default())
    }

    async fn serve(
        &mut self,
        mut ended: mpsc::UnboundedReceiver<(String, u64, Ended)>,
        reloader: Option<Reloader>,
    ) -> Outcome {
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(checkpoint_writer(
            self.store.clone(),
            self.checkpoints.clone(),
            self.changed.clone(),
            self.config.checkpoint_interval,
            writer_stop.clone(),
        ));
        let reload = self.shutdown.reload.clone();
        // A cluster member keeps running with no stream: it may get some later.
        while self.cluster.is_some() || !self.streams.is_empty() {
            tokio::select! {
                _ = self.shutdown.drain.cancelled() => break,
                Some(command) = next_command(&mut self.cluster) => self.cluster_command(command).await,
                _ = reload.notified() => match &reloader {
                    Some(reloader) => self.reload(reloader).await,
                    None => tracing::warn!("reload asked for, but this run has no configuration file to re-read"),
                },
                Some((name, generation, how)) = ended.recv() => {
                    let current = self.streams.get(&name).is_some_and(|s| s.generation == generation);
                    if let Some(running) = current.then(|| self.streams.remove(&name)).flatten() {
                        match how {
                            Ended::Panicked => self.restart_after_panic(running).await,
                            Ended::GaveUp => {
                                self.gave_up.insert(name.clone());
                            }
                            Ended::ForGood => {}
                        }
                    }
                    if self.streams.is_empty() && self.cluster.is_none() {
                        tracing::info!("every stream has stopped for good (HTTP 204 or give_up_after); finishing once every sink has acknowledged what it was given");
                    }
                }
            }
        }
        self.metrics.set_stage(Stage::Draining);
        notify::stopping("stopping: draining sink queues");
        for stream in self.streams.values() {
            stream.stop.cancel();
        }
        for (_, stream) in std::mem::take(&mut self.streams) {
            let _ = stream.task.await;
        }
        let sinks: Vec<RunningSink> = std::mem::take(&mut self.sinks).into_values().collect();
        let owed: Vec<(String, WhenFull, Gauge)> = sinks
            .iter()
            .map(|s| {
                (
                    s.config.name.clone(),
                    s.config.when_full,
                    s.budget.unacknowledged.clone(),
                )
            })
            .collect();
        // Streams that ended by themselves: no deadline but a signal's.
        let until = if self.shutdown.drain.is_cancelled() {
            Drain::Timeout
        } else {
            Drain::UntilSignal(&self.shutdown.drain)
        };
        drain_sinks(
            sinks,
            until,
            self.config.shutdown_timeout,
            &self.shutdown.abort,
        )
        .await;
        writer_stop.cancel();
        let _ = writer.await;
        if let Some(cluster) = self.cluster.take() {
            // After the last checkpoint save: whoever takes over resumes there.
            cluster.shutdown().await;
        }
        let mut outcome = Outcome {
            gave_up: std::mem::take(&mut self.gave_up),
            ..Outcome::default()
        };
        for (sink, when_full, gauge) in owed {
            let left = gauge.get().max(0) as u64;
            if left == 0 {
                continue;
            }
            match when_full {
                WhenFull::Block => tracing::error!(
                    sink = %sink,
                    "{left} event(s) given to this sink were never acknowledged; the checkpoint is before them, so the server sends them again after a restart"
                ),
                WhenFull::DropNewest => tracing::error!(
                    sink = %sink,
                    "{left} event(s) given to this sink were never acknowledged, and they are lost for it: a drop_newest sink does not hold the checkpoint back"
                ),
            }
            outcome.unacknowledged.insert(sink, left);
        }
        if !outcome.gave_up.is_empty() {
            let names: Vec<&str> = outcome.gave_up.iter().map(String::as_str).collect();
            tracing::error!(
                "stream(s) {} gave up (give_up_after) and did not run to the end",
                names.join(", ")
            );
        }
        tracing::info!("stopped");
        outcome
    }

    fn start_sink(&mut self, config: &SinkConfig) -> Result<(), RunError> {
        let (queue, receiver) = mpsc::channel(config.queue_size);
        let abort = self.shutdown.abort.child_token();
        let metrics = self.metrics.sink(&config.name);
        let dropped = metrics.dropped.clone();
        // A sink started anew (start, or replaced on reload) owes nothing yet:
        // what its predecessor left is read again from its streams' checkpoints.
        metrics.queue_depth.set(0);
        let unacknowledged = metrics.queue_depth.clone();
        let task = SinkTask {
            name: config.name.clone(),
            queue: receiver,
            abort: abort.clone(),
            metrics,
            reopen: self.reopen.subscribe(),
        };
        let (record_limits, longest_stream_name) = self.record_bounds(config);
        let start = Start {
            name: &config.name,
            encoding: config.encoding,
            record_limits,
            longest_stream_name,
            stop_when_closed: self.store.is_none().then(|| self.shutdown.clone()),
        };
        let handle = config
            .kind
            .start(&start, task)
            .map_err(|problem| RunError::Sink {
                sink: config.name.clone(),
                problem,
            })?;
        self.sinks.insert(
            config.name.clone(),
            RunningSink {
                config: config.clone(),
                queue,
                abort,
                task: handle,
                dropped,
                budget: Budget::counting(
                    queue::DEFAULT_QUEUE_BYTES,
                    config.queue_size,
                    unacknowledged,
                ),
            },
        );
        Ok(())
    }

    /// The largest limits, and the longest name, among the streams `sink`
    /// takes: what bounds the records it can write.
    fn record_bounds(&self, sink: &SinkConfig) -> (crate::sse::Limits, usize) {
        let mut limits = crate::sse::Limits {
            max_line_bytes: 0,
            max_event_bytes: 0,
        };
        let mut longest = 0;
        for stream in self.config.streams.values() {
            if sink.takes_stream(&stream.name) {
                limits.max_line_bytes = limits.max_line_bytes.max(stream.limits.max_line_bytes);
                limits.max_event_bytes = limits.max_event_bytes.max(stream.limits.max_event_bytes);
                longest = longest.max(stream.name.len());
            }
        }
        (limits, longest)
    }

    /// The sinks of the current configuration that take `stream`.
    fn routes_of(&self, stream: &str) -> Vec<String> {
        self.config
            .sinks
            .values()
            .filter(|sink| sink.takes_stream(stream))
            .map(|sink| sink.name.clone())
            .collect()
    }

    fn start_stream(
        &mut self,
        config: Arc<StreamConfig>,
        resume_from: &str,
    ) -> Result<(), RunError> {
        let name = config.name.clone();
        self.gave_up.remove(&name);
        let route_names = self.routes_of(&name);
        if route_names.is_empty() {
            tracing::warn!(
                stream = %name, "no sink takes this stream; its events are read and discarded"
            );
        }
        let routes: Vec<Route> = route_names
            .iter()
            .filter_map(|sink_name| {
                let running = self.sinks.get(sink_name)?;
                Some(Route {
                    sink: Arc::from(sink_name.as_str()),
                    queue: running.queue.clone(),
                    event_types: running
                        .config
                        .event_types
                        .as_ref()
                        .map(|t| Arc::from(t.as_slice())),
                    when_full: running.config.when_full,
                    dropped: running.dropped.clone(),
                    budget: running.budget.clone(),
                })
            })
            .collect();
        let mut tracker = AckTracker::new(routes.len(), resume_from);
        if self.store.is_some() {
            tracker = tracker.listing_changes(self.changed.clone(), Arc::from(name.as_str()));
        }
        let tracker = Arc::new(tracker);
        let router = Router::new(Arc::from(name.as_str()), routes, tracker.clone());
        let metrics = self.metrics.stream(&name);
        let saved_at = metrics.checkpoint_saved.clone();
        let save_errors = metrics.checkpoint_save_errors.clone();
        let save_failing = metrics.checkpoint_failing.clone();
        let stream =
            Stream::new(config.clone(), router, resume_from, metrics).map_err(|problem| {
                RunError::Stream {
                    stream: name.clone(),
                    problem,
                }
            })?;
        {
            let mut checkpoints = lock(&self.checkpoints);
            let saved = checkpoints
                .get(&name)
                .map_or_else(|| Arc::from(resume_from), |t| t.saved.clone());
            checkpoints.insert(
                name.clone(),
                Tracked {
                    stream: name.clone(),
                    tracker: tracker.clone(),
                    saved,
                    saved_at,
                    save_errors,
                    failing: save_failing,
                },
            );
        }
        self.generation += 1;
        let generation = self.generation;
        let stop = self.shutdown.drain.child_token();
        let ended = self.ended_tx.clone();
        let task_stop = stop.clone();
        let task_name = name.clone();
        // Boxed before the task captures it, so the task holds a pointer.
        let stream = Box::new(stream);
        let task = tokio::spawn(async move {
            use futures_util::FutureExt;
            // A bug must not silently end a stream: the supervisor restarts it.
            match std::panic::AssertUnwindSafe(stream.run(task_stop))
                .catch_unwind()
                .await
            {
                Ok(end @ StreamEnd::StoppedByServer) => {
                    let _ = ended.send((task_name, generation, Ended::ForGood));
                    end
                }
                Ok(end @ StreamEnd::GaveUp) => {
                    let _ = ended.send((task_name, generation, Ended::GaveUp));
                    end
                }
                Ok(end) => end,
                Err(_) => {
                    let _ = ended.send((task_name, generation, Ended::Panicked));
                    StreamEnd::Shutdown
                }
            }
        });
        self.streams.insert(
            name,
            RunningStream {
                config,
                routes: route_names,
                stop,
                task,
                tracker,
                generation,
            },
        );
        Ok(())
    }

    /// Starts a stream whose task panicked again, from what its sinks
    /// acknowledged, after a pause so that a bug cannot spin the CPU.
    async fn restart_after_panic(&mut self, running: RunningStream) {
        let name = running.config.name.clone();
        tracing::error!(stream = %name, "task panicked (a bug: please report it); restarting it in 1s from its last acknowledged event");
        wait_acknowledged(&running.tracker, self.config.shutdown_timeout).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let from = running.tracker.checkpoint().to_string();
        if let Err(e) = self.start_stream(running.config, &from) {
            tracing::error!("{e}; stream not restarted");
        }
    }
}

/// Saves the checkpoints of `names` on a blocking thread (fsync, or a NATS
/// round trip).
async fn flush_blocking(
    store: &CheckpointBackend,
    checkpoints: &Arc<Mutex<BTreeMap<String, Tracked>>>,
    names: Vec<String>,
) {
    let store = store.clone();
    let checkpoints = checkpoints.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut checkpoints = lock(&checkpoints);
        for name in &names {
            if let Some(tracked) = checkpoints.get_mut(name) {
                tracked.flush(&store);
            }
        }
    })
    .await;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Checkpoint entries are replaced whole; a panic elsewhere cannot tear one.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until the sinks acknowledged everything `tracker`'s stream queued.
async fn wait_acknowledged(tracker: &AckTracker, timeout: Duration) {
    // None: a timeout too large for the clock, i.e. no deadline.
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    while tracker.has_in_flight() && deadline.is_none_or(|d| tokio::time::Instant::now() < d) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Saves moved checkpoints every `interval`, and once more when stopped:
/// those of the streams listed on `changed`.
async fn checkpoint_writer(
    store: Option<CheckpointBackend>,
    tracked: Arc<Mutex<BTreeMap<String, Tracked>>>,
    changed: Arc<ChangeList>,
    interval: Duration,
    stop: CancellationToken,
) {
    let Some(store) = store else { return };
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last_round = tokio::select! {
            _ = timer.tick() => false,
            _ = stop.cancelled() => true,
        };
        // Saving fsyncs: keep it off the async workers.
        let store = store.clone();
        let tracked = tracked.clone();
        let changed = changed.clone();
        let round = tokio::task::spawn_blocking(move || {
            let streams = changed.take();
            let mut tracked = lock(&tracked);
            for stream in streams {
                // Gone if the stream was removed since it was listed.
                if let Some(t) = tracked.get_mut(&*stream) {
                    t.flush(&store);
                }
            }
        });
        if let Err(e) = round.await {
            tracing::error!("checkpoint writer failed: {e}");
            return;
        }
        if last_round {
            return;
        }
    }
}
