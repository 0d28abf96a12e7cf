//! Opening the store: the main pool, the lease keeper's own pool, the migrations.

use crate::config::Settings;
use crate::persistence::sql::StoreOptions;
use crate::persistence::SqlStore;
use anyhow::Context as _;
use std::time::Duration;
use tracing::warn;

pub async fn connect_store(settings: &Settings) -> anyhow::Result<SqlStore> {
    std::fs::create_dir_all(&settings.server.data_dir)
        .with_context(|| format!("cannot create data dir {}", settings.server.data_dir.display()))?;
    open_pool(settings, store_options(settings), "the store").await
}

fn store_options(settings: &Settings) -> StoreOptions {
    StoreOptions {
        max_connections: settings.store.max_connections,
        acquire_timeout: settings.store.acquire_timeout,
        sqlite_synchronous: settings.store.sqlite_synchronous.clone(),
        lock_timeouts_secs: settings
            .cluster
            .enabled
            .then(|| settings.cluster.lease_ttl.as_millis().div_ceil(1000) as u64),
    }
}

async fn open_pool(settings: &Settings, options: StoreOptions, what: &str) -> anyhow::Result<SqlStore> {
    let url = settings.store_url();
    SqlStore::connect(&url, &options)
        .await
        .with_context(|| format!("cannot open {what} at {}", crate::persistence::sql::redact(&url)))
}

/// The lease keeper's own small pool: its statements never queue behind the group
/// commit for a connection, and wait at most a second for a row lock (a frozen node's
/// transaction holds its lease rows until the server ends it; the claim is tried again
/// next round).
pub(super) async fn connect_keeper_store(settings: &Settings) -> anyhow::Result<SqlStore> {
    let options = StoreOptions {
        max_connections: 2,
        acquire_timeout: settings.cluster.lease_ttl / 3,
        lock_timeouts_secs: Some(1),
        ..store_options(settings)
    };
    open_pool(settings, options, "the lease keeper's pool").await
}

/// Runs the migrations, retrying a few times: nodes of a cluster starting together on a
/// fresh database race for the first migration, and the loser finds it applied.
pub(super) async fn migrate(store: &SqlStore) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 5 => {
                warn!(error = %e, attempt, "migration failed, retrying");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
