//! What the cluster coordinator ([`crate::cluster`]) asks of the supervisor:
//! start a stream whose lease it took, release one (stop, wait for its
//! acknowledgements, save its checkpoint), or forget one whose lease was lost.

use tokio_util::sync::CancellationToken;

use super::{flush_blocking, lock, wait_acknowledged, Supervisor};
use crate::cluster::{Cluster, Command};

impl Supervisor<'_> {
    /// Carries out what the cluster coordinator asks.
    pub(super) async fn cluster_command(&mut self, command: Command) {
        match command {
            Command::Start { stream, started } => {
                let token = match self.streams.get(&stream) {
                    Some(running) => Some(running.stop.clone()),
                    None => self.start_claimed(&stream).await,
                };
                let _ = started.send(token);
            }
            Command::Release { stream, done } => {
                if let Some(running) = self.streams.remove(&stream) {
                    running.stop.cancel();
                    let _ = running.task.await;
                    wait_acknowledged(&running.tracker, self.config.shutdown_timeout).await;
                    if let Some(store) = &self.store {
                        flush_blocking(store, &self.checkpoints, vec![stream.clone()]).await;
                    }
                }
                lock(&self.checkpoints).remove(&stream);
                let _ = done.send(());
            }
            Command::Forget { stream } => {
                if let Some(running) = self.streams.remove(&stream) {
                    running.stop.cancel();
                }
                lock(&self.checkpoints).remove(&stream);
            }
        }
    }

    /// Starts a stream whose lease we just took, from the shared checkpoint.
    async fn start_claimed(&mut self, name: &str) -> Option<CancellationToken> {
        let config = self.config.streams.get(name)?.clone();
        // Another instance may have saved it since we last ran it.
        lock(&self.checkpoints).remove(name);
        let from = match self.resume_point(name, &config).await {
            Ok(from) => from,
            Err(e) => {
                tracing::error!("{e}; stream not started, its lease is given back");
                return None;
            }
        };
        if let Err(e) = self.start_stream(config, &from) {
            tracing::error!("{e}; stream not started, its lease is given back");
            return None;
        }
        self.streams.get(name).map(|running| running.stop.clone())
    }
}

/// The next command of the cluster coordinator; never, without a cluster.
pub(super) async fn next_command(cluster: &mut Option<Cluster>) -> Option<Command> {
    match cluster {
        Some(cluster) => cluster.commands.recv().await,
        None => std::future::pending().await,
    }
}
