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

pub mod config;
pub mod file;
pub mod nats;
pub mod queue;
pub mod registry;
mod runner;
pub mod sink_type;
pub mod stdout;
pub mod webhook;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::metrics::SinkMetrics;
use crate::record::{RecordRef, Records};
use queue::{Held, Selection};

pub use config::{SinkConfig, WhenFull};
pub use file::FileSink;
pub use nats::NatsSink;
pub use registry::SinkKind;
pub use runner::run;
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
pub(crate) const MAX_BATCH: usize = 1024;

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

/// 100 ms, doubling to 30 s: quick recovery from a blip, no busy loop on a full disk.
fn retry_delay(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(16));
    Duration::from_millis(ms.min(30_000))
}
