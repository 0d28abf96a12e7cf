//! The group commit's SQL: how a batch of write-sets becomes durable.
//!
//! Every per-order write of a batch goes out as a few set-based statements per table
//! (and per shape), whatever the number of orders in it: prepared multi-row statements
//! whose rows are bound values (`INSERT … VALUES (?, …), (?, …)`; updates and deletes find
//! their rows by primary key, `id IN (…)`, and set columns by `CASE id WHEN …`). One text
//! serves both engines. Each statement exists for a few
//! fixed row counts ([`SIZES`]), so a batch of N rows is at most a handful of executions
//! and every connection prepares each text once (the statement cache never churns). No
//! JSON anywhere on this path: the database parses nothing but its own protocol (see
//! docs/write-path.md for what each alternative cost).
//!
//! The guarded status change stays guarded: the statement reports how many rows it
//! matched, and a batch where one order was not in its expected state fails as a whole,
//! so the write-behind's one-by-one retry isolates the culprit.
//!
//! Statements run in a fixed table order (orders, items, keys, status, journal,
//! reservations, snapshots, outbox, processed events), which keeps two concurrent
//! transactions from locking the same tables in opposite orders.

use super::outbox::outbox_rows;
use super::SqlStore;
use crate::domain::events::Event;
use crate::domain::ids::Sku;
use crate::domain::inventory::ChangeKind;
use crate::domain::order::Order;
use crate::persistence::{JournalEntry, StatusChange, StoreError, WriteSet};
use sqlx::Any;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The row counts every statement is prepared for, largest first. A batch's rows go out
/// greedily in these sizes (161 rows: 2 × 64, 2 × 16, 1 × 1), so a statement executes at
/// most 3 times per size, and a connection holds at most 5 texts per shape.
pub(super) const SIZES: [usize; 5] = [256, 64, 16, 4, 1];

/// The size a key list of `rows` is padded to: the smallest of [`SIZES`] that holds it
/// (the largest for more).
pub(super) fn covering_size(rows: usize) -> usize {
    SIZES.iter().rev().copied().find(|&s| s >= rows).unwrap_or(SIZES[0])
}

/// One bound value of a row.
enum Param<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Null,
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(s: &'a str) -> Self {
        Param::Text(Cow::Borrowed(s))
    }
}

impl From<String> for Param<'_> {
    fn from(s: String) -> Self {
        Param::Text(Cow::Owned(s))
    }
}

impl From<i64> for Param<'_> {
    fn from(n: i64) -> Self {
        Param::Int(n)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// The rows of one statement, flat: `width` values per row.
struct Rows<'a> {
    width: usize,
    values: Vec<Param<'a>>,
}

impl<'a> Rows<'a> {
    fn new(width: usize) -> Self {
        Self {
            width,
            values: Vec::new(),
        }
    }

    fn push<const N: usize>(&mut self, row: [Param<'a>; N]) {
        debug_assert_eq!(N, self.width, "a row of the wrong width");
        self.values.extend(row);
    }

    fn len(&self) -> usize {
        self.values.len() / self.width
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The text value of column `column` in row `row` (for error messages).
    fn text(&self, row: usize, column: usize) -> &str {
        match &self.values[row * self.width + column] {
            Param::Text(t) => t,
            _ => "",
        }
    }
}

/// One statement (the same text on SQLite and MariaDB/MySQL), built once per size in
/// [`SIZES`] and kept.
pub(super) struct Shape {
    build: fn(usize) -> String,
    texts: OnceLock<Vec<String>>,
}

impl Shape {
    pub(super) const fn new(build: fn(usize) -> String) -> Self {
        Self {
            build,
            texts: OnceLock::new(),
        }
    }

    /// The text for `size` rows (one of [`SIZES`]).
    pub(super) fn text(&self, size: usize) -> &str {
        let texts = self
            .texts
            .get_or_init(|| SIZES.iter().map(|&n| (self.build)(n)).collect());
        &texts[SIZES.iter().position(|&s| s == size).unwrap_or(SIZES.len() - 1)]
    }
}

/// `(?, ?, ?), (?, ?, ?)`: `rows` tuples of `width` placeholders.
fn tuples(width: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; width].join(", "));
    vec![one; rows].join(", ")
}

/// `CASE key WHEN ? THEN ? … END`: the new value of a column, per row.
fn case_of(key: &str, rows: usize) -> String {
    format!("CASE {key} {} END", vec!["WHEN ? THEN ?"; rows].join(" "))
}

fn insert_into(head: &str, width: usize, rows: usize) -> String {
    format!("{head} VALUES {}", tuples(width, rows))
}

static INSERT_ORDERS: Shape = Shape::new(|n| {
    insert_into(
        "INSERT INTO orders (id, user_id, status, total_amount, currency, payment_token, cancel_reason, created_at, updated_at, expires_at)",
        10,
        n,
    )
});

static INSERT_ITEMS: Shape =
    Shape::new(|n| insert_into("INSERT INTO order_items (order_id, line, sku, qty, unit_amount)", 5, n));

static INSERT_KEYS: Shape = Shape::new(|n| {
    insert_into(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_hash, order_id, response, created_at)",
        6,
        n,
    )
});

/// The guarded status change: a row is updated only while it is in the expected status.
/// Binds: per row (id, to), (id, reason), (id, at) for the three CASEs, the ids, then
/// (id, from) for the guard. The rows are found by `id IN (…)` (a primary-key lookup each
/// on both engines; a row-value `(id, status) IN …` made MariaDB read the status index
/// and SQLite scan the table).
static UPDATE_STATUS: Shape = Shape::new(|n| {
    format!(
        "UPDATE orders SET status = {}, cancel_reason = {}, updated_at = {} WHERE id IN ({}) AND status = {}",
        case_of("id", n),
        case_of("id", n),
        case_of("id", n),
        vec!["?"; n].join(", "),
        case_of("id", n),
    )
});

static INSERT_JOURNAL: Shape = Shape::new(|n| {
    insert_into(
        "INSERT INTO inventory_journal (sku, seq, kind, order_id, qty, stock_delta, reserved_delta, created_at)",
        8,
        n,
    )
});

static INSERT_RESERVATIONS: Shape =
    Shape::new(|n| insert_into("INSERT INTO reservations (sku, order_id, qty, expires_at)", 4, n));

/// One primary-key lookup per term on both engines (SQLite's multi-index OR, MariaDB's
/// range access); a row-value `IN` made SQLite scan the table.
static DELETE_RESERVATIONS: Shape = Shape::new(|n| {
    format!(
        "DELETE FROM reservations WHERE {}",
        vec!["(sku = ? AND order_id = ?)"; n].join(" OR ")
    )
});

/// The coalesced snapshot update: one row per SKU of the batch, deltas summed.
/// Binds: per SKU (sku, stock delta), (sku, reserved delta), (sku, seq) for the CASEs,
/// then the time, then the SKUs.
static UPDATE_SNAPSHOTS: Shape = Shape::new(|n| {
    format!(
        "UPDATE inventory SET stock = stock + {}, reserved = reserved + {}, \
         seq = CASE WHEN seq > {seq} THEN seq ELSE {seq} END, updated_at = ? WHERE sku IN ({})",
        case_of("sku", n),
        case_of("sku", n),
        vec!["?"; n].join(", "),
        seq = case_of("sku", n),
    )
});

/// The batch's events, a row per [`super::outbox::EVENTS_PER_ROW`] (most batches: a few
/// rows). Also what `insert_outbox` runs, one row at a time, for the other writers.
pub(super) static INSERT_OUTBOX: Shape =
    Shape::new(|n| insert_into("INSERT INTO outbox (events, body, created_at)", 3, n));

static INSERT_PROCESSED: Shape =
    Shape::new(|n| insert_into("INSERT INTO processed_events (consumer, event_id, processed_at)", 3, n));

fn bind<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    param: &'q Param<'_>,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    match param {
        Param::Text(t) => query.bind(t.as_ref()),
        Param::Int(n) => query.bind(*n),
        Param::Null => query.bind(None::<&str>),
    }
}

/// How a statement's binds are laid out from its rows.
#[derive(Clone, Copy)]
enum Layout {
    /// Each row's values in order.
    Insert,
    /// Each row's values in order; rows found by key (padding allowed).
    Delete,
    /// The guarded status change: rows are (id, from, to, reason, at).
    Status,
    /// The snapshot update: rows are (sku, stock delta, reserved delta, seq), plus the time.
    Snapshots(i64),
}

impl SqlStore {
    /// Runs `shape` over `rows` (nothing at all for no rows); returns the rows it matched.
    ///
    /// Inserts go out in chunks of the fixed [`SIZES`], largest first. Statements that find
    /// their rows by key run once per 256 rows: the key list is padded to the next size by
    /// repeating its last row, which matches the same row again (an `IN` list or an `OR`
    /// counts each row once) and changes nothing.
    async fn set_based(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        shape: &Shape,
        layout: Layout,
        rows: &Rows<'_>,
    ) -> Result<u64, StoreError> {
        let mut affected = 0;
        let mut from = 0;
        let total = rows.len();
        while from < total {
            let left = total - from;
            let size = match layout {
                Layout::Insert => SIZES.iter().copied().find(|&s| s <= left).unwrap_or(1),
                _ => covering_size(left),
            };
            let taken = size.min(left);
            // Row `i` of this execution (past the real rows: the last one again).
            let row = |i: usize| {
                let at = (from + i.min(taken - 1)) * rows.width;
                &rows.values[at..at + rows.width]
            };
            let mut query = sqlx::query(shape.text(size));
            match layout {
                Layout::Insert | Layout::Delete => {
                    for i in 0..size {
                        for p in row(i) {
                            query = bind(query, p);
                        }
                    }
                }
                Layout::Status => {
                    // The three CASEs (to, reason, at by id), the ids, then the guard's
                    // (id, from).
                    for column in [2, 3, 4] {
                        for i in 0..size {
                            query = bind(bind(query, &row(i)[0]), &row(i)[column]);
                        }
                    }
                    for i in 0..size {
                        query = bind(query, &row(i)[0]);
                    }
                    for i in 0..size {
                        query = bind(bind(query, &row(i)[0]), &row(i)[1]);
                    }
                }
                Layout::Snapshots(at) => {
                    for column in [1, 2, 3, 3] {
                        for i in 0..size {
                            query = bind(bind(query, &row(i)[0]), &row(i)[column]);
                        }
                    }
                    query = query.bind(at);
                    for i in 0..size {
                        query = bind(query, &row(i)[0]);
                    }
                }
            }
            affected += query.execute(&mut **tx).await?.rows_affected();
            from += taken;
        }
        Ok(affected)
    }

    /// Writes the write-sets inside an open transaction: a few statements per table.
    pub(in crate::persistence) async fn write_sets(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        sets: &[&WriteSet],
    ) -> Result<(), StoreError> {
        let rows = BatchRows::of(sets)?;
        if !rows.orders.is_empty() {
            self.set_based(tx, &INSERT_ORDERS, Layout::Insert, &rows.orders).await?;
            self.set_based(tx, &INSERT_ITEMS, Layout::Insert, &rows.items).await?;
        }
        self.set_based(tx, &INSERT_KEYS, Layout::Insert, &rows.keys).await?;
        let matched = self.set_based(tx, &UPDATE_STATUS, Layout::Status, &rows.status).await?;
        if matched != rows.status.len() as u64 {
            // Which one is for the one-by-one retry to find: a batch of one names its order.
            return Err(StoreError::Rejected(if rows.status.len() == 1 {
                format!(
                    "order {} is not {} any more",
                    rows.status.text(0, 0),
                    rows.status.text(0, 1)
                )
                .into()
            } else {
                "an order of the batch is not in its expected status any more".into()
            }));
        }
        self.journal_statements(tx, &rows.journal).await?;
        self.set_based(tx, &INSERT_OUTBOX, Layout::Insert, &rows.outbox).await?;
        // A duplicate is a unique violation: the whole effect is refused, not applied twice.
        self.set_based(tx, &INSERT_PROCESSED, Layout::Insert, &rows.processed)
            .await?;
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
        rows: &JournalRows<'_>,
    ) -> Result<(), StoreError> {
        self.set_based(tx, &INSERT_JOURNAL, Layout::Insert, &rows.journal)
            .await?;
        self.set_based(tx, &INSERT_RESERVATIONS, Layout::Insert, &rows.reserve)
            .await?;
        let deleted = self
            .set_based(tx, &DELETE_RESERVATIONS, Layout::Delete, &rows.settle)
            .await?;
        if deleted != rows.settle.len() as u64 {
            return Err(StoreError::Rejected(
                "a confirm or release has no stored reservation".into(),
            ));
        }
        let updated = self
            .set_based(tx, &UPDATE_SNAPSHOTS, Layout::Snapshots(rows.at), &rows.snapshots)
            .await?;
        if updated != rows.snapshots.len() as u64 {
            let skus = (0..rows.snapshots.len())
                .map(|i| rows.snapshots.text(i, 0))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(StoreError::Rejected(
                format!("no inventory row for one of {skus}").into(),
            ));
        }
        Ok(())
    }
}

/// Every row a batch writes, per table.
struct BatchRows<'a> {
    orders: Rows<'a>,
    items: Rows<'a>,
    keys: Rows<'a>,
    status: Rows<'a>,
    journal: JournalRows<'a>,
    outbox: Rows<'a>,
    processed: Rows<'a>,
}

/// The rows an inventory journal writes: entries, new reservations, settled
/// reservations, and one coalesced snapshot delta per SKU.
struct JournalRows<'a> {
    journal: Rows<'a>,
    reserve: Rows<'a>,
    settle: Rows<'a>,
    snapshots: Rows<'a>,
    /// The snapshots' `updated_at`.
    at: i64,
}

impl<'a> BatchRows<'a> {
    fn of(sets: &[&'a WriteSet]) -> Result<Self, StoreError> {
        let now = crate::domain::now_millis();
        let mut rows = Self {
            orders: Rows::new(10),
            items: Rows::new(5),
            keys: Rows::new(6),
            status: Rows::new(5),
            journal: JournalRows::of(&sets.iter().flat_map(|s| s.journal.iter()).collect::<Vec<_>>()),
            outbox: Rows::new(3),
            processed: Rows::new(3),
        };
        for set in sets {
            if let Some(o) = &set.new_order {
                rows.push_order(o);
            }
            if let Some(k) = &set.idempotency {
                rows.keys.push([
                    k.user_id.as_str().into(),
                    k.key.as_str().into(),
                    k.request_hash.as_str().into(),
                    k.order_id.to_string().into(),
                    k.response.as_str().into(),
                    now.into(),
                ]);
            }
            if let Some(c) = &set.status_change {
                rows.push_status(c);
            }
            if let Some(c) = &set.consumed {
                rows.processed
                    .push([c.consumer.as_str().into(), c.event_id.to_string().into(), now.into()]);
            }
        }
        // The batch's events in write-set order: one transaction, so a few rows.
        let events: Vec<&Event> = sets.iter().flat_map(|s| s.events.iter()).collect();
        for (count, body) in outbox_rows(&events)? {
            rows.outbox.push([count.into(), body.into(), now.into()]);
        }
        Ok(rows)
    }

    fn push_order(&mut self, o: &'a Order) {
        let id = o.id.to_string();
        for (line, l) in o.lines.iter().enumerate() {
            self.items.push([
                id.clone().into(),
                (line as i64).into(),
                l.sku.as_str().into(),
                l.qty.into(),
                l.unit_price.amount.into(),
            ]);
        }
        self.orders.push([
            id.into(),
            o.user_id.as_str().into(),
            o.status.as_str().into(),
            o.total.amount.into(),
            o.total.currency.as_str().into(),
            o.payment_token.as_str().into(),
            o.cancel_reason.map(|r| r.as_str()).into(),
            o.created_at.into(),
            o.updated_at.into(),
            o.expires_at.into(),
        ]);
    }

    fn push_status(&mut self, c: &'a StatusChange) {
        self.status.push([
            c.order_id.to_string().into(),
            c.from.as_str().into(),
            c.to.as_str().into(),
            c.cancel_reason.map(|r| r.as_str()).into(),
            c.at.into(),
        ]);
    }
}

impl<'a> JournalRows<'a> {
    fn of(journal: &[&'a JournalEntry]) -> Self {
        let order = |e: &JournalEntry| e.change.order.map(|o| o.to_string());
        // Coalesce: one snapshot row per SKU per batch, however many orders touched it.
        let mut per_sku: BTreeMap<&'a Sku, (i64, i64, i64)> = BTreeMap::new();
        let mut rows = Self {
            journal: Rows::new(8),
            reserve: Rows::new(4),
            settle: Rows::new(2),
            snapshots: Rows::new(4),
            at: crate::domain::now_millis(),
        };
        for e in journal {
            let acc = per_sku.entry(&e.sku).or_insert((0, 0, 0));
            acc.0 += e.change.stock_delta;
            acc.1 += e.change.reserved_delta;
            acc.2 = acc.2.max(e.seq);
            let sku = e.sku.as_str();
            rows.journal.push([
                sku.into(),
                e.seq.into(),
                e.change.kind.as_str().into(),
                order(e).into(),
                e.change.qty.into(),
                e.change.stock_delta.into(),
                e.change.reserved_delta.into(),
                e.at.into(),
            ]);
            match e.change.kind {
                ChangeKind::Reserve => rows.reserve.push([
                    sku.into(),
                    order(e).unwrap_or_default().into(),
                    e.change.qty.into(),
                    e.change.expires_at.unwrap_or_default().into(),
                ]),
                ChangeKind::Confirm | ChangeKind::Release => {
                    rows.settle.push([sku.into(), order(e).unwrap_or_default().into()])
                }
                ChangeKind::SetStock => {}
            }
        }
        for (sku, (stock_delta, reserved_delta, seq)) in per_sku {
            rows.snapshots.push([
                sku.as_str().into(),
                stock_delta.into(),
                reserved_delta.into(),
                seq.into(),
            ]);
        }
        rows
    }
}
