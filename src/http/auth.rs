//! Extractors for the caller: [`Caller`] needs a valid bearer token, [`Admin`] one with
//! the `admin` role. Handlers take them as arguments; there is no other auth check.

use super::problem::ApiError;
use crate::domain::ids::UserId;
use crate::services::accounts::tokens::Keys;
use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use std::future::{ready, Ready};

#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) user: UserId,
    pub(crate) admin: bool,
}

impl Caller {
    /// Whether this caller may see something owned by `owner`.
    pub(crate) fn may_see(&self, owner: &UserId) -> bool {
        self.admin || &self.user == owner
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let keys = req
        .app_data::<web::Data<Keys>>()
        .ok_or(ApiError::UnavailableFor("authentication is not configured"))?;
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthorized("Authorization must be 'Bearer <token>'".into()))?;
    let claims = keys
        .verify(token.trim())
        .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}").into()))?;
    let user = UserId::parse(claims.sub.as_str())
        .map_err(|e| ApiError::Unauthorized(format!("invalid token subject: {e}").into()))?;
    Ok(Caller {
        user,
        admin: claims.is_admin(),
    })
}

#[derive(Debug, Clone)]
pub(crate) struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(authenticate(req).and_then(|caller| {
            if caller.admin {
                Ok(Admin)
            } else {
                Err(ApiError::Forbidden("this route needs the admin role".into()))
            }
        }))
    }
}
