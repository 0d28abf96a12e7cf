//! Order actors: one per order whose saga is still running, plus [`Orders`], the
//! directory that places orders, starts sagas, forwards cancellations and recovers
//! in-flight orders at start-up.
//!
//! Owns: one order's state and saga progress (payment attempt, expiry timer).
//! Takes: [`Cancel`]; internally, payment outcomes and the expiry timer.
//! Promises: the order moves only along the state machine of `domain::order`; each
//! step (settle = PAID+COMPLETED in one commit, or CANCELLED) is committed with its
//! inventory journal entries and outbox events before the actor takes its next message,
//! so a customer cancel and a payment outcome can never both win. On payment failure,
//! customer cancel or expiry, the compensation releases every reservation.
//!
//! Saga: PENDING_PAYMENT --charge (attempts with exponential backoff)--> PAID
//! --confirm inventory--> COMPLETED, the two arrows committed together (a happy order is
//! two commits: accept, settle); a decline, the last failed attempt, a cancel or the
//! reservation deadline --release inventory--> CANCELLED.

use crate::actors::inventory::{shard_of, Inventory, InventoryFailure, Strategy};
use crate::actors::payment::{self, Charge, PaymentActor, PaymentError};
use crate::actors::write_behind::{CommitError, WriteBehind};
use crate::domain::events::{Event, EventType};
use crate::domain::ids::{OrderId, Sku, UserId};
use crate::domain::inventory::{ChangeKind, InventoryError};
use crate::domain::now_millis;
use crate::domain::order::{
    next_status, quantities_by_sku, total, CancelReason, Order, OrderLimits, OrderLine, OrderRequestError, OrderStatus,
    Transition,
};
use crate::persistence::consumer::ConsumeError;
use crate::persistence::{Consumed, IdempotencyRecord, JournalEntry, SqlStore, StatusChange, StoreError, WriteSet};
use crate::telemetry::Metrics;
use actix::prelude::*;
use actix::ArbiterHandle;
use dashmap::DashMap;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

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
    keys_in_flight: DashMap<(UserId, String), ()>,
    /// Orders whose accept commit ended in an outage and is being resolved (their
    /// reservations are held until the store says whether the commit happened).
    in_doubt: std::sync::atomic::AtomicUsize,
    /// The inventory strategy, chosen once at start.
    keeper: Box<dyn StockKeeper>,
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
    pub idempotency: Option<(String, String)>,
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

pub struct OrderActor {
    order: Order,
    attempt: u32,
    traceparent: Option<String>,
    deps: Arc<Deps>,
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.deps.metrics.actors_active.with_label_values(&[ACTOR]).inc();
        self.deps.metrics.actor_activations.with_label_values(&[ACTOR]).inc();
        let until_expiry = (self.order.expires_at - now_millis()).max(0) as u64;
        ctx.run_later(Duration::from_millis(until_expiry), |act, ctx| act.expire(ctx));
        match self.order.status {
            OrderStatus::PendingPayment => self.charge(ctx),
            OrderStatus::Paid => self.complete(ctx),
            OrderStatus::Completed | OrderStatus::Cancelled => ctx.stop(),
        }
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let me = ctx.address();
        self.deps.actors.remove_if(&self.order.id, |_, addr| *addr == me);
        self.deps.metrics.actors_active.with_label_values(&[ACTOR]).dec();
        self.deps.metrics.actor_passivations.with_label_values(&[ACTOR]).inc();
    }
}

impl Handler<Cancel> for OrderActor {
    type Result = AtomicResponse<Self, Result<Order, CancelRefused>>;
    fn handle(&mut self, msg: Cancel, _ctx: &mut Self::Context) -> Self::Result {
        self.deps.metrics.actor_messages.with_label_values(&[ACTOR]).inc();
        if self.order.status != OrderStatus::PendingPayment {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(CancelRefused::NotPending(
                self.order.status,
            )))));
        }
        AtomicResponse::new(Box::pin(self.cancel(msg.reason, None, None)))
    }
}

impl Handler<PaymentReported> for OrderActor {
    type Result = AtomicResponse<Self, Result<Reported, CancelRefused>>;
    fn handle(&mut self, msg: PaymentReported, _ctx: &mut Self::Context) -> Self::Result {
        self.deps.metrics.actor_messages.with_label_values(&[ACTOR]).inc();
        if self.order.status != OrderStatus::PendingPayment {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(Reported::Ignored(self.order.status)))));
        }
        let label = if msg.outcome.is_ok() { "succeeded" } else { "declined" };
        self.deps.metrics.payment_attempts.with_label_values(&[label]).inc();
        match msg.outcome {
            Ok(()) => AtomicResponse::new(Box::pin(self.settle_paid(Some(msg.consumed)))),
            Err(reason) => AtomicResponse::new(Box::pin(
                self.cancel(CancelReason::PaymentFailed, Some(reason), Some(msg.consumed))
                    .map(|cancelled, _, _| cancelled.map(|_| Reported::Applied)),
            )),
        }
    }
}

impl OrderActor {
    fn skus(&self) -> Vec<Sku> {
        self.order
            .lines
            .iter()
            .map(|l| l.sku.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn event(&self, event_type: EventType, aggregate: impl ToString, data: serde_json::Value) -> Event {
        Event::new(event_type, aggregate, now_millis(), self.traceparent.clone(), data)
    }

    fn status_change(&self, transition: Transition) -> Option<StatusChange> {
        let to = next_status(self.order.status, transition).ok()?;
        let cancel_reason = match transition {
            Transition::Cancel(reason) => Some(reason),
            _ => None,
        };
        Some(StatusChange {
            order_id: self.order.id,
            from: self.order.status,
            to,
            cancel_reason,
            at: now_millis(),
        })
    }

    /// A saga step's span (`saga.<step>`), in the trace of the request that placed the order.
    fn step_span(&self, step: &'static str) -> tracing::Span {
        let span = tracing::debug_span!("saga", step, order_id = %self.order.id, attempt = self.attempt, "otel.name" = format!("saga.{step}"));
        crate::telemetry::continue_trace(&span, self.traceparent.as_deref());
        span
    }

    fn charge(&mut self, ctx: &mut Context<Self>) {
        if self.deps.options.external_payment {
            // The payment service charges; its outcome arrives as `PaymentReported`.
            return;
        }
        self.attempt += 1;
        let request = Charge {
            order: self.order.id,
            amount: self.order.total,
            token: self.order.payment_token.clone(),
            attempt: self.attempt,
        };
        let payment = self.deps.payment.clone();
        let timeout = self.deps.options.attempt_timeout;
        let attempt = async move { payment::attempt(&payment, request, timeout).await };
        let attempt = tracing::Instrument::instrument(attempt, self.step_span("payment_attempt"));
        // Spawned, not awaited: a cancel or the expiry may arrive while the gateway thinks.
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(|outcome, act, ctx| act.on_payment(outcome, ctx)),
        );
    }

    fn on_payment(&mut self, outcome: Result<(), PaymentError>, ctx: &mut Context<Self>) {
        let label = match &outcome {
            Ok(()) => "succeeded",
            Err(PaymentError::Declined) => "declined",
            Err(PaymentError::Timeout) => "timeout",
            Err(PaymentError::Transient(_)) => "error",
        };
        self.deps.metrics.payment_attempts.with_label_values(&[label]).inc();
        if self.order.status != OrderStatus::PendingPayment {
            // Cancelled while the gateway was answering: a real gateway call would be voided here.
            info!(order_id = %self.order.id, "payment outcome after cancellation ignored");
            return;
        }
        let options = &self.deps.options;
        match outcome {
            Ok(()) => {
                let fut = self.settle_paid(None);
                ctx.wait(fut.map(|_, _, _| ()));
            }
            Err(e) => match payment::retry_after(&e, self.attempt, options.payment_attempts, options.backoff_base) {
                Some(backoff) => {
                    ctx.run_later(backoff, |act, ctx| {
                        if act.order.status == OrderStatus::PendingPayment {
                            act.charge(ctx);
                        }
                    });
                }
                None => {
                    let fut = self.cancel(CancelReason::PaymentFailed, Some(e.to_string()), None);
                    ctx.wait(fut.map(|_, _, _| ()));
                }
            },
        }
    }

    /// Payment succeeded (locally, or on the payment service's word with the consumed
    /// event's id): PENDING_PAYMENT → PAID → COMPLETED recorded in ONE commit with the
    /// inventory confirms and both events (`payment_succeeded` when we charged, then the
    /// confirms and `order_completed`), so a happy order costs two commits over its life:
    /// accept and settle. The order still walks the state machine (both transitions are
    /// `domain::order::next_status`); it is PAID only inside this step. The actor takes
    /// no other message until the step is durable, so a cancel waiting in the mailbox
    /// then finds COMPLETED and is refused: a cancel and a payment never both win.
    fn settle_paid(
        &mut self,
        consumed: Option<Consumed>,
    ) -> impl ActorFuture<Self, Output = Result<Reported, CancelRefused>> {
        let from = self.order.status;
        let change = next_status(from, Transition::PaymentSucceeded)
            .and_then(|paid| next_status(paid, Transition::Complete))
            .ok()
            .map(|to| StatusChange {
                order_id: self.order.id,
                from,
                to,
                cancel_reason: None,
                at: now_millis(),
            });
        // With an external payment service, payment_succeeded is its event, not ours.
        let prefix = if self.deps.options.external_payment {
            Vec::new()
        } else {
            vec![self.event(
                EventType::PaymentSucceeded,
                self.order.id,
                json!({"order_id": self.order.id, "amount": self.order.total, "attempts": self.attempt}),
            )]
        };
        let (deps, skus, id) = (self.deps.clone(), self.skus(), self.order.id);
        let traceparent = self.traceparent.clone();
        let span = self.step_span("complete");
        tracing::Instrument::instrument(
            async move {
                let change = change.ok_or(CancelRefused::NotPending(from))?;
                let ok = settle_and_commit(
                    &deps,
                    id,
                    &skus,
                    ChangeKind::Confirm,
                    &change,
                    traceparent,
                    prefix,
                    consumed,
                )
                .await;
                if ok {
                    Ok(change)
                } else {
                    Err(CancelRefused::Unavailable)
                }
            },
            span,
        )
        .into_actor(self)
        .map(|committed, act, ctx| {
            ctx.stop();
            let change = committed?;
            act.order.status = change.to;
            act.order.updated_at = change.at;
            act.deps.metrics.orders_finished.with_label_values(&["COMPLETED"]).inc();
            Ok(Reported::Applied)
        })
    }

    /// Completes an order recovered as PAID (committed by a version that recorded the
    /// payment as a commit of its own): confirm the inventory, commit COMPLETED.
    fn complete(&mut self, ctx: &mut Context<Self>) {
        let Some(change) = self.status_change(Transition::Complete) else {
            return;
        };
        let (deps, skus, id) = (self.deps.clone(), self.skus(), self.order.id);
        let traceparent = self.traceparent.clone();
        let span = self.step_span("complete");
        ctx.wait(
            tracing::Instrument::instrument(
                async move {
                    let ok = settle_and_commit(
                        &deps,
                        id,
                        &skus,
                        ChangeKind::Confirm,
                        &change,
                        traceparent,
                        Vec::new(),
                        None,
                    )
                    .await;
                    (ok, change)
                },
                span,
            )
            .into_actor(self)
            .map(|(ok, change), act, ctx| {
                if ok {
                    act.order.status = change.to;
                    act.order.updated_at = change.at;
                    act.deps.metrics.orders_finished.with_label_values(&["COMPLETED"]).inc();
                }
                ctx.stop();
            }),
        );
    }

    fn expire(&mut self, ctx: &mut Context<Self>) {
        if self.order.status == OrderStatus::PendingPayment {
            self.deps.metrics.reservation_expirations.inc();
            let fut = self.cancel(CancelReason::Expired, None, None);
            ctx.wait(fut.map(|_, _, _| ()));
        }
    }

    /// The compensation: release every reservation, then commit CANCELLED with its events
    /// (and `consumed`, when a consumed payment event caused it).
    fn cancel(
        &mut self,
        reason: CancelReason,
        failure: Option<String>,
        consumed: Option<Consumed>,
    ) -> impl ActorFuture<Self, Output = Result<Order, CancelRefused>> {
        let change = self.status_change(Transition::Cancel(reason));
        let (deps, skus, id) = (self.deps.clone(), self.skus(), self.order.id);
        let traceparent = self.traceparent.clone();
        // With an external payment service, payment_failed is its event, not ours.
        let announce_failure = reason == CancelReason::PaymentFailed && !deps.options.external_payment;
        let span = self.step_span("cancel");
        tracing::Instrument::instrument(
            async move {
                let change = change?;
                let mut prefix = Vec::new();
                if announce_failure {
                    prefix.push(Event::new(
                        EventType::PaymentFailed,
                        id,
                        now_millis(),
                        traceparent.clone(),
                        json!({"order_id": id, "error": failure}),
                    ));
                }
                settle_and_commit(
                    &deps,
                    id,
                    &skus,
                    ChangeKind::Release,
                    &change,
                    traceparent,
                    prefix,
                    consumed,
                )
                .await
                .then_some(change)
            },
            span,
        )
        .into_actor(self)
        .map(move |committed, act, ctx| {
            ctx.stop();
            let change = committed.ok_or(CancelRefused::Unavailable)?;
            act.order.status = change.to;
            act.order.cancel_reason = change.cancel_reason;
            act.order.updated_at = change.at;
            act.deps.metrics.orders_finished.with_label_values(&["CANCELLED"]).inc();
            Ok(act.order.clone())
        })
    }
}

/// Confirms or releases the order's reservation on every SKU, retrying an inventory
/// actor that is briefly unavailable (a saga step must finish, not give up).
async fn settle_each(deps: &Deps, skus: &[Sku], order: OrderId, how: ChangeKind) -> Vec<JournalEntry> {
    let mut journal = Vec::new();
    for sku in skus {
        let entry = with_backoff(Duration::from_millis(20), Duration::from_secs(2), || async move {
            let result = match how {
                ChangeKind::Confirm => deps.inventory.confirm(sku, order).await,
                _ => deps.inventory.release(sku, order).await,
            };
            result
                .inspect_err(|e| warn!(%sku, order_id = %order, error = %e, "inventory not answering, retrying"))
                .ok()
        })
        .await;
        journal.extend(entry);
    }
    journal
}

/// The one retry loop of the saga: runs `attempt` until it returns `Some`, sleeping a
/// doubling backoff (from `first`, capped at `cap`) between tries. For steps that must
/// finish rather than give up (a saga step, an in-doubt order); each caller decides
/// which failures are worth another try by returning `None` for them.
async fn with_backoff<T, F, Fut>(first: Duration, cap: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut backoff = first;
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cap);
    }
}

/// The write-set of a final saga step: the status change, the inventory journal
/// entries, and their events (`prefix` first, then one inventory event per SKU, then
/// `order_completed` or `order_cancelled`).
fn settle_set(
    how: ChangeKind,
    change: &StatusChange,
    traceparent: Option<&str>,
    prefix: &[Event],
    journal: Vec<JournalEntry>,
) -> WriteSet {
    let order = change.order_id;
    let tp = || traceparent.map(str::to_owned);
    let inventory_event = if how == ChangeKind::Confirm {
        EventType::InventoryConfirmed
    } else {
        EventType::InventoryReleased
    };
    let mut events = prefix.to_vec();
    events.extend(journal.iter().map(|e| {
        Event::new(
            inventory_event,
            &e.sku,
            e.at,
            tp(),
            json!({"sku": e.sku, "order_id": order, "qty": e.change.qty}),
        )
    }));
    events.push(match change.to {
        OrderStatus::Completed => Event::new(
            EventType::OrderCompleted,
            order,
            change.at,
            tp(),
            json!({"order_id": order}),
        ),
        _ => Event::new(
            EventType::OrderCancelled,
            order,
            change.at,
            tp(),
            json!({"order_id": order, "reason": change.cancel_reason}),
        ),
    });
    WriteSet {
        status_change: Some(change.clone()),
        journal,
        events,
        ..WriteSet::default()
    }
}

/// Confirms (towards COMPLETED) or releases (towards CANCELLED) every reservation of
/// the order and commits the step, under the configured inventory strategy.
#[allow(clippy::too_many_arguments)]
async fn settle_and_commit(
    deps: &Deps,
    order: OrderId,
    skus: &[Sku],
    how: ChangeKind,
    change: &StatusChange,
    traceparent: Option<String>,
    prefix: Vec<Event>,
    consumed: Option<Consumed>,
) -> bool {
    let build = |journal| WriteSet {
        consumed: consumed.clone(),
        ..settle_set(how, change, traceparent.as_deref(), &prefix, journal)
    };
    deps.keeper.settle(deps, order, skus, how, change.to, &build).await
}

/// Where an order's stock is taken and settled, chosen once at start from
/// `inventory.strategy`: the design's inventory actors + write-behind, or the
/// prototype's row-locking transactions (kept as the benchmark's baseline). The saga
/// and the placement call it without knowing which (issue 17: no strategy branches).
#[async_trait::async_trait]
trait StockKeeper: Send + Sync {
    /// Reserves every SKU of the order or none and makes the accepted order durable.
    async fn place(
        &self,
        orders: &Orders,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError>;

    /// Confirms or releases the order's reservation on every SKU and commits the step's
    /// write-set, which `build` makes of the journal entries. False if refused for good.
    async fn settle(
        &self,
        deps: &Deps,
        order: OrderId,
        skus: &[Sku],
        how: ChangeKind,
        target: OrderStatus,
        build: &(dyn Fn(Vec<JournalEntry>) -> WriteSet + Send + Sync),
    ) -> bool;
}

impl dyn StockKeeper {
    fn of(strategy: Strategy) -> Box<dyn StockKeeper> {
        match strategy {
            Strategy::Actor => Box::new(InMemory),
            Strategy::SqlRowLock => Box::new(RowLocked),
        }
    }
}

/// Reservations in the SKU actors' memory, made durable by the group commit.
struct InMemory;

#[async_trait::async_trait]
impl StockKeeper for InMemory {
    async fn place(
        &self,
        orders: &Orders,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        orders.place_in_memory(request, wanted, id, now, expires_at).await
    }

    async fn settle(
        &self,
        deps: &Deps,
        order: OrderId,
        skus: &[Sku],
        how: ChangeKind,
        target: OrderStatus,
        build: &(dyn Fn(Vec<JournalEntry>) -> WriteSet + Send + Sync),
    ) -> bool {
        let set = build(settle_each(deps, skus, order, how).await);
        commit_step(deps, set, order, target).await
    }
}

/// `sql_row_lock`: every placement and saga step is one transaction locking the SKU rows.
struct RowLocked;

#[async_trait::async_trait]
impl StockKeeper for RowLocked {
    async fn place(
        &self,
        orders: &Orders,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        orders.place_row_locked(request, wanted, id, now, expires_at).await
    }

    async fn settle(
        &self,
        deps: &Deps,
        order: OrderId,
        skus: &[Sku],
        how: ChangeKind,
        target: OrderStatus,
        build: &(dyn Fn(Vec<JournalEntry>) -> WriteSet + Send + Sync),
    ) -> bool {
        retry_until_durable(deps, order, target, || {
            deps.store.settle_row_locked(order, skus, how, build)
        })
        .await
    }
}

/// Commits a saga step's write-set through the write-behind.
async fn commit_step(deps: &Deps, set: WriteSet, order: OrderId, target: OrderStatus) -> bool {
    retry_until_durable(deps, order, target, || async {
        Ok(deps.write_behind.commit(set.clone()).await?)
    })
    .await
}

/// Runs a saga step until it is durable, retrying while the store is down. Returns
/// false only if the store refuses the step for good and the order is not already in
/// `target` (an earlier attempt may have committed even though it reported failure).
async fn retry_until_durable<F, Fut>(deps: &Deps, order: OrderId, target: OrderStatus, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    with_backoff(Duration::from_millis(50), Duration::from_secs(5), || {
        let tried = attempt();
        async move {
            match tried.await {
                Ok(()) => Some(true),
                Err(StoreError::Rejected(e) | StoreError::Conflict(e) | StoreError::Corrupt(e)) => {
                    if let Ok(Some(stored)) = deps.store.get_order(order).await {
                        if stored.status == target {
                            return Some(true);
                        }
                    }
                    error!(order_id = %order, error = %e, "saga step refused by the store");
                    Some(false)
                }
                Err(e) => {
                    warn!(order_id = %order, error = %e, "saga step not durable yet, retrying");
                    None
                }
            }
        }
    })
    .await
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
    ) -> Self {
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
            }),
        }
    }

    /// Sagas running, counting orders still in doubt after an outage (each is about to
    /// start a saga or drop its reservations): zero means every order is at rest.
    pub fn live_sagas(&self) -> usize {
        self.deps.actors.len() + self.deps.in_doubt.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn start_saga(&self, order: Order, traceparent: Option<String>) {
        let deps = self.deps.clone();
        let arbiter = &self.deps.arbiters[shard_of(&order.id, self.deps.arbiters.len())];
        // The address is registered here, before the 201 leaves, and the actor starts on
        // its arbiter afterwards: a cancel that follows the answer at once must find the
        // saga (messages wait in its mailbox until it runs). Registering before the start
        // also means a saga that finishes at once removes its own entry and leaves none.
        let (sender, receiver) = actix::dev::channel::channel(16);
        let id = order.id;
        deps.actors.insert(id, Addr::new(sender));
        let actor_deps = deps.clone();
        let started = arbiter.spawn_fn(move || {
            Context::with_receiver(receiver).run(OrderActor {
                order,
                attempt: 0,
                traceparent,
                deps: actor_deps,
            });
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

    async fn stored_answer(&self, user: &UserId, key: &str, hash: &str) -> Result<Option<Placed>, PlaceError> {
        let stored = self
            .deps
            .store
            .find_idempotency(user, key)
            .await
            .map_err(|e| PlaceError::Unavailable(e.to_string()))?;
        match stored {
            None => Ok(None),
            Some(record) if record.request_hash != hash => Err(PlaceError::IdempotencyMismatch),
            Some(record) => {
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
        let mut journal = Vec::with_capacity(wanted.len());
        let mut prices = HashMap::with_capacity(wanted.len());
        let mut failure = None;
        for (sku, qty) in &wanted {
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
            Ok(set) => set,
            Err(e) => {
                self.forget_all(prices.keys(), id).await;
                return Err(e);
            }
        };
        let order = set.new_order.clone().expect("an order write-set carries its order");
        match deps.write_behind.commit(set).await {
            Ok(()) => {
                deps.metrics.orders_created.inc();
                self.start_saga(order.clone(), request.traceparent);
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
                self.start_saga(order.clone(), request.traceparent);
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
            self.start_saga(order, traceparent);
        } else {
            let skus: BTreeSet<&Sku> = order.lines.iter().map(|l| &l.sku).collect();
            self.forget_all(skus.into_iter(), order.id).await;
        }
    }

    async fn forget_all(&self, skus: impl Iterator<Item = &Sku>, order: OrderId) {
        for sku in skus {
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
    /// processed so redeliveries are skipped, and logged when money moved for an order
    /// that was cancelled meanwhile (a real gateway would refund it here).
    async fn no_effect(
        &self,
        id: OrderId,
        status: OrderStatus,
        outcome: &Result<(), String>,
        consumed: &Consumed,
    ) -> Result<(), ConsumeError> {
        if outcome.is_ok() && status == OrderStatus::Cancelled {
            warn!(order_id = %id, "payment succeeded for a cancelled order; refund needed");
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
        let in_flight = self.deps.store.orders_in_flight().await?;
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
            self.start_saga(order, None);
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
        if settle_and_commit(
            &self.deps,
            order.id,
            &skus,
            ChangeKind::Release,
            &change,
            None,
            Vec::new(),
            None,
        )
        .await
        {
            self.deps.metrics.reservation_expirations.inc();
            self.deps
                .metrics
                .orders_finished
                .with_label_values(&["CANCELLED"])
                .inc();
        }
    }
}

/// The write-set that makes a placed order durable: the order with its lines, the
/// reservation journal entries, `order_created` + `inventory_reserved` events and the
/// idempotency record.
fn order_write_set(
    request: &PlaceOrder,
    id: OrderId,
    prices: &HashMap<Sku, crate::domain::money::Money>,
    journal: Vec<JournalEntry>,
    now: i64,
    expires_at: i64,
) -> Result<WriteSet, PlaceError> {
    let order = build_order(request, id, prices, now, expires_at)?;
    let tp = || request.traceparent.clone();
    let mut events = vec![Event::new(
        EventType::OrderCreated,
        id,
        now,
        tp(),
        // The payment token travels with the order: an external payment service charges it.
        json!({"order_id": id, "user_id": order.user_id, "items": order.lines, "total": order.total,
               "payment": {"token": order.payment_token}}),
    )];
    events.extend(journal.iter().map(|e| {
        Event::new(
            EventType::InventoryReserved,
            &e.sku,
            now,
            tp(),
            json!({"sku": e.sku, "order_id": id, "qty": e.change.qty, "expires_at": expires_at}),
        )
    }));
    for event in &mut events {
        event.tracestate = request.tracestate.clone();
    }
    let idempotency = match &request.idempotency {
        Some((key, hash)) => Some(IdempotencyRecord {
            user_id: request.user.clone(),
            key: key.clone(),
            request_hash: hash.clone(),
            order_id: id,
            response: serde_json::to_string(&order).map_err(|e| PlaceError::Unavailable(e.to_string()))?,
        }),
        None => None,
    };
    Ok(WriteSet {
        new_order: Some(order),
        status_change: None,
        journal,
        events,
        idempotency,
        consumed: None,
    })
}

fn build_order(
    request: &PlaceOrder,
    id: OrderId,
    prices: &HashMap<Sku, crate::domain::money::Money>,
    now: i64,
    expires_at: i64,
) -> Result<Order, PlaceError> {
    let lines: Vec<OrderLine> = request
        .items
        .iter()
        .filter_map(|(sku, qty)| {
            prices.get(sku).map(|price| OrderLine {
                sku: sku.clone(),
                qty: *qty,
                unit_price: *price,
            })
        })
        .collect();
    let total = total(&lines).map_err(OrderRequestError::from)?;
    Ok(Order {
        id,
        user_id: request.user.clone(),
        status: OrderStatus::PendingPayment,
        lines,
        total,
        payment_token: request.payment_token.clone(),
        cancel_reason: None,
        created_at: now,
        updated_at: now,
        expires_at,
    })
}
