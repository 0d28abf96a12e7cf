//! User accounts: sign-up, login, the owner's profile, and the dormancy sweep.
//!
//! The rules are in [`crate::domain::user`] (what a valid email, password and name are;
//! when an account is dormant), storage in [`crate::persistence::users`], hashing in
//! [`passwords`], bearer tokens in [`tokens`]. This file puts them in order, so each
//! HTTP handler is one call.
//!
//! A login's token is the runtime's own JWT with `sub` = the account id, so every route
//! that takes a user token (orders) works for accounts unchanged. Accounts never get the
//! admin role: admin tokens come from `emporium token --admin` only.

pub mod passwords;
pub mod tokens;

use crate::config::UserSettings;
use crate::domain::ids::UserId;
use crate::domain::user::{dormancy_cutoff, DisplayName, Email, InvalidField, Password};
use crate::domain::{now_millis, Millis};
use crate::error::Cause;
use crate::persistence::users::{Account, NewAccount};
use crate::persistence::{SqlStore, StoreError};
use passwords::{PasswordError, Passwords, Verdict};
use std::sync::Arc;
use tokens::Keys;

use tracing::{info, warn};

#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    #[error("{0}")]
    EmailTaken(String),
    /// Unknown email or wrong password: deliberately one error with one message.
    #[error("the email or the password is wrong")]
    WrongCredentials,
    #[error("no account for this token's subject")]
    NoAccount,
    #[error("{0}")]
    Unavailable(#[source] Cause),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(detail) => Self::EmailTaken(detail.to_string()),
            other => Self::Unavailable(Cause::new(other)),
        }
    }
}

impl From<PasswordError> for AccountError {
    fn from(e: PasswordError) -> Self {
        Self::Unavailable(Cause::new(e))
    }
}

/// A successful login.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub(crate) user_id: UserId,
    pub(crate) token: String,
}

pub(crate) struct Accounts {
    store: SqlStore,
    passwords: Passwords,
    keys: Arc<Keys>,
}

impl Accounts {
    pub fn new(store: SqlStore, keys: Arc<Keys>, settings: &UserSettings) -> Result<Self, PasswordError> {
        Ok(Self {
            store,
            passwords: Passwords::new(settings)?,
            keys,
        })
    }

    /// Creates an account. Fields are checked in the order of the form (email,
    /// password, name); the first invalid one is reported.
    pub(crate) async fn sign_up(&self, email: &str, password: &str, name: &str) -> Result<Account, AccountError> {
        let email = Email::parse(email)?;
        let password = Password::parse(password)?;
        let name = DisplayName::parse(name)?;
        let new = NewAccount {
            id: UserId::parse(uuid::Uuid::now_v7().to_string())
                .map_err(|e| AccountError::Unavailable(Cause::new(e)))?,
            password_hash: self.passwords.hash(&password).await?,
            email,
            name,
            created_at: now_millis(),
        };
        self.store.create_account(&new).await?;
        Ok(Account {
            id: new.id,
            email: new.email.to_string(),
            name: new.name.as_str().to_owned(),
            created_at: new.created_at,
            last_login_at: None,
            dormant_since: None,
        })
    }

    /// Checks the password and issues a token; the account becomes active (a dormant
    /// one wakes). An unknown email costs the same lookup and hash as a wrong password.
    pub(crate) async fn login(&self, email: &Email, password: &str) -> Result<Login, AccountError> {
        let credentials = self.store.credentials(email).await?;
        let verdict = self
            .passwords
            .verify(password, credentials.as_ref().map(|c| c.password_hash.as_str()))
            .await?;
        let (Verdict::Right { rehash }, Some(credentials)) = (verdict, credentials) else {
            return Err(AccountError::WrongCredentials);
        };
        let rehashed = if rehash {
            Some(self.passwords.rehash_verified(password).await?)
        } else {
            None
        };
        self.store
            .record_login(&credentials.id, now_millis(), rehashed.as_deref())
            .await?;
        let token = self
            .keys
            .issue(credentials.id.as_str(), false)
            .map_err(|e| AccountError::Unavailable(Cause::new(e)))?;
        Ok(Login {
            user_id: credentials.id,
            token,
        })
    }

    pub(crate) async fn profile(&self, id: &UserId) -> Result<Account, AccountError> {
        self.store.account(id).await?.ok_or(AccountError::NoAccount)
    }

    pub(crate) fn token_ttl_secs(&self) -> u64 {
        self.keys.ttl_secs()
    }
}

/// The dormancy job, once: marks every account idle for `dormant_after_days` at `now`.
/// Tests call it with a `now` in the future instead of waiting half a year.
pub async fn sweep_dormant(store: &SqlStore, now: Millis, dormant_after_days: u32) -> Result<u64, StoreError> {
    store.mark_dormant(dormancy_cutoff(now, dormant_after_days), now).await
}

/// Runs [`sweep_dormant`] at start and then every `dormancy_sweep_interval_secs`, for
/// as long as the runtime lives. A failed sweep is logged and tried again next time.
pub(crate) fn spawn_dormancy_sweeps(store: SqlStore, settings: &UserSettings) {
    let every = settings.dormancy_sweep_interval;
    let days = settings.dormant_after_days;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match sweep_dormant(&store, now_millis(), days).await {
                Ok(0) => {}
                Ok(marked) => info!(marked, dormant_after_days = days, "accounts marked dormant"),
                Err(e) => warn!(error = %e, "dormancy sweep failed; retrying at the next interval"),
            }
        }
    });
}
