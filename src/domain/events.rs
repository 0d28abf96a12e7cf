//! Domain events: what the outbox stores and the event bus carries.
//!
//! Each event has a unique id (consumers deduplicate on it), the aggregate id
//! (the Kafka key, so one order's events stay in order), a timestamp, a schema
//! version and the W3C `traceparent` of the request that caused it.

use super::Millis;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const SCHEMA_VERSION: u16 = 1;

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
    pub fn topic(self) -> &'static str {
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
    pub event_type: EventType,
    pub aggregate_id: String,
    pub occurred_at: Millis,
    pub schema_version: u16,
    pub traceparent: Option<String>,
    /// The W3C `tracestate` of the request, when it had one (vendor trace data that
    /// travels with `traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    pub data: serde_json::Value,
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
}
