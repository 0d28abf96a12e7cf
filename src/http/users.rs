//! `/v1/users` and `/v1/auth/login`: sign-up, login, and the caller's own profile.
//!
//! Rate limits come first in each handler (`[limits]`), so a refused request costs no
//! password hash and changes nothing. The client address is the TCP peer, as for orders:
//! forwarding headers are not trusted.

use super::auth::Caller;
use super::problem::{ApiError, Problem};
use super::{rfc3339, AppState};
use crate::domain::user::Email;
use crate::error::Cause;
use crate::persistence::users::Account;
use crate::services::accounts::{AccountError, Accounts};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The account routes, inside the `/v1` scope.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/users", web::post().to(sign_up))
        .route("/users/me", web::get().to(me))
        .route("/auth/login", web::post().to(login));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignUp {
    /// Stored trimmed and lower-cased; one account per address.
    #[schema(example = "kim@example.com", format = Email, max_length = 254)]
    pub(crate) email: String,
    /// 12 to 128 characters, kept exactly as typed.
    #[schema(
        min_length = 12,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub(crate) password: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        example = "김민수",
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub(crate) name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginBody {
    // format email: an address sign-up would refuse cannot log in either (422), so
    // generated logins should be addresses.
    #[schema(
        format = Email,
        min_length = 1,
        max_length = 254,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub(crate) email: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub(crate) password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenView {
    /// A bearer JWT: `sub` is the account id.
    pub(crate) token: String,
    /// Always `Bearer`.
    pub(crate) token_type: &'static str,
    /// Seconds until the token expires.
    pub(crate) expires_in: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProfileView {
    /// The account id: the `sub` of its tokens and the `user_id` of its orders.
    pub(crate) id: String,
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) created_at: String,
    /// `null` until the first login.
    pub(crate) last_login_at: Option<String>,
    /// No login for `users.dormant_after_days`; the next login wakes the account.
    pub(crate) dormant: bool,
    pub(crate) dormant_since: Option<String>,
}

impl From<&Account> for ProfileView {
    fn from(a: &Account) -> Self {
        Self {
            id: a.id.to_string(),
            email: a.email.clone(),
            name: a.name.clone(),
            created_at: rfc3339(a.created_at),
            last_login_at: a.last_login_at.map(rfc3339),
            dormant: a.dormant_since.is_some(),
            dormant_since: a.dormant_since.map(rfc3339),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        match e {
            AccountError::Invalid(_) => ApiError::unprocessable(Cause::new(e)),
            AccountError::EmailTaken(_) => ApiError::Conflict(Cause::new(e)),
            AccountError::WrongCredentials => ApiError::Unauthorized(Cause::new(e)),
            AccountError::NoAccount => ApiError::NotFound(Cause::new(e)),
            AccountError::Unavailable(_) => ApiError::Unavailable(Cause::new(e)),
        }
    }
}

/// Sign up with email, password and name.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = SignUp,
    responses(
        (status = 201, body = ProfileView, description = "Account created; log in for a token"),
        (status = 400, body = Problem),
        (status = 409, body = Problem, description = "The email already has an account"),
        (status = 422, body = Problem, description = "Invalid email, password or name (the detail names the field)"),
        (status = 429, body = Problem, description = "Too many sign-ups from this address; retry after Retry-After")))]
pub(crate) async fn sign_up(
    state: web::Data<AppState>,
    accounts: web::Data<Accounts>,
    req: HttpRequest,
    body: web::Json<SignUp>,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_signup(req.peer_addr().map(|a| a.ip()))?;
    let account = accounts.sign_up(&body.email, &body.password, &body.name).await?;
    Ok(HttpResponse::Created()
        .insert_header((actix_web::http::header::LOCATION, "/v1/users/me"))
        .json(ProfileView::from(&account)))
}

/// Log in: a bearer token for the account. An unknown email and a wrong password get
/// the same 401, after the same work.
#[utoipa::path(post, path = "/v1/auth/login", tag = "users", request_body = LoginBody,
    responses(
        (status = 200, body = TokenView),
        (status = 400, body = Problem),
        (status = 401, body = Problem, description = "Unknown email or wrong password (one answer for both)"),
        (status = 422, body = Problem, description = "Not an email address"),
        (status = 429, body = Problem, description = "Too many logins from this address or for this account; retry after Retry-After")))]
pub(crate) async fn login(
    state: web::Data<AppState>,
    accounts: web::Data<Accounts>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    state.limits.check_login_ip(peer)?;
    // A malformed address names no account: saying so reveals nothing about accounts.
    let email = Email::parse(&body.email).map_err(AccountError::from)?;
    state.limits.check_login_email(email.as_str())?;
    match accounts.login(&email, &body.password).await {
        Ok(login) => {
            tracing::info!(user = %login.user_id, "login");
            Ok(HttpResponse::Ok().json(TokenView {
                token: login.token,
                token_type: "Bearer",
                expires_in: accounts.token_ttl_secs(),
            }))
        }
        Err(e) => {
            if matches!(e, AccountError::WrongCredentials) {
                // No email in the log (personal data); the peer is enough to spot a guessing run.
                tracing::info!(peer = ?peer, "login refused: wrong email or password");
            }
            Err(e.into())
        }
    }
}

/// The caller's own account, with its last login and dormancy.
#[utoipa::path(get, path = "/v1/users/me", tag = "users",
    responses(
        (status = 200, body = ProfileView),
        (status = 401, body = Problem),
        (status = 404, body = Problem, description = "The token's subject has no account (e.g. a token from `emporium token`)")),
    security(("bearer" = [])))]
pub(crate) async fn me(accounts: web::Data<Accounts>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let account = accounts.profile(&caller.user).await?;
    Ok(HttpResponse::Ok().json(ProfileView::from(&account)))
}
