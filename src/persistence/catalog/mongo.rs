//! The MongoDB catalog (`catalog.url = mongodb://host:port/db`): products and categories
//! as documents in the `products` and `categories` collections, with their indexes
//! created on start.
//!
//! It is a projection of the SQL store (see [`crate::persistence::catalog`]): [`MongoCatalog::sync`]
//! drains `catalog_projection` in order, reads the *current* SQL rows of the queued ids
//! and upserts them by `_id` (`replace_one` with `upsert`), so applying an entry twice,
//! or an old entry after a newer one, still ends at the SQL state. One sync runs at a
//! time (a mutex), so two syncs never interleave their writes.
//!
//! A category move arrives as one upsert per moved node. Real MongoDB could rewrite the
//! paths with one `update_many` and an aggregation-pipeline `$concat`; FerretDB (the
//! MongoDB-protocol server the tests run) refuses pipeline updates, and per-node upserts
//! of the SQL truth work on both — so that is what this does, on both.
//!
//! Soft-deleted products stay in the collection with `live: false` (every read filters
//! on `live`). Top-level categories have `parent_key: 0` so "children of X" and "top
//! level" are the same equality query on one index.

use crate::domain::catalog::{Category, Page, Product, ProductFilter};
use crate::domain::ids::ProductId;
use crate::persistence::catalog::{Catalog, PageRequest};
use crate::persistence::{SqlStore, StoreError};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::{Collection, Database, IndexModel};
use std::collections::BTreeSet;
use std::time::Duration;

const PROJECTION_BATCH: i64 = 500;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("mongodb: {e}").into())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("mongodb document: {e}").into())
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CategoryDoc {
    #[serde(rename = "_id")]
    id: i64,
    name: String,
    parent_id: Option<i64>,
    parent_key: i64,
    /// The id again, to sort and page on: a server that sorts a numeric `_id` as text
    /// (1, 10, 2, …) while comparing it as a number breaks id-ordered pages; a plain
    /// field sorts alike everywhere.
    seq: i64,
    path: String,
    depth: i64,
}

pub(crate) struct MongoCatalog {
    db: Database,
    store: SqlStore,
    sync_gate: tokio::sync::Mutex<()>,
}

impl MongoCatalog {
    /// Connects (lazily: the driver dials on first use) to the database named in the URL,
    /// `emporium` when the URL names none.
    pub async fn connect(url: &str, store: SqlStore) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(url).await.map_err(unavailable)?;
        // Fail fast enough for readiness and for a request to answer 503, not hang 30 s.
        options.server_selection_timeout.get_or_insert(Duration::from_secs(5));
        options.connect_timeout.get_or_insert(Duration::from_secs(5));
        options.app_name.get_or_insert_with(|| "emporium".into());
        let client = mongodb::Client::with_options(options).map_err(unavailable)?;
        let db = client.default_database().unwrap_or_else(|| client.database("emporium"));
        Ok(Self {
            db,
            store,
            sync_gate: tokio::sync::Mutex::new(()),
        })
    }

    fn products_coll(&self) -> Collection<Document> {
        self.db.collection("products")
    }

    fn categories_coll(&self) -> Collection<Document> {
        self.db.collection("categories")
    }

    async fn apply_batch(&self, rows: &[(i64, Option<String>, Option<i64>)]) -> Result<(), StoreError> {
        let products: BTreeSet<String> = rows.iter().filter_map(|r| r.1.clone()).collect();
        let categories: BTreeSet<i64> = rows.iter().filter_map(|r| r.2).collect();
        let products: Vec<String> = products.into_iter().collect();
        let categories: Vec<i64> = categories.into_iter().collect();
        let coll = self.products_coll();
        for (product, live) in self.store.products_by_ids(&products).await? {
            let mut d = mongodb::bson::to_document(&product).map_err(corrupt)?;
            d.insert("_id", product.id.clone());
            d.insert("live", live);
            coll.replace_one(doc! {"_id": &product.id}, d)
                .upsert(true)
                .await
                .map_err(unavailable)?;
        }
        let coll = self.categories_coll();
        for c in self.store.categories_by_ids(&categories).await? {
            let d = mongodb::bson::to_document(&CategoryDoc {
                id: c.id,
                name: c.name,
                parent_id: c.parent_id,
                parent_key: c.parent_id.unwrap_or(0),
                seq: c.id,
                path: c.path,
                depth: c.depth,
            })
            .map_err(corrupt)?;
            coll.replace_one(doc! {"_id": c.id}, d)
                .upsert(true)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn collect<T: serde::de::DeserializeOwned>(
        coll: &Collection<Document>,
        filter: Document,
        order_by: &str,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let mut cursor = coll
            .find(filter)
            .sort(doc! {order_by: 1})
            .limit(limit as i64)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(unavailable)? {
            let d = cursor.deserialize_current().map_err(corrupt)?;
            out.push(mongodb::bson::from_document(d).map_err(corrupt)?);
        }
        Ok(out)
    }
}

fn category_of(d: CategoryDoc) -> Category {
    Category {
        id: d.id,
        name: d.name,
        parent_id: d.parent_id,
        path: d.path,
        depth: d.depth,
    }
}

#[async_trait::async_trait]
impl Catalog for MongoCatalog {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        // One index per call: FerretDB v1 (the MongoDB-protocol server the tests run)
        // drops the connection when one createIndexes call names two or more indexes
        // that exist already, i.e. at every restart on an existing database. Creating an
        // existing index with the same keys is a no-op on every server.
        let index = |keys: Document| IndexModel::builder().keys(keys).build();
        for keys in [
            doc! {"category_path": 1},
            doc! {"brand": 1},
            doc! {"price.amount": 1},
            doc! {"status": 1},
        ] {
            self.products_coll()
                .create_index(index(keys))
                .await
                .map_err(unavailable)?;
        }
        for keys in [doc! {"path": 1}, doc! {"parent_key": 1}, doc! {"seq": 1}] {
            self.categories_coll()
                .create_index(index(keys))
                .await
                .map_err(unavailable)?;
        }
        self.sync().await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.sync_gate.lock().await;
        loop {
            let rows = self.store.projection_batch(PROJECTION_BATCH).await?;
            let Some(last) = rows.last().map(|r| r.0) else {
                return Ok(());
            };
            self.apply_batch(&rows).await?;
            self.store.projection_done(last).await?;
        }
    }

    async fn product(&self, id: ProductId) -> Result<Option<Product>, StoreError> {
        let found = self
            .products_coll()
            .find_one(doc! {"_id": id.to_string(), "live": true})
            .await
            .map_err(unavailable)?;
        found
            .map(|d| mongodb::bson::from_document(d).map_err(corrupt))
            .transpose()
    }

    async fn products(
        &self,
        filter: &ProductFilter,
        page: &PageRequest<ProductId>,
    ) -> Result<Page<Product>, StoreError> {
        let mut f = doc! {"live": true};
        if let Some(path) = &filter.category_path {
            // The path was validated (digits and '/'), so it is a literal prefix; an
            // anchored prefix regex is answered from the category_path index.
            f.insert("category_path", doc! {"$regex": format!("^{path}(/|$)")});
        }
        if let Some(brand) = &filter.brand {
            f.insert("brand", brand.clone());
        }
        let mut price = Document::new();
        if let Some(min) = filter.min_price {
            price.insert("$gte", min);
        }
        if let Some(max) = filter.max_price {
            price.insert("$lte", max);
        }
        if !price.is_empty() {
            f.insert("price.amount", price);
        }
        if let Some(status) = filter.status {
            f.insert("status", status.as_str());
        }
        if let Some(after) = page.cursor {
            f.insert("_id", doc! {"$gt": after.to_string()});
        }
        let items: Vec<Product> = Self::collect(&self.products_coll(), f, "_id", page.limit + 1).await?;
        Ok(Page::from_rows(items, page.limit, |p| p.id.clone()))
    }

    async fn category(&self, id: i64) -> Result<Option<Category>, StoreError> {
        let found = self
            .categories_coll()
            .find_one(doc! {"_id": id})
            .await
            .map_err(unavailable)?;
        found
            .map(|d| {
                mongodb::bson::from_document::<CategoryDoc>(d)
                    .map(category_of)
                    .map_err(corrupt)
            })
            .transpose()
    }

    async fn children(&self, parent: Option<i64>, page: &PageRequest<i64>) -> Result<Page<Category>, StoreError> {
        let mut f = doc! {"parent_key": parent.unwrap_or(0)};
        if let Some(after) = page.cursor {
            f.insert("seq", doc! {"$gt": Bson::Int64(after)});
        }
        let docs: Vec<CategoryDoc> = Self::collect(&self.categories_coll(), f, "seq", page.limit + 1).await?;
        let items = docs.into_iter().map(category_of).collect();
        Ok(Page::from_rows(items, page.limit, |c| c.id.to_string()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! {"ping": 1}).await.map_err(unavailable)?;
        Ok(())
    }
}
