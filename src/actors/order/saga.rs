//! The saga of one order: an actor per order whose saga is still running.
//!
//! Owns: one order's state and saga progress (payment attempt, expiry timer).
//! Takes: [`Cancel`](super::Cancel), [`PaymentReported`](super::PaymentReported);
//! internally, the gateway's answers (`ChargeAnswered`, from a task per attempt) and the
//! expiry timer.
//! Promises: the order moves only along the state machine of `domain::order`; each
//! step (settle = PAID+COMPLETED in one commit, or CANCELLED) is committed with its
//! inventory journal entries and outbox events before the actor takes its next message,
//! so a customer cancel and a payment outcome can never both win. On payment failure,
//! customer cancel or expiry, the compensation releases every reservation; a charge that
//! succeeds after the cancel won is refunded (`refund_if_cancelled`, `actors::refunds`).
//!
//! Saga: PENDING_PAYMENT --charge (attempts with exponential backoff)--> PAID
//! --confirm inventory--> COMPLETED, the two arrows committed together (a happy order is
//! two commits: accept, settle); a decline, the last failed attempt, a cancel or the
//! reservation deadline --release inventory--> CANCELLED.
//!
//! Decide first, then apply (docs/cluster.md, "The decision"): a step settles in memory
//! only the SKUs of the order's own shard and commits them with the final status under
//! that shard's fence; the owners of its other SKUs apply the recorded decision only
//! after that commit is durable (and sweep for any they were not told about). A saga
//! resumed from the store never decides a final order again: it only runs while the
//! order is PENDING_PAYMENT or PAID.
//!
//! Money (F9 of the cluster review): a cancel of an order that may have been charged
//! without this saga hearing the answer records a refund request *before* the cancel
//! commits, so no crash between the two loses it: a saga resumed from the store (an
//! earlier run may have been paid), and, with a shared gateway (`payment.gateway_url`,
//! which outlives this process), any saga that sent a charge not declined: if this node
//! dies before the gateway answers, the charge may still capture. The refund is keyed by
//! the order id: the gateway refunds a capture once, and where it captured nothing it
//! voids the order, so the charge in flight takes nothing. The refunder acts only once
//! the order is CANCELLED (and drops the request if the payment won). A completion
//! refused because the order was cancelled meanwhile requests a refund too.

use super::decision::{settle_and_commit, Step};
use super::retry::with_backoff;
use super::{
    order_shard, request_refund, request_refund_until_recorded, Cancel, CancelRefused, Orders, PaymentReported,
    Reported, ACTOR,
};
use crate::actors::payment::{self, Charge, PaymentError};
use crate::domain::events::{Event, EventType, PaymentMoved, PaymentRefused};
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::ChangeKind;
use crate::domain::now_millis;
use crate::domain::order::{next_status, CancelReason, Order, OrderStatus, Transition};
use crate::persistence::{Consumed, StatusChange};
use actix::{
    Actor, ActorContext, ActorFuture, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Message,
    WrapFuture,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

use super::Deps;

pub(crate) struct OrderActor {
    order: Order,
    attempt: u32,
    traceparent: Option<String>,
    deps: Arc<Deps>,
    /// Started from the store (recovery, takeover) rather than by its placement: an
    /// earlier run may have captured the payment, so a cancel also requests a refund.
    resumed: bool,
    /// The gateway declined a charge of this order: its answer is final there, so
    /// nothing can be captured later.
    declined: bool,
    /// The saga stopped without finishing because its shard moved (a fenced step, a
    /// relinquish): once stopped, it looks whether this node holds the shard again and
    /// then resumes the order (a recovery at the re-claim skipped it while it was live).
    recheck_owner: bool,
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
        if self.recheck_owner && matches!(self.order.status, OrderStatus::PendingPayment | OrderStatus::Paid) {
            let (orders, order) = (
                Orders {
                    deps: self.deps.clone(),
                },
                self.order.clone(),
            );
            actix::spawn(async move { orders.resume_if_held(order).await });
        }
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

/// Cluster mode: these shards are no longer this node's; a saga of one of them stops.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Relinquish(pub Arc<[crate::domain::cluster::Shard]>);

impl Handler<Relinquish> for OrderActor {
    type Result = ();
    fn handle(&mut self, msg: Relinquish, ctx: &mut Self::Context) {
        if msg.0.contains(&order_shard(&self.deps.ownership, &self.order)) {
            self.recheck_owner = true;
            ctx.stop();
        }
    }
}

/// The gateway's answer to one charge attempt, delivered to the saga that made it.
/// Answers `true` when the saga took it (it was still waiting for a payment).
#[derive(Message)]
#[rtype(result = "bool")]
struct ChargeAnswered(Result<(), PaymentError>);

impl Handler<ChargeAnswered> for OrderActor {
    type Result = bool;
    fn handle(&mut self, msg: ChargeAnswered, ctx: &mut Self::Context) -> bool {
        self.on_payment(msg.0, ctx)
    }
}

impl OrderActor {
    /// A saga at its first step (payment attempt 0); `traceparent` is the placing
    /// request's; `resumed` when started from the store rather than by its placement.
    pub(super) fn new(order: Order, traceparent: Option<String>, deps: Arc<Deps>, resumed: bool) -> Self {
        Self {
            order,
            attempt: 0,
            traceparent,
            deps,
            resumed,
            declined: false,
            recheck_owner: false,
        }
    }

    /// Whether a cancel must request a refund before it commits (see the module's
    /// "Money"): never with the payment service, which refunds on its own events.
    fn may_have_been_charged_unheard(&self) -> bool {
        let options = &self.deps.options;
        !options.external_payment && (self.resumed || (options.shared_gateway && self.attempt > 0 && !self.declined))
    }

    fn skus(&self) -> Vec<Sku> {
        self.order
            .lines
            .iter()
            .map(|l| l.sku.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
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
        let attempt = async move { payment::call(&payment, request, timeout).await };
        let attempt = tracing::Instrument::instrument(attempt, self.step_span("payment_attempt"));
        // A task of its own, not the actor's: a cancel or the expiry may win while the
        // gateway thinks, and the saga then stops; the answer must still be heard. A
        // charge that succeeds for an order the saga no longer waits on is refunded, and
        // so is one whose answer never came in time: the gateway may have captured it
        // after this side gave up (the refund is keyed by the order; where nothing was
        // captured the gateway gives nothing back).
        let (saga, deps, order) = (ctx.address(), self.deps.clone(), self.order.id);
        actix::spawn(async move {
            let outcome = attempt.await;
            let taken = saga.send(ChargeAnswered(outcome.clone())).await.unwrap_or(false);
            if !taken && matches!(outcome, Ok(()) | Err(PaymentError::Timeout)) {
                refund_if_cancelled(&deps, order).await;
            }
        });
    }

    /// The gateway answered an attempt; false when the saga no longer waits for a
    /// payment (it was cancelled meanwhile).
    fn on_payment(&mut self, outcome: Result<(), PaymentError>, ctx: &mut Context<Self>) -> bool {
        let label = match &outcome {
            Ok(()) => "succeeded",
            Err(PaymentError::Declined) => "declined",
            Err(PaymentError::Timeout) => "timeout",
            Err(PaymentError::Transient(_)) => "error",
        };
        self.deps.metrics.payment_attempts.with_label_values(&[label]).inc();
        self.declined |= outcome == Err(PaymentError::Declined);
        if self.order.status != OrderStatus::PendingPayment {
            info!(order_id = %self.order.id, "payment outcome after cancellation");
            return false;
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
        true
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
            vec![Event::of(
                EventType::PaymentSucceeded,
                self.order.id,
                now_millis(),
                self.traceparent.clone(),
                &PaymentMoved {
                    order_id: self.order.id,
                    amount: self.order.total,
                    attempts: self.attempt,
                },
            )]
        };
        let (deps, skus, id) = (self.deps.clone(), self.skus(), self.order.id);
        let traceparent = self.traceparent.clone();
        let span = self.step_span("complete");
        tracing::Instrument::instrument(
            async move {
                let change = change.ok_or((CancelRefused::NotPending(from), Step::Refused))?;
                crate::failpoints::hit("after_capture").await;
                let step = settle_and_commit(
                    &deps,
                    &skus,
                    ChangeKind::Confirm,
                    &change,
                    traceparent,
                    prefix,
                    consumed,
                )
                .await;
                match step {
                    Step::Committed => Ok(change),
                    Step::NotOwner => Err((CancelRefused::Unavailable, Step::NotOwner)),
                    Step::Refused => {
                        // Paid for an order whose other decision (a cancel) was recorded
                        // first: the payment goes back.
                        refund_if_cancelled(&deps, id).await;
                        Err((CancelRefused::Unavailable, Step::Refused))
                    }
                }
            },
            span,
        )
        .into_actor(self)
        .map(|committed, act, ctx| {
            ctx.stop();
            let change = committed.map_err(|(refused, step)| {
                act.recheck_owner = step == Step::NotOwner;
                refused
            })?;
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
        let (deps, skus) = (self.deps.clone(), self.skus());
        let traceparent = self.traceparent.clone();
        let span = self.step_span("complete");
        ctx.wait(
            tracing::Instrument::instrument(
                async move {
                    let step = settle_and_commit(
                        &deps,
                        &skus,
                        ChangeKind::Confirm,
                        &change,
                        traceparent,
                        Vec::new(),
                        None,
                    )
                    .await;
                    (step, change)
                },
                span,
            )
            .into_actor(self)
            .map(|(step, change), act, ctx| {
                act.recheck_owner = step == Step::NotOwner;
                if step == Step::Committed {
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
        let refund_first = self.may_have_been_charged_unheard().then(|| self.order.clone());
        let span = self.step_span("cancel");
        tracing::Instrument::instrument(
            async move {
                let Some(change) = change else {
                    return Err(Step::Refused);
                };
                if let Some(order) = &refund_first {
                    request_refund_until_recorded(&deps, order).await;
                }
                let mut prefix = Vec::new();
                if announce_failure {
                    prefix.push(Event::of(
                        EventType::PaymentFailed,
                        id,
                        now_millis(),
                        traceparent.clone(),
                        &PaymentRefused {
                            order_id: id,
                            error: failure,
                            amount: None,
                            attempts: None,
                        },
                    ));
                }
                let step = settle_and_commit(
                    &deps,
                    &skus,
                    ChangeKind::Release,
                    &change,
                    traceparent,
                    prefix,
                    consumed,
                )
                .await;
                if step == Step::Committed {
                    crate::failpoints::hit("after_cancel_commit").await;
                    if refund_first.is_some() {
                        deps.refunder.wake();
                    }
                    Ok(change)
                } else {
                    Err(step)
                }
            },
            span,
        )
        .into_actor(self)
        .map(move |committed, act, ctx| {
            ctx.stop();
            let change = committed.map_err(|step| {
                act.recheck_owner = step == Step::NotOwner;
                CancelRefused::Unavailable
            })?;
            act.order.status = change.to;
            act.order.cancel_reason = change.cancel_reason;
            act.order.updated_at = change.at;
            act.deps.metrics.orders_finished.with_label_values(&["CANCELLED"]).inc();
            Ok(act.order.clone())
        })
    }
}

/// A charge succeeded (or timed out) after its saga stopped waiting: if the order was cancelled
/// meanwhile (customer, expiry), its payment is refunded. An order still pending in the
/// store (its cancel did not become durable) is left to the saga that resumes it, and
/// a completed one keeps its payment.
async fn refund_if_cancelled(deps: &Deps, id: OrderId) {
    with_backoff(Duration::from_millis(50), Duration::from_secs(5), || async move {
        match deps.store.get_order(id).await {
            Ok(Some(order)) if order.status == OrderStatus::Cancelled => {
                warn!(order_id = %id, "payment succeeded for a cancelled order; refund requested");
                request_refund(deps, &order, None)
                    .await
                    .inspect_err(|e| warn!(order_id = %id, error = %e, "refund not recorded yet, retrying"))
                    .ok()
            }
            Ok(_) => Some(()),
            Err(e) => {
                warn!(order_id = %id, error = %e, "cannot read the order of a late payment, retrying");
                None
            }
        }
    })
    .await
}
