//! Per-SKU inventory actors and the registry that finds (or activates) them.
//!
//! Owns: one SKU's [`SkuInventory`] (stock, reserved, live reservations), its unit
//! price and the next journal sequence number. Nothing else reads or writes it.
//! Takes: [`Reserve`], [`Forget`], [`Confirm`], [`Release`], [`SetStock`], [`GetView`].
//! Promises: every mutation is decided in memory, in mailbox order, and handed back as
//! a [`JournalEntry`] for the caller to make durable with the rest of its write-set. A
//! sold-out request is answered here and never reaches the database.
//!
//! Activation loads the SKU's snapshot and live reservations from the store;
//! passivation stops an actor that has been idle for `idle_passivate_secs`, holds no
//! reservation and has nothing waiting in the write-behind. Actors are spread over
//! one arbiter (thread) per core; the registry is a sharded concurrent map, so looking
//! an actor up never takes a global lock.

use crate::actors::write_behind::{CommitError, WriteBehind};
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

pub struct SkuActor {
    sku: Sku,
    unit_price: Money,
    inventory: SkuInventory,
    seq: i64,
    last_message: Instant,
    shared: Arc<Shared>,
    stats: Arc<SkuStats>,
}

/// What the metrics scrape reads of a SKU actor without sending it a message. Kept a
/// while after passivation: a passivated SKU's availability cannot change until it is
/// activated again, so its last value stays true (see [`Inventory::hottest`]).
#[derive(Default)]
struct SkuStats {
    messages: AtomicU64,
    available: AtomicI64,
    passivated: std::sync::atomic::AtomicBool,
}

impl SkuActor {
    fn journal(&mut self, change: Change) -> JournalEntry {
        self.seq += 1;
        JournalEntry {
            sku: self.sku.clone(),
            seq: self.seq,
            change,
            at: now_millis(),
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
        self.stats
            .available
            .store(self.inventory.available(), Ordering::Relaxed);
    }

    fn maybe_passivate(&mut self, ctx: &mut Context<Self>) {
        let idle = self.last_message.elapsed() >= self.shared.idle_timeout;
        if idle && !self.inventory.has_reservations() && self.shared.write_behind.is_drained() {
            let me = ctx.address();
            self.shared.actors.remove_if(&self.sku, |_, addr| *addr == me);
            ctx.stop();
        }
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
        let label = if outcome.is_ok() { "accepted" } else { "sold_out" };
        self.shared.metrics.reservations.with_label_values(&[label]).inc();
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

impl Handler<Forget> for SkuActor {
    type Result = ();
    fn handle(&mut self, msg: Forget, _ctx: &mut Self::Context) {
        let _handling = self.touch();
        self.inventory.forget(msg.order);
    }
}

impl Handler<Confirm> for SkuActor {
    type Result = Option<JournalEntry>;
    fn handle(&mut self, msg: Confirm, _ctx: &mut Self::Context) -> Self::Result {
        let _handling = self.touch();
        let outcome = self.inventory.confirm(msg.order);
        self.note_available();
        match outcome {
            Outcome::Applied(change) => Some(self.journal(change)),
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
            Outcome::Applied(change) => Some(self.journal(change)),
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

/// What every SKU actor shares with the registry.
struct Shared {
    actors: DashMap<Sku, Addr<SkuActor>>,
    store: SqlStore,
    write_behind: WriteBehind,
    metrics: Arc<Metrics>,
    idle_timeout: Duration,
    mailbox_capacity: usize,
    probe: ActorProbe,
    stats: DashMap<Sku, Arc<SkuStats>>,
}

/// Where reservations are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Per-SKU actors in memory, group-committed (the design of this runtime).
    Actor,
    /// One database transaction per order with `SELECT … FOR UPDATE` on each SKU row
    /// (the prototype's design, kept as the benchmark baseline).
    SqlRowLock,
}

impl Strategy {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "actor" => Some(Self::Actor),
            "sql_row_lock" => Some(Self::SqlRowLock),
            _ => None,
        }
    }
}

/// The registry: finds a SKU's actor, activating it from the store on first use.
/// Under [`Strategy::SqlRowLock`] no actor is started; views and stock changes go to
/// the locked database row instead.
#[derive(Clone)]
pub struct Inventory {
    shared: Arc<Shared>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    strategy: Strategy,
}

#[derive(Debug, Clone)]
pub struct InventoryOptions {
    pub idle_timeout: Duration,
    pub mailbox_capacity: usize,
    pub strategy: Strategy,
}

impl Inventory {
    /// `arbiters` are the threads actors run on (one per core); must be called inside an actix System.
    pub fn new(
        store: SqlStore,
        write_behind: WriteBehind,
        metrics: Arc<Metrics>,
        arbiters: Arc<Vec<ArbiterHandle>>,
        options: InventoryOptions,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                actors: DashMap::new(),
                store,
                write_behind,
                probe: ActorProbe::new(&metrics, ACTOR),
                metrics,
                stats: DashMap::new(),
                idle_timeout: options.idle_timeout,
                mailbox_capacity: options.mailbox_capacity.max(16),
            }),
            arbiters,
            strategy: options.strategy,
        }
    }

    pub fn strategy(&self) -> Strategy {
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

    pub fn active_count(&self) -> usize {
        self.shared.actors.len()
    }

    async fn actor(&self, sku: &Sku) -> Result<Addr<SkuActor>, InventoryFailure> {
        if let Some(addr) = self.shared.actors.get(sku) {
            return Ok(addr.clone());
        }
        let record = self
            .shared
            .store
            .load_sku(sku)
            .await?
            .ok_or_else(|| InventoryFailure::UnknownSku(sku.clone()))?;
        let entry = self.shared.actors.entry(sku.clone());
        Ok(match entry {
            // Another request activated it while we were loading: use theirs.
            dashmap::Entry::Occupied(existing) => existing.get().clone(),
            dashmap::Entry::Vacant(slot) => {
                let shared = self.shared.clone();
                let arbiter = &self.arbiters[shard_of(sku, self.arbiters.len())];
                let addr = SkuActor::start_in_arbiter(arbiter, move |_ctx| SkuActor {
                    sku: record.sku,
                    unit_price: record.unit_price,
                    inventory: SkuInventory::restore(record.stock, record.reservations),
                    seq: record.seq,
                    last_message: Instant::now(),
                    shared,
                    stats: Arc::default(),
                });
                slot.insert(addr.clone());
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
                    self.shared.actors.remove_if(sku, |_, a| *a == addr);
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
        if self.strategy == Strategy::SqlRowLock {
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
        if self.strategy == Strategy::SqlRowLock {
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
pub fn shard_of<K: Hash>(key: &K, shards: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % shards.max(1) as u64) as usize
}
