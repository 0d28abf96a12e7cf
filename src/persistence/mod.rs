//! Durable state: the SQL store (SQLite by default, MySQL when configured) and the
//! event bus. Everything above this layer speaks in domain types; everything SQL
//! stays in [`sql`].

pub(crate) mod catalog;
pub(crate) mod row_lock;
pub mod sql;
pub mod users;

use crate::domain::events::Event;
use crate::domain::ids::{OrderId, Sku, UserId};
use crate::domain::inventory::{Change, Reservation};
use crate::domain::money::Money;
use crate::domain::order::{CancelReason, Order, OrderStatus};
use crate::domain::Millis;
use crate::error::Cause;

pub use sql::SqlStore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or did not answer: retry later.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// A uniqueness rule refused the write (duplicate SKU, duplicate key).
    #[error("conflict: {0}")]
    Conflict(#[source] Cause),
    /// A constraint refused the write: a bug upstream, never retried as is.
    #[error("rejected by the store: {0}")]
    Rejected(#[source] Cause),
    /// Cluster mode: this node does not own (any more) a shard the write is for;
    /// nothing was written, and the shard's new owner carries on.
    #[error("this node does not own the shard any more")]
    NotOwner,
    /// Stored data that does not parse back into domain types.
    #[error("corrupt stored data: {0}")]
    Corrupt(#[source] Cause),
}

/// One accepted inventory operation with the SKU and sequence number its actor gave it.
/// Serializable: in cluster mode a SKU's owner hands entries to the node placing or
/// settling an order that spans owners.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalEntry {
    pub(crate) sku: Sku,
    pub(crate) seq: i64,
    pub(crate) change: Change,
    pub(crate) at: Millis,
    /// Cluster mode: the epoch of its shard under which the SKU actor that decided it was
    /// activated. The write-set carrying it is committed only while this node still holds
    /// the shard at that epoch (a shard lost and re-claimed meanwhile has a new actor that
    /// never saw this entry). `None` outside the actors (row locks, catalog loads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) epoch: Option<i64>,
}

/// A guarded order status change: applied only if the order is still in `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub(crate) order_id: OrderId,
    pub(crate) from: OrderStatus,
    pub(crate) to: OrderStatus,
    pub(crate) cancel_reason: Option<CancelReason>,
    pub(crate) at: Millis,
}

/// The stored answer to an `Idempotency-Key`, replayed for the same key and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub(crate) user_id: UserId,
    pub(crate) key: String,
    pub(crate) request_hash: String,
    pub(crate) order_id: OrderId,
    pub(crate) response: String,
}

/// Everything one request or saga step makes durable, committed all together or not at
/// all. The write-behind commits many write-sets in one transaction.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    pub new_order: Option<Order>,
    pub status_change: Option<StatusChange>,
    pub journal: Vec<JournalEntry>,
    pub events: Vec<Event>,
    pub idempotency: Option<IdempotencyRecord>,
    /// The consumed event this write-set is the effect of: recorded in
    /// `processed_events` in the same transaction, so a redelivery has no second effect.
    pub consumed: Option<Consumed>,
    /// Cluster mode: journal entries decided by other nodes (an order spanning owners),
    /// valid only while those nodes hold their shards at these epochs.
    pub remote_fences: Vec<crate::domain::cluster::Fence>,
    /// Cluster mode: the order's smallest SKU when this write-set carries a new order, a
    /// status change or a consumed event. Its shard's owner alone decides about the order,
    /// so the commit is fenced on that shard too (even with no journal entry there).
    pub order_sku: Option<Sku>,
}

/// "Consumer `consumer` has applied event `event_id`" (a row of `processed_events`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Consumed {
    pub(crate) consumer: String,
    pub(crate) event_id: uuid::Uuid,
}

/// What an inventory actor loads when it is activated.
#[derive(Debug, Clone)]
pub(crate) struct SkuRecord {
    pub(crate) sku: Sku,
    pub(crate) unit_price: Money,
    pub(crate) stock: i64,
    pub(crate) seq: i64,
    pub(crate) reservations: Vec<(OrderId, Reservation)>,
}

#[derive(Debug, Clone)]
pub(crate) struct NewSku {
    pub(crate) sku: Sku,
    pub(crate) price: Money,
    pub(crate) stock: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct OutboxRow {
    pub(crate) id: i64,
    /// One transaction's events, in order (at most 64).
    pub(crate) events: Vec<Event>,
    pub(crate) attempts: i64,
    pub(crate) next_attempt_at: Millis,
}

#[derive(Debug, Clone)]
pub struct FailedEvent {
    pub(crate) id: i64,
    pub(crate) event: Event,
}

/// A message a consumer gave up on, as it goes into `failed_events` (and `emporium.dlq`).
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) consumer: String,
    pub(crate) topic: String,
    /// The message parsed as an event, when it is one: only those can be replayed.
    pub(crate) event: Option<Event>,
    /// The raw payload (lossy UTF-8), kept when it is not an event.
    pub(crate) payload: String,
    pub(crate) key: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) error: String,
    pub(crate) attempts: i64,
}
