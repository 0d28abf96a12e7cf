//! Per-SKU inventory: the registry that finds (or activates) a SKU's actor, here;
//! the actor itself in [`sku_actor`] (its Owns/Takes/Promises header is there); the
//! cap on live actors in [`eviction`].
//!
//! Activation loads the SKU's snapshot and live reservations from the store;
//! passivation stops an actor that has been idle for `idle_passivate_secs`, holds no
//! reservation and has nothing waiting in the write-behind. Besides idling out, live
//! actors are capped (`max_live_actors`): past the cap, each activation passivates the
//! least recently used actor that can go (approximate LRU, the CLOCK algorithm), so a
//! flood of distinct SKUs costs bounded memory. Either way a passivated SKU is activated
//! again from the store on its next request, so no request can tell. Actors are spread over
//! one arbiter (thread) per core; the registry is a sharded concurrent map, so looking
//! an actor up never takes a global lock.

mod eviction;
mod sku_actor;

use crate::error::Cause;
use actix::{Actor, Addr, Handler, MailboxError, Message};
use eviction::mark_used;

use crate::actors::cluster::Ownership;
use crate::actors::write_behind::{CommitError, WriteBehind};
use crate::config::InventoryStrategy;
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::{InventoryError, SkuInventory};
use crate::domain::money::Money;
use crate::domain::Millis;
use crate::persistence::{JournalEntry, SqlStore, StoreError};
use crate::telemetry::{ActorProbe, Metrics};
use actix::ArbiterHandle;
use dashmap::DashMap;
use serde::Serialize;
use sku_actor::{Confirm, Forget, GetView, Release, Relinquish, Reserve, SetStock, SkuActor, SkuStats};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

const ACTOR: &str = "sku";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct InventoryView {
    pub(crate) sku: String,
    pub(crate) stock: i64,
    pub(crate) reserved: i64,
    pub(crate) available: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum InventoryFailure {
    #[error("unknown sku {0}")]
    UnknownSku(Sku),
    #[error(transparent)]
    Rule(#[from] InventoryError),
    #[error("inventory unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// Cluster mode: another node owns this SKU's shard (or nobody does right now).
    #[error("this node does not own sku {0}")]
    NotOwner(Sku),
}

impl From<StoreError> for InventoryFailure {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(Cause::new(e))
    }
}
impl From<CommitError> for InventoryFailure {
    fn from(e: CommitError) -> Self {
        Self::Unavailable(Cause::new(e))
    }
}

/// A reservation was taken (or already existed: `entry` is `None`).
#[derive(Debug, Clone)]
pub struct Reserved {
    pub(crate) entry: Option<JournalEntry>,
    pub(crate) unit_price: Money,
}

/// A live SKU actor as the registry finds it: its address and what it publishes.
#[derive(Clone)]
struct Live {
    addr: Addr<SkuActor>,
    stats: Arc<SkuStats>,
}

/// `emporium_reservations_total` series, looked up once instead of hashing the label
/// on every reservation (`None` inside when `telemetry.metrics = false`).
struct Counters {
    accepted: CachedCounter,
    sold_out: CachedCounter,
}

struct CachedCounter(Option<prometheus::IntCounter>);

impl CachedCounter {
    fn inc(&self) {
        if let Some(c) = &self.0 {
            c.inc();
        }
    }
}

/// What every SKU actor shares with the registry.
struct Shared {
    actors: DashMap<Sku, Live>,
    counters: Counters,
    store: SqlStore,
    write_behind: WriteBehind,
    metrics: Arc<Metrics>,
    idle_timeout: Duration,
    mailbox_capacity: usize,
    probe: ActorProbe,
    stats: DashMap<Sku, Arc<SkuStats>>,
    /// At most this many live actors (0 = no cap), enforced through `clock`.
    max_live: usize,
    /// Live SKUs in activation order, the eviction clock's hand at the front. May hold
    /// SKUs that have since idled out (skipped when met, compacted when it grows).
    clock: std::sync::Mutex<std::collections::VecDeque<Sku>>,
    /// Which SKUs this node may activate (all of them outside cluster mode).
    ownership: Arc<Ownership>,
}

/// The registry: finds a SKU's actor, activating it from the store on first use.
/// Under [`InventoryStrategy::SqlRowLock`] no actor is started; views and stock changes go to
/// the locked database row instead.
#[derive(Clone)]
pub struct Inventory {
    shared: Arc<Shared>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    strategy: InventoryStrategy,
}

#[derive(Debug, Clone)]
pub struct InventoryOptions {
    pub(crate) idle_timeout: Duration,
    pub(crate) mailbox_capacity: usize,
    pub(crate) strategy: InventoryStrategy,
    /// Cap on live SKU actors (0 = none): past it the least recently used go first.
    pub(crate) max_live_actors: usize,
}

impl Inventory {
    /// `arbiters` are the threads actors run on (one per core); must be called inside an actix System.
    pub fn new(
        store: SqlStore,
        write_behind: WriteBehind,
        metrics: Arc<Metrics>,
        arbiters: Arc<Vec<ArbiterHandle>>,
        options: InventoryOptions,
        ownership: Arc<Ownership>,
    ) -> Self {
        let counter = |label: &str| CachedCounter(metrics.reservations.with_label_values(&[label]).into_inner());
        let counters = Counters {
            accepted: counter("accepted"),
            sold_out: counter("sold_out"),
        };
        Self {
            shared: Arc::new(Shared {
                actors: DashMap::new(),
                counters,
                store,
                write_behind,
                probe: ActorProbe::new(&metrics, ACTOR),
                metrics,
                stats: DashMap::new(),
                idle_timeout: options.idle_timeout,
                mailbox_capacity: options.mailbox_capacity.max(16),
                max_live: options.max_live_actors,
                clock: std::sync::Mutex::default(),
                ownership,
            }),
            arbiters,
            strategy: options.strategy,
        }
    }

    pub(crate) fn strategy(&self) -> InventoryStrategy {
        self.strategy
    }

    /// `(sku, available)` of the `n` SKUs whose actors handled the most messages since
    /// activation: the hot ones in a sale, a bounded set for the metrics whatever the
    /// catalog's size. Passivated SKUs outside the top `n` are forgotten here, so the
    /// map holds the live actors plus at most `n` others.
    pub(crate) fn hottest(&self, n: usize) -> Vec<(String, i64)> {
        let mut all: Vec<(u64, Sku, i64, bool)> = self
            .shared
            .stats
            .iter()
            .map(|e| {
                let s = e.value();
                (
                    s.messages.load(Ordering::Relaxed),
                    e.key().clone(),
                    s.available.load(Ordering::Relaxed),
                    s.passivated.load(Ordering::Relaxed),
                )
            })
            .collect();
        all.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, sku, _, passivated) in all.iter().skip(n) {
            if *passivated {
                self.shared
                    .stats
                    .remove_if(sku, |_, s| s.passivated.load(Ordering::Relaxed));
            }
        }
        all.into_iter()
            .take(n)
            .map(|(_, sku, available, _)| (sku.to_string(), available))
            .collect()
    }

    /// Cluster mode: stops the actors of every SKU `lost` says this node no longer
    /// owns; a later request for one activates it again only if its shard came back.
    pub(crate) fn relinquish(&self, lost: impl Fn(&Sku) -> bool) {
        let going: Vec<Live> = self
            .shared
            .actors
            .iter()
            .filter(|e| lost(e.key()))
            .map(|e| e.value().clone())
            .collect();
        for live in going {
            live.addr.do_send(Relinquish);
        }
        self.shared.actors.retain(|sku, _| !lost(sku));
        // Their availability changes on the new owner from now on: this node stops
        // exporting its last value (the new owner exports the true one).
        self.shared.stats.retain(|sku, _| !lost(sku));
    }

    pub fn active_count(&self) -> usize {
        self.shared.actors.len()
    }

    /// Whether memory already refuses an order of `wanted` (quantity per SKU, in the
    /// order reservations are taken): `Some((sku, requested, available))` of the SKU the
    /// actors would refuse it on, decided from what live actors publish, on the caller's
    /// thread. `None` means "ask the actors" — always the answer when a SKU before the
    /// short one has no live actor (it might be unknown, or its actor answers otherwise),
    /// so this can only ever answer what the actors would have answered, never sell.
    pub(crate) fn short_of<'a>(&self, wanted: impl IntoIterator<Item = (&'a Sku, i64)>) -> Option<(Sku, i64, i64)> {
        if self.strategy != InventoryStrategy::Actor {
            return None;
        }
        let known = wanted.into_iter().map(|(sku, qty)| {
            let live = self.shared.actors.get(sku)?;
            mark_used(&live.stats);
            // Counted as a message: the hottest-SKU gauge ranks demand, and a flood of
            // refused attempts is demand.
            live.stats.messages.fetch_add(1, Ordering::Relaxed);
            Some((sku, qty, live.stats.available.load(Ordering::Acquire)))
        });
        let (sku, requested, available) = crate::domain::inventory::first_short(known)?;
        self.shared.counters.sold_out.inc();
        Some((sku.clone(), requested, available))
    }

    async fn actor(&self, sku: &Sku) -> Result<Addr<SkuActor>, InventoryFailure> {
        if let Some(live) = self.shared.actors.get(sku) {
            mark_used(&live.stats);
            return Ok(live.addr.clone());
        }
        let ownership = &self.shared.ownership;
        let shard = ownership.shard_of(sku);
        let Some(epoch) = ownership.epoch(shard) else {
            return Err(InventoryFailure::NotOwner(sku.clone()));
        };
        let record = self
            .shared
            .store
            .load_sku(sku)
            .await?
            .ok_or_else(|| InventoryFailure::UnknownSku(sku.clone()))?;
        let entry = self.shared.actors.entry(sku.clone());
        Ok(match entry {
            // Another request activated it while we were loading: use theirs.
            dashmap::Entry::Occupied(existing) => existing.get().addr.clone(),
            // The shard was lost (and maybe re-claimed) while the snapshot loaded: what was
            // loaded may predate the new epoch's owner, and a relinquish may already have
            // swept the registry. Checked under the registry slot's lock, which a
            // relinquish (after the epoch is dropped) must take too.
            dashmap::Entry::Vacant(_) if ownership.epoch(shard) != Some(epoch) => {
                return Err(InventoryFailure::NotOwner(sku.clone()));
            }
            dashmap::Entry::Vacant(slot) => {
                let shared = self.shared.clone();
                let arbiter = &self.arbiters[arbiter_of(sku, self.arbiters.len())];
                let inventory = SkuInventory::restore(record.stock, record.reservations);
                // Published before the actor is reachable: a default 0 would read as
                // "sold out" to the fast path until the actor's first change.
                let stats = Arc::new(SkuStats {
                    available: AtomicI64::new(inventory.available()),
                    ..SkuStats::default()
                });
                let actor_stats = stats.clone();
                let addr = SkuActor::start_in_arbiter(arbiter, move |_ctx| {
                    SkuActor::activated(
                        record.sku,
                        record.unit_price,
                        record.seq,
                        inventory,
                        epoch,
                        shared,
                        actor_stats,
                    )
                });
                slot.insert(Live {
                    addr: addr.clone(),
                    stats,
                });
                self.shared.requeue(sku);
                self.shared.evict_over_cap(sku);
                addr
            }
        })
    }

    /// Sends `msg` to the SKU's actor, re-activating it once if it stopped in between.
    async fn ask<M>(&self, sku: &Sku, msg: M) -> Result<M::Result, InventoryFailure>
    where
        M: Message + Send + Clone + 'static,
        M::Result: Send,
        SkuActor: Handler<M>,
    {
        for _ in 0..3 {
            let addr = self.actor(sku).await?;
            self.shared.probe.sent();
            match addr.send(msg.clone()).await {
                Ok(result) => return Ok(result),
                Err(MailboxError::Closed) => {
                    // Stopped with this message on its way: activated again from the store.
                    self.shared.probe.undelivered();
                    self.shared.metrics.actor_restarts.with_label_values(&[ACTOR]).inc();
                    self.shared.actors.remove_if(sku, |_, live| live.addr == addr);
                }
                Err(MailboxError::Timeout) => {
                    self.shared.probe.undelivered();
                    break;
                }
            }
        }
        Err(InventoryFailure::Unavailable(
            (format!("inventory actor for {sku} is not answering")).into(),
        ))
    }

    pub async fn reserve(
        &self,
        sku: &Sku,
        order: OrderId,
        qty: i64,
        expires_at: Millis,
    ) -> Result<Reserved, InventoryFailure> {
        let span = tracing::debug_span!("inventory.reserve", %sku, order_id = %order, qty);
        Ok(self
            .ask(sku, Reserve { order, qty, expires_at })
            .instrument(span)
            .await??)
    }

    pub async fn forget(&self, sku: &Sku, order: OrderId) -> Result<(), InventoryFailure> {
        self.ask(sku, Forget { order }).await
    }

    pub(crate) async fn confirm(&self, sku: &Sku, order: OrderId) -> Result<Option<JournalEntry>, InventoryFailure> {
        let span = tracing::debug_span!("inventory.confirm", %sku, order_id = %order);
        self.ask(sku, Confirm { order }).instrument(span).await
    }

    pub(crate) async fn release(&self, sku: &Sku, order: OrderId) -> Result<Option<JournalEntry>, InventoryFailure> {
        let span = tracing::debug_span!("inventory.release", %sku, order_id = %order);
        self.ask(sku, Release { order }).instrument(span).await
    }

    pub(crate) async fn set_stock(&self, sku: &Sku, stock: i64) -> Result<InventoryView, InventoryFailure> {
        if self.strategy == InventoryStrategy::SqlRowLock {
            use crate::persistence::row_lock::Refusal;
            let (stock, reserved) = self
                .shared
                .store
                .set_stock_row_locked(sku, stock)
                .await
                .map_err(|r| match r {
                    Refusal::UnknownSku(sku) => InventoryFailure::UnknownSku(sku),
                    Refusal::Rule { rule, .. } => InventoryFailure::Rule(rule),
                    other => InventoryFailure::Unavailable(Cause::new(other)),
                })?;
            return Ok(InventoryView {
                sku: sku.to_string(),
                stock,
                reserved,
                available: stock - reserved,
            });
        }
        self.ask(sku, SetStock { stock }).await?
    }

    pub(crate) async fn view(&self, sku: &Sku) -> Result<InventoryView, InventoryFailure> {
        if self.strategy == InventoryStrategy::SqlRowLock {
            let (stock, reserved) = self
                .shared
                .store
                .inventory_row(sku)
                .await?
                .ok_or_else(|| InventoryFailure::UnknownSku(sku.clone()))?;
            return Ok(InventoryView {
                sku: sku.to_string(),
                stock,
                reserved,
                available: stock - reserved,
            });
        }
        self.ask(sku, GetView).await
    }
}

/// Which arbiter runs a key's actor: a fixed-key hash, so a SKU always lands on the same thread.
pub(crate) fn arbiter_of<K: Hash>(key: &K, arbiters: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % arbiters.max(1) as u64) as usize
}
