//! Search rules as pure functions: what a product event becomes in the search index,
//! what a search request may ask for, and the fixed price ranges facets count in.
//!
//! Search is built against the event contract (`product_upserted` carries the product
//! document, `product_deleted` its id), never against catalog internals, so the catalog
//! can change its storage without touching search.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub(crate) const MAX_QUERY_CHARS: usize = 200;
pub(crate) const MAX_FILTER_CHARS: usize = 200;
pub(crate) const MAX_PAGE_SIZE: usize = 100;
pub(crate) const DEFAULT_PAGE_SIZE: usize = 20;
/// Deep pages cost the engine `page * size` hits; like Elasticsearch's
/// `max_result_window`, we stop at 10,000.
pub(crate) const MAX_WINDOW: usize = 10_000;
pub(crate) const MAX_SUGGEST_CHARS: usize = 100;
/// Typo-tolerant (fuzzy) and partial-word (n-gram) matching is added to a search only
/// when its words, as analyzed, match fewer products than this: it is the costly part of
/// a query, and where the words already fill a page it would only add hits that rank
/// below them. Independent of the page asked for, so paging through one search never
/// changes its `total`.
pub const EXPAND_BELOW: u64 = 20;

/// Price facet buckets in minor units: `[from, to)`, the last one open-ended.
pub const PRICE_RANGES: &[(u64, Option<u64>)] = &[
    (0, Some(10_000)),
    (10_000, Some(50_000)),
    (50_000, Some(100_000)),
    (100_000, Some(500_000)),
    (500_000, None),
];

/// The stable key of a price bucket, e.g. `10000-50000` or `500000-`.
pub fn price_range_key(from: u64, to: Option<u64>) -> String {
    match to {
        Some(to) => format!("{from}-{to}"),
        None => format!("{from}-"),
    }
}

/// What the search index holds for one product: the searchable text, the keyword fields
/// for exact filters, facets and sorting, and `version` (the event time) so that a late
/// or repeated event never overwrites a newer one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchDoc {
    pub id: String,
    pub name: String,
    pub brand: Option<String>,
    pub category_path: Option<String>,
    pub description: Option<String>,
    /// Attribute values, variant attributes and SKUs: searched only through `all_text`.
    pub extra_text: String,
    pub price: u64,
    pub currency: String,
    pub image: Option<String>,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("product document has no {0}")]
    Missing(&'static str),
}

fn flatten_values(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Number(n) => out.push(n.to_string()),
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
        serde_json::Value::Array(items) => items.iter().for_each(|i| flatten_values(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|i| flatten_values(i, out)),
    }
}

impl SearchDoc {
    /// Reads the product document of a `product_upserted` event. Fields the catalog
    /// may add later (description, images, status) are used when present.
    pub fn from_product(doc: &serde_json::Value, version: u64) -> Result<Self, DocError> {
        let text = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let id = text("id").ok_or(DocError::Missing("id"))?;
        let name = text("name").ok_or(DocError::Missing("name"))?;
        let price = doc.get("price").ok_or(DocError::Missing("price"))?;
        let amount = price
            .get("amount")
            .and_then(|a| a.as_i64())
            .ok_or(DocError::Missing("price.amount"))?;
        let currency = price
            .get("currency")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned();
        let mut extra = Vec::new();
        if let Some(attrs) = doc.get("attributes") {
            flatten_values(attrs, &mut extra);
        }
        if let Some(variants) = doc.get("variants").and_then(|v| v.as_array()) {
            for v in variants {
                if let Some(sku) = v.get("sku").and_then(|s| s.as_str()) {
                    extra.push(sku.to_owned());
                }
                if let Some(attrs) = v.get("attributes") {
                    flatten_values(attrs, &mut extra);
                }
            }
        }
        let image = doc
            .get("images")
            .and_then(|i| i.as_array())
            .and_then(|i| i.first())
            .and_then(|i| i.as_str().or_else(|| i.get("url").and_then(|u| u.as_str())))
            .map(str::to_owned);
        Ok(Self {
            id,
            name,
            brand: text("brand").filter(|b| !b.is_empty()),
            category_path: text("category_path").filter(|c| !c.is_empty()),
            description: text("description").filter(|d| !d.is_empty()),
            extra_text: extra.join(" "),
            price: u64::try_from(amount).unwrap_or(0),
            currency,
            image,
            version,
        })
    }

    /// Whether a catalog document is one search should show. The catalog engineer adds a
    /// `status`; anything but an explicit non-active status is listed.
    pub(crate) fn listed(doc: &serde_json::Value) -> bool {
        doc.get("status")
            .and_then(|s| s.as_str())
            .is_none_or(|s| s.eq_ignore_ascii_case("active"))
    }

    /// Everything searchable in one text (the `all_text` field).
    pub(crate) fn all_text(&self) -> String {
        [
            Some(self.name.as_str()),
            self.brand.as_deref(),
            self.category_path.as_deref(),
            self.description.as_deref(),
            Some(self.extra_text.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// `1/4/28` → `1`, `1/4`, `1/4/28`: a category filter matches the whole subtree.
    pub(crate) fn category_ancestors(&self) -> Vec<String> {
        category_ancestors(self.category_path.as_deref().unwrap_or_default())
    }

    /// What a hit shows (without the highlight).
    pub(crate) fn hit(&self) -> Hit {
        Hit {
            id: self.id.clone(),
            name: self.name.clone(),
            brand: self.brand.clone(),
            category_path: self.category_path.clone(),
            price: self.price,
            currency: self.currency.clone(),
            image: self.image.clone(),
            highlight: None,
        }
    }
}

pub(crate) fn category_ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (1..=parts.len()).map(|n| parts[..n].join("/")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    Newest,
}

/// A validated search request. Free text is only ever used as terms to look up, never
/// parsed as a query language, so no input can inject query syntax.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    pub(crate) text: String,
    pub(crate) category: Option<String>,
    pub(crate) brand: Option<String>,
    pub(crate) min_price: Option<u64>,
    pub(crate) max_price: Option<u64>,
    pub sort: Sort,
    /// 0-based offset of the first hit.
    pub(crate) offset: usize,
    pub(crate) size: usize,
}

/// The raw request, as the HTTP layer receives it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SearchParams {
    pub q: Option<String>,
    pub category: Option<String>,
    pub brand: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub sort: Option<String>,
    pub page: Option<i64>,
    pub size: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSearch(pub String);

/// Free text as sent: the limits are checked before trimming, so they mean exactly what
/// the OpenAPI schema says; blank text counts as absent.
fn bounded(value: Option<String>, what: &str, max: usize) -> Result<Option<String>, InvalidSearch> {
    let Some(raw) = value else { return Ok(None) };
    if raw.chars().count() > max {
        return Err(InvalidSearch(format!("{what} must be at most {max} characters")));
    }
    if raw.chars().any(char::is_control) {
        return Err(InvalidSearch(format!("{what} contains control characters")));
    }
    let trimmed = raw.trim();
    Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
}

impl SearchQuery {
    pub fn parse(p: SearchParams) -> Result<Self, InvalidSearch> {
        let text = bounded(p.q, "q", MAX_QUERY_CHARS)?.unwrap_or_default();
        let price = |v: Option<i64>, what: &str| -> Result<Option<u64>, InvalidSearch> {
            v.map(|v| u64::try_from(v).map_err(|_| InvalidSearch(format!("{what} must not be negative"))))
                .transpose()
        };
        let min_price = price(p.min_price, "min_price")?;
        let max_price = price(p.max_price, "max_price")?;
        if let (Some(lo), Some(hi)) = (min_price, max_price) {
            if lo > hi {
                return Err(InvalidSearch("min_price must not exceed max_price".into()));
            }
        }
        let sort = match p.sort.as_deref().map(str::trim) {
            None | Some("") | Some("relevance") => Sort::Relevance,
            Some("price_asc") => Sort::PriceAsc,
            Some("price_desc") => Sort::PriceDesc,
            Some("newest") => Sort::Newest,
            Some(_) => {
                return Err(InvalidSearch(
                    "sort must be one of relevance, price_asc, price_desc, newest".into(),
                ))
            }
        };
        let size = match p.size {
            None => DEFAULT_PAGE_SIZE,
            Some(s) if (1..=MAX_PAGE_SIZE as i64).contains(&s) => s as usize,
            Some(_) => return Err(InvalidSearch(format!("size must be 1-{MAX_PAGE_SIZE}"))),
        };
        let page = match p.page {
            None => 1,
            Some(n) if n >= 1 => n as usize,
            Some(_) => return Err(InvalidSearch("page starts at 1".into())),
        };
        let offset = (page - 1)
            .checked_mul(size)
            .filter(|o| o + size <= MAX_WINDOW)
            .ok_or_else(|| InvalidSearch(format!("page * size must be at most {MAX_WINDOW}")))?;
        Ok(Self {
            text,
            category: bounded(p.category, "category", MAX_FILTER_CHARS)?,
            brand: bounded(p.brand, "brand", MAX_FILTER_CHARS)?,
            min_price,
            max_price,
            sort,
            offset,
            size,
        })
    }

    /// The autocomplete input, validated the same way (empty is allowed: no suggestions).
    pub(crate) fn parse_prefix(q: Option<String>) -> Result<String, InvalidSearch> {
        Ok(bounded(q, "q", MAX_SUGGEST_CHARS)?.unwrap_or_default())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Hit {
    pub id: String,
    pub(crate) name: String,
    pub(crate) brand: Option<String>,
    pub(crate) category_path: Option<String>,
    /// Minor units.
    pub price: u64,
    pub(crate) currency: String,
    pub(crate) image: Option<String>,
    /// The name with matched terms in `<em>…</em>`, HTML-escaped; null when only other
    /// fields matched.
    pub highlight: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    pub key: String,
    pub count: u64,
}

/// Exact counts over every product the search matched (not a sample, not only the page).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Facets {
    /// The 20 categories with most matches, most first (ties by key).
    pub category: Vec<Bucket>,
    /// The 20 brands with most matches, most first (ties by key).
    pub brand: Vec<Bucket>,
    /// Every price range, in order, also those with count 0.
    pub price: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    /// Products matching the words (all of them, counted exactly); when the words match
    /// fewer than 20, typo-tolerant and partial-word matches are counted in too.
    pub total: u64,
    pub hits: Vec<Hit>,
    pub facets: Facets,
}

/// How many category and brand buckets a facet lists.
pub const FACET_SIZE: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_product_event_becomes_a_search_document() {
        let doc = json!({"id": "p1", "name": "게이밍 노트북", "brand": "Emporium",
            "category_path": "1/4/28", "attributes": {"color": "black", "ram": 16},
            "price": {"amount": 1_290_000, "currency": "KRW"},
            "variants": [{"sku": "NB-1", "attributes": {"size": "15"}}]});
        let d = SearchDoc::from_product(&doc, 7).unwrap();
        assert_eq!(d.price, 1_290_000);
        assert_eq!(d.category_ancestors(), ["1", "1/4", "1/4/28"]);
        assert!(d.all_text().contains("black") && d.all_text().contains("NB-1"));
        assert_eq!(
            SearchDoc::from_product(&json!({"id": "x"}), 1),
            Err(DocError::Missing("name"))
        );
    }

    #[test]
    fn requests_are_bounded() {
        let ok = SearchQuery::parse(SearchParams {
            q: Some(" 노트북 ".into()),
            page: Some(3),
            size: Some(10),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((ok.text.as_str(), ok.offset, ok.size), ("노트북", 20, 10));
        for bad in [
            SearchParams {
                size: Some(0),
                ..Default::default()
            },
            SearchParams {
                page: Some(0),
                ..Default::default()
            },
            SearchParams {
                page: Some(1001),
                size: Some(10),
                ..Default::default()
            },
            SearchParams {
                min_price: Some(-1),
                ..Default::default()
            },
            SearchParams {
                min_price: Some(10),
                max_price: Some(5),
                ..Default::default()
            },
            SearchParams {
                sort: Some("name; drop".into()),
                ..Default::default()
            },
            SearchParams {
                q: Some("x".repeat(201)),
                ..Default::default()
            },
        ] {
            assert!(SearchQuery::parse(bad.clone()).is_err(), "{bad:?}");
        }
    }
}
