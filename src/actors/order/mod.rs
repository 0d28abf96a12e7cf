//! Orders: [`Orders`], the directory that starts the sagas and forwards cancellations
//! and payment outcomes to them; and, one file each:
//!
//! - [`placement`]: placing an order (reserve, commit, start its saga; in-doubt commits);
//! - [`saga`]: the actor per open order (its Owns/Takes/Promises header is there);
//! - [`decision`]: decide first, then apply: a step's decision commit, the owners of the
//!   order's other SKUs told afterwards, a decision applied at a SKU's owner;
//! - [`recovery`]: resuming in-flight orders at start and for shards this node gains;
//! - [`step_sets`]: the pure builders of what placement and each saga step commit;
//! - [`stock_keeper`]: the inventory strategy, chosen once at start (actors or row locks);
//! - [`retry`]: the one backoff loop for steps that must finish.

mod decision;
mod placement;
mod recovery;
mod retry;
mod saga;
mod step_sets;
mod stock_keeper;

use crate::actors::cluster::{Ownership, PeerClient, RemoteFailure, RemotePayment};
use crate::actors::inventory::{arbiter_of, Inventory};
use crate::actors::payment::PaymentActor;
use crate::actors::refunds::Refunder;
use crate::actors::write_behind::WriteBehind;
use crate::domain::cluster::Shard;
use crate::domain::idempotency::{IdempotencyKey, RequestHash};
use crate::domain::ids::{OrderId, Sku, UserId};
use crate::domain::now_millis;
use crate::domain::order::{CancelReason, Order, OrderLimits, OrderRequestError, OrderStatus};
use crate::error::Cause;
use crate::events::consumer::ConsumeError;
use crate::persistence::{Consumed, SqlStore, StoreError};
use crate::telemetry::Metrics;
use actix::{Addr, ArbiterHandle, Context, Message};
use dashmap::DashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

use retry::with_backoff;
pub(crate) use saga::OrderActor;
use stock_keeper::StockKeeper;
const ACTOR: &str = "order";

#[derive(Debug, Clone)]
pub struct SagaOptions {
    pub(crate) payment_attempts: u32,
    pub(crate) attempt_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) reservation_ttl: Duration,
    pub(crate) limits: OrderLimits,
    /// `payment.mode = "kafka"`: the saga does not charge; it waits for the payment
    /// service's outcome ([`PaymentReported`], from `emporium.payments`).
    pub(crate) external_payment: bool,
    /// `payment.gateway_url` set: the gateway outlives this process, so a charge sent
    /// before a crash may still capture after it (a cancel then asks for a refund first).
    pub(crate) shared_gateway: bool,
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
    Unavailable(#[source] Cause),
}

/// Why a cancellation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CancelRefused {
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

/// A placed order (or the stored answer to a repeated Idempotency-Key).
#[derive(Debug, Clone)]
pub struct Placed {
    pub order: Order,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct RecoveryReport {
    pub(crate) resumed: usize,
    pub(crate) expired: usize,
}

#[derive(Message)]
#[rtype(result = "Result<Order, CancelRefused>")]
pub(crate) struct Cancel {
    pub(crate) reason: CancelReason,
}

/// A payment outcome from the external payment service (`payment.mode = "kafka"`),
/// applied together with the consumed event's id.
#[derive(Message)]
#[rtype(result = "Result<Reported, CancelRefused>")]
pub(crate) struct PaymentReported {
    /// `Err(reason)` when the payment failed.
    pub(crate) outcome: Result<(), String>,
    pub(crate) consumed: Consumed,
}

/// What a [`PaymentReported`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reported {
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

/// What the order directory works with, built by `app`.
pub struct OrderServices {
    pub(crate) inventory: Inventory,
    pub(crate) write_behind: WriteBehind,
    pub(crate) store: SqlStore,
    pub(crate) payment: Addr<PaymentActor>,
    pub(crate) metrics: Arc<Metrics>,
    /// The arbiters sagas are spread over.
    pub(crate) arbiters: Arc<Vec<ArbiterHandle>>,
    pub(crate) refunder: Arc<Refunder>,
    pub(crate) peers: Arc<PeerClient>,
}

impl Orders {
    pub fn new(services: OrderServices, options: SagaOptions) -> Self {
        let OrderServices {
            inventory,
            write_behind,
            store,
            payment,
            metrics,
            arbiters,
            refunder,
            peers,
        } = services;
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

    /// Cluster mode: this node reserved `sku` for an order another node places. After
    /// `after` (the placing node has had every chance to commit), the store decides
    /// (`SqlStore::resolve_placement`): the reservation is dropped unless the order was
    /// committed, and then never will be.
    pub(crate) fn resolve_remote_reservation(&self, sku: Sku, order: OrderId, after: Duration) {
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
    pub(crate) async fn cancel(&self, id: OrderId) -> Result<Order, CancelRefused> {
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
    pub(crate) async fn payment_reported(
        &self,
        id: OrderId,
        outcome: Result<(), String>,
        consumed: Consumed,
    ) -> Result<(), ConsumeError> {
        if self.deps.ownership.enabled() && !self.deps.actors.contains_key(&id) {
            // Cluster mode: the consumer that got the event may not run the order's saga.
            let order = match self.deps.store.get_order(id).await {
                Ok(Some(order)) => order,
                Ok(None) => return Err(ConsumeError::Failed(format!("order {id} does not exist").into())),
                Err(e) => return Err(ConsumeError::Unavailable(Cause::new(e))),
            };
            let shard = order_shard(&self.deps.ownership, &order);
            if self.deps.ownership.epoch(shard).is_none() {
                let Some(sku) = order.lines.iter().map(|l| l.sku.clone()).min() else {
                    return Err(ConsumeError::Failed(format!("order {id} has no lines").into()));
                };
                let request = RemotePayment {
                    order: id,
                    sku,
                    failure: outcome.err(),
                    consumed,
                };
                return match self.deps.peers.payment(&request).await {
                    Ok(()) => Ok(()),
                    Err(RemoteFailure::Refused(refusal)) => Err(ConsumeError::Failed(refusal.reason.into())),
                    Err(RemoteFailure::Unavailable(e)) => Err(ConsumeError::Unavailable(e)),
                };
            }
        }
        self.payment_reported_here(id, outcome, consumed).await
    }

    /// Applies a payment outcome on this node (its saga, or the store when the saga
    /// finished); in cluster mode `Unavailable` while this node does not own the order.
    pub(crate) async fn payment_reported_here(
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
                Ok(Err(e)) => return Err(ConsumeError::Unavailable(Cause::new(e))),
                // The saga finished in between: the store knows the outcome.
                Err(_) => {}
            }
        }
        match self.deps.store.get_order(id).await {
            Err(e) => Err(ConsumeError::Unavailable(Cause::new(e))),
            Ok(None) => Err(ConsumeError::Failed(format!("order {id} does not exist").into())),
            Ok(Some(order)) if order.status == OrderStatus::PendingPayment => Err(ConsumeError::Unavailable(
                (format!("the saga of order {id} is not running yet")).into(),
            )),
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
                Ok(None) => return Err(ConsumeError::Failed(format!("order {id} does not exist").into())),
                Err(e) => return Err(ConsumeError::Unavailable(Cause::new(e))),
            };
            warn!(order_id = %id, "payment succeeded for a cancelled order; refund requested");
            return request_refund(&self.deps, &order, Some(consumed))
                .await
                .map_err(|e| ConsumeError::Unavailable(Cause::new(e)));
        } else {
            info!(order_id = %id, status = status.as_str(), "payment outcome for a settled order ignored");
        }
        self.deps
            .store
            .mark_processed(consumed)
            .await
            .map_err(|e| ConsumeError::Unavailable(Cause::new(e)))
    }
}

/// The shard an order belongs to: its first SKU's (an order is placed only where
/// every SKU of it is owned, so this is the node that placed it).
pub(crate) fn order_shard(ownership: &Ownership, order: &Order) -> Shard {
    order
        .lines
        .iter()
        .map(|l| &l.sku)
        .min()
        .map_or(0, |sku| ownership.shard_of(sku))
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
