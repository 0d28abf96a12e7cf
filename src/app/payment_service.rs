//! `emporium payment-service`: the payment side as its own process (and deployment),
//! for `payment.mode = "kafka"`.
//!
//! It consumes `order_created` from `emporium.orders` (consumer group
//! `payment_service.group_id`), charges the simulated gateway through the same
//! [`PaymentActor`] and retry rule ([`payment::charge_until_final`]) as the local saga,
//! and publishes `payment_succeeded` / `payment_failed` (key = order id, the order's
//! `traceparent`/`tracestate`) to `emporium.payments` through its *own* outbox in its
//! own database (`payment_service.store_url`). The outcome event and the consumed
//! order event's id are committed in one transaction, so a redelivered `order_created`
//! is not charged twice; the gateway also sees the order id as its idempotency key.
//! Emporium consumes `emporium.payments` and finishes the saga
//! (`events::payment_outcomes`).
//!
//! It also listens on `payment_service.listen` for its orchestrator and Prometheus:
//! `/health/live`, `/health/ready` (503 while its store does not answer or while it
//! stops) and `/metrics` (its outbox and its consumer lag per partition). It takes no
//! other request, so the listener is a plain side door, not an API.

use crate::actors::payment::{self, PaymentActor};
use crate::config::Settings;
use crate::domain::events::{Event, EventType, OrderCreated, PaymentMoved, PaymentRefused};
use crate::domain::now_millis;
use crate::error::Cause;
use crate::events::consumer::{self, ConsumeError, ConsumerSpec, EventHandler};
use crate::events::kafka::KafkaBus;
use crate::events::outbox::OutboxRelay;
use crate::persistence::sql::StoreOptions;
use crate::persistence::{Consumed, SqlStore, StoreError, WriteSet};
use crate::telemetry::Metrics;
use actix::{Actor, Addr};
use anyhow::Context as _;
use async_trait::async_trait;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::info;

/// The consumer name recorded in the payment service's `processed_events`.
pub(crate) const CONSUMER: &str = "payment-service";

/// Charges each new order once and records the outcome event in the outbox.
struct ChargeOrders {
    store: SqlStore,
    payment: Addr<PaymentActor>,
    attempts: u32,
    attempt_timeout: Duration,
    backoff_base: Duration,
    committed: Arc<Notify>,
}

#[async_trait]
impl EventHandler for ChargeOrders {
    async fn apply(&self, event: &Event, consumed: Consumed) -> Result<(), ConsumeError> {
        if event.event_type != EventType::OrderCreated {
            return Ok(());
        }
        let created: OrderCreated = event
            .payload()
            .map_err(|e| ConsumeError::Failed(format!("order_created without a valid payload: {e}").into()))?;
        let (order, amount, token) = (created.order_id, created.total, created.payment.token);
        let (outcome, attempts) = payment::charge_until_final(
            &self.payment,
            order,
            amount,
            &token,
            self.attempts,
            self.attempt_timeout,
            self.backoff_base,
        )
        .await;
        let traceparent = event.traceparent.clone();
        let mut outcome_event = match &outcome {
            Ok(()) => Event::of(
                EventType::PaymentSucceeded,
                order,
                now_millis(),
                traceparent,
                &PaymentMoved {
                    order_id: order,
                    amount,
                    attempts,
                },
            ),
            Err(e) => Event::of(
                EventType::PaymentFailed,
                order,
                now_millis(),
                traceparent,
                &PaymentRefused {
                    order_id: order,
                    error: Some(e.to_string()),
                    amount: None,
                    attempts: Some(attempts),
                },
            ),
        };
        let event_type = outcome_event.event_type;
        outcome_event.tracestate = event.tracestate.clone();
        info!(order_id = %order, outcome = event_type.as_str(), attempts, "order charged");
        let set = WriteSet {
            events: vec![outcome_event],
            consumed: Some(consumed),
            ..WriteSet::default()
        };
        match self.store.commit(&[&set]).await {
            // Conflict: the same order_created was applied meanwhile; its outcome stands.
            Ok(()) | Err(StoreError::Conflict(_)) => {
                self.committed.notify_one();
                Ok(())
            }
            Err(StoreError::Unavailable(e)) => Err(ConsumeError::Unavailable(e)),
            Err(e) => Err(ConsumeError::Failed(Cause::new(e))),
        }
    }
}

/// A running payment service.
pub struct PaymentService {
    stop: watch::Sender<bool>,
    relay: Arc<OutboxRelay>,
    http: actix_web::dev::ServerHandle,
    stopping: Arc<AtomicBool>,
}

/// What the health and metrics routes read.
struct Probe {
    store: SqlStore,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

async fn live() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(json!({"status": "live"}))
}

/// Ready while its store answers and it is not stopping: without the store it can neither
/// record a charge nor skip a redelivered order, so it should get no partitions.
async fn ready(probe: actix_web::web::Data<Probe>) -> actix_web::HttpResponse {
    let stopping = probe.stopping.load(Ordering::Relaxed);
    let store = probe.store.ping().await.is_ok();
    let body = json!({
        "status": if store && !stopping { "ready" } else { "not_ready" },
        "checks": {"store": store, "draining": stopping},
    });
    if store && !stopping {
        actix_web::HttpResponse::Ok().json(body)
    } else {
        actix_web::HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

async fn render_metrics(probe: actix_web::web::Data<Probe>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(probe.metrics.render())
}

impl PaymentService {
    /// Connects its store (migrated), starts its outbox relay to Kafka and its consumer
    /// of `emporium.orders`. Must run inside an actix `System` (the payment actor).
    pub async fn start(settings: &Settings) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !settings.bus.brokers.is_empty(),
            "the payment service needs bus.brokers (EMPORIUM__BUS__BROKERS)"
        );
        std::fs::create_dir_all(&settings.server.data_dir)
            .with_context(|| format!("cannot create data dir {}", settings.server.data_dir.display()))?;
        let url = settings.payment_service_store_url();
        let options = StoreOptions {
            max_connections: settings.store.max_connections,
            acquire_timeout: settings.store.acquire_timeout,
            sqlite_synchronous: settings.store.sqlite_synchronous.clone(),
            lock_timeouts_secs: None,
        };
        let store = SqlStore::connect(&url, &options)
            .await
            .with_context(|| format!("cannot open the store at {}", crate::persistence::sql::redact(&url)))?;
        store.migrate().await?;

        KafkaBus::ensure_topics_in_background(&settings.bus);
        let bus = KafkaBus::new(&settings.bus).context("cannot create the kafka producer")?;
        let metrics = Arc::new(Metrics::new()?);
        let relay = Arc::new(OutboxRelay::new(
            store.clone(),
            Arc::new(bus),
            settings.outbox.clone(),
            metrics.clone(),
        ));
        let committed = Arc::new(Notify::new());
        relay.relay_in_background(committed.clone());

        let attempt_timeout = settings.payment.attempt_timeout;
        let latency = settings.payment.gateway_latency;
        let slow = settings.payment.slow;
        let payment = PaymentActor::new(latency, attempt_timeout, slow).start();
        let handler = Arc::new(ChargeOrders {
            store: store.clone(),
            payment,
            attempts: settings.payment.attempts,
            attempt_timeout,
            backoff_base: settings.payment.backoff_base,
            committed,
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(consumer::run(
            settings.bus.clone(),
            settings.consumer.clone(),
            ConsumerSpec {
                name: CONSUMER.into(),
                group_id: settings.payment_service.group_id.clone(),
                topics: vec!["emporium.orders"],
            },
            store.clone(),
            handler,
            metrics.clone(),
            stopped,
        ));

        let stopping = Arc::new(AtomicBool::new(false));
        let listener = std::net::TcpListener::bind(&settings.payment_service.listen)
            .with_context(|| format!("cannot listen on {}", settings.payment_service.listen))?;
        let addr = listener.local_addr()?;
        let probe = actix_web::web::Data::new(Probe {
            store: store.clone(),
            metrics: metrics.clone(),
            stopping: stopping.clone(),
        });
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(probe.clone())
                .route("/health/live", actix_web::web::get().to(live))
                .route("/health/ready", actix_web::web::get().to(ready))
                .route("/metrics", actix_web::web::get().to(render_metrics))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let http = server.handle();
        actix_rt::spawn(server);
        info!(%addr, "payment service health and metrics listening");
        Ok(Self {
            stop,
            relay,
            http,
            stopping,
        })
    }

    /// Stops consuming and flushes the outbox (what is not flushed is sent on the next start).
    pub async fn shutdown(self) {
        // Not ready from here on, so no new traffic is routed while it drains.
        self.stopping.store(true, Ordering::Relaxed);
        consumer::stop_all(&self.stop, Duration::from_secs(10)).await;
        if let Err(e) = self.relay.drain().await {
            tracing::warn!(error = %e, "payment service outbox not flushed");
        }
        self.http.stop(true).await;
    }
}
