//! The actix-web HTTP API: thin handlers (extract, call, map), one error type
//! ([`problem::ApiError`]), shared state in [`AppState`].

pub(crate) mod admin_events;
pub(crate) mod auth;
pub(crate) mod catalog;
pub(crate) mod categories;
pub(crate) mod cluster;
pub(crate) mod limits;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod orders;
pub mod problem;
pub(crate) mod search;
pub(crate) mod users;

use crate::actors::inventory::Inventory;
use crate::actors::order::Orders;
use crate::actors::write_behind::WriteBehind;
use crate::config::Settings;
use crate::persistence::SqlStore;
use crate::telemetry::context::{new_traceparent, valid_traceparent};
use crate::telemetry::Metrics;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use problem::ApiError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where the server is in its life: readiness and order intake follow it.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    recovered: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    pub(crate) fn mark_recovered(&self) {
        self.recovered.store(true, Ordering::SeqCst);
    }
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub(crate) fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::SeqCst)
    }
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

pub(crate) struct AppState {
    pub(crate) settings: Arc<Settings>,
    pub(crate) store: SqlStore,
    pub(crate) inventory: Inventory,
    pub(crate) orders: Orders,
    pub(crate) write_behind: WriteBehind,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) outbox: Arc<crate::events::outbox::OutboxRelay>,
    /// Rate limits on order creation (`[limits]`).
    pub(crate) limits: limits::RateLimits,
    /// Product search (`[search]`).
    pub(crate) search: Arc<dyn crate::search::SearchIndex>,
    /// Products and categories.
    pub(crate) catalog: Arc<crate::services::catalog::CatalogService>,
    /// Cluster mode: ownership and forwarding to the owning node.
    pub(crate) peers: Arc<cluster::Peers>,
}

impl AppState {
    /// Orders are taken only after recovery and before shutdown.
    pub(crate) fn accepting_orders(&self) -> Result<(), ApiError> {
        if !self.lifecycle.is_recovered() {
            return Err(ApiError::UnavailableFor("recovery is still running"));
        }
        if self.lifecycle.is_draining() {
            return Err(ApiError::UnavailableFor("the server is shutting down"));
        }
        Ok(())
    }
}

/// All routes.
///
/// Order matters for cost, not meaning (no two patterns overlap): a request is matched
/// against the routes in this order, twice (the router, then `observe` for the route
/// label), and every `{param}` pattern it passes is a regex match. So the routes of a sale
/// come first: measured with perf on a sold-out flood, matching `POST /v1/orders` at the
/// end of this list took 12 % of the server's CPU.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .route("/orders", web::post().to(orders::create_order))
            .route("/inventory/{sku}", web::get().to(catalog::get_inventory))
            .route("/orders/{id}", web::get().to(orders::get_order))
            .route("/orders", web::get().to(orders::list_orders))
            .route("/orders/{id}/cancel", web::post().to(orders::cancel_order))
            .configure(users::routes)
            .route("/products", web::post().to(catalog::create_product))
            .route("/products", web::get().to(catalog::list_products))
            .route("/products/{id}", web::get().to(catalog::get_product))
            .route("/products/{id}", web::put().to(catalog::replace_product))
            .route("/products/{id}", web::patch().to(catalog::patch_product))
            .route("/products/{id}", web::delete().to(catalog::delete_product))
            .route("/categories", web::post().to(categories::create_category))
            .route("/categories", web::get().to(categories::list_categories))
            .route("/categories/{id}", web::get().to(categories::get_category))
            .route("/categories/{id}/children", web::get().to(categories::children))
            .route("/categories/{id}/move", web::post().to(categories::move_category))
            .route("/categories/{id}/products", web::get().to(categories::products))
            .route("/inventory/{sku}", web::put().to(catalog::set_inventory))
            .route("/search", web::get().to(search::search))
            .route("/search/suggest", web::get().to(search::suggest))
            .route(
                "/admin/events/replay",
                web::post().to(admin_events::replay_failed_events),
            ),
    )
    .service(
        web::scope("/internal/v1")
            .route("/reservations", web::post().to(cluster::remote_reserve))
            .route("/reservations/forget", web::post().to(cluster::remote_forget))
            .route("/reservations/settle", web::post().to(cluster::remote_settle))
            .route("/payments", web::post().to(cluster::remote_payment)),
    )
    .route("/health/live", web::get().to(ops::live))
    .route("/health/ready", web::get().to(ops::ready))
    .route("/health/cluster", web::get().to(cluster::health))
    .route("/metrics", web::get().to(ops::metrics))
    .route("/openapi.json", web::get().to(ops::openapi))
    .route("/dashboard", web::get().to(ops::dashboard))
    .default_service(web::to(ops::not_found));
}

/// The W3C trace context of a request: the caller's `traceparent`, or a new one.
#[derive(Debug, Clone)]
pub(crate) struct TraceParent(pub String);

/// The caller's `traceparent` header, when it is a well-formed W3C one.
fn caller_traceparent(req: &ServiceRequest) -> Option<String> {
    req.headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(str::to_owned)
}

/// Request span, trace context and RED metrics for every request. The route label is
/// the matched pattern (`/v1/orders/{id}`), so its cardinality is bounded.
pub(crate) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // A clone of a standard method is a copy, not an allocation.
    let method = req.method().clone();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let given = caller_traceparent(&req);
    // Without an exporter the request's context is the caller's or a new one; with
    // one, it is the request span's own (caller's trace id, this span's id), so the
    // request's events make their consumers children of this span.
    let exporting = crate::telemetry::traces::is_exporting();
    let incoming = match &given {
        None if !exporting => Some(new_traceparent()),
        other => other.clone(),
    };
    let span = tracing::info_span!(
        "http_request",
        method = method.as_str(),
        %route,
        traceparent = incoming.as_deref().unwrap_or(""),
        status = tracing::field::Empty,
        "otel.kind" = "server",
    );
    crate::telemetry::continue_trace(&span, given.as_deref());
    let traceparent = crate::telemetry::traceparent_of(&span)
        .or(incoming)
        .unwrap_or_else(new_traceparent);
    req.extensions_mut().insert(TraceParent(traceparent));
    let metrics = req.app_data::<web::Data<AppState>>().map(|s| s.metrics.clone());
    let response = tracing::Instrument::instrument(next.call(req), span.clone()).await?;
    span.record("status", response.status().as_u16());
    // The access log (DEBUG): in JSON logs it carries the request's trace and span ids.
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "request answered"
        )
    });
    if let Some(metrics) = metrics {
        let status = response.status();
        metrics
            .http_requests
            .with_label_values(&[&route, method.as_str(), status.as_str()])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[&route, method.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// Renders a stored millisecond time as RFC 3339.
pub(crate) fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
