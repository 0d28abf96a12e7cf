//! Every failure becomes an RFC 9457 `application/problem+json` response here, and
//! only here. The `type` values are part of the public contract (docs/design.md).
//!
//! A 503 never carries internal error text: [`ApiError::Unavailable`] holds the cause
//! (a store or broker error), which goes to the log under the request's trace, while the
//! client reads [`UNAVAILABLE_DETAIL`]. Where the reason is itself public (recovery,
//! shutdown, a timed-out confirmation) [`ApiError::UnavailableFor`] names it with a fixed
//! sentence.

use crate::error::Cause;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    OutOfStock(#[source] Cause),
    /// Malformed request (400) or well-formed but invalid content (422).
    #[error("{detail}")]
    Invalid {
        status: StatusCode,
        #[source]
        detail: Cause,
    },
    #[error("{0}")]
    NotFound(#[source] Cause),
    #[error("{0}")]
    Unauthorized(#[source] Cause),
    #[error("{0}")]
    Forbidden(#[source] Cause),
    #[error("{0}")]
    Conflict(#[source] Cause),
    #[error("{0}")]
    IdempotencyMismatch(#[source] Cause),
    /// Over a rate limit (429); the client may retry after `retry_after_secs`.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after_secs: u64 },
    /// A backend failed; the text is the internal cause, logged and never sent.
    #[error("{0}")]
    Unavailable(#[source] Cause),
    /// Unavailable for a reason the client may read (a fixed sentence).
    #[error("{0}")]
    UnavailableFor(&'static str),
    /// The route exists, the method does not (405 with `Allow`).
    #[error("{detail}")]
    MethodNotAllowed { detail: String, allow: Vec<&'static str> },
}

impl ApiError {
    pub(crate) fn bad_request(detail: impl Into<Cause>) -> Self {
        Self::Invalid {
            status: StatusCode::BAD_REQUEST,
            detail: detail.into(),
        }
    }
    pub(crate) fn unprocessable(detail: impl Into<Cause>) -> Self {
        Self::Invalid {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: detail.into(),
        }
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::OutOfStock(_) => ("/problems/out-of-stock", "Out of stock"),
            Self::Invalid { .. } => ("/problems/invalid-request", "Invalid request"),
            Self::NotFound(_) => ("/problems/not-found", "Not found"),
            Self::Unauthorized(_) => ("/problems/unauthorized", "Unauthorized"),
            Self::Forbidden(_) => ("/problems/forbidden", "Forbidden"),
            Self::Conflict(_) => ("/problems/conflict", "Conflict"),
            Self::IdempotencyMismatch(_) => (
                "/problems/idempotency-mismatch",
                "Idempotency key reused with another request",
            ),
            Self::RateLimited { .. } => ("/problems/rate-limited", "Too many requests"),
            Self::Unavailable(_) | Self::UnavailableFor(_) => ("/problems/unavailable", "Service unavailable"),
            Self::MethodNotAllowed { .. } => ("/problems/method-not-allowed", "Method not allowed"),
        }
    }

    /// The `detail` the client reads: the message itself, except for internal causes.
    fn public_detail(&self) -> String {
        match self {
            Self::Unavailable(_) => UNAVAILABLE_DETAIL.to_owned(),
            other => other.to_string(),
        }
    }
}

/// The `detail` of every 503 whose cause is internal.
pub const UNAVAILABLE_DETAIL: &str = "The service cannot complete this request right now. \
     Retry after the time given in Retry-After (an order with the same Idempotency-Key).";

/// The problem document (RFC 9457).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    pub(crate) problem_type: &'static str,
    pub(crate) title: &'static str,
    pub(crate) status: u16,
    pub(crate) detail: String,
}

/// Seconds a client should wait before retrying after a 503.
pub(crate) const RETRY_AFTER_SECS: u64 = 1;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::OutOfStock(_) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid { status, .. } => *status,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::IdempotencyMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::UnavailableFor(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (problem_type, title) = self.kind();
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        match self {
            Self::Unavailable(cause) => {
                // The cause stays here, in the log line of the request's span (trace id).
                tracing::warn!(cause = %crate::error::chain(cause), "answered 503");
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
            }
            Self::UnavailableFor(_) => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS.to_string()));
            }
            Self::RateLimited { retry_after_secs, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            Self::MethodNotAllowed { allow, .. } => {
                response.insert_header((header::ALLOW, allow.join(", ")));
            }
            _ => {}
        }
        response.body(
            serde_json::to_string(&Problem {
                problem_type,
                title,
                status: status.as_u16(),
                detail: self.public_detail(),
            })
            .unwrap_or_default(),
        )
    }
}

/// JSON body errors: syntax is 400, a well-formed body with wrong content is 422,
/// a body over the limit is 413 (all `/problems/invalid-request`).
pub(crate) fn json_error(err: actix_web::error::JsonPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match err {
        E::Deserialize(e) if e.classify() == serde_json::error::Category::Data => {
            ApiError::unprocessable(Cause::new(e))
        }
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => ApiError::Invalid {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: format!("request body is larger than {limit} bytes").into(),
        },
        E::ContentType => ApiError::Invalid {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            detail: "Content-Type must be application/json".into(),
        },
        other => ApiError::bad_request(Cause::new(other)),
    };
    api.into()
}

pub(crate) fn path_error(err: actix_web::error::PathError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::NotFound(Cause::new(err)).into()
}

pub(crate) fn query_error(err: actix_web::error::QueryPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::bad_request(Cause::new(err)).into()
}
