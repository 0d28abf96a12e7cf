//! Logs and metrics, built in one place.
//!
//! Metric names follow Prometheus conventions (`_total` counters, `_seconds`
//! histograms in base units). Every collector lives in [`Metrics`], created once
//! and shared; recording is an atomic add, cheap enough for the hot path.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tracing_subscriber::{fmt, EnvFilter};

/// Sets up the global tracing subscriber: pretty logs for development, JSON for production.
pub fn init_logging(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests that build several apps in one process) is harmless.
    let _ = if format == "json" {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub actors_active: IntGaugeVec,
    pub actor_activations: IntCounterVec,
    pub actor_passivations: IntCounterVec,
    pub actor_messages: IntCounterVec,
    pub reservations: IntCounterVec,
    pub reservation_expirations: IntCounter,
    pub orders_created: IntCounter,
    pub orders_finished: IntCounterVec,
    pub payment_attempts: IntCounterVec,
    pub commit_batch_size: Histogram,
    pub commit_duration: Histogram,
    pub commit_failures: IntCounter,
    pub write_queue_depth: IntGauge,
    pub outbox_backlog: IntGauge,
    pub outbox_published: IntCounter,
    pub outbox_retries: IntCounter,
    pub outbox_failed: IntCounter,
    pub outbox_publish_duration: Histogram,
    pub db_pool_connections: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        macro_rules! reg {
            ($c:expr) => {{
                let c = $c;
                registry.register(Box::new(c.clone()))?;
                c
            }};
        }
        Ok(Self {
            http_requests: reg!(IntCounterVec::new(
                Opts::new("emporium_http_requests_total", "HTTP requests answered"),
                &["route", "method", "status"]
            )?),
            http_duration: reg!(HistogramVec::new(
                HistogramOpts::new("emporium_http_request_duration_seconds", "HTTP request latency")
                    .buckets(latency_buckets.clone()),
                &["route", "method"]
            )?),
            actors_active: reg!(IntGaugeVec::new(
                Opts::new("emporium_actors_active", "Live actors by type"),
                &["actor"]
            )?),
            actor_activations: reg!(IntCounterVec::new(
                Opts::new("emporium_actor_activations_total", "Actors started"),
                &["actor"]
            )?),
            actor_passivations: reg!(IntCounterVec::new(
                Opts::new(
                    "emporium_actor_passivations_total",
                    "Actors stopped after being idle or finished"
                ),
                &["actor"]
            )?),
            actor_messages: reg!(IntCounterVec::new(
                Opts::new("emporium_actor_messages_total", "Messages handled by actors"),
                &["actor"]
            )?),
            reservations: reg!(IntCounterVec::new(
                Opts::new(
                    "emporium_reservations_total",
                    "Reservation attempts by outcome (accepted, sold_out)"
                ),
                &["outcome"]
            )?),
            reservation_expirations: reg!(IntCounter::new(
                "emporium_reservation_expirations_total",
                "Unpaid orders cancelled because their reservation expired"
            )?),
            orders_created: reg!(IntCounter::new(
                "emporium_orders_created_total",
                "Orders accepted durably (201)"
            )?),
            orders_finished: reg!(IntCounterVec::new(
                Opts::new("emporium_orders_finished_total", "Orders reaching a final state"),
                &["status"]
            )?),
            payment_attempts: reg!(IntCounterVec::new(
                Opts::new("emporium_payment_attempts_total", "Payment gateway attempts by outcome"),
                &["outcome"]
            )?),
            commit_batch_size: reg!(Histogram::with_opts(
                HistogramOpts::new("emporium_write_behind_batch_size", "Write-sets per group commit")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0])
            )?),
            commit_duration: reg!(Histogram::with_opts(
                HistogramOpts::new("emporium_write_behind_commit_duration_seconds", "Group commit latency")
                    .buckets(latency_buckets.clone())
            )?),
            commit_failures: reg!(IntCounter::new(
                "emporium_write_behind_failures_total",
                "Failed group commits"
            )?),
            write_queue_depth: reg!(IntGauge::new(
                "emporium_write_behind_queue_depth",
                "Write-sets waiting to be committed"
            )?),
            outbox_backlog: reg!(IntGauge::new(
                "emporium_outbox_backlog",
                "Outbox events not yet published"
            )?),
            outbox_published: reg!(IntCounter::new(
                "emporium_outbox_published_total",
                "Outbox events published"
            )?),
            outbox_retries: reg!(IntCounter::new(
                "emporium_outbox_retries_total",
                "Outbox publish attempts that failed and will be retried"
            )?),
            outbox_failed: reg!(IntCounter::new(
                "emporium_outbox_failed_total",
                "Outbox events moved to failed_events"
            )?),
            outbox_publish_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "emporium_outbox_publish_duration_seconds",
                    "Latency of one relay publish round"
                )
                .buckets(latency_buckets)
            )?),
            db_pool_connections: reg!(IntGaugeVec::new(
                Opts::new(
                    "emporium_db_pool_connections",
                    "Database pool connections by state (in_use, idle)"
                ),
                &["state"]
            )?),
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
