//! Wiring: builds every part from [`Settings`] once, runs the HTTP server, recovers,
//! and shuts down gracefully.
//!
//! Start-up: store (migrated) → write-behind → arbiters (one per core) → inventory
//! registry → payment actor → order directory → outbox relay → HTTP server (ready = 503)
//! → saga recovery → ready. Shutdown on SIGTERM/SIGINT: readiness and new orders turn
//! 503, in-flight requests finish, the write-behind queue and the outbox are flushed.

pub mod gateway;
mod membership;
pub mod payment_service;
pub mod seed;
mod store;

use actix::{Actor, Arbiter};
use membership::check_cluster_settings;
pub use store::connect_store;
use store::migrate;

use crate::actors::cluster::{self, Ownership, PeerClient};
use crate::actors::inventory::{Inventory, InventoryOptions};
use crate::actors::order::{OrderServices, Orders, SagaOptions};
use crate::actors::payment::PaymentActor;
use crate::actors::refunds::{RefundOptions, Refunder};
use crate::actors::write_behind::WriteBehind;
use crate::config::{BusKind, PaymentMode, Settings};
use crate::domain::order::OrderLimits;
use crate::events::consumer::{self, ConsumerSpec};
use crate::events::kafka::KafkaBus;
use crate::events::outbox::OutboxRelay;
use crate::events::payment_outcomes::{self, PaymentOutcomes};
use crate::events::{EventBus, InProcessBus};
use crate::http::{self, AppState, Lifecycle};
use crate::persistence::SqlStore;
use crate::services::accounts::tokens::Keys;
use crate::services::accounts::Accounts;
use crate::telemetry::Metrics;
use actix_web::dev::ServerHandle;
use actix_web::{web, HttpServer};
use anyhow::Context as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Every long-lived part of a running Emporium.
#[derive(Clone)]
pub struct App {
    pub settings: Arc<Settings>,
    pub store: SqlStore,
    pub inventory: Inventory,
    pub orders: Orders,
    pub write_behind: WriteBehind,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub bus: InProcessBus,
    pub keys: Arc<Keys>,
    pub(crate) relay: Arc<OutboxRelay>,
    pub(crate) accounts: Arc<Accounts>,
    pub search: Arc<dyn crate::search::SearchIndex>,
    /// Set to true to stop the Kafka consumers (shutdown).
    pub(crate) consumers: Arc<tokio::sync::watch::Sender<bool>>,
    /// Products and categories (embedded or MongoDB, from `catalog.url`).
    pub(crate) catalog: Arc<crate::services::catalog::CatalogService>,
    /// Which shards this node owns (everything, outside cluster mode).
    pub ownership: Arc<Ownership>,
    /// Cluster mode: calls to the other nodes.
    pub(crate) peers: Arc<PeerClient>,
}

/// The bus the outbox relays to, chosen by `bus.kind`.
fn event_bus(settings: &Settings, embedded: &InProcessBus) -> anyhow::Result<Arc<dyn EventBus>> {
    match settings.bus.kind {
        BusKind::Embedded => Ok(Arc::new(embedded.clone())),
        BusKind::Kafka => {
            anyhow::ensure!(
                !settings.bus.brokers.is_empty(),
                "bus.kind = \"kafka\" needs bus.brokers"
            );
            KafkaBus::ensure_topics_in_background(&settings.bus);
            Ok(Arc::new(
                KafkaBus::new(&settings.bus).context("cannot create the kafka producer")?,
            ))
        }
    }
}

fn cores(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

impl App {
    /// Builds every part. Must run inside an actix `System` (the actors need arbiters).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        settings.validate().context("invalid configuration")?;
        let strategy = settings.inventory.strategy;
        let external_payment = settings.payment.mode == PaymentMode::Kafka;
        anyhow::ensure!(
            !external_payment || settings.bus.kind == BusKind::Kafka,
            "payment.mode = \"kafka\" needs bus.kind = \"kafka\""
        );

        check_cluster_settings(&settings)?;
        let ownership = if settings.cluster.enabled {
            let node_id = settings
                .cluster
                .node_id
                .clone()
                .unwrap_or_else(cluster::default_node_id);
            Ownership::clustered(node_id, settings.cluster.shards, settings.cluster.lease_ttl)
        } else {
            Ownership::single()
        };
        let store = connect_store(&settings).await?;
        if settings.store.migrate_on_start {
            migrate(&store).await?;
        }
        let catalog = Arc::new(
            crate::services::catalog::CatalogService::open(&settings, store.clone())
                .await
                .context("cannot open the catalog (catalog.url)")?,
        );
        catalog.spawn_catch_up(settings.catalog.catch_up_interval);
        let keys = Arc::new(Keys::load(&settings)?);
        let peer_secret = if settings.cluster.peer_secret.is_empty() {
            keys.derived_peer_secret().to_owned()
        } else {
            settings.cluster.peer_secret.expose().to_owned()
        };
        // At least the owner's own request timeout, plus a second for the way back: a
        // forwarder that gave up earlier would answer 503 for an order the owner still
        // commits (its placement runs on, detached from the request).
        let peer_timeout = settings.server.request_timeout + Duration::from_secs(1);
        let peers = PeerClient::new(ownership.clone(), peer_secret, peer_timeout);
        let accounts = Arc::new(Accounts::new(store.clone(), keys.clone(), &settings.users)?);
        let metrics = Arc::new(Metrics::with_recording(settings.telemetry.metrics)?);
        let committed = Arc::new(tokio::sync::Notify::new());
        let (write_behind, _) = WriteBehind::start(
            store.clone(),
            &settings.write_behind,
            metrics.clone(),
            committed.clone(),
            ownership.clone(),
        );

        let arbiters: Arc<Vec<_>> = Arc::new(
            (0..cores(settings.inventory.shards))
                .map(|_| Arbiter::new().handle())
                .collect(),
        );
        let inventory = Inventory::new(
            store.clone(),
            write_behind.clone(),
            metrics.clone(),
            arbiters.clone(),
            InventoryOptions {
                idle_timeout: settings.inventory.idle_passivate,
                mailbox_capacity: settings.inventory.mailbox_capacity,
                strategy,
                max_live_actors: settings.inventory.max_live_actors,
            },
            ownership.clone(),
        );
        let attempt_timeout = settings.payment.attempt_timeout;
        let latency = settings.payment.gateway_latency;
        let slow = settings.payment.slow;
        let mut simulated = PaymentActor::new(latency, attempt_timeout, slow);
        if let Some(url) = &settings.payment.gateway_url {
            simulated = simulated
                .with_remote(url, attempt_timeout)
                .context("payment.gateway_url: cannot build its HTTP client")?;
        }
        let payment = PaymentActor::start_in_arbiter(&arbiters[0], move |_| simulated);
        let refunder = Refunder::new(
            store.clone(),
            payment.clone(),
            RefundOptions {
                attempts: settings.payment.refund_attempts,
                backoff_base: settings.payment.refund_backoff_base,
                call_timeout: attempt_timeout,
                poll: settings.outbox.poll_interval.max(Duration::from_millis(100)),
            },
            metrics.clone(),
            committed.clone(),
            ownership.clone(),
        );
        refunder.run_in_background();
        let orders = Orders::new(
            OrderServices {
                inventory: inventory.clone(),
                write_behind: write_behind.clone(),
                store: store.clone(),
                payment,
                metrics: metrics.clone(),
                arbiters,
                refunder,
                peers: peers.clone(),
            },
            SagaOptions {
                payment_attempts: settings.payment.attempts,
                attempt_timeout,
                backoff_base: settings.payment.backoff_base,
                reservation_ttl: settings.inventory.reservation_ttl,
                limits: OrderLimits {
                    max_items: settings.orders.max_items,
                    max_qty_per_item: settings.orders.max_qty_per_item,
                },
                external_payment,
                shared_gateway: settings.payment.gateway_url.is_some(),
            },
        );
        // Cluster mode: every lease round, the decisions recorded for orders whose other
        // SKUs are this node's are applied to reservations nobody settled (docs/cluster.md).
        orders.sweep_in_background(settings.cluster.lease_ttl / 3);
        let bus = InProcessBus::default();
        // Search: the indexer follows product events on the in-process bus; in Kafka mode
        // the relay also copies acknowledged product events there (search/feed.rs).
        let search = crate::search::open(&settings)
            .await
            .context("cannot open the search index")?;
        crate::search::indexer::start(search.clone(), bus.subscribe());
        let relayed = event_bus(&settings, &bus)?;
        let relayed: Arc<dyn EventBus> = if settings.bus.kind == BusKind::Embedded {
            relayed
        } else {
            Arc::new(crate::search::feed::LocalCopy {
                inner: relayed,
                local: bus.clone(),
            })
        };
        let relay = Arc::new(
            OutboxRelay::new(store.clone(), relayed, settings.outbox.clone(), metrics.clone())
                .in_cluster(ownership.clone()),
        );
        relay.relay_in_background(committed);
        Ok(Self {
            settings: Arc::new(settings),
            store,
            inventory,
            orders,
            write_behind,
            metrics,
            lifecycle: Arc::new(Lifecycle::default()),
            bus,
            keys,
            relay,
            accounts,
            search,
            // No receiver until a consumer starts: `stop_all` then has nothing to wait for.
            consumers: Arc::new(tokio::sync::watch::channel(false).0),
            catalog,
            ownership,
            peers,
        })
    }

    /// Starts Emporium's Kafka consumers (after recovery, so every in-flight saga is
    /// running when its payment outcome arrives): with `payment.mode = "kafka"`, the
    /// saga's consumer of `emporium.payments`.
    fn start_consumers(&self) {
        if self.settings.payment.mode != PaymentMode::Kafka {
            return;
        }
        let spec = ConsumerSpec {
            name: payment_outcomes::CONSUMER.into(),
            group_id: self.settings.consumer.group_id.clone(),
            topics: vec!["emporium.payments"],
        };
        let handler = Arc::new(PaymentOutcomes {
            orders: self.orders.clone(),
        });
        tokio::spawn(consumer::run(
            self.settings.bus.clone(),
            self.settings.consumer.clone(),
            spec,
            self.store.clone(),
            handler,
            self.metrics.clone(),
            self.consumers.subscribe(),
        ));
    }

    /// Binds the listener, starts serving and recovery, and returns at once.
    pub async fn start(self) -> anyhow::Result<Running> {
        let listener = TcpListener::bind(&self.settings.server.listen)
            .with_context(|| format!("cannot listen on {}", self.settings.server.listen))?;
        let addr = listener.local_addr()?;
        let keeper = self.join_cluster(addr).await?;
        let peers = Arc::new(http::cluster::Peers::new(self.peers.clone()));
        let state = web::Data::new(AppState {
            settings: self.settings.clone(),
            store: self.store.clone(),
            inventory: self.inventory.clone(),
            orders: self.orders.clone(),
            write_behind: self.write_behind.clone(),
            metrics: self.metrics.clone(),
            lifecycle: self.lifecycle.clone(),
            outbox: self.relay.clone(),
            limits: http::limits::RateLimits::new(&self.settings.limits),
            search: self.search.clone(),
            catalog: self.catalog.clone(),
            peers,
        });
        let keys = web::Data::from(self.keys.clone());
        let accounts = web::Data::from(self.accounts.clone());
        crate::services::accounts::spawn_dormancy_sweeps(self.store.clone(), &self.settings.users);
        let body_limit = self.settings.server.body_limit_bytes;
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(state.clone())
                .app_data(keys.clone())
                .app_data(accounts.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(body_limit)
                        .error_handler(http::problem::json_error),
                )
                .app_data(web::PathConfig::default().error_handler(http::problem::path_error))
                .app_data(web::QueryConfig::default().error_handler(http::problem::query_error))
                .wrap(actix_web::middleware::from_fn(http::observe))
                .configure(http::routes)
        })
        .workers(cores(self.settings.server.workers))
        .shutdown_timeout(self.settings.server.shutdown_grace.as_secs())
        // Slow-client protection: a client must send its headers within this time.
        .client_request_timeout(Duration::from_secs(5))
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        let server_task = tokio::spawn(server);

        let app = self.clone();
        tokio::spawn(async move {
            if app.ownership.enabled() {
                // Cluster mode: each shard's orders are recovered when this node claims it;
                // a payment outcome for an order owned elsewhere is handed to its owner.
                app.start_consumers();
                app.lifecycle.mark_recovered();
                return;
            }
            match app.orders.recover().await {
                Ok(report) => {
                    app.start_consumers();
                    // A saga resumed from the store after the process stopped is an order
                    // actor restarted.
                    let restarted = report.resumed as u64;
                    app.metrics
                        .actor_restarts
                        .with_label_values(&["order"])
                        .inc_by(restarted);
                    app.lifecycle.mark_recovered();
                    info!("recovery done, ready");
                }
                Err(e) => error!(error = %e, "recovery failed; staying not ready"),
            }
        });
        Ok(Running {
            addr,
            app: self,
            handle,
            server_task,
            keeper,
        })
    }
}

/// A started server.
pub struct Running {
    pub addr: SocketAddr,
    pub app: App,
    handle: ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Cluster mode: the lease keeper, stopped before the shards are handed over.
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Graceful stop: refuse new orders, finish in-flight requests, flush the
    /// write-behind and the outbox.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let grace = self.app.settings.server.shutdown_grace;
        self.app.lifecycle.start_draining();
        // An event half-applied when the consumer stops is not committed and comes back.
        consumer::stop_all(&self.app.consumers, Duration::from_secs(10)).await;
        self.handle.stop(true).await;
        let _ = self.server_task.await;
        if !self.app.write_behind.drain(grace).await {
            warn!("write-behind not drained within the grace period");
        }
        // In cluster mode only the leading node relays; the others' events are in the
        // shared outbox and leave through it.
        if self.app.ownership.leads() {
            if let Err(e) = self.app.relay.drain().await {
                warn!(error = %e, "outbox not flushed");
            }
        }
        if let Some(keeper) = self.keeper {
            keeper.abort();
            cluster::leave(&self.app.store, &self.app.ownership, &self.app.holders()).await;
        }
        info!("stopped");
        Ok(())
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn until_signalled(self) -> anyhow::Result<()> {
        wait_for_signal().await;
        info!("shutdown signal received, draining");
        self.shutdown().await
    }
}

/// Returns on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
