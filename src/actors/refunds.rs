//! The refunder: gives back payments the gateway captured for orders that were
//! cancelled meanwhile (a customer cancel or the expiry won while the charge was in
//! flight, or the node that charged died), and voids at the gateway the orders whose
//! charge may still be in flight (docs/design.md, "Refunds").
//!
//! Owns: nothing in memory: the `refunds` table is its whole state, so a restart (or a
//! `kill -9`) continues where it stopped. Takes: a wake-up when a refund is requested
//! ([`Refunder::wake`]); besides, it polls for refunds whose next attempt is due.
//! Promises: a refund is asked of the gateway only once its order is `CANCELLED` in the
//! store (one may be requested just before its cancel commits; if the cancel loses to
//! the payment, the request is dropped); then until it succeeds or
//! `payment.refund_attempts` are spent (keyed by the order id, so asking again refunds
//! once); the outcome and its event (`payment_refunded` / `refund_failed`; a void has
//! none) commit together, and a refund given up on is kept in `failed_events` for
//! `emporium replay`.

use crate::actors::payment::{self, PaymentActor, Refund, RefundOutcome};
use crate::domain::events::{Event, EventType, PaymentMoved, PaymentRefused};
use crate::domain::now_millis;
use crate::domain::order::OrderStatus;
use crate::persistence::sql::DueRefund;
use crate::persistence::SqlStore;
use crate::telemetry::Metrics;
use actix::Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// Refunds handled per round.
const ROUND: i64 = 32;

/// How long a refund requested for a cancel not committed yet waits before its order
/// is looked at again.
const UNDECIDED_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub(crate) struct RefundOptions {
    pub(crate) attempts: u32,
    pub(crate) backoff_base: Duration,
    /// How long one gateway call may take.
    pub(crate) call_timeout: Duration,
    /// How often due refunds are looked for when nobody wakes the refunder.
    pub(crate) poll: Duration,
}

pub(crate) struct Refunder {
    store: SqlStore,
    payment: Addr<PaymentActor>,
    options: RefundOptions,
    metrics: Arc<Metrics>,
    /// The outbox relay's wake-up: a refund's event is in the outbox.
    committed: Arc<Notify>,
    wake: Notify,
    /// Cluster mode: only the leading node gives refunds back (one caller per refund).
    ownership: Arc<crate::actors::cluster::Ownership>,
}

impl Refunder {
    pub fn new(
        store: SqlStore,
        payment: Addr<PaymentActor>,
        options: RefundOptions,
        metrics: Arc<Metrics>,
        committed: Arc<Notify>,
        ownership: Arc<crate::actors::cluster::Ownership>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            payment,
            options,
            metrics,
            committed,
            wake: Notify::new(),
            ownership,
        })
    }

    /// A refund was just recorded: count it and look at once instead of at the next poll.
    pub(crate) fn requested(&self) {
        self.metrics.refunds.with_label_values(&["requested"]).inc();
        self.wake();
    }

    /// Something became due (the cancel a refund was requested for committed): look at
    /// once instead of at the next poll.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn run_in_background(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if !me.ownership.leads() || !me.round().await {
                    tokio::select! {
                        () = me.wake.notified() => {}
                        () = tokio::time::sleep(me.options.poll) => {}
                    }
                }
            }
        });
    }

    /// One pass over the due refunds; false when there was nothing to do (or the store
    /// did not answer: the next poll tries again).
    async fn round(&self) -> bool {
        let due = match self.store.due_refunds(now_millis(), ROUND).await {
            Ok(due) => due,
            Err(e) => {
                warn!(error = %e, "cannot read due refunds");
                return false;
            }
        };
        let worked = !due.is_empty();
        for refund in due {
            if let Err(e) = self.attempt(&refund).await {
                // The gateway call is repeated on the next attempt; it refunds once.
                warn!(order_id = %refund.order_id, error = %e, "refund outcome not recorded, retrying");
                return false;
            }
        }
        worked
    }

    async fn attempt(&self, refund: &DueRefund) -> Result<(), crate::persistence::StoreError> {
        match self.store.get_order(refund.order_id).await?.map(|o| o.status) {
            Some(OrderStatus::Cancelled) => {}
            Some(OrderStatus::Completed) => {
                info!(order_id = %refund.order_id, "the cancel lost to the payment; refund request dropped");
                return self.store.refund_dropped(refund.order_id).await;
            }
            status => {
                let next = now_millis() + i64::try_from(UNDECIDED_WAIT.as_millis()).unwrap_or(i64::MAX / 2);
                info!(order_id = %refund.order_id, ?status, "order not decided yet; refund waits");
                return self.store.refund_postponed(refund.order_id, next).await;
            }
        }
        let attempt = refund.attempts + 1;
        let request = Refund {
            order: refund.order_id,
            amount: refund.amount,
            token: refund.token.clone(),
        };
        let outcome = payment::call(&self.payment, request, self.options.call_timeout).await;
        let now = now_millis();
        match outcome {
            Ok(RefundOutcome::Voided) => {
                if self.store.refund_voided(refund.order_id, now).await? {
                    info!(order_id = %refund.order_id, attempt, "nothing was captured; the order is void at the gateway");
                    self.metrics.refunds.with_label_values(&["voided"]).inc();
                }
            }
            Ok(RefundOutcome::Refunded) => {
                let refunded = Event::of(
                    EventType::PaymentRefunded,
                    refund.order_id,
                    now,
                    None,
                    &PaymentMoved {
                        order_id: refund.order_id,
                        amount: refund.amount,
                        attempts: attempt,
                    },
                );
                if self.store.refund_succeeded(refund.order_id, &refunded, now).await? {
                    info!(order_id = %refund.order_id, attempt, "payment refunded");
                    self.metrics.refunds.with_label_values(&["refunded"]).inc();
                    self.committed.notify_one();
                }
            }
            Err(e) => match payment::retry_after(&e, attempt, self.options.attempts, self.options.backoff_base) {
                Some(backoff) => {
                    let next = now + i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX / 2);
                    self.store
                        .refund_retry_later(refund.order_id, &e.to_string(), next)
                        .await?;
                    self.metrics.refunds.with_label_values(&["retried"]).inc();
                }
                None => {
                    let failed = Event::of(
                        EventType::RefundFailed,
                        refund.order_id,
                        now,
                        None,
                        &PaymentRefused {
                            order_id: refund.order_id,
                            error: Some(e.to_string()),
                            amount: Some(refund.amount),
                            attempts: Some(attempt),
                        },
                    );
                    if self
                        .store
                        .refund_gave_up(refund.order_id, &e.to_string(), &failed, now)
                        .await?
                    {
                        warn!(order_id = %refund.order_id, attempt, error = %e, "refund given up; kept in failed_events");
                        self.metrics.refunds.with_label_values(&["failed"]).inc();
                        self.committed.notify_one();
                    }
                }
            },
        }
        Ok(())
    }
}
