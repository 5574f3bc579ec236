//! Sinks: where records go, and the contract that makes delivery lossless.
//!
//! A sink receives [`Delivery`]s (a stream's records from one chunk) from a
//! bounded queue (shared by all the streams routed to it), writes them, and
//! acknowledges them once they are durable by
//! its own policy. Acknowledgements move the streams' checkpoints
//! (see [`crate::ack`]). The loop in [`run`] is shared by every sink type:
//!
//! * it takes batches off the queue, in order, as large as the sink's
//!   [`Batching`] allows: by default whatever is queued (up to 1024 records)
//!   without waiting; a sink may ask to wait for more, and to bound a batch's
//!   bytes; a delivery that would take a batch over a limit is split;
//! * a failed write is retried with backoff, forever, until it succeeds or the
//!   daemon is stopped: nothing is skipped, and while it retries the queue fills
//!   and the streams feeding it stop reading their sockets (backpressure). The
//!   sink chooses the delay ([`Sink::retry_delay`]), e.g. to honour a server's
//!   `Retry-After`;
//! * a sink whose writes become durable later (periodic fsync) has its
//!   acknowledgements held until [`Sink::sync`] says so.

pub mod file;
pub mod nats;
mod stdout;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::metrics::SinkMetrics;
use crate::record::{RecordRef, Records};
use crate::route::{Held, Selection};

pub use file::FileSink;
pub use nats::NatsSink;
pub use stdout::StdoutSink;
pub use webhook::WebhookSink;

/// Records of one stream on their way to one sink (some or all of a chunk's),
/// with what the sink needs to acknowledge them.
#[derive(Debug)]
pub struct Delivery {
    pub records: Arc<Records>,
    /// Which of `records` this sink takes.
    pub selection: Selection,
    /// The sequence number of `records.get(0)`; record `i` has `first_seq + i`.
    pub first_seq: u64,
    pub tracker: Arc<AckTracker>,
    /// This sink's slot in the stream's tracker.
    pub slot: usize,
    /// The sink's queue budget this delivery holds until dropped.
    pub held: Held,
}

impl Delivery {
    /// How many records this delivery carries (never zero once queued).
    pub fn len(&self) -> usize {
        self.selection.len()
    }

    pub fn is_empty(&self) -> bool {
        self.selection.is_empty()
    }

    pub fn stream(&self) -> &str {
        self.records.stream()
    }

    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> + '_ {
        (0..self.selection.len()).map(|n| self.records.get(self.selection.index(n)))
    }

    /// [`Records::text_len`] of each record, in order.
    pub fn text_lens(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.selection.len()).map(|n| self.records.text_len(self.selection.index(n)))
    }

    /// The sequence number and the record of the last record; `None` if empty.
    pub fn last(&self) -> Option<(u64, RecordRef<'_>)> {
        let n = self.selection.len().checked_sub(1)?;
        let index = self.selection.index(n);
        Some((self.first_seq + index as u64, self.records.get(index)))
    }

    /// Keeps the first `at` records, returning a delivery of the rest with
    /// their share of the held budget.
    pub fn split_off(&mut self, at: usize) -> Delivery {
        let selection = self.selection.split_off(at);
        let mut rest = Delivery {
            records: self.records.clone(),
            selection,
            first_seq: self.first_seq,
            tracker: self.tracker.clone(),
            slot: self.slot,
            held: Held::default(),
        };
        let bytes = self.held.cost_of(rest.text_lens());
        rest.held = self.held.split_off(bytes);
        rest
    }
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

    /// What a record counts against [`Batching::max_bytes`].
    fn size(&self, _record: &RecordRef<'_>) -> usize {
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
    /// The most records in a batch. A delivery that would take the batch over
    /// a limit is split: the rest starts the next batch.
    pub max_events: usize,
    /// The most [`Sink::size`] a batch adds up to. A record larger than this on
    /// its own is written alone.
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
                        sync_and_acknowledge(&name, &mut sink, &mut awaiting_sync, &metrics.queue_depth).await;
                        return;
                    }
                },
                _ = tick(&mut sync_timer) => {
                    sync_and_acknowledge(&name, &mut sink, &mut awaiting_sync, &metrics.queue_depth).await;
                    continue;
                }
            },
        };
        if !fill(
            &sink, &mut queue, first, &mut batch, &mut carry, limits, &abort,
        )
        .await
        {
            return;
        }
        let events: usize = batch.iter().map(Delivery::len).sum();
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
                    metrics.write_succeeded();
                    metrics.written.inc_by(events as u64);
                    acknowledge(&batch);
                    metrics.queue_depth.dec_by(events as i64);
                    break;
                }
                Ok(Written::AwaitingSync) => {
                    metrics.write_succeeded();
                    metrics.written.inc_by(events as u64);
                    awaiting_sync.add(&batch, events as u64);
                    break;
                }
                Err(e) => {
                    failures += 1;
                    metrics.failures.inc();
                    metrics.write_failed();
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

/// Forms a batch from `first` and what follows it, to the sink's limits:
/// takes what is queued and, if the sink asks for it, waits for more until
/// `limits.timeout` after now. The part of a delivery that would take the batch
/// over a limit is left in `carry`. Returns false if `abort` fired.
async fn fill<S: Sink>(
    sink: &S,
    queue: &mut mpsc::Receiver<Delivery>,
    first: Delivery,
    batch: &mut Vec<Delivery>,
    carry: &mut Option<Delivery>,
    limits: Batching,
    abort: &CancellationToken,
) -> bool {
    let mut events = 0;
    let mut bytes = 0;
    if !admit(sink, first, batch, carry, limits, &mut events, &mut bytes) {
        return true;
    }
    // A configured timeout too large for the clock means: no deadline.
    let deadline = tokio::time::Instant::now()
        .checked_add(limits.timeout)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400));
    while events < limits.max_events {
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
        if !admit(sink, next, batch, carry, limits, &mut events, &mut bytes) {
            break;
        }
    }
    true
}

/// Adds what of `delivery` fits in the batch (at least one record if the batch
/// is empty), leaving the rest in `carry`. Returns whether the batch has room
/// for more.
fn admit<S: Sink>(
    sink: &S,
    mut delivery: Delivery,
    batch: &mut Vec<Delivery>,
    carry: &mut Option<Delivery>,
    limits: Batching,
    events: &mut usize,
    bytes: &mut usize,
) -> bool {
    // Off the queue: its slots are free for the streams to fill again while
    // this batch is written.
    delivery.held.leave_queue();
    let mut taken = 0;
    for record in delivery.records() {
        let size = sink.size(&record);
        let fits = *events < limits.max_events && bytes.saturating_add(size) <= limits.max_bytes;
        if !fits && *events > 0 {
            break;
        }
        *events += 1;
        *bytes = bytes.saturating_add(size);
        taken += 1;
    }
    if taken < delivery.len() {
        *carry = Some(delivery.split_off(taken));
    }
    if taken > 0 {
        batch.push(delivery);
    }
    carry.is_none()
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
        if let (true, Some((seq, record))) = (last_of_run, delivery.last()) {
            delivery.tracker.acknowledge(delivery.slot, seq, record.id);
        }
    }
}

/// Acknowledgements held back until a sync: the newest per stream, so memory
/// stays proportional to the number of streams, not of events.
#[derive(Default)]
struct PendingAcks {
    /// Keyed by (tracker address, slot).
    newest: HashMap<(usize, usize), HeldAck>,
    /// How many events the held acknowledgements cover.
    events: u64,
}

struct HeldAck {
    tracker: Arc<AckTracker>,
    seq: u64,
    id: String,
}

impl PendingAcks {
    fn add(&mut self, batch: &[Delivery], events: u64) {
        self.events += events;
        for d in batch {
            let Some((seq, record)) = d.last() else {
                continue;
            };
            let key = (Arc::as_ptr(&d.tracker) as usize, d.slot);
            let held = self.newest.entry(key).or_insert_with(|| HeldAck {
                tracker: d.tracker.clone(),
                seq,
                id: String::new(),
            });
            held.seq = seq;
            held.id.clear();
            held.id.push_str(record.id);
        }
    }
}

async fn sync_and_acknowledge<S: Sink>(
    name: &str,
    sink: &mut S,
    pending: &mut PendingAcks,
    unacknowledged: &Gauge,
) {
    if pending.newest.is_empty() {
        return;
    }
    match sink.sync().await {
        Ok(()) => {
            for ((_, slot), held) in pending.newest.drain() {
                held.tracker.acknowledge(slot, held.seq, &held.id);
            }
            unacknowledged.dec_by(std::mem::take(&mut pending.events) as i64);
        }
        Err(e) => {
            tracing::warn!(sink = %name, "sync failed: {e}; acknowledgements wait for the next sync")
        }
    }
}
