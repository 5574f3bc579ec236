//! Sinks: where records go, and the contract that makes delivery lossless.
//!
//! A sink receives [`Delivery`]s from a bounded queue (shared by all the streams
//! routed to it), writes them, and acknowledges them once they are durable by
//! its own policy. Acknowledgements move the streams' checkpoints
//! (see [`crate::ack`]). The loop in [`run`] is shared by every sink type:
//!
//! * it takes batches off the queue, in order, as large as the sink's
//!   [`Batching`] allows: by default whatever is queued (up to 1024) without
//!   waiting; a sink may ask to wait for more, and to bound a batch's bytes;
//! * a failed write is retried with backoff, forever, until it succeeds or the
//!   daemon is stopped: nothing is skipped, and while it retries the queue fills
//!   and the streams feeding it stop reading their sockets (backpressure). The
//!   sink chooses the delay ([`Sink::retry_delay`]), e.g. to honour a server's
//!   `Retry-After`;
//! * a sink whose writes become durable later (periodic fsync) has its
//!   acknowledgements held until [`Sink::sync`] says so.

mod file;
pub mod nats;
mod stdout;
mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::metrics::SinkMetrics;
use crate::record::Record;

pub use file::FileSink;
pub use nats::NatsSink;
pub use stdout::StdoutSink;
pub use webhook::WebhookSink;

/// One record on its way to one sink, with what the sink needs to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    pub record: Arc<Record>,
    /// The event's sequence number within its stream.
    pub seq: u64,
    pub tracker: Arc<AckTracker>,
    /// This sink's slot in the stream's tracker.
    pub slot: usize,
    /// The sink's queue budget bytes this delivery holds until dropped.
    pub held: crate::route::Held,
}

/// What a successful write means for acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Durable now: acknowledge the batch.
    Durable,
    /// Written, durable after the next successful [`Sink::sync`].
    AwaitingSync,
}

/// A destination for records.
pub trait Sink: Send + 'static {
    /// Writes `batch` in order. On error the runner calls again with the same
    /// batch; a sink that wrote part of it must not write that part twice.
    /// The sink may take the vector's contents while it works (e.g. to move them
    /// to a blocking thread) but must put them back before returning.
    fn write(
        &mut self,
        batch: &mut Vec<Delivery>,
    ) -> impl Future<Output = io::Result<Written>> + Send;

    /// Makes everything written so far durable.
    fn sync(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }

    /// How often [`Sink::sync`] runs, for sinks that answer `AwaitingSync`.
    fn sync_interval(&self) -> Option<Duration> {
        None
    }

    /// How the runner forms batches for this sink.
    /// Closes and reopens output files (after logrotate moved them). Called
    /// between batches; the default does nothing.
    fn reopen(&mut self) {}

    fn batching(&self) -> Batching {
        Batching::default()
    }

    /// What `delivery` counts against [`Batching::max_bytes`].
    fn size(&self, _delivery: &Delivery) -> usize {
        0
    }

    /// How long to wait before writing again after `failures` failed writes
    /// in a row.
    fn retry_delay(&mut self, failures: u32) -> Duration {
        retry_delay(failures)
    }
}

/// When the runner closes a batch: at whichever limit is reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_events: usize,
    /// The most [`Sink::size`] a batch adds up to. A delivery that would take
    /// the batch over it starts the next batch; one larger than this on its own
    /// is written alone.
    pub max_bytes: usize,
    /// How long a batch's first delivery waits for more. Zero takes what is
    /// queued and never waits.
    pub timeout: Duration,
}

/// The most deliveries in one batch by default.
const MAX_BATCH: usize = 1024;

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_events: MAX_BATCH,
            max_bytes: usize::MAX,
            timeout: Duration::ZERO,
        }
    }
}

/// What a running sink is connected to.
pub struct SinkTask {
    pub name: String,
    pub queue: mpsc::Receiver<Delivery>,
    /// Stops the sink at once, even mid-write (a second signal).
    pub abort: CancellationToken,
    pub metrics: SinkMetrics,
    /// Bumped to ask file sinks to reopen their files (SIGHUP, for logrotate).
    pub reopen: watch::Receiver<u64>,
}

/// Runs a sink until its queue closes (every stream feeding it has stopped and
/// everything queued is written) or `abort` fires.
pub async fn run<S: Sink>(mut sink: S, task: SinkTask) {
    let SinkTask {
        name,
        mut queue,
        abort,
        metrics,
        mut reopen,
    } = task;
    let limits = sink.batching();
    let mut batch = Vec::with_capacity(limits.max_events.clamp(1, MAX_BATCH));
    // A delivery that did not fit in the previous batch opens the next one.
    let mut carry = None;
    let mut awaiting_sync = PendingAcks::default();
    let mut sync_timer = sink.sync_interval().map(|every| {
        let mut timer = tokio::time::interval(every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    loop {
        let first = match carry.take() {
            Some(first) => first,
            None => tokio::select! {
                biased;
                _ = abort.cancelled() => return,
                received = queue.recv() => match received {
                    Some(first) => first,
                    None => {
                        sync_and_acknowledge(&name, &mut sink, &mut awaiting_sync).await;
                        return;
                    }
                },
                _ = tick(&mut sync_timer) => {
                    sync_and_acknowledge(&name, &mut sink, &mut awaiting_sync).await;
                    continue;
                }
            },
        };
        batch.push(first);
        if !fill(&sink, &mut queue, &mut batch, &mut carry, limits, &abort).await {
            return;
        }
        metrics.queue_depth.set(queue.len() as i64);
        if reopen.has_changed().unwrap_or(false) {
            reopen.mark_unchanged();
            sink.reopen();
        }
        let mut failures = 0u32;
        loop {
            let written = tokio::select! {
                biased;
                _ = abort.cancelled() => return,
                written = sink.write(&mut batch) => written,
            };
            match written {
                Ok(Written::Durable) => {
                    metrics.written.inc_by(batch.len() as u64);
                    acknowledge(&batch);
                    break;
                }
                Ok(Written::AwaitingSync) => {
                    metrics.written.inc_by(batch.len() as u64);
                    awaiting_sync.add(&batch);
                    break;
                }
                Err(e) => {
                    failures += 1;
                    metrics.failures.inc();
                    let delay = sink.retry_delay(failures);
                    tracing::warn!(
                        sink = %name,
                        "write failed: {e}; retrying in {:.1}s (attempt {failures}); its streams wait, nothing is skipped",
                        delay.as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = abort.cancelled() => return,
                    }
                    metrics.retries.inc();
                }
            }
        }
        if failures > 0 {
            tracing::info!(sink = %name, "write succeeded after {failures} failed attempts; resuming");
        }
        batch.clear();
    }
}

/// Tops up `batch`, which holds its first delivery, to the sink's limits: takes
/// what is queued and, if the sink asks for it, waits for more until
/// `limits.timeout` after now. A delivery that would take the batch over
/// `max_bytes` is left in `carry`. Returns false if `abort` fired.
async fn fill<S: Sink>(
    sink: &S,
    queue: &mut mpsc::Receiver<Delivery>,
    batch: &mut Vec<Delivery>,
    carry: &mut Option<Delivery>,
    limits: Batching,
    abort: &CancellationToken,
) -> bool {
    let mut bytes: usize = batch.iter().map(|d| sink.size(d)).sum();
    // A configured timeout too large for the clock means: no deadline.
    let deadline = tokio::time::Instant::now()
        .checked_add(limits.timeout)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400));
    while batch.len() < limits.max_events {
        let next = match queue.try_recv() {
            Ok(next) => next,
            Err(mpsc::error::TryRecvError::Empty) if !limits.timeout.is_zero() => {
                tokio::select! {
                    biased;
                    _ = abort.cancelled() => return false,
                    received = queue.recv() => match received {
                        Some(next) => next,
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            Err(_) => break,
        };
        let size = sink.size(&next);
        if bytes.saturating_add(size) > limits.max_bytes {
            *carry = Some(next);
            break;
        }
        bytes += size;
        batch.push(next);
    }
    true
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// 100 ms, doubling to 30 s: quick recovery from a blip, no busy loop on a full disk.
fn retry_delay(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(16));
    Duration::from_millis(ms.min(30_000))
}

/// Acknowledges a written batch: once per run of deliveries from the same stream,
/// with the last (highest) sequence number of the run.
fn acknowledge(batch: &[Delivery]) {
    for (i, delivery) in batch.iter().enumerate() {
        let last_of_run = batch.get(i + 1).is_none_or(|next| {
            !Arc::ptr_eq(&next.tracker, &delivery.tracker) || next.slot != delivery.slot
        });
        if last_of_run {
            delivery
                .tracker
                .acknowledge(delivery.slot, delivery.seq, &delivery.record.event.id);
        }
    }
}

/// Acknowledgements held back until a sync: the newest per stream, so memory
/// stays proportional to the number of streams, not of events.
#[derive(Default)]
struct PendingAcks {
    /// Keyed by (tracker address, slot).
    newest: HashMap<(usize, usize), HeldAck>,
}

struct HeldAck {
    tracker: Arc<AckTracker>,
    seq: u64,
    id: Arc<str>,
}

impl PendingAcks {
    fn add(&mut self, batch: &[Delivery]) {
        for d in batch {
            let key = (Arc::as_ptr(&d.tracker) as usize, d.slot);
            let held = HeldAck {
                tracker: d.tracker.clone(),
                seq: d.seq,
                id: d.record.event.id.clone(),
            };
            self.newest.insert(key, held);
        }
    }
}

async fn sync_and_acknowledge<S: Sink>(name: &str, sink: &mut S, pending: &mut PendingAcks) {
    if pending.newest.is_empty() {
        return;
    }
    match sink.sync().await {
        Ok(()) => {
            for ((_, slot), held) in pending.newest.drain() {
                held.tracker.acknowledge(slot, held.seq, &held.id);
            }
        }
        Err(e) => {
            tracing::warn!(sink = %name, "sync failed: {e}; acknowledgements wait for the next sync")
        }
    }
}
