//! The supervisor: starts a task per sink and per stream, keeps checkpoints,
//! and shuts everything down in the order that loses nothing.
//!
//! Start: load each stream's checkpoint (a broken one stops start-up with an
//! error), start the sinks, then the streams, then the checkpoint writer.
//!
//! Stop (`drain` fired, or every stream was told 204 by its server):
//! 1. streams stop reading; dropping their routes closes the sink queues;
//! 2. sinks write and acknowledge what is queued, for up to `shutdown_timeout`;
//! 3. checkpoints are written one last time.
//!
//! `abort` (a second signal) skips the wait in step 2; step 3 still runs, and a
//! checkpoint only ever names acknowledged events, so nothing is skipped on the
//! next start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::checkpoint::{CheckpointError, CheckpointStore, Tracked};
use crate::config::{Config, SinkKind};
use crate::route::{Route, Router};
use crate::sink::{self, Delivery, FileSink, StdoutSink, WebhookSink};
use crate::stream::{Stream, StreamEnd};

/// Why the daemon could not run.
#[derive(Debug)]
pub enum RunError {
    Checkpoint(CheckpointError),
    Stream { stream: String, problem: String },
    Sink { sink: String, problem: String },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Checkpoint(e) => write!(f, "{e}"),
            RunError::Stream { stream, problem } => {
                write!(f, "error: stream `{stream}`: {problem}")
            }
            RunError::Sink { sink, problem } => write!(f, "error: sink `{sink}`: {problem}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Signals that end a run: `drain` stops reading and drains the sinks; `abort`
/// stops waiting for them.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub abort: CancellationToken,
}

/// Whether checkpoints are kept on disk (`run`) or only in memory (`tail`, `demo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoints {
    OnDisk,
    InMemory,
}

/// Runs `config` until every stream has stopped for good or `shutdown` says so.
pub async fn run(
    config: &Config,
    checkpoints: Checkpoints,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let store = match checkpoints {
        Checkpoints::OnDisk => {
            Some(CheckpointStore::open(&config.data_dir).map_err(RunError::Checkpoint)?)
        }
        Checkpoints::InMemory => None,
    };
    let mut resume_points = BTreeMap::new();
    for (name, stream) in &config.streams {
        let saved = match &store {
            Some(store) => store.load(name).map_err(RunError::Checkpoint)?,
            None => None,
        };
        let from_checkpoint = saved.is_some();
        let id = saved
            .or_else(|| stream.initial_last_event_id.clone())
            .unwrap_or_default();
        resume_points.insert(name.clone(), (id, from_checkpoint));
    }

    let mut sink_tasks = JoinSet::new();
    let mut queues: BTreeMap<&str, mpsc::Sender<Delivery>> = BTreeMap::new();
    for (name, sink_config) in &config.sinks {
        let (sender, receiver) = mpsc::channel(sink_config.queue_size);
        queues.insert(name, sender);
        let abort = shutdown.abort.clone();
        let name = name.clone();
        match &sink_config.kind {
            SinkKind::Stdout => {
                let sink = StdoutSink::new(sink_config.encoding);
                sink_tasks.spawn(sink::run(name, sink, receiver, abort));
            }
            SinkKind::File {
                path,
                fsync,
                fsync_interval,
            } => {
                let sink =
                    FileSink::new(&name, path, sink_config.encoding, *fsync, *fsync_interval);
                sink_tasks.spawn(sink::run(name, sink, receiver, abort));
            }
            SinkKind::Webhook(webhook) => {
                let sink = WebhookSink::new(&name, webhook.clone(), sink_config.encoding).map_err(
                    |problem| RunError::Sink {
                        sink: name.clone(),
                        problem,
                    },
                )?;
                sink_tasks.spawn(sink::run(name, sink, receiver, abort));
            }
        }
    }

    let mut stream_tasks = JoinSet::new();
    let mut tracked = Vec::new();
    for (name, stream_config) in &config.streams {
        let routes: Vec<Route> = config
            .sinks
            .values()
            .filter(|sink| sink.takes_stream(name))
            .map(|sink| Route {
                sink: Arc::from(sink.name.as_str()),
                queue: queues[sink.name.as_str()].clone(),
                event_types: sink.event_types.as_ref().map(|t| Arc::from(t.as_slice())),
                when_full: sink.when_full,
                dropped: Default::default(),
            })
            .collect();
        if routes.is_empty() {
            tracing::warn!(
                "stream={name} no sink takes this stream; its events are read and discarded"
            );
        }
        let (start_id, from_checkpoint) = &resume_points[name];
        let tracker = Arc::new(AckTracker::new(routes.len(), start_id));
        let router = Router::new(Arc::from(name.as_str()), routes, tracker.clone());
        let stream = Stream::new(stream_config.clone(), router, start_id).map_err(|problem| {
            RunError::Stream {
                stream: name.clone(),
                problem,
            }
        })?;
        if *from_checkpoint && !start_id.is_empty() {
            tracing::info!("stream={name} resuming from checkpoint, Last-Event-ID {start_id}");
        }
        tracked.push(Tracked {
            stream: name.clone(),
            tracker,
            saved: Arc::from(start_id.as_str()),
        });
        stream_tasks.spawn(stream.run(shutdown.drain.child_token()));
    }
    // From here on only the streams' routes hold the queues: when the last
    // stream feeding a sink ends, its queue closes and the sink drains and stops.
    drop(queues);

    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(checkpoint_writer(
        store,
        tracked,
        config.checkpoint_interval,
        writer_stop.clone(),
    ));
    tracing::info!(
        "started {} stream(s) and {} sink(s)",
        config.streams.len(),
        config.sinks.len()
    );

    let mut stopped_by_server = 0;
    while let Some(end) = stream_tasks.join_next().await {
        if let Ok(StreamEnd::StoppedByServer) = end {
            stopped_by_server += 1;
        }
    }
    if stopped_by_server == config.streams.len() {
        tracing::info!("every stream was stopped by its server (HTTP 204); finishing");
    }
    drain_sinks(&mut sink_tasks, config.shutdown_timeout, &shutdown.abort).await;
    writer_stop.cancel();
    let _ = writer.await;
    tracing::info!("stopped");
    Ok(())
}

async fn drain_sinks(sinks: &mut JoinSet<()>, timeout: Duration, abort: &CancellationToken) {
    if sinks.is_empty() {
        return;
    }
    let all_done = async { while sinks.join_next().await.is_some() {} };
    tokio::select! {
        _ = all_done => {}
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!(
                "sinks did not finish within shutdown_timeout ({}); what they hold is not acknowledged and will be sent again after restart",
                humantime::format_duration(timeout)
            );
        }
        _ = abort.cancelled() => {
            tracing::warn!("second signal: not waiting for sinks; unacknowledged events will be sent again after restart");
        }
    }
    abort.cancel();
    sinks.shutdown().await;
}

/// Saves moved checkpoints every `interval`, and once more when stopped.
async fn checkpoint_writer(
    store: Option<CheckpointStore>,
    mut tracked: Vec<Tracked>,
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
        let store_for_round = store.clone();
        tracked = match tokio::task::spawn_blocking(move || {
            for t in &mut tracked {
                t.flush(&store_for_round);
            }
            tracked
        })
        .await
        {
            Ok(tracked) => tracked,
            Err(e) => {
                tracing::error!("checkpoint writer failed: {e}");
                return;
            }
        };
        if last_round {
            return;
        }
    }
}
