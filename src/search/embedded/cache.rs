//! The result cache: answers keyed by the normalised request, valid for one searcher
//! generation of one index version.
use crate::domain::search::{SearchQuery, SearchResults, Sort};
use crate::search::analysis;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};

/// `emporium_search_cache_lookups_total{result="hit"|"miss"}`: how often the result cache
/// answered. In prometheus' default registry, which `/metrics` renders next to the app's
/// own (the index is opened apart from the app's `Metrics`, and one process has one cache
/// per index handle). `None` if registering failed: the cache works without its counter.
fn lookups() -> Option<&'static prometheus::IntCounterVec> {
    static LOOKUPS: OnceLock<Option<prometheus::IntCounterVec>> = OnceLock::new();
    LOOKUPS
        .get_or_init(|| {
            let c = prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "emporium_search_cache_lookups_total",
                    "Search result cache lookups by result (hit, miss)",
                ),
                &["result"],
            )
            .ok()?;
            prometheus::default_registry().register(Box::new(c.clone())).ok()?;
            // Both series from the start, so that a reader sees 0, not a missing metric.
            c.with_label_values(&["hit"]);
            c.with_label_values(&["miss"]);
            Some(c)
        })
        .as_ref()
}

pub(super) fn count_lookup(hit: bool) {
    if let Some(c) = lookups() {
        c.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
    }
}

/// A search request normalised to what its answer depends on: the words (lowercased,
/// punctuation dropped), the filters, the order and the page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct CacheKey {
    pub(super) words: String,
    pub(super) category: Option<String>,
    pub(super) brand: Option<String>,
    pub(super) min_price: Option<u64>,
    pub(super) max_price: Option<u64>,
    pub(super) sort: Sort,
    pub(super) offset: usize,
    pub(super) size: usize,
}

impl CacheKey {
    pub(super) fn of(q: &SearchQuery) -> Self {
        let words: Vec<String> = analysis::words(&q.text).into_iter().map(|w| w.text).collect();
        Self {
            words: words.join(" "),
            category: q.category.as_ref().map(|c| c.trim_matches('/').to_owned()),
            brand: q.brand.clone(),
            min_price: q.min_price,
            max_price: q.max_price,
            sort: q.sort,
            offset: q.offset,
            size: q.size,
        }
    }
}

/// Answers of recent searches, valid for one searcher generation of one index version:
/// every commit the index reloads (an event applied, a reindex switched) starts a new
/// generation, and the first search that sees it empties the cache. So a cached answer
/// is never older than what a fresh search would see.
pub(super) struct ResultCache {
    pub(super) generation: (String, u64),
    pub(super) entries: lru::LruCache<CacheKey, Arc<SearchResults>>,
}

impl ResultCache {
    pub(super) fn new(capacity: NonZeroUsize) -> Self {
        // Registered with the cache, so `/metrics` shows it from the start.
        let _ = lookups();
        Self {
            generation: (String::new(), 0),
            entries: lru::LruCache::new(capacity),
        }
    }

    pub(super) fn at(&mut self, version: &str, generation: u64) -> &mut lru::LruCache<CacheKey, Arc<SearchResults>> {
        if self.generation.1 != generation || self.generation.0 != version {
            self.entries.clear();
            self.generation = (version.to_owned(), generation);
        }
        &mut self.entries
    }
}
