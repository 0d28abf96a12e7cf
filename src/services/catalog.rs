//! The catalog service: every product and category change, end to end. It validates
//! with the pure rules of [`crate::domain::catalog`], commits to the SQL store (document,
//! SKUs, stock journal and outbox event in one transaction), then lets the configured
//! [`Catalog`] catch up (a no-op for the embedded catalog, the MongoDB projection
//! otherwise). Reads go to the [`Catalog`].
//!
//! Writes check categories against the store *before* their transaction and keep the
//! transaction write-only, so SQLite never has to upgrade a read snapshot (which fails
//! instead of waiting). What makes that safe is `tree`: a category move takes it
//! exclusively, everything that reads a category path to write it takes it shared, so no
//! write ever stores a path a concurrent move just rewrote. One process writes the
//! catalog (the chart runs one replica; see README).

use crate::config::Settings;
use crate::domain::catalog::{self as rules, Category, Page, Product, ProductFilter, ProductInput};
use crate::domain::events::{Event, EventType};
use crate::domain::ids::ProductId;
use crate::domain::{categories, now_millis};
use crate::error::Cause;
use crate::persistence::catalog::mongo::MongoCatalog;
use crate::persistence::catalog::sql::{SkuChanges, SqlCatalog};
use crate::persistence::catalog::{Catalog, PageRequest};
use crate::persistence::{NewSku, SqlStore, StoreError};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CatalogFailure {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A SKU that exists already, or a concurrent change to the same product.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for CatalogFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(detail) => Self::Conflict(detail.to_string()),
            other => Self::Store(other),
        }
    }
}

impl From<rules::Invalid> for CatalogFailure {
    fn from(e: rules::Invalid) -> Self {
        Self::Invalid(e.0)
    }
}

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub(crate) struct CatalogService {
    store: SqlStore,
    catalog: Arc<dyn Catalog>,
    /// Whether writes queue a projection (MongoDB) or are the catalog write (embedded).
    projected: bool,
    tree: tokio::sync::RwLock<()>,
}

impl CatalogService {
    /// Opens the catalog chosen by `catalog.url` (empty: embedded) and prepares it
    /// (indexes, catching up with changes a crash left unprojected).
    pub async fn open(settings: &Settings, store: SqlStore) -> Result<Self, StoreError> {
        let url = settings.catalog.url.as_deref().unwrap_or_default().trim();
        let catalog: Arc<dyn Catalog> = if url.is_empty() {
            Arc::new(SqlCatalog::new(store.clone()))
        } else if url.starts_with("mongodb://") || url.starts_with("mongodb+srv://") {
            Arc::new(MongoCatalog::connect(url, store.clone()).await?)
        } else {
            return Err(StoreError::Rejected(
                (format!(
                    "catalog.url must be empty (embedded) or mongodb://…, got {:?}",
                    crate::persistence::sql::redact(url)
                ))
                .into(),
            ));
        };
        catalog.prepare().await?;
        Ok(Self {
            projected: catalog.kind() != "embedded",
            store,
            catalog,
            tree: tokio::sync::RwLock::new(()),
        })
    }

    /// Retries the projection in the background (after an outage of MongoDB, changes
    /// committed meanwhile are applied here). Nothing to do for the embedded catalog.
    pub(crate) fn spawn_catch_up(self: &Arc<Self>, every: Duration) {
        if !self.projected {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = this.catalog.sync().await {
                    tracing::warn!(error = %e, "catalog projection behind; retrying");
                }
            }
        });
    }

    /// After a commit: bring a projected catalog up to date. A failure is not the
    /// caller's failure (the change is committed and its event is in the outbox); the
    /// background catch-up applies it when MongoDB answers again.
    async fn project(&self) {
        if self.projected {
            if let Err(e) = self.catalog.sync().await {
                tracing::warn!(error = %e, "catalog projection failed after commit; will catch up");
            }
        }
    }

    async fn resolve_category(&self, input: &ProductInput) -> Result<Option<Category>, CatalogFailure> {
        let by_path = match &input.category_path {
            Some(path) => {
                let ids = categories::parse_path(path)?;
                let last = ids.last().copied().unwrap_or_default();
                let found = self.store.category_row(last).await?.filter(|c| &c.path == path);
                Some(found.ok_or_else(|| CatalogFailure::Invalid(format!("no category has the path {path}")))?)
            }
            None => None,
        };
        let by_id = match input.category_id {
            Some(id) => Some(
                self.store
                    .category_row(id)
                    .await?
                    .ok_or_else(|| CatalogFailure::Invalid(format!("no category {id}")))?,
            ),
            None => None,
        };
        match (by_id, by_path) {
            (Some(a), Some(b)) if a.id != b.id => Err(CatalogFailure::Invalid(format!(
                "category_id {} and category_path {} name different categories",
                a.id, b.path
            ))),
            (a, b) => Ok(a.or(b)),
        }
    }

    fn upserted(product: &Product, at: i64, traceparent: Option<String>) -> Result<Event, CatalogFailure> {
        let data =
            serde_json::to_value(product).map_err(|e| CatalogFailure::Store(StoreError::Corrupt(Cause::new(e))))?;
        Ok(Event::new(
            EventType::ProductUpserted,
            &product.id,
            at,
            traceparent,
            data,
        ))
    }

    pub(crate) async fn create_product(
        &self,
        input: ProductInput,
        traceparent: Option<String>,
    ) -> Result<Product, CatalogFailure> {
        rules::validate(&input)?;
        if let Some(v) = input.variants.iter().find(|v| v.stock.is_none()) {
            return Err(CatalogFailure::Invalid(format!(
                "variant {} needs its initial stock",
                v.sku
            )));
        }
        let _tree = self.tree.read().await;
        let category = self.resolve_category(&input).await?;
        let at = now_millis();
        let product = rules::build(
            ProductId::generate(),
            &input,
            category.as_ref(),
            rfc3339(at),
            rfc3339(at),
        );
        let skus: Vec<NewSku> = input
            .variants
            .iter()
            .map(|v| NewSku {
                sku: v.sku.clone(),
                price: v.price.unwrap_or(input.price),
                stock: v.stock.unwrap_or_default(),
            })
            .collect();
        let event = Self::upserted(&product, at, traceparent)?;
        self.store
            .insert_product(&product, &skus, &event, self.projected, at)
            .await?;
        drop(_tree);
        self.project().await;
        Ok(product)
    }

    pub(crate) async fn replace_product(
        &self,
        id: ProductId,
        input: ProductInput,
        traceparent: Option<String>,
    ) -> Result<Product, CatalogFailure> {
        self.replace(id, input, None, traceparent).await
    }

    /// Replaces a product; with `expected`, only if it is still at that version.
    async fn replace(
        &self,
        id: ProductId,
        input: ProductInput,
        expected: Option<i64>,
        traceparent: Option<String>,
    ) -> Result<Product, CatalogFailure> {
        rules::validate(&input)?;
        let _tree = self.tree.read().await;
        let (current, version) = self
            .store
            .product_for_write(id)
            .await?
            .ok_or_else(|| CatalogFailure::NotFound(format!("no product {id}")))?;
        if expected.is_some_and(|v| v != version) {
            return Err(CatalogFailure::Conflict(format!(
                "product {id} changed while this patch was being applied; read it again and retry"
            )));
        }
        let new_variants = rules::check_replace(&current, &input)?;
        let category = self.resolve_category(&input).await?;
        let at = now_millis();
        let product = rules::build(id, &input, category.as_ref(), current.created_at.clone(), rfc3339(at));
        let changes = SkuChanges {
            new: new_variants
                .iter()
                .map(|v| NewSku {
                    sku: v.sku.clone(),
                    price: v.price.unwrap_or(input.price),
                    stock: v.stock.unwrap_or_default(),
                })
                .collect(),
            prices: product
                .variants
                .iter()
                .filter(|v| !new_variants.iter().any(|n| n.sku.as_str() == v.sku))
                .map(|v| (v.sku.clone(), v.price))
                .collect(),
        };
        let event = Self::upserted(&product, at, traceparent)?;
        self.store
            .replace_product(&product, version, &changes, &event, self.projected, at)
            .await?;
        drop(_tree);
        self.project().await;
        Ok(product)
    }

    /// A JSON merge patch (RFC 7396) of the product's fields other than its variants.
    pub(crate) async fn patch_product(
        &self,
        id: ProductId,
        patch: serde_json::Value,
        traceparent: Option<String>,
    ) -> Result<Product, CatalogFailure> {
        let (current, version) = self
            .store
            .product_for_write(id)
            .await?
            .ok_or_else(|| CatalogFailure::NotFound(format!("no product {id}")))?;
        let input = rules::patch(&current, &patch)?;
        // Written only if nobody changed the product since it was read (version check):
        // a concurrent change makes this a 409, never a lost update.
        self.replace(id, input, Some(version), traceparent).await
    }

    pub(crate) async fn delete_product(
        &self,
        id: ProductId,
        traceparent: Option<String>,
    ) -> Result<(), CatalogFailure> {
        let at = now_millis();
        let data = serde_json::json!({"id": id.to_string(), "deleted_at": rfc3339(at)});
        let event = Event::new(EventType::ProductDeleted, id, at, traceparent, data);
        if !self.store.delete_product(id, &event, self.projected, at).await? {
            return Err(CatalogFailure::NotFound(format!("no product {id}")));
        }
        self.project().await;
        Ok(())
    }

    pub(crate) async fn create_category(&self, name: &str, parent_id: Option<i64>) -> Result<Category, CatalogFailure> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(CatalogFailure::Invalid("name must be 1-100 characters".into()));
        }
        let _tree = self.tree.read().await;
        let parent = match parent_id {
            Some(id) => Some(
                self.store
                    .category_row(id)
                    .await?
                    .ok_or_else(|| CatalogFailure::Invalid(format!("no parent category {id}")))?,
            ),
            None => None,
        };
        if parent.as_ref().is_some_and(|p| p.depth >= rules::MAX_CATEGORY_DEPTH) {
            return Err(CatalogFailure::Invalid(format!(
                "categories nest at most {} levels deep",
                rules::MAX_CATEGORY_DEPTH + 1
            )));
        }
        let category = self
            .store
            .insert_category(name, parent.as_ref(), self.projected, now_millis())
            .await?;
        drop(_tree);
        self.project().await;
        Ok(category)
    }

    /// Moves a category with everything below it under `parent_id` (top level when None).
    pub(crate) async fn move_category(
        &self,
        id: i64,
        parent_id: Option<i64>,
        traceparent: Option<String>,
    ) -> Result<Category, CatalogFailure> {
        let _tree = self.tree.write().await;
        let node = self
            .store
            .category_row(id)
            .await?
            .ok_or_else(|| CatalogFailure::NotFound(format!("no category {id}")))?;
        let parent = match parent_id {
            Some(p) => Some(
                self.store
                    .category_row(p)
                    .await?
                    .ok_or_else(|| CatalogFailure::Invalid(format!("no parent category {p}")))?,
            ),
            None => None,
        };
        let height = self.store.subtree_height(&node).await?;
        let plan = categories::plan_move(&node, parent.as_ref(), height)?;
        let at = now_millis();
        self.store
            .move_category(&node, parent_id, &plan, traceparent, self.projected, at)
            .await?;
        drop(_tree);
        self.project().await;
        Ok(Category {
            parent_id,
            path: plan.new_prefix,
            depth: node.depth + plan.depth_delta,
            ..node
        })
    }

    pub(crate) async fn product(&self, id: ProductId) -> Result<Option<Product>, CatalogFailure> {
        Ok(self.catalog.product(id).await?)
    }

    pub(crate) async fn products(
        &self,
        filter: &ProductFilter,
        page: &PageRequest<ProductId>,
    ) -> Result<Page<Product>, CatalogFailure> {
        Ok(self.catalog.products(filter, page).await?)
    }

    pub(crate) async fn category(&self, id: i64) -> Result<Option<Category>, CatalogFailure> {
        Ok(self.catalog.category(id).await?)
    }

    pub(crate) async fn children(
        &self,
        parent: Option<i64>,
        page: &PageRequest<i64>,
    ) -> Result<Page<Category>, CatalogFailure> {
        Ok(self.catalog.children(parent, page).await?)
    }

    /// The catalog's own health (the store's is checked separately).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.catalog.ping().await
    }
}
