//! The catalog's rules: what a valid product document is, how a replace or a JSON merge
//! patch turns into a new document, and how materialized category paths (`1/4/28`) are
//! built, moved and queried. Pure functions; the stores and handlers only call them.
//!
//! A product's `category_path` is the path of ids of its category, so "everything in
//! this category and below" is the range `path` ∪ [`path/`, `path0`) — `'0'` is the
//! character right after `'/'` — which every backend answers from an ordinary index
//! (no `LIKE`, no regex, no collation surprises).

use super::categories::parse_path;
use super::ids::{ProductId, Sku};
use super::money::{Money, MAX_PRICE};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use utoipa::ToSchema;

pub(crate) const MAX_VARIANTS: usize = 100;
pub(crate) const MAX_STOCK: i64 = 1_000_000_000;
pub(crate) const MAX_IMAGES: usize = 20;
pub(crate) const MAX_ATTRIBUTES_BYTES: usize = 8 * 1024;
/// Deep enough for any shop's navigation; keeps paths (and the indexes on them) short.
pub(crate) const MAX_CATEGORY_DEPTH: i64 = 16;
/// How deep a free-form JSON field (`attributes`) may nest: `{"a":{"b":1}}` is 2.
///
/// Why a limit when serde_json already stops at 128 levels (answered 400): documents are
/// stored and re-read by other backends (MongoDB refuses documents nested past 100 levels),
/// and recursive code that walks them (indexers, `Drop`) uses stack per level. 16 levels is
/// far more than any product attribute needs.
pub(crate) const MAX_JSON_DEPTH: usize = 16;

/// The nesting depth of a JSON value, without recursion (a scalar is 0, `{}` and `[]` 1).
pub(crate) fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Object(map) => Box::new(map.values()),
            Value::Array(items) => Box::new(items.iter()),
            _ => {
                deepest = deepest.max(depth);
                continue;
            }
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

/// Where a product is in its life. Soft-deleted products are not a status: they are gone
/// from every read and list, but their SKUs (and their inventory history) stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProductStatus {
    #[default]
    Active,
    Draft,
    Archived,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draft => "draft",
            Self::Archived => "archived",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "draft" => Some(Self::Draft),
            "archived" => Some(Self::Archived),
            _ => None,
        }
    }
}

/// The body of `POST /v1/products` and `PUT /v1/products/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductInput {
    // The schema states what `validate` checks (lengths, no control characters, counts,
    // ranges), so generated and hand-written clients learn the rules from the document.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")]
    pub(crate) name: String,
    #[serde(default)]
    #[schema(max_length = 10000)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100, pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")]
    pub(crate) brand: Option<String>,
    /// The category, by id ...
    #[serde(default)]
    #[schema(minimum = 1)]
    pub(crate) category_id: Option<i64>,
    /// ... or by its path (`1/4/28`); when both are given they must name the same category.
    #[serde(default)]
    #[schema(pattern = r"^[1-9][0-9]{0,17}(/[1-9][0-9]{0,17}){0,15}$")]
    pub(crate) category_path: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) attributes: Option<Map<String, Value>>,
    /// http(s) URLs or absolute paths, without whitespace.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub(crate) images: Option<Vec<String>>,
    pub(crate) price: Money,
    #[serde(default)]
    pub(crate) status: Option<ProductStatus>,
    /// 1-100 variants, each SKU once.
    #[schema(min_items = 1, max_items = 100)]
    pub(crate) variants: Vec<VariantInput>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct VariantInput {
    #[schema(value_type = String, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub(crate) sku: Sku,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub(crate) attributes: Option<Map<String, Value>>,
    #[serde(default)]
    pub(crate) price: Option<Money>,
    /// Initial stock of a new SKU. Stock of an existing SKU changes only through
    /// `PUT /v1/inventory/{sku}`: the catalog never holds a second copy.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub(crate) stock: Option<i64>,
}

/// The product document: what the API answers, what the catalog stores and what
/// `product_upserted` carries as its `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Product {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) brand: Option<String>,
    #[serde(default)]
    pub(crate) category_id: Option<i64>,
    #[serde(default)]
    pub(crate) category_path: Option<String>,
    #[schema(value_type = Object)]
    #[serde(default)]
    pub(crate) attributes: Map<String, Value>,
    // Defaults: documents stored before the catalog migration (0003) lack these fields.
    #[serde(default)]
    pub(crate) images: Vec<String>,
    pub(crate) price: Money,
    #[serde(default)]
    pub(crate) status: ProductStatus,
    pub(crate) variants: Vec<Variant>,
    pub(crate) created_at: String,
    #[serde(default)]
    pub(crate) updated_at: String,
}

/// A variant as the catalog keeps it: stock lives only in the inventory actors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Variant {
    pub(crate) sku: String,
    #[schema(value_type = Object)]
    pub(crate) attributes: Map<String, Value>,
    pub(crate) price: Money,
}

/// A category node. `path` is the ids from the root down to this node, `depth` 0 at a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct Category {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) parent_id: Option<i64>,
    pub(crate) path: String,
    pub(crate) depth: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Invalid(pub String);

pub(super) fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

/// Free text a person typed: 1 to `max` characters once trimmed, and no control
/// characters (they break logs, CSV exports and terminals).
fn check_len(what: &str, value: &str, max: usize) -> Result<(), Invalid> {
    let n = value.trim().chars().count();
    if n == 0 || value.chars().count() > max {
        return Err(invalid(format!("{what} must be 1-{max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!("{what} must not contain control characters")));
    }
    Ok(())
}

/// A price a request names: at most [`MAX_PRICE`] minor units, so order totals cannot
/// overflow.
fn check_price(what: &str, price: &Money) -> Result<(), Invalid> {
    if price.amount > MAX_PRICE {
        return Err(invalid(format!("{what} must be at most {MAX_PRICE} minor units")));
    }
    Ok(())
}

/// Everything about a product body that can be checked without a database.
pub(crate) fn validate(p: &ProductInput) -> Result<(), Invalid> {
    check_len("name", &p.name, 200)?;
    if let Some(d) = &p.description {
        if d.chars().count() > 10_000 {
            return Err(invalid("description must be at most 10000 characters"));
        }
    }
    if let Some(b) = &p.brand {
        check_len("brand", b, 100)?;
    }
    if let Some(path) = &p.category_path {
        parse_path(path)?;
    }
    if p.category_id.is_some_and(|id| id <= 0) {
        return Err(invalid("category_id must be a positive integer"));
    }
    check_attributes("attributes", p.attributes.as_ref())?;
    check_price("price", &p.price)?;
    let images = p.images.as_deref().unwrap_or_default();
    if images.len() > MAX_IMAGES {
        return Err(invalid(format!("at most {MAX_IMAGES} images")));
    }
    for url in images {
        let ok_scheme = url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/');
        if !ok_scheme || url.len() > 2048 || url.chars().any(char::is_whitespace) {
            return Err(invalid(
                "images must be http(s) URLs or absolute paths, without spaces, up to 2048 bytes",
            ));
        }
    }
    if p.variants.is_empty() || p.variants.len() > MAX_VARIANTS {
        return Err(invalid(format!("a product needs 1-{MAX_VARIANTS} variants")));
    }
    let mut seen = HashSet::new();
    for v in &p.variants {
        if !seen.insert(&v.sku) {
            return Err(invalid(format!("sku {} appears twice", v.sku)));
        }
        if v.stock.is_some_and(|s| !(0..=MAX_STOCK).contains(&s)) {
            return Err(invalid(format!("stock of {} must be between 0 and {MAX_STOCK}", v.sku)));
        }
        if v.price.is_some_and(|price| price.currency != p.price.currency) {
            return Err(invalid(format!("price of {} must be in {}", v.sku, p.price.currency)));
        }
        if let Some(price) = &v.price {
            check_price(&format!("price of {}", v.sku), price)?;
        }
        check_attributes(&format!("attributes of {}", v.sku), v.attributes.as_ref())?;
    }
    Ok(())
}

fn check_attributes(what: &str, attributes: Option<&Map<String, Value>>) -> Result<(), Invalid> {
    let Some(attributes) = attributes else { return Ok(()) };
    // Stored documents are re-read by other backends (MongoDB refuses nesting past 100
    // levels) and walked recursively by indexers: far deeper than any attribute needs.
    let depth = json_depth(&Value::Object(attributes.clone()));
    if depth > MAX_JSON_DEPTH {
        return Err(invalid(format!(
            "{what} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are allowed"
        )));
    }
    let size = serde_json::to_string(attributes).map_or(usize::MAX, |s| s.len());
    if size > MAX_ATTRIBUTES_BYTES {
        return Err(invalid(format!(
            "{what} must be at most {MAX_ATTRIBUTES_BYTES} bytes of JSON"
        )));
    }
    // Keys become field names in MongoDB and in the search index: no operators, no paths.
    if let Some(bad) = attributes
        .keys()
        .find(|k| k.is_empty() || k.len() > 64 || k.starts_with('$') || k.contains('.'))
    {
        return Err(invalid(format!(
            "{what}: key {:?} must be 1-64 bytes without '$' at the start or '.'",
            bad.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// Builds the stored document from a validated body and its resolved category.
pub(crate) fn build(
    id: ProductId,
    input: &ProductInput,
    category: Option<&Category>,
    created_at: String,
    updated_at: String,
) -> Product {
    let trimmed = |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    Product {
        id: id.to_string(),
        name: input.name.trim().to_owned(),
        description: input.description.clone(),
        brand: trimmed(&input.brand),
        category_id: category.map(|c| c.id),
        category_path: category.map(|c| c.path.clone()),
        attributes: input.attributes.clone().unwrap_or_default(),
        images: input.images.clone().unwrap_or_default(),
        price: input.price,
        status: input.status.unwrap_or_default(),
        variants: input
            .variants
            .iter()
            .map(|v| Variant {
                sku: v.sku.to_string(),
                attributes: v.attributes.clone().unwrap_or_default(),
                price: v.price.unwrap_or(input.price),
            })
            .collect(),
        created_at,
        updated_at,
    }
}

/// What a replace may do to an existing product's variants: keep every SKU (a SKU owns
/// inventory and order history, so it is never dropped), give initial stock only to new
/// ones. Returns the new SKUs.
pub(crate) fn check_replace<'a>(current: &Product, next: &'a ProductInput) -> Result<Vec<&'a VariantInput>, Invalid> {
    let existing: HashSet<&str> = current.variants.iter().map(|v| v.sku.as_str()).collect();
    let kept: HashSet<&str> = next.variants.iter().map(|v| v.sku.as_str()).collect();
    if let Some(dropped) = existing.iter().find(|s| !kept.contains(*s)) {
        return Err(invalid(format!(
            "variant {dropped} cannot be removed: a SKU keeps its inventory and order history (archive the product instead)"
        )));
    }
    if let Some(v) = next
        .variants
        .iter()
        .find(|v| existing.contains(v.sku.as_str()) && v.stock.is_some())
    {
        return Err(invalid(format!(
            "stock of the existing SKU {} changes through PUT /v1/inventory/{}",
            v.sku, v.sku
        )));
    }
    if next.price.currency != current.price.currency {
        return Err(invalid(format!(
            "the currency of a product cannot change (it is {})",
            current.price.currency
        )));
    }
    Ok(next
        .variants
        .iter()
        .filter(|v| !existing.contains(v.sku.as_str()))
        .collect())
}

/// The fields a JSON merge patch may touch. Variants change through PUT.
const PATCHABLE: [&str; 9] = [
    "name",
    "description",
    "brand",
    "category_id",
    "category_path",
    "attributes",
    "images",
    "price",
    "status",
];

/// Applies a JSON merge patch (RFC 7396) to a product and returns the replace body it
/// amounts to. A patch that names its category by id replaces the category by id.
pub(crate) fn patch(current: &Product, patch: &Value) -> Result<ProductInput, Invalid> {
    let Value::Object(fields) = patch else {
        return Err(invalid("a merge patch must be a JSON object"));
    };
    if let Some(bad) = fields.keys().find(|k| !PATCHABLE.contains(&k.as_str())) {
        return Err(invalid(format!(
            "{:?} cannot be patched (patchable: {}; variants change through PUT)",
            bad.chars().take(40).collect::<String>(),
            PATCHABLE.join(", ")
        )));
    }
    let mut doc = serde_json::to_value(as_input(current)).map_err(|e| invalid(e.to_string()))?;
    if fields.contains_key("category_id") && !fields.contains_key("category_path") {
        if let Value::Object(d) = &mut doc {
            d.remove("category_path");
        }
    }
    if fields.contains_key("category_path") && !fields.contains_key("category_id") {
        if let Value::Object(d) = &mut doc {
            d.remove("category_id");
        }
    }
    merge(&mut doc, patch);
    serde_json::from_value(doc).map_err(|e| invalid(e.to_string()))
}

/// RFC 7396: objects merge recursively, `null` removes, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The replace body that reproduces `p` (variants without stock).
pub(crate) fn as_input(p: &Product) -> ProductInput {
    ProductInput {
        name: p.name.clone(),
        description: p.description.clone(),
        brand: p.brand.clone(),
        category_id: p.category_id,
        category_path: p.category_path.clone(),
        attributes: Some(p.attributes.clone()),
        images: Some(p.images.clone()),
        price: p.price,
        status: Some(p.status),
        variants: p
            .variants
            .iter()
            .filter_map(|v| {
                Some(VariantInput {
                    sku: Sku::parse(v.sku.clone()).ok()?,
                    attributes: Some(v.attributes.clone()),
                    price: Some(v.price),
                    stock: None,
                })
            })
            .collect(),
    }
}

/// Filters of a product list; every one is optional and they combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProductFilter {
    /// The category and everything below it.
    pub(crate) category_path: Option<String>,
    pub(crate) brand: Option<String>,
    pub(crate) min_price: Option<i64>,
    pub(crate) max_price: Option<i64>,
    pub(crate) status: Option<ProductStatus>,
}

/// One page of a list, in id order; `next_cursor` is the last id when more may follow.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows (the extra one only says "there is more").
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> String) -> Self {
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more { rows.last().map(cursor_of) } else { None };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_containers_not_scalars() {
        let nested = (0..100).fold(serde_json::json!(1), |inner, _| serde_json::json!({ "a": inner }));
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!({})), 1);
        assert_eq!(json_depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(json_depth(&nested), 100);
    }
    use serde_json::json;

    fn cat(id: i64, path: &str) -> Category {
        Category {
            id,
            name: format!("c{id}"),
            parent_id: None,
            path: path.into(),
            depth: path.split('/').count() as i64 - 1,
        }
    }

    fn input(v: Value) -> ProductInput {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        json!({"name": "운동화", "price": {"amount": 1000, "currency": "KRW"},
               "variants": [{"sku": "A-1", "stock": 3}, {"sku": "A-2", "price": {"amount": 1200, "currency": "KRW"}}]})
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(validate(&input(base())).is_ok());
        let mut dup = base();
        dup["variants"][1]["sku"] = json!("A-1");
        assert!(validate(&input(dup)).unwrap_err().0.contains("twice"));
        let mut usd = base();
        usd["variants"][1]["price"]["currency"] = json!("USD");
        assert!(validate(&input(usd)).is_err());
        let mut key = base();
        key["attributes"] = json!({"$where": 1});
        assert!(validate(&input(key)).is_err());
        let mut img = base();
        img["images"] = json!(["javascript:alert(1)"]);
        assert!(validate(&input(img)).is_err());
        let mut empty = base();
        empty["name"] = json!("  ");
        assert!(validate(&input(empty)).is_err());
    }

    #[test]
    fn replace_keeps_skus_and_patch_merges() {
        let id = ProductId::generate();
        let p = build(id, &input(base()), Some(&cat(3, "1/3")), "t0".into(), "t0".into());
        assert_eq!(p.variants[0].price.amount, 1000);
        assert_eq!(p.variants[1].price.amount, 1200);
        let mut next = base();
        next["variants"] = json!([{"sku": "A-2"}, {"sku": "A-3", "stock": 1}, {"sku": "A-1"}]);
        let next_input = input(next.clone());
        let new = check_replace(&p, &next_input).unwrap();
        assert_eq!(new.len(), 1);
        next["variants"] = json!([{"sku": "A-2"}]);
        assert!(check_replace(&p, &input(next.clone())).is_err());
        next["variants"] = json!([{"sku": "A-1", "stock": 5}, {"sku": "A-2"}]);
        assert!(check_replace(&p, &input(next)).is_err());

        let patched = patch(
            &p,
            &json!({"brand": "Emporium", "attributes": {"color": "red"}, "description": null}),
        )
        .unwrap();
        assert_eq!(patched.brand.as_deref(), Some("Emporium"));
        assert_eq!(patched.attributes.unwrap()["color"], "red");
        assert_eq!(patched.variants.len(), 2);
        assert!(patch(&p, &json!({"variants": []})).is_err());
        assert!(patch(&p, &json!([1])).is_err());
        let moved = patch(&p, &json!({"category_id": 9})).unwrap();
        assert_eq!((moved.category_id, moved.category_path), (Some(9), None));
    }

    #[test]
    fn pages_say_whether_more_follow() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!((page.items.len(), page.next_cursor.as_deref()), (2, Some("2")));
        let last = Page::from_rows(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(last.next_cursor, None);
    }
}
