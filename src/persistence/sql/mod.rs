//! The SQL store: one implementation for SQLite (the embedded default) and MySQL,
//! on sqlx's `Any` driver. Both dialects take the same `?`-placeholder SQL; the few
//! places where they differ go through [`Dialect`].
//!
//! The write path is [`SqlStore::commit`]: the group commit of many write-sets in one
//! transaction, one set-based statement per table ([`write_sets`]; docs/write-path.md).
//! The `inventory` table's CHECK (`0 <= reserved <= stock`) is a second line of
//! defence: if memory were ever wrong, the commit fails instead of storing an oversell.
//!
//! This file: connecting, migrations, the dialects, errors, the group commit. The rest,
//! one concern per file: [`write_sets`] (the commit's SQL), `orders.rs`, `inventory.rs`,
//! `outbox.rs` (relay, failed events, replay), `consumers.rs` (processed events, dead
//! letters), `refunds.rs`, `reconcile.rs`.

use super::{StoreError, WriteSet};
use crate::error::Cause;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row};
use std::time::Duration;

mod cluster;
mod consumers;
mod inventory;
mod orders;
mod outbox;
mod reconcile;
mod refunds;
mod write_sets;

pub(in crate::persistence) use outbox::insert_outbox;

pub(crate) use refunds::DueRefund;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");

/// Rows per multi-row INSERT: well under SQLite's and MySQL's placeholder limits.
pub(super) const ROWS_PER_INSERT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    MySql,
}

impl Dialect {
    pub(crate) fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Some(Self::MySql)
        } else {
            None
        }
    }
    /// An INSERT that skips rows whose key exists (instead of failing).
    fn insert_ignore(self) -> &'static str {
        match self {
            Self::Sqlite => "INSERT OR IGNORE",
            Self::MySql => "INSERT IGNORE",
        }
    }
    /// SUM() is DECIMAL on MySQL, which the Any driver cannot decode: cast to a 64-bit integer.
    fn int(self, expr: &str) -> String {
        match self {
            Self::Sqlite => format!("CAST({expr} AS INTEGER)"),
            Self::MySql => format!("CAST({expr} AS SIGNED)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// SQLite `PRAGMA synchronous`: "full" or "normal".
    pub sqlite_synchronous: String,
    /// MySQL/MariaDB, cluster mode: how long a transaction may wait for a row lock, and
    /// (MariaDB) how long one may sit idle before the server aborts it. A node frozen in
    /// the middle of a group commit (SIGSTOP, a paused VM) keeps its connection and its
    /// locks, which would block the node taking its shards over; the server ends that
    /// transaction after this long, and the frozen node's commit then fails. `None`: the
    /// server's defaults.
    pub lock_timeouts_secs: Option<u64>,
}

#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// Tasks waiting in [`Self::begin`] for a connection (`emporium_db_pool_waiters`).
    waiters: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict((db.message().to_owned()).into())
            }
            sqlx::Error::Database(db) => {
                // SQLite reports a locked or busy database as a database error: that is an outage, not a bad write.
                // A deadlock victim (MySQL 1213) or a lock wait timeout (1205) was rolled back
                // whole: nothing was written, and trying again is right.
                let msg = db.message().to_owned();
                if msg.contains("locked")
                    || msg.contains("busy")
                    || msg.contains("disk")
                    || msg.contains("readonly")
                    || is_lock_conflict(&msg)
                {
                    StoreError::Unavailable(msg.into())
                } else {
                    StoreError::Rejected(msg.into())
                }
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(Cause::new(err)),
            _ => StoreError::Unavailable(Cause::new(err)),
        }
    }
}

/// MySQL's words for a transaction it rolled back to break a lock conflict: a deadlock
/// victim or a lock wait timeout.
fn is_lock_conflict(message: &str) -> bool {
    message.contains("Deadlock found") || message.contains("Lock wait timeout")
}

/// The store rolled a transaction back whole to break a lock conflict (several nodes
/// commit to the same tables in cluster mode): nothing was written; retry at once.
pub(crate) fn lost_a_lock_conflict(err: &StoreError) -> bool {
    matches!(err, StoreError::Unavailable(cause) if is_lock_conflict(&cause.to_string()))
}

/// The store refused a write because an inventory snapshot would leave
/// `0 <= reserved <= stock` (MariaDB names the constraint, SQLite quotes it).
pub(crate) fn breaks_inventory_bounds(err: &StoreError) -> bool {
    let StoreError::Rejected(cause) = err else {
        return false;
    };
    let message = cause.to_string();
    message.contains("inventory_bounds") || message.contains("CHECK constraint failed: reserved")
}

/// A long text column: MySQL reports `LONGTEXT` as a BLOB through the Any driver, so
/// read bytes when a string is refused.
pub(super) fn text(row: &AnyRow, column: &str) -> Result<String, StoreError> {
    match row.try_get::<String, _>(column) {
        Ok(text) => Ok(text),
        Err(_) => String::from_utf8(row.try_get::<Vec<u8>, _>(column)?).map_err(corrupt),
    }
}

/// Stored data that does not read back: `what` says what and why.
pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(Cause::from(what.to_string()))
}

impl SqlStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            StoreError::Rejected((format!("store.url must start with sqlite: or mysql:, got {:?}", redact(url))).into())
        })?;
        let synchronous = match options.sqlite_synchronous.as_str() {
            "normal" => "NORMAL",
            _ => "FULL",
        };
        let lock_timeouts = options.lock_timeouts_secs;
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if dialect == Dialect::MySql {
                        // The lease clock is UNIX_TIMESTAMP(NOW(3)): in a session zone with
                        // daylight saving it steps back an hour in autumn. UTC never does.
                        conn.execute("SET time_zone = '+00:00'").await?;
                    }
                    if let (Dialect::MySql, Some(secs)) = (dialect, lock_timeouts) {
                        conn.execute(format!("SET SESSION innodb_lock_wait_timeout = {}", secs.max(1)).as_str())
                            .await?;
                        // MariaDB only; MySQL has no idle-transaction limit (it keeps the
                        // server's lock wait timeout as the bound).
                        let _ = conn
                            .execute(format!("SET SESSION idle_transaction_timeout = {}", secs.max(1)).as_str())
                            .await;
                    }
                    if dialect == Dialect::Sqlite {
                        // WAL lets readers run beside the group-commit writer; the busy timeout
                        // makes the few other writers wait instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                            .await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(Self {
            pool,
            dialect,
            waiters: Default::default(),
        })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::MySql => &MYSQL_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration failed: {e}").into()))
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Connections in use and idle, for the pool metrics.
    /// Tasks waiting for a connection to begin a transaction (group commits, row-lock
    /// orders, saga and admin writes); single-statement reads are not counted.
    pub(crate) fn pool_waiters(&self) -> i64 {
        self.waiters.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Begins a transaction, counted as a waiter until the pool hands a connection over.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        use std::sync::atomic::{AtomicI64, Ordering};
        // A guard, so a caller that gives up (timeout, dropped future) stops counting too.
        struct Waiting<'a>(&'a AtomicI64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiters);
        self.pool.begin().await
    }

    pub(crate) fn pool_usage(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// The group commit: every write-set in one transaction, or none of them.
    pub async fn commit(&self, sets: &[&WriteSet]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        self.write_sets(&mut tx, sets).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A store URL with its password hidden, for error messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
