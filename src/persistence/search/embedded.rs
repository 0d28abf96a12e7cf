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

use super::analysis::{self, Analysis, Term as AnalyzedTerm};
use super::{newest_per_product, IndexChange, Rebuild, SearchError, SearchIndex};
use crate::domain::search::{
    price_range_key, Bucket, Facets, SearchDoc, SearchQuery, SearchResults, Sort, FACET_SIZE, PRICE_RANGES,
};
use async_trait::async_trait;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::agg_result::AggregationResults;
use tantivy::aggregation::{AggregationCollector, AggregationLimitsGuard};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, Query, RangeQuery, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value, FAST, STORED, STRING,
};
use tantivy::tokenizer::{TextAnalyzer, Token, TokenStream, Tokenizer};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, TantivyDocument, Term};

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

// ------------------------------------------------------------------ tokenizers

#[derive(Clone, Copy)]
enum Mode {
    Korean,
    Edge,
    Ngram,
}

/// Runs one of the [`analysis`] functions as a tantivy tokenizer.
#[derive(Clone)]
struct AnalyzedTokenizer {
    analysis: Arc<Analysis>,
    mode: Mode,
}

struct VecTokenStream {
    tokens: Vec<Token>,
    at: usize,
}

impl TokenStream for VecTokenStream {
    fn advance(&mut self) -> bool {
        self.at += 1;
        self.at <= self.tokens.len()
    }
    fn token(&self) -> &Token {
        &self.tokens[self.at - 1]
    }
    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.at - 1]
    }
}

impl Tokenizer for AnalyzedTokenizer {
    type TokenStream<'a> = VecTokenStream;
    fn token_stream<'a>(&'a mut self, text: &'a str) -> VecTokenStream {
        let terms: Vec<AnalyzedTerm> = match self.mode {
            Mode::Korean => self.analysis.analyze(text),
            Mode::Edge => analysis::edge_grams(text),
            Mode::Ngram => analysis::ngrams(text),
        };
        let tokens = terms
            .into_iter()
            .enumerate()
            .map(|(position, t)| Token {
                offset_from: t.from,
                offset_to: t.to,
                position,
                text: t.text,
                position_length: 1,
            })
            .collect();
        VecTokenStream { tokens, at: 0 }
    }
}

// ------------------------------------------------------------------ schema

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    kind: Field,
    version: Field,
    name: Field,
    name_prefix: Field,
    name_ngram: Field,
    brand: Field,
    brand_kw: Field,
    category: Field,
    category_kw: Field,
    category_anc: Field,
    description: Field,
    all_text: Field,
    price: Field,
    doc: Field,
}

fn schema() -> Schema {
    let text = |tokenizer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(IndexRecordOption::WithFreqs),
        )
    };
    let mut b = Schema::builder();
    b.add_text_field("id", STRING | STORED);
    b.add_text_field("kind", STRING);
    b.add_u64_field("version", NumericOptions::default().set_fast().set_stored());
    b.add_text_field("name", text("ko"));
    b.add_text_field("name_prefix", text("edge"));
    b.add_text_field("name_ngram", text("ngram"));
    b.add_text_field("brand", text("ko"));
    b.add_text_field("brand_kw", STRING | FAST);
    b.add_text_field("category", text("ko"));
    b.add_text_field("category_kw", STRING | FAST);
    b.add_text_field("category_anc", STRING);
    b.add_text_field("description", text("ko"));
    b.add_text_field("all_text", text("ko"));
    b.add_u64_field("price", NumericOptions::default().set_fast().set_indexed());
    b.add_text_field("doc", STORED);
    b.build()
}

fn fields(schema: &Schema) -> Result<Fields, SearchError> {
    let f = |name: &str| {
        schema
            .get_field(name)
            .map_err(|e| SearchError::Rejected(format!("index schema lacks {name}: {e}")))
    };
    Ok(Fields {
        id: f("id")?,
        kind: f("kind")?,
        version: f("version")?,
        name: f("name")?,
        name_prefix: f("name_prefix")?,
        name_ngram: f("name_ngram")?,
        brand: f("brand")?,
        brand_kw: f("brand_kw")?,
        category: f("category")?,
        category_kw: f("category_kw")?,
        category_anc: f("category_anc")?,
        description: f("description")?,
        all_text: f("all_text")?,
        price: f("price")?,
        doc: f("doc")?,
    })
}

fn unavailable(e: impl std::fmt::Display) -> SearchError {
    SearchError::Unavailable(e.to_string())
}

/// One open index version: its reader, and its writer when this process owns it.
struct Version {
    name: String,
    dir: PathBuf,
    reader: IndexReader,
    writer: Mutex<Option<IndexWriter>>,
    fields: Fields,
}

impl Version {
    fn open(dir: &Path, name: &str, analysis: &Arc<Analysis>, create: bool, heap: usize) -> Result<Self, SearchError> {
        let index = if create {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
            Index::create_in_dir(dir, schema()).map_err(unavailable)?
        } else {
            Index::open_in_dir(dir).map_err(unavailable)?
        };
        for (tokenizer, mode) in [("ko", Mode::Korean), ("edge", Mode::Edge), ("ngram", Mode::Ngram)] {
            index.tokenizers().register(
                tokenizer,
                TextAnalyzer::from(AnalyzedTokenizer {
                    analysis: analysis.clone(),
                    mode,
                }),
            );
        }
        let fields = fields(&index.schema())?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(unavailable)?;
        let threads = if heap > SERVING_HEAP { 2 } else { 1 };
        // Another process (a server, while `emporium reindex` runs) may own the writer:
        // then this process only reads this version.
        let writer = match index.writer_with_num_threads(threads, heap) {
            Ok(w) => Some(w),
            Err(tantivy::TantivyError::LockFailure(..)) if !create => None,
            Err(e) => return Err(unavailable(e)),
        };
        Ok(Self {
            name: name.to_owned(),
            dir: dir.to_owned(),
            reader,
            writer: Mutex::new(writer),
            fields,
        })
    }

    fn document(&self, d: &SearchDoc) -> Result<TantivyDocument, SearchError> {
        let f = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, &d.id);
        doc.add_text(f.kind, KIND_PRODUCT);
        doc.add_u64(f.version, d.version);
        doc.add_text(f.name, &d.name);
        doc.add_text(f.name_prefix, &d.name);
        doc.add_text(f.name_ngram, &d.name);
        if let Some(brand) = &d.brand {
            doc.add_text(f.brand, brand);
            doc.add_text(f.brand_kw, brand);
        }
        if let Some(category) = &d.category_path {
            doc.add_text(f.category, category);
            doc.add_text(f.category_kw, category);
            for a in d.category_ancestors() {
                doc.add_text(f.category_anc, &a);
            }
        }
        if let Some(description) = &d.description {
            doc.add_text(f.description, description);
        }
        doc.add_text(f.all_text, d.all_text());
        doc.add_u64(f.price, d.price);
        doc.add_text(
            f.doc,
            serde_json::to_string(d).map_err(|e| SearchError::Rejected(e.to_string()))?,
        );
        Ok(doc)
    }

    /// The version the index holds for a product (a tombstone's too), from the last
    /// committed state.
    fn stored_version(&self, searcher: &Searcher, id: &str) -> Result<Option<u64>, SearchError> {
        let q = TermQuery::new(Term::from_field_text(self.fields.id, id), IndexRecordOption::Basic);
        let top = searcher.search(&q, &TopDocs::with_limit(1)).map_err(unavailable)?;
        let Some((_, addr)) = top.first() else { return Ok(None) };
        let column = searcher
            .segment_reader(addr.segment_ord)
            .fast_fields()
            .u64("version")
            .map_err(unavailable)?;
        Ok(column.first(addr.doc_id))
    }

    /// Applies newest-wins changes, commits and reloads the reader (visible on return).
    fn apply(&self, changes: Vec<IndexChange>) -> Result<(), SearchError> {
        if changes.is_empty() {
            return Ok(());
        }
        let searcher = self.reader.searcher();
        let mut guard = self.writer.lock().map_err(|_| unavailable("index writer poisoned"))?;
        let writer = guard
            .as_mut()
            .ok_or_else(|| unavailable(format!("{} is read-only in this process", self.name)))?;
        let mut changed = false;
        for change in newest_per_product(changes) {
            if self
                .stored_version(&searcher, change.id())?
                .is_some_and(|stored| stored > change.version())
            {
                // Out of date. The same version again is applied again (same content,
                // idempotent), like Elasticsearch's `external_gte`.
                continue;
            }
            writer.delete_term(Term::from_field_text(self.fields.id, change.id()));
            let doc = match &change {
                IndexChange::Upsert(d) => self.document(d)?,
                IndexChange::Delete { id, version } => {
                    let mut t = TantivyDocument::default();
                    t.add_text(self.fields.id, id);
                    t.add_text(self.fields.kind, KIND_TOMBSTONE);
                    t.add_u64(self.fields.version, *version);
                    t
                }
            };
            writer.add_document(doc).map_err(unavailable)?;
            changed = true;
        }
        if changed {
            writer.commit().map_err(unavailable)?;
            self.reader.reload().map_err(unavailable)?;
        }
        Ok(())
    }

    fn bulk_add(&self, docs: Vec<SearchDoc>) -> Result<(), SearchError> {
        let guard = self.writer.lock().map_err(|_| unavailable("index writer poisoned"))?;
        let writer = guard.as_ref().ok_or_else(|| unavailable("rebuild writer closed"))?;
        for d in &docs {
            writer.add_document(self.document(d)?).map_err(unavailable)?;
        }
        Ok(())
    }

    fn commit(&self) -> Result<(), SearchError> {
        let mut guard = self.writer.lock().map_err(|_| unavailable("index writer poisoned"))?;
        if let Some(w) = guard.as_mut() {
            w.commit().map_err(unavailable)?;
        }
        self.reader.reload().map_err(unavailable)
    }

    /// Commits, waits for merges and releases the writer lock (another process may then
    /// open this version for writing).
    fn close_writer(&self) -> Result<(), SearchError> {
        let writer = self
            .writer
            .lock()
            .map_err(|_| unavailable("index writer poisoned"))?
            .take();
        if let Some(mut w) = writer {
            w.commit().map_err(unavailable)?;
            w.wait_merging_threads().map_err(unavailable)?;
        }
        self.reader.reload().map_err(unavailable)
    }
}

// ------------------------------------------------------------------ queries

struct Built {
    query: Box<dyn Query>,
    /// Analyzed query terms and lowercased words, for the highlight.
    highlight_terms: Vec<String>,
}

fn boxed(q: impl Query) -> Box<dyn Query> {
    Box::new(q)
}

fn fuzzy_distance(term: &str) -> u8 {
    // Elasticsearch's `fuzziness: AUTO`: 0-2 characters exact, 3-5 one edit, more two.
    match term.chars().count() {
        0..=2 => 0,
        3..=5 => 1,
        _ => 2,
    }
}

impl Shared {
    /// The text part: every analyzed term in every field with its boost, the same terms
    /// fuzzily (typos), and all n-grams of the query words (partial words). Built from
    /// terms, never from a query parser: user input cannot carry query syntax.
    fn text_query(&self, f: &Fields, text: &str) -> Option<Built> {
        let terms = self.analysis.query_terms(text);
        if terms.is_empty() {
            return None;
        }
        let field_of = |name: &str| match name {
            "name" => f.name,
            "brand" => f.brand,
            "category" => f.category,
            "description" => f.description,
            _ => f.all_text,
        };
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for t in &terms {
            for (name, boost) in BOOSTS {
                let term = Term::from_field_text(field_of(name), t);
                should.push((
                    Occur::Should,
                    boxed(BoostQuery::new(
                        boxed(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                        boost,
                    )),
                ));
            }
            let distance = fuzzy_distance(t);
            if distance > 0 {
                // Not on `all_text`: it holds SKUs and attribute values, a term dictionary
                // as large as the catalog, and walking it with a Levenshtein automaton on
                // every query costs more than a typo in a SKU is worth.
                for (name, boost) in [("name", 2.0), ("brand", 1.5)] {
                    let term = Term::from_field_text(field_of(name), t);
                    should.push((
                        Occur::Should,
                        boxed(BoostQuery::new(boxed(FuzzyTermQuery::new(term, distance, true)), boost)),
                    ));
                }
            }
        }
        let grams: Vec<String> = analysis::ngrams(text).into_iter().map(|t| t.text).collect();
        if !grams.is_empty() {
            let all: Vec<(Occur, Box<dyn Query>)> = grams
                .iter()
                .map(|g| {
                    (
                        Occur::Must,
                        boxed(TermQuery::new(
                            Term::from_field_text(f.name_ngram, g),
                            IndexRecordOption::Basic,
                        )),
                    )
                })
                .collect();
            should.push((
                Occur::Should,
                boxed(BoostQuery::new(boxed(BooleanQuery::new(all)), 1.0)),
            ));
        }
        let mut highlight_terms = terms;
        highlight_terms.extend(analysis::words(text).into_iter().map(|w| w.text));
        Some(Built {
            query: boxed(BooleanQuery::new(should)),
            highlight_terms,
        })
    }

    fn build(&self, f: &Fields, q: &SearchQuery) -> Built {
        let text = self.text_query(f, &q.text);
        let mut filters: Vec<Box<dyn Query>> = Vec::new();
        if let Some(c) = &q.category {
            let c = c.trim_matches('/');
            filters.push(boxed(TermQuery::new(
                Term::from_field_text(f.category_anc, c),
                IndexRecordOption::Basic,
            )));
        }
        if let Some(b) = &q.brand {
            filters.push(boxed(TermQuery::new(
                Term::from_field_text(f.brand_kw, b),
                IndexRecordOption::Basic,
            )));
        }
        if q.min_price.is_some() || q.max_price.is_some() {
            let lo = q
                .min_price
                .map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_u64(f.price, v)));
            let hi = q
                .max_price
                .map_or(Bound::Unbounded, |v| Bound::Included(Term::from_field_u64(f.price, v)));
            filters.push(boxed(RangeQuery::new(lo, hi)));
        }
        let (base, highlight_terms): (Box<dyn Query>, Vec<String>) = match text {
            Some(b) => (b.query, b.highlight_terms),
            // No text: every product (tombstones have no kind "p"), scored equally.
            None => (
                boxed(TermQuery::new(
                    Term::from_field_text(f.kind, KIND_PRODUCT),
                    IndexRecordOption::Basic,
                )),
                Vec::new(),
            ),
        };
        if filters.is_empty() {
            return Built {
                query: base,
                highlight_terms,
            };
        }
        let mut clauses = vec![(Occur::Must, base)];
        clauses.extend(
            filters
                .into_iter()
                .map(|q| (Occur::Must, boxed(ConstScoreQuery::new(q, 0.0)))),
        );
        Built {
            query: boxed(BooleanQuery::new(clauses)),
            highlight_terms,
        }
    }
}

fn facet_request() -> Result<Aggregations, SearchError> {
    let ranges: Vec<serde_json::Value> = PRICE_RANGES
        .iter()
        .map(|(from, to)| match to {
            Some(to) => {
                serde_json::json!({"key": price_range_key(*from, Some(*to)), "from": *from as f64, "to": *to as f64})
            }
            None => serde_json::json!({"key": price_range_key(*from, None), "from": *from as f64}),
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "category": {"terms": {"field": "category_kw", "size": FACET_SIZE}},
        "brand": {"terms": {"field": "brand_kw", "size": FACET_SIZE}},
        "price": {"range": {"field": "price", "ranges": ranges, "keyed": false}},
    }))
    .map_err(|e| SearchError::Rejected(format!("facet request: {e}")))
}

fn buckets(results: &serde_json::Value, name: &str) -> Vec<Bucket> {
    results
        .get(name)
        .and_then(|a| a.get("buckets"))
        .and_then(|b| b.as_array())
        .map(|b| {
            b.iter()
                .filter_map(|b| {
                    let key = match b.get("key")? {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    Some(Bucket {
                        key,
                        count: b.get("doc_count")?.as_u64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn facets(results: AggregationResults) -> Result<Facets, SearchError> {
    let json = serde_json::to_value(results).map_err(|e| SearchError::Rejected(e.to_string()))?;
    let mut price = buckets(&json, "price");
    // Keep the configured order and every range, also the empty ones.
    price.retain(|b| PRICE_RANGES.iter().any(|(f, t)| price_range_key(*f, *t) == b.key));
    Ok(Facets {
        category: buckets(&json, "category"),
        brand: buckets(&json, "brand"),
        price,
    })
}

// ------------------------------------------------------------------ the index

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
}

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
    /// Opens the version the alias names, creating `products_v1` on first start.
    pub fn open(root: &Path, alias: &str, analysis: Arc<Analysis>) -> Result<Self, SearchError> {
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
        })))
    }

    /// Polls the alias file until the process ends.
    pub fn spawn_alias_follower(&self, every: Duration) {
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
    pub fn follow_alias(&self) -> Result<bool, SearchError> {
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
        let built = self.build(&v.fields, q);
        let limit = q.size.max(1);
        let aggs = AggregationCollector::from_aggs(facet_request()?, AggregationLimitsGuard::default());
        let (addrs, total, agg): (Vec<DocAddress>, usize, AggregationResults) = match q.sort {
            Sort::Relevance => {
                let top = TopDocs::with_limit(limit).and_offset(q.offset);
                let (hits, total, agg) = searcher
                    .search(&built.query, &(top, Count, aggs))
                    .map_err(unavailable)?;
                (hits.into_iter().map(|(_, a)| a).collect(), total, agg)
            }
            Sort::PriceAsc | Sort::PriceDesc | Sort::Newest => {
                let (field, order) = match q.sort {
                    Sort::PriceAsc => ("price", Order::Asc),
                    Sort::PriceDesc => ("price", Order::Desc),
                    _ => ("version", Order::Desc),
                };
                let top = TopDocs::with_limit(limit)
                    .and_offset(q.offset)
                    .order_by_fast_field::<u64>(field, order);
                let (hits, total, agg) = searcher
                    .search(&built.query, &(top, Count, aggs))
                    .map_err(unavailable)?;
                (hits.into_iter().map(|(_, a)| a).collect(), total, agg)
            }
        };
        let mut hits = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let stored: TantivyDocument = searcher.doc(addr).map_err(unavailable)?;
            let Some(json) = stored
                .get_first(v.fields.doc)
                .and_then(|v| v.as_str().map(str::to_owned))
            else {
                continue;
            };
            let d: SearchDoc = serde_json::from_str(&json).map_err(|e| SearchError::Rejected(e.to_string()))?;
            let mut hit = d.hit();
            hit.highlight = self.analysis.highlight(&d.name, &built.highlight_terms);
            hits.push(hit);
        }
        Ok(SearchResults {
            total: total as u64,
            hits,
            facets: facets(agg)?,
        })
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
                let prefix: String = w.text.chars().take(analysis::EDGE_MAX).collect();
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
            let d: SearchDoc = serde_json::from_str(&json).map_err(|e| SearchError::Rejected(e.to_string()))?;
            if !out.contains(&d.name) {
                out.push(d.name);
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Number of live products in the current version (tests and the reindex report).
    pub fn count(&self) -> Result<usize, SearchError> {
        let v = self.version();
        let q = TermQuery::new(
            Term::from_field_text(v.fields.kind, KIND_PRODUCT),
            IndexRecordOption::Basic,
        );
        v.reader.searcher().search(&q, &Count).map_err(unavailable)
    }

    /// Every document, tombstones included (used to check nothing is left behind).
    pub fn raw_count(&self) -> Result<usize, SearchError> {
        self.version()
            .reader
            .searcher()
            .search(&AllQuery, &Count)
            .map_err(unavailable)
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
