//! `emporium reindex`: rebuilds the search index from the catalog into a new version
//! (`products_v{n}`), switches the alias to it in one step, and only then removes the
//! old version. Searches keep answering from the old version until the switch.
//!
//! The catalog is read in pages by primary key (keyset pagination, no OFFSET), so a
//! million products stream through without holding them in memory. A product's version
//! is its `updated_at` (shifted like event versions), so an event newer than the
//! snapshot still wins over the reindexed copy, and an older one does not.
//!
//! Source: the `products` table of the SQL store (the embedded catalog). `emporium seed`
//! bulk-loads that table without one event per product and asks for this command, which
//! is how the 1,000,000-product search benchmark is built (docs/search.md). When the
//! catalog moves behind its own trait, only [`catalog_page`] changes.

use super::{SearchError, SearchIndex};
use crate::domain::search::SearchDoc;
use crate::persistence::SqlStore;
use sqlx::Row;

pub(crate) const PAGE: i64 = 2_000;
const CATCH_UP_MARGIN_MS: i64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error(transparent)]
    Search(#[from] SearchError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReindexReport {
    pub new_index: String,
    pub old_index: Option<String>,
    pub indexed: u64,
    pub skipped: u64,
}

/// One page of `(id, doc, updated_at)` after `after` in id order.
pub(crate) async fn catalog_page(store: &SqlStore, after: &str) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, doc, updated_at FROM products WHERE id > ? ORDER BY id LIMIT ?")
        .bind(after.to_owned())
        .bind(PAGE)
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(row).collect()
}

async fn changed_since(store: &SqlStore, since: i64) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, doc, updated_at FROM products WHERE updated_at >= ?")
        .bind(since)
        .fetch_all(store.pool())
        .await?;
    rows.iter().map(row).collect()
}

fn row(r: &sqlx::any::AnyRow) -> Result<(String, String, i64), sqlx::Error> {
    // MySQL reports LONGTEXT as bytes through the Any driver.
    let doc = match r.try_get::<String, _>("doc") {
        Ok(d) => d,
        Err(_) => String::from_utf8_lossy(&r.try_get::<Vec<u8>, _>("doc")?).into_owned(),
    };
    Ok((r.try_get("id")?, doc, r.try_get("updated_at")?))
}

pub async fn catalog_size(store: &SqlStore) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM products")
        .fetch_one(store.pool())
        .await?
        .try_get("n")?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Rebuilds the index from the catalog; `progress` is told how many products are done.
pub async fn reindex(
    store: &SqlStore,
    index: &dyn SearchIndex,
    mut progress: impl FnMut(u64),
) -> Result<ReindexReport, ReindexError> {
    // Products changed while the catalog is read may be missed by the snapshot and, when
    // a server in another process applied their events to the old version, by the new
    // one: after the switch, everything updated since shortly before the start is applied
    // again (versioned, so nothing newer is overwritten).
    let started = crate::domain::now_millis() - CATCH_UP_MARGIN_MS;
    let mut rebuild = index.rebuild().await?;
    let new_index = rebuild.name().to_owned();
    let (mut indexed, mut skipped) = (0u64, 0u64);
    let mut after = String::new();
    loop {
        let page = catalog_page(store, &after).await?;
        let Some((last, _, _)) = page.last() else { break };
        after = last.clone();
        let mut docs = Vec::with_capacity(page.len());
        for (id, doc, updated_at) in &page {
            let version = u64::try_from(*updated_at).unwrap_or(0) << 16;
            let parsed = serde_json::from_str::<serde_json::Value>(doc)
                .ok()
                .filter(SearchDoc::listed)
                .and_then(|d| SearchDoc::from_product(&d, version).ok());
            match parsed {
                Some(d) => docs.push(d),
                None => {
                    tracing::warn!(product = %id, "not indexed: hidden or not a valid product document");
                    skipped += 1;
                }
            }
        }
        indexed += docs.len() as u64;
        rebuild.add(docs).await?;
        progress(indexed + skipped);
    }
    let old_index = rebuild.finish().await?;
    let changed = changed_since(store, started).await?;
    index
        .apply(
            changed
                .iter()
                .filter_map(|(_, doc, updated_at)| {
                    let d: serde_json::Value = serde_json::from_str(doc).ok()?;
                    let version = u64::try_from(*updated_at).unwrap_or(0) << 16;
                    SearchDoc::listed(&d)
                        .then(|| SearchDoc::from_product(&d, version).ok())
                        .flatten()
                        .map(super::IndexChange::Upsert)
                })
                .collect(),
        )
        .await?;
    Ok(ReindexReport {
        new_index,
        old_index,
        indexed,
        skipped,
    })
}
