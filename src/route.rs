//! Routing: one stream's records to the queues of the sinks that take them.
//!
//! Each route is one sink that takes this stream, with its optional event-type
//! filter. A stream routes the [`Records`] of one chunk at a time: one tracker
//! lock, one budget acquisition and one queued [`Delivery`] per route and chunk,
//! rather than per event (those were most of the relay's per-event cost).
//!
//! Queues are bounded twice, by the sink's [`Budget`] (see
//! [`crate::sink::queue`]): in events and in bytes. With `when_full = "block"` (the
//! default) a full queue makes the stream wait, which stops it reading its
//! socket: TCP backpressure reaches the server and nothing is lost. With
//! `"drop_newest"` what does not fit is dropped for that sink only, counted and
//! logged, and that sink never holds the stream's checkpoint back.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::ack::AckTracker;
use crate::record::Records;
use crate::sink::queue::{send_or_drop, send_waiting, Budget, Held, Selection};
use crate::sink::{Delivery, WhenFull};

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
                WhenFull::Block => send_waiting(&route.queue, &route.budget, delivery)
                    .await
                    .map_err(|_| SinksClosed)?,
                // Best effort: never marked as routed, so this sink never holds
                // the checkpoint back, not even for records it did queue.
                WhenFull::DropNewest => {
                    let dropped = send_or_drop(&route.queue, &route.budget, delivery)
                        .map_err(|_| SinksClosed)?;
                    if dropped > 0 {
                        let before = route.dropped.inc_by(dropped as u64);
                        if let Some(after) = drop_warning_due(before, dropped as u64) {
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

/// Whether `dropped` more drops on top of `before` deserve a WARN (the
/// first drop, then once per 10,000, so a stream that outruns a
/// `drop_newest` sink does not flood the log); if so, the count to report.
fn drop_warning_due(before: u64, dropped: u64) -> Option<u64> {
    debug_assert!(dropped > 0, "called after a drop");
    let after = before + dropped;
    (before == 0 || before / 10_000 != after / 10_000).then_some(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::queue::tests::next;
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
        // Routed, not acknowledged: both sinks hold the checkpoint back.
        assert!(tracker.has_in_flight());
        assert_eq!(&*tracker.checkpoint(), "");
        let mut got_all = next(&mut all_rx).await;
        let got_edits = next(&mut edits_rx).await;
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
        assert_eq!(all_budget.free_slots(), 96);
        got_all.held.leave_queue();
        assert_eq!(all_budget.free_slots(), 100);
        let held_before = (1 << 20) - all_budget.free_bytes();
        let rest = got_all.split_off(1);
        assert_eq!(ids(&rest), ["2", "3", "4"]);
        drop(got_all);
        let held_after = (1 << 20) - all_budget.free_bytes();
        assert_eq!(held_after, held_before / 4 * 3);
        drop(rest);
        assert_eq!(all_budget.free_bytes(), 1 << 20);
    }

    /// Routes seven records through one blocking route on `budget`, taking
    /// them off its queue as a sink would meanwhile, and checks that no
    /// delivery holds more than `at_most`. The ids in the order taken.
    async fn seven_taken_in_parts(budget: Arc<Budget>, at_most: usize) -> Vec<String> {
        let (blocking, mut rx) = route("b", None, WhenFull::Block, budget, 10);
        let tracker = Arc::new(AckTracker::new(1, ""));
        let mut router = Router::new(Arc::from("s"), vec![blocking], tracker);
        let routing = tokio::spawn(async move {
            router.route(records(&["m"; 7])).await.unwrap();
        });
        let mut seen = Vec::new();
        while seen.len() < 7 {
            let mut delivery = next(&mut rx).await;
            assert!(
                delivery.len() <= at_most,
                "{} records in one delivery",
                delivery.len()
            );
            seen.extend(ids(&delivery));
            // Slots come back as it leaves the queue, bytes as it is dropped.
            delivery.held.leave_queue();
        }
        routing.await.unwrap();
        seen
    }

    #[tokio::test]
    async fn a_full_queue_blocks_the_stream_until_the_sink_takes_records() {
        // Queued in parts of at most `queue_size` records.
        let seen = seven_taken_in_parts(Budget::new(1 << 20, 3), 3).await;
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
        assert_eq!(ids(&next(&mut rx).await), ["1", "2", "3", "4", "5"]);
        assert_eq!(dropped.get(), 5, "3 of the first chunk, 2 of the second");
        // Never marked as routed: nothing in flight holds the checkpoint.
        assert!(!tracker.has_in_flight());
    }

    #[tokio::test]
    async fn the_byte_budget_holds_each_records_text_and_overhead_exactly() {
        let budget = Budget::new(1 << 20, 100);
        let (all, mut rx) = route("all", None, WhenFull::Block, budget.clone(), 10);
        let tracker = Arc::new(AckTracker::new(1, ""));
        let mut router = Router::new(Arc::from("s"), vec![all], tracker);
        router.route(records(&["edit", "talk", "m"])).await.unwrap();
        let delivery = next(&mut rx).await;
        let expected: usize = delivery
            .text_lens()
            .map(|len| len + crate::record::QUEUE_OVERHEAD)
            .sum();
        assert!(
            delivery.text_lens().all(|len| len >= 10),
            "each holds its data"
        );
        assert_eq!((1 << 20) - budget.free_bytes(), expected);
        assert_eq!(budget.free_slots(), 97);
        drop(delivery);
        assert_eq!(budget.free_bytes(), 1 << 20);
        assert_eq!(budget.free_slots(), 100);
    }

    #[tokio::test]
    async fn a_small_byte_budget_splits_deliveries_and_keeps_their_order() {
        let one = records(&["m"]);
        let per_record = one.text_len(0) + crate::record::QUEUE_OVERHEAD;
        // Room for two records' bytes, for ten by count.
        let seen = seven_taken_in_parts(Budget::new(2 * per_record, 10), 2).await;
        assert_eq!(seen, ["1", "2", "3", "4", "5", "6", "7"]);
    }

    #[test]
    fn drops_are_warned_about_first_and_then_once_per_ten_thousand() {
        // (count before, dropped now)
        assert_eq!(drop_warning_due(0, 1), Some(1));
        assert_eq!(drop_warning_due(0, 50_000), Some(50_000));
        assert_eq!(drop_warning_due(1, 1), None);
        assert_eq!(drop_warning_due(1, 9_998), None);
        assert_eq!(drop_warning_due(9_999, 1), Some(10_000));
        assert_eq!(drop_warning_due(9_999, 2), Some(10_001));
        assert_eq!(drop_warning_due(10_000, 9_999), None);
        assert_eq!(drop_warning_due(19_000, 1_500), Some(20_500));
        assert_eq!(drop_warning_due(20_000, 1), None);
        assert_eq!(drop_warning_due(3, 2), None, "3 * 2 would be wrong too");
    }

    #[tokio::test]
    async fn drop_newest_with_room_drops_nothing_and_counts_nothing() {
        let budget = Budget::new(1 << 20, 100);
        let (lossy, mut rx) = route("l", None, WhenFull::DropNewest, budget, 10);
        let dropped = lossy.dropped.clone();
        let tracker = Arc::new(AckTracker::new(1, ""));
        let mut router = Router::new(Arc::from("s"), vec![lossy], tracker);
        router.route(records(&["m"; 3])).await.unwrap();
        assert_eq!(ids(&next(&mut rx).await), ["1", "2", "3"]);
        assert_eq!(dropped.get(), 0);
    }
}
