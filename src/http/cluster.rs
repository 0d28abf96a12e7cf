//! Cluster mode over HTTP: any node answers any request. A request about SKUs owned by
//! another node is forwarded there (the owner's advertised URL, from the membership
//! table) and its answer passed back unchanged; `GET /health/cluster` reports who owns
//! what. docs/cluster.md.
//!
//! Peer calls carry [`PEER_HEADER`] with the cluster's shared secret (`cluster.peer_secret`,
//! or one derived from the JWT secret). A request that carries it is never forwarded
//! again: if its SKUs moved on meanwhile, it is answered 503 + Retry-After. A request
//! carrying a wrong secret is refused (401): clients cannot pose as peers.

use super::problem::ApiError;
use super::AppState;
use crate::actors::cluster::{Owner, Ownership};
use crate::domain::ids::Sku;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The header a forwarding node adds: the cluster's peer secret.
pub const PEER_HEADER: &str = "emporium-peer";

/// Request headers passed on to the owner (everything the handlers read).
const PASSED_ON: [&str; 6] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "accept",
];
/// Response headers passed back to the client.
const PASSED_BACK: [&str; 3] = ["content-type", "location", "retry-after"];

/// Where a request is served.
pub enum Route {
    Here,
    /// At this peer's base URL.
    Peer(String),
}

/// The forwarding side of cluster mode: ownership, the peer secret and one pooled client.
pub struct Peers {
    ownership: Arc<Ownership>,
    secret: String,
    client: reqwest::Client,
}

impl Peers {
    pub fn new(ownership: Arc<Ownership>, secret: String, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self {
            ownership,
            secret,
            client,
        }
    }

    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Whether `req` comes from a peer; a wrong secret is refused outright.
    fn is_peer_call(&self, req: &HttpRequest) -> Result<bool, ApiError> {
        let Some(given) = req.headers().get(PEER_HEADER) else {
            return Ok(false);
        };
        use sha2::Digest;
        // Compared as digests: equal length, no early exit on the first differing byte.
        let digest = |b: &[u8]| sha2::Sha256::digest(b);
        if digest(given.as_bytes()) == digest(self.secret.as_bytes()) {
            Ok(true)
        } else {
            Err(ApiError::Unauthorized("invalid peer credentials".into()))
        }
    }

    /// Where a request about `skus` is served: here when this node owns them (always,
    /// outside cluster mode), at their owner otherwise. Every SKU of one request must
    /// have the same owner (see docs/cluster.md, "Limits").
    pub fn route<'a>(&self, req: &HttpRequest, skus: impl IntoIterator<Item = &'a Sku>) -> Result<Route, ApiError> {
        if !self.ownership.enabled() {
            return Ok(Route::Here);
        }
        let from_peer = self.is_peer_call(req)?;
        let mut owner = None;
        for sku in skus {
            let this = self.ownership.owner_of(sku);
            match &owner {
                None => owner = Some(this),
                Some(first) if *first != this => return Err(ApiError::SpansOwners),
                Some(_) => {}
            }
        }
        match owner {
            None | Some(Owner::Me) => Ok(Route::Here),
            Some(Owner::Peer(url)) if !from_peer => Ok(Route::Peer(url)),
            // Forwarded here but moved on meanwhile, or nobody owns it right now (an owner
            // died and its lease has not been claimed yet): the client retries shortly.
            _ => Err(ApiError::UnavailableFor(
                "this product's shard is changing owner; retry after Retry-After",
            )),
        }
    }

    /// Sends `req` (with `body`) to the peer at `base` and answers with its response.
    pub async fn forward(
        &self,
        state: &AppState,
        req: &HttpRequest,
        base: &str,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ApiError> {
        let started = Instant::now();
        let url = format!("{}{}", base.trim_end_matches('/'), req.uri());
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut outgoing = self.client.request(method, url).header(PEER_HEADER, &self.secret);
        for name in PASSED_ON {
            if let Some(value) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                outgoing = outgoing.header(name, value);
            }
        }
        if let Some(body) = body {
            outgoing = outgoing.body(body);
        }
        let result = async {
            let answer = outgoing.send().await?;
            let status = answer.status().as_u16();
            let headers: Vec<(&'static str, String)> = PASSED_BACK
                .iter()
                .filter_map(|name| {
                    let value = answer.headers().get(*name)?.to_str().ok()?;
                    Some((*name, value.to_owned()))
                })
                .collect();
            let bytes = answer.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, bytes))
        }
        .await;
        let metrics = &state.metrics;
        metrics
            .cluster_forward_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((status, headers, bytes)) => {
                metrics.cluster_forwarded.with_label_values(&["ok"]).inc();
                let status =
                    actix_web::http::StatusCode::from_u16(status).map_err(|e| ApiError::Unavailable(e.to_string()))?;
                let mut response = HttpResponse::build(status);
                for (name, value) in headers {
                    response.insert_header((name, value));
                }
                Ok(response.body(bytes))
            }
            Err(e) => {
                // The owner did not answer (it may just have died): the client retries,
                // by then the shard has a live owner again. A request that reached it and
                // was lost on the way back is the same as a 503 on a single node: retried
                // with its Idempotency-Key, it is answered once.
                metrics.cluster_forwarded.with_label_values(&["failed"]).inc();
                Err(ApiError::Unavailable(format!("forwarding to {base}: {e}")))
            }
        }
    }
}

/// The owner of a request body's SKUs answers; the JSON is re-encoded from the parsed
/// body (the owner hashes the same parsed value for its Idempotency-Key check).
pub fn json_body<T: serde::Serialize>(body: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(body).map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// Who owns what: this node, the live members and their share of the shards.
#[utoipa::path(get, path = "/health/cluster", tag = "health",
    responses((status = 200, description = "Cluster membership and shard ownership"),
        (status = 404, body = super::problem::Problem, description = "Cluster mode is off")))]
pub async fn health(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    super::ops::introspection_allowed(&state, &req).await?;
    let ownership = state.peers.ownership();
    if !ownership.enabled() {
        return Err(ApiError::NotFound("cluster mode is off".into()));
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(ownership.report()))
}
