//! The catalog in the SQL store: the write side every catalog backend shares (each
//! change in one transaction with its SKUs, stock journal and outbox event — see
//! [`crate::persistence::catalog`] for why), and [`SqlCatalog`], the embedded read side.
//!
//! Works on SQLite and on MySQL/MariaDB: the filtered fields are generated columns
//! (migrations/*/0003_catalog.sql) so the queries are the same on both; `CONCAT`,
//! `SUBSTR` and `JSON_SET` exist in both dialects (SQLite ≥ 3.44, bundled by sqlx).
//!
//! Category moves are two statements whatever the subtree's size: one `UPDATE` rewrites
//! every descendant path (and depth), one rewrites the `category_path` of every product
//! below it, inside the same transaction as the `product_upserted` events they cause.

use crate::domain::catalog::{Category, Page, Product, ProductFilter};
use crate::domain::categories::{child_path, descendants_range, Move};
use crate::domain::events::{Event, EventType};
use crate::domain::ids::ProductId;
use crate::domain::money::Money;
use crate::domain::Millis;
use crate::error::Cause;
use crate::persistence::catalog::{Catalog, PageRequest};
use crate::persistence::sql::{corrupt, insert_outbox, text, ROWS_PER_INSERT};
use crate::persistence::{JournalEntry, NewSku, SqlStore, StoreError};
use sqlx::any::AnyRow;
use sqlx::{Any, QueryBuilder, Row};

/// What one product write changes besides the document.
#[derive(Debug, Clone, Default)]
pub(crate) struct SkuChanges {
    /// SKUs this write adds, with their initial stock.
    pub(crate) new: Vec<NewSku>,
    /// Existing SKUs of the product and their (possibly new) prices.
    pub(crate) prices: Vec<(String, Money)>,
}

fn product_from_row(row: &AnyRow) -> Result<Product, StoreError> {
    serde_json::from_str(&text(row, "doc")?).map_err(corrupt)
}

fn category_from_row(row: &AnyRow) -> Result<Category, StoreError> {
    Ok(Category {
        id: row.try_get("id")?,
        name: text(row, "name")?,
        parent_id: row.try_get("parent_id")?,
        path: text(row, "path")?,
        depth: row.try_get("depth")?,
    })
}

const CATEGORY_COLUMNS: &str = "SELECT id, name, parent_id, path, depth FROM categories";

/// `AND (col = path OR col in the descendants range)`, with binds.
fn push_subtree(q: &mut QueryBuilder<'_, Any>, column: &str, path: &str) {
    let (lo, hi) = descendants_range(path);
    q.push(format!(" AND ({column} = "))
        .push_bind(path.to_owned())
        .push(format!(" OR ({column} >= "))
        .push_bind(lo)
        .push(format!(" AND {column} < "))
        .push_bind(hi)
        .push("))");
}

impl SqlStore {
    /// Inserts SKUs with inventory rows and their initial stock (journaled, so the
    /// journal alone accounts for every unit ever received).
    async fn insert_skus(
        tx: &mut sqlx::Transaction<'_, Any>,
        store: &SqlStore,
        product: &str,
        skus: &[NewSku],
        at: Millis,
    ) -> Result<(), StoreError> {
        for s in skus {
            sqlx::query("INSERT INTO skus (sku, product_id, price_amount, currency) VALUES (?, ?, ?, ?)")
                .bind(s.sku.to_string())
                .bind(product.to_owned())
                .bind(s.price.amount)
                .bind(s.price.currency.to_string())
                .execute(&mut **tx)
                .await
                .map_err(|e| match StoreError::from(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("sku {} already exists", s.sku).into()),
                    other => other,
                })?;
            sqlx::query("INSERT INTO inventory (sku, stock, reserved, seq, updated_at) VALUES (?, 0, 0, 0, ?)")
                .bind(s.sku.to_string())
                .bind(at)
                .execute(&mut **tx)
                .await?;
        }
        let journal = skus
            .iter()
            .map(|s| {
                let change = crate::domain::inventory::SkuInventory::default()
                    .set_stock(s.stock)
                    .map_err(|e| StoreError::Rejected(Cause::new(e)))?;
                Ok(JournalEntry {
                    sku: s.sku.clone(),
                    seq: 1,
                    change,
                    at,
                    epoch: None,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let refs: Vec<&JournalEntry> = journal.iter().collect();
        store.apply_journal(tx, &refs).await
    }

    async fn queue_product(tx: &mut sqlx::Transaction<'_, Any>, id: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO catalog_projection (product_id) VALUES (?)")
            .bind(id.to_owned())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Creates a product, its SKUs with their stock, and its event, all or nothing.
    /// `project`: queue it for a projected catalog.
    pub(crate) async fn insert_product(
        &self,
        product: &Product,
        skus: &[NewSku],
        event: &Event,
        project: bool,
        at: Millis,
    ) -> Result<(), StoreError> {
        let doc = serde_json::to_string(product).map_err(corrupt)?;
        let mut tx = self.pool().begin().await?;
        sqlx::query("INSERT INTO products (id, doc, version, created_at, updated_at) VALUES (?, ?, 1, ?, ?)")
            .bind(product.id.clone())
            .bind(doc)
            .bind(at)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        Self::insert_skus(&mut tx, self, &product.id, skus, at).await?;
        insert_outbox(&mut tx, &[event]).await?;
        if project {
            Self::queue_product(&mut tx, &product.id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The live product and its version, read from the store (the truth) before a write.
    pub(crate) async fn product_for_write(&self, id: ProductId) -> Result<Option<(Product, i64)>, StoreError> {
        let row = sqlx::query("SELECT doc, version FROM products WHERE id = ? AND deleted_at IS NULL")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((product_from_row(&r)?, r.try_get("version")?)))
            .transpose()
    }

    /// Replaces a product if it is still at `version` (else `Conflict`: someone else
    /// changed it in between; the caller re-reads and retries or reports 409).
    pub(crate) async fn replace_product(
        &self,
        product: &Product,
        version: i64,
        skus: &SkuChanges,
        event: &Event,
        project: bool,
        at: Millis,
    ) -> Result<(), StoreError> {
        let doc = serde_json::to_string(product).map_err(corrupt)?;
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE products SET doc = ?, version = version + 1, updated_at = ? \
             WHERE id = ? AND version = ? AND deleted_at IS NULL",
        )
        .bind(doc)
        .bind(at)
        .bind(product.id.clone())
        .bind(version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict(
                (format!(
                    "product {} changed while this request was being made; read it again and retry",
                    product.id
                ))
                .into(),
            ));
        }
        for (sku, price) in &skus.prices {
            sqlx::query("UPDATE skus SET price_amount = ? WHERE sku = ? AND product_id = ?")
                .bind(price.amount)
                .bind(sku.clone())
                .bind(product.id.clone())
                .execute(&mut *tx)
                .await?;
        }
        Self::insert_skus(&mut tx, self, &product.id, &skus.new, at).await?;
        insert_outbox(&mut tx, &[event]).await?;
        if project {
            Self::queue_product(&mut tx, &product.id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Soft-deletes a live product; `false` if there is none.
    pub(crate) async fn delete_product(
        &self,
        id: ProductId,
        event: &Event,
        project: bool,
        at: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let updated = sqlx::query(
            "UPDATE products SET deleted_at = ?, version = version + 1, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(at)
        .bind(at)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(false);
        }
        insert_outbox(&mut tx, &[event]).await?;
        if project {
            Self::queue_product(&mut tx, &id.to_string()).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// A category as the store has it (the truth the writes check against).
    pub(crate) async fn category_row(&self, id: i64) -> Result<Option<Category>, StoreError> {
        let row = sqlx::query(&format!("{CATEGORY_COLUMNS} WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(category_from_row).transpose()
    }

    /// How many levels lie below `c` (0 for a leaf).
    pub(crate) async fn subtree_height(&self, c: &Category) -> Result<i64, StoreError> {
        let (lo, hi) = descendants_range(&c.path);
        let row = sqlx::query("SELECT MAX(depth) AS d FROM categories WHERE path >= ? AND path < ?")
            .bind(lo)
            .bind(hi)
            .fetch_one(self.pool())
            .await?;
        let deepest: Option<i64> = row.try_get("d")?;
        Ok(deepest.map_or(0, |d| d - c.depth))
    }

    /// Creates a category under `parent` (a top-level one when `None`).
    pub(crate) async fn insert_category(
        &self,
        name: &str,
        parent: Option<&Category>,
        project: bool,
        at: Millis,
    ) -> Result<Category, StoreError> {
        let mut tx = self.pool().begin().await?;
        // The path needs the id: insert, then set it, in one transaction. The Any driver
        // reports no last-insert id for SQLite, so SQLite says it with RETURNING.
        let insert = "INSERT INTO categories (name, parent_id, path, depth, created_at) VALUES (?, ?, '', 0, ?)";
        let id = match self.dialect() {
            crate::persistence::sql::Dialect::Sqlite => sqlx::query(&format!("{insert} RETURNING id"))
                .bind(name.to_owned())
                .bind(parent.map(|p| p.id))
                .bind(at)
                .fetch_one(&mut *tx)
                .await?
                .try_get::<i64, _>("id")?,
            crate::persistence::sql::Dialect::MySql => sqlx::query(insert)
                .bind(name.to_owned())
                .bind(parent.map(|p| p.id))
                .bind(at)
                .execute(&mut *tx)
                .await?
                .last_insert_id()
                .ok_or_else(|| StoreError::Rejected("the store did not return the new category's id".into()))?,
        };
        let (path, depth) = child_path(parent, id);
        sqlx::query("UPDATE categories SET path = ?, depth = ? WHERE id = ?")
            .bind(path.clone())
            .bind(depth)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if project {
            sqlx::query("INSERT INTO catalog_projection (category_id) VALUES (?)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Category {
            id,
            name: name.to_owned(),
            parent_id: parent.map(|p| p.id),
            path,
            depth,
        })
    }

    /// Moves a subtree: every descendant path and depth in one statement, every product
    /// below it in one statement, and a `product_upserted` event per live product moved.
    /// Returns how many products moved.
    pub(crate) async fn move_category(
        &self,
        node: &Category,
        new_parent: Option<i64>,
        plan: &Move,
        traceparent: Option<String>,
        project: bool,
        at: Millis,
    ) -> Result<usize, StoreError> {
        let at_text = chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let (old_lo, old_hi) = descendants_range(&plan.old_prefix);
        let mut tx = self.pool().begin().await?;
        // SUBSTR is 1-based: keep everything after the old prefix.
        let keep_from = plan.old_prefix.len() as i64 + 1;
        sqlx::query(
            "UPDATE categories SET path = CONCAT(?, SUBSTR(path, ?)), depth = depth + ? \
             WHERE path = ? OR (path >= ? AND path < ?)",
        )
        .bind(plan.new_prefix.clone())
        .bind(keep_from)
        .bind(plan.depth_delta)
        .bind(plan.old_prefix.clone())
        .bind(old_lo.clone())
        .bind(old_hi.clone())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE categories SET parent_id = ? WHERE id = ?")
            .bind(new_parent)
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE products SET doc = JSON_SET(doc, '$.category_path', CONCAT(?, SUBSTR(category_path, ?)), '$.updated_at', ?), \
             version = version + 1, updated_at = ? WHERE category_path = ? OR (category_path >= ? AND category_path < ?)",
        )
        .bind(plan.new_prefix.clone())
        .bind(keep_from)
        .bind(at_text)
        .bind(at)
        .bind(plan.old_prefix.clone())
        .bind(old_lo)
        .bind(old_hi)
        .execute(&mut *tx)
        .await?;

        // Search must learn the new paths: one event per live product that moved.
        let mut q = QueryBuilder::<Any>::new("SELECT doc FROM products WHERE deleted_at IS NULL");
        push_subtree(&mut q, "category_path", &plan.new_prefix);
        let moved = q
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(product_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let events = moved
            .iter()
            .map(|p| {
                Ok(Event::new(
                    EventType::ProductUpserted,
                    &p.id,
                    at,
                    traceparent.clone(),
                    serde_json::to_value(p).map_err(corrupt)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        insert_outbox(&mut tx, &events.iter().collect::<Vec<_>>()).await?;

        if project {
            let mut q = QueryBuilder::<Any>::new(
                "INSERT INTO catalog_projection (category_id) SELECT id FROM categories WHERE 1 = 1",
            );
            push_subtree(&mut q, "path", &plan.new_prefix);
            q.build().execute(&mut *tx).await?;
            let mut q = QueryBuilder::<Any>::new(
                "INSERT INTO catalog_projection (product_id) SELECT id FROM products WHERE 1 = 1",
            );
            push_subtree(&mut q, "category_path", &plan.new_prefix);
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(moved.len())
    }

    /// The oldest queued projection entries: `(seq, product_id, category_id)`.
    pub(crate) async fn projection_batch(
        &self,
        limit: i64,
    ) -> Result<Vec<(i64, Option<String>, Option<i64>)>, StoreError> {
        let rows = sqlx::query("SELECT seq, product_id, category_id FROM catalog_projection ORDER BY seq LIMIT ?")
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("product_id")?, r.try_get("category_id")?)))
            .collect()
    }

    /// Forgets projection entries up to `seq`, once the projection applied them.
    pub(crate) async fn projection_done(&self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM catalog_projection WHERE seq <= ?")
            .bind(seq)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Current documents of these products, with `live` = not soft-deleted.
    pub(crate) async fn products_by_ids(&self, ids: &[String]) -> Result<Vec<(Product, bool)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Any>::new("SELECT doc, deleted_at FROM products WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id.clone());
            }
            q.push(")");
            for r in q.build().fetch_all(self.pool()).await? {
                let deleted: Option<i64> = r.try_get("deleted_at")?;
                out.push((product_from_row(&r)?, deleted.is_none()));
            }
        }
        Ok(out)
    }

    pub(crate) async fn categories_by_ids(&self, ids: &[i64]) -> Result<Vec<Category>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_INSERT) {
            let mut q = QueryBuilder::<Any>::new(format!("{CATEGORY_COLUMNS} WHERE id IN ("));
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            q.push(")");
            for r in q.build().fetch_all(self.pool()).await? {
                out.push(category_from_row(&r)?);
            }
        }
        Ok(out)
    }
}

/// The embedded catalog: reads straight from the SQL store's tables.
#[derive(Clone)]
pub(crate) struct SqlCatalog {
    store: SqlStore,
}

impl SqlCatalog {
    pub fn new(store: SqlStore) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl Catalog for SqlCatalog {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        // The migrations created the indexes; the commit is the catalog write.
        Ok(())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn product(&self, id: ProductId) -> Result<Option<Product>, StoreError> {
        let row = sqlx::query("SELECT doc FROM products WHERE id = ? AND deleted_at IS NULL")
            .bind(id.to_string())
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(product_from_row).transpose()
    }

    async fn products(
        &self,
        filter: &ProductFilter,
        page: &PageRequest<ProductId>,
    ) -> Result<Page<Product>, StoreError> {
        let mut q = QueryBuilder::<Any>::new("SELECT doc FROM products WHERE deleted_at IS NULL");
        if let Some(path) = &filter.category_path {
            push_subtree(&mut q, "category_path", path);
        }
        if let Some(brand) = &filter.brand {
            q.push(" AND brand = ").push_bind(brand.clone());
        }
        if let Some(min) = filter.min_price {
            q.push(" AND price_amount >= ").push_bind(min);
        }
        if let Some(max) = filter.max_price {
            q.push(" AND price_amount <= ").push_bind(max);
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(after) = page.cursor {
            q.push(" AND id > ").push_bind(after.to_string());
        }
        q.push(" ORDER BY id LIMIT ").push_bind(page.limit as i64 + 1);
        let rows = q.build().fetch_all(self.store.pool()).await?;
        let items = rows.iter().map(product_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(items, page.limit, |p| p.id.clone()))
    }

    async fn category(&self, id: i64) -> Result<Option<Category>, StoreError> {
        self.store.category_row(id).await
    }

    async fn children(&self, parent: Option<i64>, page: &PageRequest<i64>) -> Result<Page<Category>, StoreError> {
        let mut q = QueryBuilder::<Any>::new(CATEGORY_COLUMNS);
        match parent {
            Some(p) => q.push(" WHERE parent_id = ").push_bind(p),
            None => q.push(" WHERE parent_id IS NULL"),
        };
        if let Some(after) = page.cursor {
            q.push(" AND id > ").push_bind(after);
        }
        q.push(" ORDER BY id LIMIT ").push_bind(page.limit as i64 + 1);
        let rows = q.build().fetch_all(self.store.pool()).await?;
        let items = rows.iter().map(category_from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(items, page.limit, |c| c.id.to_string()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}
