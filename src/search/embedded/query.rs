//! How a search request becomes tantivy queries (the [`Plan`]) and how a plan is run: count
//! and facets, top hits, sorting.
use super::schema::Fields;
use super::{Shared, BOOSTS, KIND_PRODUCT};
use crate::domain::search::{Facets, SearchQuery, Sort, EXPAND_BELOW};
use crate::search::facets::FacetCollector;
use crate::search::unavailable;
use crate::search::{analysis, grams, SearchError};
use std::ops::Bound;
use tantivy::collector::TopDocs;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, EmptyQuery, FuzzyTermQuery, Occur, Query, RangeQuery, TermQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocAddress, Order, Searcher, Term};

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
pub(super) struct Plan {
    pub(super) matches: Box<dyn Query>,
    pub(super) exact: Box<dyn Query>,
    pub(super) expanded: Option<Box<dyn Query>>,
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

pub(super) fn sort_field(sort: Sort) -> Option<(&'static str, Order)> {
    match sort {
        Sort::Relevance => None,
        Sort::PriceAsc => Some(("price", Order::Asc)),
        Sort::PriceDesc => Some(("price", Order::Desc)),
        Sort::Newest => Some(("version", Order::Desc)),
    }
}

/// Runs a plan: the tier that answers (see [`Plan`]), its page of hits, count and facets.
pub(super) fn run_plan(searcher: &Searcher, plan: &Plan, q: &SearchQuery) -> Result<Page, SearchError> {
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
