//! Cluster mode: which shards this node owns ([`Ownership`]) and the lease keeper that
//! keeps that true ([`LeaseKeeper`]). docs/cluster.md has the whole picture.
//!
//! Owns: this node's epoch per virtual shard (0 = not held) and the last view of the
//! membership and lease tables (who owns what, at which URL).
//! Promises: a shard is held here only between a successful claim (a new epoch) and
//! the moment its loss is noticed (renewal found it gone, the lease ran out without a
//! renewal, or it was handed over); while it is held, the SKU actors of its SKUs and the
//! sagas of its orders run here and nowhere else. Safety does not rest on noticing in
//! time: every group commit checks the epochs it writes under in its own transaction
//! (`SqlStore::commit_fenced`), so a paused ex-owner can make nothing durable.
//!
//! Outside cluster mode [`Ownership::single`] owns every SKU at epoch 0 and costs one
//! branch per question.
//!
//! The keeper is a tokio task: every third of the lease TTL it heartbeats, renews its
//! leases, reads the tables (database clock), and claims or releases shards towards a
//! fair share (`domain::cluster::rebalance`).
//!
//! Files: this one ([`Ownership`]: who owns what), `keeper.rs` (the lease keeper and
//! what follows ownership in memory), `peers.rs` (calls to the other nodes).

mod keeper;
mod peers;

pub(crate) use keeper::{default_node_id, leave, LeaseKeeper, ShardHolders};
pub(crate) use peers::*;

use crate::domain::cluster::{shard_of, Fence, Shard};
use crate::domain::ids::Sku;
use crate::persistence::WriteSet;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A member as `GET /health/cluster` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct MemberView {
    pub(crate) node: String,
    pub(crate) url: String,
    pub(crate) shards: usize,
}

/// Who to ask about a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This node holds the shard.
    Me,
    /// Another node holds it; its advertised URL.
    Peer(String),
    /// Nobody holds it right now (between an owner's death and a claim).
    Nobody,
}

#[derive(Default)]
struct View {
    /// Owner node id per shard, as last read (None: free or expired).
    owners: Vec<Option<String>>,
    /// Live members with their URLs, by node id.
    members: Vec<(String, String)>,
}

/// Which shards this node owns, and who owns the others.
pub struct Ownership {
    enabled: bool,
    node_id: String,
    /// How peers reach this node; set once the listener is bound.
    url: std::sync::OnceLock<String>,
    shards: u32,
    /// Epoch per shard while this node holds it; 0 when it does not.
    epochs: Vec<AtomicI64>,
    /// Per shard held, until when this node may act on it: milliseconds after `origin`
    /// on the monotonic clock (last renewal or claim sent + TTL − a margin). The keeper's
    /// watchdog drops a shard the moment its deadline passes, whatever else it is doing.
    deadlines: Vec<AtomicU64>,
    origin: Instant,
    view: RwLock<View>,
    /// The keeper has finished a round in which this node held its fair share or every
    /// shard had an owner: requests can be placed (`/health/ready`).
    settled: AtomicBool,
    /// A lease round (a third of the TTL): how long a shard can be between owners.
    round: Duration,
    /// Shards the fence took away, for the keeper to drop from memory on its next round.
    fenced: std::sync::Mutex<Vec<Shard>>,
}

impl Ownership {
    /// One node owning everything (cluster mode off).
    pub fn single() -> Arc<Self> {
        Arc::new(Self {
            enabled: false,
            node_id: String::new(),
            url: std::sync::OnceLock::new(),
            shards: 1,
            epochs: Vec::new(),
            deadlines: Vec::new(),
            origin: Instant::now(),
            view: RwLock::default(),
            settled: AtomicBool::new(true),
            round: Duration::ZERO,
            fenced: Default::default(),
        })
    }

    pub(crate) fn clustered(node_id: String, shards: u32, lease_ttl: Duration) -> Arc<Self> {
        let shards = shards.max(1);
        Arc::new(Self {
            enabled: true,
            node_id,
            url: std::sync::OnceLock::new(),
            shards,
            epochs: (0..shards).map(|_| AtomicI64::new(0)).collect(),
            deadlines: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            origin: Instant::now(),
            view: RwLock::default(),
            settled: AtomicBool::new(false),
            round: lease_ttl / 3,
            fenced: Default::default(),
        })
    }

    /// Sets the URL peers reach this node at (once, when the listener is bound).
    pub(crate) fn advertise(&self, url: String) {
        let _ = self.url.set(url);
    }

    fn url(&self) -> &str {
        self.url.get().map_or("", String::as_str)
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    pub(crate) fn shards(&self) -> u32 {
        self.shards
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    pub fn shard_of(&self, sku: &Sku) -> Shard {
        if self.enabled {
            shard_of(sku.as_str(), self.shards)
        } else {
            0
        }
    }

    /// The epoch under which this node holds `shard`, if it does (always 0 outside
    /// cluster mode).
    pub(crate) fn epoch(&self, shard: Shard) -> Option<i64> {
        if !self.enabled {
            return Some(0);
        }
        let epoch = self.epochs.get(shard as usize)?.load(Ordering::SeqCst);
        (epoch > 0).then_some(epoch)
    }

    /// Whether this node runs the cluster's singletons (the outbox relay, the refunder):
    /// the holder of shard 0 does, so exactly one node does while leases hold, and a
    /// new one takes over with the shard. Always true outside cluster mode.
    pub(crate) fn leads(&self) -> bool {
        self.epoch(0).is_some()
    }

    pub fn holds_sku(&self, sku: &Sku) -> bool {
        self.epoch(self.shard_of(sku)).is_some()
    }

    /// Who owns `sku`'s shard.
    pub(crate) fn owner_of(&self, sku: &Sku) -> Owner {
        let shard = self.shard_of(sku);
        if self.epoch(shard).is_some() {
            return Owner::Me;
        }
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let node = view.owners.get(shard as usize).cloned().flatten();
        match node.and_then(|n| view.members.iter().find(|(id, _)| *id == n).map(|(_, url)| url.clone())) {
            Some(url) if url != self.url() => Owner::Peer(url),
            _ => Owner::Nobody,
        }
    }

    /// Who owns `sku`'s shard, waiting up to two and a half lease rounds while nobody
    /// does: a shard handed over is claimed on its next owner's next round, and the other
    /// nodes see the claim on their own next round.
    pub(crate) async fn await_owner(&self, sku: &Sku) -> Owner {
        let deadline = Instant::now() + self.round * 5 / 2;
        loop {
            let owner = self.owner_of(sku);
            if owner != Owner::Nobody || Instant::now() >= deadline {
                return owner;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The fences of a write-set: per shard it writes (its journal entries' SKUs, and the
    /// order's own shard when it carries a new order, a status change or a consumed
    /// event), the node that decided those writes and the epoch it held the shard at.
    /// Entries this node decided use its own epochs now; entries another node decided come
    /// with their fences (`remote_fences`). `Err` names the shards nobody vouches for: the
    /// write-set must not be committed. A write-set about an order that does not say
    /// which order shard it is under (`order_sku`) is refused, not committed unfenced.
    pub(crate) fn fences(&self, set: &WriteSet) -> Result<Vec<Fence>, Vec<Shard>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let mut shards: BTreeSet<Shard> = set.journal.iter().map(|e| self.shard_of(&e.sku)).collect();
        let about_an_order = set.new_order.is_some() || set.status_change.is_some() || set.consumed.is_some();
        match &set.order_sku {
            Some(sku) => {
                shards.insert(self.shard_of(sku));
            }
            None if about_an_order => return Err(Vec::new()),
            None => {}
        }
        let mut fences = Vec::with_capacity(shards.len());
        let mut missing = Vec::new();
        for shard in shards {
            let remote = set.remote_fences.iter().find(|f| f.shard == shard).cloned();
            // An entry this node decided is fenced on the epoch its SKU actor was
            // activated under: one decided before the shard was lost and re-claimed is
            // refused here, before it could pass the fence at the new epoch (review F7).
            let own = self.own_fence(shard).filter(|fence| {
                set.journal
                    .iter()
                    .filter(|e| self.shard_of(&e.sku) == shard)
                    .all(|e| e.epoch.is_none_or(|epoch| epoch == fence.epoch))
            });
            match remote.or(own) {
                Some(fence) => fences.push(fence),
                None => missing.push(shard),
            }
        }
        if missing.is_empty() {
            Ok(fences)
        } else {
            Err(missing)
        }
    }

    /// This node's fence for `sku`'s shard, if it holds it.
    pub(crate) fn fence_of(&self, sku: &Sku) -> Option<Fence> {
        self.own_fence(self.shard_of(sku))
    }

    fn own_fence(&self, shard: Shard) -> Option<Fence> {
        self.epoch(shard).map(|epoch| Fence {
            shard,
            node: self.node_id.clone(),
            epoch,
        })
    }

    /// The URL of `sku`'s owner when that is another node.
    pub(crate) fn peer_of(&self, sku: &Sku) -> Option<String> {
        match self.owner_of(sku) {
            Owner::Peer(url) => Some(url),
            _ => None,
        }
    }

    /// Forgets `shards` (lost or handed over); true for each one that was held.
    fn drop_shards(&self, shards: &[Shard]) -> Vec<Shard> {
        shards
            .iter()
            .copied()
            .filter(|s| {
                self.epochs
                    .get(*s as usize)
                    .is_some_and(|e| e.swap(0, Ordering::SeqCst) > 0)
            })
            .collect()
    }

    fn millis_since_origin(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// A claim of `shard` at `epoch` committed: this node may act on it until `until`.
    /// The deadline is set before the epoch, so the watchdog never sees a held shard
    /// with an old deadline.
    fn hold(&self, shard: Shard, epoch: i64, until: Instant) {
        if let (Some(deadline), Some(slot)) = (self.deadlines.get(shard as usize), self.epochs.get(shard as usize)) {
            deadline.store(self.millis_since_origin(until), Ordering::SeqCst);
            slot.store(epoch, Ordering::SeqCst);
        }
    }

    /// A renewal of these (shard, epoch) leases committed: their deadline moves to
    /// `until`, for each still held here at that epoch.
    fn extend(&self, renewed: &[(Shard, i64)], until: Instant) {
        let until = self.millis_since_origin(until);
        for (shard, epoch) in renewed {
            let held = self.epochs.get(*shard as usize).map(|e| e.load(Ordering::SeqCst));
            if held == Some(*epoch) {
                if let Some(deadline) = self.deadlines.get(*shard as usize) {
                    deadline.fetch_max(until, Ordering::SeqCst);
                }
            }
        }
    }

    /// Drops every held shard whose deadline is `now` or earlier: the store may already
    /// let another node claim it. Returns the shards dropped.
    fn drop_expired(&self, now: Instant) -> Vec<Shard> {
        let now = self.millis_since_origin(now);
        let expired: Vec<Shard> = self
            .held()
            .into_iter()
            .filter(|(s, _)| {
                self.deadlines
                    .get(*s as usize)
                    .is_some_and(|d| d.load(Ordering::SeqCst) <= now)
            })
            .map(|(s, _)| s)
            .collect();
        self.drop_shards(&expired)
    }

    /// The fence refused a commit for `shards`: they are no longer this node's. Their
    /// actors are dropped by the keeper's next round.
    pub(crate) fn fenced(&self, shards: &[Shard]) {
        let dropped = self.drop_shards(shards);
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).extend(dropped);
    }

    fn held(&self) -> Vec<(Shard, i64)> {
        self.epochs
            .iter()
            .enumerate()
            .filter_map(|(s, e)| {
                let epoch = e.load(Ordering::SeqCst);
                (epoch > 0).then_some((s as Shard, epoch))
            })
            .collect()
    }

    /// `GET /health/cluster`: this node, the live members and how many shards each holds
    /// (outside cluster mode: one standalone node owning its one shard).
    pub(crate) fn report(&self) -> serde_json::Value {
        if !self.enabled {
            return serde_json::json!({
                "node": "standalone", "members": [], "shards_owned": 1, "shards_total": 1, "cluster": false,
            });
        }
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        let members: Vec<MemberView> = view
            .members
            .iter()
            .map(|(node, url)| MemberView {
                node: node.clone(),
                url: url.clone(),
                shards: view.owners.iter().filter(|o| o.as_deref() == Some(node)).count(),
            })
            .collect();
        serde_json::json!({
            "node": self.node_id,
            "members": members,
            "shards_owned": self.held().len(),
            "shards_total": self.shards,
            "cluster": true,
        })
    }
}

#[cfg(test)]
mod fence_tests {
    //! What a write-set is fenced on (review findings F7 and F8).

    use super::*;
    use crate::domain::ids::OrderId;
    use crate::domain::inventory::{settle_change, ChangeKind};
    use crate::domain::order::OrderStatus;
    use crate::persistence::{JournalEntry, StatusChange};

    fn holding(sku: &Sku, epoch: i64) -> Arc<Ownership> {
        let ownership = Ownership::clustered("me".into(), 8, Duration::from_secs(3));
        ownership.epochs[ownership.shard_of(sku) as usize].store(epoch, Ordering::SeqCst);
        ownership
    }

    fn entry(sku: &Sku, epoch: Option<i64>) -> JournalEntry {
        JournalEntry {
            sku: sku.clone(),
            seq: 1,
            change: settle_change(ChangeKind::Confirm, OrderId::generate(), 1),
            at: 0,
            epoch,
        }
    }

    fn status_change() -> StatusChange {
        StatusChange {
            order_id: OrderId::generate(),
            from: OrderStatus::PendingPayment,
            to: OrderStatus::Completed,
            cancel_reason: None,
            at: 0,
        }
    }

    #[test]
    fn a_status_change_is_fenced_on_the_order_shard_even_without_a_journal_entry() {
        let sku = Sku::parse("ORDERED").unwrap();
        let ownership = holding(&sku, 7);
        let status_only = WriteSet {
            status_change: Some(status_change()),
            order_sku: Some(sku.clone()),
            ..WriteSet::default()
        };
        let fences = ownership.fences(&status_only).unwrap();
        assert_eq!(fences.len(), 1);
        assert_eq!((fences[0].shard, fences[0].epoch), (ownership.shard_of(&sku), 7));
        // One that does not say which order shard it is under is refused, not unfenced.
        let unnamed = WriteSet {
            status_change: Some(status_change()),
            ..WriteSet::default()
        };
        assert!(ownership.fences(&unnamed).is_err());
    }

    #[test]
    fn an_entry_decided_under_an_earlier_epoch_of_the_shard_is_refused() {
        let sku = Sku::parse("ABA").unwrap();
        let ownership = holding(&sku, 9);
        let current = WriteSet {
            journal: vec![entry(&sku, Some(9))],
            ..WriteSet::default()
        };
        assert_eq!(ownership.fences(&current).unwrap()[0].epoch, 9);
        // Decided by the actor of epoch 8, before the shard was lost and re-claimed at 9.
        let stale = WriteSet {
            journal: vec![entry(&sku, Some(8))],
            ..WriteSet::default()
        };
        assert_eq!(ownership.fences(&stale), Err(vec![ownership.shard_of(&sku)]));
    }
}
