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

use crate::config::ClusterSettings;
use crate::domain::cluster::{fair_share, rebalance, shard_of, Fence, LeaseView, Shard};
use crate::domain::ids::Sku;
use crate::persistence::{SqlStore, WriteSet};
use crate::telemetry::Metrics;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A member as `GET /health/cluster` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    pub node: String,
    pub url: String,
    pub shards: usize,
}

/// Who to ask about a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
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
            view: RwLock::default(),
            settled: AtomicBool::new(true),
            round: Duration::ZERO,
            fenced: Default::default(),
        })
    }

    pub fn clustered(node_id: String, shards: u32, lease_ttl: Duration) -> Arc<Self> {
        let shards = shards.max(1);
        Arc::new(Self {
            enabled: true,
            node_id,
            url: std::sync::OnceLock::new(),
            shards,
            epochs: (0..shards).map(|_| AtomicI64::new(0)).collect(),
            view: RwLock::default(),
            settled: AtomicBool::new(false),
            round: lease_ttl / 3,
            fenced: Default::default(),
        })
    }

    /// Sets the URL peers reach this node at (once, when the listener is bound).
    pub fn advertise(&self, url: String) {
        let _ = self.url.set(url);
    }

    fn url(&self) -> &str {
        self.url.get().map_or("", String::as_str)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn is_settled(&self) -> bool {
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
    pub fn epoch(&self, shard: Shard) -> Option<i64> {
        if !self.enabled {
            return Some(0);
        }
        let epoch = self.epochs.get(shard as usize)?.load(Ordering::SeqCst);
        (epoch > 0).then_some(epoch)
    }

    /// Whether this node runs the cluster's singletons (the outbox relay, the refunder):
    /// the holder of shard 0 does, so exactly one node does while leases hold, and a
    /// new one takes over with the shard. Always true outside cluster mode.
    pub fn leads(&self) -> bool {
        self.epoch(0).is_some()
    }

    pub fn holds_sku(&self, sku: &Sku) -> bool {
        self.epoch(self.shard_of(sku)).is_some()
    }

    /// Who owns `sku`'s shard.
    pub fn owner_of(&self, sku: &Sku) -> Owner {
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

    /// Who owns `sku`'s shard, waiting up to a lease round and a half while nobody does
    /// (a shard handed over is claimed by its next owner on that node's next round).
    pub async fn await_owner(&self, sku: &Sku) -> Owner {
        let deadline = Instant::now() + self.round * 3 / 2;
        loop {
            let owner = self.owner_of(sku);
            if owner != Owner::Nobody || Instant::now() >= deadline {
                return owner;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The fences of a write-set: per shard it writes (its journal entries' SKUs), the
    /// node that decided those entries and the epoch it held the shard at. Entries this
    /// node decided use its own epochs now; entries another node decided come with their
    /// fences (`remote_fences`). `Err` names the shards nobody vouches for: the write-set
    /// must not be committed.
    pub fn fences(&self, set: &WriteSet) -> Result<Vec<Fence>, Vec<Shard>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let shards: BTreeSet<Shard> = set.journal.iter().map(|e| self.shard_of(&e.sku)).collect();
        let mut fences = Vec::with_capacity(shards.len());
        let mut missing = Vec::new();
        for shard in shards {
            if let Some(remote) = set.remote_fences.iter().find(|f| f.shard == shard) {
                fences.push(remote.clone());
                continue;
            }
            match self.epoch(shard) {
                Some(epoch) => fences.push(Fence {
                    shard,
                    node: self.node_id.clone(),
                    epoch,
                }),
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
    pub fn fence_of(&self, sku: &Sku) -> Option<Fence> {
        let shard = self.shard_of(sku);
        self.epoch(shard).map(|epoch| Fence {
            shard,
            node: self.node_id.clone(),
            epoch,
        })
    }

    /// The URL of `sku`'s owner when that is another node.
    pub fn peer_of(&self, sku: &Sku) -> Option<String> {
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

    /// The fence refused a commit for `shards`: they are no longer this node's. Their
    /// actors are dropped by the keeper's next round.
    pub fn fenced(&self, shards: &[Shard]) {
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

    /// `GET /health/cluster`: this node, the live members and how many shards each holds.
    pub fn report(&self) -> serde_json::Value {
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

/// What holds state per shard and must follow its ownership: the SKU actors and the
/// sagas (wired in `app`).
#[async_trait::async_trait]
pub trait ShardHolders: Send + Sync {
    /// Drops everything held in memory for these shards (another node owns them now).
    async fn lost(&self, shards: &[Shard]);
    /// This node now owns these shards: resume their in-flight orders from the store.
    async fn gained(&self, shards: &[Shard]);
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
        let rank = {
            let mut sorted = live.clone();
            if !sorted.contains(&own.node_id) {
                sorted.push(own.node_id.clone());
            }
            sorted.sort_unstable();
            (sorted.iter().position(|n| *n == own.node_id).unwrap_or(0), sorted.len())
        };
        let share = fair_share(own.shards, rank.1, rank.0);
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

/// The header a peer call carries: the cluster's shared secret.
pub const PEER_HEADER: &str = "emporium-peer";

/// `POST /internal/v1/reservations`: reserve on the owner's SKU actor for an order
/// another node places (an order spanning owners).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteReserve {
    pub order: crate::domain::ids::OrderId,
    pub sku: Sku,
    pub qty: i64,
    pub expires_at: crate::domain::Millis,
}

/// The owner's answer: the journal entry it decided (none when the reservation existed
/// already), the unit price, and the fence the placing node's commit must check.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteReserved {
    pub entry: Option<crate::persistence::JournalEntry>,
    pub unit_price: crate::domain::money::Money,
    pub fence: Fence,
}

/// A refusal of a remote reservation as the owner gave it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteRefusal {
    /// `out_of_stock`, `unknown_sku` or `unavailable`.
    pub reason: String,
    pub requested: i64,
    pub available: i64,
}

/// `POST /internal/v1/reservations/settle`: confirm or release on the owner's actor; the
/// entry comes back to the node committing the saga step, with the owner's fence.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteSettle {
    pub order: crate::domain::ids::OrderId,
    pub sku: Sku,
    pub confirm: bool,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteSettled {
    pub entry: Option<crate::persistence::JournalEntry>,
    pub fence: Fence,
}

/// `POST /internal/v1/payments`: a payment outcome consumed by a node that does not own
/// the order, for the node that runs its saga (`payment.mode = "kafka"`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemotePayment {
    pub order: crate::domain::ids::OrderId,
    /// The order's smallest SKU: its owner runs the saga.
    pub sku: Sku,
    /// `None` when the payment succeeded, else why it failed.
    pub failure: Option<String>,
    pub consumed: crate::persistence::Consumed,
}

/// Why a remote inventory call failed.
#[derive(Debug, Clone)]
pub enum RemoteFailure {
    Refused(RemoteRefusal),
    /// The owner did not answer, or no longer owns the SKU: retry (maybe elsewhere).
    Unavailable(String),
}

/// Calls other nodes' SKU actors (orders spanning owners). One pooled HTTP client.
pub struct PeerClient {
    ownership: Arc<Ownership>,
    client: reqwest::Client,
    secret: String,
}

impl PeerClient {
    pub fn new(ownership: Arc<Ownership>, secret: String, timeout: Duration) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            ownership,
            client,
            secret,
        })
    }

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        sku: &Sku,
        path: &str,
        body: &B,
    ) -> Result<T, RemoteFailure> {
        let Some(base) = self.ownership.peer_of(sku) else {
            return Err(RemoteFailure::Unavailable(format!("no live owner of {sku}")));
        };
        let answer = self
            .client
            .post(format!("{}{path}", base.trim_end_matches('/')))
            .header(PEER_HEADER, &self.secret)
            .json(body)
            .send()
            .await
            .map_err(|e| RemoteFailure::Unavailable(e.to_string()))?;
        let status = answer.status();
        if status.is_success() {
            return answer
                .json()
                .await
                .map_err(|e| RemoteFailure::Unavailable(e.to_string()));
        }
        if matches!(status.as_u16(), 404 | 409 | 422) {
            if let Ok(refusal) = answer.json::<RemoteRefusal>().await {
                return Err(RemoteFailure::Refused(refusal));
            }
        }
        Err(RemoteFailure::Unavailable(format!("{base}{path} answered {status}")))
    }

    pub async fn reserve(&self, request: &RemoteReserve) -> Result<RemoteReserved, RemoteFailure> {
        self.call(&request.sku, "/internal/v1/reservations", request).await
    }

    /// Drops a reservation the placing node will not commit (a later resolution from the
    /// store would drop it too; this is sooner).
    pub async fn forget(&self, sku: &Sku, order: crate::domain::ids::OrderId) -> Result<(), RemoteFailure> {
        let request = RemoteSettle {
            order,
            sku: sku.clone(),
            confirm: false,
        };
        self.call::<_, serde_json::Value>(sku, "/internal/v1/reservations/forget", &request)
            .await
            .map(|_| ())
    }

    pub async fn settle(&self, request: &RemoteSettle) -> Result<RemoteSettled, RemoteFailure> {
        self.call(&request.sku, "/internal/v1/reservations/settle", request)
            .await
    }

    /// Hands a consumed payment outcome to the node running the order's saga; it
    /// applies it with the consumed event's id, as a local consumer would.
    pub async fn payment(&self, request: &RemotePayment) -> Result<(), RemoteFailure> {
        self.call::<_, serde_json::Value>(&request.sku, "/internal/v1/payments", request)
            .await
            .map(|_| ())
    }
}
