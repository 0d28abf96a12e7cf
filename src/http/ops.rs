//! Operational routes: health, metrics, the OpenAPI document and the dashboard page.

use super::auth::Admin;
use super::problem::ApiError;
use super::AppState;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde_json::json;

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, description = "Live")))]
pub(crate) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

/// Ready for traffic: recovery finished (in cluster mode: this node holds its share of
/// the shards or knows every owner), the store answers, not shutting down.
/// The event bus is reported but does not decide readiness: while it is down, orders
/// are still taken and their events wait in the outbox (`outbox_backlog`).
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, description = "Ready"), (status = 503, description = "Recovering, draining or a backend is down")))]
pub(crate) async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let recovered = state.lifecycle.is_recovered();
    let draining = state.lifecycle.is_draining();
    let store = state.write_behind.is_healthy() && state.store.ping().await.is_ok();
    let catalog = state.catalog.ping().await.is_ok();
    let store = store && catalog;
    // Cluster mode: this node holds its share of the shards or knows every owner.
    let cluster = state.peers.ownership().is_settled();
    let recovered = recovered && cluster;
    let body = json!({
        "status": if recovered && !draining && store { "ready" } else { "not_ready" },
        "checks": {"recovered": recovered, "draining": draining, "store": store, "catalog": catalog, "cluster": cluster},
        "bus": {"kind": state.outbox.bus_kind(), "reachable": state.outbox.bus_reachable()},
        "outbox_backlog": state.metrics.outbox_backlog.get(),
    });
    if recovered && !draining && store {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

pub(super) async fn introspection_allowed(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    if state.settings.server.public_introspection {
        return Ok(());
    }
    Admin::extract(req).await.map(|_| ())
}

pub(crate) async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    introspection_allowed(&state, &req).await?;
    let (size, idle) = state.store.pool_usage();
    let m = &state.metrics;
    m.db_pool_connections
        .with_label_values(&["in_use"])
        .set(i64::from(size) - idle as i64);
    m.db_pool_connections.with_label_values(&["idle"]).set(idle as i64);
    m.db_pool_waiters.set(state.store.pool_waiters());
    // Only the hottest SKUs, replaced on every scrape: the series count stays bounded.
    m.inventory_available.reset();
    for (sku, available) in state.inventory.hottest(crate::telemetry::HOT_SKUS) {
        m.inventory_available.with_label_values(&[&sku]).set(available);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(m.render()))
}

pub(crate) async fn openapi(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    introspection_allowed(&state, &req).await?;
    // The served form: the links' keys fixed up (see openapi::served).
    Ok(HttpResponse::Ok().json(super::openapi::served()))
}

const DASHBOARD: &str = include_str!("dashboard.html");

pub(crate) async fn dashboard(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    introspection_allowed(&state, &req).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DASHBOARD))
}

/// Every request no route took: 405 with `Allow` when the path is a route and only the
/// method is wrong (RFC 9110 15.5.6), else 404.
pub(crate) async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(pattern) = req.resource_map().match_pattern(req.path()) {
        return Err(ApiError::MethodNotAllowed {
            detail: format!("{pattern} does not take {}", req.method()),
            allow: super::openapi::allowed_methods(&pattern),
        });
    }
    Err(ApiError::NotFound(
        format!("no route {} {}", req.method(), req.path()).into(),
    ))
}
