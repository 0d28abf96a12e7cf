//! The group commit's SQL: how a batch of write-sets becomes durable.
//!
//! Every per-order write of a batch goes out as ONE set-based statement per table (and
//! per shape), whatever the number of orders in it: the rows travel as one bound JSON
//! array of positional arrays, which `json_each` (SQLite) or `JSON_TABLE` (MariaDB/MySQL)
//! expand inside the server. Three things follow from that, each measured (see
//! docs/write-path.md):
//! - a batch costs the same handful of round trips whether it holds 2 orders or 500,
//!   so statements per order fall as the load (and the batch) grows;
//! - every shape has one fixed statement text, so each connection prepares it once and
//!   the prepared-statement cache never churns (a multi-row `VALUES (…), (…)` list makes
//!   a new text for every row count);
//! - the guarded status change (`… WHERE status = <expected>`) stays guarded: the
//!   statement reports how many rows it matched, and a batch where one order was not in
//!   its expected state fails as a whole, exactly like the per-order statement did, so
//!   the write-behind's one-by-one retry isolates the culprit.
//!
//! Statements run in a fixed table order (orders, items, keys, status, journal,
//! reservations, snapshots, outbox, processed events), which keeps two concurrent
//! transactions from locking the same tables in opposite orders.

use super::{corrupt, Dialect, SqlStore};
use crate::domain::events::Event;
use crate::domain::ids::Sku;
use crate::domain::inventory::ChangeKind;
use crate::domain::order::Order;
use crate::persistence::{Consumed, IdempotencyRecord, JournalEntry, StatusChange, StoreError, WriteSet};
use serde_json::{json, Value};
use sqlx::Any;
use std::collections::BTreeMap;

/// Rows per statement. The text does not depend on it (the rows are one bound value);
/// it only bounds the size of that value (MariaDB's `max_allowed_packet`).
const ROWS_PER_STATEMENT: usize = 1000;

/// One set-based statement in both dialects, taking one JSON array of rows.
struct Shape {
    sqlite: &'static str,
    mysql: &'static str,
}

impl Shape {
    fn text(&self, dialect: Dialect) -> &'static str {
        match dialect {
            Dialect::Sqlite => self.sqlite,
            Dialect::MySql => self.mysql,
        }
    }
}

// SQLite reads array element N with `value->>N`; `ORDER BY key` keeps the array order
// (outbox ids must follow the event order). MariaDB's JSON_TABLE names a type per column;
// join keys are declared with the tables' own collation (utf8mb4_bin) so the join uses
// the primary key, and inserted text is TEXT so an over-long value fails the INSERT (as
// it did before) instead of being cut short silently.

const INSERT_ORDERS: Shape = Shape {
    sqlite: "INSERT INTO orders (id, user_id, status, total_amount, currency, payment_token, cancel_reason, created_at, updated_at, expires_at) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7, value->>8, value->>9 \
             FROM json_each(?) ORDER BY key",
    mysql: "INSERT INTO orders (id, user_id, status, total_amount, currency, payment_token, cancel_reason, created_at, updated_at, expires_at) \
            SELECT j.id, j.user_id, j.status, j.total_amount, j.currency, j.payment_token, j.cancel_reason, j.created_at, j.updated_at, j.expires_at \
            FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, id TEXT PATH '$[0]', user_id TEXT PATH '$[1]', status TEXT PATH '$[2]', \
            total_amount BIGINT PATH '$[3]', currency TEXT PATH '$[4]', payment_token TEXT PATH '$[5]', cancel_reason TEXT PATH '$[6]', \
            created_at BIGINT PATH '$[7]', updated_at BIGINT PATH '$[8]', expires_at BIGINT PATH '$[9]')) AS j ORDER BY j.n",
};

const INSERT_ITEMS: Shape = Shape {
    sqlite: "INSERT INTO order_items (order_id, line, sku, qty, unit_amount) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?) ORDER BY key",
    mysql: "INSERT INTO order_items (order_id, line, sku, qty, unit_amount) \
            SELECT j.order_id, j.line, j.sku, j.qty, j.unit_amount \
            FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, order_id TEXT PATH '$[0]', line BIGINT PATH '$[1]', \
            sku TEXT PATH '$[2]', qty BIGINT PATH '$[3]', unit_amount BIGINT PATH '$[4]')) AS j ORDER BY j.n",
};

const INSERT_KEYS: Shape = Shape {
    sqlite: "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, order_id, response, created_at) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each(?) ORDER BY key",
    mysql: "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, order_id, response, created_at) \
            SELECT j.user_id, j.idem_key, j.request_hash, j.order_id, j.response, j.created_at \
            FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, user_id TEXT PATH '$[0]', idem_key TEXT PATH '$[1]', \
            request_hash TEXT PATH '$[2]', order_id TEXT PATH '$[3]', response LONGTEXT PATH '$[4]', created_at BIGINT PATH '$[5]')) AS j ORDER BY j.n",
};

/// The guarded status change: a row is updated only while it is in the expected status.
const UPDATE_STATUS: Shape = Shape {
    sqlite: "UPDATE orders SET status = j.to_status, cancel_reason = j.cancel_reason, updated_at = j.at \
             FROM (SELECT value->>0 AS id, value->>1 AS from_status, value->>2 AS to_status, value->>3 AS cancel_reason, \
             value->>4 AS at FROM json_each(?)) AS j WHERE orders.id = j.id AND orders.status = j.from_status",
    mysql: "UPDATE orders o JOIN JSON_TABLE(?, '$[*]' COLUMNS (id VARCHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]', \
            from_status VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[1]', to_status TEXT PATH '$[2]', \
            cancel_reason TEXT PATH '$[3]', at BIGINT PATH '$[4]')) AS j ON o.id = j.id AND o.status = j.from_status \
            SET o.status = j.to_status, o.cancel_reason = j.cancel_reason, o.updated_at = j.at",
};

const INSERT_JOURNAL: Shape = Shape {
    sqlite: "INSERT INTO inventory_journal (sku, seq, kind, order_id, qty, stock_delta, reserved_delta, created_at) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7 FROM json_each(?) ORDER BY key",
    mysql: "INSERT INTO inventory_journal (sku, seq, kind, order_id, qty, stock_delta, reserved_delta, created_at) \
            SELECT j.sku, j.seq, j.kind, j.order_id, j.qty, j.stock_delta, j.reserved_delta, j.created_at \
            FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, sku TEXT PATH '$[0]', seq BIGINT PATH '$[1]', kind TEXT PATH '$[2]', \
            order_id TEXT PATH '$[3]', qty BIGINT PATH '$[4]', stock_delta BIGINT PATH '$[5]', reserved_delta BIGINT PATH '$[6]', \
            created_at BIGINT PATH '$[7]')) AS j ORDER BY j.n",
};

const INSERT_RESERVATIONS: Shape = Shape {
    sqlite: "INSERT INTO reservations (sku, order_id, qty, expires_at) \
             SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?) ORDER BY key",
    mysql: "INSERT INTO reservations (sku, order_id, qty, expires_at) SELECT j.sku, j.order_id, j.qty, j.expires_at \
            FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, sku TEXT PATH '$[0]', order_id TEXT PATH '$[1]', \
            qty BIGINT PATH '$[2]', expires_at BIGINT PATH '$[3]')) AS j ORDER BY j.n",
};

const DELETE_RESERVATIONS: Shape = Shape {
    sqlite: "DELETE FROM reservations WHERE (sku, order_id) IN (SELECT value->>0, value->>1 FROM json_each(?))",
    mysql: "DELETE r FROM reservations r JOIN JSON_TABLE(?, '$[*]' COLUMNS ( \
            sku VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]', \
            order_id VARCHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[1]')) AS j \
            ON r.sku = j.sku AND r.order_id = j.order_id",
};

/// The coalesced snapshot update: one row per SKU of the batch, deltas summed.
const UPDATE_SNAPSHOTS: Shape = Shape {
    sqlite: "UPDATE inventory SET stock = inventory.stock + j.stock_delta, reserved = inventory.reserved + j.reserved_delta, \
             seq = CASE WHEN inventory.seq > j.seq THEN inventory.seq ELSE j.seq END, updated_at = j.at \
             FROM (SELECT value->>0 AS sku, value->>1 AS stock_delta, value->>2 AS reserved_delta, value->>3 AS seq, \
             value->>4 AS at FROM json_each(?)) AS j WHERE inventory.sku = j.sku",
    mysql: "UPDATE inventory i JOIN JSON_TABLE(?, '$[*]' COLUMNS (sku VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[0]', \
            stock_delta BIGINT PATH '$[1]', reserved_delta BIGINT PATH '$[2]', seq BIGINT PATH '$[3]', at BIGINT PATH '$[4]')) AS j \
            ON i.sku = j.sku \
            SET i.stock = i.stock + j.stock_delta, i.reserved = i.reserved + j.reserved_delta, \
            i.seq = CASE WHEN i.seq > j.seq THEN i.seq ELSE j.seq END, i.updated_at = j.at",
};

const INSERT_OUTBOX: Shape = Shape {
    sqlite: "INSERT INTO outbox (event_id, event_type, aggregate_id, body, created_at) \
             SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each(?) ORDER BY key",
    mysql: "INSERT INTO outbox (event_id, event_type, aggregate_id, body, created_at) \
            SELECT j.event_id, j.event_type, j.aggregate_id, j.body, j.created_at \
            FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, event_id TEXT PATH '$[0]', event_type TEXT PATH '$[1]', \
            aggregate_id TEXT PATH '$[2]', body LONGTEXT PATH '$[3]', created_at BIGINT PATH '$[4]')) AS j ORDER BY j.n",
};

const INSERT_PROCESSED: Shape = Shape {
    sqlite: "INSERT INTO processed_events (consumer, event_id, processed_at) \
             SELECT value->>0, value->>1, value->>2 FROM json_each(?) ORDER BY key",
    mysql:
        "INSERT INTO processed_events (consumer, event_id, processed_at) SELECT j.consumer, j.event_id, j.processed_at \
            FROM JSON_TABLE(?, '$[*]' COLUMNS (n FOR ORDINALITY, consumer TEXT PATH '$[0]', event_id TEXT PATH '$[1]', \
            processed_at BIGINT PATH '$[2]')) AS j ORDER BY j.n",
};

impl SqlStore {
    /// Runs `shape` over `rows` (nothing at all for no rows); returns the rows it matched.
    async fn set_based(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        shape: &Shape,
        rows: &[Value],
    ) -> Result<u64, StoreError> {
        let mut affected = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let bound = serde_json::to_string(chunk).map_err(corrupt)?;
            affected += sqlx::query(shape.text(self.dialect()))
                .bind(bound)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
        Ok(affected)
    }

    /// Writes the write-sets inside an open transaction: one statement per table, or on
    /// MariaDB/MySQL all of them in one `CALL` (migrations/mysql/0005_write_batch.sql)
    /// when every table's rows fit one statement.
    pub(in crate::persistence) async fn write_sets(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        sets: &[&WriteSet],
    ) -> Result<(), StoreError> {
        let rows = BatchRows::of(sets)?;
        if self.dialect() == Dialect::MySql && rows.fit_one_call() {
            return rows.call(tx).await;
        }
        if !rows.orders.is_empty() {
            self.set_based(tx, &INSERT_ORDERS, &rows.orders).await?;
            self.set_based(tx, &INSERT_ITEMS, &rows.items).await?;
        }
        self.set_based(tx, &INSERT_KEYS, &rows.keys).await?;
        let matched = self.set_based(tx, &UPDATE_STATUS, &rows.status).await?;
        if matched != rows.status.len() as u64 {
            // Which one is for the one-by-one retry to find: a batch of one names its order.
            return Err(StoreError::Rejected(match rows.status.as_slice() {
                [one] => format!("order {} is not {} any more", one[0], one[1]).into(),
                _ => "an order of the batch is not in its expected status any more".into(),
            }));
        }
        self.journal_statements(tx, &rows.journal).await?;
        self.set_based(tx, &INSERT_OUTBOX, &rows.outbox).await?;
        // A duplicate is a unique violation: the whole effect is refused, not applied twice.
        self.set_based(tx, &INSERT_PROCESSED, &rows.processed).await?;
        Ok(())
    }

    /// Journal rows, reservation rows, and one coalesced snapshot update per SKU.
    pub(in crate::persistence) async fn apply_journal(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        journal: &[&JournalEntry],
    ) -> Result<(), StoreError> {
        self.journal_statements(tx, &JournalRows::of(journal)).await
    }

    async fn journal_statements(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        rows: &JournalRows,
    ) -> Result<(), StoreError> {
        self.set_based(tx, &INSERT_JOURNAL, &rows.journal).await?;
        self.set_based(tx, &INSERT_RESERVATIONS, &rows.reserve).await?;
        let deleted = self.set_based(tx, &DELETE_RESERVATIONS, &rows.settle).await?;
        if deleted != rows.settle.len() as u64 {
            return Err(StoreError::Rejected(
                "a confirm or release has no stored reservation".into(),
            ));
        }
        let updated = self.set_based(tx, &UPDATE_SNAPSHOTS, &rows.snapshots).await?;
        if updated != rows.snapshots.len() as u64 {
            let skus = rows
                .snapshots
                .iter()
                .map(|r| r[0].to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(StoreError::Rejected(
                format!("no inventory row for one of {skus}").into(),
            ));
        }
        Ok(())
    }
}

/// Every row a batch writes, per table, as positional JSON arrays.
struct BatchRows {
    orders: Vec<Value>,
    items: Vec<Value>,
    keys: Vec<Value>,
    status: Vec<Value>,
    journal: JournalRows,
    outbox: Vec<Value>,
    processed: Vec<Value>,
}

/// The rows an inventory journal writes: entries, new reservations, settled
/// reservations, and one coalesced snapshot delta per SKU.
struct JournalRows {
    journal: Vec<Value>,
    reserve: Vec<Value>,
    settle: Vec<Value>,
    snapshots: Vec<Value>,
}

impl BatchRows {
    fn of(sets: &[&WriteSet]) -> Result<Self, StoreError> {
        let now = crate::domain::now_millis();
        let orders: Vec<&Order> = sets.iter().filter_map(|s| s.new_order.as_ref()).collect();
        let journal: Vec<&JournalEntry> = sets.iter().flat_map(|s| s.journal.iter()).collect();
        let events: Vec<&Event> = sets.iter().flat_map(|s| s.events.iter()).collect();
        Ok(Self {
            orders: orders
                .iter()
                .map(|o| {
                    json!([
                        o.id.to_string(),
                        o.user_id.to_string(),
                        o.status.as_str(),
                        o.total.amount,
                        o.total.currency.to_string(),
                        o.payment_token,
                        o.cancel_reason.map(|r| r.as_str()),
                        o.created_at,
                        o.updated_at,
                        o.expires_at
                    ])
                })
                .collect(),
            items: orders
                .iter()
                .flat_map(|o| {
                    o.lines.iter().enumerate().map(move |(i, l)| {
                        json!([
                            o.id.to_string(),
                            i as i64,
                            l.sku.to_string(),
                            l.qty,
                            l.unit_price.amount
                        ])
                    })
                })
                .collect(),
            keys: sets
                .iter()
                .filter_map(|s| s.idempotency.as_ref())
                .map(|k: &IdempotencyRecord| {
                    json!([
                        k.user_id.to_string(),
                        k.key,
                        k.request_hash,
                        k.order_id.to_string(),
                        k.response,
                        now
                    ])
                })
                .collect(),
            status: sets
                .iter()
                .filter_map(|s| s.status_change.as_ref())
                .map(|c: &StatusChange| {
                    json!([
                        c.order_id.to_string(),
                        c.from.as_str(),
                        c.to.as_str(),
                        c.cancel_reason.map(|r| r.as_str()),
                        c.at
                    ])
                })
                .collect(),
            journal: JournalRows::of(&journal),
            outbox: outbox_rows(&events)?,
            processed: sets
                .iter()
                .filter_map(|s| s.consumed.as_ref())
                .map(|c: &Consumed| json!([c.consumer, c.event_id.to_string(), now]))
                .collect(),
        })
    }

    fn fit_one_call(&self) -> bool {
        let j = &self.journal;
        [
            &self.orders,
            &self.items,
            &self.keys,
            &self.status,
            &j.journal,
            &j.reserve,
            &j.settle,
            &j.snapshots,
            &self.outbox,
            &self.processed,
        ]
        .iter()
        .all(|rows| rows.len() <= ROWS_PER_STATEMENT)
    }

    /// The whole batch in one round trip: the procedure runs the same statements with
    /// the same guards (SQLSTATE 45000 fails the batch, a duplicate key is a conflict).
    async fn call(&self, tx: &mut sqlx::Transaction<'_, Any>) -> Result<(), StoreError> {
        let array = |rows: &[Value]| -> Result<Option<String>, StoreError> {
            if rows.is_empty() {
                Ok(None)
            } else {
                serde_json::to_string(rows).map(Some).map_err(corrupt)
            }
        };
        let j = &self.journal;
        sqlx::query("CALL emporium_write_batch(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(array(&self.orders)?)
            .bind(array(&self.items)?)
            .bind(array(&self.keys)?)
            .bind(array(&self.status)?)
            .bind(self.status.len() as i64)
            .bind(array(&j.journal)?)
            .bind(array(&j.reserve)?)
            .bind(array(&j.settle)?)
            .bind(j.settle.len() as i64)
            .bind(array(&j.snapshots)?)
            .bind(j.snapshots.len() as i64)
            .bind(array(&self.outbox)?)
            .bind(array(&self.processed)?)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

impl JournalRows {
    fn of(journal: &[&JournalEntry]) -> Self {
        let order = |e: &JournalEntry| e.change.order.map(|o| o.to_string());
        // Coalesce: one snapshot row per SKU per batch, however many orders touched it.
        let mut per_sku: BTreeMap<&Sku, (i64, i64, i64)> = BTreeMap::new();
        for e in journal {
            let acc = per_sku.entry(&e.sku).or_insert((0, 0, 0));
            acc.0 += e.change.stock_delta;
            acc.1 += e.change.reserved_delta;
            acc.2 = acc.2.max(e.seq);
        }
        let now = crate::domain::now_millis();
        Self {
            journal: journal
                .iter()
                .map(|e| {
                    json!([
                        e.sku.to_string(),
                        e.seq,
                        e.change.kind.as_str(),
                        order(e),
                        e.change.qty,
                        e.change.stock_delta,
                        e.change.reserved_delta,
                        e.at
                    ])
                })
                .collect(),
            reserve: journal
                .iter()
                .filter(|e| e.change.kind == ChangeKind::Reserve)
                .map(|e| {
                    json!([
                        e.sku.to_string(),
                        order(e).unwrap_or_default(),
                        e.change.qty,
                        e.change.expires_at.unwrap_or_default()
                    ])
                })
                .collect(),
            settle: journal
                .iter()
                .filter(|e| matches!(e.change.kind, ChangeKind::Confirm | ChangeKind::Release))
                .map(|e| json!([e.sku.to_string(), order(e).unwrap_or_default()]))
                .collect(),
            snapshots: per_sku
                .iter()
                .map(|(sku, (stock_delta, reserved_delta, seq))| {
                    json!([sku.to_string(), stock_delta, reserved_delta, seq, now])
                })
                .collect(),
        }
    }
}

fn outbox_rows(events: &[&Event]) -> Result<Vec<Value>, StoreError> {
    events
        .iter()
        .map(|e| {
            Ok(json!([
                e.id.to_string(),
                e.event_type.as_str(),
                e.aggregate_id,
                serde_json::to_string(e).map_err(corrupt)?,
                e.occurred_at
            ]))
        })
        .collect()
}
