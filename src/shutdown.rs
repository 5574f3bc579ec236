//! [`Shutdown`]: what ends or changes a run, from outside the supervisor.
//!
//! * `drain`: cancelled by the first SIGTERM/SIGINT (`main.rs`'s signal
//!   watcher) or by a test; the supervisor stops its streams and drains the
//!   sinks for up to `shutdown_timeout`. Stream tasks hold child tokens of it.
//! * `abort`: cancelled by a second signal; sink runners stop at once.
//! * `reload`: notified on SIGHUP; the supervisor re-reads the configuration.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What ends or changes a run: `drain` stops reading and drains the sinks;
/// `abort` stops waiting for them; `reload` re-reads the configuration.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub drain: CancellationToken,
    pub abort: CancellationToken,
    pub reload: Arc<Notify>,
}
