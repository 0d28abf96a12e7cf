//! Elasticsearch / OpenSearch implementation of [`SearchIndex`] (`search.url`).
//!
//! Index versions `products_v{n}` are created from the versioned files in
//! `config/search/elasticsearch/` with the analysis lists filled in from
//! `config/search/*.txt` (the same files the embedded index reads). Before creating an
//! index we ask the server whether it has the Nori tokenizer (`_analyze` with
//! `nori_tokenizer`): with it, the `ko` analyzer is morphological; without it (OpenSearch
//! emulators, clusters without the plugin) it is the CJK-bigram chain that mirrors
//! [`super::analysis`]. Searches and writes go through the alias `products`; a rebuild
//! switches it with one `_aliases` call (remove + add, atomic), then deletes the old index.
//!
//! Writes use external versioning (`external_gte`, the event version), so Elasticsearch
//! itself refuses a late event (409 per item, which we count as done); the same version
//! again is applied again, which changes nothing. Deleted products stay
//! as tombstones (id, version, `kind: t`) so their versions keep guarding.
//!
//! Queries are JSON built here from analyzed parameters; user text only ever appears as
//! the value of a `query` or `term`, never as query-string syntax.

use super::analysis::Analysis;
use super::{newest_per_product, version_of, IndexChange, Rebuild, SearchError, SearchIndex};
use crate::config::SearchSettings;
use crate::domain::search::{
    category_ancestors, price_range_key, Bucket, Facets, SearchDoc, SearchQuery, SearchResults, Sort, EXPAND_BELOW,
    FACET_SIZE, PRICE_RANGES,
};
use crate::error::Cause;
use crate::search::unavailable;
use async_trait::async_trait;
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const INDEX_FILE: &str = include_str!("../../config/search/elasticsearch/products.v1.json");
const NORI_FILE: &str = include_str!("../../config/search/elasticsearch/analysis-nori.v1.json");
const RECENT_CHANGES: usize = 100_000;

/// Index settings for a new version: the file, with the analysis lists filled in, and the
/// Nori analyzer swapped in when the server has it.
pub fn index_body(analysis: &Analysis, nori: bool) -> Result<Value, SearchError> {
    let bad = |e: &dyn std::fmt::Display| SearchError::Rejected(format!("config/search/elasticsearch: {e}").into());
    let mut body: Value = serde_json::from_str(INDEX_FILE).map_err(|e| bad(&e))?;
    if let Some(o) = body.as_object_mut() {
        o.remove("_comment");
    }
    let a = body
        .pointer_mut("/settings/analysis")
        .ok_or_else(|| bad(&"settings.analysis missing"))?;
    a["filter"]["ko_particles"]["pattern"] = json!(format!("^([가-힣]{{2,}}?)({})$", analysis.particles.join("|")));
    a["filter"]["ko_userdict"]["word_list"] = json!(analysis.dictionary);
    let rules: Vec<String> = analysis
        .synonym_rules
        .iter()
        .map(|r| match &r.to {
            Some(to) => format!("{} => {}", r.from.join(", "), to.join(", ")),
            None => r.from.join(", "),
        })
        .collect();
    a["filter"]["ko_synonyms"]["synonyms"] = json!(rules);
    if analysis.dictionary.is_empty() {
        // An empty word list is refused; a word that never occurs changes nothing.
        a["filter"]["ko_userdict"]["word_list"] = json!(["\u{2063}"]);
    }
    if nori {
        let mut n: Value = serde_json::from_str(NORI_FILE).map_err(|e| bad(&e))?;
        n["tokenizer"]["ko_nori"]["user_dictionary_rules"] = json!(nori_user_words(analysis));
        a["tokenizer"] = n["tokenizer"].take();
        a["analyzer"]["ko"] = n["analyzer"]["ko"].take();
    }
    Ok(body)
}

/// Nori's user dictionary: the configured words, then every Hangul word of the synonym
/// rules. The engine analyzes each rule with the index's tokenizer and refuses the index
/// ("Failed to build synonyms") when a rule word becomes several terms; Nori splits
/// 핸드폰 into 핸드 + 폰 and 이어버드 into 이어 + 버드, and would index 운동화 as 운동.
/// As dictionary words they stay whole, so each rule means what it says.
fn nori_user_words(analysis: &Analysis) -> Vec<String> {
    let rule_words = analysis
        .synonym_rules
        .iter()
        .flat_map(|r| r.from.iter().chain(r.to.iter().flatten()))
        .filter(|w| w.chars().any(super::analysis::is_hangul) && !w.contains(char::is_whitespace));
    let mut words: Vec<String> = Vec::new();
    for word in analysis.dictionary.iter().chain(rule_words) {
        if !words.contains(word) {
            words.push(word.clone());
        }
    }
    words
}

/// The `_source` of a product: the [`SearchDoc`] plus the derived fields the mapping indexes.
fn source(d: &SearchDoc) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_else(|_| json!({}));
    v["kind"] = json!("p");
    v["all_text"] = json!(d.all_text());
    v["category_anc"] = json!(category_ancestors(d.category_path.as_deref().unwrap_or_default()));
    v
}

/// The Elasticsearch [`SearchIndex`]: a cheap handle on the shared client and state.
#[derive(Clone)]
pub struct ElasticIndex(Arc<Inner>);

impl std::ops::Deref for ElasticIndex {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub struct Inner {
    client: Elasticsearch,
    alias: String,
    analysis: Arc<Analysis>,
    timeout: Duration,
    /// The alias exists (checked lazily: the server may be down at start).
    ready: tokio::sync::OnceCell<()>,
    /// Index versions being rebuilt in this process: writes go to them too.
    rebuilding: Mutex<Vec<String>>,
    recent: Mutex<std::collections::VecDeque<IndexChange>>,
}

impl ElasticIndex {
    /// Builds the client; nothing is sent until the first request.
    pub fn connect(s: &SearchSettings, analysis: Arc<Analysis>) -> Result<Self, SearchError> {
        let url = Url::parse(s.url.as_deref().unwrap_or_default())
            .map_err(|e| SearchError::Rejected(format!("search.url: {e}").into()))?;
        let timeout = s.request_timeout;
        let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(timeout)
            .build()
            .map_err(|e| SearchError::Rejected(Cause::new(e)))?;
        Ok(Self(Arc::new(Inner {
            client: Elasticsearch::new(transport),
            alias: s.alias.clone(),
            analysis,
            timeout,
            ready: tokio::sync::OnceCell::new(),
            rebuilding: Mutex::new(Vec::new()),
            recent: Mutex::new(Default::default()),
        })))
    }
}

impl Inner {
    /// One request; answers the status and the JSON body (or `Null`).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        ndjson: bool,
    ) -> Result<(u16, Value), SearchError> {
        let mut headers = HeaderMap::new();
        let ct = if ndjson {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        let response = self
            .client
            .send(method, path, headers, None::<&()>, body, Some(self.timeout))
            .await
            .map_err(unavailable)?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(unavailable)?;
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 500 {
            return Err(unavailable(format!("{path}: {status} {text}")));
        }
        Ok((status, value))
    }

    async fn ok(&self, method: Method, path: &str, body: Value) -> Result<Value, SearchError> {
        let (status, v) = self.call(method, path, Some(body.to_string()), false).await?;
        if status >= 300 {
            return Err(SearchError::Rejected(format!("{path}: {status} {v}").into()));
        }
        Ok(v)
    }

    /// Whether the server can tokenize with Nori.
    pub async fn has_nori(&self) -> Result<bool, SearchError> {
        let (status, _) = self
            .call(
                Method::Post,
                "/_analyze",
                Some(json!({"tokenizer": "nori_tokenizer", "text": "노트북"}).to_string()),
                false,
            )
            .await?;
        Ok(status == 200)
    }

    async fn create_version(&self, name: &str) -> Result<(), SearchError> {
        let nori = self.has_nori().await?;
        tracing::info!(
            index = name,
            analysis = if nori { "nori" } else { "cjk_bigram" },
            "creating search index"
        );
        self.ok(Method::Put, &format!("/{name}"), index_body(&self.analysis, nori)?)
            .await?;
        Ok(())
    }

    /// Index names behind the alias.
    async fn aliased(&self) -> Result<Vec<String>, SearchError> {
        let (status, v) = self
            .call(Method::Get, &format!("/_alias/{}", self.alias), None, false)
            .await?;
        if status == 404 {
            return Ok(Vec::new());
        }
        Ok(v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default())
    }

    async fn all_versions(&self) -> Result<Vec<String>, SearchError> {
        let (status, v) = self
            .call(
                Method::Get,
                &format!("/{}_v*?expand_wildcards=open", self.alias),
                None,
                false,
            )
            .await?;
        if status == 404 {
            return Ok(Vec::new());
        }
        Ok(v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default())
    }

    /// Creates `products_v1` behind the alias on first use.
    async fn ensure(&self) -> Result<(), SearchError> {
        self.ready
            .get_or_try_init(|| async {
                if self.aliased().await?.is_empty() {
                    let name = self.next_name().await?;
                    self.create_version(&name).await?;
                    self.ok(
                        Method::Post,
                        "/_aliases",
                        json!({"actions": [{"add": {"index": name, "alias": self.alias}}]}),
                    )
                    .await?;
                }
                Ok::<(), SearchError>(())
            })
            .await
            .map(|_| ())
    }

    async fn next_name(&self) -> Result<String, SearchError> {
        let highest = self
            .all_versions()
            .await?
            .iter()
            .filter_map(|n| version_of(n, &self.alias))
            .max()
            .unwrap_or(0);
        Ok(format!("{}_v{}", self.alias, highest + 1))
    }

    /// Bulk-writes changes with external versions into `target` (an index or the alias).
    async fn bulk(&self, target: &str, changes: &[IndexChange], refresh: bool) -> Result<(), SearchError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut body = String::new();
        for c in changes {
            let meta = json!({"index": {"_id": c.id(), "version": c.version(), "version_type": "external_gte"}});
            let doc = match c {
                IndexChange::Upsert(d) => source(d),
                IndexChange::Delete { id, version } => json!({"id": id, "kind": "t", "version": version}),
            };
            body.push_str(&meta.to_string());
            body.push('\n');
            body.push_str(&doc.to_string());
            body.push('\n');
        }
        let path = format!("/{target}/_bulk{}", if refresh { "?refresh=true" } else { "" });
        let (status, v) = self.call(Method::Post, &path, Some(body), true).await?;
        if status >= 300 {
            return Err(SearchError::Rejected(format!("bulk: {status} {v}").into()));
        }
        if v.get("errors").and_then(Value::as_bool) == Some(true) {
            let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            for item in items {
                let status = item.pointer("/index/status").and_then(Value::as_u64).unwrap_or(0);
                // 409: a newer or the same version is already there: at-least-once done.
                if status >= 300 && status != 409 {
                    return Err(unavailable(format!("bulk item failed: {item}")));
                }
            }
        }
        Ok(())
    }

    /// The search request. `expand` adds the typo-tolerant and partial-word clauses: like
    /// the embedded index's tiers, only sent when the words alone match fewer than
    /// [`EXPAND_BELOW`] (see `search`). Fuzzy terms and an n-gram conjunction on every
    /// search made the engine score and count every near match of a million products.
    fn query_body(&self, q: &SearchQuery, expand: bool) -> Value {
        let mut filters = Vec::new();
        if let Some(c) = &q.category {
            filters.push(json!({"term": {"category_anc": c.trim_matches('/')}}));
        }
        if let Some(b) = &q.brand {
            filters.push(json!({"term": {"brand.kw": b}}));
        }
        if q.min_price.is_some() || q.max_price.is_some() {
            let mut r = serde_json::Map::new();
            if let Some(lo) = q.min_price {
                r.insert("gte".into(), json!(lo));
            }
            if let Some(hi) = q.max_price {
                r.insert("lte".into(), json!(hi));
            }
            filters.push(json!({"range": {"price": r}}));
        }
        let text = if self.analysis.query_terms(&q.text).is_empty() {
            json!({"term": {"kind": "p"}})
        } else {
            let exact = |text: &str| {
                json!({"multi_match": {"query": text, "type": "most_fields",
                    "fields": ["name^4", "brand^3", "category_path^2", "description^1", "all_text^0.5"]}})
            };
            let mut should = vec![exact(&q.text)];
            if expand {
                should.push(
                    json!({"multi_match": {"query": q.text, "type": "most_fields", "fuzziness": "AUTO",
                    "fields": ["name^2", "brand^1.5"]}}),
                );
                should.push(json!({"match": {"name.ngram": {"query": q.text, "operator": "and"}}}));
            }
            if let Some(expanded) = self.analysis.expand_synonyms(&q.text) {
                should.push(exact(&expanded));
            }
            json!({"bool": {"should": should, "minimum_should_match": 1}})
        };
        let ranges: Vec<Value> = PRICE_RANGES
            .iter()
            .map(|(from, to)| match to {
                Some(to) => json!({"key": price_range_key(*from, Some(*to)), "from": from, "to": to}),
                None => json!({"key": price_range_key(*from, None), "from": from}),
            })
            .collect();
        let sort = match q.sort {
            Sort::Relevance => json!(["_score", {"id": "asc"}]),
            Sort::PriceAsc => json!([{"price": "asc"}, {"id": "asc"}]),
            Sort::PriceDesc => json!([{"price": "desc"}, {"id": "asc"}]),
            Sort::Newest => json!([{"version": "desc"}, {"id": "asc"}]),
        };
        json!({
            "query": {"bool": {"must": [text], "filter": filters}},
            "from": q.offset, "size": q.size, "track_total_hits": true, "sort": sort,
            "aggs": {
                "category": {"terms": {"field": "category_path.kw", "size": FACET_SIZE}},
                "brand": {"terms": {"field": "brand.kw", "size": FACET_SIZE}},
                "price": {"range": {"field": "price", "keyed": false, "ranges": ranges}}
            }
        })
    }

    fn remember(&self, changes: &[IndexChange]) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.extend(changes.iter().cloned());
            while recent.len() > RECENT_CHANGES {
                recent.pop_front();
            }
        }
    }
}

fn buckets(v: &Value, name: &str) -> Vec<Bucket> {
    v.pointer(&format!("/aggregations/{name}/buckets"))
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter_map(|b| {
                    let key = match b.get("key")? {
                        Value::String(s) => s.clone(),
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

#[async_trait]
impl SearchIndex for ElasticIndex {
    async fn apply(&self, changes: Vec<IndexChange>) -> Result<(), SearchError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.ensure().await?;
        self.remember(&changes);
        let changes = newest_per_product(changes);
        let rebuilding: Vec<String> = self.rebuilding.lock().map(|r| r.clone()).unwrap_or_default();
        for target in &rebuilding {
            self.bulk(target, &changes, false).await?;
        }
        self.bulk(&self.alias, &changes, true).await
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchResults, SearchError> {
        self.ensure().await?;
        let path = format!("/{}/_search", self.alias);
        let total_of = |v: &Value| {
            v.pointer("/hits/total/value")
                .and_then(Value::as_u64)
                .or_else(|| v.pointer("/hits/total").and_then(Value::as_u64))
                .unwrap_or(0)
        };
        let mut v = self.ok(Method::Post, &path, self.query_body(q, false)).await?;
        let words = !self.analysis.query_terms(&q.text).is_empty();
        if words && total_of(&v) < EXPAND_BELOW {
            v = self.ok(Method::Post, &path, self.query_body(q, true)).await?;
        }
        let total = total_of(&v);
        let mut highlight_terms = self.analysis.query_terms(&q.text);
        highlight_terms.extend(super::analysis::words(&q.text).into_iter().map(|w| w.text));
        let mut hits = Vec::new();
        for h in v.pointer("/hits/hits").and_then(Value::as_array).into_iter().flatten() {
            let Some(src) = h.get("_source") else { continue };
            let d: SearchDoc = serde_json::from_value(src.clone()).map_err(|e| SearchError::Rejected(Cause::new(e)))?;
            let mut hit = d.hit();
            // Highlighted here with the same analysis as the embedded index, so both
            // engines mark the same words.
            hit.highlight = self.analysis.highlight(&d.name, &highlight_terms);
            hits.push(hit);
        }
        Ok(SearchResults {
            total,
            hits,
            facets: Facets {
                category: buckets(&v, "category"),
                brand: buckets(&v, "brand"),
                price: buckets(&v, "price"),
            },
        })
    }

    async fn suggest(&self, prefix: &str, limit: usize) -> Result<Vec<String>, SearchError> {
        if super::analysis::words(prefix).is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        self.ensure().await?;
        let body = json!({
            "query": {"bool": {"must": [{"match": {"name.prefix": {"query": prefix, "operator": "and"}}}],
                               "filter": [{"term": {"kind": "p"}}]}},
            "size": limit * 4, "_source": ["name"]
        });
        let v = self.ok(Method::Post, &format!("/{}/_search", self.alias), body).await?;
        let mut out: Vec<String> = Vec::new();
        for h in v.pointer("/hits/hits").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = h.pointer("/_source/name").and_then(Value::as_str) {
                if !out.iter().any(|n| n == name) {
                    out.push(name.to_owned());
                }
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn rebuild(&self) -> Result<Box<dyn Rebuild>, SearchError> {
        self.ensure().await?;
        let name = self.next_name().await?;
        self.create_version(&name).await?;
        if let Ok(mut r) = self.rebuilding.lock() {
            r.push(name.clone());
        }
        Ok(Box::new(ElasticRebuild {
            index: self.clone(),
            name,
        }))
    }

    async fn current_version(&self) -> Result<Option<String>, SearchError> {
        Ok(self.aliased().await?.into_iter().next())
    }

    fn kind(&self) -> &'static str {
        "elasticsearch"
    }
}

/// A new index version being filled; the alias still points at the old one.
struct ElasticRebuild {
    index: ElasticIndex,
    name: String,
}

#[async_trait]
impl Rebuild for ElasticRebuild {
    fn name(&self) -> &str {
        &self.name
    }

    async fn add(&mut self, docs: Vec<SearchDoc>) -> Result<(), SearchError> {
        let changes: Vec<IndexChange> = docs.into_iter().map(IndexChange::Upsert).collect();
        self.index.bulk(&self.name, &changes, false).await
    }

    async fn finish(self: Box<Self>) -> Result<Option<String>, SearchError> {
        let ix = &self.index;
        // Changes this process applied while the new index was filled went to both
        // (see `apply`); replaying what we remember covers a change that raced `rebuild`.
        let replay: Vec<IndexChange> = ix
            .recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        ix.bulk(&self.name, &newest_per_product(replay), false).await?;
        ix.ok(Method::Post, &format!("/{}/_refresh", self.name), json!({}))
            .await?;
        let old = ix.aliased().await?;
        let mut actions: Vec<Value> = old
            .iter()
            .map(|o| json!({"remove": {"index": o, "alias": ix.alias}}))
            .collect();
        actions.push(json!({"add": {"index": self.name, "alias": ix.alias}}));
        // One request: readers see the old index or the new one, never neither.
        ix.ok(Method::Post, "/_aliases", json!({ "actions": actions })).await?;
        if let Ok(mut r) = ix.rebuilding.lock() {
            r.retain(|n| n != &self.name);
        }
        for o in &old {
            ix.ok(Method::Delete, &format!("/{o}"), json!({})).await?;
        }
        Ok(old.into_iter().next())
    }
}
