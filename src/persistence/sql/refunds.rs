//! The `refunds` table: payments that may have been captured for orders that were
//! cancelled, and where giving each back (or voiding the order at the gateway) stands
//! (docs/design.md, "Refunds"). The refunder (`actors::refunds`) is the only writer
//! after the request.

use super::{corrupt, insert_outbox, text, SqlStore};
use crate::domain::events::Event;
use crate::domain::ids::OrderId;
use crate::domain::money::{Currency, Money};
use crate::domain::payment::RefundStatus;
use crate::domain::Millis;
use crate::persistence::{Consumed, StoreError};
use sqlx::Row;
use std::collections::HashMap;

/// A refund whose next attempt has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueRefund {
    pub(crate) order_id: OrderId,
    pub(crate) amount: Money,
    pub(crate) token: String,
    /// Attempts made so far.
    pub(crate) attempts: u32,
}

impl SqlStore {
    /// Records that `order`'s payment of `amount` must be given back, once: a second
    /// request for the same order (a redelivered payment event, a retry after an outage)
    /// finds the row and changes nothing. With `consumed`, the payment event that
    /// reported the capture is marked processed in the same transaction. True when this
    /// call recorded the refund (false: it was requested before).
    pub(crate) async fn request_refund(
        &self,
        order: OrderId,
        amount: Money,
        token: &str,
        consumed: Option<&Consumed>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let recorded = sqlx::query(&format!(
            "{} INTO refunds (order_id, amount, currency, payment_token, status, attempts, next_attempt_at, requested_at) \
             VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
            self.dialect.insert_ignore()
        ))
        .bind(order.to_string())
        .bind(amount.amount)
        .bind(amount.currency.as_str().to_owned())
        .bind(token.to_owned())
        .bind(RefundStatus::Requested.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if let Some(consumed) = consumed {
            sqlx::query(&format!(
                "{} INTO processed_events (consumer, event_id, processed_at) VALUES (?, ?, ?)",
                self.dialect.insert_ignore()
            ))
            .bind(consumed.consumer.clone())
            .bind(consumed.event_id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Refunds still requested whose next attempt is due at `now`, oldest first.
    pub(crate) async fn due_refunds(&self, now: Millis, limit: i64) -> Result<Vec<DueRefund>, StoreError> {
        let rows = sqlx::query(
            "SELECT order_id, amount, currency, payment_token, attempts FROM refunds \
             WHERE status = ? AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
        )
        .bind(RefundStatus::Requested.as_str())
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let currency = Currency::parse(&r.try_get::<String, _>("currency")?).map_err(corrupt)?;
                Ok(DueRefund {
                    order_id: OrderId::parse(&r.try_get::<String, _>("order_id")?).map_err(corrupt)?,
                    amount: Money::new(r.try_get("amount")?, currency).map_err(corrupt)?,
                    token: r.try_get("payment_token")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    /// The gateway gave the money back: the refund is done and `event`
    /// (`payment_refunded`) goes out through the outbox, in one transaction. A refund
    /// that is no longer `requested` (finished by an earlier attempt) changes nothing.
    pub(crate) async fn refund_succeeded(
        &self,
        order: OrderId,
        event: &Event,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.finish_refund(order, RefundStatus::Refunded, None, Some(event), now)
            .await
    }

    /// The gateway had captured nothing and voided the order: the refund is done, with
    /// no event (no money moved).
    pub(crate) async fn refund_voided(&self, order: OrderId, now: Millis) -> Result<bool, StoreError> {
        self.finish_refund(order, RefundStatus::Voided, None, None, now).await
    }

    /// The refund is given up on after its last attempt: `event` (`refund_failed`) goes
    /// out and a `failed_events` row (source `refund`) keeps it for `emporium replay`.
    pub(crate) async fn refund_gave_up(
        &self,
        order: OrderId,
        error: &str,
        event: &Event,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.finish_refund(order, RefundStatus::Failed, Some(error), Some(event), now)
            .await
    }

    async fn finish_refund(
        &self,
        order: OrderId,
        to: RefundStatus,
        error: Option<&str>,
        event: Option<&Event>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE refunds SET status = ?, attempts = attempts + 1, last_error = ?, finished_at = ? \
             WHERE order_id = ? AND status = ?",
        )
        .bind(to.as_str())
        .bind(error.map(str::to_owned))
        .bind(now)
        .bind(order.to_string())
        .bind(RefundStatus::Requested.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        let Some(event) = event else {
            tx.commit().await?;
            return Ok(true);
        };
        insert_outbox(&mut tx, &[event]).await?;
        if let Some(error) = error {
            // A failed refund replaces the row its earlier replay left behind.
            sqlx::query("DELETE FROM failed_events WHERE event_id = ?")
                .bind(event.id.to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO failed_events (event_id, event_type, aggregate_id, body, error, attempts, failed_at, source, replayable) \
                 SELECT ?, ?, ?, ?, ?, attempts, ?, 'refund', 0 FROM refunds WHERE order_id = ?",
            )
            .bind(event.id.to_string())
            .bind(event.event_type.as_str())
            .bind(event.aggregate_id.clone())
            .bind(serde_json::to_string(event).map_err(corrupt)?)
            .bind(error.to_owned())
            .bind(now)
            .bind(order.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The order is not decided yet (its refund was requested just before its cancel
    /// commits): look again at `next_attempt_at`, without spending an attempt.
    pub(crate) async fn refund_postponed(&self, order: OrderId, next_attempt_at: Millis) -> Result<(), StoreError> {
        sqlx::query("UPDATE refunds SET next_attempt_at = ? WHERE order_id = ? AND status = ?")
            .bind(next_attempt_at)
            .bind(order.to_string())
            .bind(RefundStatus::Requested.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The cancel the refund was requested for lost to the payment (the order
    /// completed): nothing is owed, the request goes.
    pub(crate) async fn refund_dropped(&self, order: OrderId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM refunds WHERE order_id = ? AND status = ?")
            .bind(order.to_string())
            .bind(RefundStatus::Requested.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A failed attempt with attempts left: try again at `next_attempt_at`.
    pub(crate) async fn refund_retry_later(
        &self,
        order: OrderId,
        error: &str,
        next_attempt_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE refunds SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? \
             WHERE order_id = ? AND status = ?",
        )
        .bind(error.to_owned())
        .bind(next_attempt_at)
        .bind(order.to_string())
        .bind(RefundStatus::Requested.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refunds given up on and not replayed yet go back to `requested` with fresh
    /// attempts; their `failed_events` rows are marked replayed. Returns how many.
    pub(super) async fn replay_failed_refunds(&self, now: Millis) -> Result<usize, StoreError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT id, aggregate_id FROM failed_events WHERE source = 'refund' AND replayed_at IS NULL ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let order = text(row, "aggregate_id")?;
            sqlx::query(
                "UPDATE refunds SET status = ?, attempts = 0, next_attempt_at = ?, finished_at = NULL \
                 WHERE order_id = ? AND status = ?",
            )
            .bind(RefundStatus::Requested.as_str())
            .bind(now)
            .bind(order)
            .bind(RefundStatus::Failed.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE failed_events SET replayed_at = ? WHERE id = ?")
                .bind(now)
                .bind(row.try_get::<i64, _>("id")?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Where the refund of each of `orders` stands (orders without one are absent).
    pub(crate) async fn refund_statuses(
        &self,
        orders: &[OrderId],
    ) -> Result<HashMap<OrderId, RefundStatus>, StoreError> {
        let mut found = HashMap::new();
        if orders.is_empty() {
            return Ok(found);
        }
        let mut q = sqlx::QueryBuilder::<sqlx::Any>::new("SELECT order_id, status FROM refunds WHERE order_id IN (");
        let mut list = q.separated(", ");
        for id in orders {
            list.push_bind(id.to_string());
        }
        q.push(")");
        for row in q.build().fetch_all(&self.pool).await? {
            let id = OrderId::parse(&row.try_get::<String, _>("order_id")?).map_err(corrupt)?;
            let status: String = row.try_get("status")?;
            let status = RefundStatus::parse(&status).ok_or_else(|| corrupt(format!("refund status {status:?}")))?;
            found.insert(id, status);
        }
        Ok(found)
    }
}
