//! A sink's queue and its budget: how much one sink may hold of what its
//! streams route to it, and queueing within that.
//!
//! Queues are bounded twice: in events (`queue_size`; a slot comes back when
//! the sink takes the delivery off its queue) and in bytes (given back once
//! the delivery is written, so a queue of large events cannot hold
//! `queue_size` times `max_event_bytes`). `send_waiting` waits for room
//! (`when_full = "block"`); `send_or_drop` queues what fits now
//! (`"drop_newest"`). Both count what they queue in the budget's
//! `unacknowledged` gauge, which the sink's runner lowers on acknowledgement.

use std::ops::Range;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};

use super::Delivery;
use crate::record::QUEUE_OVERHEAD;

/// The sink's queue is closed: the daemon is shutting down.
#[derive(Debug)]
pub struct Closed;

/// Default bytes of records one sink may hold (queued or in a batch being
/// written). With the file sink's 512 KiB batches it keeps a few batches in
/// flight, so reading and writing overlap, and keeps a stream of 16 KiB events
/// within 20 MiB of RSS (4 MiB measured 20.2 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 2 << 20;

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

    /// Queue slots free now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Bytes free now.
    pub fn free_bytes(&self) -> usize {
        self.bytes.available_permits()
    }

    /// What a record of `text_len` bytes ([`Records::text_len`](crate::record::Records::text_len)) counts,
    /// capped at the whole budget so that a record larger than the budget can
    /// still pass, alone.
    pub fn cost(&self, text_len: usize) -> u32 {
        (text_len + QUEUE_OVERHEAD).min(self.capacity as usize) as u32
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

    /// What records of these [`Records::text_len`](crate::record::Records::text_len)s cost against the budget
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

/// Which records of a [`Records`](crate::record::Records) a delivery carries.
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

    /// The `n`th selected record's index in its [`Records`](crate::record::Records).
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

/// Queues `delivery`, in parts as large as the budget allows at once, waiting
/// for room.
pub(crate) async fn send_waiting(
    queue: &mpsc::Sender<Delivery>,
    budget: &Arc<Budget>,
    mut delivery: Delivery,
) -> Result<(), Closed> {
    loop {
        let (count, bytes) = budget.fitting(&delivery, budget.capacity, budget.slot_capacity, true);
        // At least one record, and never more than the whole budget: the
        // acquisitions below would otherwise wait forever.
        debug_assert!(
            count > 0 && count as u32 <= budget.slot_capacity && bytes <= budget.capacity,
            "{count} records of {bytes} bytes from a budget of {} slots and {} bytes",
            budget.slot_capacity,
            budget.capacity
        );
        let rest = (count < delivery.len()).then(|| delivery.split_off(count));
        debug_assert_eq!(delivery.len(), count, "the part queued now is what fitted");
        let bytes_permit = budget.bytes.acquire_many(bytes).await.map_err(|_| Closed)?;
        let slots_permit = budget
            .slots
            .acquire_many(count as u32)
            .await
            .map_err(|_| Closed)?;
        // No await between the acquisitions and this: if the future is
        // dropped, the delivery gives the budget back.
        delivery.held = Held::from_permits(budget, bytes_permit, slots_permit);
        let permit = queue.reserve().await.map_err(|_| Closed)?;
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
pub(crate) fn send_or_drop(
    queue: &mpsc::Sender<Delivery>,
    budget: &Arc<Budget>,
    mut delivery: Delivery,
) -> Result<usize, Closed> {
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
    match queue.try_send(delivery) {
        Ok(()) => Ok(total - count),
        Err(e) => {
            budget.unacknowledged.dec_by(count as i64);
            match e {
                mpsc::error::TrySendError::Full(_) => Ok(total),
                mpsc::error::TrySendError::Closed(_) => Err(Closed),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::ack::AckTracker;
    use crate::record::Records;
    use crate::sse::EventRef;

    /// A delivery of records whose data are these lengths, ids 1, 2, ...
    fn delivery(data_lens: &[usize]) -> Delivery {
        let mut records = Records::new(Arc::from("s"), SystemTime::UNIX_EPOCH, 0);
        for (i, len) in data_lens.iter().enumerate() {
            records.push(&EventRef {
                event: "m",
                data: &"x".repeat(*len),
                id: &(i + 1).to_string(),
                retry: None,
            });
        }
        Delivery {
            records: Arc::new(records),
            selection: Selection::Run(0..data_lens.len()),
            first_seq: 1,
            tracker: Arc::new(AckTracker::new(1, "")),
            slot: 0,
            held: Held::default(),
        }
    }

    fn ids(delivery: &Delivery) -> Vec<String> {
        delivery.records().map(|r| r.id.to_owned()).collect()
    }

    /// The next delivery on a sink's queue, or a failed test after 5 s (a
    /// send that queued nothing must not leave the test waiting forever).
    pub(crate) async fn next(queue: &mut mpsc::Receiver<Delivery>) -> Delivery {
        tokio::time::timeout(std::time::Duration::from_secs(5), queue.recv())
            .await
            .expect("nothing queued within 5 s")
            .expect("the queue closed")
    }

    #[test]
    fn bounds_are_clamped_to_what_the_semaphores_and_counters_hold() {
        // Documented default: 2 MiB of records per sink.
        assert_eq!(DEFAULT_QUEUE_BYTES, 2 * 1024 * 1024);
        let tiny = Budget::new(0, 0);
        assert_eq!((tiny.free_bytes(), tiny.free_slots()), (1, 1));
        let huge = Budget::new(usize::MAX, usize::MAX);
        assert_eq!(huge.free_bytes(), u32::MAX as usize);
        assert_eq!(huge.free_slots(), u32::MAX as usize >> 3);
        // A queue size just past u32 must not wrap to a tiny queue.
        let past_u32 = Budget::new(1 << 20, (u32::MAX as usize) + 2);
        assert_eq!(past_u32.free_slots(), u32::MAX as usize >> 3);
    }

    #[test]
    fn a_record_costs_its_text_and_overhead_capped_at_the_whole_budget() {
        let budget = Budget::new(1000, 10);
        assert_eq!(budget.cost(0), QUEUE_OVERHEAD as u32);
        assert_eq!(budget.cost(100), 100 + QUEUE_OVERHEAD as u32);
        assert_eq!(budget.cost(5000), 1000, "larger than the budget: all of it");
    }

    #[test]
    fn fitting_takes_records_while_bytes_and_slots_last() {
        let budget = Budget::new(1 << 20, 100);
        let d = delivery(&[10, 20, 30]);
        let costs: Vec<u32> = d.text_lens().map(|l| budget.cost(l)).collect();
        let all: u32 = costs.iter().sum();
        // Exactly enough bytes: all three.
        assert_eq!(budget.fitting(&d, all, 3, false), (3, all));
        // One byte short: the last does not fit.
        assert_eq!(
            budget.fitting(&d, all - 1, 3, false),
            (2, costs[0] + costs[1])
        );
        // Slots bound it too.
        assert_eq!(budget.fitting(&d, all, 1, false), (1, costs[0]));
        assert_eq!(budget.fitting(&d, all, 0, false), (0, 0));
        // Nothing fits: none, unless one must go anyway (alone).
        assert_eq!(budget.fitting(&d, 1, 3, false), (0, 0));
        assert_eq!(budget.fitting(&d, 1, 3, true), (1, costs[0]));
        assert_eq!(budget.fitting(&d, 0, 0, true), (1, costs[0]));
    }

    #[test]
    fn picked_selections_index_and_split_like_runs() {
        let mut picked = Selection::Picked(vec![1, 4, 6]);
        assert_eq!((picked.len(), picked.is_empty()), (3, false));
        assert_eq!(picked.index(2), 6);
        let rest = picked.split_off(1);
        assert_eq!(picked, Selection::Picked(vec![1]));
        assert_eq!(rest, Selection::Picked(vec![4, 6]));
        assert_eq!(
            Selection::Picked(vec![2]).split_off(5),
            Selection::Picked(vec![])
        );
        let mut run = Selection::Run(3..7);
        assert_eq!((run.len(), run.index(0), run.index(3)), (4, 3, 6));
        assert_eq!(run.split_off(3), Selection::Run(6..7));
        assert_eq!(run, Selection::Run(3..6));
        assert_eq!(run.split_off(10), Selection::Run(6..6));
        assert!(Selection::Run(6..6).is_empty());
    }

    #[tokio::test]
    async fn a_waiting_send_holds_what_it_queued_until_taken_and_dropped() {
        let budget = Budget::counting(1 << 20, 10, Gauge::default());
        let (queue, mut rx) = mpsc::channel(4);
        let d = delivery(&[10, 20]);
        let cost: u32 = d.text_lens().map(|l| budget.cost(l)).sum();
        send_waiting(&queue, &budget, d).await.unwrap();
        assert_eq!(budget.unacknowledged.get(), 2);
        assert_eq!(budget.free_slots(), 8);
        assert_eq!(budget.free_bytes(), (1 << 20) - cost as usize);
        let mut taken = next(&mut rx).await;
        taken.held.leave_queue();
        taken.held.leave_queue();
        assert_eq!(budget.free_slots(), 10, "slots given back once");
        let tail = taken.split_off(1);
        assert_eq!(
            tail.held.bytes,
            budget.cost(tail.text_lens().next().unwrap())
        );
        drop(taken);
        assert_eq!(budget.free_bytes(), (1 << 20) - tail.held.bytes as usize);
        drop(tail);
        assert_eq!(budget.free_bytes(), 1 << 20);
        // The sink is gone: the send says so, and holds nothing.
        drop(rx);
        assert!(send_waiting(&queue, &budget, delivery(&[1])).await.is_err());
        assert_eq!((budget.free_bytes(), budget.free_slots()), (1 << 20, 10));
    }

    #[tokio::test]
    async fn a_record_larger_than_the_budget_passes_alone() {
        let budget = Budget::new(100, 10);
        let (queue, mut rx) = mpsc::channel(4);
        let sending = {
            let budget = budget.clone();
            tokio::spawn(async move { send_waiting(&queue, &budget, delivery(&[500, 5])).await })
        };
        let first = next(&mut rx).await;
        assert_eq!(ids(&first), ["1"]);
        assert_eq!(budget.free_bytes(), 0);
        drop(first);
        let second = next(&mut rx).await;
        assert_eq!(ids(&second), ["2"]);
        sending.await.unwrap().unwrap();
    }

    #[test]
    fn drop_newest_queues_what_fits_and_gives_back_what_it_could_not_queue() {
        let budget = Budget::counting(1 << 20, 3, Gauge::default());
        let (queue, mut rx) = mpsc::channel(1);
        // Room for three of five records: two dropped.
        assert_eq!(send_or_drop(&queue, &budget, delivery(&[1; 5])).unwrap(), 2);
        assert_eq!(budget.unacknowledged.get(), 3);
        assert_eq!(budget.free_slots(), 0);
        // No slot: all dropped, nothing held.
        let free = budget.free_bytes();
        assert_eq!(send_or_drop(&queue, &budget, delivery(&[1; 2])).unwrap(), 2);
        assert_eq!(budget.free_bytes(), free);
        // Slots free again, but the channel is full: all dropped, the gauge
        // and the budget as they were.
        rx.try_recv().unwrap().held.leave_queue();
        let again = delivery(&[1; 2]);
        assert_eq!(send_or_drop(&queue, &budget, again).unwrap(), 0);
        let before = (budget.free_bytes(), budget.free_slots());
        assert_eq!(send_or_drop(&queue, &budget, delivery(&[1])).unwrap(), 1);
        assert_eq!((budget.free_bytes(), budget.free_slots()), before);
        assert_eq!(budget.unacknowledged.get(), 5);
        // The sink is gone.
        drop(rx);
        assert!(send_or_drop(&queue, &budget, delivery(&[1])).is_err());
        assert_eq!(budget.unacknowledged.get(), 5);
    }
}
