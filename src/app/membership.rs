//! Cluster mode's wiring: the settings it refuses, what follows shard ownership in
//! memory (SKU actors and sagas), and joining the cluster (advertising this node,
//! starting its lease keeper).

use super::store::connect_keeper_store;
use super::App;
use crate::actors::cluster::{LeaseKeeper, Ownership, ShardHolders};
use crate::actors::inventory::Inventory;
use crate::actors::order::Orders;
use crate::actors::write_behind::WriteBehind;
use crate::config::{InventoryStrategy, Settings};
use crate::domain::cluster::Shard;
use crate::telemetry::Metrics;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Cluster mode's refusals, checked before anything starts: what cluster mode cannot
/// run with is named, instead of a cluster that quietly misbehaves.
pub(super) fn check_cluster_settings(settings: &Settings) -> anyhow::Result<()> {
    let cluster = &settings.cluster;
    if !cluster.enabled {
        return Ok(());
    }
    let store = settings.store_url();
    anyhow::ensure!(
        crate::persistence::sql::Dialect::of_url(&store) == Some(crate::persistence::sql::Dialect::MySql),
        "cluster.enabled = true needs a MySQL/MariaDB store (store.url = mysql://...): the nodes share \
         the store's lease table; the SQLite file of one node cannot be shared"
    );
    anyhow::ensure!(
        settings.inventory.strategy == InventoryStrategy::Actor,
        "cluster.enabled = true needs inventory.strategy = \"actor\""
    );
    anyhow::ensure!(
        !settings.auth.jwt_secret.is_empty() || settings.auth.jwt_secret_file.is_some(),
        "cluster.enabled = true needs auth.jwt_secret or auth.jwt_secret_file: every node must accept the same tokens"
    );
    anyhow::ensure!(cluster.shards >= 1, "cluster.shards must be at least 1");
    Ok(())
}

/// What follows shard ownership in memory: the SKU actors and the sagas.
pub(super) struct Holders {
    inventory: Inventory,
    orders: Orders,
    write_behind: WriteBehind,
    ownership: Arc<Ownership>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl ShardHolders for Holders {
    async fn lost(&self, shards: &[Shard]) {
        if shards.is_empty() {
            return;
        }
        let ownership = self.ownership.clone();
        self.inventory
            .relinquish(|sku| shards.contains(&ownership.shard_of(sku)));
        self.orders.relinquish(shards);
    }

    async fn settle_writes(&self, within: Duration) {
        self.write_behind.drain(within).await;
    }

    async fn gained(&self, shards: &[Shard]) {
        // The dead or departed owner's in-flight orders resume here; retried until the
        // store answers, since nothing else would resume them. On a task of its own: the
        // lease keeper must go on renewing meanwhile.
        let (orders, metrics, shards) = (self.orders.clone(), self.metrics.clone(), shards.to_vec());
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match orders.recover_shards(&shards).await {
                    Ok(report) => {
                        // The claimed SKUs' reservations whose order was decided while
                        // their previous owner could not apply it.
                        if let Err(e) = orders.sweep_decided().await {
                            warn!(error = %e, "cannot sweep the claimed shards' decided reservations yet");
                        }
                        metrics
                            .actor_restarts
                            .with_label_values(&["order"])
                            .inc_by(report.resumed as u64);
                        if report.resumed + report.expired > 0 {
                            info!(
                                resumed = report.resumed,
                                expired = report.expired,
                                "took over in-flight orders"
                            );
                        }
                        return;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot resume the orders of claimed shards yet");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
    }
}

impl App {
    pub(super) fn holders(&self) -> Holders {
        Holders {
            inventory: self.inventory.clone(),
            orders: self.orders.clone(),
            write_behind: self.write_behind.clone(),
            ownership: self.ownership.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Cluster mode: advertises this node and starts keeping its leases.
    pub(super) async fn join_cluster(&self, addr: SocketAddr) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        if !self.ownership.enabled() {
            return Ok(None);
        }
        let settings = &self.settings.cluster;
        let url = match &settings.advertise_url {
            Some(url) => url.clone(),
            None => {
                // Peers cannot reach "0.0.0.0": the address to give them must be said.
                anyhow::ensure!(
                    !addr.ip().is_unspecified(),
                    "cluster mode listening on {addr} needs cluster.advertise_url (how the other nodes reach this one)"
                );
                format!("http://{addr}")
            }
        };
        info!(node = self.ownership.node_id(), %url, shards = settings.shards, "joining the cluster");
        self.ownership.advertise(url);
        let keeper = LeaseKeeper::start(
            connect_keeper_store(&self.settings).await?,
            settings,
            self.ownership.clone(),
            Arc::new(self.holders()),
            self.metrics.clone(),
        )
        .await
        .context("cannot join the cluster (lease table)")?;
        Ok(Some(keeper))
    }
}
