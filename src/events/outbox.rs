//! The outbox relay: moves committed events from the `outbox` table to the event bus.
//!
//! Owns: the relay loop. Takes: a wake-up after every group commit (and polls anyway).
//! Promises: each event is published at least once, in id order per aggregate; a row is
//! marked published only after the bus acknowledged it; a failed publish is retried
//! with exponential backoff. An event the bus rejects is moved to `failed_events` after
//! `max_attempts` (from where `emporium replay` re-publishes it); an event that failed
//! because the bus is unavailable is retried for as long as the outage lasts (backoff
//! capped at 30 s), since giving up on it would only turn an outage into manual work.
//! While one event of an aggregate waits for a retry, the later events of that
//! aggregate wait too.

use crate::config::OutboxSettings;
use crate::domain::events::Event;
use crate::domain::now_millis;
use crate::events::{BusError, EventBus};
use crate::persistence::{OutboxRow, SqlStore, StoreError};
use crate::telemetry::Metrics;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

pub struct OutboxRelay {
    store: SqlStore,
    bus: Arc<dyn EventBus>,
    settings: OutboxSettings,
    metrics: Arc<Metrics>,
    /// False from a publish that found the bus unavailable until one that succeeds.
    bus_reachable: AtomicBool,
    /// Cluster mode: only the leading node relays (one reader of the outbox keeps each
    /// aggregate's events in order).
    ownership: Arc<crate::actors::cluster::Ownership>,
    /// When the backlog gauge was last counted: a `COUNT(*)` of the unpublished rows reads
    /// each of them, so it runs at most once per poll interval, not after every drain
    /// (under load that was every group commit, and a tenth of MariaDB's CPU).
    backlog_counted: std::sync::Mutex<Option<Instant>>,
}

/// The longest wait between two attempts of one event.
const MAX_BACKOFF_MS: u64 = 30_000;

impl OutboxRelay {
    pub fn new(store: SqlStore, bus: Arc<dyn EventBus>, settings: OutboxSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            bus,
            settings,
            metrics,
            bus_reachable: AtomicBool::new(true),
            ownership: crate::actors::cluster::Ownership::single(),
            backlog_counted: std::sync::Mutex::new(None),
        }
    }

    /// Cluster mode: relays only while this node leads (`Ownership::leads`).
    pub(crate) fn in_cluster(mut self, ownership: Arc<crate::actors::cluster::Ownership>) -> Self {
        self.ownership = ownership;
        self
    }

    /// Whether the last publish reached the bus (shown by `/health/ready`).
    pub(crate) fn bus_reachable(&self) -> bool {
        self.bus_reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn bus_kind(&self) -> &'static str {
        self.bus.kind()
    }

    pub(crate) fn poll_interval(&self) -> std::time::Duration {
        self.settings.poll_interval
    }

    /// Relays in the background: after every commit `committed` announces, and every
    /// `poll_interval_ms` anyway (for retries that come due).
    pub fn relay_in_background(self: &Arc<Self>, committed: Arc<tokio::sync::Notify>) {
        let relay = self.clone();
        tokio::spawn(async move {
            let poll = relay.poll_interval().max(std::time::Duration::from_millis(1));
            loop {
                tokio::select! {
                    _ = committed.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                if !relay.ownership.leads() {
                    continue;
                }
                if let Err(e) = relay.drain().await {
                    warn!(error = %e, "outbox relay could not read the outbox");
                }
            }
        });
    }

    /// Publishes everything that is due now. Returns how many events were published.
    /// Stops between batches when this node no longer leads (cluster mode): a backlog
    /// is drained by one relay, not by the old leader beside the new one.
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            if !self.ownership.leads() {
                return Ok(total);
            }
            let published = self.relay_once().await?;
            total += published;
            if published == 0 {
                if self.backlog_due() {
                    self.metrics.outbox_backlog.set(self.store.outbox_backlog().await?);
                }
                return Ok(total);
            }
        }
    }

    /// Whether the backlog gauge is due for a count (and marks it counted).
    fn backlog_due(&self) -> bool {
        let mut counted = self.backlog_counted.lock().unwrap_or_else(|p| p.into_inner());
        if counted.is_some_and(|at| at.elapsed() < self.settings.poll_interval) {
            return false;
        }
        *counted = Some(Instant::now());
        true
    }

    async fn relay_once(&self) -> Result<usize, StoreError> {
        let rows = self.store.outbox_pending(self.settings.batch_size).await?;
        let now = now_millis();
        let mut waiting: HashSet<&str> = HashSet::new();
        let mut due: Vec<&OutboxRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            let aggregate = row.event.aggregate_id.as_str();
            if waiting.contains(aggregate) || row.next_attempt_at > now {
                waiting.insert(aggregate);
                continue;
            }
            due.push(row);
        }
        if due.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let spans: Vec<tracing::Span> = due.iter().map(|r| publish_span(&r.event)).collect();
        // When traces are exported, each event leaves naming its publish span, so a
        // consumer's span becomes that span's child (request → publish → consume).
        let relinked: Option<Vec<Event>> = crate::telemetry::traces::is_exporting().then(|| {
            due.iter()
                .zip(&spans)
                .map(|(r, span)| Event {
                    traceparent: crate::telemetry::traceparent_of(span).or_else(|| r.event.traceparent.clone()),
                    ..r.event.clone()
                })
                .collect()
        });
        let events: Vec<&Event> = match &relinked {
            Some(events) => events.iter().collect(),
            None => due.iter().map(|r| &r.event).collect(),
        };
        let outcomes = self.bus.publish(&events).await;
        self.metrics
            .outbox_publish_duration
            .observe(started.elapsed().as_secs_f64());

        let reachable = !outcomes.iter().any(|o| matches!(o, Err(BusError::Unavailable(_))));
        self.bus_reachable.store(reachable, Ordering::Relaxed);
        let mut published = Vec::with_capacity(due.len());
        let mut failed_aggregates: HashSet<&str> = HashSet::new();
        for ((row, outcome), span) in due.iter().zip(outcomes).zip(&spans) {
            if let Err(e) = &outcome {
                span.record("error", tracing::field::display(e));
            }
            let aggregate = row.event.aggregate_id.as_str();
            match outcome {
                // After a failure, later events of the aggregate stay unpublished so they
                // are delivered again after it (at least once, never skipped).
                Ok(()) if !failed_aggregates.contains(aggregate) => published.push(row.id),
                Ok(()) => {}
                Err(e) => {
                    failed_aggregates.insert(aggregate);
                    self.give_up_or_retry(row, &e).await?;
                }
            }
        }
        self.store.outbox_mark_published(&published).await?;
        self.metrics.outbox_published.inc_by(published.len() as u64);
        Ok(published.len())
    }

    async fn give_up_or_retry(&self, row: &OutboxRow, error: &BusError) -> Result<(), StoreError> {
        let attempts = row.attempts + 1;
        let message = error.to_string();
        let rejected = matches!(error, BusError::Rejected(_));
        if rejected && attempts >= self.settings.max_attempts {
            self.metrics.outbox_failed.inc();
            warn!(event_id = %row.event.id, attempts, error = message, "outbox event moved to failed_events");
            return self
                .store
                .outbox_fail(
                    &OutboxRow {
                        attempts,
                        ..row.clone()
                    },
                    &message,
                )
                .await;
        }
        self.metrics.outbox_retries.inc();
        let backoff = (self.settings.backoff_base.as_millis() as u64)
            .saturating_mul(1 << attempts.clamp(0, 16))
            .min(MAX_BACKOFF_MS) as i64;
        self.store
            .outbox_defer(row.id, attempts, now_millis() + backoff, &message)
            .await
    }
}

/// The span of one event's publish, continuing the trace of the request that caused it.
fn publish_span(event: &Event) -> tracing::Span {
    let span = tracing::debug_span!(
        "outbox.publish",
        event_id = %event.id,
        event_type = ?event.event_type,
        aggregate_id = %event.aggregate_id,
        error = tracing::field::Empty,
        "otel.kind" = "producer",
    );
    crate::telemetry::continue_trace(&span, event.traceparent.as_deref());
    span
}
