//! Orders: [`Orders`], the directory that places orders, starts their sagas, forwards
//! cancellations and payment outcomes, resolves orders whose commit is in doubt and
//! recovers in-flight orders at start-up; and, one file each:
//!
//! - [`saga`]: the actor per open order (its Owns/Takes/Promises header is there);
//! - [`step_sets`]: the pure builders of what placement and each saga step commit;
//! - [`stock_keeper`]: the inventory strategy, chosen once at start (actors or row locks);
//! - [`retry`]: the one backoff loop for steps that must finish.

mod retry;
mod saga;
mod step_sets;
mod stock_keeper;

use crate::actors::cluster::{Ownership, PeerClient, RemoteFailure, RemotePayment, RemoteReserve};
use crate::actors::inventory::{arbiter_of, Inventory, InventoryFailure};
use crate::actors::payment::PaymentActor;
use crate::actors::refunds::Refunder;
use crate::actors::write_behind::{CommitError, WriteBehind};
use crate::domain::cluster::Shard;
use crate::domain::idempotency::{replay, IdempotencyKey, Replay, RequestHash};
use crate::domain::ids::{OrderId, Sku, UserId};
use crate::domain::inventory::{ChangeKind, InventoryError};
use crate::domain::now_millis;
use crate::domain::order::{quantities_by_sku, CancelReason, Order, OrderLimits, OrderRequestError, OrderStatus};
use crate::events::consumer::ConsumeError;
use crate::persistence::{Consumed, JournalEntry, SqlStore, StatusChange, StoreError, WriteSet};
use crate::telemetry::Metrics;
use actix::prelude::*;
use actix::ArbiterHandle;
use dashmap::DashMap;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

use retry::*;
pub use saga::OrderActor;
use saga::*;
use step_sets::*;
use stock_keeper::*;
const ACTOR: &str = "order";

#[derive(Debug, Clone)]
pub struct SagaOptions {
    pub payment_attempts: u32,
    pub attempt_timeout: Duration,
    pub backoff_base: Duration,
    pub reservation_ttl: Duration,
    pub limits: OrderLimits,
    /// `payment.mode = "kafka"`: the saga does not charge; it waits for the payment
    /// service's outcome ([`PaymentReported`], from `emporium.payments`).
    pub external_payment: bool,
    /// `payment.gateway_url` set: the gateway outlives this process, so a charge sent
    /// before a crash may still capture after it (a cancel then asks for a refund first).
    pub shared_gateway: bool,
}

struct Deps {
    inventory: Inventory,
    write_behind: WriteBehind,
    store: SqlStore,
    payment: Addr<PaymentActor>,
    metrics: Arc<Metrics>,
    actors: DashMap<OrderId, Addr<OrderActor>>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    options: SagaOptions,
    keys_in_flight: DashMap<(UserId, IdempotencyKey), ()>,
    /// Orders whose accept commit ended in an outage and is being resolved (their
    /// reservations are held until the store says whether the commit happened).
    in_doubt: std::sync::atomic::AtomicUsize,
    /// The inventory strategy, chosen once at start.
    keeper: Box<dyn StockKeeper>,
    /// Gives back payments captured for orders cancelled meanwhile.
    refunder: Arc<Refunder>,
    /// Cluster mode: which orders' sagas run on this node (those of its shards).
    ownership: Arc<Ownership>,
    /// Cluster mode: the other owners' SKU actors, for orders spanning owners.
    peers: Arc<PeerClient>,
    /// Cluster mode: reservations of this node's SKUs whose decision is being applied
    /// right now ([`apply_decision`]); a second attempt meanwhile is told to come back
    /// rather than "done" before the first is durable.
    settling: DashMap<(Sku, OrderId), ()>,
}

/// Why an order could not be placed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaceError {
    #[error(transparent)]
    Invalid(#[from] OrderRequestError),
    #[error("unknown sku {0}")]
    UnknownSku(Sku),
    #[error("{sku} is out of stock: {requested} requested, {available} available")]
    OutOfStock { sku: Sku, requested: i64, available: i64 },
    #[error("the same Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInProgress,
    #[error("{0}")]
    Rejected(String),
    #[error("the order could not be made durable: {0}")]
    Unavailable(String),
}

/// Why a cancellation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CancelRefused {
    #[error("order not found")]
    NotFound,
    #[error("order is {} and can no longer be cancelled", .0.as_str())]
    NotPending(OrderStatus),
    #[error("the cancellation could not be made durable")]
    Unavailable,
}

pub struct PlaceOrder {
    pub user: UserId,
    pub items: Vec<(Sku, i64)>,
    pub payment_token: String,
    /// `(key, hash of the request body)` when the client sent an `Idempotency-Key`.
    pub idempotency: Option<(IdempotencyKey, RequestHash)>,
    pub traceparent: Option<String>,
    /// The request's W3C `tracestate`, carried on the events the placement commits.
    pub tracestate: Option<String>,
}

/// A placed order; `replayed` when it is the stored answer to a repeated Idempotency-Key.
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: Order,
    pub replayed: bool,
}

#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub resumed: usize,
    pub expired: usize,
}

#[derive(Message)]
#[rtype(result = "Result<Order, CancelRefused>")]
pub struct Cancel {
    pub reason: CancelReason,
}

/// A payment outcome from the external payment service (`payment.mode = "kafka"`),
/// applied together with the consumed event's id.
#[derive(Message)]
#[rtype(result = "Result<Reported, CancelRefused>")]
pub struct PaymentReported {
    /// `Err(reason)` when the payment failed.
    pub outcome: Result<(), String>,
    pub consumed: Consumed,
}

/// What a [`PaymentReported`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// The order moved (COMPLETED, or CANCELLED with its reservations released).
    Applied,
    /// The order had already left PENDING_PAYMENT: nothing to do.
    Ignored(OrderStatus),
}

/// The order directory: placement, live sagas, cancellation and recovery.
#[derive(Clone)]
pub struct Orders {
    deps: Arc<Deps>,
}

impl Orders {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inventory: Inventory,
        write_behind: WriteBehind,
        store: SqlStore,
        payment: Addr<PaymentActor>,
        metrics: Arc<Metrics>,
        arbiters: Arc<Vec<ArbiterHandle>>,
        options: SagaOptions,
        refunder: Arc<Refunder>,
        peers: Arc<PeerClient>,
    ) -> Self {
        let ownership = peers.ownership().clone();
        let keeper = <dyn StockKeeper>::of(inventory.strategy());
        Self {
            deps: Arc::new(Deps {
                inventory,
                write_behind,
                store,
                payment,
                metrics,
                actors: DashMap::new(),
                arbiters,
                options,
                keys_in_flight: DashMap::new(),
                in_doubt: Default::default(),
                keeper,
                refunder,
                ownership,
                peers,
                settling: DashMap::new(),
            }),
        }
    }

    /// Sagas running, counting orders still in doubt after an outage (each is about to
    /// start a saga or drop its reservations): zero means every order is at rest.
    pub fn live_sagas(&self) -> usize {
        self.deps.actors.len() + self.deps.in_doubt.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts the saga of `order` (`resumed`: from the store, not by its placement). A
    /// no-op when a saga of the order is already registered here (recovery, an in-doubt
    /// resolution and a re-check may race for one order: one saga runs), and in cluster
    /// mode when this node does not hold the order's shard: the order was committed under
    /// that shard's fence, so whoever claimed it since loads the order in its recovery.
    fn start_saga(&self, order: Order, traceparent: Option<String>, resumed: bool) {
        let deps = self.deps.clone();
        if deps.ownership.epoch(order_shard(&deps.ownership, &order)).is_none() {
            info!(order_id = %order.id, "the order's shard is no longer this node's; its owner runs the saga");
            return;
        }
        let arbiter = &self.deps.arbiters[arbiter_of(&order.id, self.deps.arbiters.len())];
        // The address is registered here, before the 201 leaves, and the actor starts on
        // its arbiter afterwards: a cancel that follows the answer at once must find the
        // saga (messages wait in its mailbox until it runs). Registering before the start
        // also means a saga that finishes at once removes its own entry and leaves none.
        let (sender, receiver) = actix::dev::channel::channel(16);
        let id = order.id;
        match deps.actors.entry(id) {
            dashmap::Entry::Occupied(_) => return,
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Addr::new(sender));
            }
        }
        let actor_deps = deps.clone();
        let started = arbiter.spawn_fn(move || {
            Context::with_receiver(receiver).run(OrderActor::new(order, traceparent, actor_deps, resumed));
        });
        if !started {
            deps.actors.remove(&id);
            error!(order_id = %id, "the saga's arbiter is gone; the order resumes at the next start");
        }
    }

    /// Places an order: reserve every SKU or none, group-commit, start the saga.
    /// Runs on its own task so a client that hangs up cannot leave a reservation behind.
    pub async fn place(&self, request: PlaceOrder) -> Result<Placed, PlaceError> {
        let this = self.clone();
        // The placement task stays in the request's trace.
        let span = tracing::debug_span!("order.place", user = %request.user);
        tokio::spawn(tracing::Instrument::instrument(
            async move { this.place_detached(request).await },
            span,
        ))
        .await
        .unwrap_or_else(|e| Err(PlaceError::Unavailable(e.to_string())))
    }

    async fn place_detached(&self, request: PlaceOrder) -> Result<Placed, PlaceError> {
        let Some((key, hash)) = request.idempotency.clone() else {
            return self.reserve_and_commit(request).await;
        };
        let slot = (request.user.clone(), key.clone());
        if let Some(stored) = self.stored_answer(&request.user, &key, &hash).await? {
            return Ok(stored);
        }
        if self.deps.keys_in_flight.insert(slot.clone(), ()).is_some() {
            return Err(PlaceError::KeyInProgress);
        }
        // Checked again under the in-flight mark: the first request may have finished in between.
        let result = match self.stored_answer(&request.user, &key, &hash).await {
            Ok(Some(stored)) => Ok(stored),
            Ok(None) => self.reserve_and_commit(request).await,
            Err(e) => Err(e),
        };
        self.deps.keys_in_flight.remove(&slot);
        result
    }

    async fn stored_answer(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        hash: &RequestHash,
    ) -> Result<Option<Placed>, PlaceError> {
        let stored = self
            .deps
            .store
            .find_idempotency(user, key.as_str())
            .await
            .map_err(|e| PlaceError::Unavailable(e.to_string()))?;
        let Some(record) = stored else {
            return Ok(None);
        };
        match replay(&RequestHash::stored(record.request_hash), hash) {
            Replay::Mismatch => Err(PlaceError::IdempotencyMismatch),
            Replay::StoredAnswer => {
                let order =
                    serde_json::from_str(&record.response).map_err(|e| PlaceError::Unavailable(e.to_string()))?;
                Ok(Some(Placed { order, replayed: true }))
            }
        }
    }

    async fn reserve_and_commit(&self, request: PlaceOrder) -> Result<Placed, PlaceError> {
        let deps = &self.deps;
        let wanted = quantities_by_sku(&request.items, deps.options.limits)?;
        let id = OrderId::generate();
        let now = now_millis();
        let expires_at = now + deps.options.reservation_ttl.as_millis() as i64;
        deps.keeper.place(self, request, wanted, id, now, expires_at).await
    }

    /// The actor strategy's placement: reserve in each SKU actor (in SKU order), then
    /// group-commit the order; memory forgets what the database refused.
    async fn place_in_memory(
        &self,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        let deps = &self.deps;
        // Cluster mode: the order belongs to its smallest SKU's shard, and only that
        // shard's owner may place it, so the node that places it is the one that runs its
        // saga (and the accept commit is fenced on that shard). A node that lost the shard
        // since the request was routed here refuses; the client's retry reaches the owner.
        if wanted
            .keys()
            .next()
            .is_some_and(|first| !deps.ownership.holds_sku(first))
        {
            return Err(PlaceError::Unavailable(
                "this node does not hold the order's shard (any more)".to_owned(),
            ));
        }
        let mut journal = Vec::with_capacity(wanted.len());
        let mut prices = HashMap::with_capacity(wanted.len());
        // Cluster mode: SKUs another node owns are reserved there (in SKU order like the
        // rest); their entries are committed here under those nodes' fences.
        let mut remote_fences = Vec::new();
        let mut failure = None;
        for (sku, qty) in &wanted {
            if !deps.ownership.holds_sku(sku) {
                let request = RemoteReserve {
                    order: id,
                    sku: sku.clone(),
                    qty: *qty,
                    expires_at,
                };
                match deps.peers.reserve(&request).await {
                    Ok(reserved) => {
                        prices.insert(sku.clone(), reserved.unit_price);
                        journal.extend(reserved.entry);
                        remote_fences.push(reserved.fence);
                        continue;
                    }
                    Err(RemoteFailure::Refused(refusal)) => {
                        failure = Some(match refusal.reason.as_str() {
                            "out_of_stock" => PlaceError::OutOfStock {
                                sku: sku.clone(),
                                requested: refusal.requested,
                                available: refusal.available,
                            },
                            "unknown_sku" => PlaceError::UnknownSku(sku.clone()),
                            other => PlaceError::Unavailable(format!("{sku}: {other}")),
                        });
                    }
                    Err(RemoteFailure::Unavailable(e)) => failure = Some(PlaceError::Unavailable(e)),
                }
                break;
            }
            match deps.inventory.reserve(sku, id, *qty, expires_at).await {
                Ok(reserved) => {
                    prices.insert(sku.clone(), reserved.unit_price);
                    journal.extend(reserved.entry);
                }
                Err(e) => {
                    failure = Some(match e {
                        InventoryFailure::UnknownSku(sku) => PlaceError::UnknownSku(sku),
                        InventoryFailure::Rule(InventoryError::OutOfStock { requested, available }) => {
                            PlaceError::OutOfStock {
                                sku: sku.clone(),
                                requested,
                                available,
                            }
                        }
                        other => PlaceError::Unavailable(other.to_string()),
                    });
                    break;
                }
            }
        }
        let set = failure.map_or_else(|| order_write_set(&request, id, &prices, journal, now, expires_at), Err);
        let set = match set {
            Ok(set) => WriteSet { remote_fences, ..set },
            Err(e) => {
                self.forget_all(prices.keys(), id).await;
                return Err(e);
            }
        };
        let order = set.new_order.clone().expect("an order write-set carries its order");
        match deps.write_behind.commit(set).await {
            Ok(()) => {
                deps.metrics.orders_created.inc();
                self.start_saga(order.clone(), request.traceparent, false);
                Ok(Placed { order, replayed: false })
            }
            Err(CommitError::Store(StoreError::Unavailable(e))) => {
                // The outcome is unknown: the connection may have broken after the database
                // committed. Keep holding the stock (never oversell) until the store can say
                // which it was; the client hears 503 and may retry with its Idempotency-Key.
                let this = self.clone();
                deps.in_doubt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    this.resolve_in_doubt(order, request.traceparent).await;
                    this.deps.in_doubt.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
                Err(PlaceError::Unavailable(e))
            }
            Err(e) => {
                // Memory never keeps what the database does not.
                self.forget_all(prices.keys(), id).await;
                Err(PlaceError::Unavailable(e.to_string()))
            }
        }
    }

    /// The `sql_row_lock` strategy: the whole placement is one locking transaction.
    async fn place_row_locked(
        &self,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        use crate::persistence::row_lock::Refusal;
        let placed = self
            .deps
            .store
            .place_row_locked(id, &wanted, expires_at, |prices, journal| {
                order_write_set(&request, id, prices, journal, now, expires_at).map_err(|e| e.to_string())
            })
            .await;
        match placed {
            Ok(set) => {
                let order = set.new_order.expect("an order write-set carries its order");
                self.deps.metrics.orders_created.inc();
                self.start_saga(order.clone(), request.traceparent, false);
                Ok(Placed { order, replayed: false })
            }
            Err(Refusal::UnknownSku(sku)) => Err(PlaceError::UnknownSku(sku)),
            Err(Refusal::Rule {
                sku,
                rule: InventoryError::OutOfStock { requested, available },
            }) => Err(PlaceError::OutOfStock {
                sku,
                requested,
                available,
            }),
            Err(Refusal::Rule { rule, .. }) => Err(PlaceError::Rejected(rule.to_string())),
            Err(Refusal::Invalid(e)) => Err(PlaceError::Rejected(e)),
            // A duplicate idempotency key: another process placed this request at the same time.
            Err(Refusal::Store(StoreError::Conflict(_))) => Err(PlaceError::KeyInProgress),
            Err(Refusal::Store(e)) => Err(PlaceError::Unavailable(e.to_string())),
        }
    }

    /// Settles an order whose commit ended in an outage: started if it was committed,
    /// its reservations dropped if it was not.
    async fn resolve_in_doubt(&self, order: Order, traceparent: Option<String>) {
        let stored = with_backoff(Duration::from_millis(50), Duration::from_secs(2), || async {
            self.deps.store.get_order(order.id).await.ok()
        })
        .await;
        if stored.is_some() {
            info!(order_id = %order.id, "order in doubt was committed; starting its saga");
            self.deps.metrics.orders_created.inc();
            self.start_saga(order, traceparent, false);
        } else {
            let skus: BTreeSet<&Sku> = order.lines.iter().map(|l| &l.sku).collect();
            self.forget_all(skus.into_iter(), order.id).await;
        }
    }

    /// Cluster mode: this node reserved `sku` for an order another node places. After
    /// `after` (the placing node has had every chance to commit), the store decides
    /// (`SqlStore::resolve_placement`): the reservation is dropped unless the order was
    /// committed, and then never will be.
    pub fn resolve_remote_reservation(&self, sku: Sku, order: OrderId, after: Duration) {
        let deps = self.deps.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let id = order.to_string();
            let committed = with_backoff(Duration::from_millis(200), Duration::from_secs(5), || async {
                deps.store
                    .resolve_placement(&id)
                    .await
                    .inspect_err(|e| warn!(order_id = %order, error = %e, "cannot resolve a remote reservation yet"))
                    .ok()
            })
            .await;
            if !committed {
                let _ = deps.inventory.forget(&sku, order).await;
            }
        });
    }

    /// Cluster mode: applies `order`'s recorded decision to its reservation on `sku`
    /// (a SKU of this node's) for the node that recorded it, made durable here under this
    /// node's fence before it returns ([`apply_decision`]). The decision is read from the
    /// store, not taken from the caller: a settle for an order with no decision yet is
    /// refused (`Unavailable`), and one repeated while the first is not durable is told to
    /// come back rather than "done".
    pub async fn settle_for_peer(
        &self,
        sku: &Sku,
        order: OrderId,
        confirm: bool,
    ) -> Result<Option<JournalEntry>, InventoryFailure> {
        // On a task of its own: the peer that asked may time out and hang up, and the
        // request's future would be dropped between the SKU actor's settle and its commit
        // (memory settled, the store not, the "being applied" mark never cleared).
        let (deps, owned_sku) = (self.deps.clone(), sku.clone());
        let applied = tokio::spawn(async move { apply_decision(&deps, &owned_sku, order).await })
            .await
            .map_err(|e| InventoryFailure::Unavailable(format!("applying the decision of order {order}: {e}")))??;
        if let Some(entry) = &applied {
            let confirmed = entry.change.kind == ChangeKind::Confirm;
            if confirmed != confirm {
                // The store's decision wins: the caller's view of it was stale.
                warn!(%sku, order_id = %order, confirm, "a peer asked for the other decision; the recorded one was applied");
            }
        }
        Ok(applied)
    }

    /// Cluster mode: the sweep of the decided orders' reservations. Every reservation of
    /// this node's SKUs whose order is already COMPLETED or CANCELLED gets that decision
    /// applied ([`apply_decision`]): what a saga's node could not tell (it died, lost its
    /// shard, or this node was unreachable) after its decision was durable. Runs every
    /// lease round and after every claim. Returns how many it applied.
    pub(crate) async fn sweep_decided(&self) -> Result<usize, StoreError> {
        let deps = &self.deps;
        if !deps.ownership.enabled() {
            return Ok(0);
        }
        let mut applied = 0;
        for (sku, order) in deps.store.decided_reservations().await? {
            if !deps.ownership.holds_sku(&sku) {
                continue;
            }
            match apply_decision(deps, &sku, order).await {
                Ok(Some(_)) => {
                    info!(%sku, order_id = %order, "swept: the recorded decision applied to a reservation left behind");
                    applied += 1;
                }
                Ok(None) => {}
                // Being applied by the saga's request right now, or the SKU just moved:
                // the next round looks again.
                Err(e) => info!(%sku, order_id = %order, error = %e, "swept reservation not settled yet"),
            }
        }
        Ok(applied)
    }

    /// Cluster mode: runs [`Self::sweep_decided`] every `every` (a lease round).
    pub(crate) fn sweep_in_background(&self, every: Duration) {
        if !self.deps.ownership.enabled() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = this.sweep_decided().await {
                    warn!(error = %e, "cannot sweep decided reservations");
                }
            }
        });
    }

    /// The saga of `order` stopped because its shard moved (a fenced step, a
    /// relinquish). If this node holds the shard again (lost and re-claimed meanwhile: the
    /// re-claim's recovery skipped the order while the old saga was still registered),
    /// the order resumes here from the store. If it does not, a later claim's recovery
    /// finds the order (the saga is deregistered before this runs).
    pub(super) async fn resume_if_held(&self, order: Order) {
        let deps = &self.deps;
        if deps.ownership.epoch(order_shard(&deps.ownership, &order)).is_none() {
            return;
        }
        let id = order.id;
        let stored = with_backoff(Duration::from_millis(50), Duration::from_secs(2), || async {
            match deps.store.get_order(id).await {
                Ok(order) => Some(order),
                Err(e) => {
                    warn!(order_id = %id, error = %e, "cannot read a stopped saga's order yet");
                    None
                }
            }
        })
        .await;
        if let Some(order) = stored.filter(|o| matches!(o.status, OrderStatus::PendingPayment | OrderStatus::Paid)) {
            info!(order_id = %id, "this node holds the order's shard again; resuming its saga");
            self.start_saga(order, None, true);
        }
    }

    async fn forget_all(&self, skus: impl Iterator<Item = &Sku>, order: OrderId) {
        for sku in skus {
            if !self.deps.ownership.holds_sku(sku) {
                // Reserved at another owner: it also drops the reservation on its own once
                // the store says the order was never committed; this is only sooner. (A
                // SKU of this node's that nobody owns right now was dropped with its shard.)
                if self.deps.ownership.peer_of(sku).is_some() {
                    if let Err(e) = self.deps.peers.forget(sku, order).await {
                        warn!(%sku, order_id = %order, error = ?e, "could not tell the owner to forget a reservation");
                    }
                }
                continue;
            }
            if let Err(e) = self.deps.inventory.forget(sku, order).await {
                // The actor is gone, and with it the in-memory reservation.
                warn!(%sku, order_id = %order, error = %e, "could not forget reservation");
            }
        }
    }

    /// Customer (or admin) cancellation of a PENDING_PAYMENT order.
    pub async fn cancel(&self, id: OrderId) -> Result<Order, CancelRefused> {
        let live = self.deps.actors.get(&id).map(|a| a.clone());
        if let Some(addr) = live {
            if let Ok(answer) = addr
                .send(Cancel {
                    reason: CancelReason::Customer,
                })
                .await
            {
                return answer;
            }
        }
        // No live saga: the order already finished (or never existed).
        match self.deps.store.get_order(id).await {
            Ok(Some(order)) if order.status == OrderStatus::PendingPayment => Err(CancelRefused::Unavailable),
            Ok(Some(order)) => Err(CancelRefused::NotPending(order.status)),
            Ok(None) => Err(CancelRefused::NotFound),
            Err(_) => Err(CancelRefused::Unavailable),
        }
    }

    /// Applies a payment outcome from the payment service (`payment.mode = "kafka"`) with
    /// the consumed event's id. `Unavailable` while the order's saga is not running yet
    /// (recovery) or its step is not durable; `Failed` for an order that does not exist.
    pub async fn payment_reported(
        &self,
        id: OrderId,
        outcome: Result<(), String>,
        consumed: Consumed,
    ) -> Result<(), ConsumeError> {
        if self.deps.ownership.enabled() && !self.deps.actors.contains_key(&id) {
            // Cluster mode: the consumer that got the event may not run the order's saga.
            let order = match self.deps.store.get_order(id).await {
                Ok(Some(order)) => order,
                Ok(None) => return Err(ConsumeError::Failed(format!("order {id} does not exist"))),
                Err(e) => return Err(ConsumeError::Unavailable(e.to_string())),
            };
            let shard = order_shard(&self.deps.ownership, &order);
            if self.deps.ownership.epoch(shard).is_none() {
                let Some(sku) = order.lines.iter().map(|l| l.sku.clone()).min() else {
                    return Err(ConsumeError::Failed(format!("order {id} has no lines")));
                };
                let request = RemotePayment {
                    order: id,
                    sku,
                    failure: outcome.err(),
                    consumed,
                };
                return match self.deps.peers.payment(&request).await {
                    Ok(()) => Ok(()),
                    Err(RemoteFailure::Refused(refusal)) => Err(ConsumeError::Failed(refusal.reason)),
                    Err(RemoteFailure::Unavailable(e)) => Err(ConsumeError::Unavailable(e)),
                };
            }
        }
        self.payment_reported_here(id, outcome, consumed).await
    }

    /// Applies a payment outcome on this node (its saga, or the store when the saga
    /// finished); in cluster mode `Unavailable` while this node does not own the order.
    pub async fn payment_reported_here(
        &self,
        id: OrderId,
        outcome: Result<(), String>,
        consumed: Consumed,
    ) -> Result<(), ConsumeError> {
        let live = self.deps.actors.get(&id).map(|a| a.clone());
        if let Some(addr) = live {
            let report = PaymentReported {
                outcome: outcome.clone(),
                consumed: consumed.clone(),
            };
            match addr.send(report).await {
                Ok(Ok(Reported::Applied)) => return Ok(()),
                Ok(Ok(Reported::Ignored(status))) => return self.no_effect(id, status, &outcome, &consumed).await,
                Ok(Err(e)) => return Err(ConsumeError::Unavailable(e.to_string())),
                // The saga finished in between: the store knows the outcome.
                Err(_) => {}
            }
        }
        match self.deps.store.get_order(id).await {
            Err(e) => Err(ConsumeError::Unavailable(e.to_string())),
            Ok(None) => Err(ConsumeError::Failed(format!("order {id} does not exist"))),
            Ok(Some(order)) if order.status == OrderStatus::PendingPayment => Err(ConsumeError::Unavailable(format!(
                "the saga of order {id} is not running yet"
            ))),
            Ok(Some(order)) => self.no_effect(id, order.status, &outcome, &consumed).await,
        }
    }

    /// A payment outcome for an order that already left PENDING_PAYMENT: recorded as
    /// processed so redeliveries are skipped. When money moved for an order that was
    /// cancelled meanwhile, a refund is requested in the same transaction (once per
    /// order, however often the event is redelivered).
    async fn no_effect(
        &self,
        id: OrderId,
        status: OrderStatus,
        outcome: &Result<(), String>,
        consumed: &Consumed,
    ) -> Result<(), ConsumeError> {
        if outcome.is_ok() && status == OrderStatus::Cancelled {
            let order = match self.deps.store.get_order(id).await {
                Ok(Some(order)) => order,
                Ok(None) => return Err(ConsumeError::Failed(format!("order {id} does not exist"))),
                Err(e) => return Err(ConsumeError::Unavailable(e.to_string())),
            };
            warn!(order_id = %id, "payment succeeded for a cancelled order; refund requested");
            return request_refund(&self.deps, &order, Some(consumed))
                .await
                .map_err(|e| ConsumeError::Unavailable(e.to_string()));
        } else {
            info!(order_id = %id, status = status.as_str(), "payment outcome for a settled order ignored");
        }
        self.deps
            .store
            .mark_processed(consumed)
            .await
            .map_err(|e| ConsumeError::Unavailable(e.to_string()))
    }

    /// Start-up recovery of the sagas: orders whose reservation expired while the
    /// server was down are cancelled in one coalesced sweep (their write-sets share
    /// group commits); the others resume where they stopped.
    pub async fn recover(&self) -> Result<RecoveryReport, StoreError> {
        self.recover_where(|_| true).await
    }

    /// Cluster mode: this node now owns `shards`; the in-flight orders of those shards
    /// (a dead or departed owner's) resume here, their due expiries swept.
    pub async fn recover_shards(&self, shards: &[Shard]) -> Result<RecoveryReport, StoreError> {
        let deps = self.deps.clone();
        self.recover_where(move |order| {
            shards.contains(&order_shard(&deps.ownership, order)) && !deps.actors.contains_key(&order.id)
        })
        .await
    }

    /// Cluster mode: the sagas of orders in `shards` stop here (another node owns them
    /// now and resumes them from the store). A saga in the middle of a step finishes
    /// the step first; the fence refuses it if the shard has passed on.
    pub fn relinquish(&self, shards: &[Shard]) {
        let shards: Arc<[Shard]> = shards.into();
        for entry in self.deps.actors.iter() {
            entry.value().do_send(Relinquish(shards.clone()));
        }
    }

    async fn recover_where(&self, mine: impl Fn(&Order) -> bool) -> Result<RecoveryReport, StoreError> {
        let mut in_flight = self.deps.store.orders_in_flight().await?;
        in_flight.retain(|o| mine(o));
        let now = now_millis();
        let (expired, live): (Vec<Order>, Vec<Order>) = in_flight
            .into_iter()
            .partition(|o| o.status == OrderStatus::PendingPayment && o.expires_at <= now);
        let report = RecoveryReport {
            resumed: live.len(),
            expired: expired.len(),
        };
        let sweeps = expired.into_iter().map(|order| self.expire_offline(order));
        futures_util::future::join_all(sweeps).await;
        for order in live {
            self.start_saga(order, None, true);
        }
        info!(resumed = report.resumed, expired = report.expired, "sagas recovered");
        Ok(report)
    }

    async fn expire_offline(&self, order: Order) {
        let skus: Vec<Sku> = order
            .lines
            .iter()
            .map(|l| l.sku.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let change = StatusChange {
            order_id: order.id,
            from: OrderStatus::PendingPayment,
            to: OrderStatus::Cancelled,
            cancel_reason: Some(CancelReason::Expired),
            at: now_millis(),
        };
        // The run that placed it may have been paid before it stopped (F9): the refund is
        // requested before the cancel commits (the refunder waits for the CANCELLED); the
        // gateway refunds by order id, and voids an order it captured nothing for.
        let refund_first = !self.deps.options.external_payment;
        if refund_first {
            request_refund_until_recorded(&self.deps, &order).await;
        }
        let step = settle_and_commit(
            &self.deps,
            order.id,
            &skus,
            ChangeKind::Release,
            &change,
            None,
            Vec::new(),
            None,
        )
        .await;
        if step == Step::Committed {
            if refund_first {
                self.deps.refunder.wake();
            }
            self.deps.metrics.reservation_expirations.inc();
            self.deps
                .metrics
                .orders_finished
                .with_label_values(&["CANCELLED"])
                .inc();
        }
    }
}

/// The shard an order belongs to: its first SKU's (an order is placed only where
/// every SKU of it is owned, so this is the node that placed it).
pub fn order_shard(ownership: &Ownership, order: &Order) -> Shard {
    order
        .lines
        .iter()
        .map(|l| &l.sku)
        .min()
        .map_or(0, |sku| ownership.shard_of(sku))
}

/// The order's recorded decision applied to its reservation on `sku`, a SKU of this
/// node's outside the order's shard: the SKU actor confirms (COMPLETED) or releases
/// (CANCELLED) it, and the entry commits with its inventory event under this node's fence
/// for the SKU, before this returns. Idempotent: `Ok(None)` when nothing is held for the
/// order any more (applied before, or never reserved here). While another application of
/// the same reservation is on its way to the store, `Unavailable` (come back), never
/// "done" early; `NotOwner` when the SKU moved (its new owner sweeps it from the store).
async fn apply_decision(deps: &Deps, sku: &Sku, order: OrderId) -> Result<Option<JournalEntry>, InventoryFailure> {
    let key = (sku.clone(), order);
    match deps.settling.entry(key.clone()) {
        dashmap::Entry::Occupied(_) => {
            return Err(InventoryFailure::Unavailable(format!(
                "the decision of order {order} is being applied to {sku}; not durable yet"
            )))
        }
        dashmap::Entry::Vacant(slot) => {
            slot.insert(());
        }
    }
    let _applying = Applying { deps, key };
    apply_decision_once(deps, sku, order).await
}

/// The "being applied" mark of [`apply_decision`], cleared however the application ends.
struct Applying<'a> {
    deps: &'a Deps,
    key: (Sku, OrderId),
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.deps.settling.remove(&self.key);
    }
}

async fn apply_decision_once(deps: &Deps, sku: &Sku, order: OrderId) -> Result<Option<JournalEntry>, InventoryFailure> {
    let how = match deps.store.order_status(order).await? {
        Some(OrderStatus::Completed) => ChangeKind::Confirm,
        Some(OrderStatus::Cancelled) => ChangeKind::Release,
        Some(status) => {
            return Err(InventoryFailure::Unavailable(format!(
                "order {order} is {} (no decision recorded yet)",
                status.as_str()
            )))
        }
        None => {
            return Err(InventoryFailure::Unavailable(format!(
                "order {order} is not in the store"
            )))
        }
    };
    let entry = match how {
        ChangeKind::Confirm => deps.inventory.confirm(sku, order).await?,
        _ => deps.inventory.release(sku, order).await?,
    };
    let Some(entry) = entry else {
        return Ok(None);
    };
    let set = apply_set(how, order, entry.clone());
    crate::failpoints::hit("apply_decision_before_commit").await;
    let durable = with_backoff(Duration::from_millis(50), Duration::from_secs(2), || async {
        match deps.write_behind.commit(set.clone()).await {
            Ok(()) => Some(true),
            Err(CommitError::Store(StoreError::NotOwner)) => Some(false),
            Err(e) => {
                warn!(%sku, order_id = %order, error = %e, "decision not durable at the SKU's owner yet, retrying");
                None
            }
        }
    })
    .await;
    if !durable {
        return Err(InventoryFailure::NotOwner(sku.clone()));
    }
    Ok(Some(entry))
}

/// [`request_refund`] retried until the store has it: a cancel that may have been paid
/// must not commit without its refund request.
async fn request_refund_until_recorded(deps: &Deps, order: &Order) {
    with_backoff(Duration::from_millis(50), Duration::from_secs(5), || async {
        request_refund(deps, order, None)
            .await
            .inspect_err(|e| warn!(order_id = %order.id, error = %e, "refund request not recorded yet, retrying"))
            .ok()
    })
    .await;
    info!(order_id = %order.id, "cancelling after a possible payment; refund requested");
}

/// Records that `order`'s captured payment must be given back (idempotent per order;
/// with `consumed`, the payment event is marked processed in the same transaction) and,
/// the first time, wakes the refunder.
async fn request_refund(deps: &Deps, order: &Order, consumed: Option<&Consumed>) -> Result<(), StoreError> {
    let recorded = deps
        .store
        .request_refund(order.id, order.total, &order.payment_token, consumed, now_millis())
        .await?;
    if recorded {
        deps.refunder.requested();
    }
    Ok(())
}
