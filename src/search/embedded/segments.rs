//! Per-segment caches for the match set, Elasticsearch's way: a segment never changes
//! once written (deletes only mark documents in its alive bitset), so what is read from
//! it can be kept for as long as the segment lives.
//!
//! - **Columns**: `price`, `version`, and the `category_kw`/`brand_kw` ordinals decoded
//!   once into flat arrays (and the ordinals' keys into strings). Counting facets, a price
//!   range and a sort then read one array slot per match instead of a compressed column.
//! - **Term bitsets**: the documents of a common term (a word of the text in `all_text`,
//!   a brand, a category subtree, "is a product"), one bit each, in a bounded LRU per
//!   segment. Long-tail searches rarely repeat as a whole, but their words and filters
//!   come from a small vocabulary: the bitsets repeat even when the searches do not. A
//!   search's match set is then a few word-wise ORs and ANDs, not a posting-list walk.
//!   Rare terms are read from their posting list each time (cheaper than a bitset).
//!
//! See [`super::query::run_cached`] for how a search uses them.

use crate::domain::search::PRICE_RANGES;
use crate::search::facets::price_bucket;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use tantivy::columnar::StrColumn;
use tantivy::index::SegmentId;
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Searcher, SegmentReader, Term, TERMINATED};

/// No value in a column (a tombstone, or a product without brand or category).
const NONE: u32 = u32::MAX;

/// Bits of an ordinal in a packed facets word: 268 million categories or brands per
/// segment, more than a segment has documents.
const ORD_BITS: u32 = 28;
const ORD_MASK: u64 = (1 << ORD_BITS) - 1;

/// Category ordinal (low 28 bits), brand ordinal (next 28) and price bucket (top 8) in
/// one word; a missing one is all ones in its bits.
fn pack(category: u32, brand: u32, bucket: Option<usize>) -> u64 {
    let ord = |o: u32| if o == NONE { ORD_MASK } else { u64::from(o) & ORD_MASK };
    let bucket = bucket.map_or(0xff, |b| (b as u64) & 0xff);
    ord(category) | (ord(brand) << ORD_BITS) | (bucket << (2 * ORD_BITS))
}

/// Bits of term bitsets kept per segment (128 MiB in all): the LRU of each segment
/// holds this many bits' worth of bitsets of the whole index's size.
const TERM_CACHE_BITS: u64 = 1 << 30;
/// A term is cached as a bitset when at least one document in this many holds it; a
/// rarer term's posting list is shorter than the bitset's words.
const DENSE_ONE_IN: u64 = 128;

/// A set of documents of one segment, one bit per document id.
#[derive(Clone)]
pub(super) struct Bits(pub(super) Vec<u64>);

impl Bits {
    pub(super) fn empty(max_doc: u32) -> Self {
        Self(vec![0; (max_doc as usize).div_ceil(64)])
    }

    fn insert(&mut self, doc: DocId) {
        if let Some(w) = self.0.get_mut((doc / 64) as usize) {
            *w |= 1 << (doc % 64);
        }
    }

    pub(super) fn contains(&self, doc: DocId) -> bool {
        self.0
            .get((doc / 64) as usize)
            .is_some_and(|w| w & (1 << (doc % 64)) != 0)
    }

    pub(super) fn or(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= *b;
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The documents, in ascending order.
    pub(super) fn docs(&self) -> impl Iterator<Item = DocId> + '_ {
        self.0.iter().enumerate().flat_map(|(w, word)| {
            let mut rest = *word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros();
                    rest &= rest - 1;
                    (w * 64) as DocId + bit
                })
            })
        })
    }

    pub(super) fn and(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a &= *b;
        }
    }
}

/// What one segment's searches read for every match; built once per segment.
pub(super) struct SegmentData {
    pub(super) max_doc: u32,
    pub(super) price: Vec<u64>,
    pub(super) version: Vec<u64>,
    /// Category ordinal, brand ordinal and price bucket of each document in one word
    /// (see [`pack`]): counting a match's facets touches one cache line, not three.
    pub(super) facets: Vec<u64>,
    pub(super) category_keys: Vec<String>,
    pub(super) brand_keys: Vec<String>,
    terms: Mutex<lru::LruCache<Term, Arc<Bits>>>,
}

fn keyword(reader: &SegmentReader, field: &str) -> tantivy::Result<(Vec<u32>, Vec<String>)> {
    let max_doc = reader.max_doc();
    let Some(column): Option<StrColumn> = reader.fast_fields().str(field)? else {
        // No document of the segment has the field.
        return Ok((vec![NONE; max_doc as usize], Vec::new()));
    };
    let ords = (0..max_doc)
        .map(|d| column.ords().first(d).map_or(NONE, |o| o as u32))
        .collect();
    let mut keys = Vec::with_capacity(column.num_terms());
    let mut key = String::new();
    for ord in 0..column.num_terms() as u64 {
        key.clear();
        column.ord_to_str(ord, &mut key)?;
        keys.push(key.clone());
    }
    Ok((ords, keys))
}

impl SegmentData {
    fn build(reader: &SegmentReader, term_cache_entries: NonZeroUsize) -> tantivy::Result<Self> {
        let max_doc = reader.max_doc();
        let fast = reader.fast_fields();
        let (price_column, version_column) = (fast.u64("price")?, fast.u64("version")?);
        let price: Vec<u64> = (0..max_doc)
            .map(|d| price_column.first(d).unwrap_or(u64::MAX))
            .collect();
        let version = (0..max_doc).map(|d| version_column.first(d).unwrap_or(0)).collect();
        let (category, category_keys) = keyword(reader, "category_kw")?;
        let (brand, brand_keys) = keyword(reader, "brand_kw")?;
        let facets = price
            .iter()
            .zip(category.iter().zip(&brand))
            .map(|(p, (c, b))| {
                let bucket = if *p == u64::MAX { None } else { price_bucket(*p) };
                pack(*c, *b, bucket)
            })
            .collect();
        Ok(Self {
            max_doc,
            price,
            version,
            facets,
            category_keys,
            brand_keys,
            terms: Mutex::new(lru::LruCache::new(term_cache_entries)),
        })
    }

    /// The segment's documents holding `term` (deleted ones included: the caller checks
    /// the alive bitset, which changes while the segment does not).
    pub(super) fn term(&self, reader: &SegmentReader, term: &Term) -> tantivy::Result<Arc<Bits>> {
        if let Some(bits) = self.terms.lock().ok().and_then(|mut c| c.get(term).cloned()) {
            return Ok(bits);
        }
        let inverted = reader.inverted_index(term.field())?;
        let mut bits = Bits::empty(self.max_doc);
        let mut doc_freq = 0u64;
        if let Some(mut postings) = inverted.read_postings(term, IndexRecordOption::Basic)? {
            let mut doc = postings.doc();
            while doc != TERMINATED {
                bits.insert(doc);
                doc_freq += 1;
                doc = postings.advance();
            }
        }
        let bits = Arc::new(bits);
        if doc_freq * DENSE_ONE_IN >= u64::from(self.max_doc) {
            // Built outside the lock: two searches missing the same term at once both
            // build it, which costs less than making every lookup wait for a build.
            if let Ok(mut cache) = self.terms.lock() {
                cache.put(term.clone(), bits.clone());
            }
        }
        Ok(bits)
    }
}

/// The [`SegmentData`] of the segments searchers use, by segment id.
#[derive(Default)]
pub(super) struct SegmentCache {
    segments: Mutex<HashMap<SegmentId, Arc<SegmentData>>>,
}

impl SegmentCache {
    /// The data of each of `searcher`'s segments, in segment order; builds what is new
    /// and forgets segments the searcher no longer has (merged away, or an older
    /// version's).
    pub(super) fn of(&self, searcher: &Searcher) -> tantivy::Result<Vec<Arc<SegmentData>>> {
        let readers = searcher.segment_readers();
        let docs: u64 = readers.iter().map(|r| u64::from(r.max_doc())).sum();
        let entries =
            NonZeroUsize::new((TERM_CACHE_BITS / docs.max(1)).clamp(16, 1 << 20) as usize).unwrap_or(NonZeroUsize::MIN);
        // A poisoned lock means a panic while building: the map itself is still whole.
        let mut segments = match self.segments.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut out = Vec::with_capacity(readers.len());
        for reader in readers {
            let data = match segments.get(&reader.segment_id()) {
                Some(d) => d.clone(),
                // Built under the lock, once per segment: the first searches after a
                // new segment appears wait for it (milliseconds per million documents)
                // instead of each building their own.
                None => {
                    let d = Arc::new(SegmentData::build(reader, entries)?);
                    segments.insert(reader.segment_id(), d.clone());
                    d
                }
            };
            out.push(data);
        }
        if segments.len() > readers.len() {
            segments.retain(|id, _| readers.iter().any(|r| r.segment_id() == *id));
        }
        Ok(out)
    }
}

/// Counts of one segment's matches by facet bucket (ordinals of the segment).
pub(super) struct Counts {
    pub(super) total: u64,
    pub(super) category: Vec<u32>,
    pub(super) brand: Vec<u32>,
    pub(super) price: [u64; PRICE_RANGES.len()],
}

impl Counts {
    pub(super) fn new(data: &SegmentData) -> Self {
        Self {
            total: 0,
            category: vec![0; data.category_keys.len()],
            brand: vec![0; data.brand_keys.len()],
            price: [0; PRICE_RANGES.len()],
        }
    }

    #[inline]
    pub(super) fn add(&mut self, data: &SegmentData, doc: usize) {
        self.total += 1;
        let Some(&f) = data.facets.get(doc) else { return };
        // A missing value (all ones) is past the end of its counts: skipped.
        if let Some(n) = self.category.get_mut((f & ORD_MASK) as usize) {
            *n += 1;
        }
        if let Some(n) = self.brand.get_mut(((f >> ORD_BITS) & ORD_MASK) as usize) {
            *n += 1;
        }
        if let Some(n) = self.price.get_mut((f >> (2 * ORD_BITS)) as usize) {
            *n += 1;
        }
    }

    /// The counted buckets with their keys.
    pub(super) fn keyed(self, data: &SegmentData) -> crate::search::facets::SegmentFacets {
        let keyed = |counts: Vec<u32>, keys: &[String]| -> Vec<(String, u64)> {
            counts
                .into_iter()
                .zip(keys)
                .filter(|(n, _)| *n > 0)
                .map(|(n, k)| (k.clone(), u64::from(n)))
                .collect()
        };
        crate::search::facets::SegmentFacets::new(
            self.total,
            keyed(self.category, &data.category_keys),
            keyed(self.brand, &data.brand_keys),
            self.price,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_list_their_documents_in_order_and_combine() {
        let mut a = Bits::empty(200);
        for d in [0, 63, 64, 130, 199] {
            a.insert(d);
        }
        assert_eq!(a.docs().collect::<Vec<_>>(), vec![0, 63, 64, 130, 199]);
        assert_eq!(a.len(), 5);
        assert!(a.contains(130) && !a.contains(131) && !a.contains(10_000));
        let mut b = Bits::empty(200);
        b.insert(64);
        b.insert(100);
        let mut or = a.clone();
        or.or(&b);
        assert_eq!(or.docs().collect::<Vec<_>>(), vec![0, 63, 64, 100, 130, 199]);
        a.and(&b);
        assert_eq!(a.docs().collect::<Vec<_>>(), vec![64]);
    }

    #[test]
    fn a_packed_word_counts_into_its_buckets_and_skips_missing_values() {
        let data = SegmentData {
            max_doc: 3,
            price: vec![5_000, 700_000, u64::MAX],
            version: vec![1, 2, 3],
            facets: vec![
                pack(1, 0, price_bucket(5_000)),
                pack(NONE, 1, price_bucket(700_000)),
                pack(NONE, NONE, None),
            ],
            category_keys: vec!["1".into(), "1/2".into()],
            brand_keys: vec!["A".into(), "B".into()],
            terms: Mutex::new(lru::LruCache::new(NonZeroUsize::MIN)),
        };
        let mut counts = Counts::new(&data);
        for doc in 0..3 {
            counts.add(&data, doc);
        }
        assert_eq!(counts.total, 3);
        assert_eq!(counts.category, vec![0, 1]);
        assert_eq!(counts.brand, vec![1, 1]);
        assert_eq!(counts.price, [1, 0, 0, 0, 1]);
    }
}
