//! Logs and metrics, built in one place.
//!
//! Metric names follow Prometheus conventions (`_total` counters, `_seconds`
//! histograms in base units). Every collector lives in [`Metrics`], created once
//! and shared; recording is an atomic add, cheap enough for the hot path (measured:
//! README, "Metrics overhead"). Per-message counters and histograms are [`Gate`]d so
//! `telemetry.metrics = false` can switch recording off.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub(crate) mod actor;
pub mod context;
pub(crate) mod gate;
pub mod traces;

pub(crate) use actor::ActorProbe;
pub(crate) use gate::Gate;

pub use traces::continue_trace;
pub(crate) use traces::traceparent_of;

/// Sets up logging (and trace export when `telemetry.otlp_endpoint` is set); keep the
/// returned guard alive for as long as traces should be exported.
pub fn init(settings: &crate::config::TelemetrySettings) -> traces::Telemetry {
    traces::init(&traces::TraceSettings {
        log_format: settings.log_format.clone(),
        log_level: settings.log_level.clone(),
        otlp_endpoint: settings.otlp_endpoint.clone().unwrap_or_default(),
        export_delay: settings.otlp_export_delay,
    })
}

pub struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) http_requests: Gate<IntCounterVec>,
    pub(crate) http_duration: Gate<HistogramVec>,
    pub(crate) actors_active: IntGaugeVec,
    pub(crate) actor_activations: Gate<IntCounterVec>,
    pub(crate) actor_passivations: Gate<IntCounterVec>,
    pub(crate) actor_messages: Gate<IntCounterVec>,
    pub(crate) reservations: Gate<IntCounterVec>,
    pub(crate) reservation_expirations: Gate<IntCounter>,
    pub(crate) orders_created: Gate<IntCounter>,
    pub(crate) orders_finished: Gate<IntCounterVec>,
    pub(crate) payment_attempts: Gate<IntCounterVec>,
    pub(crate) refunds: Gate<IntCounterVec>,
    pub(crate) commit_batch_size: Gate<Histogram>,
    pub(crate) commit_duration: Gate<Histogram>,
    pub(crate) commit_failures: Gate<IntCounter>,
    pub(crate) write_queue_depth: IntGauge,
    pub(crate) outbox_backlog: IntGauge,
    pub(crate) outbox_published: Gate<IntCounter>,
    pub(crate) outbox_retries: Gate<IntCounter>,
    pub(crate) outbox_failed: Gate<IntCounter>,
    pub(crate) outbox_publish_duration: Gate<Histogram>,
    pub(crate) db_pool_connections: IntGaugeVec,
    pub(crate) actor_restarts: Gate<IntCounterVec>,
    pub(crate) actor_mailbox_depth: Gate<IntGaugeVec>,
    pub(crate) actor_handle_duration: Gate<HistogramVec>,
    /// Available units of the [`HOT_SKUS`] busiest active SKUs, refreshed per scrape.
    pub(crate) inventory_available: IntGaugeVec,
    pub(crate) db_pool_waiters: IntGauge,
    // ---- Kafka consumer lag (events::consumer samples these) ----
    /// Per consumer group, topic and assigned partition: the group's committed offset.
    pub(crate) consumer_committed_offset: IntGaugeVec,
    /// The partition's end offset (high watermark: the offset the next message gets).
    pub(crate) consumer_end_offset: IntGaugeVec,
    /// Messages published and not yet committed by the group (end - committed).
    pub(crate) consumer_lag_messages: IntGaugeVec,
    /// Age of the oldest message the group has not committed; 0 when caught up.
    pub(crate) consumer_lag_seconds: GaugeVec,
    /// Partition assignments the group's consumer received (a rebalance each).
    pub consumer_rebalances: IntCounterVec,
    // ---- Cluster mode (actors/cluster/; docs/cluster.md) ----
    /// Shards this node holds a lease on (0 outside cluster mode).
    pub(crate) cluster_shards_owned: IntGauge,
    /// Live members as this node last read the membership table.
    pub(crate) cluster_members: IntGauge,
    /// Lease renewal rounds by outcome (ok, failed).
    pub(crate) cluster_lease_renewals: IntCounterVec,
    /// Leases this node held and lost (taken over after a pause, or expired unrenewed).
    pub(crate) cluster_leases_lost: IntCounter,
    /// Shards this node claimed (a new epoch each: a takeover or a first claim).
    pub(crate) cluster_takeovers: IntCounter,
    /// Shards this node handed over (released: rebalance or shutdown).
    pub(crate) cluster_handovers: IntCounter,
    /// Requests forwarded to the owning node, by outcome (ok, failed).
    pub(crate) cluster_forwarded: IntCounterVec,
    pub(crate) cluster_forward_duration: Histogram,
    /// Write-sets refused by the fence: their shard had passed to another node.
    pub(crate) cluster_fenced_commits: IntCounter,
}

/// How many SKUs `emporium_inventory_available_units` shows: the busiest active ones,
/// so the series count stays bounded however many SKUs the shop has.
pub(crate) const HOT_SKUS: usize = 10;

impl Metrics {
    /// Every collector, recording.
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_recording(true)
    }

    /// `recording = false` keeps the collectors but records nothing per message
    /// (`telemetry.metrics`), to measure what recording costs.
    pub(crate) fn with_recording(recording: bool) -> Result<Self, prometheus::Error> {
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
        macro_rules! gated {
            ($c:expr) => {
                Gate::new(reg!($c), recording)
            };
        }
        Ok(Self {
            http_requests: gated!(IntCounterVec::new(
                Opts::new("emporium_http_requests_total", "HTTP requests answered"),
                &["route", "method", "status"]
            )?),
            http_duration: gated!(HistogramVec::new(
                HistogramOpts::new("emporium_http_request_duration_seconds", "HTTP request latency")
                    .buckets(latency_buckets.clone()),
                &["route", "method"]
            )?),
            actors_active: reg!(IntGaugeVec::new(
                Opts::new("emporium_actors_active", "Live actors by type"),
                &["actor"]
            )?),
            actor_activations: gated!(IntCounterVec::new(
                Opts::new("emporium_actor_activations_total", "Actors started"),
                &["actor"]
            )?),
            actor_passivations: gated!(IntCounterVec::new(
                Opts::new(
                    "emporium_actor_passivations_total",
                    "Actors stopped after being idle or finished"
                ),
                &["actor"]
            )?),
            actor_messages: gated!(IntCounterVec::new(
                Opts::new("emporium_actor_messages_total", "Messages handled by actors"),
                &["actor"]
            )?),
            reservations: gated!(IntCounterVec::new(
                Opts::new(
                    "emporium_reservations_total",
                    "Reservation attempts by outcome (accepted, sold_out)"
                ),
                &["outcome"]
            )?),
            reservation_expirations: gated!(IntCounter::new(
                "emporium_reservation_expirations_total",
                "Unpaid orders cancelled because their reservation expired"
            )?),
            orders_created: gated!(IntCounter::new(
                "emporium_orders_created_total",
                "Orders accepted durably (201)"
            )?),
            orders_finished: gated!(IntCounterVec::new(
                Opts::new("emporium_orders_finished_total", "Orders reaching a final state"),
                &["status"]
            )?),
            payment_attempts: gated!(IntCounterVec::new(
                Opts::new("emporium_payment_attempts_total", "Payment gateway attempts by outcome"),
                &["outcome"]
            )?),
            refunds: gated!(IntCounterVec::new(
                Opts::new(
                    "emporium_refunds_total",
                    "Refunds of payments that may have been captured for cancelled orders, by step (requested, refunded, voided, retried, failed)"
                ),
                &["outcome"]
            )?),
            commit_batch_size: gated!(Histogram::with_opts(
                HistogramOpts::new("emporium_write_behind_batch_size", "Write-sets per group commit")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0])
            )?),
            commit_duration: gated!(Histogram::with_opts(
                HistogramOpts::new("emporium_write_behind_commit_duration_seconds", "Group commit latency")
                    .buckets(latency_buckets.clone())
            )?),
            commit_failures: gated!(IntCounter::new(
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
            outbox_published: gated!(IntCounter::new(
                "emporium_outbox_published_total",
                "Outbox events published"
            )?),
            outbox_retries: gated!(IntCounter::new(
                "emporium_outbox_retries_total",
                "Outbox publish attempts that failed and will be retried"
            )?),
            outbox_failed: gated!(IntCounter::new(
                "emporium_outbox_failed_total",
                "Outbox events moved to failed_events"
            )?),
            outbox_publish_duration: gated!(Histogram::with_opts(
                HistogramOpts::new(
                    "emporium_outbox_publish_duration_seconds",
                    "Latency of one relay publish round"
                )
                .buckets(latency_buckets.clone())
            )?),
            db_pool_connections: reg!(IntGaugeVec::new(
                Opts::new(
                    "emporium_db_pool_connections",
                    "Database pool connections by state (in_use, idle)"
                ),
                &["state"]
            )?),
            actor_restarts: gated!(IntCounterVec::new(
                Opts::new(
                    "emporium_actor_restarts_total",
                    "Actors started again from stored state after stopping unexpectedly (inventory) or after a process restart (order sagas resumed)"
                ),
                &["actor"]
            )?),
            actor_mailbox_depth: gated!(IntGaugeVec::new(
                Opts::new("emporium_actor_mailbox_depth", "Messages sent to actors and not yet handled"),
                &["actor"]
            )?),
            actor_handle_duration: gated!(HistogramVec::new(
                HistogramOpts::new("emporium_actor_handle_duration_seconds", "Time an actor spends handling one message")
                    .buckets(vec![
                        0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1
                    ]),
                &["actor"]
            )?),
            inventory_available: reg!(IntGaugeVec::new(
                Opts::new(
                    "emporium_inventory_available_units",
                    "Units available (stock - reserved) of the busiest active SKUs"
                ),
                &["sku"]
            )?),
            db_pool_waiters: reg!(IntGauge::new(
                "emporium_db_pool_waiters",
                "Tasks waiting for a database connection to begin a transaction"
            )?),
            // ---- Kafka consumer lag: not gated, they are sampled, not recorded per message.
            consumer_committed_offset: reg!(IntGaugeVec::new(
                Opts::new(
                    "emporium_consumer_committed_offset",
                    "Committed offset of the consumer group per assigned partition"
                ),
                &["group", "topic", "partition"]
            )?),
            consumer_end_offset: reg!(IntGaugeVec::new(
                Opts::new(
                    "emporium_consumer_end_offset",
                    "End offset (high watermark) of each partition the consumer is assigned"
                ),
                &["group", "topic", "partition"]
            )?),
            consumer_lag_messages: reg!(IntGaugeVec::new(
                Opts::new(
                    "emporium_consumer_lag_messages",
                    "Messages in the partition the consumer group has not committed yet"
                ),
                &["group", "topic", "partition"]
            )?),
            consumer_lag_seconds: reg!(GaugeVec::new(
                Opts::new(
                    "emporium_consumer_lag_seconds",
                    "Age of the oldest message the consumer group has not committed (0 when caught up)"
                ),
                &["group", "topic", "partition"]
            )?),
            consumer_rebalances: reg!(IntCounterVec::new(
                Opts::new(
                    "emporium_consumer_rebalances_total",
                    "Partition assignments received by the consumer group's consumer"
                ),
                &["group"]
            )?),
            cluster_shards_owned: reg!(IntGauge::new(
                "emporium_cluster_shards_owned",
                "Shards this node holds a lease on"
            )?),
            cluster_members: reg!(IntGauge::new(
                "emporium_cluster_members",
                "Live cluster members as last read from the membership table"
            )?),
            cluster_lease_renewals: reg!(IntCounterVec::new(
                Opts::new("emporium_cluster_lease_renewals_total", "Lease renewal rounds by outcome"),
                &["outcome"]
            )?),
            cluster_leases_lost: reg!(IntCounter::new(
                "emporium_cluster_leases_lost_total",
                "Shard leases this node held and lost to expiry or another node"
            )?),
            cluster_takeovers: reg!(IntCounter::new(
                "emporium_cluster_takeovers_total",
                "Shards claimed by this node (each a new epoch)"
            )?),
            cluster_handovers: reg!(IntCounter::new(
                "emporium_cluster_handovers_total",
                "Shards this node released to others (rebalance, shutdown)"
            )?),
            cluster_forwarded: reg!(IntCounterVec::new(
                Opts::new("emporium_cluster_forwarded_total", "Requests forwarded to the owning node, by outcome"),
                &["outcome"]
            )?),
            cluster_forward_duration: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "emporium_cluster_forward_duration_seconds",
                    "Round trip of a request forwarded to the owning node"
                )
                .buckets(latency_buckets.clone())
            )?),
            cluster_fenced_commits: reg!(IntCounter::new(
                "emporium_cluster_fenced_commits_total",
                "Write-sets refused because their shard had passed to another node"
            )?),
            registry,
        }
        .with_actor_series())
    }

    /// Creates the per-actor-type series up front, so dashboards and alerts find them
    /// (at zero) before the first restart or message.
    fn with_actor_series(self) -> Self {
        for actor in ["sku", "order"] {
            self.actor_restarts.raw().with_label_values(&[actor]);
            self.actor_mailbox_depth.raw().with_label_values(&[actor]);
            self.actor_handle_duration.raw().with_label_values(&[actor]);
        }
        // Refunds are rare: without their series at zero, a rate over them is "no data"
        // rather than 0, and the failed-refund alert has nothing to compare.
        for outcome in ["requested", "refunded", "voided", "retried", "failed"] {
            self.refunds.raw().with_label_values(&[outcome]);
        }
        for outcome in ["ok", "failed"] {
            self.cluster_lease_renewals.with_label_values(&[outcome]);
            self.cluster_forwarded.with_label_values(&[outcome]);
        }
        self
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which `new` rules out.
        let mut families = self.registry.gather();
        // Collectors registered outside `Metrics` (the search result cache's).
        families.extend(prometheus::gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
