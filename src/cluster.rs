//! Failover between instances: stream leases in a JetStream key-value bucket.
//!
//! Every instance configured with the same streams and `[cluster] bucket`
//! runs a coordinator that decides which streams this instance runs; the
//! supervisor starts and stops them when told ([`Command`]). Nothing here is
//! home-made consensus: exclusivity rides on JetStream's compare-and-set.
//!
//! * The bucket's `max_age` is `lease_ttl`: a key not written for that long
//!   disappears (server-side clock).
//! * `instance.<id>`: each instance's heartbeat, put every `lease_ttl / 3`.
//!   The live instances are the heartbeat keys present.
//! * `stream.<name>`: a lease. Claimed with `create` (succeeds only if the key
//!   does not exist), renewed every `lease_ttl / 3` with `update` at the
//!   revision this instance last wrote (fails if anyone else wrote since),
//!   released with a delete at that revision.
//! * Fair share: an instance holds at most `ceil(streams / live instances)`.
//!   It claims free streams up to its share, and releases what is above it
//!   (stop reading, wait until its sinks acknowledged what it queued, save its
//!   checkpoint, then delete the lease), so a new instance gets its share.
//!
//! Losing a lease: if no renewal succeeded for `2/3 lease_ttl` since the last
//! successful one was *sent*, the coordinator cancels the stream itself (it
//! holds the stream's stop token; no round trip through the supervisor).
//! The server wrote that renewal after it was sent, so the key lives until at
//! least `sent + lease_ttl`: the stream stops reading at most `2/3 ttl + tick`
//! (`tick = ttl / 10`) after the send, i.e. before anyone else can claim it,
//! as long as the two clocks run at the same rate and this process is not
//! frozen for longer than `ttl / 4` (a SIGSTOP, a VM pause). The overlap
//! after that is what was already queued for the sinks (at most the sink's
//! `queue_size`, plus `max_in_flight` publishes): it is published after the
//! new owner started, from the same checkpoint or before. The failure mode is
//! duplicates, never loss: a checkpoint only names events every sink
//! acknowledged, so whoever resumes from any saved checkpoint misses nothing,
//! and the `nats` sink's `Nats-Msg-Id` makes JetStream drop the duplicates
//! within its duplicate window.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, NatsCheckpointConfig};
use crate::nats::{key_for, KV_TIMEOUT};

/// What the coordinator asks of the supervisor.
#[derive(Debug)]
pub enum Command {
    /// Start `stream` from its shared checkpoint; answer with its stop token,
    /// or `None` if it could not start.
    Start {
        stream: String,
        started: oneshot::Sender<Option<CancellationToken>>,
    },
    /// Stop `stream`, wait until its sinks acknowledged what it queued, save
    /// its checkpoint, then answer.
    Release {
        stream: String,
        done: oneshot::Sender<()>,
    },
    /// The lease is lost: the stream was already cancelled; forget it without
    /// saving its checkpoint (another instance may own it now).
    Forget { stream: String },
}

/// The running coordinator, as the supervisor holds it.
pub struct Cluster {
    pub commands: mpsc::Receiver<Command>,
    streams: watch::Sender<Vec<String>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Cluster {
    /// Connects, opens (or creates) the lease bucket and starts the
    /// coordinator for `streams`. It claims nothing once `drain` fires.
    pub async fn start(
        cluster: &ClusterConfig,
        connection: &NatsCheckpointConfig,
        streams: Vec<String>,
        drain: CancellationToken,
    ) -> Result<Cluster, String> {
        let client = crate::nats::connect(
            &connection.connection,
            &format!("sse-relay cluster {}", cluster.instance_id),
            Duration::from_secs(2),
        )
        .await?;
        let store = crate::nats::open_bucket(&client, &cluster.bucket, cluster.lease_ttl).await?;
        let (commands_tx, commands) = mpsc::channel(64);
        let (streams_tx, streams_rx) = watch::channel(streams);
        let stop = CancellationToken::new();
        let coordinator = Coordinator {
            store,
            id: cluster.instance_id.clone(),
            ttl: cluster.lease_ttl,
            commands: commands_tx,
            streams: streams_rx,
            held: BTreeMap::new(),
            heartbeat_sent: None,
            drain,
        };
        let task = tokio::spawn(coordinator.run(stop.clone()));
        tracing::info!(
            "cluster: instance {} joined bucket {} (lease_ttl {})",
            cluster.instance_id,
            cluster.bucket,
            humantime::format_duration(cluster.lease_ttl)
        );
        Ok(Cluster {
            commands,
            streams: streams_tx,
            stop,
            task,
        })
    }

    /// The configured streams changed (reload).
    pub fn set_streams(&self, streams: Vec<String>) {
        self.streams.send_replace(streams);
    }

    /// Releases every lease and the heartbeat, so other instances take over
    /// at once instead of after `lease_ttl`. Call after the last checkpoint
    /// save.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

#[derive(Debug)]
enum LeaseState {
    /// Claimed; the supervisor is starting it.
    Starting(oneshot::Receiver<Option<CancellationToken>>),
    Running(CancellationToken),
    /// Above our share; the supervisor is stopping it.
    Releasing(oneshot::Receiver<()>),
}

#[derive(Debug)]
struct Lease {
    revision: u64,
    /// When the last successful write of this lease was sent.
    renewed: Instant,
    state: LeaseState,
}

struct Coordinator {
    store: kv::Store,
    id: String,
    ttl: Duration,
    commands: mpsc::Sender<Command>,
    streams: watch::Receiver<Vec<String>>,
    held: BTreeMap<String, Lease>,
    heartbeat_sent: Option<Instant>,
    drain: CancellationToken,
}

fn lease_key(stream: &str) -> String {
    format!("stream.{}", key_for(stream))
}

impl Coordinator {
    fn tick(&self) -> Duration {
        (self.ttl / 10).max(Duration::from_millis(50))
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// No successful renewal for this long since it was sent: stop.
    fn give_up_after(&self) -> Duration {
        self.ttl * 2 / 3
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut timer = tokio::time::interval(self.tick());
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Announce ourselves, then wait one renewal period before claiming,
        // so instances starting together see each other and split the
        // streams instead of one taking all and handing them back.
        self.heartbeat().await;
        let settle_until = Instant::now() + self.renew_every();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = timer.tick() => {}
            }
            self.heartbeat().await;
            self.progress().await;
            self.renew().await;
            self.enforce_deadlines().await;
            if Instant::now() >= settle_until {
                self.balance().await;
            }
        }
        self.release_all().await;
    }

    async fn heartbeat(&mut self) {
        if self
            .heartbeat_sent
            .is_some_and(|at| at.elapsed() < self.renew_every())
        {
            return;
        }
        let sent = Instant::now();
        let value = format!(
            "{{\"instance\":\"{}\",\"streams\":{}}}",
            self.id,
            self.held.len()
        );
        let put = self
            .store
            .put(format!("instance.{}", self.id), value.into());
        match tokio::time::timeout(KV_TIMEOUT, put).await {
            Ok(Ok(_)) => self.heartbeat_sent = Some(sent),
            Ok(Err(e)) => tracing::warn!("cluster: heartbeat failed: {e}; retrying"),
            Err(_) => tracing::warn!("cluster: heartbeat got no answer; retrying"),
        }
    }

    /// Collects the supervisor's answers to Start and Release.
    async fn progress(&mut self) {
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        for (stream, lease) in self.held.iter_mut() {
            match &mut lease.state {
                LeaseState::Starting(reply) => match reply.try_recv() {
                    Ok(Some(token)) => lease.state = LeaseState::Running(token),
                    Ok(None) | Err(oneshot::error::TryRecvError::Closed) => {
                        failed.push(stream.clone())
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {}
                },
                LeaseState::Releasing(reply) => match reply.try_recv() {
                    Ok(()) | Err(oneshot::error::TryRecvError::Closed) => {
                        finished.push(stream.clone())
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {}
                },
                LeaseState::Running(_) => {}
            }
        }
        for stream in failed.into_iter().chain(finished) {
            if let Some(lease) = self.held.remove(&stream) {
                self.delete(&stream, lease.revision).await;
            }
        }
    }

    async fn delete(&self, stream: &str, revision: u64) {
        let delete = self
            .store
            .delete_expect_revision(lease_key(stream), Some(revision));
        match tokio::time::timeout(KV_TIMEOUT, delete).await {
            Ok(Ok(())) => tracing::info!("cluster: released stream={stream}"),
            // It expires by itself within lease_ttl.
            Ok(Err(e)) => tracing::warn!("cluster: releasing stream={stream} failed: {e}"),
            Err(_) => tracing::warn!("cluster: releasing stream={stream} got no answer"),
        }
    }

    /// Renews the leases due, all at once.
    async fn renew(&mut self) {
        let due: Vec<(String, u64)> = self
            .held
            .iter()
            .filter(|(_, lease)| lease.renewed.elapsed() >= self.renew_every())
            .map(|(stream, lease)| (stream.clone(), lease.revision))
            .collect();
        if due.is_empty() {
            return;
        }
        let value = self.lease_value();
        let renewals = due.iter().map(|(stream, revision)| {
            let update = self
                .store
                .update(lease_key(stream), value.clone(), *revision);
            async move {
                let sent = Instant::now();
                (sent, tokio::time::timeout(KV_TIMEOUT, update).await)
            }
        });
        let results = futures_util::future::join_all(renewals).await;
        for ((stream, _), (sent, result)) in due.into_iter().zip(results) {
            match result {
                Ok(Ok(revision)) => {
                    if let Some(lease) = self.held.get_mut(&stream) {
                        lease.revision = revision;
                        lease.renewed = sent;
                    }
                }
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    tracing::error!(
                        "cluster: stream={stream} lease was taken over (renewal refused: {e}); stopping it now"
                    );
                    self.lose(&stream).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!("cluster: stream={stream} lease renewal failed: {e}; retrying")
                }
                Err(_) => {
                    tracing::warn!("cluster: stream={stream} lease renewal got no answer; retrying")
                }
            }
        }
    }

    /// Stops every stream whose lease may expire before we can renew it.
    async fn enforce_deadlines(&mut self) {
        let late: Vec<String> = self
            .held
            .iter()
            .filter(|(_, lease)| lease.renewed.elapsed() >= self.give_up_after())
            .map(|(stream, _)| stream.clone())
            .collect();
        for stream in late {
            tracing::error!(
                "cluster: stream={stream} lease not renewed for {}: stopping it before it expires (another instance may take it over)",
                humantime::format_duration(self.give_up_after())
            );
            self.lose(&stream).await;
        }
    }

    /// The lease is gone or about to be: cancel the stream here and now.
    async fn lose(&mut self, stream: &str) {
        let Some(lease) = self.held.remove(stream) else {
            return;
        };
        if let LeaseState::Running(token) = &lease.state {
            token.cancel();
        }
        // A Start in progress answers into a dropped receiver; the supervisor
        // then learns here that the stream is not ours.
        let _ = self
            .commands
            .send(Command::Forget {
                stream: stream.to_owned(),
            })
            .await;
    }

    fn lease_value(&self) -> bytes::Bytes {
        format!("{{\"instance\":\"{}\"}}", self.id).into()
    }

    /// Live instances and leased streams, from the bucket's keys.
    async fn survey(&self) -> Option<(usize, Vec<String>)> {
        let listing = async {
            let mut keys = self.store.keys().await.ok()?;
            let mut instances = 0;
            let mut leased = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.ok()?;
                if key.starts_with("instance.") {
                    instances += 1;
                } else if let Some(stream) = key.strip_prefix("stream.") {
                    leased.push(stream.to_owned());
                }
            }
            Some((instances, leased))
        };
        tokio::time::timeout(KV_TIMEOUT, listing).await.ok()?
    }

    /// Claims free streams up to our share; releases what is above it.
    async fn balance(&mut self) {
        if self.drain.is_cancelled() {
            return;
        }
        let Some((instances, leased)) = self.survey().await else {
            return;
        };
        let streams = self.streams.borrow().clone();
        // Leases of streams no longer configured (a reload) go first.
        let unconfigured: Vec<String> = self
            .held
            .keys()
            .filter(|s| !streams.contains(s))
            .cloned()
            .collect();
        for stream in unconfigured {
            self.release(&stream).await;
        }
        // We may not see our own heartbeat yet; never divide by zero.
        let live = instances.max(1);
        let share = streams.len().div_ceil(live);
        let active = self
            .held
            .values()
            .filter(|l| !matches!(l.state, LeaseState::Releasing(_)))
            .count();
        if active > share {
            let surplus: Vec<String> = self
                .held
                .iter()
                .filter(|(_, l)| matches!(l.state, LeaseState::Running(_)))
                .map(|(s, _)| s.clone())
                .rev()
                .take(active - share)
                .collect();
            for stream in surplus {
                tracing::info!(
                    "cluster: releasing stream={stream}: {active} held, fair share {share} ({} streams, {live} instances)",
                    streams.len()
                );
                self.release(&stream).await;
            }
            return;
        }
        let mut wanted = share - active;
        if wanted == 0 {
            return;
        }
        // Free streams in an order of our own, so instances claiming at the
        // same moment mostly try different ones.
        let mut free: Vec<&String> = streams
            .iter()
            .filter(|s| !self.held.contains_key(*s) && !leased.contains(&key_for(s)))
            .collect();
        free.sort_by_key(|s| spread(&self.id, s));
        let value = self.lease_value();
        let mut claimed = Vec::new();
        for stream in free {
            if wanted == 0 {
                break;
            }
            let sent = Instant::now();
            let create = self.store.create(lease_key(stream), value.clone());
            match tokio::time::timeout(KV_TIMEOUT, create).await {
                Ok(Ok(revision)) => {
                    wanted -= 1;
                    claimed.push((stream.clone(), revision, sent));
                }
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Ok(Err(e)) => {
                    tracing::warn!("cluster: claiming stream={stream} failed: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
        for (stream, revision, sent) in claimed {
            let (started, reply) = oneshot::channel();
            tracing::info!("cluster: claimed stream={stream} (instance {})", self.id);
            self.held.insert(
                stream.clone(),
                Lease {
                    revision,
                    renewed: sent,
                    state: LeaseState::Starting(reply),
                },
            );
            if self
                .commands
                .send(Command::Start { stream, started })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Asks the supervisor to stop `stream` and save its checkpoint; the
    /// lease is deleted once it answers (see `progress`).
    async fn release(&mut self, stream: &str) {
        let Some(lease) = self.held.get_mut(stream) else {
            return;
        };
        let (done, reply) = oneshot::channel();
        lease.state = LeaseState::Releasing(reply);
        let _ = self
            .commands
            .send(Command::Release {
                stream: stream.to_owned(),
                done,
            })
            .await;
    }

    /// Shutdown: the supervisor has stopped every stream and saved the
    /// checkpoints; delete our leases and heartbeat.
    async fn release_all(&mut self) {
        for (stream, lease) in std::mem::take(&mut self.held) {
            self.delete(&stream, lease.revision).await;
        }
        let _ = tokio::time::timeout(
            KV_TIMEOUT,
            self.store.delete(format!("instance.{}", self.id)),
        )
        .await;
    }
}

/// A stable pseudo-random rank of `stream` for instance `id` (FNV-1a).
fn spread(id: &str, stream: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes().chain([0]).chain(stream.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
