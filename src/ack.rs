//! Acknowledgement tracking: which event of a stream every sink has made durable.
//!
//! Each stream numbers its events (a sequence number, `seq`) and routes each to
//! some of its sinks. A sink acknowledges events in the order it received them.
//! The stream's checkpoint may name an event only when every sink has
//! acknowledged it and everything routed to it before: it is the id in effect at
//! the lowest sequence number acknowledged by a sink that still has events in
//! flight, or the newest id when no sink has anything in flight.
//!
//! This needs O(sinks) memory per stream, not O(events in flight): each sink
//! remembers the last `seq` routed to it, the last `seq` it acknowledged, and the
//! id in effect there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The streams whose checkpoints may have moved since the checkpoint writer
/// last looked. A tracker lists its stream at its first change after a look
/// ([`AckTracker::unlist`]); the writer takes the list every interval and
/// looks at those streams alone, so an idle stream costs the writer nothing
/// (with 10,000 streams, visiting each every interval was about a seventh of
/// the daemon's idle CPU: each visit touched memory long out of cache).
#[derive(Debug, Default)]
pub struct ChangeList {
    streams: Mutex<Vec<Arc<str>>>,
}

impl ChangeList {
    /// The streams listed since the last call, each once per tracker.
    pub fn take(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.lock())
    }

    fn push(&self, stream: &Arc<str>) {
        self.lock().push(stream.clone());
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<str>>> {
        // A push or a take is one call on the vector: a panic cannot tear it.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where a tracker lists its stream when it changes.
#[derive(Debug)]
struct Listing {
    list: Arc<ChangeList>,
    stream: Arc<str>,
    /// The stream is on `list` and the writer has not looked yet.
    listed: AtomicBool,
}

#[derive(Debug, Clone)]
struct SinkProgress {
    routed: u64,
    acked: u64,
    acked_id: Arc<str>,
}

#[derive(Debug)]
struct State {
    latest_seq: u64,
    latest_id: Arc<str>,
    sinks: Vec<SinkProgress>,
}

/// The acknowledgement state of one stream, shared by the stream and its sinks.
#[derive(Debug)]
pub struct AckTracker {
    state: Mutex<State>,
    /// The checkpoint writer's list, if a writer runs.
    listing: Option<Listing>,
    /// Unique to this tracker, i.e. to one run of its stream.
    run: u64,
}

impl AckTracker {
    /// A tracker for a stream routed to `sinks` sinks (slots `0..sinks`),
    /// resuming from `start_id`.
    pub fn new(sinks: usize, start_id: &str) -> Self {
        let start_id: Arc<str> = Arc::from(start_id);
        let progress = SinkProgress {
            routed: 0,
            acked: 0,
            acked_id: start_id.clone(),
        };
        static RUNS: AtomicU64 = AtomicU64::new(0);
        AckTracker {
            run: RUNS.fetch_add(1, Ordering::Relaxed),
            listing: None,
            state: Mutex::new(State {
                latest_seq: 0,
                latest_id: start_id,
                sinks: vec![progress; sinks],
            }),
        }
    }

    /// Lists `stream` on `list` at every change after the writer's last look
    /// (see [`ChangeList`]), and once now: a new tracker's checkpoint (a
    /// restart's resume point) may not be the one saved.
    pub fn listing_changes(mut self, list: Arc<ChangeList>, stream: Arc<str>) -> Self {
        list.push(&stream);
        self.listing = Some(Listing {
            list,
            stream,
            listed: AtomicBool::new(true),
        });
        self
    }

    /// The checkpoint writer is about to look at this stream: the next change
    /// lists it again. Call before reading the checkpoint, so that a change
    /// after that read is not missed.
    pub fn unlist(&self) {
        if let Some(listing) = &self.listing {
            listing.listed.store(false, Ordering::SeqCst);
        }
    }

    /// Lists the stream for the writer's next round (e.g. after a failed save),
    /// unless it is listed already.
    pub fn list(&self) {
        if let Some(listing) = &self.listing {
            // A load first: a busy stream changes many times a round, and is
            // listed at the first.
            if !listing.listed.load(Ordering::SeqCst)
                && !listing.listed.swap(true, Ordering::SeqCst)
            {
                listing.list.push(&listing.stream);
            }
        }
    }

    /// An identity for this run of the stream: a stream that starts again
    /// (restart, reload, takeover) gets a new tracker and a new number.
    pub fn run(&self) -> u64 {
        self.run
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a
        // single assignment.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `count` events were dispatched, the last with id `last_id`, and the
    /// sinks in `routed` are about to be given some of them: `(slot, i)` marks
    /// slot's sink as routed up to the `i`th event (from 0). One lock for a
    /// chunk's worth of events. Returns the first event's sequence number; the
    /// others follow it.
    pub fn dispatched_many(&self, count: u64, last_id: &str, routed: &[(usize, u64)]) -> u64 {
        let mut state = self.lock();
        self.changed();
        let first = state.latest_seq + 1;
        state.latest_seq += count;
        if *state.latest_id != *last_id {
            state.latest_id = Arc::from(last_id);
        }
        for &(slot, i) in routed {
            let sink = &mut state.sinks[slot];
            sink.routed = sink.routed.max(first + i);
        }
        first
    }

    /// The stream's last event id is now `id`, possibly through a block that
    /// dispatched no event. Once every sink has caught up it becomes the checkpoint.
    pub fn observe_id(&self, id: &str) {
        let mut state = self.lock();
        if *state.latest_id != *id {
            self.changed();
            state.latest_seq += 1;
            state.latest_id = Arc::from(id);
        }
    }

    /// The sink in `slot` made every event it was given up to `seq` durable.
    pub fn acknowledge(&self, slot: usize, seq: u64, id: &str) {
        let mut state = self.lock();
        let sink = &mut state.sinks[slot];
        if seq > sink.acked {
            self.changed();
            sink.acked = seq;
            if *sink.acked_id != *id {
                sink.acked_id = Arc::from(id);
            }
        }
    }

    /// Notes an update that can move the checkpoint; called with the lock
    /// held. The writer's `unlist` comes before it takes the lock to read the
    /// checkpoint: an update under the lock before that read is seen by it,
    /// and one after it finds the stream unlisted and lists it. A change is
    /// never both unlisted and unseen.
    fn changed(&self) {
        self.list();
    }

    /// The id a restart may safely resume from.
    pub fn checkpoint(&self) -> Arc<str> {
        let state = self.lock();
        state
            .sinks
            .iter()
            .filter(|sink| sink.acked < sink.routed)
            .min_by_key(|sink| sink.acked)
            .map_or_else(|| state.latest_id.clone(), |sink| sink.acked_id.clone())
    }

    /// Whether any sink still holds events of this stream it has not
    /// acknowledged.
    pub fn has_in_flight(&self) -> bool {
        self.lock()
            .sinks
            .iter()
            .any(|sink| sink.acked < sink.routed)
    }

    /// Events routed to the sink in `slot` and not yet acknowledged, as
    /// sequence numbers (a bound, not a count: filtered events count too).
    pub fn in_flight(&self, slot: usize) -> u64 {
        let state = self.lock();
        let sink = &state.sinks[slot];
        sink.routed.saturating_sub(sink.acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Dispatches one event with id `id`, routed to the sinks in `slots`.
    fn one(tracker: &AckTracker, id: &Arc<str>, slots: &[usize]) -> u64 {
        let marks: Vec<(usize, u64)> = slots.iter().map(|&slot| (slot, 0)).collect();
        tracker.dispatched_many(1, id, &marks)
    }

    #[test]
    fn checkpoint_follows_the_slower_sink() {
        let tracker = AckTracker::new(2, "0");
        let mut ids = Vec::new();
        for n in 1..=5 {
            let i = id(&n.to_string());
            let seq = one(&tracker, &i, &[0, 1]);
            ids.push((seq, i));
        }
        assert_eq!(&*tracker.checkpoint(), "0", "nothing acknowledged yet");
        tracker.acknowledge(0, ids[4].0, &ids[4].1);
        assert_eq!(&*tracker.checkpoint(), "0", "sink 1 holds it back");
        tracker.acknowledge(1, ids[1].0, &ids[1].1);
        assert_eq!(&*tracker.checkpoint(), "2");
        tracker.acknowledge(1, ids[4].0, &ids[4].1);
        assert_eq!(&*tracker.checkpoint(), "5");
    }

    #[test]
    fn filtered_events_do_not_wait_for_sinks_that_never_got_them() {
        let tracker = AckTracker::new(2, "");
        let a = id("a");
        let seq_a = one(&tracker, &a, &[0, 1]);
        tracker.acknowledge(0, seq_a, &a);
        tracker.acknowledge(1, seq_a, &a);
        // `b` goes to sink 0 only and is acknowledged there.
        let b = id("b");
        let seq_b = one(&tracker, &b, &[0]);
        tracker.acknowledge(0, seq_b, &b);
        assert_eq!(&*tracker.checkpoint(), "b");
        // `c` goes to sink 1 only and is still in flight.
        let c = id("c");
        let seq_c = one(&tracker, &c, &[1]);
        assert_eq!(&*tracker.checkpoint(), "a", "sink 1 last acknowledged `a`");
        assert_eq!(tracker.in_flight(1), seq_c - seq_a);
    }

    #[test]
    fn a_stream_without_sinks_checkpoints_what_it_saw() {
        let tracker = AckTracker::new(0, "");
        one(&tracker, &id("7"), &[]);
        assert_eq!(&*tracker.checkpoint(), "7");
    }

    #[test]
    fn a_chunk_dispatched_at_once_checkpoints_like_one_by_one() {
        let tracker = AckTracker::new(2, "0");
        let last = id("3");
        // Three events; sink 0 takes all, sink 1 only the first.
        let first = tracker.dispatched_many(3, &last, &[(0, 2), (1, 0)]);
        assert_eq!(first, 1);
        assert_eq!(tracker.in_flight(0), 3);
        assert_eq!(tracker.in_flight(1), 1);
        tracker.acknowledge(1, 1, &id("1"));
        assert_eq!(&*tracker.checkpoint(), "0", "sink 0 holds it back");
        tracker.acknowledge(0, 2, &id("2"));
        assert_eq!(&*tracker.checkpoint(), "2");
        tracker.acknowledge(0, 3, &last);
        assert_eq!(&*tracker.checkpoint(), "3");
        assert_eq!(tracker.dispatched_many(2, &id("5"), &[]), 4);
        assert_eq!(
            &*tracker.checkpoint(),
            "5",
            "nothing in flight: the newest id"
        );
    }

    #[test]
    fn an_id_only_block_moves_the_checkpoint_once_the_sinks_caught_up() {
        let tracker = AckTracker::new(1, "0");
        let one_id = id("1");
        let seq = one(&tracker, &one_id, &[0]);
        assert_eq!(seq, 1);
        // `id: 2` with no data: no event, but a new resume point.
        tracker.observe_id("2");
        assert_eq!(&*tracker.checkpoint(), "0", "event 1 is still in flight");
        assert!(tracker.has_in_flight());
        tracker.acknowledge(0, seq, &one_id);
        assert!(!tracker.has_in_flight());
        assert_eq!(&*tracker.checkpoint(), "2");
        // The id-only block took a sequence number: the next event is after it.
        let three = id("3");
        assert_eq!(one(&tracker, &three, &[0]), 3);
        assert_eq!(
            &*tracker.checkpoint(),
            "1",
            "event 3 in flight: the last acknowledged"
        );
        tracker.acknowledge(0, 3, &three);
        assert_eq!(&*tracker.checkpoint(), "3");
    }

    #[test]
    fn observing_the_same_id_again_changes_nothing() {
        let tracker = AckTracker::new(1, "5");
        tracker.observe_id("5");
        assert_eq!(one(&tracker, &id("6"), &[0]), 1, "no sequence number taken");
        tracker.observe_id("6");
        assert_eq!(one(&tracker, &id("7"), &[0]), 2);
        assert_eq!(tracker.in_flight(0), 2);
    }

    #[test]
    fn a_tracker_lists_its_stream_once_a_round_and_only_when_it_changed() {
        let list = Arc::new(ChangeList::default());
        let tracker = AckTracker::new(1, "0").listing_changes(list.clone(), id("s"));
        assert_eq!(list.take(), [id("s")], "a new tracker is looked at once");
        assert!(list.take().is_empty(), "taken");
        tracker.observe_id("1");
        assert!(
            list.take().is_empty(),
            "still listed: the writer has not looked yet"
        );
        tracker.unlist();
        tracker.observe_id("1");
        assert!(list.take().is_empty(), "the same id again is no change");
        let seq = tracker.dispatched_many(1, "2", &[(0, 0)]);
        tracker.dispatched_many(1, "3", &[(0, 0)]);
        assert_eq!(list.take(), [id("s")], "once for two changes");
        tracker.unlist();
        tracker.acknowledge(0, seq, "2");
        assert_eq!(list.take(), [id("s")], "an acknowledgement is a change");
        tracker.unlist();
        tracker.acknowledge(0, seq, "2");
        assert!(list.take().is_empty(), "an acknowledgement seen before");
        // What the writer does after a failed save.
        tracker.list();
        tracker.list();
        assert_eq!(list.take(), [id("s")], "listed again, once");
    }

    #[test]
    fn a_tracker_without_a_list_only_tracks() {
        let tracker = AckTracker::new(1, "0");
        tracker.observe_id("1");
        tracker.list();
        tracker.unlist();
        assert!(tracker.listing.is_none());
        assert_eq!(&*tracker.checkpoint(), "1");
    }

    #[test]
    fn every_update_that_can_move_the_checkpoint_lists_the_stream_and_nothing_else() {
        let list = Arc::new(ChangeList::default());
        let tracker = AckTracker::new(1, "5").listing_changes(list.clone(), id("s"));
        list.take();
        // Each step starts from a look, as the checkpoint writer's.
        tracker.unlist();
        tracker.observe_id("5");
        assert!(list.take().is_empty(), "the same id again");
        tracker.unlist();
        tracker.observe_id("6");
        assert_eq!(list.take(), [id("s")]);
        tracker.unlist();
        let seq = tracker.dispatched_many(1, "7", &[(0, 0)]);
        assert_eq!(list.take(), [id("s")]);
        tracker.unlist();
        tracker.acknowledge(0, seq, "7");
        assert_eq!(list.take(), [id("s")]);
        tracker.unlist();
        tracker.acknowledge(0, seq, "7");
        assert!(list.take().is_empty(), "an acknowledgement seen before");
        assert_eq!(&*tracker.checkpoint(), "7");
    }
}
