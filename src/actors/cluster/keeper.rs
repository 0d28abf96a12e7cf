//! The lease keeper: every third of the lease TTL it heartbeats, renews this node's
//! leases, reads the membership and lease tables (database clock) and claims or releases
//! shards towards a fair share (`domain::cluster::rebalance`); and what must follow
//! ownership in memory ([`ShardHolders`]: the SKU actors and the sagas).

use super::Ownership;
use crate::config::ClusterSettings;
use crate::domain::cluster::{rebalance, share_of, LeaseView, Shard};
use crate::persistence::SqlStore;
use crate::telemetry::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What holds state per shard and must follow its ownership: the SKU actors and the
/// sagas (wired in `app`).
#[async_trait::async_trait]
pub trait ShardHolders: Send + Sync {
    /// Drops everything held in memory for these shards (another node owns them now).
    async fn lost(&self, shards: &[Shard]);
    /// This node now owns these shards: resume their in-flight orders from the store.
    async fn gained(&self, shards: &[Shard]);
    /// Waits (at most `within`) until what was decided so far is committed or refused.
    async fn settle_writes(&self, within: Duration);
}

/// Keeps this node's leases: heartbeat, renew, rebalance, every third of the TTL.
pub struct LeaseKeeper {
    store: SqlStore,
    ownership: Arc<Ownership>,
    holders: Arc<dyn ShardHolders>,
    metrics: Arc<Metrics>,
    ttl: Duration,
    /// When the last successful renewal was sent: past the TTL without one, this node
    /// assumes it lost everything (others may have taken its shards).
    renewed_at: Instant,
}

impl LeaseKeeper {
    /// Starts the keeper; refuses to start when the store is not MySQL/MariaDB.
    pub async fn start(
        store: SqlStore,
        settings: &ClusterSettings,
        ownership: Arc<Ownership>,
        holders: Arc<dyn ShardHolders>,
        metrics: Arc<Metrics>,
    ) -> Result<tokio::task::JoinHandle<()>, crate::persistence::StoreError> {
        store.ensure_shards(ownership.shards()).await?;
        // A node id is unique among live processes (a StatefulSet pod name, or a random
        // suffix): leases still under it are a dead earlier incarnation's. Released now,
        // they are claimable at once instead of after their TTL.
        store.leave_cluster(ownership.node_id()).await?;
        let keeper = Self {
            store,
            ownership,
            holders,
            metrics,
            ttl: Duration::from_millis(settings.lease_ttl_ms.max(300)),
            renewed_at: Instant::now(),
        };
        Ok(tokio::spawn(keeper.run()))
    }

    async fn run(mut self) {
        let tick = self.ttl / 3;
        loop {
            if let Err(e) = self.round().await {
                self.metrics.cluster_lease_renewals.with_label_values(&["failed"]).inc();
                warn!(error = %e, "lease round failed");
            }
            if self.renewed_at.elapsed() >= self.ttl {
                // The store has not heard from this node for a whole TTL: another node may
                // own these shards now. Stop acting on them (the fence would refuse anyway).
                let lost = self
                    .ownership
                    .drop_shards(&(0..self.ownership.shards()).collect::<Vec<_>>());
                if !lost.is_empty() {
                    warn!(
                        shards = lost.len(),
                        "leases not renewed within their TTL; dropping them"
                    );
                    self.metrics.cluster_leases_lost.inc_by(lost.len() as u64);
                    self.holders.lost(&lost).await;
                }
            }
            self.metrics
                .cluster_shards_owned
                .set(self.ownership.held().len() as i64);
            tokio::time::sleep(tick).await;
        }
    }

    async fn round(&mut self) -> Result<(), crate::persistence::StoreError> {
        let ttl_ms = self.ttl.as_millis() as i64;
        let own = &self.ownership;
        let sent = Instant::now();
        self.store.heartbeat(&own.node_id, own.url()).await?;
        let held = own.held();
        let shards: Vec<Shard> = held.iter().map(|(s, _)| *s).collect();
        let renewed = self.store.renew_leases(&own.node_id, &shards, ttl_ms).await?;
        self.renewed_at = sent;
        self.metrics.cluster_lease_renewals.with_label_values(&["ok"]).inc();
        // Held here but not (at this epoch) in the table: taken over while we were away.
        let gone: Vec<Shard> = held.iter().filter(|h| !renewed.contains(h)).map(|(s, _)| *s).collect();
        let mut lost = own.drop_shards(&gone);
        lost.append(&mut own.fenced.lock().unwrap_or_else(|e| e.into_inner()));
        if !lost.is_empty() {
            warn!(shards = ?lost, "leases taken over by another node");
            self.metrics.cluster_leases_lost.inc_by(lost.len() as u64);
            self.holders.lost(&lost).await;
        }

        let (members, leases) = self.store.cluster_view(ttl_ms).await?;
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
            // Hand-over: stop acting on the shards first, let what was decided under them
            // reach the store, then free the leases at once for the node that is short.
            let epochs: Vec<(Shard, i64)> = plan
                .release
                .iter()
                .filter_map(|s| own.epoch(*s).map(|e| (*s, e)))
                .collect();
            let released = own.drop_shards(&plan.release);
            self.holders.lost(&released).await;
            // What was decided under these shards reaches the store before the leases go
            // (it would be fenced after): a hand-over drops no acknowledged work. Bounded
            // by a lease round, so the keeper's own renewals are never late for it.
            self.holders.settle_writes(self.ttl / 3).await;
            for (shard, epoch) in epochs {
                self.store.release_lease(shard, &own.node_id, epoch).await?;
                self.metrics.cluster_handovers.inc();
                let mut view = own.view.write().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = view.owners.get_mut(shard as usize) {
                    *slot = None;
                }
            }
            info!(shards = released.len(), "shards handed over");
        }

        let mut gained = Vec::new();
        for shard in plan.claim {
            if let Some(epoch) = self.store.claim_lease(shard, &own.node_id, ttl_ms).await? {
                gained.push((shard, epoch));
            }
        }
        if !gained.is_empty() {
            let shards: Vec<Shard> = gained.iter().map(|(s, _)| *s).collect();
            // Anything left in memory from an earlier ownership goes before the shard is
            // served again: its actors load what the store holds now.
            self.holders.lost(&shards).await;
            for (shard, epoch) in &gained {
                if let Some(slot) = own.epochs.get(*shard as usize) {
                    slot.store(*epoch, Ordering::SeqCst);
                }
            }
            let gained = shards;
            info!(shards = gained.len(), "shards claimed");
            self.metrics.cluster_takeovers.inc_by(gained.len() as u64);
            self.holders.gained(&gained).await;
            let mut view = own.view.write().unwrap_or_else(|e| e.into_inner());
            for shard in &gained {
                if let Some(slot) = view.owners.get_mut(*shard as usize) {
                    *slot = Some(own.node_id.clone());
                }
            }
        }

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
}

/// Leaves the cluster on shutdown: drops every shard and releases the leases at once,
/// so the other nodes claim them on their next round instead of after the TTL.
pub async fn leave(store: &SqlStore, ownership: &Ownership, holders: &dyn ShardHolders) {
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
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".to_owned());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}
