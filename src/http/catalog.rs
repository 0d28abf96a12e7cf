//! `/v1/products` and `/v1/inventory`: enough catalog to create SKUs with stock, and
//! the live inventory of each SKU as its actor sees it.

use super::auth::Admin;
use super::input::{check_attributes, check_price, check_text};
use super::problem::ApiError;
use super::{rfc3339, AppState, TraceParent};
use crate::actors::inventory::{InventoryFailure, InventoryView};
use crate::domain::events::{Event, EventType};
use crate::domain::ids::{ProductId, Sku};
use crate::domain::inventory::InventoryError;
use crate::domain::money::Money;
use crate::domain::now_millis;
use crate::persistence::{NewProduct, NewSku, StoreError};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use utoipa::ToSchema;

const MAX_VARIANTS: usize = 100;
const MAX_STOCK: i64 = 1_000_000_000;
const MAX_NAME_CHARS: usize = 200;
const MAX_CATEGORY_PATH_CHARS: usize = 500;

/// The schema of a price in a request (responses use [`Money`], whose totals may be larger).
#[derive(ToSchema)]
#[allow(dead_code)] // documents the request shape only; the body is read as `Money`
pub struct PriceInput {
    /// Minor units (cents, won), 0 to 10^12.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    amount: i64,
    /// ISO 4217 code, e.g. `KRW`.
    #[schema(example = "KRW", pattern = "^[A-Z]{3}$")]
    currency: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// 1-200 characters, not only spaces, no control characters (`input::check_text`; the
    /// same pattern is on brand and category_path).
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub brand: Option<String>,
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub category_path: Option<String>,
    /// Free-form; nested at most 16 levels.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    #[schema(value_type = PriceInput)]
    pub price: Money,
    /// 1-100 variants, each with its own SKU.
    #[schema(min_items = 1, max_items = 100)]
    pub variants: Vec<CreateVariant>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVariant {
    #[schema(value_type = String, example = "TSHIRT-RED-M", pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: Sku,
    /// Free-form; nested at most 16 levels.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    /// Defaults to the product's price; same currency.
    #[serde(default)]
    #[schema(value_type = Option<PriceInput>)]
    pub price: Option<Money>,
    #[schema(minimum = 0, maximum = 1_000_000_000_i64)]
    #[serde(deserialize_with = "crate::domain::number::whole")]
    pub stock: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub brand: Option<String>,
    pub category_path: Option<String>,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub price: Money,
    pub variants: Vec<VariantView>,
    pub created_at: String,
}

/// A variant as the catalog keeps it: stock lives only in the inventory actors.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VariantView {
    pub sku: String,
    #[schema(value_type = Object)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub price: Money,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStockBody {
    #[schema(minimum = 0, maximum = 1_000_000_000_i64)]
    #[serde(deserialize_with = "crate::domain::number::whole")]
    pub stock: i64,
}

/// Every rule on a product body beyond its shape.
pub fn validate(p: &CreateProduct) -> Result<(), ApiError> {
    check_text("name", &p.name, MAX_NAME_CHARS)?;
    if let Some(brand) = &p.brand {
        check_text("brand", brand, MAX_NAME_CHARS)?;
    }
    if let Some(path) = &p.category_path {
        check_text("category_path", path, MAX_CATEGORY_PATH_CHARS)?;
    }
    if let Some(attributes) = &p.attributes {
        check_attributes("attributes", attributes)?;
    }
    check_price("price", &p.price)?;
    if p.variants.is_empty() || p.variants.len() > MAX_VARIANTS {
        return Err(ApiError::unprocessable(format!(
            "a product needs 1-{MAX_VARIANTS} variants"
        )));
    }
    let mut seen = HashSet::new();
    for v in &p.variants {
        if let Some(attributes) = &v.attributes {
            check_attributes(&format!("attributes of {}", v.sku), attributes)?;
        }
        if let Some(price) = &v.price {
            check_price(&format!("price of {}", v.sku), price)?;
        }
        if !seen.insert(&v.sku) {
            return Err(ApiError::unprocessable(format!("sku {} appears twice", v.sku)));
        }
        if !(0..=MAX_STOCK).contains(&v.stock) {
            return Err(ApiError::unprocessable(format!(
                "stock of {} must be between 0 and {MAX_STOCK}",
                v.sku
            )));
        }
        if v.price.is_some_and(|price| price.currency != p.price.currency) {
            return Err(ApiError::unprocessable(format!(
                "price of {} must be in {}",
                v.sku, p.price.currency
            )));
        }
    }
    Ok(())
}

/// Create a product with its variants (one SKU each) and their initial stock.
#[utoipa::path(post, path = "/v1/products", tag = "catalog", request_body = CreateProduct,
    responses((status = 201, body = ProductView), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 409, body = super::problem::Problem, description = "A SKU already exists"), (status = 422, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub async fn create_product(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
    body: web::Json<CreateProduct>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    validate(&body)?;
    let id = ProductId::generate();
    let at = now_millis();
    let view = ProductView {
        id: id.to_string(),
        name: body.name.trim().to_owned(),
        brand: body.brand,
        category_path: body.category_path,
        attributes: body.attributes.unwrap_or_default(),
        price: body.price,
        variants: body
            .variants
            .iter()
            .map(|v| VariantView {
                sku: v.sku.to_string(),
                attributes: v.attributes.clone().unwrap_or_default(),
                price: v.price.unwrap_or(body.price),
            })
            .collect(),
        created_at: rfc3339(at),
    };
    let doc = serde_json::to_value(&view).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let traceparent = req.extensions().get::<TraceParent>().map(|t| t.0.clone());
    let event = Event::new(EventType::ProductUpserted, id, at, traceparent, doc.clone());
    let product = NewProduct {
        id,
        doc,
        skus: body
            .variants
            .into_iter()
            .map(|v| NewSku {
                price: v.price.unwrap_or(body.price),
                sku: v.sku,
                stock: v.stock,
            })
            .collect(),
        at,
    };
    match state.store.create_product(&product, &[event]).await {
        Ok(()) => Ok(HttpResponse::Created()
            .insert_header((actix_web::http::header::LOCATION, format!("/v1/products/{id}")))
            .json(view)),
        Err(StoreError::Conflict(detail)) => Err(ApiError::Conflict(detail)),
        Err(e) => Err(ApiError::Unavailable(e.to_string())),
    }
}

/// Read a product.
#[utoipa::path(get, path = "/v1/products/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = super::problem::Problem)))]
pub async fn get_product(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound(format!("no product {:?}", id.as_str()));
    let id = ProductId::parse(&id).map_err(|_| not_found())?;
    let doc = state
        .store
        .get_product(id)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    doc.map(|d| HttpResponse::Ok().json(d)).ok_or_else(not_found)
}

fn parse_sku(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|_| ApiError::NotFound(format!("no sku {raw:?}")))
}

impl From<InventoryFailure> for ApiError {
    fn from(e: InventoryFailure) -> Self {
        match e {
            InventoryFailure::UnknownSku(_) => ApiError::NotFound(e.to_string()),
            InventoryFailure::Rule(InventoryError::BelowReserved { .. }) => ApiError::Conflict(e.to_string()),
            InventoryFailure::Rule(_) => ApiError::unprocessable(e.to_string()),
            InventoryFailure::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// Live stock of a SKU: `available = stock - reserved`.
#[utoipa::path(get, path = "/v1/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)),
    responses((status = 200, body = InventoryView), (status = 404, body = super::problem::Problem)))]
pub async fn get_inventory(state: web::Data<AppState>, sku: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let sku = parse_sku(&sku)?;
    Ok(HttpResponse::Ok().json(state.inventory.view(&sku).await?))
}

/// Set the stock on hand of a SKU (never below what unpaid orders hold: 409).
#[utoipa::path(put, path = "/v1/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)), request_body = SetStockBody,
    responses((status = 200, body = InventoryView), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 404, body = super::problem::Problem), (status = 409, body = super::problem::Problem), (status = 422, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub async fn set_inventory(
    state: web::Data<AppState>,
    _admin: Admin,
    sku: web::Path<String>,
    body: web::Json<SetStockBody>,
) -> Result<HttpResponse, ApiError> {
    let sku = parse_sku(&sku)?;
    if !(0..=MAX_STOCK).contains(&body.stock) {
        return Err(ApiError::unprocessable(format!(
            "stock must be between 0 and {MAX_STOCK}"
        )));
    }
    Ok(HttpResponse::Ok().json(state.inventory.set_stock(&sku, body.stock).await?))
}
