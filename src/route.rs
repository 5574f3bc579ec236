//! Routing: one stream's records to the queues of the sinks that take them.
//!
//! Each route is one sink that takes this stream, with its optional event-type
//! filter. A stream routes the [`Records`] of one chunk at a time: one tracker
//! lock, one budget acquisition and one queued [`Delivery`] per route and chunk,
//! rather than per event (those were most of the relay's per-event cost).
//!
//! Queues are bounded twice, by the sink's [`Budget`]: in events (`queue_size`,
//! slots given back when the sink takes a delivery off its queue) and in bytes
//! (given back once the delivery is written, so a queue of large events cannot
//! hold `queue_size` times `max_event_bytes`). With `when_full = "block"` (the
//! default) a full queue makes the stream wait, which stops it reading its
//! socket: TCP backpressure reaches the server and nothing is lost. With
//! `"drop_newest"` what does not fit is dropped for that sink only, counted and
//! logged, and that sink never holds the stream's checkpoint back.

use std::ops::Range;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};

use crate::ack::AckTracker;
use crate::config::WhenFull;
use crate::record::Records;
use crate::sink::Delivery;

/// Default bytes of records one sink may hold (queued or in a batch being
/// written). With the file sink's 512 KiB batches it keeps a few batches in
/// flight, so reading and writing overlap, and keeps a stream of 16 KiB events
/// within 20 MiB of RSS (4 MiB measured 20.2 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 2 << 20;

/// What one record counts against a budget besides its text: its place in
/// [`Records`] and its share of the delivery, roughly.
const OVERHEAD: usize = 64;

/// A sink's queue bounds, shared by every stream routed to it.
#[derive(Debug)]
pub struct Budget {
    bytes: Semaphore,
    capacity: u32,
    /// Queue slots: events queued and not yet taken by the sink.
    slots: Semaphore,
    slot_capacity: u32,
    /// Events given to the sink and not yet acknowledged by it: raised here
    /// when queued, lowered by the sink's runner when acknowledged. It is the
    /// sink's `sse_relay_sink_queue_depth` gauge.
    pub unacknowledged: Gauge,
}

impl Budget {
    /// A budget of `bytes` bytes and `queue_size` queued events.
    pub fn new(bytes: usize, queue_size: usize) -> Arc<Self> {
        Budget::counting(bytes, queue_size, Gauge::default())
    }

    /// As [`Budget::new`], counting unacknowledged events in `unacknowledged`.
    pub fn counting(bytes: usize, queue_size: usize, unacknowledged: Gauge) -> Arc<Self> {
        let capacity = bytes.clamp(1, u32::MAX as usize) as u32;
        let slot_capacity = queue_size.clamp(1, u32::MAX as usize >> 3) as u32;
        Arc::new(Budget {
            bytes: Semaphore::new(capacity as usize),
            capacity,
            slots: Semaphore::new(slot_capacity as usize),
            slot_capacity,
            unacknowledged,
        })
    }

    /// What a record of `text_len` bytes ([`Records::text_len`]) counts,
    /// capped at the whole budget so that a record larger than the budget can
    /// still pass, alone.
    pub fn cost(&self, text_len: usize) -> u32 {
        (text_len + OVERHEAD).min(self.capacity as usize) as u32
    }

    /// How many of `delivery`'s first records fit within `bytes` bytes and
    /// `slots` slots (at least one if `at_least_one`), and what they cost.
    fn fitting(
        &self,
        delivery: &Delivery,
        bytes: u32,
        slots: u32,
        at_least_one: bool,
    ) -> (usize, u32) {
        let mut count = 0;
        let mut cost = 0u32;
        for text_len in delivery.text_lens() {
            let next = self.cost(text_len);
            let fits =
                count < slots as usize && u64::from(cost) + u64::from(next) <= u64::from(bytes);
            let forced = at_least_one && count == 0;
            if !(fits || forced) {
                break;
            }
            cost += next;
            count += 1;
        }
        (count, cost)
    }
}

/// Budget held by one delivery: its queue slots until the sink takes it off
/// the queue ([`Held::leave_queue`]), its bytes until the sink drops it (after
/// writing it, or at shutdown).
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<Budget>>,
    bytes: u32,
    slots: u32,
}

impl Held {
    /// What a delivery holds once these permits of `budget` are acquired.
    fn from_permits(
        budget: &Arc<Budget>,
        bytes: SemaphorePermit<'_>,
        slots: SemaphorePermit<'_>,
    ) -> Held {
        let held = Held {
            budget: Some(budget.clone()),
            bytes: bytes.num_permits() as u32,
            slots: slots.num_permits() as u32,
        };
        bytes.forget();
        slots.forget();
        held
    }

    /// The delivery is off the queue: its slots are free for the next ones.
    pub fn leave_queue(&mut self) {
        if let Some(budget) = &self.budget {
            budget.slots.add_permits(self.slots as usize);
        }
        self.slots = 0;
    }

    /// Moves `bytes` of what is held (off the queue) to a new `Held`, for the
    /// part of a delivery split off it.
    pub fn split_off(&mut self, bytes: u32) -> Held {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Held {
            budget: self.budget.clone(),
            bytes,
            slots: 0,
        }
    }

    /// What records of these [`Records::text_len`]s cost against the budget
    /// this holds (0 without one).
    pub fn cost_of(&self, text_lens: impl Iterator<Item = usize>) -> u32 {
        match &self.budget {
            Some(budget) => text_lens.map(|len| budget.cost(len)).sum(),
            None => 0,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.bytes.add_permits(self.bytes as usize);
            budget.slots.add_permits(self.slots as usize);
        }
    }
}

/// Which records of a [`Records`] a delivery carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A run of records: all of them unless a filter or a split says otherwise.
    Run(Range<usize>),
    /// The records a route's event-type filter kept, in order.
    Picked(Vec<usize>),
}

impl Selection {
    pub fn len(&self) -> usize {
        match self {
            Selection::Run(run) => run.len(),
            Selection::Picked(picked) => picked.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `n`th selected record's index in its [`Records`].
    pub fn index(&self, n: usize) -> usize {
        match self {
            Selection::Run(run) => run.start + n,
            Selection::Picked(picked) => picked[n],
        }
    }

    /// Keeps the first `at` selected records, returning the rest.
    pub fn split_off(&mut self, at: usize) -> Selection {
        match self {
            Selection::Run(run) => {
                let middle = (run.start + at).min(run.end);
                let rest = middle..run.end;
                run.end = middle;
                Selection::Run(rest)
            }
            Selection::Picked(picked) => Selection::Picked(picked.split_off(at.min(picked.len()))),
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
    /// The sink's queue bounds, shared by every stream routed to it.
    pub budget: Arc<Budget>,
}

impl Route {
    /// The records of `records` this route takes.
    fn select(&self, records: &Records) -> Selection {
        match &self.event_types {
            None => Selection::Run(0..records.len()),
            Some(types) => Selection::Picked(
                (0..records.len())
                    .filter(|&i| {
                        let event = records.get(i).event;
                        types.iter().any(|t| t == event)
                    })
                    .collect(),
            ),
        }
    }
}

/// The sinks every sink queue has gone away: the daemon is shutting down.
#[derive(Debug)]
pub struct SinksClosed;

/// Sends one stream's records to its routes.
pub struct Router {
    stream: Arc<str>,
    routes: Vec<Route>,
    tracker: Arc<AckTracker>,
    /// Scratch space reused from chunk to chunk.
    selections: Vec<Selection>,
    marks: Vec<(usize, u64)>,
}

impl Router {
    /// `routes[i]` uses slot `i` of `tracker`.
    pub fn new(stream: Arc<str>, routes: Vec<Route>, tracker: Arc<AckTracker>) -> Self {
        Router {
            stream,
            routes,
            tracker,
            selections: Vec::new(),
            marks: Vec::new(),
        }
    }

    pub fn tracker(&self) -> &Arc<AckTracker> {
        &self.tracker
    }

    pub fn stream(&self) -> &Arc<str> {
        &self.stream
    }

    /// Routes `records` (one chunk's worth), in order, waiting while a blocking
    /// sink's queue or budget is full.
    ///
    /// If the future is dropped part-way (shutdown), what was not queued was
    /// never acknowledged, so the checkpoint stays before it.
    pub async fn route(&mut self, mut records: Records) -> Result<(), SinksClosed> {
        records.trim_excess();
        let Some(last) = records.len().checked_sub(1) else {
            return Ok(());
        };
        // Blocking routes are marked as routed up to the last record of the
        // chunk they take before any of it is queued: a sink is then never
        // acknowledged ahead of records still on their way to it (if the stream
        // waits on a full queue meanwhile, the checkpoint just waits too).
        self.marks.clear();
        self.selections.clear();
        for (slot, route) in self.routes.iter().enumerate() {
            let selection = route.select(&records);
            if route.when_full == WhenFull::Block && !selection.is_empty() {
                let last_taken = selection.index(selection.len() - 1);
                self.marks.push((slot, last_taken as u64));
            }
            self.selections.push(selection);
        }
        let first_seq =
            self.tracker
                .dispatched_many(records.len() as u64, records.get(last).id, &self.marks);
        let records = Arc::new(records);
        for slot in 0..self.routes.len() {
            let selection = std::mem::replace(&mut self.selections[slot], Selection::Run(0..0));
            if selection.is_empty() {
                continue;
            }
            let delivery = Delivery {
                records: records.clone(),
                selection,
                first_seq,
                tracker: self.tracker.clone(),
                slot,
                held: Held::default(),
            };
            let route = &self.routes[slot];
            match route.when_full {
                WhenFull::Block => send_waiting(route, delivery).await?,
                // Best effort: never marked as routed, so this sink never holds
                // the checkpoint back, not even for records it did queue.
                WhenFull::DropNewest => {
                    let dropped = send_or_drop(route, delivery)?;
                    if dropped > 0 {
                        let before = route.dropped.inc_by(dropped as u64);
                        let after = before + dropped as u64;
                        if before == 0 || before / 10_000 != after / 10_000 {
                            tracing::warn!(
                                stream = %self.stream,
                                "sink {} queue is full: dropped event (when_full = \"drop_newest\"; {after} dropped so far)",
                                route.sink
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Queues `delivery`, in parts as large as the budget allows at once, waiting
/// for room.
async fn send_waiting(route: &Route, mut delivery: Delivery) -> Result<(), SinksClosed> {
    let budget = &route.budget;
    loop {
        let (count, bytes) = budget.fitting(&delivery, budget.capacity, budget.slot_capacity, true);
        let rest = (count < delivery.len()).then(|| delivery.split_off(count));
        let bytes_permit = budget
            .bytes
            .acquire_many(bytes)
            .await
            .map_err(|_| SinksClosed)?;
        let slots_permit = budget
            .slots
            .acquire_many(count as u32)
            .await
            .map_err(|_| SinksClosed)?;
        // No await between the acquisitions and this: if the future is
        // dropped, the delivery gives the budget back.
        delivery.held = Held::from_permits(budget, bytes_permit, slots_permit);
        let permit = route.queue.reserve().await.map_err(|_| SinksClosed)?;
        // Before the send: the sink may acknowledge at once.
        budget.unacknowledged.inc_by(count as i64);
        permit.send(delivery);
        match rest {
            Some(rest) => delivery = rest,
            None => return Ok(()),
        }
    }
}

/// Queues what of `delivery` fits now; returns how many records were dropped.
fn send_or_drop(route: &Route, mut delivery: Delivery) -> Result<usize, SinksClosed> {
    let budget = &route.budget;
    let total = delivery.len();
    let free_bytes = budget.bytes.available_permits().min(u32::MAX as usize) as u32;
    let free_slots = budget.slots.available_permits().min(u32::MAX as usize) as u32;
    let (count, bytes) = budget.fitting(&delivery, free_bytes, free_slots, false);
    if count == 0 {
        return Ok(total);
    }
    if count < total {
        delivery.split_off(count); // dropped
    }
    let (Ok(bytes_permit), Ok(slots_permit)) = (
        budget.bytes.try_acquire_many(bytes),
        budget.slots.try_acquire_many(count as u32),
    ) else {
        // Another stream took the room meanwhile.
        return Ok(total);
    };
    delivery.held = Held::from_permits(budget, bytes_permit, slots_permit);
    budget.unacknowledged.inc_by(count as i64);
    match route.queue.try_send(delivery) {
        Ok(()) => Ok(total - count),
        Err(e) => {
            budget.unacknowledged.dec_by(count as i64);
            match e {
                mpsc::error::TrySendError::Full(_) => Ok(total),
                mpsc::error::TrySendError::Closed(_) => Err(SinksClosed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sse::EventRef;
    use std::time::SystemTime;

    fn records(types: &[&str]) -> Records {
        let mut records = Records::new(Arc::from("s"), SystemTime::UNIX_EPOCH, 0);
        for (i, event) in types.iter().enumerate() {
            let id = (i + 1).to_string();
            records.push(&EventRef {
                event,
                data: "0123456789",
                id: &id,
                retry: None,
            });
        }
        records
    }

    fn route(
        name: &str,
        types: Option<&[&str]>,
        when_full: WhenFull,
        budget: Arc<Budget>,
        queue_size: usize,
    ) -> (Route, mpsc::Receiver<Delivery>) {
        let (queue, receiver) = mpsc::channel(queue_size);
        let route = Route {
            sink: Arc::from(name),
            queue,
            event_types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            when_full,
            dropped: Counter::default(),
            budget,
        };
        (route, receiver)
    }

    fn ids(delivery: &Delivery) -> Vec<String> {
        delivery.records().map(|r| r.id.to_owned()).collect()
    }

    #[tokio::test]
    async fn each_route_gets_what_its_filter_takes_and_the_budget_comes_back() {
        let all_budget = Budget::new(1 << 20, 100);
        let (all, mut all_rx) = route("all", None, WhenFull::Block, all_budget.clone(), 10);
        let (edits, mut edits_rx) = route(
            "edits",
            Some(&["edit"]),
            WhenFull::Block,
            Budget::new(1 << 20, 100),
            10,
        );
        let tracker = Arc::new(AckTracker::new(2, ""));
        let mut router = Router::new(Arc::from("s"), vec![all, edits], tracker.clone());
        router
            .route(records(&["edit", "talk", "edit", "talk"]))
            .await
            .unwrap();
        let mut got_all = all_rx.recv().await.unwrap();
        let got_edits = edits_rx.recv().await.unwrap();
        assert_eq!(ids(&got_all), ["1", "2", "3", "4"]);
        assert_eq!(ids(&got_edits), ["1", "3"]);
        assert_eq!(got_edits.last().map(|(seq, r)| (seq, r.id)), Some((3, "3")));
        // Sink "edits" is routed up to seq 3 only: acknowledging it there and
        // "all" at 4 checkpoints 4.
        tracker.acknowledge(1, 3, "3");
        tracker.acknowledge(0, 4, "4");
        assert_eq!(&*tracker.checkpoint(), "4");

        // Slots come back when the delivery leaves the queue, bytes when it is
        // dropped, and a split moves its share of the bytes.
        assert_eq!(all_budget.slots.available_permits(), 96);
        got_all.held.leave_queue();
        assert_eq!(all_budget.slots.available_permits(), 100);
        let held_before = (1 << 20) - all_budget.bytes.available_permits();
        let rest = got_all.split_off(1);
        assert_eq!(ids(&rest), ["2", "3", "4"]);
        drop(got_all);
        let held_after = (1 << 20) - all_budget.bytes.available_permits();
        assert_eq!(held_after, held_before / 4 * 3);
        drop(rest);
        assert_eq!(all_budget.bytes.available_permits(), 1 << 20);
    }

    #[tokio::test]
    async fn a_full_queue_blocks_the_stream_until_the_sink_takes_records() {
        let budget = Budget::new(1 << 20, 3);
        let (blocking, mut rx) = route("b", None, WhenFull::Block, budget, 10);
        let tracker = Arc::new(AckTracker::new(1, ""));
        let mut router = Router::new(Arc::from("s"), vec![blocking], tracker);
        let routing = tokio::spawn(async move {
            router.route(records(&["m"; 7])).await.unwrap();
        });
        // Queued in parts of at most `queue_size` records.
        let mut seen = Vec::new();
        while seen.len() < 7 {
            let mut delivery = rx.recv().await.unwrap();
            assert!(delivery.len() <= 3);
            seen.extend(ids(&delivery));
            delivery.held.leave_queue();
        }
        routing.await.unwrap();
        assert_eq!(seen, ["1", "2", "3", "4", "5", "6", "7"]);
    }

    #[tokio::test]
    async fn drop_newest_queues_what_fits_and_counts_the_rest() {
        let budget = Budget::new(1 << 20, 5);
        let (lossy, mut rx) = route("l", None, WhenFull::DropNewest, budget, 10);
        let dropped = lossy.dropped.clone();
        let tracker = Arc::new(AckTracker::new(1, ""));
        let mut router = Router::new(Arc::from("s"), vec![lossy], tracker.clone());
        router.route(records(&["m"; 8])).await.unwrap();
        router.route(records(&["m"; 2])).await.unwrap();
        assert_eq!(ids(&rx.recv().await.unwrap()), ["1", "2", "3", "4", "5"]);
        assert_eq!(dropped.get(), 5, "3 of the first chunk, 2 of the second");
        // Never marked as routed: nothing in flight holds the checkpoint.
        assert!(!tracker.has_in_flight());
    }
}
