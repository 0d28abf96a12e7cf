//! The `Catalog`: where products and categories are read and queried. Two
//! implementations, chosen once at start-up from `catalog.url`:
//!
//! - [`SqlCatalog`](crate::persistence::catalog::sql::SqlCatalog), the embedded default: the SQL
//!   store's own `products` and `categories` tables (JSON document + generated, indexed
//!   columns). Works on SQLite and on MySQL/MariaDB, whichever the store is.
//! - [`MongoCatalog`](crate::persistence::catalog::mongo::MongoCatalog) (`catalog.url = mongodb://…`):
//!   the same documents in MongoDB collections with their indexes.
//!
//! **Who is the truth.** Every catalog change is first committed to the SQL store in one
//! transaction together with what must never disagree with it: the SKUs (uniqueness,
//! inventory rows, the stock journal) and the outbox event. The MongoDB catalog is a
//! projection of that commit: the same transaction queues the changed ids in
//! `catalog_projection`; [`Catalog::sync`] applies them with idempotent upserts keyed by
//! id (always writing the *current* SQL document, so replays and retries converge) and
//! only then removes them from the queue. A crash between the SQL commit and the MongoDB
//! write therefore loses nothing and leaves nothing silently divergent: the queue is
//! replayed at the next start (or by the background retry while MongoDB is down). With
//! the embedded catalog the commit *is* the catalog write and `sync` has nothing to do.

pub(crate) mod mongo;
pub(crate) mod sql;

use crate::domain::catalog::{Category, Page, Product, ProductFilter};
use crate::domain::ids::ProductId;
use crate::persistence::StoreError;

/// A page request: at most `limit` items after `cursor` (exclusive), in id order.
#[derive(Debug, Clone)]
pub(crate) struct PageRequest<C> {
    pub(crate) limit: usize,
    pub(crate) cursor: Option<C>,
}

#[async_trait::async_trait]
pub(crate) trait Catalog: Send + Sync {
    /// `"embedded"` or `"mongodb"`, for logs and readiness.
    fn kind(&self) -> &'static str;

    /// Creates indexes and catches up with changes committed while it was away.
    async fn prepare(&self) -> Result<(), StoreError>;

    /// Applies committed changes the catalog has not seen yet. Idempotent.
    async fn sync(&self) -> Result<(), StoreError>;

    /// A live (not deleted) product.
    async fn product(&self, id: ProductId) -> Result<Option<Product>, StoreError>;

    /// Live products matching `filter`, in id order.
    async fn products(
        &self,
        filter: &ProductFilter,
        page: &PageRequest<ProductId>,
    ) -> Result<Page<Product>, StoreError>;

    async fn category(&self, id: i64) -> Result<Option<Category>, StoreError>;

    /// The direct children of `parent` (the top level when `None`), in id order.
    async fn children(&self, parent: Option<i64>, page: &PageRequest<i64>) -> Result<Page<Category>, StoreError>;

    /// Whether the backend answers (for `/health/ready`).
    async fn ping(&self) -> Result<(), StoreError>;
}
