//! The embedded search index: tantivy, in `<data_dir>/search/`, no server to run.
//!
//! Layout: one directory per index version (`products_v1/`, `products_v2/`, …) and an
//! alias file `products.alias` naming the version in use. A rebuild fills a new version
//! and switches by renaming a new alias file over the old one (atomic on POSIX), then
//! removes the old directory. A running server polls the alias file, so an
//! `emporium reindex` run next to it is picked up (see [`EmbeddedIndex::follow_alias`]).
//!
//! Fields (one analyzer per purpose, see [`super::analysis`]): `name`, `brand`,
//! `category`, `description`, `all_text` (Korean analysis, boosted 4/3/2/1/0.5);
//! `name_prefix` (edge n-grams, autocomplete); `name_ngram` (n-grams, partial words);
//! `brand_kw`, `category_kw`, `category_anc` (keywords: exact filters and facets);
//! `price`, `version` (fast numbers: ranges, sorting, newest-wins); `doc` (stored JSON of
//! the [`SearchDoc`], what a hit shows).
//!
//! A deleted product leaves a tombstone (its id and version, no text), so that a
//! re-delivered older `product_upserted` cannot bring it back.
//!
//! A search costs what its answer needs: count and facets in one unscored pass
//! over `all_text` with a fast-field collector ([`super::facets`]), the top hits by
//! block-WAND over the weighted fields, typo and partial-word expansion only when the
//! words find little (see [`Plan`]), and recent answers cached until the index changes
//! (see [`ResultCache`]).
//!
//! Source: `tokenizers.rs` (the shared analysis as tantivy tokenizers), `schema.rs`
//! (fields, index versions), `query.rs` (a request's [`Plan`] and running it), `cache.rs`
//! (the result cache); this file: the index itself (the alias, applying changes,
//! rebuilds, searching).

use super::analysis::{self, Analysis};
use super::{grams, IndexChange, Rebuild, SearchError, SearchIndex};
use crate::domain::search::{SearchDoc, SearchQuery, SearchResults};
use crate::error::Cause;
use async_trait::async_trait;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::{TantivyDocument, Term};

const KIND_PRODUCT: &str = "p";
const KIND_TOMBSTONE: &str = "t";
/// Writer heap of the serving index (events arrive a few at a time).
const SERVING_HEAP: usize = 50_000_000;
/// Writer heap of a rebuild (bulk loading: bigger segments, fewer merges).
const REBUILD_HEAP: usize = 256_000_000;

/// Field boosts: name over brand over category over description; `all_text` (which also
/// holds attributes and SKUs) catches the rest.
const BOOSTS: [(&str, f32); 5] = [
    ("name", 4.0),
    ("brand", 3.0),
    ("category", 2.0),
    ("description", 1.0),
    ("all_text", 0.5),
];

mod cache;
mod query;
mod schema;
mod segments;
mod tokenizers;

use super::unavailable;
use cache::{CacheKey, ResultCache};
use query::{boxed, run_cached};
use schema::Version;

/// The embedded [`SearchIndex`]: a cheap handle on the shared state.
#[derive(Clone)]
pub struct EmbeddedIndex(Arc<Shared>);

impl std::ops::Deref for EmbeddedIndex {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    root: PathBuf,
    alias: String,
    analysis: Arc<Analysis>,
    current: RwLock<Arc<Version>>,
    /// Changes applied since start, replayed onto a version a reindex in another process
    /// switched to (it was built from a catalog snapshot that may miss them). Bounded.
    recent: Mutex<std::collections::VecDeque<IndexChange>>,
    /// Recent answers (see [`ResultCache`]); `None` when `search.cache_entries` is 0.
    cache: Option<Mutex<ResultCache>>,
    /// Columns and term bitsets per segment (see [`segments`]); always on: it holds
    /// what segments contain, not answers.
    segments: segments::SegmentCache,
}

/// Answers kept by default (`search.cache_entries`): each is one page of hits and the
/// facets, a few KB, so tens of MB at most.
pub(crate) const DEFAULT_CACHE_ENTRIES: usize = 10_000;

const RECENT_CHANGES: usize = 100_000;

fn alias_file(root: &Path, alias: &str) -> PathBuf {
    root.join(format!("{alias}.alias"))
}

fn read_alias(root: &Path, alias: &str) -> Option<String> {
    std::fs::read_to_string(alias_file(root, alias))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Points the alias at `name` in one step: write a temporary file, fsync, rename.
fn write_alias(root: &Path, alias: &str, name: &str) -> Result<(), SearchError> {
    use std::io::Write;
    let tmp = root.join(format!(".{alias}.alias.{}", uuid::Uuid::new_v4().simple()));
    let mut f = std::fs::File::create(&tmp).map_err(unavailable)?;
    f.write_all(name.as_bytes()).map_err(unavailable)?;
    f.sync_all().map_err(unavailable)?;
    std::fs::rename(&tmp, alias_file(root, alias)).map_err(unavailable)?;
    if let Ok(dir) = std::fs::File::open(root) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn next_version_name(root: &Path, alias: &str) -> String {
    let highest = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| super::version_of(&e.file_name().to_string_lossy(), alias))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    format!("{alias}_v{}", highest + 1)
}

impl EmbeddedIndex {
    /// Opens the version the alias names, creating `products_v1` on first start, with a
    /// result cache of [`DEFAULT_CACHE_ENTRIES`].
    pub fn open(root: &Path, alias: &str, analysis: Arc<Analysis>) -> Result<Self, SearchError> {
        Self::open_with_cache(root, alias, analysis, DEFAULT_CACHE_ENTRIES)
    }

    /// [`EmbeddedIndex::open`] with a result cache of `cache_entries` answers (0: none).
    pub(crate) fn open_with_cache(
        root: &Path,
        alias: &str,
        analysis: Arc<Analysis>,
        cache_entries: usize,
    ) -> Result<Self, SearchError> {
        std::fs::create_dir_all(root).map_err(unavailable)?;
        let version = match read_alias(root, alias) {
            Some(name) => Version::open(&root.join(&name), &name, &analysis, false, SERVING_HEAP)?,
            None => {
                let name = next_version_name(root, alias);
                let v = Version::open(&root.join(&name), &name, &analysis, true, SERVING_HEAP)?;
                v.commit()?;
                write_alias(root, alias, &name)?;
                v
            }
        };
        Ok(Self(Arc::new(Shared {
            root: root.to_owned(),
            alias: alias.to_owned(),
            analysis,
            current: RwLock::new(Arc::new(version)),
            recent: Mutex::new(Default::default()),
            cache: NonZeroUsize::new(cache_entries).map(|n| Mutex::new(ResultCache::new(n))),
            segments: Default::default(),
        })))
    }

    /// Polls the alias file until the process ends.
    pub(crate) fn spawn_alias_follower(&self, every: Duration) {
        let me = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(index) = me.upgrade() else { return };
                let r = tokio::task::spawn_blocking(move || index.follow_alias()).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(error = %e, "could not switch to the reindexed search index");
                }
            }
        });
    }
}

impl Shared {
    fn version(&self) -> Arc<Version> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value
        // is still a complete version.
        match self.current.read() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn swap(&self, v: Arc<Version>) -> Arc<Version> {
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        std::mem::replace(&mut *guard, v)
    }

    /// Checks whether another process (`emporium reindex`) switched the alias; if so,
    /// opens the new version, replays the changes applied here since start (versioned,
    /// so those already in it are skipped), swaps it in and removes the old directory.
    pub(crate) fn follow_alias(&self) -> Result<bool, SearchError> {
        let current = self.version();
        let Some(name) = read_alias(&self.root, &self.alias) else {
            return Ok(false);
        };
        if name == current.name {
            return Ok(false);
        }
        let next = Arc::new(Version::open(
            &self.root.join(&name),
            &name,
            &self.analysis,
            false,
            SERVING_HEAP,
        )?);
        if next.writer.lock().map(|w| w.is_none()).unwrap_or(true) {
            // The reindex process still holds the new version's writer (it is about to
            // exit): switch on a later poll, when this process can write to it.
            return Ok(false);
        }
        let replay: Vec<IndexChange> = self
            .recent
            .lock()
            .map_err(|_| unavailable("poisoned"))?
            .iter()
            .cloned()
            .collect();
        next.apply(replay)?;
        let old = self.swap(next);
        let _ = old.close_writer();
        let _ = std::fs::remove_dir_all(&old.dir);
        tracing::info!(from = %old.name, to = %name, "search index switched by a reindex");
        Ok(true)
    }

    fn search_blocking(&self, q: &SearchQuery) -> Result<SearchResults, SearchError> {
        let v = self.version();
        let searcher = v.reader.searcher();
        let generation = searcher.generation().generation_id();
        let key = self.cache.as_ref().map(|_| CacheKey::of(q));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            let mut cache = cache.lock().map_err(|_| unavailable("search cache poisoned"))?;
            let hit = cache.at(&v.name, generation).get(key).cloned();
            cache::count_lookup(hit.is_some());
            if let Some(hit) = hit {
                return Ok(SearchResults::clone(&hit));
            }
        }
        let plan = self.plan(&searcher, &v.fields, q);
        let segments = self.segments.of(&searcher).map_err(unavailable)?;
        let (addrs, total, facets) = run_cached(&searcher, &segments, &plan, q)?;
        let mut hits = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let stored: TantivyDocument = searcher.doc(addr).map_err(unavailable)?;
            let Some(json) = stored
                .get_first(v.fields.doc)
                .and_then(|v| v.as_str().map(str::to_owned))
            else {
                continue;
            };
            let d: SearchDoc = serde_json::from_str(&json).map_err(|e| SearchError::Rejected(Cause::new(e)))?;
            let mut hit = d.hit();
            hit.highlight = self.analysis.highlight(&d.name, &plan.highlight_terms);
            hits.push(hit);
        }
        let results = SearchResults { total, hits, facets };
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            let mut cache = cache.lock().map_err(|_| unavailable("search cache poisoned"))?;
            // Computed from this generation: stored under it (a newer generation seen
            // meanwhile empties the cache and this answer with it).
            cache.at(&v.name, generation).put(key, Arc::new(results.clone()));
        }
        Ok(results)
    }

    fn suggest_blocking(&self, prefix: &str, limit: usize) -> Result<Vec<String>, SearchError> {
        let words = analysis::words(prefix);
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let v = self.version();
        let searcher = v.reader.searcher();
        let clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|w| {
                let prefix: String = w.text.chars().take(grams::EDGE_MAX).collect();
                (
                    Occur::Must,
                    boxed(TermQuery::new(
                        Term::from_field_text(v.fields.name_prefix, &prefix),
                        IndexRecordOption::WithFreqs,
                    )),
                )
            })
            .collect();
        let top = searcher
            .search(&BooleanQuery::new(clauses), &TopDocs::with_limit(limit * 4))
            .map_err(unavailable)?;
        let mut out: Vec<String> = Vec::with_capacity(limit);
        for (_, addr) in top {
            let stored: TantivyDocument = searcher.doc(addr).map_err(unavailable)?;
            let Some(json) = stored
                .get_first(v.fields.doc)
                .and_then(|v| v.as_str().map(str::to_owned))
            else {
                continue;
            };
            let d: SearchDoc = serde_json::from_str(&json).map_err(|e| SearchError::Rejected(Cause::new(e)))?;
            if !out.contains(&d.name) {
                out.push(d.name);
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl SearchIndex for EmbeddedIndex {
    async fn apply(&self, changes: Vec<IndexChange>) -> Result<(), SearchError> {
        if changes.is_empty() {
            return Ok(());
        }
        {
            let mut recent = self.recent.lock().map_err(|_| unavailable("poisoned"))?;
            recent.extend(changes.iter().cloned());
            while recent.len() > RECENT_CHANGES {
                recent.pop_front();
            }
        }
        let v = self.version();
        // A commit fsyncs: keep it off the async worker threads.
        tokio::task::spawn_blocking(move || v.apply(changes))
            .await
            .map_err(unavailable)?
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, SearchError> {
        // A search takes well under a millisecond to a few: run it on the worker.
        self.search_blocking(query)
    }

    async fn suggest(&self, prefix: &str, limit: usize) -> Result<Vec<String>, SearchError> {
        self.suggest_blocking(prefix, limit)
    }

    async fn rebuild(&self) -> Result<Box<dyn Rebuild>, SearchError> {
        let name = next_version_name(&self.root, &self.alias);
        let dir = self.root.join(&name);
        let analysis = self.analysis.clone();
        let version = {
            let dir = dir.clone();
            let name = name.clone();
            tokio::task::spawn_blocking(move || Version::open(&dir, &name, &analysis, true, REBUILD_HEAP))
                .await
                .map_err(unavailable)??
        };
        Ok(Box::new(EmbeddedRebuild {
            index: self.0.clone(),
            version: Some(Arc::new(version)),
        }))
    }

    async fn current_version(&self) -> Result<Option<String>, SearchError> {
        Ok(Some(self.version().name.clone()))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

/// A new version being filled; searches keep using the current one until `finish`.
struct EmbeddedRebuild {
    index: Arc<Shared>,
    version: Option<Arc<Version>>,
}

#[async_trait]
impl Rebuild for EmbeddedRebuild {
    fn name(&self) -> &str {
        self.version.as_ref().map_or("", |v| v.name.as_str())
    }

    async fn add(&mut self, docs: Vec<SearchDoc>) -> Result<(), SearchError> {
        let v = self.version.clone().ok_or_else(|| unavailable("rebuild finished"))?;
        tokio::task::spawn_blocking(move || v.bulk_add(docs))
            .await
            .map_err(unavailable)?
    }

    async fn finish(mut self: Box<Self>) -> Result<Option<String>, SearchError> {
        let v = self.version.take().ok_or_else(|| unavailable("rebuild finished"))?;
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.switch_to(v))
            .await
            .map_err(unavailable)?
    }
}

impl Shared {
    /// Ends a rebuild: commit the new version, replay what changed meanwhile, point the
    /// alias at it (one rename), swap it in, and only then remove the old version.
    fn switch_to(&self, next: Arc<Version>) -> Result<Option<String>, SearchError> {
        next.commit()?;
        let replay: Vec<IndexChange> = self
            .recent
            .lock()
            .map_err(|_| unavailable("poisoned"))?
            .iter()
            .cloned()
            .collect();
        next.apply(replay)?;
        write_alias(&self.root, &self.alias, &next.name)?;
        let old = self.swap(next);
        // Another process serving this index (when this is `emporium reindex`) holds the
        // old version's writer lock; it removes the old version itself once it follows
        // the alias. Here we only remove it when we own it.
        let owned = old.writer.lock().map(|w| w.is_some()).unwrap_or(false);
        let _ = old.close_writer();
        if owned {
            std::fs::remove_dir_all(&old.dir).map_err(unavailable)?;
        }
        Ok(Some(old.name.clone()))
    }
}
