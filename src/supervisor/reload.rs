//! Reload: re-read and prepare the configuration, then move from the running
//! one to it, touching only what changed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{
    drain_sinks, flush_blocking, lock, wait_acknowledged, Drain, Reloader, RunningSink, Supervisor,
};
use crate::config::{Config, StreamConfig};
use crate::notify;
use crate::sink::SinkConfig;

impl Supervisor<'_> {
    pub(super) async fn reload(&mut self, reloader: &Reloader) {
        notify::reloading();
        // Not a health problem: the streams that do not change keep running.
        tracing::info!("reloading the configuration");
        // The reloader reads and prepares the new configuration (see
        // [`Reloader`]): one that cannot be run is refused here, before
        // anything running is touched, and the old one keeps running.
        match reloader() {
            Ok(new) => {
                self.apply(new).await;
                self.metrics.reloaded(true);
            }
            Err(error) => {
                self.metrics.reloaded(false);
                tracing::error!(
                    "reload refused, the running configuration stays in force:\n{error}"
                )
            }
        }
        // File sinks reopen their files (logrotate's postrotate sends SIGHUP).
        self.reopen.send_modify(|generation| *generation += 1);
        notify::ready(&notify::status_line(&self.metrics));
    }

    /// Moves from the running configuration to `new`, touching only what changed.
    async fn apply(&mut self, new: Config) {
        if new.metrics != self.config.metrics {
            tracing::warn!("[metrics] changes take effect at the next restart");
        }
        let changed_sinks: BTreeSet<String> = self
            .sinks
            .iter()
            .filter(|(name, running)| new.sinks.get(*name) != Some(&running.config))
            .map(|(name, _)| name.clone())
            .collect();
        self.config = Cow::Owned(new);
        let mut to_stop = Vec::new();
        for (name, running) in &self.streams {
            let unchanged = self.config.streams.get(name) == Some(&running.config)
                && self.routes_of(name) == running.routes
                && !running
                    .routes
                    .iter()
                    .any(|sink| changed_sinks.contains(sink));
            if !unchanged {
                to_stop.push(name.clone());
            }
        }

        // Stop the streams that go or change, and wait until what they queued is
        // acknowledged (or the sink is about to be replaced anyway).
        let mut resume = BTreeMap::new();
        for name in &to_stop {
            let Some(running) = self.streams.remove(name) else {
                continue;
            };
            running.stop.cancel();
            let _ = running.task.await;
            if !running
                .routes
                .iter()
                .any(|sink| changed_sinks.contains(sink))
            {
                wait_acknowledged(&running.tracker, self.config.shutdown_timeout).await;
            }
            resume.insert(name.clone(), running.tracker);
        }
        let stopping: Vec<RunningSink> = changed_sinks
            .iter()
            .filter_map(|name| self.sinks.remove(name))
            .collect();
        drain_sinks(
            stopping,
            Drain::Timeout,
            self.config.shutdown_timeout,
            &self.shutdown.abort,
        )
        .await;

        // Save where the stopped streams got to; forget the removed ones.
        let mut removed = Vec::new();
        if let Some(store) = &self.store {
            flush_blocking(store, &self.checkpoints, to_stop.clone()).await;
            let mut checkpoints = lock(&self.checkpoints);
            for name in &to_stop {
                if !self.config.streams.contains_key(name) {
                    checkpoints.remove(name);
                    removed.push(name.clone());
                }
            }
        } else {
            removed.extend(
                to_stop
                    .iter()
                    .filter(|n| !self.config.streams.contains_key(*n))
                    .cloned(),
            );
        }
        for name in &removed {
            self.metrics.remove_stream(name);
        }

        let new_sinks: Vec<SinkConfig> = self
            .config
            .sinks
            .values()
            .filter(|sink| !self.sinks.contains_key(&sink.name))
            .cloned()
            .collect();
        for sink in &new_sinks {
            if let Err(e) = self.start_sink(sink) {
                tracing::error!("{e}; its streams run without it until the next reload");
            }
        }
        let mut added = 0;
        let mut restarted = 0;
        // In a cluster only the streams we held restart here; new ones are
        // claimed by the coordinator.
        let starting: Vec<Arc<StreamConfig>> = self
            .config
            .streams
            .values()
            .filter(|s| !self.streams.contains_key(&s.name))
            .filter(|s| self.cluster.is_none() || resume.contains_key(&s.name))
            .cloned()
            .collect();
        for stream in starting {
            let from = match resume.get(&stream.name) {
                Some(tracker) => {
                    restarted += 1;
                    tracker.checkpoint().to_string()
                }
                None => {
                    added += 1;
                    match self.resume_point(&stream.name, &stream).await {
                        Ok(from) => from,
                        Err(e) => {
                            tracing::error!("{e}; stream not started");
                            continue;
                        }
                    }
                }
            };
            if let Err(e) = self.start_stream(stream, &from) {
                tracing::error!("{e}; stream not started");
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.set_streams(self.config.streams.keys().cloned().collect());
        }
        let kept = self.streams.len().saturating_sub(added + restarted);
        tracing::info!(
            "reloaded: {kept} stream(s) unchanged, {added} added, {restarted} restarted, {} removed; {} sink(s) replaced or removed, {} started",
            removed.len(),
            changed_sinks.len(),
            new_sinks.len()
        );
    }
}
