//! systemd integration: readiness, reload and stop notifications, a status
//! line, and watchdog keep-alives.
//!
//! Everything here is a no-op unless systemd started the daemon with
//! `NOTIFY_SOCKET` set (`Type=notify`). The watchdog keep-alive is sent from a
//! task on the same runtime as the streams: if the runtime hangs, the pings
//! stop and systemd restarts the service.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::metrics::Metrics;

fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(states: &[NotifyState]) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Config loaded and every stream started.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins; [`ready`] ends it.
pub fn reloading() {
    // systemd 253+ requires the monotonic time with RELOADING=1.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

/// Shutdown begins.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The one-line summary systemd shows in `systemctl status`.
pub fn status_line(metrics: &Metrics) -> String {
    let c = metrics.connection_counts();
    let mut line = format!("{}/{} streams connected", c.connected, c.total);
    if c.reconnecting + c.connecting > 0 {
        line.push_str(&format!(", {} reconnecting", c.reconnecting + c.connecting));
    }
    if c.stopped > 0 {
        line.push_str(&format!(", {} stopped (204 or give_up_after)", c.stopped));
    }
    line
}

/// Sends the status line every few seconds and, if systemd asked for a
/// watchdog (`WatchdogSec=`), `WATCHDOG=1` at half its interval.
pub fn spawn_keepalive(metrics: Arc<Metrics>) -> Option<tokio::task::JoinHandle<()>> {
    if !enabled() {
        return None;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let status_every = Duration::from_secs(5);
    let tick = watchdog.map_or(status_every, |w| (w / 2).min(status_every));
    Some(tokio::spawn(async move {
        let mut timer = tokio::time::interval(tick);
        let mut last_status = String::new();
        loop {
            timer.tick().await;
            if watchdog.is_some() {
                send(&[NotifyState::Watchdog]);
            }
            let status = status_line(&metrics);
            if status != last_status {
                send(&[NotifyState::Status(&status)]);
                last_status = status;
            }
        }
    }))
}
