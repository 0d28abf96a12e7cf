//! The SQL store: one implementation for SQLite (the embedded default) and MySQL,
//! on sqlx's `Any` driver. Both dialects take the same `?`-placeholder SQL; the few
//! places where they differ go through [`Dialect`].
//!
//! The write path is [`SqlStore::commit`]: the group commit of many write-sets in one
//! transaction, one set-based statement per table ([`write_sets`]; docs/write-path.md).
//! The `inventory` table's CHECK (`0 <= reserved <= stock`) is a second line of
//! defence: if memory were ever wrong, the commit fails instead of storing an oversell.

use super::{Consumed, DeadLetter, FailedEvent, IdempotencyRecord, OutboxRow, SkuRecord, StoreError, WriteSet};
use crate::domain::events::Event;
use crate::domain::ids::{OrderId, ProductId, Sku, UserId};
use crate::domain::inventory::Reservation;
use crate::domain::money::{Currency, Money};
use crate::domain::order::{CancelReason, Order, OrderLine, OrderStatus};
use crate::domain::Millis;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, QueryBuilder, Row};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

mod refunds;
mod write_sets;

pub use refunds::DueRefund;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");

/// Rows per multi-row INSERT: well under SQLite's and MySQL's placeholder limits.
pub(super) const ROWS_PER_INSERT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
}

impl Dialect {
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Some(Self::MySql)
        } else {
            None
        }
    }
    /// SUM() is DECIMAL on MySQL, which the Any driver cannot decode: cast to a 64-bit integer.
    fn int(self, expr: &str) -> String {
        match self {
            Self::Sqlite => format!("CAST({expr} AS INTEGER)"),
            Self::MySql => format!("CAST({expr} AS SIGNED)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// SQLite `PRAGMA synchronous`: "full" or "normal".
    pub sqlite_synchronous: String,
}

#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Tasks waiting in [`Self::begin`] for a connection (`emporium_db_pool_waiters`).
    waiters: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_owned()),
            sqlx::Error::Database(db) => {
                // SQLite reports a locked or busy database as a database error: that is an outage, not a bad write.
                let msg = db.message().to_owned();
                if msg.contains("locked") || msg.contains("busy") || msg.contains("disk") || msg.contains("readonly") {
                    StoreError::Unavailable(msg)
                } else {
                    StoreError::Rejected(msg)
                }
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(err.to_string()),
            _ => StoreError::Unavailable(err.to_string()),
        }
    }
}

/// The store refused a write because an inventory snapshot would leave
/// `0 <= reserved <= stock` (MariaDB names the constraint, SQLite quotes it).
pub fn breaks_inventory_bounds(err: &StoreError) -> bool {
    matches!(err, StoreError::Rejected(msg)
        if msg.contains("inventory_bounds") || msg.contains("CHECK constraint failed: reserved"))
}

/// A long text column: MySQL reports `LONGTEXT` as a BLOB through the Any driver, so
/// read bytes when a string is refused.
pub(super) fn text(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    match row.try_get::<String, _>(column) {
        Ok(text) => Ok(text),
        Err(_) => String::from_utf8(row.try_get::<Vec<u8>, _>(column)?).map_err(corrupt),
    }
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

impl SqlStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            StoreError::Rejected(format!(
                "store.url must start with sqlite: or mysql:, got {:?}",
                redact(url)
            ))
        })?;
        let synchronous = match options.sqlite_synchronous.as_str() {
            "normal" => "NORMAL",
            _ => "FULL",
        };
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers run beside the group-commit writer; the busy timeout
                        // makes the few other writers wait instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                            .await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(Self {
            pool,
            dialect,
            waiters: Default::default(),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::MySql => &MYSQL_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}")))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Connections in use and idle, for the pool metrics.
    /// Tasks waiting for a connection to begin a transaction (group commits, row-lock
    /// orders, saga and admin writes); single-statement reads are not counted.
    pub fn pool_waiters(&self) -> i64 {
        self.waiters.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Begins a transaction, counted as a waiter until the pool hands a connection over.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        use std::sync::atomic::{AtomicI64, Ordering};
        // A guard, so a caller that gives up (timeout, dropped future) stops counting too.
        struct Waiting<'a>(&'a AtomicI64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiters);
        self.pool.begin().await
    }

    pub fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// The group commit: every write-set in one transaction, or none of them.
    pub async fn commit(&self, sets: &[&WriteSet]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        self.write_sets(&mut tx, sets).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `consumer` has already applied the event (its effect is committed).
    pub async fn is_processed(&self, consumer: &str, event_id: uuid::Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM processed_events WHERE consumer = ? AND event_id = ?")
            .bind(consumer.to_owned())
            .bind(event_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Records an event that has no effect (e.g. a payment for an order that is already
    /// final), so its redeliveries are skipped without looking at it again.
    pub async fn mark_processed(&self, consumed: &Consumed) -> Result<(), StoreError> {
        let set = WriteSet {
            consumed: Some(consumed.clone()),
            ..WriteSet::default()
        };
        match self.commit(&[&set]).await {
            Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Keeps a message a consumer gave up on in `failed_events`. A message that failed
    /// again after a replay replaces its replayed row.
    pub async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let (event_id, event_type, aggregate, body) = match &letter.event {
            Some(e) => (
                e.id.to_string(),
                e.event_type.as_str().to_owned(),
                e.aggregate_id.clone(),
                serde_json::to_string(e).map_err(corrupt)?,
            ),
            None => {
                let id = letter
                    .headers
                    .iter()
                    .find(|(k, _)| k == "event_id")
                    .and_then(|(_, v)| uuid::Uuid::parse_str(v).ok())
                    .unwrap_or_else(uuid::Uuid::new_v4);
                let key: String = letter.key.chars().take(128).collect();
                (id.to_string(), "unparseable".to_owned(), key, letter.payload.clone())
            }
        };
        let headers =
            serde_json::to_string(&letter.headers.iter().cloned().collect::<BTreeMap<_, _>>()).map_err(corrupt)?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM failed_events WHERE event_id = ? AND replayed_at IS NOT NULL")
            .bind(event_id.clone())
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO failed_events (event_id, event_type, aggregate_id, body, error, attempts, failed_at, source, topic, headers, replayable) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event_id)
        .bind(event_type)
        .bind(aggregate)
        .bind(body)
        .bind(letter.error.clone())
        .bind(letter.attempts)
        .bind(crate::domain::now_millis())
        .bind(letter.consumer.clone())
        .bind(letter.topic.clone())
        .bind(headers)
        .bind(i64::from(letter.event.is_some()))
        .execute(&mut *tx)
        .await;
        match inserted.map_err(StoreError::from) {
            // Already dead-lettered and not replayed yet: one row is enough.
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        tx.commit().await?;
        Ok(())
    }

    /// `(source, event_type, replayed)` of every failed_events row, oldest first.
    pub async fn failed_event_sources(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        let rows = sqlx::query("SELECT source, event_type, replayed_at FROM failed_events ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("source")?,
                    r.try_get("event_type")?,
                    r.try_get::<Option<i64>, _>("replayed_at")?.is_some(),
                ))
            })
            .collect()
    }

    pub async fn load_sku(&self, sku: &Sku) -> Result<Option<SkuRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT s.product_id, s.price_amount, s.currency, i.stock, i.reserved, i.seq \
             FROM skus s JOIN inventory i ON i.sku = s.sku WHERE s.sku = ?",
        )
        .bind(sku.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let reservations = sqlx::query("SELECT order_id, qty, expires_at FROM reservations WHERE sku = ?")
            .bind(sku.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let order = OrderId::parse(&r.try_get::<String, _>("order_id")?).map_err(corrupt)?;
                Ok((
                    order,
                    Reservation {
                        qty: r.try_get("qty")?,
                        expires_at: r.try_get("expires_at")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let currency = Currency::parse(&row.try_get::<String, _>("currency")?).map_err(corrupt)?;
        Ok(Some(SkuRecord {
            sku: sku.clone(),
            product_id: ProductId::parse(&row.try_get::<String, _>("product_id")?).map_err(corrupt)?,
            unit_price: Money::new(row.try_get("price_amount")?, currency).map_err(corrupt)?,
            stock: row.try_get("stock")?,
            reserved: row.try_get("reserved")?,
            seq: row.try_get("seq")?,
            reservations,
        }))
    }

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
    pub async fn orders_in_flight(&self) -> Result<Vec<Order>, StoreError> {
        let rows = sqlx::query(&format!(
            "{ORDER_COLUMNS} WHERE status IN ('PENDING_PAYMENT', 'PAID') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        self.with_lines(rows).await
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

    pub async fn find_idempotency(&self, user: &UserId, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
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

    /// The oldest unpublished outbox rows, in id order.
    pub async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body, attempts, next_attempt_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    event: serde_json::from_str(&text(r, "body")?).map_err(corrupt)?,
                    attempts: r.try_get("attempts")?,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                })
            })
            .collect()
    }

    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    pub async fn outbox_mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        let now = crate::domain::now_millis();
        // One fixed statement text whatever the number of ids (a bound JSON array), so
        // the relay does not prepare a new statement for every batch size.
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let bound = serde_json::to_string(chunk).map_err(corrupt)?;
            let query = match self.dialect {
                Dialect::Sqlite => {
                    sqlx::query("UPDATE outbox SET published_at = ? WHERE id IN (SELECT value FROM json_each(?))")
                        .bind(now)
                        .bind(bound)
                }
                Dialect::MySql => sqlx::query(
                    "UPDATE outbox o JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j ON o.id = j.id \
                     SET o.published_at = ?",
                )
                .bind(bound)
                .bind(now),
            };
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    pub async fn outbox_defer(
        &self,
        id: i64,
        attempts: i64,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?")
            .bind(attempts)
            .bind(next_attempt_at)
            .bind(error.to_owned())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives up on an outbox row: it moves to `failed_events`, from where `replay` re-publishes it.
    pub async fn outbox_fail(&self, row: &OutboxRow, error: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO failed_events (event_id, event_type, aggregate_id, body, error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.event.id.to_string())
        .bind(row.event.event_type.as_str())
        .bind(row.event.aggregate_id.clone())
        .bind(serde_json::to_string(&row.event).map_err(corrupt)?)
        .bind(error.to_owned())
        .bind(row.attempts)
        .bind(crate::domain::now_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox WHERE id = ?")
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn failed_events(&self, limit: i64) -> Result<Vec<FailedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body, error, attempts FROM failed_events WHERE replayed_at IS NULL AND replayable = 1 ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FailedEvent {
                    id: r.try_get("id")?,
                    event: serde_json::from_str(&text(r, "body")?).map_err(corrupt)?,
                    error: text(r, "error")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Puts failed events back into the outbox (with fresh attempts) and marks them
    /// replayed; refunds given up on are requested again. Returns how many in all.
    pub async fn replay_failed(&self) -> Result<usize, StoreError> {
        let refunds = self.replay_failed_refunds(crate::domain::now_millis()).await?;
        let failed = self.failed_events(10_000).await?;
        let mut tx = self.begin().await?;
        let events: Vec<&Event> = failed.iter().map(|f| &f.event).collect();
        // The event keeps its id, so consumers that saw it once still deduplicate it.
        for f in &failed {
            sqlx::query("DELETE FROM outbox WHERE event_id = ?")
                .bind(f.event.id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        insert_outbox(&mut tx, &events).await?;
        for f in &failed {
            sqlx::query("UPDATE failed_events SET replayed_at = ? WHERE id = ?")
                .bind(crate::domain::now_millis())
                .bind(f.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(failed.len() + refunds)
    }

    /// Offline invariant check over inventory, reservations, journal and orders.
    /// Returns one line per inconsistency; empty means consistent.
    pub async fn reconcile(&self) -> Result<Vec<String>, StoreError> {
        let d = self.dialect;
        let sum = |e: &str| d.int(&format!("COALESCE(SUM({e}), 0)"));
        let checks: Vec<(String, String)> = vec![
            (
                "reserved outside 0..=stock".into(),
                "SELECT sku, stock, reserved FROM inventory WHERE reserved < 0 OR reserved > stock".into(),
            ),
            (
                "snapshot reserved differs from its live reservations".into(),
                format!(
                    "SELECT i.sku, i.reserved, {} AS held FROM inventory i LEFT JOIN reservations r ON r.sku = i.sku \
                     GROUP BY i.sku, i.reserved HAVING i.reserved <> {}",
                    sum("r.qty"),
                    sum("r.qty")
                ),
            ),
            (
                "snapshot differs from the sum of its journal".into(),
                format!(
                    "SELECT i.sku, i.stock, i.reserved, {} AS journal_stock, {} AS journal_reserved \
                     FROM inventory i LEFT JOIN inventory_journal j ON j.sku = i.sku GROUP BY i.sku, i.stock, i.reserved \
                     HAVING i.stock <> {} OR i.reserved <> {}",
                    sum("j.stock_delta"),
                    sum("j.reserved_delta"),
                    sum("j.stock_delta"),
                    sum("j.reserved_delta")
                ),
            ),
            (
                "reservation without an unfinished order".into(),
                "SELECT r.sku, r.order_id, o.status FROM reservations r LEFT JOIN orders o ON o.id = r.order_id \
                 WHERE o.id IS NULL OR o.status NOT IN ('PENDING_PAYMENT', 'PAID')"
                    .into(),
            ),
            (
                "unfinished order whose reservation does not match its items".into(),
                format!(
                    "SELECT o.id, it.sku, {} AS wanted, r.qty AS held FROM orders o \
                     JOIN order_items it ON it.order_id = o.id \
                     LEFT JOIN reservations r ON r.order_id = o.id AND r.sku = it.sku \
                     WHERE o.status IN ('PENDING_PAYMENT', 'PAID') GROUP BY o.id, it.sku, r.qty \
                     HAVING r.qty IS NULL OR r.qty <> {}",
                    sum("it.qty"),
                    sum("it.qty")
                ),
            ),
            (
                "order confirmed more than once".into(),
                "SELECT order_id, sku, COUNT(*) AS confirms FROM inventory_journal WHERE kind = 'confirm' \
                 GROUP BY order_id, sku HAVING COUNT(*) > 1"
                    .into(),
            ),
            (
                "completed order without a confirm for one of its SKUs".into(),
                "SELECT o.id, it.sku FROM orders o JOIN order_items it ON it.order_id = o.id WHERE o.status = 'COMPLETED' \
                 AND NOT EXISTS (SELECT 1 FROM inventory_journal j WHERE j.order_id = o.id AND j.sku = it.sku AND j.kind = 'confirm')"
                    .into(),
            ),
            (
                "confirm journaled for an order that is not COMPLETED".into(),
                "SELECT j.sku, j.order_id, o.status FROM inventory_journal j LEFT JOIN orders o ON o.id = j.order_id \
                 WHERE j.kind = 'confirm' AND (o.id IS NULL OR o.status <> 'COMPLETED')"
                    .into(),
            ),
            (
                "journal entry for an order that does not exist".into(),
                "SELECT j.sku, j.seq, j.order_id FROM inventory_journal j LEFT JOIN orders o ON o.id = j.order_id \
                 WHERE j.order_id IS NOT NULL AND o.id IS NULL"
                    .into(),
            ),
            (
                "sold more than was ever received".into(),
                format!(
                    "SELECT sku, {} AS sold, {} AS received FROM inventory_journal GROUP BY sku HAVING {} > {}",
                    sum("CASE WHEN kind = 'confirm' THEN qty ELSE 0 END"),
                    sum("CASE WHEN kind = 'set_stock' AND stock_delta > 0 THEN stock_delta ELSE 0 END"),
                    sum("CASE WHEN kind = 'confirm' THEN qty ELSE 0 END"),
                    sum("CASE WHEN kind = 'set_stock' AND stock_delta > 0 THEN stock_delta ELSE 0 END"),
                ),
            ),
        ];
        let mut problems = Vec::new();
        for (what, sql) in checks {
            for row in sqlx::query(&sql).fetch_all(&self.pool).await? {
                problems.push(format!("{what}: {}", describe_row(&row)));
            }
        }
        Ok(problems)
    }

    /// Inventory totals (stock, reserved) of one SKU straight from the snapshot table.
    pub async fn inventory_row(&self, sku: &Sku) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query("SELECT stock, reserved FROM inventory WHERE sku = ?")
            .bind(sku.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("stock")?, r.try_get("reserved")?)))
            .transpose()
    }
}

const ORDER_COLUMNS: &str = "SELECT id, user_id, status, total_amount, currency, payment_token, cancel_reason, \
                             created_at, updated_at, expires_at FROM orders";

fn order_from_row(r: &AnyRow) -> Result<Order, StoreError> {
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

pub(super) async fn insert_outbox(tx: &mut sqlx::Transaction<'_, Any>, events: &[&Event]) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let bodies = chunk
            .iter()
            .map(|e| serde_json::to_string(e).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        let mut q =
            QueryBuilder::<Any>::new("INSERT INTO outbox (event_id, event_type, aggregate_id, body, created_at) ");
        q.push_values(chunk.iter().zip(bodies), |mut b, (e, body)| {
            b.push_bind(e.id.to_string())
                .push_bind(e.event_type.as_str())
                .push_bind(e.aggregate_id.clone())
                .push_bind(body)
                .push_bind(e.occurred_at);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Renders a result row as `col=value, ...` for reconcile reports.
fn describe_row(row: &AnyRow) -> String {
    use sqlx::Column;
    row.columns()
        .iter()
        .map(|c| {
            let i = c.ordinal();
            let value = row
                .try_get::<Option<i64>, _>(i)
                .map(|v| v.map_or("NULL".to_owned(), |v| v.to_string()))
                .or_else(|_| {
                    row.try_get::<Option<String>, _>(i)
                        .map(|v| v.unwrap_or_else(|| "NULL".into()))
                })
                .unwrap_or_else(|_| "?".into());
            format!("{}={}", c.name(), value)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A store URL with its password hidden, for error messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
