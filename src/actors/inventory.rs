//! Per-SKU inventory actors and the registry that finds (or activates) them.
//!
//! Owns: one SKU's [`SkuInventory`] (stock, reserved, live reservations), its unit
//! price and the next journal sequence number. Nothing else reads or writes it.
//! Takes: [`Reserve`], [`Forget`], [`Confirm`], [`Release`], [`SetStock`], [`GetView`].
//! Promises: every mutation is decided in memory, in mailbox order, and handed back as
//! a [`JournalEntry`] for the caller to make durable with the rest of its write-set. A
//! sold-out request is answered here and never reaches the database.
//! Publishes: its availability, after every change, in a cell the registry hands to the
//! HTTP worker ([`Inventory::short_of`]), so a request that memory already refuses is
//! answered 409 on the worker's own thread without a message to this actor.
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

use crate::actors::cluster::Ownership;
use crate::actors::write_behind::{CommitError, WriteBehind};
use crate::config::InventoryStrategy;
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::{Change, InventoryError, Outcome, SkuInventory};
use crate::domain::money::Money;
use crate::domain::{now_millis, Millis};
use crate::persistence::{JournalEntry, SqlStore, StoreError, WriteSet};
use crate::telemetry::actor::Handling;
use crate::telemetry::{ActorProbe, Metrics};
use actix::prelude::*;
use actix::ArbiterHandle;
use dashmap::DashMap;
use serde::Serialize;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

const ACTOR: &str = "sku";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InventoryView {
    pub sku: String,
    pub stock: i64,
    pub reserved: i64,
    pub available: i64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum InventoryFailure {
    #[error("unknown sku {0}")]
    UnknownSku(Sku),
    #[error(transparent)]
    Rule(#[from] InventoryError),
    #[error("inventory unavailable: {0}")]
    Unavailable(String),
    /// Cluster mode: another node owns this SKU's shard (or nobody does right now).
    #[error("this node does not own sku {0}")]
    NotOwner(Sku),
}

impl From<StoreError> for InventoryFailure {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}
impl From<CommitError> for InventoryFailure {
    fn from(e: CommitError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// A reservation was taken (or already existed: `entry` is `None`).
#[derive(Debug, Clone)]
pub struct Reserved {
    pub entry: Option<JournalEntry>,
    pub unit_price: Money,
}

#[derive(Message, Clone)]
#[rtype(result = "Result<Reserved, InventoryError>")]
pub struct Reserve {
    pub order: OrderId,
    pub qty: i64,
    pub expires_at: Millis,
}

/// Drops a reservation whose order never became durable (not journaled).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Forget {
    pub order: OrderId,
}

#[derive(Message, Clone)]
#[rtype(result = "Option<JournalEntry>")]
pub struct Confirm {
    pub order: OrderId,
}

#[derive(Message, Clone)]
#[rtype(result = "Option<JournalEntry>")]
pub struct Release {
    pub order: OrderId,
}

/// Admin change of stock on hand; answered after it is committed.
#[derive(Message, Clone)]
#[rtype(result = "Result<InventoryView, InventoryFailure>")]
pub struct SetStock {
    pub stock: i64,
}

#[derive(Message, Clone)]
#[rtype(result = "InventoryView")]
pub struct GetView;

/// The registry is over its live-actor cap and chose this actor: stop if nothing of it
/// lives only in memory, else stay (and go back in the eviction queue).
#[derive(Message, Clone)]
#[rtype(result = "()")]
struct Evict;

/// Cluster mode: this SKU's shard is no longer this node's. Stop now; whatever is held
/// in memory and not durable was never acknowledged, and the new owner loads the rest.
#[derive(Message, Clone)]
#[rtype(result = "()")]
struct Relinquish;

/// How long an evicted actor waits before it looks again whether its last settle is
/// durable (see [`SkuActor::last_settle_seq`]).
const EVICT_RETRY: Duration = Duration::from_millis(100);
/// Likewise for an actor still holding reservations (they last until paid or expired).
const HELD_RETRY: Duration = Duration::from_secs(1);

pub struct SkuActor {
    sku: Sku,
    unit_price: Money,
    inventory: SkuInventory,
    seq: i64,
    last_message: Instant,
    /// Journal sequence of the last Confirm or Release this actor handed out. Those
    /// entries are committed by their caller after the reservation is gone from memory,
    /// so until the store's sequence reaches this one a reactivation would load the
    /// reservation back: eviction waits for it (0: none since activation).
    last_settle_seq: i64,
    /// Cluster mode: the epoch of the SKU's shard this actor was activated under (0
    /// outside cluster mode). Its journal entries carry it, and the write-behind refuses
    /// them once the node holds the shard at another epoch (review F7).
    epoch: i64,
    shared: Arc<Shared>,
    stats: Arc<SkuStats>,
}

/// What the metrics scrape and the sold-out fast path read of a SKU actor without
/// sending it a message. Kept a while after passivation: a passivated SKU's availability
/// cannot change until it is activated again, so its last value stays true (see
/// [`Inventory::hottest`]); the fast path reads it only while the actor is live. Dropped
/// at once when the SKU's shard goes to another node ([`Inventory::relinquish`]).
///
/// `available` is written only by the actor, after each change is applied (and, for a
/// stock change, committed) and before the change is answered; it is set from the
/// restored inventory before the actor becomes reachable. So a reader sees either the
/// value after the last answered change or one of a change still in flight, never an
/// older one: a "no" it reads is one the actor itself gave at that point.
#[derive(Default)]
struct SkuStats {
    messages: AtomicU64,
    available: AtomicI64,
    passivated: std::sync::atomic::AtomicBool,
    /// Set on every lookup, cleared by the eviction clock: recently used actors get a
    /// second chance before they are chosen.
    referenced: std::sync::atomic::AtomicBool,
}

impl SkuActor {
    fn journal(&mut self, change: Change) -> JournalEntry {
        self.seq += 1;
        JournalEntry {
            sku: self.sku.clone(),
            seq: self.seq,
            change,
            at: now_millis(),
            epoch: Some(self.epoch),
        }
    }

    fn view(&self) -> InventoryView {
        InventoryView {
            sku: self.sku.to_string(),
            stock: self.inventory.stock(),
            reserved: self.inventory.reserved(),
            available: self.inventory.available(),
        }
    }

    fn touch(&mut self) -> Handling {
        self.last_message = Instant::now();
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        self.shared.probe.handling(true)
    }

    fn note_available(&self) {
        // Release: pairs with the Acquire load in `Inventory::short_of`.
        self.stats
            .available
            .store(self.inventory.available(), Ordering::Release);
    }

    fn maybe_passivate(&mut self, ctx: &mut Context<Self>) {
        let idle = self.last_message.elapsed() >= self.shared.idle_timeout;
        if idle {
            self.passivate(ctx);
        }
    }

    /// Stops the actor if nothing of it lives only in memory: no reservation, nothing
    /// waiting to be committed. Its state is then exactly the store's, and the next
    /// request activates it again from there.
    fn passivate(&mut self, ctx: &mut Context<Self>) {
        if !self.inventory.has_reservations() && self.shared.write_behind.is_drained() {
            self.stop_now(ctx);
        }
    }

    /// Chosen for eviction but not able to go yet: tries again after `delay` if the
    /// registry is still over its cap, else goes back in the queue like any live actor.
    fn evict_later(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        ctx.run_later(delay, |act, ctx| {
            if act.shared.actors.len() > act.shared.max_live {
                ctx.notify(Evict);
            } else {
                act.shared.requeue(&act.sku);
            }
        });
    }

    /// Leaves the registry first, so new requests activate a fresh actor from the store;
    /// messages already on their way see the mailbox closed and are sent there.
    fn stop_now(&mut self, ctx: &mut Context<Self>) {
        let me = ctx.address();
        self.shared.actors.remove_if(&self.sku, |_, live| live.addr == me);
        ctx.stop();
        // Still over the cap (two activations chose the same actor, or the one asked
        // stayed): each stop passes the request on, so the live set always comes back
        // under the cap, not only while new SKUs keep activating.
        self.shared.evict_over_cap(&self.sku);
    }
}

impl Actor for SkuActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.mailbox_capacity);
        self.shared.metrics.actors_active.with_label_values(&[ACTOR]).inc();
        self.shared.metrics.actor_activations.with_label_values(&[ACTOR]).inc();
        self.note_available();
        self.shared.stats.insert(self.sku.clone(), self.stats.clone());
        let every = (self.shared.idle_timeout / 2).max(Duration::from_millis(50));
        ctx.run_interval(every, |act, ctx| act.maybe_passivate(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.stats.passivated.store(true, Ordering::Relaxed);
        self.shared.metrics.actors_active.with_label_values(&[ACTOR]).dec();
        self.shared.metrics.actor_passivations.with_label_values(&[ACTOR]).inc();
    }
}

impl Handler<Reserve> for SkuActor {
    type Result = Result<Reserved, InventoryError>;
    fn handle(&mut self, msg: Reserve, _ctx: &mut Self::Context) -> Self::Result {
        let _handling = self.touch();
        let outcome = self.inventory.reserve(msg.order, msg.qty, msg.expires_at);
        match &outcome {
            Ok(_) => self.shared.counters.accepted.inc(),
            Err(_) => self.shared.counters.sold_out.inc(),
        }
        self.note_available();
        let entry = match outcome? {
            Outcome::Applied(change) => Some(self.journal(change)),
            Outcome::Unchanged => None,
        };
        Ok(Reserved {
            entry,
            unit_price: self.unit_price,
        })
    }
}

impl Handler<Evict> for SkuActor {
    type Result = ();
    fn handle(&mut self, _msg: Evict, ctx: &mut Self::Context) {
        if self.inventory.has_reservations() {
            // Held units live in memory until their orders settle: look again later.
            self.evict_later(ctx, HELD_RETRY);
            return;
        }
        if self.last_settle_seq == 0 {
            // Nothing handed out that is not durable already (reservations taken since
            // activation are settled, forgotten or held; stock changes are committed
            // before they are answered): the store holds exactly this state.
            self.stop_now(ctx);
            return;
        }
        // A settle was handed out: go only once the store has it. `wait` holds this
        // actor's mailbox meanwhile, so nothing changes between the read and the stop.
        let store = self.shared.store.clone();
        let sku = self.sku.clone();
        ctx.wait(
            async move { store.load_sku(&sku).await.ok().flatten().map(|r| r.seq) }
                .into_actor(self)
                .map(|durable, act, ctx| {
                    if durable.is_some_and(|seq| seq >= act.last_settle_seq) && !act.inventory.has_reservations() {
                        act.stop_now(ctx);
                    } else {
                        act.evict_later(ctx, EVICT_RETRY);
                    }
                }),
        );
    }
}

impl Handler<Relinquish> for SkuActor {
    type Result = ();
    fn handle(&mut self, _msg: Relinquish, ctx: &mut Self::Context) {
        let me = ctx.address();
        self.shared.actors.remove_if(&self.sku, |_, live| live.addr == me);
        ctx.stop();
    }
}

impl Handler<Forget> for SkuActor {
    type Result = ();
    fn handle(&mut self, msg: Forget, _ctx: &mut Self::Context) {
        let _handling = self.touch();
        self.inventory.forget(msg.order);
        // Units came back: a published "sold out" must not outlive them.
        self.note_available();
    }
}

impl Handler<Confirm> for SkuActor {
    type Result = Option<JournalEntry>;
    fn handle(&mut self, msg: Confirm, _ctx: &mut Self::Context) -> Self::Result {
        let _handling = self.touch();
        let outcome = self.inventory.confirm(msg.order);
        self.note_available();
        match outcome {
            Outcome::Applied(change) => {
                let entry = self.journal(change);
                self.last_settle_seq = entry.seq;
                Some(entry)
            }
            Outcome::Unchanged => None,
        }
    }
}

impl Handler<Release> for SkuActor {
    type Result = Option<JournalEntry>;
    fn handle(&mut self, msg: Release, _ctx: &mut Self::Context) -> Self::Result {
        let _handling = self.touch();
        let outcome = self.inventory.release(msg.order);
        self.note_available();
        match outcome {
            Outcome::Applied(change) => {
                let entry = self.journal(change);
                self.last_settle_seq = entry.seq;
                Some(entry)
            }
            Outcome::Unchanged => None,
        }
    }
}

impl Handler<SetStock> for SkuActor {
    // Atomic: no other message of this SKU runs until the change is committed, so
    // undoing it after a failed commit cannot invalidate anything decided meanwhile.
    type Result = AtomicResponse<Self, Result<InventoryView, InventoryFailure>>;
    fn handle(&mut self, msg: SetStock, _ctx: &mut Self::Context) -> Self::Result {
        let _handling = self.touch();
        let previous = self.inventory.stock();
        let change = match self.inventory.set_stock(msg.stock) {
            Ok(change) => change,
            Err(e) => return AtomicResponse::new(Box::pin(actix::fut::ready(Err(e.into())))),
        };
        let entry = self.journal(change);
        let write_behind = self.shared.write_behind.clone();
        let set = WriteSet {
            journal: vec![entry],
            ..WriteSet::default()
        };
        AtomicResponse::new(Box::pin(
            async move { write_behind.commit(set).await }
                .into_actor(self)
                .map(move |result, act, _ctx| match result {
                    Ok(()) => {
                        act.note_available();
                        Ok(act.view())
                    }
                    Err(e) => {
                        // Stock only went up or down by this change; restoring it is always valid.
                        let _ = act.inventory.set_stock(previous);
                        act.note_available();
                        Err(e.into())
                    }
                }),
        ))
    }
}

impl Handler<GetView> for SkuActor {
    type Result = MessageResult<GetView>;
    fn handle(&mut self, _msg: GetView, _ctx: &mut Self::Context) -> Self::Result {
        let _handling = self.touch();
        MessageResult(self.view())
    }
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

impl Shared {
    /// Puts `sku` back at the end of the eviction queue (an actor that could not go yet).
    fn requeue(&self, sku: &Sku) {
        if self.max_live > 0 {
            self.clock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(sku.clone());
        }
    }

    /// Over the cap: asks the least recently used live actor that is not `except` to go.
    /// Approximate LRU: an actor used since the hand last passed gets a second chance.
    /// Usually a few steps per activation; at most one turn of the clock, which clears
    /// every second-chance bit it passes, so an activation over the cap always asks
    /// someone to go (a bound of a few steps left the set over the cap for good when the
    /// last activations met only recently used actors).
    fn evict_over_cap(&self, except: &Sku) {
        if self.max_live == 0 || self.actors.len() <= self.max_live {
            return;
        }
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if clock.len() > 2 * self.max_live.max(self.actors.len()) {
            // Entries of actors that idled out; drop them so the queue stays bounded too.
            clock.retain(|sku| self.actors.contains_key(sku));
        }
        let turn = clock.len() + 1;
        let mut steps = 0;
        while let Some(sku) = clock.pop_front() {
            steps += 1;
            if steps > turn || self.actors.len() <= self.max_live {
                clock.push_front(sku);
                return;
            }
            if &sku == except {
                clock.push_back(sku);
                continue;
            }
            let Some(live) = self.actors.get(&sku).map(|l| l.clone()) else {
                continue; // idled out meanwhile
            };
            if live.stats.referenced.swap(false, Ordering::Relaxed) {
                clock.push_back(sku);
                continue;
            }
            // The actor decides (it alone knows whether it still holds anything); if it
            // stays, it puts itself back in the queue.
            live.addr.do_send(Evict);
            return;
        }
    }
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
    pub idle_timeout: Duration,
    pub mailbox_capacity: usize,
    pub strategy: InventoryStrategy,
    /// Cap on live SKU actors (0 = none): past it the least recently used go first.
    pub max_live_actors: usize,
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

    pub fn strategy(&self) -> InventoryStrategy {
        self.strategy
    }

    /// `(sku, available)` of the `n` SKUs whose actors handled the most messages since
    /// activation: the hot ones in a sale, a bounded set for the metrics whatever the
    /// catalog's size. Passivated SKUs outside the top `n` are forgotten here, so the
    /// map holds the live actors plus at most `n` others.
    pub fn hottest(&self, n: usize) -> Vec<(String, i64)> {
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
    pub fn relinquish(&self, lost: impl Fn(&Sku) -> bool) {
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
    pub fn short_of<'a>(&self, wanted: impl IntoIterator<Item = (&'a Sku, i64)>) -> Option<(Sku, i64, i64)> {
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
                let addr = SkuActor::start_in_arbiter(arbiter, move |_ctx| SkuActor {
                    sku: record.sku,
                    unit_price: record.unit_price,
                    inventory,
                    seq: record.seq,
                    last_message: Instant::now(),
                    last_settle_seq: 0,
                    epoch,
                    shared,
                    stats: actor_stats,
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
        Err(InventoryFailure::Unavailable(format!(
            "inventory actor for {sku} is not answering"
        )))
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

    pub async fn confirm(&self, sku: &Sku, order: OrderId) -> Result<Option<JournalEntry>, InventoryFailure> {
        let span = tracing::debug_span!("inventory.confirm", %sku, order_id = %order);
        self.ask(sku, Confirm { order }).instrument(span).await
    }

    pub async fn release(&self, sku: &Sku, order: OrderId) -> Result<Option<JournalEntry>, InventoryFailure> {
        let span = tracing::debug_span!("inventory.release", %sku, order_id = %order);
        self.ask(sku, Release { order }).instrument(span).await
    }

    pub async fn set_stock(&self, sku: &Sku, stock: i64) -> Result<InventoryView, InventoryFailure> {
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
                    other => InventoryFailure::Unavailable(other.to_string()),
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

    pub async fn view(&self, sku: &Sku) -> Result<InventoryView, InventoryFailure> {
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

/// Tells the eviction clock this actor was used. Read first: under a sale every worker
/// looks the same SKU up, and an unconditional store would bounce its cache line.
fn mark_used(stats: &SkuStats) {
    if !stats.referenced.load(Ordering::Relaxed) {
        stats.referenced.store(true, Ordering::Relaxed);
    }
}

/// Which arbiter runs a key's actor: a fixed-key hash, so a SKU always lands on the same thread.
pub fn arbiter_of<K: Hash>(key: &K, arbiters: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % arbiters.max(1) as u64) as usize
}
