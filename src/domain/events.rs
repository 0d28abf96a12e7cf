//! Domain events: what the outbox stores and the event bus carries.
//!
//! Each event has a unique id (consumers deduplicate on it), the aggregate id
//! (the Kafka key, so one order's events stay in order), a timestamp, a schema
//! version and the W3C `traceparent` of the request that caused it.

use super::ids::{OrderId, Sku, UserId};
use super::money::Money;
use super::order::{CancelReason, OrderLine};
use super::Millis;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub(crate) const SCHEMA_VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    OrderCreated,
    PaymentSucceeded,
    PaymentFailed,
    /// A payment captured for an order cancelled meanwhile was given back.
    PaymentRefunded,
    /// Such a refund was given up on after its attempts (kept in `failed_events`).
    RefundFailed,
    OrderCompleted,
    OrderCancelled,
    InventoryReserved,
    InventoryConfirmed,
    InventoryReleased,
    ProductUpserted,
    ProductDeleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order_created",
            Self::PaymentSucceeded => "payment_succeeded",
            Self::PaymentFailed => "payment_failed",
            Self::PaymentRefunded => "payment_refunded",
            Self::RefundFailed => "refund_failed",
            Self::OrderCompleted => "order_completed",
            Self::OrderCancelled => "order_cancelled",
            Self::InventoryReserved => "inventory_reserved",
            Self::InventoryConfirmed => "inventory_confirmed",
            Self::InventoryReleased => "inventory_released",
            Self::ProductUpserted => "product_upserted",
            Self::ProductDeleted => "product_deleted",
        }
    }

    /// The topic (Kafka) or stream (embedded) the event is published on.
    pub(crate) fn topic(self) -> &'static str {
        match self {
            Self::OrderCreated | Self::OrderCompleted | Self::OrderCancelled => "emporium.orders",
            Self::PaymentSucceeded | Self::PaymentFailed | Self::PaymentRefunded | Self::RefundFailed => {
                "emporium.payments"
            }
            Self::InventoryReserved | Self::InventoryConfirmed | Self::InventoryReleased => "emporium.inventory",
            Self::ProductUpserted | Self::ProductDeleted => "emporium.products",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub(crate) event_type: EventType,
    pub aggregate_id: String,
    pub(crate) occurred_at: Millis,
    pub(crate) schema_version: u16,
    pub traceparent: Option<String>,
    /// The W3C `tracestate` of the request, when it had one (vendor trace data that
    /// travels with `traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tracestate: Option<String>,
    pub(crate) data: serde_json::Value,
}

impl Event {
    pub fn new(
        event_type: EventType,
        aggregate_id: impl ToString,
        occurred_at: Millis,
        traceparent: Option<String>,
        data: serde_json::Value,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type,
            aggregate_id: aggregate_id.to_string(),
            occurred_at,
            schema_version: SCHEMA_VERSION,
            traceparent,
            tracestate: None,
            data,
        }
    }
}

impl Event {
    /// An event whose `data` is one of the payload types below.
    pub(crate) fn of(
        event_type: EventType,
        aggregate_id: impl ToString,
        occurred_at: Millis,
        traceparent: Option<String>,
        payload: &impl Serialize,
    ) -> Self {
        // The payloads are plain structs of strings and numbers: serializing them to a
        // JSON value cannot fail (only maps with non-string keys can).
        let data = serde_json::to_value(payload).unwrap_or(serde_json::Value::Null);
        Self::new(event_type, aggregate_id, occurred_at, traceparent, data)
    }

    /// The event's `data` read as payload `T` (consumers name what they need).
    pub(crate) fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}

// The payloads: one type per shape of `data`, written by the producer and read by the
// consumer through the same definition. Readers ignore fields they do not know, so a
// payload may grow.

/// `order_created`: everything a payment service needs to charge the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderCreated {
    pub(crate) order_id: OrderId,
    pub(crate) user_id: UserId,
    pub(crate) items: Vec<OrderLine>,
    pub(crate) total: Money,
    /// The payment token travels with the order: an external payment service charges it.
    pub(crate) payment: PaymentRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PaymentRef {
    pub(crate) token: String,
}

/// `payment_succeeded`, `payment_refunded`: money moved (in, or back out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PaymentMoved {
    pub(crate) order_id: OrderId,
    pub(crate) amount: Money,
    pub(crate) attempts: u32,
}

/// `payment_failed`, `refund_failed`: the gateway refused or never answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PaymentRefused {
    pub(crate) order_id: OrderId,
    /// Why, when known.
    pub(crate) error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) amount: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) attempts: Option<u32>,
}

/// What a consumer of payment outcomes needs: whose order (any payment event).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct AboutOrder {
    pub(crate) order_id: OrderId,
}

/// `order_completed`, `order_cancelled` (with its reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OrderFinished {
    pub(crate) order_id: OrderId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<CancelReason>,
}

/// `inventory_reserved` (with the reservation's deadline), `inventory_confirmed`,
/// `inventory_released`: one SKU's units for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InventoryChanged {
    pub(crate) sku: Sku,
    pub(crate) order_id: OrderId,
    pub(crate) qty: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<Millis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_their_type_name_and_round_trip() {
        let e = Event::new(
            EventType::OrderCreated,
            "o-1",
            5,
            Some("00-abc-def-01".into()),
            serde_json::json!({"x": 1}),
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["type"], "order_created");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), e);
        assert_eq!(EventType::PaymentFailed.topic(), "emporium.payments");
    }

    #[test]
    fn payloads_write_the_documented_shapes_and_read_back() {
        let order = OrderId::parse("01a24db4-145d-73cf-ad91-664ce0acc9f0").unwrap();
        let completed = Event::of(
            EventType::OrderCompleted,
            order,
            1,
            None,
            &OrderFinished {
                order_id: order,
                reason: None,
            },
        );
        assert_eq!(completed.data, serde_json::json!({"order_id": order}));
        let failed = Event::of(
            EventType::PaymentFailed,
            order,
            1,
            None,
            &PaymentRefused {
                order_id: order,
                error: None,
                amount: None,
                attempts: None,
            },
        );
        assert_eq!(failed.data, serde_json::json!({"order_id": order, "error": null}));
        assert_eq!(failed.payload::<AboutOrder>().unwrap().order_id, order);
        let cancelled = OrderFinished {
            order_id: order,
            reason: Some(CancelReason::Customer),
        };
        let event = Event::of(EventType::OrderCancelled, order, 1, None, &cancelled);
        assert_eq!(event.data["reason"], "customer");
        assert_eq!(event.payload::<OrderFinished>().unwrap(), cancelled);
        // A payment event from elsewhere may carry more than we read.
        let foreign = Event::new(
            EventType::PaymentSucceeded,
            order,
            1,
            None,
            serde_json::json!({"order_id": order, "amount": {"amount": 5, "currency": "KRW"}, "attempts": 2, "gateway": "x"}),
        );
        assert_eq!(foreign.payload::<PaymentMoved>().unwrap().attempts, 2);
    }
}
