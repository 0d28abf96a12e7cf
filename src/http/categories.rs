//! `/v1/categories`: the category tree (materialized paths like `1/4/28`), moving a
//! subtree, and "products in this category and below". Thin handlers over
//! [`crate::services::catalog::CatalogService`].

use super::auth::Admin;
use super::catalog::{category_path_of, limit_of, product_page, traceparent, ProductQuery};
use super::problem::ApiError;
use super::AppState;
use crate::domain::catalog::Category;
use crate::persistence::catalog::PageRequest;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCategory {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub(crate) name: String,
    /// The parent; a top-level category when absent.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub(crate) parent_id: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MoveCategory {
    /// The new parent; `null` makes it a top-level category.
    #[schema(minimum = 1)]
    pub(crate) parent_id: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct CategoryQuery {
    /// Children of this category; the top level when absent.
    pub(crate) parent_id: Option<i64>,
    /// 1-1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub(crate) cursor: Option<String>,
}

/// A category id from the path: anything but a positive integer names no category.
fn category_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("no category {:?}", raw.chars().take(40).collect::<String>()).into()))
}

fn page(limit: Option<i64>, cursor: Option<&str>) -> Result<PageRequest<i64>, ApiError> {
    let cursor = cursor
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::bad_request("cursor is not one this server issued"))
        })
        .transpose()?;
    Ok(PageRequest {
        limit: limit_of(limit)?,
        cursor,
    })
}

/// Create a category under `parent_id` (or at the top level).
#[utoipa::path(post, path = "/v1/categories", tag = "catalog", request_body = NewCategory,
    responses((status = 201, body = Category), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 422, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn create_category(
    state: web::Data<AppState>,
    _admin: Admin,
    body: web::Json<NewCategory>,
) -> Result<HttpResponse, ApiError> {
    let category = state.catalog.create_category(&body.name, body.parent_id).await?;
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/v1/categories/{}", category.id),
        ))
        .json(category))
}

/// Read a category.
#[utoipa::path(get, path = "/v1/categories/{id}", tag = "catalog", params(("id" = i64, Path)),
    responses((status = 200, body = Category), (status = 404, body = super::problem::Problem)))]
pub(crate) async fn get_category(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = category_id(&id)?;
    let category = state
        .catalog
        .category(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no category {id}").into()))?;
    Ok(HttpResponse::Ok().json(category))
}

/// The children of `parent_id` (the top level when absent), paged.
#[utoipa::path(get, path = "/v1/categories", tag = "catalog", params(CategoryQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 400, body = super::problem::Problem)))]
pub(crate) async fn list_categories(
    state: web::Data<AppState>,
    query: web::Query<CategoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(query.limit, query.cursor.as_deref())?;
    Ok(HttpResponse::Ok().json(state.catalog.children(query.parent_id, &page).await?))
}

/// The query of `GET /v1/categories/{id}/products` as documented: the product filters
/// without `category_id`, because the category is in the path (the handler reads
/// [`ProductQuery`] and refuses a `category_id` with 400).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct SubtreeProductQuery {
    /// 1-1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    cursor: Option<String>,
    #[param(min_length = 1, max_length = 100)]
    brand: Option<String>,
    /// Minimum price in minor units (inclusive).
    #[param(minimum = 0)]
    min_price: Option<i64>,
    /// Maximum price in minor units (inclusive).
    #[param(minimum = 0)]
    max_price: Option<i64>,
    /// `active`, `draft` or `archived`.
    #[param(pattern = "^(active|draft|archived)$")]
    status: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChildrenQuery {
    /// 1-1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub(crate) cursor: Option<String>,
}

/// The direct children of a category, paged.
#[utoipa::path(get, path = "/v1/categories/{id}/children", tag = "catalog", params(("id" = i64, Path), ChildrenQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 404, body = super::problem::Problem)))]
pub(crate) async fn children(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ChildrenQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = category_id(&id)?;
    let page = page(query.limit, query.cursor.as_deref())?;
    category_path_of(&state, id).await?;
    Ok(HttpResponse::Ok().json(state.catalog.children(Some(id), &page).await?))
}

/// Move a category with its whole subtree under another parent (or to the top level).
/// Every descendant's path changes in the same operation, and so does the
/// `category_path` of every product below (each emits `product_upserted`).
#[utoipa::path(post, path = "/v1/categories/{id}/move", tag = "catalog", params(("id" = i64, Path)), request_body = MoveCategory,
    responses((status = 200, body = Category), (status = 401, body = super::problem::Problem), (status = 403, body = super::problem::Problem),
        (status = 404, body = super::problem::Problem),
        (status = 422, body = super::problem::Problem, description = "Into its own subtree, unknown parent, or too deep")),
    security(("bearer" = [])))]
pub(crate) async fn move_category(
    state: web::Data<AppState>,
    _admin: Admin,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<MoveCategory>,
) -> Result<HttpResponse, ApiError> {
    let id = category_id(&id)?;
    let moved = state
        .catalog
        .move_category(id, body.parent_id, traceparent(&req))
        .await?;
    Ok(HttpResponse::Ok().json(moved))
}

/// Products in this category and every category below it: one range (prefix) query on
/// the indexed `category_path`, paged, with the same filters as `GET /v1/products`.
#[utoipa::path(get, path = "/v1/categories/{id}/products", tag = "catalog", params(("id" = i64, Path), SubtreeProductQuery),
    responses((status = 200, description = "`{items, next_cursor}`"), (status = 404, body = super::problem::Problem)))]
pub(crate) async fn products(
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ProductQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = category_id(&id)?;
    if query.category_id.is_some() {
        return Err(ApiError::bad_request("the category is in the path"));
    }
    let path = category_path_of(&state, id).await?;
    let (filter, page) = product_page(&query, Some(path))?;
    Ok(HttpResponse::Ok().json(state.catalog.products(&filter, &page).await?))
}
