//! One SKU's inventory actor.
//!
//! Owns: one SKU's [`SkuInventory`] (stock, reserved, live reservations), its unit
//! price and the next journal sequence number. Nothing else reads or writes it.
//! Takes: [`Reserve`], [`Forget`], [`Confirm`], [`Release`], [`SetStock`], [`GetView`].
//! Promises: every mutation is decided in memory, in mailbox order, and handed back as
//! a [`JournalEntry`] for the caller to make durable with the rest of its write-set. A
//! sold-out request is answered here and never reaches the database.
//! Publishes: its availability, after every change, in a cell the registry hands to the
//! HTTP worker ([`Inventory::short_of`](super::Inventory::short_of)), so a request that
//! memory already refuses is answered 409 on the worker's own thread without a message
//! to this actor.

use super::{InventoryView, Reserved, Shared, ACTOR};
use crate::actors::inventory::InventoryFailure;
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::{Change, InventoryError, Outcome, SkuInventory};
use crate::domain::money::Money;
use crate::domain::{now_millis, Millis};
use crate::persistence::{JournalEntry, WriteSet};
use crate::telemetry::actor::Handling;
use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Message, MessageResult,
    WrapFuture,
};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Message, Clone)]
#[rtype(result = "Result<Reserved, InventoryError>")]
pub(crate) struct Reserve {
    pub(crate) order: OrderId,
    pub(crate) qty: i64,
    pub(crate) expires_at: Millis,
}

/// Drops a reservation whose order never became durable (not journaled).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub(crate) struct Forget {
    pub(crate) order: OrderId,
}

#[derive(Message, Clone)]
#[rtype(result = "Option<JournalEntry>")]
pub(crate) struct Confirm {
    pub(crate) order: OrderId,
}

#[derive(Message, Clone)]
#[rtype(result = "Option<JournalEntry>")]
pub(crate) struct Release {
    pub(crate) order: OrderId,
}

/// Admin change of stock on hand; answered after it is committed.
#[derive(Message, Clone)]
#[rtype(result = "Result<InventoryView, InventoryFailure>")]
pub(crate) struct SetStock {
    pub(crate) stock: i64,
}

#[derive(Message, Clone)]
#[rtype(result = "InventoryView")]
pub(crate) struct GetView;

/// Cluster mode: this SKU's shard is no longer this node's. Stop now; whatever is held
/// in memory and not durable was never acknowledged, and the new owner loads the rest.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub(super) struct Relinquish;

pub(crate) struct SkuActor {
    pub(super) sku: Sku,
    unit_price: Money,
    pub(super) inventory: SkuInventory,
    seq: i64,
    last_message: Instant,
    /// Journal sequence of the last Confirm or Release this actor handed out. Those
    /// entries are committed by their caller after the reservation is gone from memory,
    /// so until the store's sequence reaches this one a reactivation would load the
    /// reservation back: eviction waits for it (0: none since activation).
    pub(super) last_settle_seq: i64,
    /// Cluster mode: the epoch of the SKU's shard this actor was activated under (0
    /// outside cluster mode). Its journal entries carry it, and the write-behind refuses
    /// them once the node holds the shard at another epoch (review F7).
    epoch: i64,
    pub(super) shared: Arc<Shared>,
    pub(super) stats: Arc<SkuStats>,
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
pub(super) struct SkuStats {
    pub(super) messages: AtomicU64,
    pub(super) available: AtomicI64,
    pub(super) passivated: std::sync::atomic::AtomicBool,
    /// Set on every lookup, cleared by the eviction clock: recently used actors get a
    /// second chance before they are chosen.
    pub(super) referenced: std::sync::atomic::AtomicBool,
}

impl SkuActor {
    /// A confirm's or a release's outcome: published, and journalled when it changed
    /// something (its sequence noted: eviction waits until the store has it).
    fn settled(&mut self, outcome: Outcome) -> Option<JournalEntry> {
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

    /// The actor of `sku`, its inventory restored from the store (`seq` its last
    /// journal sequence there), activated under `epoch` of its shard (0 outside
    /// cluster mode).
    pub(super) fn activated(
        sku: Sku,
        unit_price: Money,
        seq: i64,
        inventory: SkuInventory,
        epoch: i64,
        shared: Arc<Shared>,
        stats: Arc<SkuStats>,
    ) -> Self {
        Self {
            sku,
            unit_price,
            inventory,
            seq,
            last_message: Instant::now(),
            last_settle_seq: 0,
            epoch,
            shared,
            stats,
        }
    }

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

    /// Leaves the registry first, so new requests activate a fresh actor from the store;
    /// messages already on their way see the mailbox closed and are sent there.
    pub(super) fn stop_now(&mut self, ctx: &mut Context<Self>) {
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
        self.settled(outcome)
    }
}

impl Handler<Release> for SkuActor {
    type Result = Option<JournalEntry>;
    fn handle(&mut self, msg: Release, _ctx: &mut Self::Context) -> Self::Result {
        let _handling = self.touch();
        let outcome = self.inventory.release(msg.order);
        self.settled(outcome)
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
