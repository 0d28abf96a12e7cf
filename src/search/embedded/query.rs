//! How a search request becomes tantivy queries (the [`Plan`]) and how a plan is run: count
//! and facets, top hits, sorting.
use super::schema::Fields;
use super::segments::{Bits, Counts, SegmentData};
use super::{Shared, BOOSTS, KIND_PRODUCT};
use crate::domain::search::{Facets, SearchQuery, Sort, EXPAND_BELOW};
use crate::search::facets::{self, FacetCollector};
use crate::search::unavailable;
use crate::search::{analysis, grams, SearchError};
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::Arc;
use tantivy::collector::TopDocs;
use tantivy::query::Scorer;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, EnableScoring, FuzzyTermQuery, Occur, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocAddress, DocId, DocSet, Score, Searcher, Term};

/// What one search runs. It matches in tiers, so that the CPU a search costs follows
/// what the answer needs, not how many products a popular word matches:
///
/// - the match set: the analyzed terms in `all_text` alone (`match_terms`; it holds the
///   terms of every other text field, so it matches exactly the products the weighted
///   fields match), restricted by `filter_terms` and the price range. Count, facets and
///   sorted pages come from it, computed by [`run_cached`] from per-segment bitsets and
///   columns ([`super::segments`]): no posting-list walk for a common word, no BM25.
/// - `exact_text`: the same terms in the weighted fields, scored. A pure union of term
///   queries, so block-WAND finds the top hits without scoring every match; the filters
///   apply as membership in the match set.
/// - `expanded`: the words plus typo-tolerant (fuzzy) terms and n-grams, with the
///   filters; only run when the match set holds fewer than [`EXPAND_BELOW`] products (a
///   Levenshtein walk of the term dictionary and an n-gram intersection are the costly
///   parts of a query, and they only change the answer when the words as written find
///   little), by tantivy's collectors.
pub(super) struct Plan {
    pub(super) expanded: Option<Box<dyn Query>>,
    pub(super) match_terms: Vec<Term>,
    pub(super) filter_terms: Vec<Term>,
    /// Inclusive; `(0, u64::MAX)` when the search has no price range.
    pub(super) price: (u64, u64),
    /// The scored words alone; `None` for a browse (no words: address order).
    pub(super) exact_text: Option<Box<dyn Query>>,
    /// Analyzed query terms and lowercased words, for the highlight.
    pub(super) highlight_terms: Vec<String>,
}

pub(super) fn boxed(q: impl Query) -> Box<dyn Query> {
    Box::new(q)
}

pub(super) fn fuzzy_distance(term: &str) -> u8 {
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
pub(super) fn indexed(searcher: &Searcher, term: &Term) -> bool {
    // On a read error keep the clause: the search then fails or answers as before.
    searcher.doc_freq(term).map_or(true, |n| n > 0)
}

pub(super) fn union(clauses: Vec<Box<dyn Query>>) -> Box<dyn Query> {
    if clauses.len() <= 1 {
        return clauses.into_iter().next().unwrap_or_else(|| boxed(EmptyQuery));
    }
    boxed(BooleanQuery::new(
        clauses.into_iter().map(|q| (Occur::Should, q)).collect(),
    ))
}

/// `base` restricted by the filters (which never score).
pub(super) fn filtered(base: Box<dyn Query>, filters: &[Box<dyn Query>]) -> Box<dyn Query> {
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
    pub(super) fn text_clauses(
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
            grams::ngrams(text).into_iter().map(|t| t.text).collect()
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

    pub(super) fn plan(&self, searcher: &Searcher, f: &Fields, q: &SearchQuery) -> Plan {
        let mut filter_terms: Vec<Term> = Vec::new();
        if let Some(c) = &q.category {
            filter_terms.push(Term::from_field_text(f.category_anc, c.trim_matches('/')));
        }
        if let Some(b) = &q.brand {
            filter_terms.push(Term::from_field_text(f.brand_kw, b));
        }
        let mut filters: Vec<Box<dyn Query>> = filter_terms
            .iter()
            .map(|t| boxed(TermQuery::new(t.clone(), IndexRecordOption::Basic)))
            .collect();
        let price = (q.min_price.unwrap_or(0), q.max_price.unwrap_or(u64::MAX));
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
            // No text: every product (not the tombstones), scored equally.
            return Plan {
                expanded: None,
                match_terms: vec![Term::from_field_text(f.kind, KIND_PRODUCT)],
                filter_terms,
                price,
                exact_text: None,
                highlight_terms: Vec::new(),
            };
        }
        let match_terms: Vec<Term> = terms
            .iter()
            .map(|t| Term::from_field_text(f.all_text, t))
            .filter(|t| indexed(searcher, t))
            .collect();
        let exact = union(self.text_clauses(searcher, f, &terms, &q.text, false));
        let expanded = union(self.text_clauses(searcher, f, &terms, &q.text, true));
        let mut highlight_terms = terms;
        highlight_terms.extend(analysis::words(&q.text).into_iter().map(|w| w.text));
        Plan {
            expanded: Some(filtered(expanded, &filters)),
            match_terms,
            filter_terms,
            price,
            exact_text: Some(exact),
            highlight_terms,
        }
    }
}

pub(super) type Page = (Vec<DocAddress>, u64, Facets);

/// One page of hits in the requested order, with count and facets over all matches.
pub(super) fn page_with_facets(searcher: &Searcher, query: &dyn Query, q: &SearchQuery) -> Result<Page, SearchError> {
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

pub(super) fn sort_field(sort: Sort) -> Option<(&'static str, tantivy::Order)> {
    match sort {
        Sort::Relevance => None,
        Sort::PriceAsc => Some(("price", tantivy::Order::Asc)),
        Sort::PriceDesc => Some(("price", tantivy::Order::Desc)),
        Sort::Newest => Some(("version", tantivy::Order::Desc)),
    }
}

/// How a sorted page orders: a key per document, smallest first (ties by address).
#[derive(Clone, Copy)]
enum Order {
    /// A browse in relevance order: every product scores the same, so address order.
    Address,
    PriceAsc,
    PriceDesc,
    Newest,
}

impl Order {
    #[inline]
    fn key(self, data: &SegmentData, doc: usize) -> u64 {
        match self {
            Order::Address => 0,
            Order::PriceAsc => data.price.get(doc).copied().unwrap_or(u64::MAX),
            Order::PriceDesc => u64::MAX - data.price.get(doc).copied().unwrap_or(0),
            Order::Newest => u64::MAX - data.version.get(doc).copied().unwrap_or(0),
        }
    }
}

/// Runs a plan from the per-segment caches: per segment, the match set as a bitset
/// (the words' cached bitsets ORed, the filters' ANDed), then one pass over its bits that
/// drops deleted documents and those outside the price range, counts the total and the
/// facets from flat arrays and keeps a sorted page's best; a relevance page is then found
/// by block-WAND over the words, keeping only documents in the match set. When the words
/// match fewer than [`EXPAND_BELOW`], the expanded tier runs as before.
pub(super) fn run_cached(
    searcher: &Searcher,
    segments: &[Arc<SegmentData>],
    plan: &Plan,
    q: &SearchQuery,
) -> Result<Page, SearchError> {
    let k = q.offset + q.size.max(1);
    let order = match (q.sort, plan.exact_text.is_some()) {
        (Sort::Relevance, true) => None,
        (Sort::Relevance, false) => Some(Order::Address),
        (Sort::PriceAsc, _) => Some(Order::PriceAsc),
        (Sort::PriceDesc, _) => Some(Order::PriceDesc),
        (Sort::Newest, _) => Some(Order::Newest),
    };
    let (lo, hi) = plan.price;
    let ranged = plan.price != (0, u64::MAX);
    let readers = searcher.segment_readers();
    let mut sets = Vec::with_capacity(readers.len());
    let mut per_segment = Vec::with_capacity(readers.len());
    // The k best of a sorted page so far; a max-heap, so the worst is on top.
    let mut sorted: BinaryHeap<(u64, DocAddress)> = BinaryHeap::with_capacity(k + 1);
    for (ord, (reader, data)) in readers.iter().zip(segments).enumerate() {
        let mut set = Bits::empty(data.max_doc);
        for t in &plan.match_terms {
            set.or(&*data.term(reader, t).map_err(unavailable)?);
        }
        let restricted = !plan.filter_terms.is_empty() || ranged;
        // Only needed to choose how to rank a restricted set (see `top_scored`).
        let words = if restricted && order.is_none() { set.len() } else { 0 };
        for t in &plan.filter_terms {
            set.and(&*data.term(reader, t).map_err(unavailable)?);
        }
        let alive = reader.alive_bitset();
        let mut counts = Counts::new(data);
        for (w, word) in set.0.iter_mut().enumerate() {
            let mut rest = *word;
            while rest != 0 {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                let doc = w * 64 + bit as usize;
                // The price is only read for a range: most searches have none, and the
                // read is a cache miss per match.
                let out_of_range = ranged && {
                    let price = data.price.get(doc).copied().unwrap_or(u64::MAX);
                    price < lo || price > hi
                };
                if out_of_range || alive.is_some_and(|a| a.is_deleted(doc as DocId)) {
                    *word &= !(1u64 << bit);
                    continue;
                }
                counts.add(data, doc);
                if let Some(order) = order {
                    let entry = (order.key(data, doc), DocAddress::new(ord as u32, doc as DocId));
                    if sorted.len() < k {
                        sorted.push(entry);
                    } else if sorted.peek().is_some_and(|worst| entry < *worst) {
                        sorted.pop();
                        sorted.push(entry);
                    }
                }
            }
        }
        let matched = counts.total;
        per_segment.push(counts.keyed(data));
        sets.push((set, matched, words.max(matched)));
    }
    let (total, facets) = facets::merge(per_segment);
    if let Some(expanded) = plan.expanded.as_ref().filter(|_| total < EXPAND_BELOW) {
        return page_with_facets(searcher, expanded.as_ref(), q);
    }
    let best: Vec<DocAddress> = match (order, &plan.exact_text) {
        (None, Some(exact)) => top_scored(searcher, exact.as_ref(), &sets, k)?,
        _ => sorted.into_sorted_vec().into_iter().map(|(_, a)| a).collect(),
    };
    Ok((best.into_iter().skip(q.offset).collect(), total, facets))
}

/// A scored hit, ordered worst first: lower score, then (on a tie) higher address, as
/// tantivy's `TopDocs` breaks ties.
#[derive(PartialEq)]
struct Worst(Score, DocAddress);

impl Eq for Worst {}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.total_cmp(&self.0).then_with(|| self.1.cmp(&other.1))
    }
}

/// A segment's filtered match set this many times smaller than its words' is ranked
/// by seeking the scorer to each of its documents rather than by block-WAND.
const SEEK_BELOW_ONE_IN: u64 = 8;

/// The `k` best-scored documents of `query` among the match sets, best first. Per
/// segment, either block-WAND (`for_each_pruning`) over the pure union of the words with
/// the filters applied as membership in the match set (the threshold only rises with
/// documents that pass them, so none that could make the page is skipped), or, when
/// the filters left few of the words' matches (WAND's threshold would rise late and
/// prune little), the scorer sought to each document of the match set.
fn top_scored(
    searcher: &Searcher,
    query: &dyn Query,
    sets: &[(Bits, u64, u64)],
    k: usize,
) -> Result<Vec<DocAddress>, SearchError> {
    let weight = query
        .weight(EnableScoring::enabled_from_searcher(searcher))
        .map_err(unavailable)?;
    let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
    let mut threshold = Score::MIN;
    let offer = |heap: &mut BinaryHeap<Worst>, threshold: &mut Score, score: Score, addr: DocAddress| {
        heap.push(Worst(score, addr));
        if heap.len() > k {
            heap.pop();
        }
        if heap.len() == k {
            if let Some(worst) = heap.peek() {
                *threshold = worst.0;
            }
        }
    };
    for (ord, (reader, (set, matched, words))) in searcher.segment_readers().iter().zip(sets).enumerate() {
        let ord = ord as u32;
        if *matched == 0 {
            continue;
        }
        if matched * SEEK_BELOW_ONE_IN <= *words {
            let mut scorer = weight.scorer(reader, 1.0).map_err(unavailable)?;
            for doc in set.docs() {
                // Every match has one of the words, so the union lands on it; the check
                // only guards the order `seek` requires.
                if scorer.doc() > doc || scorer.seek(doc) != doc {
                    continue;
                }
                let score = scorer.score();
                // Equal scores keep the earlier address, as in the WAND branch.
                if heap.len() < k || score > threshold {
                    offer(&mut heap, &mut threshold, score, DocAddress::new(ord, doc));
                }
            }
            continue;
        }
        weight
            .for_each_pruning(threshold, reader, &mut |doc, score| {
                if set.contains(doc) {
                    offer(&mut heap, &mut threshold, score, DocAddress::new(ord, doc));
                }
                threshold
            })
            .map_err(unavailable)?;
    }
    // `Worst` orders worst last in a sorted vector's terms: best first.
    Ok(heap.into_sorted_vec().into_iter().map(|w| w.1).collect())
}
