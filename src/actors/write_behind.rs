//! The write-behind (journal) actor: the only path by which orders, inventory journal
//! entries, status changes and outbox rows reach the database.
//!
//! Owns: the queue of write-sets waiting for durability.
//! Takes: one [`WriteSet`] per caller, with a reply channel.
//! Promises: a caller hears `Ok` only after its write-set is committed; many callers
//! share one transaction (group commit: everything queued while the previous commit
//! ran, up to `max_batch`; on MariaDB/MySQL up to `max_in_flight` such transactions
//! commit at once, ordered by the row locks they share: see [`CommitLoop::run`]). If a
//! batch is refused by a constraint, its write-sets are retried one by one so a single
//! bad write-set fails alone.
//!
//! Out of order: a SKU's journal is applied to its snapshot as deltas, and two write-sets
//! of one SKU can reach this queue out of their memory order (a cancel's release is
//! decided in memory, then committed by the saga; an order that took the freed unit may be
//! committed first). The snapshot's `CHECK (0 <= reserved <= stock)` then refuses the
//! later one although memory was right. Such a write-set is not failed at once: it is
//! deferred and retried with the following batches (up to [`MAX_DEFERRALS`]), by which
//! time the write-set it waits for has committed. Nothing is answered before its commit.
//!
//! It is a tokio task rather than an actix actor because it must keep accepting work
//! while it awaits the database; `recv_many` on a channel is exactly that.

use crate::actors::cluster::Ownership;
use crate::config::WriteBehindSettings;
use crate::domain::cluster::{Fence, Shard};
use crate::error::Cause;
use crate::persistence::{SqlStore, StoreError, WriteSet};
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tracing::{debug, warn};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the write-behind queue is full")]
    QueueFull,
    #[error("the write-behind has stopped")]
    Stopped,
}

/// What one commit attempt did.
enum Committed {
    Done,
    /// Cluster mode: nothing written; these fences no longer hold.
    Fenced(Vec<Fence>),
    Failed(StoreError),
}

impl From<CommitError> for StoreError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Store(e) => e,
            other => StoreError::Unavailable(Cause::new(other)),
        }
    }
}

/// Batches a write-set refused by the inventory bounds may wait for before it fails.
const MAX_DEFERRALS: u32 = 200;
/// How long a loop holding deferred write-sets waits for new work before retrying them.
const DEFERRED_WAIT: Duration = Duration::from_millis(5);

struct Pending {
    set: WriteSet,
    /// Times this write-set was refused by the inventory bounds and put back.
    deferrals: u32,
    /// Cluster mode: the shards it writes under, with the epochs this node held them at
    /// when it was queued (empty outside cluster mode).
    fences: Vec<Fence>,
    reply: oneshot::Sender<Result<(), StoreError>>,
    /// The caller's wait for durability: the group commit that takes this write-set
    /// is traced as its child (or linked to it, when the batch began with another).
    span: tracing::Span,
}

#[derive(Clone)]
pub struct WriteBehind {
    sender: mpsc::Sender<Pending>,
    queued: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    ownership: Arc<Ownership>,
}

impl WriteBehind {
    /// Starts the commit loop. `committed` is notified after every successful commit
    /// (the outbox relay listens to it).
    pub fn start(
        store: SqlStore,
        settings: &WriteBehindSettings,
        metrics: Arc<Metrics>,
        committed: Arc<Notify>,
        ownership: Arc<Ownership>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(settings.queue_capacity);
        let handle = Self {
            sender,
            queued: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            ownership: ownership.clone(),
        };
        // SQLite has one writer: a second transaction would only wait for the first's lock.
        let max_in_flight = match store.dialect() {
            crate::persistence::sql::Dialect::Sqlite => 1,
            crate::persistence::sql::Dialect::MySql => settings.max_in_flight.max(1),
        };
        let worker = CommitLoop {
            receiver,
            max_batch: settings.max_batch,
            linger: settings.linger,
            max_in_flight,
            queued: handle.queued.clone(),
            deferred: Vec::new(),
            sizes: Default::default(),
            committer: Arc::new(Committer {
                store,
                metrics,
                committed,
                healthy: handle.healthy.clone(),
                ownership,
            }),
        };
        (handle, tokio::spawn(worker.run()))
    }

    /// Makes `set` durable and returns once it is committed (or definitely not).
    pub async fn commit(&self, set: WriteSet) -> Result<(), CommitError> {
        // Cluster mode: stamped now with the epochs it is decided under; a shard this
        // node does not hold is refused before anything is queued.
        let fences = self.ownership.fences(&set).map_err(|_| StoreError::NotOwner)?;
        let (reply, answer) = oneshot::channel();
        let span = tracing::debug_span!("write_behind.commit", events = set.events.len());
        self.queued.fetch_add(1, Ordering::SeqCst);
        let pending = Pending {
            set,
            deferrals: 0,
            fences,
            reply,
            span: span.clone(),
        };
        if let Err(e) = self.sender.try_send(pending) {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => CommitError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => CommitError::Stopped,
            });
        }
        Ok(tracing::Instrument::instrument(answer, span)
            .await
            .map_err(|_| CommitError::Stopped)??)
    }

    /// No write-set is waiting or being committed.
    pub fn is_drained(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0
    }

    /// The last commit attempt reached the database.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is committed or refused (graceful shutdown).
    pub async fn drain(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.is_drained() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

struct CommitLoop {
    receiver: mpsc::Receiver<Pending>,
    max_batch: usize,
    linger: Duration,
    /// Batches committing at once (1 on SQLite).
    max_in_flight: usize,
    queued: Arc<AtomicUsize>,
    /// Write-sets refused by the inventory bounds, to be retried with the next batch.
    deferred: Vec<Pending>,
    committer: Arc<Committer>,
    /// The size of each batch in flight, by its task (for the queue count if one panics).
    sizes: std::collections::HashMap<tokio::task::Id, usize>,
}

/// What a finished commit task reports: how many write-sets it took, and those it put
/// back (refused by the inventory bounds) for a later batch.
type Finished = (usize, Vec<Pending>);

impl CommitLoop {
    /// Forms a batch of everything queued and commits it, up to `max_in_flight` batches at
    /// once. The next batch forms while the previous ones commit, so its size follows the
    /// load. Two batches in flight that touch the same SKU (or order) are ordered by that
    /// row's lock: the later one's snapshot update waits for the earlier one's commit, and
    /// its outbox rows, inserted after that update, get later ids (docs/write-path.md).
    async fn run(mut self) {
        let mut in_flight: JoinSet<Finished> = JoinSet::new();
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            while in_flight.len() >= self.max_in_flight {
                self.finished(in_flight.join_next_with_id().await);
            }
            batch.append(&mut self.deferred);
            if batch.is_empty() {
                if in_flight.is_empty() {
                    if self.receiver.recv_many(&mut batch, self.max_batch).await == 0 {
                        break;
                    }
                } else {
                    tokio::select! {
                        received = self.receiver.recv_many(&mut batch, self.max_batch) => {
                            if received == 0 {
                                break;
                            }
                        }
                        done = in_flight.join_next_with_id() => {
                            self.finished(done);
                            continue;
                        }
                    }
                }
            } else if batch.len() < self.max_batch {
                // Deferred write-sets wait for another write-set; give it a moment to arrive.
                let room = self.max_batch - batch.len();
                let _ = tokio::time::timeout(DEFERRED_WAIT, self.receiver.recv_many(&mut batch, room)).await;
            }
            if !self.linger.is_zero() && batch.len() < self.max_batch {
                tokio::time::sleep(self.linger).await;
                while batch.len() < self.max_batch {
                    match self.receiver.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
            }
            self.committer
                .metrics
                .write_queue_depth
                .set(self.queued.load(Ordering::Relaxed) as i64);
            let committer = self.committer.clone();
            let taken = std::mem::take(&mut batch);
            let size = taken.len();
            let task = in_flight.spawn(async move { (size, committer.commit_batch(taken).await) });
            self.sizes.insert(task.id(), size);
        }
        while !in_flight.is_empty() {
            self.finished(in_flight.join_next_with_id().await);
        }
    }

    /// Accounts for a finished commit task.
    fn finished(&mut self, done: Option<Result<(tokio::task::Id, Finished), tokio::task::JoinError>>) {
        let Some(done) = done else { return };
        let (size, deferred) = match done {
            Ok((task, finished)) => {
                self.sizes.remove(&task);
                finished
            }
            Err(e) => {
                // A commit task that panicked dropped its callers' reply channels: they
                // heard `Stopped`. Nothing of it is waiting any more.
                warn!(error = %e, "a group commit task ended abnormally");
                (self.sizes.remove(&e.id()).unwrap_or(0), Vec::new())
            }
        };
        // Deferred write-sets are still waiting: they stay counted as queued.
        let resolved = size - deferred.len();
        self.deferred.extend(deferred);
        let left = self.queued.fetch_sub(resolved, Ordering::SeqCst) - resolved;
        self.committer.metrics.write_queue_depth.set(left as i64);
    }
}

/// Commits batches: shared by the commit tasks in flight.
struct Committer {
    store: SqlStore,
    metrics: Arc<Metrics>,
    committed: Arc<Notify>,
    healthy: Arc<AtomicBool>,
    ownership: Arc<Ownership>,
}

impl Committer {
    /// One commit attempt of `batch`: fenced in cluster mode (the lease epochs are
    /// checked in the commit's own transaction), a plain group commit otherwise.
    async fn attempt(&self, batch: &[Pending]) -> Committed {
        // A deadlock victim was rolled back whole (its outcome is known: nothing written),
        // so it is committed again at once rather than failed as an outage.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.attempt_once(batch).await {
                Committed::Failed(e) if tries < 5 && crate::persistence::sql::lost_a_lock_conflict(&e) => {
                    debug!(error = %e, tries, "group commit lost a lock conflict, committing again");
                }
                other => return other,
            }
        }
    }

    async fn attempt_once(&self, batch: &[Pending]) -> Committed {
        let sets: Vec<&WriteSet> = batch.iter().map(|p| &p.set).collect();
        if !self.ownership.enabled() {
            return match self.store.commit(&sets).await {
                Ok(()) => Committed::Done,
                Err(e) => Committed::Failed(e),
            };
        }
        let mut fences: Vec<Fence> = batch.iter().flat_map(|p| p.fences.iter().cloned()).collect();
        fences.sort_unstable();
        fences.dedup();
        match self.store.commit_fenced(&sets, &fences).await {
            Ok(Ok(())) => Committed::Done,
            Ok(Err(lost)) => Committed::Fenced(lost),
            Err(e) => Committed::Failed(e),
        }
    }

    /// Commits `batch`, answering `NotOwner` to every write-set the fence refuses (and
    /// committing the others): a paused or partitioned ex-owner makes nothing durable.
    async fn commit_unfenced_part(&self, mut batch: Vec<Pending>) -> (Vec<Pending>, Result<(), StoreError>) {
        loop {
            match self.attempt(&batch).await {
                Committed::Done => return (batch, Ok(())),
                Committed::Failed(e) => return (batch, Err(e)),
                Committed::Fenced(lost) => {
                    warn!(fences = ?lost, "commit fenced: these shards belong to another node now");
                    let mine: Vec<Shard> = lost
                        .iter()
                        .filter(|f| f.node == self.ownership.node_id())
                        .map(|f| f.shard)
                        .collect();
                    self.ownership.fenced(&mine);
                    let (refused, rest): (Vec<Pending>, Vec<Pending>) = batch
                        .into_iter()
                        .partition(|p| p.fences.iter().any(|f| lost.contains(f)));
                    self.metrics.cluster_fenced_commits.inc_by(refused.len() as u64);
                    for p in refused {
                        let _ = p.reply.send(Err(StoreError::NotOwner));
                    }
                    if rest.is_empty() {
                        return (rest, Ok(()));
                    }
                    batch = rest;
                }
            }
        }
    }

    /// Commits `batch` and answers its callers; returns the write-sets deferred for a
    /// later batch.
    async fn commit_batch(&self, batch: Vec<Pending>) -> Vec<Pending> {
        let mut deferred = Vec::new();
        let started = Instant::now();
        let first = batch.first().map_or(tracing::Span::none(), |p| p.span.clone());
        let span = tracing::debug_span!(parent: &first, "db.group_commit", size = batch.len());
        for p in batch.iter().skip(1) {
            span.follows_from(&p.span);
        }
        let (batch, result) = tracing::Instrument::instrument(self.commit_unfenced_part(batch), span).await;
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.commit_batch_size.observe(batch.len() as f64);
        match result {
            Ok(()) => {
                self.healthy.store(true, Ordering::Relaxed);
                for p in batch {
                    let _ = p.reply.send(Ok(()));
                }
                self.committed.notify_one();
            }
            Err(e @ (StoreError::Rejected(_) | StoreError::Conflict(_))) => {
                // One write-set broke a rule; find it by committing each alone.
                debug!(
                    size = batch.len(),
                    "batch refused, committing its write-sets one by one"
                );
                // The store answered: it is reachable, whatever it refused.
                self.healthy.store(true, Ordering::Relaxed);
                let mut first = Some(Err(e));
                let alone_in_batch = batch.len() == 1;
                for p in batch {
                    let (mut left, alone) = match first.take() {
                        Some(result) if alone_in_batch => (vec![p], result),
                        _ => self.commit_unfenced_part(vec![p]).await,
                    };
                    // Empty when the fence refused it (already answered NotOwner).
                    if let Some(p) = left.pop() {
                        self.settle_alone(p, alone, &mut deferred);
                    }
                }
                self.committed.notify_one();
            }
            Err(e) => {
                self.metrics.commit_failures.inc();
                let outage = matches!(e, StoreError::Unavailable(_));
                self.healthy.store(!outage, Ordering::Relaxed);
                warn!(error = %e, size = batch.len(), "group commit failed");
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
        deferred
    }

    /// Answers a write-set committed on its own, or defers it when the inventory bounds
    /// refused it (see the module doc: a write-set of the same SKU it follows in memory
    /// has not been committed yet).
    fn settle_alone(&self, mut p: Pending, result: Result<(), StoreError>, deferred: &mut Vec<Pending>) {
        match result {
            Err(e) if crate::persistence::sql::breaks_inventory_bounds(&e) && p.deferrals < MAX_DEFERRALS => {
                p.deferrals += 1;
                deferred.push(p);
            }
            other => {
                if other.is_err() {
                    self.metrics.commit_failures.inc();
                }
                let _ = p.reply.send(other);
            }
        }
    }
}
