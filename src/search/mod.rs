//! Product search behind one trait, [`SearchIndex`], with two implementations chosen once
//! at start-up: the embedded tantivy index in `<data_dir>/search/` (default) and
//! Elasticsearch/OpenSearch (`search.url`). Both analyze text the same way
//! ([`analysis`]) and answer the same queries, which `tests/it/search.rs` checks by running
//! one suite over both.
//!
//! Writes are versioned (the event time): applying the same or an older change again is
//! a no-op, which is what at-least-once delivery needs. Indices are versioned too
//! (`products_v{n}` behind the alias `products`); [`SearchIndex::rebuild`] fills a new
//! version that replaces the old one atomically.

pub mod analysis;
pub mod elastic;
pub mod embedded;
pub(crate) mod facets;
pub(crate) mod feed;
pub(crate) mod grams;
pub(crate) mod indexer;
pub mod mecab;
pub(crate) mod nori;
pub mod reindex;

use crate::domain::search::{SearchDoc, SearchQuery, SearchResults};
use crate::error::Cause;
use async_trait::async_trait;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SearchError {
    /// The engine cannot be reached or failed: search answers 503, orders go on.
    #[error("search unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The engine refused what we sent (a bug or a broken index): not retried as is.
    #[error("search index rejected the request: {0}")]
    Rejected(#[source] Cause),
}

/// The engine failed or cannot be reached: `what` says how. Both engines report their
/// I/O, lock and client failures through this.
pub(crate) fn unavailable(what: impl std::fmt::Display) -> SearchError {
    SearchError::Unavailable(Cause::from(what.to_string()))
}

/// One change to apply, from a `product_upserted` or `product_deleted` event.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexChange {
    Upsert(SearchDoc),
    Delete { id: String, version: u64 },
}

impl IndexChange {
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Upsert(d) => &d.id,
            Self::Delete { id, .. } => id,
        }
    }
    pub(crate) fn version(&self) -> u64 {
        match self {
            Self::Upsert(d) => d.version,
            Self::Delete { version, .. } => *version,
        }
    }
}

/// Keeps, per product, only the newest change of a batch (events may arrive twice or
/// out of order; the newest version wins, and on a tie a delete wins).
pub(crate) fn newest_per_product(changes: Vec<IndexChange>) -> Vec<IndexChange> {
    let mut newest: std::collections::HashMap<String, IndexChange> = std::collections::HashMap::new();
    for c in changes {
        let replace = match newest.get(c.id()) {
            None => true,
            Some(old) => {
                c.version() > old.version() || (c.version() == old.version() && matches!(c, IndexChange::Delete { .. }))
            }
        };
        if replace {
            newest.insert(c.id().to_owned(), c);
        }
    }
    newest.into_values().collect()
}

#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// Applies changes and makes them visible to search before returning. A change whose
    /// version is older than what the index holds for that product is skipped; the same
    /// version is applied again (it is the same event: nothing changes).
    async fn apply(&self, changes: Vec<IndexChange>) -> Result<(), SearchError>;
    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, SearchError>;
    /// Up to `limit` product names completing `prefix` (each word a prefix of a word).
    async fn suggest(&self, prefix: &str, limit: usize) -> Result<Vec<String>, SearchError>;
    /// Starts filling a new index version; searches keep using the current one until
    /// [`Rebuild::finish`] switches over.
    async fn rebuild(&self) -> Result<Box<dyn Rebuild>, SearchError>;
    /// The name of the index version the alias points at (`products_v3`).
    async fn current_version(&self) -> Result<Option<String>, SearchError>;
    /// A short name for logs and metrics.
    fn kind(&self) -> &'static str;
}

#[async_trait]
pub trait Rebuild: Send {
    /// The name of the index being filled.
    fn name(&self) -> &str;
    async fn add(&mut self, docs: Vec<SearchDoc>) -> Result<(), SearchError>;
    /// Makes the new index visible, switches the alias to it in one step, and only then
    /// removes the old one. Returns the old index name, if there was one.
    async fn finish(self: Box<Self>) -> Result<Option<String>, SearchError>;
}

/// `products_v7` → 7.
pub fn version_of(name: &str, alias: &str) -> Option<u64> {
    name.strip_prefix(alias)?.strip_prefix("_v")?.parse().ok()
}

/// The analysis files named in the settings, or the compiled-in defaults.
pub(crate) fn load_analysis(s: &crate::config::SearchSettings) -> anyhow::Result<analysis::Analysis> {
    use anyhow::Context as _;
    let read = |path: &Option<String>, default: &str| -> anyhow::Result<String> {
        match path {
            None => Ok(default.to_owned()),
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}")),
        }
    };
    let analysis = analysis::Analysis::parse(
        &read(&s.synonyms_file, analysis::DEFAULT_SYNONYMS)?,
        &read(&s.dictionary_file, analysis::DEFAULT_DICTIONARY)?,
        &read(&s.particles_file, analysis::DEFAULT_PARTICLES)?,
    )?;
    let Some(dicdir) = &s.mecab_dicdir else {
        return Ok(analysis);
    };
    // The dictionary is optional: without it search keeps working on the built-in
    // analysis, and the log says which one is live.
    match mecab::Mecab::open(std::path::Path::new(dicdir)) {
        Ok(m) => Ok(analysis.with_morphology(std::sync::Arc::new(m))),
        Err(e) => {
            tracing::warn!(error = %e, "search.mecab_dicdir is set but MeCab could not load it: built-in Korean analysis");
            Ok(analysis)
        }
    }
}

/// The search index chosen by the settings: Elasticsearch when `search.url` is set,
/// otherwise the embedded index in `<data_dir>/search`.
pub async fn open(settings: &crate::config::Settings) -> anyhow::Result<std::sync::Arc<dyn SearchIndex>> {
    let analysis = std::sync::Arc::new(load_analysis(&settings.search)?);
    tracing::info!(korean = %analysis.korean(), "search analysis");
    if settings.search.url.is_none() {
        let root = settings.server.data_dir.join("search");
        let index = tokio::task::spawn_blocking({
            let alias = settings.search.alias.clone();
            let cache = settings.search.cache_entries;
            move || embedded::EmbeddedIndex::open_with_cache(&root, &alias, analysis, cache)
        })
        .await??;
        index.spawn_alias_follower(settings.search.alias_poll);
        Ok(std::sync::Arc::new(index))
    } else {
        elastic::ElasticIndex::connect(&settings.search, analysis)
            .map(|i| std::sync::Arc::new(i) as std::sync::Arc<dyn SearchIndex>)
            .map_err(anyhow::Error::from)
    }
}
