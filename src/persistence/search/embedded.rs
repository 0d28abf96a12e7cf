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
//! A search costs what its answer needs (issue 19): count and facets in one unscored pass
//! over `all_text` with a fast-field collector ([`super::facets`]), the top hits by
//! block-WAND over the weighted fields, typo and partial-word expansion only when the
//! words find little (see [`Plan`]), and recent answers cached until the index changes
//! (see [`ResultCache`]).

use super::analysis::{self, Analysis, Term as AnalyzedTerm};
use super::facets::FacetCollector;
use super::{newest_per_product, IndexChange, Rebuild, SearchError, SearchIndex};
use crate::domain::search::{Facets, SearchDoc, SearchQuery, SearchResults, Sort, EXPAND_BELOW};
use async_trait::async_trait;
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, FuzzyTermQuery, Occur, Query, RangeQuery,
    TermQuery,
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

/// What one search runs. The three queries match in tiers, so that the CPU a search
/// costs follows what the answer needs, not how many products a popular word matches:
///
/// - `matches`: the analyzed terms in `all_text` alone, unscored (`all_text` holds the
///   terms of every other text field, so it matches exactly the products the weighted
///   fields match). Count and facets iterate this: one or two posting lists, no BM25.
/// - `exact`: the same terms in the weighted fields, scored. A pure union of term
///   queries, so tantivy's block-WAND finds the top hits without scoring every match.
/// - `expanded`: `exact` plus typo-tolerant (fuzzy) terms and n-grams of the words; only
///   run when `matches` finds fewer than [`EXPAND_BELOW`] products (a Levenshtein walk of
///   the term dictionary and an n-gram intersection are the costly parts of a query, and
///   they only change the answer when the words as written find little).
struct Plan {
    matches: Box<dyn Query>,
    exact: Box<dyn Query>,
    expanded: Option<Box<dyn Query>>,
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

/// Whether any segment holds `term`. A term no segment has is left out of the query:
/// it would match nothing, and its empty posting list (read without frequencies) makes
/// tantivy give up block-WAND for the whole union.
fn indexed(searcher: &Searcher, term: &Term) -> bool {
    // On a read error keep the clause: the search then fails or answers as before.
    searcher.doc_freq(term).map_or(true, |n| n > 0)
}

fn union(clauses: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    if clauses.len() <= 1 {
        return clauses.into_iter().next().unwrap_or_else(|| boxed(EmptyQuery));
    }
    boxed(BooleanQuery::new(
        clauses.into_iter().map(|q| (Occur::Should, q)).collect(),
    ))
}

/// `base` restricted by the filters (which never score).
fn filtered(base: Box<dyn Query>, filters: &[Box<dyn Query>]) -> Box<dyn Query> {
    if filters.is_empty() {
        return base;
    }
    let mut clauses = vec![(Occur::Must, base)];
    clauses.extend(
        filters
            .iter()
            .map(|q| (Occur::Must, boxed(ConstScoreQuery::new(q.box_clone(), 0.0)))),
    );
    boxed(BooleanQuery::new(clauses))
}

impl Shared {
    /// The scored clauses of the text: every analyzed term in every field with its boost,
    /// and, when `expand`, the same terms fuzzily (typos) and all n-grams of the query
    /// words (partial words). Built from terms, never from a query parser: user input
    /// cannot carry query syntax.
    fn text_clauses(
        &self,
        searcher: &Searcher,
        f: &Fields,
        terms: &[String],
        text: &str,
        expand: bool,
    ) -> Vec<Box<dyn Query>> {
        let field_of = |name: &str| match name {
            "name" => f.name,
            "brand" => f.brand,
            "category" => f.category,
            "description" => f.description,
            _ => f.all_text,
        };
        let mut should: Vec<Box<dyn Query>> = Vec::new();
        for t in terms {
            for (name, boost) in BOOSTS {
                let term = Term::from_field_text(field_of(name), t);
                if !indexed(searcher, &term) {
                    continue;
                }
                should.push(boxed(BoostQuery::new(
                    boxed(TermQuery::new(term, IndexRecordOption::WithFreqs)),
                    boost,
                )));
            }
            let distance = fuzzy_distance(t);
            if expand && distance > 0 {
                // Not on `all_text`: it holds SKUs and attribute values, a term dictionary
                // as large as the catalog, and walking it with a Levenshtein automaton on
                // every query costs more than a typo in a SKU is worth.
                for (name, boost) in [("name", 2.0), ("brand", 1.5)] {
                    let term = Term::from_field_text(field_of(name), t);
                    should.push(boxed(BoostQuery::new(
                        boxed(FuzzyTermQuery::new(term, distance, true)),
                        boost,
                    )));
                }
            }
        }
        let grams: Vec<String> = if expand {
            analysis::ngrams(text).into_iter().map(|t| t.text).collect()
        } else {
            Vec::new()
        };
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
            should.push(boxed(BoostQuery::new(boxed(BooleanQuery::new(all)), 1.0)));
        }
        should
    }

    fn plan(&self, searcher: &Searcher, f: &Fields, q: &SearchQuery) -> Plan {
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
        let terms = self.analysis.query_terms(&q.text);
        // No words at all: browse. Words the analysis drops entirely (a morphological
        // analyzer drops adverbs and endings) match nothing as terms, and go on to the
        // partial-word tier below, rather than becoming "everything".
        if terms.is_empty() && analysis::words(&q.text).is_empty() {
            // No text: every product, scored equally. A filter alone already excludes
            // tombstones (they have no category, brand or price), so the `kind` clause is
            // only needed without one.
            let base: Box<dyn Query> = if filters.is_empty() {
                boxed(TermQuery::new(
                    Term::from_field_text(f.kind, KIND_PRODUCT),
                    IndexRecordOption::Basic,
                ))
            } else {
                let mut filters = filters;
                let first = boxed(ConstScoreQuery::new(filters.remove(0), 1.0));
                filtered(first, &filters)
            };
            return Plan {
                matches: base.box_clone(),
                exact: base,
                expanded: None,
                highlight_terms: Vec::new(),
            };
        }
        let matches = union(
            terms
                .iter()
                .map(|t| Term::from_field_text(f.all_text, t))
                .filter(|t| indexed(searcher, t))
                .map(|t| boxed(TermQuery::new(t, IndexRecordOption::Basic)))
                .collect(),
        );
        let exact = union(self.text_clauses(searcher, f, &terms, &q.text, false));
        let expanded = union(self.text_clauses(searcher, f, &terms, &q.text, true));
        let mut highlight_terms = terms;
        highlight_terms.extend(analysis::words(&q.text).into_iter().map(|w| w.text));
        Plan {
            matches: filtered(matches, &filters),
            exact: filtered(exact, &filters),
            expanded: Some(filtered(expanded, &filters)),
            highlight_terms,
        }
    }
}

type Page = (Vec<DocAddress>, u64, Facets);

/// One page of hits in the requested order, with count and facets over all matches.
fn page_with_facets(searcher: &Searcher, query: &dyn Query, q: &SearchQuery) -> Result<Page, SearchError> {
    let top = TopDocs::with_limit(q.size.max(1)).and_offset(q.offset);
    let (addrs, (total, facets)) = match sort_field(q.sort) {
        None => {
            let (hits, f) = searcher.search(query, &(top, FacetCollector)).map_err(unavailable)?;
            (hits.into_iter().map(|(_, a)| a).collect(), f)
        }
        Some((field, order)) => {
            let top = top.order_by_fast_field::<u64>(field, order);
            let (hits, f) = searcher.search(query, &(top, FacetCollector)).map_err(unavailable)?;
            (hits.into_iter().map(|(_, a)| a).collect(), f)
        }
    };
    Ok((addrs, total, facets))
}

fn sort_field(sort: Sort) -> Option<(&'static str, Order)> {
    match sort {
        Sort::Relevance => None,
        Sort::PriceAsc => Some(("price", Order::Asc)),
        Sort::PriceDesc => Some(("price", Order::Desc)),
        Sort::Newest => Some(("version", Order::Desc)),
    }
}

/// Runs a plan: the tier that answers (see [`Plan`]), its page of hits, count and facets.
fn run_plan(searcher: &Searcher, plan: &Plan, q: &SearchQuery) -> Result<Page, SearchError> {
    if sort_field(q.sort).is_some() {
        // Sorted by a fast field: no scores, one pass over the matches for hits, count
        // and facets; again over the expanded query when the words find too little.
        let page = page_with_facets(searcher, plan.matches.as_ref(), q)?;
        return match &plan.expanded {
            Some(expanded) if page.1 < EXPAND_BELOW => page_with_facets(searcher, expanded.as_ref(), q),
            _ => Ok(page),
        };
    }
    let (total, facets) = searcher
        .search(plan.matches.as_ref(), &FacetCollector)
        .map_err(unavailable)?;
    if let Some(expanded) = plan.expanded.as_ref().filter(|_| total < EXPAND_BELOW) {
        return page_with_facets(searcher, expanded.as_ref(), q);
    }
    // TopDocs alone (no other collector in the tuple) lets tantivy prune with block-WAND.
    let top = TopDocs::with_limit(q.size.max(1)).and_offset(q.offset);
    let hits = searcher.search(plan.exact.as_ref(), &top).map_err(unavailable)?;
    Ok((hits.into_iter().map(|(_, a)| a).collect(), total, facets))
}

// ------------------------------------------------------------------ the result cache

/// A search request normalised to what its answer depends on: the words (lowercased,
/// punctuation dropped), the filters, the order and the page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    words: String,
    category: Option<String>,
    brand: Option<String>,
    min_price: Option<u64>,
    max_price: Option<u64>,
    sort: Sort,
    offset: usize,
    size: usize,
}

impl CacheKey {
    fn of(q: &SearchQuery) -> Self {
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
struct ResultCache {
    generation: (String, u64),
    entries: lru::LruCache<CacheKey, Arc<SearchResults>>,
}

impl ResultCache {
    fn new(capacity: NonZeroUsize) -> Self {
        Self {
            generation: (String::new(), 0),
            entries: lru::LruCache::new(capacity),
        }
    }

    fn at(&mut self, version: &str, generation: u64) -> &mut lru::LruCache<CacheKey, Arc<SearchResults>> {
        if self.generation.1 != generation || self.generation.0 != version {
            self.entries.clear();
            self.generation = (version.to_owned(), generation);
        }
        &mut self.entries
    }
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
    /// Recent answers (see [`ResultCache`]); `None` when `search.cache_entries` is 0.
    cache: Option<Mutex<ResultCache>>,
}

/// Answers kept by default (`search.cache_entries`): each is one page of hits and the
/// facets, a few KB, so tens of MB at most.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

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
    pub fn open_with_cache(
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
        let generation = searcher.generation().generation_id();
        let key = self.cache.as_ref().map(|_| CacheKey::of(q));
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            let mut cache = cache.lock().map_err(|_| unavailable("search cache poisoned"))?;
            if let Some(hit) = cache.at(&v.name, generation).get(key) {
                return Ok(SearchResults::clone(hit));
            }
        }
        let plan = self.plan(&searcher, &v.fields, q);
        let (addrs, total, facets) = run_plan(&searcher, &plan, q)?;
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
