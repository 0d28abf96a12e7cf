//! `/v1/products` and `/v1/inventory`: thin handlers over the catalog service
//! ([`crate::services::catalog`]) and the live inventory of each SKU as its actor sees it.

use super::auth::Admin;
use super::cluster::{json_body, Route};
use super::problem::ApiError;
use super::{AppState, TraceParent};
use crate::actors::inventory::{InventoryFailure, InventoryView};
use crate::domain::catalog::{ProductFilter, ProductInput, ProductStatus, MAX_STOCK};
use crate::domain::ids::{ProductId, Sku};
use crate::domain::inventory::InventoryError;
use crate::error::Cause;
use crate::persistence::catalog::PageRequest;
use crate::services::catalog::CatalogFailure;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub(crate) use crate::domain::catalog::Product;

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetStockBody {
    #[schema(minimum = 0, maximum = 1_000_000_000_i64)]
    #[serde(deserialize_with = "crate::domain::number::whole")]
    pub(crate) stock: i64,
}

impl From<CatalogFailure> for ApiError {
    fn from(e: CatalogFailure) -> Self {
        match e {
            CatalogFailure::Invalid(detail) => ApiError::unprocessable(detail),
            CatalogFailure::NotFound(detail) => ApiError::NotFound(detail.into()),
            CatalogFailure::Conflict(detail) => ApiError::Conflict(detail.into()),
            CatalogFailure::Store(e) => ApiError::Unavailable(Cause::new(e)),
        }
    }
}

pub(super) fn traceparent(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<TraceParent>().map(|t| t.0.clone())
}

/// `limit` (1-1000, default 50), `cursor`, and the product filters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductQuery {
    /// 1-1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub(crate) cursor: Option<String>,
    /// Only this category and the categories below it.
    #[param(minimum = 1)]
    pub(crate) category_id: Option<i64>,
    #[param(min_length = 1, max_length = 100)]
    pub(crate) brand: Option<String>,
    /// Minimum price in minor units (inclusive).
    #[param(minimum = 0)]
    pub(crate) min_price: Option<i64>,
    /// Maximum price in minor units (inclusive).
    #[param(minimum = 0)]
    pub(crate) max_price: Option<i64>,
    /// `active`, `draft` or `archived`.
    #[param(pattern = "^(active|draft|archived)$")]
    pub(crate) status: Option<String>,
}

pub(super) fn limit_of(limit: Option<i64>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    Ok(limit as usize)
}

/// Turns the query into a filter and a page; `category_path` is the resolved subtree.
pub(super) fn product_page(
    q: &ProductQuery,
    category_path: Option<String>,
) -> Result<(ProductFilter, PageRequest<ProductId>), ApiError> {
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| ProductId::parse(c).map_err(|_| ApiError::bad_request("cursor is not one this server issued")))
        .transpose()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            ProductStatus::parse(s).ok_or_else(|| ApiError::bad_request("status must be active, draft or archived"))
        })
        .transpose()?;
    if q.min_price.is_some_and(|p| p < 0) || q.max_price.is_some_and(|p| p < 0) {
        return Err(ApiError::bad_request("prices are minor units, never negative"));
    }
    if q.brand
        .as_deref()
        .is_some_and(|b| b.is_empty() || b.chars().count() > 100)
    {
        return Err(ApiError::bad_request("brand must be 1-100 characters"));
    }
    let filter = ProductFilter {
        category_path,
        brand: q.brand.clone(),
        min_price: q.min_price,
        max_price: q.max_price,
        status,
    };
    Ok((
        filter,
        PageRequest {
            limit: limit_of(q.limit)?,
            cursor,
        },
    ))
}

/// The subtree path of a category named in a query, or 404.
pub(super) async fn category_path_of(state: &AppState, id: i64) -> Result<String, ApiError> {
    let category = state
        .catalog
        .category(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no category {id}").into()))?;
    Ok(category.path)
}

fn product_id(raw: &str) -> Result<ProductId, ApiError> {
    ProductId::parse(raw)
        .map_err(|_| ApiError::NotFound(format!("no product {:?}", raw.chars().take(40).collect::<String>()).into()))
}

/// Create a product with its variants (one SKU each) and their initial stock.
#[utoipa::path(post, path = "/v1/products", tag = "catalog", request_body = ProductInput,
    responses((status = 201, body = Product), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 409, body = super::problem::Problem, description = "A SKU already exists"), (status = 422, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn create_product(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
    body: web::Json<ProductInput>,
) -> Result<HttpResponse, ApiError> {
    let product = state
        .catalog
        .create_product(body.into_inner(), traceparent(&req))
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/v1/products/{}", product.id),
        ))
        .json(product))
}

/// Read a product (soft-deleted ones are 404).
#[utoipa::path(get, path = "/v1/products/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = Product), (status = 404, body = super::problem::Problem)))]
pub(crate) async fn get_product(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = product_id(&id)?;
    let product = state
        .catalog
        .product(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no product {id}").into()))?;
    Ok(HttpResponse::Ok().json(product))
}

/// List products in id (creation) order, filtered.
#[utoipa::path(get, path = "/v1/products", tag = "catalog", params(ProductQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 400, body = super::problem::Problem),
        (status = 404, body = super::problem::Problem, description = "No such category")))]
pub(crate) async fn list_products(
    state: web::Data<AppState>,
    query: web::Query<ProductQuery>,
) -> Result<HttpResponse, ApiError> {
    let path = match query.category_id {
        Some(id) => Some(category_path_of(&state, id).await?),
        None => None,
    };
    let (filter, page) = product_page(&query, path)?;
    Ok(HttpResponse::Ok().json(state.catalog.products(&filter, &page).await?))
}

/// Replace a product. Every existing variant must stay (a SKU keeps its history); new
/// variants bring their initial stock; stock of existing SKUs is not part of the catalog.
#[utoipa::path(put, path = "/v1/products/{id}", tag = "catalog", params(("id" = String, Path)), request_body = ProductInput,
    responses((status = 200, body = Product), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 404, body = super::problem::Problem), (status = 409, body = super::problem::Problem), (status = 422, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn replace_product(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<ProductInput>,
) -> Result<HttpResponse, ApiError> {
    let id = product_id(&id)?;
    let product = state
        .catalog
        .replace_product(id, body.into_inner(), traceparent(&req))
        .await?;
    Ok(HttpResponse::Ok().json(product))
}

/// JSON merge patch (RFC 7396) of name, description, brand, category, attributes,
/// images, price and status.
#[utoipa::path(patch, path = "/v1/products/{id}", tag = "catalog", params(("id" = String, Path)),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = Product), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 404, body = super::problem::Problem), (status = 409, body = super::problem::Problem), (status = 422, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn patch_product(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let id = product_id(&id)?;
    let product = state
        .catalog
        .patch_product(id, body.into_inner(), traceparent(&req))
        .await?;
    Ok(HttpResponse::Ok().json(product))
}

/// Soft-delete a product: gone from reads and lists, `product_deleted` emitted; its SKUs
/// and their inventory history stay.
#[utoipa::path(delete, path = "/v1/products/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 404, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn delete_product(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = product_id(&id)?;
    state.catalog.delete_product(id, traceparent(&req)).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn parse_sku(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|_| ApiError::NotFound(format!("no sku {raw:?}").into()))
}

impl From<InventoryFailure> for ApiError {
    fn from(e: InventoryFailure) -> Self {
        match e {
            InventoryFailure::UnknownSku(_) => ApiError::NotFound(Cause::new(e)),
            InventoryFailure::Rule(InventoryError::BelowReserved { .. }) => ApiError::Conflict(Cause::new(e)),
            InventoryFailure::Rule(_) => ApiError::unprocessable(Cause::new(e)),
            InventoryFailure::Unavailable(_) | InventoryFailure::NotOwner(_) => ApiError::Unavailable(Cause::new(e)),
        }
    }
}

/// Live stock of a SKU: `available = stock - reserved`.
#[utoipa::path(get, path = "/v1/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)),
    responses((status = 200, body = InventoryView), (status = 404, body = super::problem::Problem)))]
pub(crate) async fn get_inventory(
    state: web::Data<AppState>,
    req: HttpRequest,
    sku: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sku = parse_sku(&sku)?;
    if let Route::Peer(owner) = state.peers.route(&req, Some(&sku)).await? {
        return state.peers.forward(&state, &req, &owner, None).await;
    }
    Ok(HttpResponse::Ok().json(state.inventory.view(&sku).await?))
}

/// Set the stock on hand of a SKU (never below what unpaid orders hold: 409).
#[utoipa::path(put, path = "/v1/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)), request_body = SetStockBody,
    responses((status = 200, body = InventoryView), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 404, body = super::problem::Problem), (status = 409, body = super::problem::Problem), (status = 422, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn set_inventory(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
    sku: web::Path<String>,
    body: web::Json<SetStockBody>,
) -> Result<HttpResponse, ApiError> {
    let sku = parse_sku(&sku)?;
    if !(0..=MAX_STOCK).contains(&body.stock) {
        return Err(ApiError::unprocessable(format!(
            "stock must be between 0 and {MAX_STOCK}"
        )));
    }
    if let Route::Peer(owner) = state.peers.route(&req, Some(&sku)).await? {
        return state
            .peers
            .forward(&state, &req, &owner, Some(json_body(&*body)?))
            .await;
    }
    Ok(HttpResponse::Ok().json(state.inventory.set_stock(&sku, body.stock).await?))
}
