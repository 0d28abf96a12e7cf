//! User accounts in the SQL store (table `users`, migrations `0004_users.sql`).
//!
//! The same `?`-placeholder SQL runs on SQLite and MySQL. The rules live elsewhere:
//! emails arrive normalised ([`Email`]), the dormancy cutoff comes from
//! [`crate::domain::user::dormancy_cutoff`]; this file only stores and finds.

use super::{SqlStore, StoreError};
use crate::domain::ids::UserId;
use crate::domain::user::{DisplayName, Email};
use crate::domain::Millis;
use crate::error::Cause;
use sqlx::any::AnyRow;
use sqlx::{Any, QueryBuilder, Row};

/// Accounts marked per UPDATE by the dormancy sweep: short transactions, so the sweep
/// never holds many row locks against the logins it races with.
const SWEEP_BATCH: i64 = 1000;

/// A new account, its password already hashed.
#[derive(Debug, Clone)]
pub(crate) struct NewAccount {
    pub(crate) id: UserId,
    pub(crate) email: Email,
    pub(crate) name: DisplayName,
    pub(crate) password_hash: String,
    pub(crate) created_at: Millis,
}

/// An account as its owner sees it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub(crate) id: UserId,
    pub(crate) email: String,
    pub(crate) name: String,
    pub(crate) created_at: Millis,
    pub(crate) last_login_at: Option<Millis>,
    /// When the sweep marked it dormant; `None` while active.
    pub dormant_since: Option<Millis>,
}

/// What a login checks.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub id: UserId,
    pub password_hash: String,
}

fn account_from_row(row: &AnyRow) -> Result<Account, StoreError> {
    Ok(Account {
        id: UserId::parse(row.try_get::<String, _>("id")?).map_err(|e| StoreError::Corrupt(Cause::new(e)))?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        last_login_at: row.try_get("last_login_at")?,
        dormant_since: row.try_get("dormant_since")?,
    })
}

impl SqlStore {
    /// Stores a new account; [`StoreError::Conflict`] when the email already has one.
    pub(crate) async fn create_account(&self, account: &NewAccount) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, created_at, last_login_at, last_active_at, \
             dormant_since) VALUES (?, ?, ?, ?, ?, NULL, ?, NULL)",
        )
        .bind(account.id.to_string())
        .bind(account.email.as_str())
        .bind(account.name.as_str())
        .bind(account.password_hash.as_str())
        .bind(account.created_at)
        .bind(account.created_at)
        .execute(self.pool())
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("{} already has an account", account.email).into()),
            other => other,
        })?;
        Ok(())
    }

    pub async fn account(&self, id: &UserId) -> Result<Option<Account>, StoreError> {
        sqlx::query("SELECT id, email, name, created_at, last_login_at, dormant_since FROM users WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(account_from_row)
            .transpose()
    }

    pub async fn credentials(&self, email: &Email) -> Result<Option<Credentials>, StoreError> {
        let row = sqlx::query("SELECT id, password_hash FROM users WHERE email = ?")
            .bind(email.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(Credentials {
                id: UserId::parse(r.try_get::<String, _>("id")?).map_err(|e| StoreError::Corrupt(Cause::new(e)))?,
                password_hash: r.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    /// Records a successful login at `at`: the account is active again (a dormant one
    /// wakes) and, when given, the password hash is replaced by one with today's
    /// parameters.
    pub(crate) async fn record_login(&self, id: &UserId, at: Millis, rehashed: Option<&str>) -> Result<(), StoreError> {
        let mut q = QueryBuilder::<Any>::new("UPDATE users SET last_login_at = ");
        q.push_bind(at)
            .push(", last_active_at = ")
            .push_bind(at)
            .push(", dormant_since = NULL");
        if let Some(hash) = rehashed {
            q.push(", password_hash = ").push_bind(hash.to_owned());
        }
        q.push(" WHERE id = ").push_bind(id.to_string());
        q.build().execute(self.pool()).await?;
        Ok(())
    }

    /// Marks every awake account last active at or before `cutoff` as dormant since
    /// `at`; returns how many it marked. Each batch re-checks the condition in its
    /// UPDATE, so a login that lands between the SELECT and the UPDATE keeps its account
    /// awake.
    pub(crate) async fn mark_dormant(&self, cutoff: Millis, at: Millis) -> Result<u64, StoreError> {
        let mut marked = 0;
        loop {
            let ids: Vec<String> = sqlx::query(
                "SELECT id FROM users WHERE dormant_since IS NULL AND last_active_at <= ? \
                 ORDER BY last_active_at LIMIT ?",
            )
            .bind(cutoff)
            .bind(SWEEP_BATCH)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Ok(marked);
            }
            let mut q = QueryBuilder::<Any>::new("UPDATE users SET dormant_since = ");
            q.push_bind(at)
                .push(" WHERE dormant_since IS NULL AND last_active_at <= ")
                .push_bind(cutoff)
                .push(" AND id IN (");
            let mut list = q.separated(", ");
            for id in &ids {
                list.push_bind(id.clone());
            }
            q.push(")");
            marked += q.build().execute(self.pool()).await?.rows_affected();
            if (ids.len() as i64) < SWEEP_BATCH {
                return Ok(marked);
            }
        }
    }
}
