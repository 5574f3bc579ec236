//! Routing: one stream's events to the queues of the sinks that take them.
//!
//! Each route is one sink that takes this stream, with its optional event-type
//! filter. Queues are bounded. With `when_full = "block"` (the default) a full
//! queue makes the stream wait, which stops it reading its socket: TCP
//! backpressure reaches the server and nothing is lost. With `"drop_newest"` the
//! event is dropped for that sink only, counted and logged, and that sink never
//! holds the stream's checkpoint back.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::ack::AckTracker;
use crate::config::WhenFull;
use crate::record::Record;
use crate::sink::Delivery;
use crate::sse::Event;

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
}

impl Router {
    /// `routes[i]` uses slot `i` of `tracker`.
    pub fn new(stream: Arc<str>, routes: Vec<Route>, tracker: Arc<AckTracker>) -> Self {
        Router {
            stream,
            routes,
            tracker,
        }
    }

    pub fn tracker(&self) -> &Arc<AckTracker> {
        &self.tracker
    }

    /// Routes one event, waiting while a blocking sink's queue is full.
    pub async fn route(&self, event: Event, received_at: SystemTime) -> Result<(), SinksClosed> {
        let seq = self.tracker.dispatched(&event.id);
        if self.routes.is_empty() {
            return Ok(());
        }
        let record = Arc::new(Record {
            stream: self.stream.clone(),
            event,
            received_at,
        });
        for (slot, route) in self.routes.iter().enumerate() {
            if !route.wants(&record.event) {
                continue;
            }
            let delivery = Delivery {
                record: record.clone(),
                seq,
                tracker: self.tracker.clone(),
                slot,
            };
            match route.when_full {
                WhenFull::Block => {
                    self.tracker.routed(slot, seq);
                    route.queue.send(delivery).await.map_err(|_| SinksClosed)?;
                }
                // Best effort: never marked as routed, so this sink never holds
                // the checkpoint back, not even for events it did queue.
                WhenFull::DropNewest => match route.queue.try_send(delivery) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let dropped = route.dropped.inc() + 1;
                        if dropped == 1 || dropped.is_multiple_of(10_000) {
                            tracing::warn!(
                                "stream={} sink {} queue is full: dropped event (when_full = \"drop_newest\"; {dropped} dropped so far)",
                                self.stream,
                                route.sink
                            );
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(SinksClosed),
                },
            }
        }
        Ok(())
    }
}
