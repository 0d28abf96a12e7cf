//! `emporium reconcile`: the offline invariant check over inventory, reservations, journal
//! and orders.
use crate::persistence::{SqlStore, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

impl SqlStore {
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
}

/// Renders a result row as `col=value, ...` for reconcile reports.
pub(super) fn describe_row(row: &AnyRow) -> String {
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
