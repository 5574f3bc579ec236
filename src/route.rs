//! Routing: one stream's events to the queues of the sinks that take them.
//!
//! Each route is one sink that takes this stream, with its optional event-type
//! filter. Queues are bounded twice: in deliveries (the channel's capacity) and
//! in bytes (the sink's [`Budget`], so a queue of large events cannot hold
//! `queue_size` times `max_event_bytes`). With `when_full = "block"` (the
//! default) a full queue makes the stream wait, which stops it reading its
//! socket: TCP backpressure reaches the server and nothing is lost. With
//! `"drop_newest"` the event is dropped for that sink only, counted and logged,
//! and that sink never holds the stream's checkpoint back.
//!
//! Events are routed a chunk at a time: one tracker lock, one budget
//! acquisition and one channel reservation per route and chunk, rather than
//! per event (those were most of the relay's per-event cost).

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, Semaphore};

use crate::ack::AckTracker;
use crate::config::WhenFull;
use crate::record::Record;
use crate::sink::Delivery;
use crate::sse::Event;

/// Default bytes of records one sink may hold (queued or in a batch being
/// written). With the file sink's 512 KiB batches it keeps a few batches in
/// flight, so reading and writing overlap, and keeps a stream of 16 KiB events
/// within 20 MiB of RSS (4 MiB measured 20.2 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 2 << 20;

/// What one delivery counts against a budget besides its data and id: the
/// record, the delivery and the channel slot, roughly.
const OVERHEAD: usize = 128;

/// A sink's byte budget, shared by every stream routed to it.
#[derive(Debug)]
pub struct Budget {
    bytes: Semaphore,
    capacity: u32,
}

impl Budget {
    pub fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.clamp(1, u32::MAX as usize) as u32;
        Arc::new(Budget {
            bytes: Semaphore::new(capacity as usize),
            capacity,
        })
    }

    /// What an event counts, capped at the whole budget so that an event larger
    /// than the budget can still pass, alone.
    fn cost(&self, event: &Event) -> u32 {
        (event.data.len() + event.id.len() + OVERHEAD).min(self.capacity as usize) as u32
    }
}

/// Bytes of a sink's budget held by one delivery; given back when the sink
/// drops the delivery (after writing it, or at shutdown).
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<Budget>>,
    bytes: u32,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.bytes.add_permits(self.bytes as usize);
        }
    }
}

/// One sink that takes a stream.
#[derive(Debug, Clone)]
pub struct Route {
    pub sink: Arc<str>,
    pub queue: mpsc::Sender<Delivery>,
    pub event_types: Option<Arc<[String]>>,
    pub when_full: WhenFull,
    /// Events dropped because the queue was full (`drop_newest` only); shared
    /// by every stream routed to the sink.
    pub dropped: Counter,
    /// The sink's byte budget, shared by every stream routed to it.
    pub budget: Arc<Budget>,
}

impl Route {
    fn wants(&self, event: &Event) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| *t == *event.event))
    }
}

/// The sinks every sink queue has gone away: the daemon is shutting down.
#[derive(Debug)]
pub struct SinksClosed;

/// Sends one stream's events to its routes.
pub struct Router {
    stream: Arc<str>,
    routes: Vec<Route>,
    tracker: Arc<AckTracker>,
    /// Scratch space reused from chunk to chunk.
    records: Vec<Arc<Record>>,
    deliveries: Vec<Delivery>,
    marks: Vec<(usize, u64)>,
}

impl Router {
    /// `routes[i]` uses slot `i` of `tracker`.
    pub fn new(stream: Arc<str>, routes: Vec<Route>, tracker: Arc<AckTracker>) -> Self {
        Router {
            stream,
            routes,
            tracker,
            records: Vec::new(),
            deliveries: Vec::new(),
            marks: Vec::new(),
        }
    }

    pub fn tracker(&self) -> &Arc<AckTracker> {
        &self.tracker
    }

    /// Routes `events` (one chunk's worth; left empty), in order, waiting while
    /// a blocking sink's queue or budget is full.
    ///
    /// If the future is dropped part-way (shutdown), what was not queued was
    /// never acknowledged, so the checkpoint stays before it.
    pub async fn route_all(
        &mut self,
        events: &mut Vec<Event>,
        received_at: SystemTime,
    ) -> Result<(), SinksClosed> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        // Blocking routes are marked as routed up to the last event of the
        // chunk they want before any of it is queued: a sink is then never
        // acknowledged ahead of events still on their way to it (if the stream
        // waits on a full queue meanwhile, the checkpoint just waits too).
        self.marks.clear();
        for (slot, route) in self.routes.iter().enumerate() {
            if route.when_full == WhenFull::Block {
                if let Some(last) = events.iter().rposition(|e| route.wants(e)) {
                    self.marks.push((slot, last as u64));
                }
            }
        }
        let first_seq = self
            .tracker
            .dispatched_many(events.len() as u64, &last.id, &self.marks);
        self.records.clear();
        if self.routes.is_empty() {
            events.clear();
            return Ok(());
        }
        let stream = &self.stream;
        self.records.extend(events.drain(..).map(|event| {
            Arc::new(Record {
                stream: stream.clone(),
                event,
                received_at,
            })
        }));
        for (slot, route) in self.routes.iter().enumerate() {
            match route.when_full {
                WhenFull::Block => {
                    // Index loops rather than iterator adaptors: the future
                    // must stay `Send` across the awaits below.
                    let mut next = 0;
                    while next < self.records.len() {
                        // The next group: as much as the budget and the queue
                        // can take at once (at least one delivery).
                        let mut bytes = 0u32;
                        self.deliveries.clear();
                        while next < self.records.len() {
                            let record = &self.records[next];
                            if !route.wants(&record.event) {
                                next += 1;
                                continue;
                            }
                            let cost = route.budget.cost(&record.event);
                            let full = self.deliveries.len() >= route.queue.max_capacity()
                                || u64::from(bytes) + u64::from(cost)
                                    > u64::from(route.budget.capacity);
                            if full && !self.deliveries.is_empty() {
                                break;
                            }
                            bytes += cost;
                            self.deliveries.push(Delivery {
                                record: record.clone(),
                                seq: first_seq + next as u64,
                                tracker: self.tracker.clone(),
                                slot,
                                held: Held::default(),
                            });
                            next += 1;
                        }
                        if self.deliveries.is_empty() {
                            break;
                        }
                        route
                            .budget
                            .bytes
                            .acquire_many(bytes)
                            .await
                            .map_err(|_| SinksClosed)?
                            .forget();
                        // No await between the acquisition and this: if the
                        // future is dropped, the deliveries give the bytes back.
                        for delivery in &mut self.deliveries {
                            delivery.held = Held {
                                budget: Some(route.budget.clone()),
                                bytes: route.budget.cost(&delivery.record.event),
                            };
                        }
                        let permits = route
                            .queue
                            .reserve_many(self.deliveries.len())
                            .await
                            .map_err(|_| SinksClosed)?;
                        for (permit, delivery) in permits.zip(self.deliveries.drain(..)) {
                            permit.send(delivery);
                        }
                    }
                }
                // Best effort: never marked as routed, so this sink never holds
                // the checkpoint back, not even for events it did queue.
                WhenFull::DropNewest => {
                    for (i, record) in self.records.iter().enumerate() {
                        if !route.wants(&record.event) {
                            continue;
                        }
                        let cost = route.budget.cost(&record.event);
                        let sent = match route.budget.bytes.try_acquire_many(cost) {
                            Err(_) => false,
                            Ok(permit) => {
                                permit.forget();
                                let delivery = Delivery {
                                    record: record.clone(),
                                    seq: first_seq + i as u64,
                                    tracker: self.tracker.clone(),
                                    slot,
                                    held: Held {
                                        budget: Some(route.budget.clone()),
                                        bytes: cost,
                                    },
                                };
                                match route.queue.try_send(delivery) {
                                    Ok(()) => true,
                                    Err(mpsc::error::TrySendError::Full(_)) => false,
                                    Err(mpsc::error::TrySendError::Closed(_)) => {
                                        return Err(SinksClosed)
                                    }
                                }
                            }
                        };
                        if !sent {
                            let dropped = route.dropped.inc() + 1;
                            if dropped == 1 || dropped.is_multiple_of(10_000) {
                                tracing::warn!(
                                    "stream={} sink {} queue is full: dropped event (when_full = \"drop_newest\"; {dropped} dropped so far)",
                                    self.stream,
                                    route.sink
                                );
                            }
                        }
                    }
                }
            }
        }
        self.records.clear();
        Ok(())
    }
}
