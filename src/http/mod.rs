//! The actix-web HTTP API: thin handlers (extract, call, map), one error type
//! ([`problem::ApiError`]), shared state in [`AppState`].

pub mod auth;
pub mod catalog;
pub mod categories;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod problem;

use crate::actors::inventory::Inventory;
use crate::actors::order::Orders;
use crate::actors::write_behind::WriteBehind;
use crate::config::Settings;
use crate::persistence::SqlStore;
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
pub struct Lifecycle {
    recovered: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn mark_recovered(&self) {
        self.recovered.store(true, Ordering::SeqCst);
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::SeqCst)
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: SqlStore,
    pub inventory: Inventory,
    pub orders: Orders,
    pub write_behind: WriteBehind,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub outbox: Arc<crate::actors::outbox::OutboxRelay>,
    /// Rate limits on order creation (`[limits]`).
    pub limits: limits::RateLimits,
    /// Products and categories.
    pub catalog: Arc<crate::catalog::CatalogService>,
}

impl AppState {
    /// Orders are taken only after recovery and before shutdown.
    pub fn accepting_orders(&self) -> Result<(), ApiError> {
        if !self.lifecycle.is_recovered() {
            return Err(ApiError::Unavailable("recovery is still running".into()));
        }
        if self.lifecycle.is_draining() {
            return Err(ApiError::Unavailable("the server is shutting down".into()));
        }
        Ok(())
    }
}

/// All routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
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
            .route("/inventory/{sku}", web::get().to(catalog::get_inventory))
            .route("/inventory/{sku}", web::put().to(catalog::set_inventory))
            .route("/orders", web::post().to(orders::create_order))
            .route("/orders", web::get().to(orders::list_orders))
            .route("/orders/{id}", web::get().to(orders::get_order))
            .route("/orders/{id}/cancel", web::post().to(orders::cancel_order)),
    )
    .route("/health/live", web::get().to(ops::live))
    .route("/health/ready", web::get().to(ops::ready))
    .route("/metrics", web::get().to(ops::metrics))
    .route("/openapi.json", web::get().to(ops::openapi))
    .route("/dashboard", web::get().to(ops::dashboard))
    .default_service(web::to(ops::not_found));
}

/// The W3C trace context of a request: the caller's `traceparent`, or a new one.
#[derive(Debug, Clone)]
pub struct TraceParent(pub String);

fn traceparent_of(req: &ServiceRequest) -> String {
    let given = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v));
    match given {
        Some(v) => v.to_owned(),
        None => {
            let trace = uuid::Uuid::new_v4().simple().to_string();
            let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
            format!("00-{trace}-{span}-01")
        }
    }
}

fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Request span, trace context and RED metrics for every request. The route label is
/// the matched pattern (`/v1/orders/{id}`), so its cardinality is bounded.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let traceparent = traceparent_of(&req);
    req.extensions_mut().insert(TraceParent(traceparent.clone()));
    let metrics = req.app_data::<web::Data<AppState>>().map(|s| s.metrics.clone());
    let span = tracing::info_span!("http_request", %method, %route, traceparent = %traceparent);
    let response = tracing::Instrument::instrument(next.call(req), span).await?;
    if let Some(metrics) = metrics {
        let status = response.status().as_u16().to_string();
        metrics
            .http_requests
            .with_label_values(&[&route, &method, &status])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[&route, &method])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// Renders a stored millisecond time as RFC 3339.
pub fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
