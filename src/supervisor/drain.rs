//! Draining sinks: closing their queues and waiting for what they hold to be
//! written and acknowledged, as long as the reason for stopping allows.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::RunningSink;

/// How long [`drain_sinks`] waits.
pub(super) enum Drain<'a> {
    /// Up to `shutdown_timeout` (a signal asked to stop).
    Timeout,
    /// Until the sinks are done, however long; once this token fires (a
    /// signal), up to `shutdown_timeout` more.
    UntilSignal(&'a CancellationToken),
}

/// Closes the sinks' queues and waits for them to write what they hold, as
/// `until` says or until `abort` fires; then stops them.
pub(super) async fn drain_sinks(
    sinks: Vec<RunningSink>,
    until: Drain<'_>,
    timeout: Duration,
    abort: &CancellationToken,
) {
    if sinks.is_empty() {
        return;
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut aborts = Vec::new();
    for sink in sinks {
        drop(sink.queue);
        let task = sink.task;
        tasks.spawn(async move {
            let _ = task.await;
        });
        aborts.push(sink.abort);
    }
    {
        let all_done = async { while tasks.join_next().await.is_some() {} };
        tokio::pin!(all_done);
        let timed = match until {
            Drain::Timeout => true,
            Drain::UntilSignal(signal) => tokio::select! {
                _ = &mut all_done => false,
                _ = signal.cancelled() => {
                    tracing::info!(
                        "signal while the sinks drain: waiting up to shutdown_timeout ({}) more",
                        humantime::format_duration(timeout)
                    );
                    true
                }
                _ = abort.cancelled() => false,
            },
        };
        if timed {
            tokio::select! {
                _ = &mut all_done => {}
                _ = tokio::time::sleep(timeout) => {
                    tracing::warn!(
                        "sinks did not finish within shutdown_timeout ({})",
                        humantime::format_duration(timeout)
                    );
                }
                _ = abort.cancelled() => {}
            }
        }
    }
    if abort.is_cancelled() {
        tracing::warn!("second signal: not waiting for sinks");
    }
    for abort in aborts {
        abort.cancel();
    }
    while tasks.join_next().await.is_some() {}
}
