//! Emporium's consumer of `emporium.payments` when `payment.mode = "kafka"`: turns the
//! payment service's `payment_succeeded` / `payment_failed` events into saga steps
//! (PAID → confirm → COMPLETED, or release → CANCELLED) through [`Orders`].
//!
//! The order actor commits the step together with the consumed event's id (see
//! `events::consumer`), so a redelivered payment event has no second effect.
//! Other event types on the topic are not ours to act on and are passed over.

use crate::actors::order::Orders;
use crate::domain::events::{AboutOrder, Event, EventType, PaymentRefused};
use crate::domain::ids::OrderId;
use crate::events::consumer::{ConsumeError, EventHandler};
use crate::persistence::Consumed;
use async_trait::async_trait;

/// The consumer name recorded in `processed_events` and `failed_events`.
pub(crate) const CONSUMER: &str = "saga-payments";

pub(crate) struct PaymentOutcomes {
    pub(crate) orders: Orders,
}

/// The order a payment event is about, from its `data.order_id`.
fn order_of(event: &Event) -> Result<OrderId, ConsumeError> {
    event.payload::<AboutOrder>().map(|about| about.order_id).map_err(|_| {
        ConsumeError::Failed((format!("{} event without a valid data.order_id", event.event_type.as_str())).into())
    })
}

#[async_trait]
impl EventHandler for PaymentOutcomes {
    async fn apply(&self, event: &Event, consumed: Consumed) -> Result<(), ConsumeError> {
        let outcome = match event.event_type {
            EventType::PaymentSucceeded => Ok(()),
            EventType::PaymentFailed => Err(event
                .payload::<PaymentRefused>()
                .ok()
                .and_then(|refused| refused.error)
                .unwrap_or_else(|| "payment failed".to_owned())),
            _ => return Ok(()),
        };
        let order = order_of(event)?;
        self.orders.payment_reported(order, outcome, consumed).await
    }
}
