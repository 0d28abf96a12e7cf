//! Cluster mode over HTTP: any node answers any request. A request about SKUs owned by
//! another node is forwarded there (the owner's advertised URL, from the membership
//! table) and its answer passed back unchanged; `GET /health/cluster` reports who owns
//! what. docs/cluster.md.
//!
//! Peer calls carry [`PEER_HEADER`] with the cluster's shared secret (`cluster.peer_secret`,
//! or one derived from the JWT secret) and a hop count. A node's view of the owners can
//! be a lease round behind, so a request that reaches a node that just handed its shard
//! on is forwarded again, at most [`MAX_HOPS`] times in all; after that (or when nobody
//! owns the shard right now) it is answered 503 + Retry-After. A request carrying a
//! wrong secret is refused (401): clients cannot pose as peers.

use super::problem::ApiError;
use super::AppState;
use crate::actors::cluster::{
    Owner, Ownership, PeerClient, RemotePayment, RemoteRefusal, RemoteReserve, RemoteReserved, RemoteSettle,
    RemoteSettled, PEER_HEADER,
};
use crate::actors::inventory::InventoryFailure;
use crate::domain::ids::Sku;
use crate::domain::inventory::InventoryError;
use crate::error::Cause;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

/// How many times a request was forwarded (a node's view of the owners can be a lease
/// round behind: the node a request was sent to may have just handed the shard on).
const HOPS_HEADER: &str = "emporium-hops";
/// Forwards one request may take before it is answered 503 + Retry-After.
const MAX_HOPS: u32 = 3;

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
pub(crate) enum Route {
    Here,
    /// At this peer's base URL.
    Peer(String),
}

/// The forwarding side of cluster mode: ownership, the peer secret and one pooled client
/// (the same [`PeerClient`] the order side uses for remote reservations).
pub(crate) struct Peers {
    peer: Arc<PeerClient>,
}

impl Peers {
    pub fn new(peer: Arc<PeerClient>) -> Self {
        Self { peer }
    }

    pub(crate) fn ownership(&self) -> &Arc<Ownership> {
        self.peer.ownership()
    }

    /// Whether `req` comes from a peer; a wrong secret is refused outright.
    fn is_peer_call(&self, req: &HttpRequest) -> Result<bool, ApiError> {
        let Some(given) = req.headers().get(PEER_HEADER) else {
            return Ok(false);
        };
        use sha2::Digest;
        // Compared as digests: equal length, no early exit on the first differing byte.
        let digest = |b: &[u8]| sha2::Sha256::digest(b);
        if digest(given.as_bytes()) == digest(self.peer.secret().as_bytes()) {
            Ok(true)
        } else {
            Err(ApiError::Unauthorized("invalid peer credentials".into()))
        }
    }

    /// Where a request about `sku` is served: here when this node owns it (always,
    /// outside cluster mode), at its owner otherwise. An order is routed by its smallest
    /// SKU: that SKU's owner places it (reserving at the other SKUs' owners) and runs its
    /// saga.
    pub(crate) async fn route(&self, req: &HttpRequest, sku: Option<&Sku>) -> Result<Route, ApiError> {
        if !self.ownership().enabled() {
            return Ok(Route::Here);
        }
        let hops = if self.is_peer_call(req)? { hops_of(req) } else { 0 };
        let Some(sku) = sku else {
            return Ok(Route::Here);
        };
        // Between a hand-over and the claim becoming known (up to two lease rounds),
        // nobody owns the shard as far as this node knows: wait for the next owner rather
        // than answer 503 at once.
        match self.ownership().await_owner(sku).await {
            Owner::Me => Ok(Route::Here),
            Owner::Peer(url) if hops < MAX_HOPS => Ok(Route::Peer(url)),
            // Moving on too long, or nobody owns it right now (an owner died and its lease
            // has not been claimed yet): the client retries shortly.
            _ => Err(ApiError::UnavailableFor(
                "this product's shard is changing owner; retry after Retry-After",
            )),
        }
    }

    /// Refuses a call to the peer-only API that does not carry the peer secret.
    pub(crate) fn require_peer(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.is_peer_call(req)? {
            Ok(())
        } else {
            Err(ApiError::NotFound("no such route".into()))
        }
    }

    /// Sends `req` (with `body`) to the peer at `base` and answers with its response.
    pub(crate) async fn forward(
        &self,
        state: &AppState,
        req: &HttpRequest,
        base: &str,
        body: Option<Vec<u8>>,
    ) -> Result<HttpResponse, ApiError> {
        let started = Instant::now();
        let url = format!("{}{}", base.trim_end_matches('/'), req.uri());
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
            .map_err(|e| ApiError::Unavailable(Cause::new(e)))?;
        // The owner may have handed the shard on meanwhile and forward once more: it
        // learns how many hops this request has made so far.
        let hops = if self.is_peer_call(req)? { hops_of(req) } else { 0 } + 1;
        let mut outgoing = self
            .peer
            .client()
            .request(method, url)
            .header(PEER_HEADER, self.peer.secret())
            .header(HOPS_HEADER, hops.to_string());
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
                    actix_web::http::StatusCode::from_u16(status).map_err(|e| ApiError::Unavailable(Cause::new(e)))?;
                let mut response = HttpResponse::build(status);
                for (name, value) in headers {
                    response.insert_header((name, value));
                }
                Ok(response.body(bytes))
            }
            Err(e) => {
                // The owner did not answer (it may just have died, or be paused): the
                // client retries, by then the shard has a live owner again. The request
                // may have reached it and committed: only a retry with the same
                // Idempotency-Key is answered once.
                metrics.cluster_forwarded.with_label_values(&["failed"]).inc();
                warn!(peer = %base, error = %e, "forwarding failed");
                Err(ApiError::UnavailableFor(
                    "the node owning this request did not answer; the outcome is unknown: retry with the same Idempotency-Key",
                ))
            }
        }
    }
}

/// The hop count a peer put on a forwarded request.
fn hops_of(req: &HttpRequest) -> u32 {
    req.headers()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_HOPS)
}

/// The owner of a request body's SKUs answers; the JSON is re-encoded from the parsed
/// body (the owner hashes the same parsed value for its Idempotency-Key check).
pub(crate) fn json_body<T: serde::Serialize>(body: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(body).map_err(|e| ApiError::Unavailable(Cause::new(e)))
}

/// Who owns what: this node, the live members and their share of the shards.
#[utoipa::path(get, path = "/health/cluster", tag = "health",
    responses((status = 200, description = "Cluster membership and shard ownership (outside cluster mode: one standalone node owning its one shard)")))]
pub(crate) async fn health(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    super::ops::introspection_allowed(&state, &req).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(state.peers.ownership().report()))
}

// ---- The peer-only API: orders that span owners (docs/cluster.md) ----

/// This node's fence for `sku`, or 503 when it does not own the SKU (any more).
fn own_fence(state: &AppState, sku: &Sku) -> Result<crate::domain::cluster::Fence, ApiError> {
    state
        .peers
        .ownership()
        .fence_of(sku)
        .ok_or(ApiError::UnavailableFor("this node no longer owns the SKU"))
}

fn refusal(reason: &str, requested: i64, available: i64) -> RemoteRefusal {
    RemoteRefusal {
        reason: reason.to_owned(),
        requested,
        available,
    }
}

/// Peer only: reserve on this node's SKU actor for an order another node places. The
/// reservation is tentative: the placing node commits its journal entry under this
/// node's fence, or tells this node to forget it. If neither is heard, this node asks
/// the store after a while (`Orders::resolve_remote_reservation`).
pub(crate) async fn remote_reserve(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RemoteReserve>,
) -> Result<HttpResponse, ApiError> {
    state.peers.require_peer(&req)?;
    let request = body.into_inner();
    // Taken before the decision: if the shard changes hands meanwhile, the epoch no
    // longer matches and the placing node's commit is refused.
    let fence = own_fence(&state, &request.sku)?;
    let reserved = state
        .inventory
        .reserve(&request.sku, request.order, request.qty, request.expires_at)
        .await;
    match reserved {
        Ok(reserved) => {
            if reserved.entry.is_some() {
                // Twice the request timeout: the placing node has given up on it by then.
                let after = 2 * state.settings.server.request_timeout;
                state
                    .orders
                    .resolve_remote_reservation(request.sku.clone(), request.order, after);
            }
            Ok(HttpResponse::Ok().json(RemoteReserved {
                entry: reserved.entry,
                unit_price: reserved.unit_price,
                fence,
            }))
        }
        Err(InventoryFailure::Rule(InventoryError::OutOfStock { requested, available })) => {
            Ok(HttpResponse::Conflict().json(refusal("out_of_stock", requested, available)))
        }
        Err(InventoryFailure::UnknownSku(_)) => Ok(HttpResponse::NotFound().json(refusal("unknown_sku", 0, 0))),
        Err(other) => Err(ApiError::Unavailable(Cause::new(other))),
    }
}

/// Peer only: the placing node will not commit this reservation.
pub(crate) async fn remote_forget(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RemoteSettle>,
) -> Result<HttpResponse, ApiError> {
    state.peers.require_peer(&req)?;
    state.inventory.forget(&body.sku, body.order).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}

/// Peer only: apply an order's recorded decision (read from the store: COMPLETED
/// confirms, CANCELLED releases) to its reservation on this node's SKU, made durable here
/// (under this node's fence, with its inventory event) before the answer. The saga's node
/// asks only after the decision is durable. 503 while the order has no decision yet or an
/// earlier application of it is not durable yet; repeated after that, it finds nothing to
/// do and answers 200.
pub(crate) async fn remote_settle(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RemoteSettle>,
) -> Result<HttpResponse, ApiError> {
    state.peers.require_peer(&req)?;
    let request = body.into_inner();
    let fence = own_fence(&state, &request.sku)?;
    let entry = state
        .orders
        .settle_for_peer(&request.sku, request.order, request.confirm)
        .await?;
    Ok(HttpResponse::Ok().json(RemoteSettled { entry, fence }))
}

/// Peer only: a payment outcome another node consumed for an order whose saga runs here
/// (`payment.mode = "kafka"`), applied with the consumed event's id as a local consumer
/// would. 503 tells the consumer to try again (not the owner, saga not running yet); 422
/// that the event cannot be applied (it is dead-lettered there).
pub(crate) async fn remote_payment(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RemotePayment>,
) -> Result<HttpResponse, ApiError> {
    use crate::events::consumer::ConsumeError;
    state.peers.require_peer(&req)?;
    let request = body.into_inner();
    if !state.peers.ownership().holds_sku(&request.sku) {
        return Err(ApiError::UnavailableFor("this node no longer owns the order"));
    }
    let outcome = match request.failure {
        None => Ok(()),
        Some(reason) => Err(reason),
    };
    match state
        .orders
        .payment_reported_here(request.order, outcome, request.consumed)
        .await
    {
        Ok(()) => Ok(HttpResponse::Ok().json(serde_json::json!({}))),
        Err(ConsumeError::Failed(reason)) => {
            Ok(HttpResponse::UnprocessableEntity().json(refusal(&reason.to_string(), 0, 0)))
        }
        Err(ConsumeError::Unavailable(cause)) => Err(ApiError::Unavailable(cause)),
    }
}
