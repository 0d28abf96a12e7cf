//! `/v1/orders`: place, read, list and cancel orders.

use super::auth::Caller;
use super::cluster::{json_body, Route};
use super::problem::ApiError;
use super::{rfc3339, AppState, TraceParent};
use crate::actors::order::{CancelRefused, PlaceError, PlaceOrder};
use crate::actors::payment::TEST_TOKENS;
use crate::domain::idempotency::{IdempotencyKey, RequestHash};
use crate::domain::ids::{OrderId, Sku};
use crate::domain::money::Money;
use crate::domain::order::{quantities_by_sku, CancelReason, Order, OrderLimits, OrderLine, OrderStatus};
use crate::domain::payment::{payment_status, PaymentStatus, RefundStatus};
use crate::error::Cause;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrder {
    /// At most `orders.max_items` lines (default 50).
    #[schema(min_items = 1, max_items = 50)]
    pub(crate) items: Vec<OrderItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) payment: Option<PaymentInput>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderItem {
    #[schema(value_type = String, example = "TSHIRT-RED-M", pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub(crate) sku: Sku,
    /// At most `orders.max_qty_per_item` (default 1000).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "crate::domain::number::whole")]
    pub(crate) qty: i64,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PaymentInput {
    /// Simulated gateway token: `test_ok` (default), `test_decline`, `test_flaky`, `test_down`,
    /// `test_slow` (succeeds after `payment.slow_ms`), `test_slow_refund_flaky` (like
    /// `test_slow`; its refund fails three times before it succeeds).
    #[schema(value_type = String, pattern = "^test_(ok|decline|flaky|down|slow|slow_refund_flaky)$")]
    pub(crate) token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderView {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) status: OrderStatus,
    pub(crate) items: Vec<OrderLine>,
    pub(crate) total: Money,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    /// When an unpaid order's reservation expires.
    pub(crate) expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cancel_reason: Option<CancelReason>,
    pub(crate) payment: PaymentView,
}

/// What happened to the order's money.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PaymentView {
    /// `pending`, `captured`, `failed`, `not_charged`; for a payment captured after the
    /// order was cancelled: `refund_pending`, `refunded` or `refund_failed`.
    pub(crate) status: PaymentStatus,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        Self::new(o, None)
    }
}

impl OrderView {
    fn new(o: &Order, refund: Option<RefundStatus>) -> Self {
        Self {
            id: o.id.to_string(),
            user_id: o.user_id.to_string(),
            status: o.status,
            items: o.lines.clone(),
            total: o.total,
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
            expires_at: rfc3339(o.expires_at),
            cancel_reason: o.cancel_reason,
            payment: PaymentView {
                status: payment_status(o.status, o.cancel_reason, refund),
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderPage {
    pub(crate) items: Vec<OrderView>,
    pub(crate) next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// 1 to 1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(format = Uuid)]
    pub(crate) cursor: Option<String>,
}

impl From<PlaceError> for ApiError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::Invalid(_) | PlaceError::UnknownSku(_) | PlaceError::Rejected(_) => {
                ApiError::unprocessable(Cause::new(e))
            }
            PlaceError::OutOfStock { .. } => ApiError::OutOfStock(Cause::new(e)),
            PlaceError::IdempotencyMismatch => ApiError::IdempotencyMismatch(Cause::new(e)),
            PlaceError::KeyInProgress => ApiError::Conflict(Cause::new(e)),
            PlaceError::Unavailable(_) => ApiError::Unavailable(Cause::new(e)),
        }
    }
}

impl From<CancelRefused> for ApiError {
    fn from(e: CancelRefused) -> Self {
        match e {
            CancelRefused::NotFound => ApiError::NotFound(Cause::new(e)),
            CancelRefused::NotPending(_) => ApiError::Conflict(Cause::new(e)),
            CancelRefused::Unavailable => ApiError::Unavailable(Cause::new(e)),
        }
    }
}

/// The `Idempotency-Key` header: absent, or a valid [`IdempotencyKey`].
pub(crate) fn idempotency_key(
    value: Option<&actix_web::http::header::HeaderValue>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
    IdempotencyKey::parse(key)
        .map(Some)
        .map_err(|e| ApiError::bad_request(Cause::new(e)))
}

fn parse_order_id(raw: &str) -> Result<OrderId, ApiError> {
    // A malformed id cannot name an order: not found, like any other unknown id.
    OrderId::parse(raw).map_err(|_| ApiError::NotFound(format!("no order {raw:?}").into()))
}

/// Place an order: reserves every item or none, answers 201 once the order is durable.
#[utoipa::path(post, path = "/v1/orders", tag = "orders", request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body: same answer; other body: 422",
        min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$")),
    responses(
        (status = 201, body = OrderView, description = "Order accepted and durable"),
        (status = 400, body = super::problem::Problem), (status = 401, body = super::problem::Problem),
        (status = 409, body = super::problem::Problem, description = "Out of stock"),
        (status = 422, body = super::problem::Problem),
        (status = 429, body = super::problem::Problem, description = "Over a rate limit; retry after Retry-After"),
        (status = 503, body = super::problem::Problem, description = "Not durable; retry after Retry-After")),
    security(("bearer" = [])))]
pub(crate) async fn create_order(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: web::Json<CreateOrder>,
) -> Result<HttpResponse, ApiError> {
    state.accepting_orders()?;
    // Cluster mode: the owner of the order's smallest SKU places it (reserving at the
    // other SKUs' owners) and runs its saga; it checks the rate limits and answers, this
    // node passes the answer on.
    if let Route::Peer(owner) = state.peers.route(&req, body.items.iter().map(|i| &i.sku).min()).await? {
        return state
            .peers
            .forward(&state, &req, &owner, Some(json_body(&*body)?))
            .await;
    }
    // Before anything is reserved or written: a refused request changes nothing. The
    // address is the TCP peer; X-Forwarded-For is not trusted, any client can forge it.
    state
        .limits
        .check_order(&caller.user, req.peer_addr().map(|a| a.ip()))?;
    let key = idempotency_key(req.headers().get("Idempotency-Key"))?;
    let body = body.into_inner();
    let token = body.payment.as_ref().map_or("test_ok", |p| p.token.as_str()).to_owned();
    if !TEST_TOKENS.contains(&token.as_str()) {
        return Err(ApiError::unprocessable(format!(
            "unknown payment token; use one of {TEST_TOKENS:?}"
        )));
    }
    let idempotency = key.map(|key| (key, RequestHash::of(&body)));
    let items: Vec<(Sku, i64)> = body.items.into_iter().map(|i| (i.sku, i.qty)).collect();
    // Sold out as far as memory knows: answered here, on this worker, without a hop to the
    // SKU's actor. Not for a keyed request: a retry of one that was accepted must replay
    // its 201. Invalid lines fall through, so their 422 comes from the same place as ever.
    if idempotency.is_none() {
        let limits = OrderLimits {
            max_items: state.settings.orders.max_items,
            max_qty_per_item: state.settings.orders.max_qty_per_item,
        };
        if let Ok(wanted) = quantities_by_sku(&items, limits) {
            if let Some((sku, requested, available)) = state.inventory.short_of(wanted.iter().map(|(s, q)| (s, *q))) {
                return Err(PlaceError::OutOfStock {
                    sku,
                    requested,
                    available,
                }
                .into());
            }
        }
    }
    let request = PlaceOrder {
        user: caller.user,
        items,
        payment_token: token,
        idempotency,
        traceparent: req.extensions().get::<TraceParent>().map(|t| t.0.clone()),
        tracestate: tracestate_of(&req),
    };
    let wait = state.settings.server.request_timeout;
    let placed = tokio::time::timeout(wait, state.orders.place(request))
        .await
        .map_err(|_| {
            ApiError::UnavailableFor("the order was not confirmed in time; retry with the same Idempotency-Key")
        })??;
    Ok(HttpResponse::Created()
        .insert_header((
            actix_web::http::header::LOCATION,
            format!("/v1/orders/{}", placed.order.id),
        ))
        .json(OrderView::from(&placed.order)))
}

/// The request's W3C `tracestate`, when it is a valid one.
fn tracestate_of(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("tracestate")?.to_str().ok()?;
    crate::telemetry::context::valid_tracestate(value).map(str::to_owned)
}

/// Read one order (its owner or an admin; anyone else gets 404).
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders", params(("id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 401, body = super::problem::Problem), (status = 404, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub async fn get_order(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order = visible_order(&state, &caller, &id).await?;
    let refunds = state
        .store
        .refund_statuses(&[order.id])
        .await
        .map_err(|e| ApiError::Unavailable(Cause::new(e)))?;
    Ok(HttpResponse::Ok().json(OrderView::new(&order, refunds.get(&order.id).copied())))
}

async fn visible_order(state: &AppState, caller: &Caller, raw_id: &str) -> Result<Order, ApiError> {
    let id = parse_order_id(raw_id)?;
    let order = state
        .store
        .get_order(id)
        .await
        .map_err(|e| ApiError::Unavailable(Cause::new(e)))?;
    order
        .filter(|o| caller.may_see(&o.user_id))
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}").into()))
}

/// List the caller's orders, newest first (an admin sees every order).
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(PageQuery),
    responses((status = 200, body = OrderPage), (status = 400, body = super::problem::Problem), (status = 401, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub async fn list_orders(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let cursor = match &query.cursor {
        Some(c) => Some(OrderId::parse(c).map_err(|_| ApiError::bad_request("cursor is not one this server issued"))?),
        None => None,
    };
    let owner = (!caller.admin).then_some(&caller.user);
    let orders = state
        .store
        .list_orders(owner, cursor, limit)
        .await
        .map_err(|e| ApiError::Unavailable(Cause::new(e)))?;
    let next_cursor = (orders.len() as i64 == limit)
        .then(|| orders.last().map(|o| o.id.to_string()))
        .flatten();
    let ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
    let refunds = state
        .store
        .refund_statuses(&ids)
        .await
        .map_err(|e| ApiError::Unavailable(Cause::new(e)))?;
    Ok(HttpResponse::Ok().json(OrderPage {
        items: orders
            .iter()
            .map(|o| OrderView::new(o, refunds.get(&o.id).copied()))
            .collect(),
        next_cursor,
    }))
}

/// Cancel a PENDING_PAYMENT order; its reservation is released.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", params(("id" = String, Path)),
    responses((status = 200, body = OrderView), (status = 401, body = super::problem::Problem), (status = 404, body = super::problem::Problem),
        (status = 409, body = super::problem::Problem, description = "No longer PENDING_PAYMENT"), (status = 503, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn cancel_order(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order = visible_order(&state, &caller, &id).await?;
    // Cluster mode: the saga runs on the node owning the order's shard (its first SKU's).
    if let Route::Peer(owner) = state
        .peers
        .route(&req, order.lines.iter().map(|l| &l.sku).min())
        .await?
    {
        return state.peers.forward(&state, &req, &owner, None).await;
    }
    let wait = state.settings.server.request_timeout;
    let cancelled = tokio::time::timeout(wait, state.orders.cancel(order.id))
        .await
        .map_err(|_| ApiError::UnavailableFor("the cancellation was not confirmed in time"))??;
    Ok(HttpResponse::Ok().json(OrderView::from(&cancelled)))
}
