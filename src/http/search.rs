//! `GET /v1/search` and `GET /v1/search/suggest`: thin handlers over
//! [`crate::search::SearchIndex`]. Input is validated by
//! [`crate::domain::search::SearchQuery::parse`]; the free text only ever becomes terms,
//! never query syntax. A search backend outage answers 503 `/problems/unavailable`
//! (orders do not depend on search and keep working).

use super::problem::ApiError;
use super::AppState;
use crate::domain::search::{SearchParams, SearchQuery, SearchResults};
use crate::error::Cause;
use crate::search::SearchError;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Query parameters of `GET /v1/search` (documented; parsing goes through
/// [`SearchParams`] so that bad values become one problem, not a framework error).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct SearchQueryDoc {
    /// Free text (at most 200 characters). Korean particles and synonyms are handled; typos
    /// and partial words are matched when the words as written find fewer than 20 products
    /// (then `total` counts those matches too). Facet counts are exact over all matches.
    #[param(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    q: Option<String>,
    /// Category path; matches the category and everything below it (`1/4` matches `1/4/28`).
    #[param(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    category: Option<String>,
    /// Exact brand.
    #[param(max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    brand: Option<String>,
    /// Minimum price in minor units, inclusive.
    #[param(minimum = 0)]
    min_price: Option<i64>,
    /// Maximum price in minor units, inclusive.
    #[param(minimum = 0)]
    max_price: Option<i64>,
    /// `relevance` (default), `price_asc`, `price_desc`, `newest`.
    #[param(pattern = "^(|relevance|price_asc|price_desc|newest)$")]
    sort: Option<String>,
    /// 1-based page (page * size at most 10,000).
    #[param(minimum = 1, maximum = 10000)]
    page: Option<i64>,
    /// Hits per page, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    size: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SuggestParams {
    /// What the user typed so far (at most 100 characters).
    #[param(max_length = 100, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    pub(crate) q: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Suggestions {
    pub(crate) suggestions: Vec<String>,
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        // Both are the search backend's failure, not the client's. The cause (which may
        // name internal hosts) goes to the log, not to the client.
        tracing::warn!(error = %e, "search failed");
        ApiError::UnavailableFor("search is unavailable; orders are not affected")
    }
}

/// Search products: full text (Korean-aware), filters, facets, highlighted names.
#[utoipa::path(get, path = "/v1/search", tag = "search", params(SearchQueryDoc),
    responses((status = 200, body = SearchResults), (status = 400, body = super::problem::Problem),
        (status = 422, body = super::problem::Problem),
        (status = 503, body = super::problem::Problem, description = "The search backend is unavailable")))]
pub(crate) async fn search(
    state: web::Data<AppState>,
    params: web::Query<SearchParams>,
) -> Result<HttpResponse, ApiError> {
    let query = SearchQuery::parse(params.into_inner()).map_err(|e| ApiError::unprocessable(Cause::new(e)))?;
    let results = state.search.search(&query).await?;
    Ok(HttpResponse::Ok().json(results))
}

/// Autocomplete: product names whose words start with what was typed.
#[utoipa::path(get, path = "/v1/search/suggest", tag = "search", params(SuggestParams),
    responses((status = 200, body = Suggestions), (status = 422, body = super::problem::Problem),
        (status = 503, body = super::problem::Problem, description = "The search backend is unavailable")))]
pub(crate) async fn suggest(
    state: web::Data<AppState>,
    params: web::Query<SuggestParams>,
) -> Result<HttpResponse, ApiError> {
    let prefix =
        SearchQuery::parse_prefix(params.into_inner().q).map_err(|e| ApiError::unprocessable(Cause::new(e)))?;
    let suggestions = if prefix.is_empty() {
        Vec::new()
    } else {
        state
            .search
            .suggest(&prefix, state.settings.search.suggest_size)
            .await?
    };
    Ok(HttpResponse::Ok().json(Suggestions { suggestions }))
}
