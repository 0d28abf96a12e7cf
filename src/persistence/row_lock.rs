//! The `sql_row_lock` inventory strategy: the prototype's design, kept as the honest
//! baseline for the benchmark. Every order is one transaction that locks each SKU row
//! with `SELECT … FOR UPDATE` (in SKU order, so two orders cannot deadlock), applies the
//! same domain rule as the actors, and writes the order, reservation, journal and outbox
//! rows before COMMIT. Saga steps lock the rows the same way. A hot SKU's orders
//! therefore queue on its row lock: that is the ceiling the actor design removes.

use super::sql::{Dialect, SqlStore};
use super::{JournalEntry, StoreError, WriteSet};
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::{reserve_change, settle_change, ChangeKind, InventoryError};
use crate::domain::money::{Currency, Money};
use crate::domain::{now_millis, Millis};
use crate::error::Cause;
use sqlx::{Any, Row};
use std::collections::{BTreeMap, HashMap};

/// Why a row-locked operation was refused (nothing was written).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("unknown sku {0}")]
    UnknownSku(Sku),
    #[error("{sku}: {rule}")]
    Rule { sku: Sku, rule: InventoryError },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct LockedRow {
    stock: i64,
    reserved: i64,
    seq: i64,
    price: Money,
}

impl SqlStore {
    async fn lock_row(&self, tx: &mut sqlx::Transaction<'_, Any>, sku: &Sku) -> Result<Option<LockedRow>, StoreError> {
        // SQLite has no row locks (a write transaction locks the database); MySQL locks the row.
        let lock = if self.dialect() == Dialect::MySql {
            " FOR UPDATE"
        } else {
            ""
        };
        let row = sqlx::query(&format!(
            "SELECT i.stock, i.reserved, i.seq, s.price_amount, s.currency FROM inventory i \
             JOIN skus s ON s.sku = i.sku WHERE i.sku = ?{lock}"
        ))
        .bind(sku.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let currency =
            Currency::parse(&row.try_get::<String, _>("currency")?).map_err(|e| StoreError::Corrupt(Cause::new(e)))?;
        Ok(Some(LockedRow {
            stock: row.try_get("stock")?,
            reserved: row.try_get("reserved")?,
            seq: row.try_get("seq")?,
            price: Money::new(row.try_get("price_amount")?, currency)
                .map_err(|e| StoreError::Corrupt(Cause::new(e)))?,
        }))
    }

    /// Places an order under row locks. `build` receives the unit prices and the
    /// reservation journal entries and returns the order's write-set.
    pub(crate) async fn place_row_locked(
        &self,
        order: OrderId,
        wanted: &BTreeMap<Sku, i64>,
        expires_at: Millis,
        build: impl FnOnce(&HashMap<Sku, Money>, Vec<JournalEntry>) -> Result<WriteSet, String>,
    ) -> Result<WriteSet, Refusal> {
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let mut prices = HashMap::with_capacity(wanted.len());
        let mut journal = Vec::with_capacity(wanted.len());
        for (sku, qty) in wanted {
            let row = self
                .lock_row(&mut tx, sku)
                .await?
                .ok_or_else(|| Refusal::UnknownSku(sku.clone()))?;
            let change = reserve_change(order, *qty, expires_at, row.stock - row.reserved)
                .map_err(|rule| Refusal::Rule { sku: sku.clone(), rule })?;
            prices.insert(sku.clone(), row.price);
            journal.push(JournalEntry {
                sku: sku.clone(),
                seq: row.seq + 1,
                change,
                at: now_millis(),
                epoch: None,
            });
        }
        let set = build(&prices, journal).map_err(Refusal::Invalid)?;
        self.write_sets(&mut tx, &[&set]).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(set)
    }

    /// Confirms or releases an order's reservations under row locks and commits the
    /// write-set `build` makes of the journal entries.
    pub(crate) async fn settle_row_locked(
        &self,
        order: OrderId,
        skus: &[Sku],
        kind: ChangeKind,
        build: impl FnOnce(Vec<JournalEntry>) -> WriteSet,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut journal = Vec::with_capacity(skus.len());
        for sku in skus {
            let Some(row) = self.lock_row(&mut tx, sku).await? else {
                continue;
            };
            let held = sqlx::query("SELECT qty FROM reservations WHERE sku = ? AND order_id = ?")
                .bind(sku.to_string())
                .bind(order.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(held) = held {
                let change = settle_change(kind, order, held.try_get("qty")?);
                journal.push(JournalEntry {
                    sku: sku.clone(),
                    seq: row.seq + 1,
                    change,
                    at: now_millis(),
                    epoch: None,
                });
            }
        }
        let set = build(journal);
        self.write_sets(&mut tx, &[&set]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Admin stock change under the row lock; returns `(stock, reserved)` after it.
    pub(crate) async fn set_stock_row_locked(&self, sku: &Sku, stock: i64) -> Result<(i64, i64), Refusal> {
        let mut tx = self.pool().begin().await.map_err(StoreError::from)?;
        let row = self
            .lock_row(&mut tx, sku)
            .await?
            .ok_or_else(|| Refusal::UnknownSku(sku.clone()))?;
        let mut inventory = crate::domain::inventory::SkuInventory::restore(row.stock, []);
        // The locked row's reserved count is what the rule must respect.
        if stock < row.reserved {
            let rule = InventoryError::BelowReserved {
                requested: stock,
                reserved: row.reserved,
            };
            return Err(Refusal::Rule { sku: sku.clone(), rule });
        }
        let change = inventory
            .set_stock(stock)
            .map_err(|rule| Refusal::Rule { sku: sku.clone(), rule })?;
        let set = WriteSet {
            journal: vec![JournalEntry {
                sku: sku.clone(),
                seq: row.seq + 1,
                change,
                at: now_millis(),
                epoch: None,
            }],
            ..WriteSet::default()
        };
        self.write_sets(&mut tx, &[&set]).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((stock, row.reserved))
    }
}
