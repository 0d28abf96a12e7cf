//! The lease keeper: every third of the lease TTL it heartbeats and renews this node's
//! leases, and (on a loop of its own) reads the membership and lease tables (database
//! clock) and claims or releases shards towards a fair share
//! (`domain::cluster::rebalance`); a watchdog drops each shard whose renewal is late.
//! Also what must follow ownership in memory ([`ShardHolders`]: the SKU actors and the
//! sagas).

use super::Ownership;
use crate::config::ClusterSettings;
use crate::domain::cluster::{rebalance, share_of, LeaseView, Shard};
use crate::persistence::{SqlStore, StoreError};
use crate::telemetry::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What holds state per shard and must follow its ownership: the SKU actors and the
/// sagas (wired in `app`).
#[async_trait::async_trait]
pub(crate) trait ShardHolders: Send + Sync {
    /// Drops everything held in memory for these shards (another node owns them now).
    async fn lost(&self, shards: &[Shard]);
    /// This node now owns these shards: resume their in-flight orders from the store.
    async fn gained(&self, shards: &[Shard]);
    /// Waits (at most `within`) until what was decided so far is committed or refused.
    async fn settle_writes(&self, within: Duration);
}

/// How often the leader prunes placement decisions, and how old they get first.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PLACEMENT_KEPT_MS: i64 = 24 * 3600 * 1000;

/// Keeps this node's leases with three loops on one task, none waiting for another:
/// renewal (heartbeat and renew, every third of the TTL), rebalancing (read the tables,
/// claim and release towards a fair share) and a watchdog that drops every shard whose
/// local deadline passed. A renewal or claim sent at `t` keeps its shard until
/// `t + TTL − margin` on this node's monotonic clock; the database's lease, counted from
/// when it ran the statement, ends later. So however long a round, a lock wait or a
/// silent network takes, this node stops acting on a shard before anybody may claim it.
pub(crate) struct LeaseKeeper {
    store: SqlStore,
    ownership: Arc<Ownership>,
    holders: Arc<dyn ShardHolders>,
    metrics: Arc<Metrics>,
    ttl: Duration,
}

impl LeaseKeeper {
    /// Starts the keeper on `store`, a pool of its own (a short lock wait: a claim must
    /// not wait a TTL behind a frozen node's transaction). Refuses a store that cannot
    /// bound a frozen node's transaction (anything but MariaDB).
    pub async fn start(
        store: SqlStore,
        settings: &ClusterSettings,
        ownership: Arc<Ownership>,
        holders: Arc<dyn ShardHolders>,
        metrics: Arc<Metrics>,
    ) -> Result<tokio::task::JoinHandle<()>, crate::persistence::StoreError> {
        store.require_idle_transaction_limit().await?;
        store.ensure_shards(ownership.shards()).await?;
        // A node id is unique among live processes (a StatefulSet pod name, or a random
        // suffix): leases still under it are a dead earlier incarnation's. Released now,
        // they are claimable at once instead of after their TTL.
        store.leave_cluster(ownership.node_id()).await?;
        let keeper = Arc::new(Self {
            store,
            ownership,
            holders,
            metrics,
            ttl: settings.lease_ttl,
        });
        Ok(tokio::spawn(async move {
            tokio::join!(keeper.renewals(), keeper.rebalancing(), keeper.watchdog());
        }))
    }

    fn tick(&self) -> Duration {
        self.ttl / 3
    }

    /// How long after a renewal or claim was sent this node still acts on its shards:
    /// the TTL less a tenth, for clock-rate differences between this node and the database.
    fn held_for(&self) -> Duration {
        self.ttl - self.ttl / 10
    }

    /// Runs one keeper statement for at most a lease round: a silent network (a
    /// blackholed socket) otherwise hangs it for the kernel's retransmission timeout.
    async fn bounded<T>(
        &self,
        what: &'static str,
        statement: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.tick(), statement)
            .await
            .map_err(|_| StoreError::Unavailable(format!("{what}: no answer within a lease round").into()))?
    }

    /// `shards` were dropped here (taken over, or their deadline passed): counted,
    /// logged, and what memory held for them goes.
    async fn lost(&self, shards: &[Shard], why: &'static str) {
        if shards.is_empty() {
            return;
        }
        warn!(shards = ?shards, "{why}");
        self.metrics.cluster_leases_lost.inc_by(shards.len() as u64);
        self.holders.lost(shards).await;
    }

    async fn renewals(&self) {
        loop {
            let sent = Instant::now();
            match self.renew(sent).await {
                Ok(lost) => {
                    self.metrics.cluster_lease_renewals.with_label_values(&["ok"]).inc();
                    self.lost(&lost, "leases taken over by another node").await;
                }
                Err(e) => {
                    self.metrics.cluster_lease_renewals.with_label_values(&["failed"]).inc();
                    warn!(error = %e, "lease renewal failed");
                }
            }
            tokio::time::sleep_until((sent + self.tick()).into()).await;
        }
    }

    /// Heartbeat and renewal, sent at `sent`; the shards found taken over (or refused by
    /// the fence since the last renewal), already dropped here.
    async fn renew(&self, sent: Instant) -> Result<Vec<Shard>, StoreError> {
        let own = &self.ownership;
        self.bounded("heartbeat", self.store.heartbeat(&own.node_id, own.url()))
            .await?;
        let held = own.held();
        let shards: Vec<Shard> = held.iter().map(|(s, _)| *s).collect();
        let renewed = self
            .bounded(
                "renewal",
                self.store
                    .renew_leases(&own.node_id, &shards, self.ttl.as_millis() as i64),
            )
            .await?;
        own.extend(&renewed, sent + self.held_for());
        // Held here but not (at this epoch) in the table: taken over while we were away.
        let gone: Vec<Shard> = held.iter().filter(|h| !renewed.contains(h)).map(|(s, _)| *s).collect();
        let mut lost = own.drop_shards(&gone);
        lost.append(&mut own.fenced.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(lost)
    }

    async fn watchdog(&self) {
        let period = (self.ttl / 30).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(period).await;
            // No renewal of these came back in time: another node may own them now.
            // Stop acting on them (the fence would refuse their writes anyway).
            let lost = self.ownership.drop_expired(Instant::now());
            self.lost(&lost, "leases not renewed in time; dropping them").await;
            self.metrics
                .cluster_shards_owned
                .set(self.ownership.held().len() as i64);
        }
    }

    async fn rebalancing(&self) {
        let mut pruned_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            if let Err(e) = self.rebalance().await {
                warn!(error = %e, "lease rebalancing failed");
            }
            // The leader keeps the placement decisions table small, once a minute.
            if self.ownership.leads() && pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(started);
                let pruned = self.bounded("prune", self.store.prune_placement_outcomes(PLACEMENT_KEPT_MS));
                if let Err(e) = pruned.await {
                    warn!(error = %e, "could not prune old placement decisions");
                }
            }
            tokio::time::sleep_until((started + self.tick()).into()).await;
        }
    }

    async fn rebalance(&self) -> Result<(), StoreError> {
        let ttl_ms = self.ttl.as_millis() as i64;
        let own = &self.ownership;
        let (members, leases) = self.bounded("cluster view", self.store.cluster_view(ttl_ms)).await?;
        let live: Vec<String> = members.iter().filter(|m| m.live).map(|m| m.node_id.clone()).collect();
        {
            let mut view = own.view.write().unwrap_or_else(|e| e.into_inner());
            view.owners = leases.iter().map(|l| l.owner.clone()).collect();
            view.members = members
                .iter()
                .filter(|m| m.live)
                .map(|m| (m.node_id.clone(), m.url.clone()))
                .collect();
        }
        self.metrics.cluster_members.set(live.len() as i64);
        let table: Vec<LeaseView> = leases
            .iter()
            .map(|l| LeaseView {
                shard: l.shard,
                owner: l.owner.clone(),
            })
            .collect();
        let plan = rebalance(&own.node_id, &live, &table);
        if !plan.release.is_empty() {
            self.hand_over(&plan.release).await?;
        }
        self.claim(&plan.claim).await?;

        // Ready once this node holds its share, or every shard has an owner to forward to.
        let share = share_of(&own.node_id, &live, own.shards);
        let everything_owned = own
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .owners
            .iter()
            .all(Option::is_some);
        if own.held().len() >= share || everything_owned {
            own.settled.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Stops acting on `shards`, lets what was decided under them reach the store, then
    /// frees the leases at once for the node that is short.
    async fn hand_over(&self, shards: &[Shard]) -> Result<(), StoreError> {
        let own = &self.ownership;
        let epochs: Vec<(Shard, i64)> = shards.iter().filter_map(|s| own.epoch(*s).map(|e| (*s, e))).collect();
        let released = own.drop_shards(shards);
        self.holders.lost(&released).await;
        // What was decided under these shards reaches the store before the leases go
        // (it would be fenced after): a hand-over drops no acknowledged work. Bounded
        // by a lease round; renewals run on regardless.
        self.holders.settle_writes(self.tick()).await;
        for (shard, epoch) in epochs {
            self.bounded("release", self.store.release_lease(shard, &own.node_id, epoch))
                .await?;
            self.metrics.cluster_handovers.inc();
            let mut view = own.view.write().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = view.owners.get_mut(shard as usize) {
                *slot = None;
            }
        }
        info!(shards = released.len(), "shards handed over");
        Ok(())
    }

    /// Claims the free or expired `shards`; a claim waiting on a lock (a frozen node's
    /// transaction) gives up after the keeper pool's short lock wait and is tried on a
    /// later round, the other claims go on.
    async fn claim(&self, shards: &[Shard]) -> Result<(), StoreError> {
        let own = &self.ownership;
        let ttl_ms = self.ttl.as_millis() as i64;
        let mut gained = Vec::new();
        for shard in shards {
            let sent = Instant::now();
            match self
                .bounded("claim", self.store.claim_lease(*shard, &own.node_id, ttl_ms))
                .await
            {
                Ok(Some(epoch)) => gained.push((*shard, epoch, sent)),
                Ok(None) => {}
                Err(e) => warn!(shard, error = %e, "claim failed; tried again next round"),
            }
        }
        if gained.is_empty() {
            return Ok(());
        }
        let shards: Vec<Shard> = gained.iter().map(|(s, _, _)| *s).collect();
        // Anything left in memory from an earlier ownership goes before the shard is
        // served again: its actors load what the store holds now.
        self.holders.lost(&shards).await;
        for (shard, epoch, sent) in &gained {
            own.hold(*shard, *epoch, *sent + self.held_for());
        }
        info!(shards = shards.len(), "shards claimed");
        self.metrics.cluster_takeovers.inc_by(shards.len() as u64);
        self.holders.gained(&shards).await;
        let mut view = own.view.write().unwrap_or_else(|e| e.into_inner());
        for shard in &shards {
            if let Some(slot) = view.owners.get_mut(*shard as usize) {
                *slot = Some(own.node_id.clone());
            }
        }
        Ok(())
    }
}

/// Leaves the cluster on shutdown: drops every shard and releases the leases at once,
/// so the other nodes claim them on their next round instead of after the TTL.
pub(crate) async fn leave(store: &SqlStore, ownership: &Ownership, holders: &dyn ShardHolders) {
    if !ownership.enabled() {
        return;
    }
    let all: Vec<Shard> = (0..ownership.shards()).collect();
    let dropped = ownership.drop_shards(&all);
    holders.lost(&dropped).await;
    holders.settle_writes(Duration::from_secs(2)).await;
    match store.leave_cluster(&ownership.node_id).await {
        Ok(()) => info!(shards = dropped.len(), "left the cluster; shards handed over"),
        Err(e) => warn!(error = %e, "could not hand the shards over; they pass on after the lease TTL"),
    }
}

/// A node id for `cluster.node_id = ""`: the host name and a random suffix, so a
/// restarted process is a new member (its old leases expire or were released).
pub(crate) fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}
