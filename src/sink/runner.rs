//! The loop every sink runs ([`run`]): batches off the queue, writes with
//! retries, acknowledgements once durable (at once, or after the sink's next
//! sync). See the [`super`] module for the contract.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Batching, Delivery, Sink, SinkTask, Written, MAX_BATCH};
use crate::ack::AckTracker;
use crate::log::Delay;

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
                        "write failed: {e}; retrying in {} (attempt {failures}); its streams wait, nothing is skipped",
                        Delay(delay)
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
