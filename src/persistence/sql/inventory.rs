//! Reading a SKU's inventory: what its actor loads on activation, and its snapshot row.
use super::corrupt;
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::Reservation;
use crate::domain::money::{Currency, Money};
use crate::persistence::{SkuRecord, SqlStore, StoreError};
use sqlx::Row;

impl SqlStore {
    pub(crate) async fn load_sku(&self, sku: &Sku) -> Result<Option<SkuRecord>, StoreError> {
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
            unit_price: Money::new(row.try_get("price_amount")?, currency).map_err(corrupt)?,
            stock: row.try_get("stock")?,
            seq: row.try_get("seq")?,
            reservations,
        }))
    }

    /// Inventory totals (stock, reserved) of one SKU straight from the snapshot table.
    pub(crate) async fn inventory_row(&self, sku: &Sku) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query("SELECT stock, reserved FROM inventory WHERE sku = ?")
            .bind(sku.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("stock")?, r.try_get("reserved")?)))
            .transpose()
    }
}
