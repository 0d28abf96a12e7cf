//! Reading orders: one, a user's page, those still in flight; and stored idempotent answers.
use super::{corrupt, text, ROWS_PER_INSERT};
use crate::domain::ids::{OrderId, Sku, UserId};
use crate::domain::money::{Currency, Money};
use crate::domain::order::{CancelReason, Order, OrderLine, OrderStatus};
use crate::persistence::{IdempotencyRecord, SqlStore, StoreError};
use sqlx::any::AnyRow;
use sqlx::{Any, QueryBuilder, Row};
use std::collections::HashMap;

impl SqlStore {
    pub async fn get_order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let rows = sqlx::query(&format!("{ORDER_COLUMNS} WHERE id = ?"))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        Ok(self.with_lines(rows).await?.into_iter().next())
    }

    /// A user's orders (or everyone's for `None`), newest first, before the cursor.
    pub async fn list_orders(
        &self,
        user: Option<&UserId>,
        before: Option<OrderId>,
        limit: i64,
    ) -> Result<Vec<Order>, StoreError> {
        let mut q = QueryBuilder::<Any>::new(ORDER_COLUMNS);
        q.push(" WHERE 1 = 1");
        if let Some(user) = user {
            q.push(" AND user_id = ").push_bind(user.to_string());
        }
        if let Some(before) = before {
            q.push(" AND id < ").push_bind(before.to_string());
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        self.with_lines(rows).await
    }

    /// Orders whose saga has not finished: what recovery resumes.
    pub(crate) async fn orders_in_flight(&self) -> Result<Vec<Order>, StoreError> {
        let rows = sqlx::query(&format!(
            "{ORDER_COLUMNS} WHERE status IN ('PENDING_PAYMENT', 'PAID') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        self.with_lines(rows).await
    }

    /// An order's status alone (no lines): the decision a SKU's owner applies to its
    /// reservation (docs/cluster.md, "the decision").
    pub(crate) async fn order_status(&self, id: OrderId) -> Result<Option<OrderStatus>, StoreError> {
        let row = sqlx::query("SELECT status FROM orders WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let status: String = r.try_get("status")?;
            OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("order status {status:?}")))
        })
        .transpose()
    }

    /// Reservations still held for orders that are already COMPLETED or CANCELLED: their
    /// decision is recorded and their SKU's owner has not applied it yet (the saga's node
    /// died or lost its shard between the decision and the settle, or the owner did).
    /// Each SKU's owner applies them in its sweep.
    pub(crate) async fn decided_reservations(&self) -> Result<Vec<(Sku, OrderId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.sku, r.order_id FROM reservations r JOIN orders o ON o.id = r.order_id \
             WHERE o.status IN ('COMPLETED', 'CANCELLED') ORDER BY r.sku, r.order_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    Sku::parse(r.try_get::<String, _>("sku")?).map_err(corrupt)?,
                    OrderId::parse(&r.try_get::<String, _>("order_id")?).map_err(corrupt)?,
                ))
            })
            .collect()
    }

    async fn with_lines(&self, rows: Vec<AnyRow>) -> Result<Vec<Order>, StoreError> {
        let mut orders = rows.iter().map(order_from_row).collect::<Result<Vec<_>, _>>()?;
        let mut index: HashMap<OrderId, usize> = orders.iter().enumerate().map(|(i, o)| (o.id, i)).collect();
        for chunk in orders
            .iter()
            .map(|o| o.id.to_string())
            .collect::<Vec<_>>()
            .chunks(ROWS_PER_INSERT)
        {
            let mut q =
                QueryBuilder::<Any>::new("SELECT order_id, sku, qty, unit_amount FROM order_items WHERE order_id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.clone());
            }
            q.push(") ORDER BY order_id, line");
            for r in q.build().fetch_all(&self.pool).await? {
                let order_id = OrderId::parse(&r.try_get::<String, _>("order_id")?).map_err(corrupt)?;
                let Some(&i) = index.get(&order_id) else { continue };
                let currency = orders[i].total.currency;
                orders[i].lines.push(OrderLine {
                    sku: Sku::parse(r.try_get::<String, _>("sku")?).map_err(corrupt)?,
                    qty: r.try_get("qty")?,
                    unit_price: Money::new(r.try_get("unit_amount")?, currency).map_err(corrupt)?,
                });
            }
        }
        index.clear();
        Ok(orders)
    }

    pub(crate) async fn find_idempotency(
        &self,
        user: &UserId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT request_hash, order_id, response FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
        )
        .bind(user.to_string())
        .bind(key.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(IdempotencyRecord {
                user_id: user.clone(),
                key: key.to_owned(),
                request_hash: r.try_get("request_hash")?,
                order_id: OrderId::parse(&r.try_get::<String, _>("order_id")?).map_err(corrupt)?,
                response: text(&r, "response")?,
            })
        })
        .transpose()
    }
}

const ORDER_COLUMNS: &str = "SELECT id, user_id, status, total_amount, currency, payment_token, cancel_reason, \
                             created_at, updated_at, expires_at FROM orders";

pub(super) fn order_from_row(r: &AnyRow) -> Result<Order, StoreError> {
    let currency = Currency::parse(&r.try_get::<String, _>("currency")?).map_err(corrupt)?;
    let status: String = r.try_get("status")?;
    let cancel_reason: Option<String> = r.try_get("cancel_reason")?;
    Ok(Order {
        id: OrderId::parse(&r.try_get::<String, _>("id")?).map_err(corrupt)?,
        user_id: UserId::parse(r.try_get::<String, _>("user_id")?).map_err(corrupt)?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("order status {status:?}")))?,
        lines: Vec::new(),
        total: Money::new(r.try_get("total_amount")?, currency).map_err(corrupt)?,
        payment_token: r.try_get("payment_token")?,
        cancel_reason: cancel_reason.as_deref().and_then(CancelReason::parse),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}
