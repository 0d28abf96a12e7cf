//! `POST /v1/admin/events/replay`: the admin endpoint twin of `emporium replay`. Events
//! in `failed_events` (given up on by the outbox relay, or dead-lettered by a consumer)
//! go back into the outbox with their original ids, and the relay publishes them to
//! their topics again; consumers that did apply one skip it (`processed_events`).
//! Dead letters that are not events at all stay in `failed_events` for inspection.

use super::auth::Admin;
use super::problem::ApiError;
use super::AppState;
use crate::error::Cause;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Replayed {
    /// How many failed events were put back into the outbox.
    pub(crate) replayed: usize,
}

/// Re-publish every failed event (admin).
#[utoipa::path(post, path = "/v1/admin/events/replay", tag = "admin",
    responses((status = 200, body = Replayed), (status = 401, body = super::problem::Problem),
        (status = 403, body = super::problem::Problem), (status = 503, body = super::problem::Problem)),
    security(("bearer" = [])))]
pub(crate) async fn replay_failed_events(state: web::Data<AppState>, _admin: Admin) -> Result<HttpResponse, ApiError> {
    let replayed = state
        .store
        .replay_failed()
        .await
        .map_err(|e| ApiError::Unavailable(Cause::new(e)))?;
    Ok(HttpResponse::Ok().json(Replayed { replayed }))
}
