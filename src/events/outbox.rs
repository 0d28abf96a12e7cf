//! The outbox relay: moves committed events from the `outbox` table to the event bus.
//!
//! Owns: the relay loop. Takes: a wake-up after every group commit (and polls anyway).
//! Promises: each event is published at least once, in outbox order per aggregate; a row
//! (one transaction's events) is marked published only after the bus acknowledged every
//! event of it; a row with a failed publish is retried as a whole with exponential
//! backoff. An event the bus rejects is moved to `failed_events` after
//! `max_attempts` (from where `emporium replay` re-publishes it); an event that failed
//! because the bus is unavailable is retried for as long as the outage lasts (backoff
//! capped at 30 s), since giving up on it would only turn an outage into manual work.
//! While a row waits for a retry, the later rows that share an aggregate with it wait too.

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
        // A row waits while its retry is not due, and so does every later row that shares
        // an aggregate with a waiting one (each aggregate's events stay in order).
        let mut waiting: HashSet<&str> = HashSet::new();
        let mut due: Vec<&OutboxRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            let aggregates = || row.events.iter().map(|e| e.aggregate_id.as_str());
            if row.next_attempt_at > now || aggregates().any(|a| waiting.contains(a)) {
                waiting.extend(aggregates());
                continue;
            }
            due.push(row);
        }
        if due.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let due_events: Vec<&Event> = due.iter().flat_map(|r| r.events.iter()).collect();
        let spans: Vec<tracing::Span> = due_events.iter().map(|e| publish_span(e)).collect();
        // When traces are exported, each event leaves naming its publish span, so a
        // consumer's span becomes that span's child (request → publish → consume).
        let relinked: Option<Vec<Event>> = crate::telemetry::traces::is_exporting().then(|| {
            due_events
                .iter()
                .zip(&spans)
                .map(|(e, span)| Event {
                    traceparent: crate::telemetry::traceparent_of(span).or_else(|| e.traceparent.clone()),
                    ..(*e).clone()
                })
                .collect()
        });
        let events: Vec<&Event> = match &relinked {
            Some(events) => events.iter().collect(),
            None => due_events,
        };
        let outcomes = self.bus.publish(&events).await;
        self.metrics
            .outbox_publish_duration
            .observe(started.elapsed().as_secs_f64());

        let reachable = !outcomes.iter().any(|o| matches!(o, Err(BusError::Unavailable(_))));
        self.bus_reachable.store(reachable, Ordering::Relaxed);
        for (outcome, span) in outcomes.iter().zip(&spans) {
            if let Err(e) = outcome {
                span.record("error", tracing::field::display(e));
            }
        }
        // The outcomes, row by row (the bus answers each event in the order it was given).
        let mut outcomes = outcomes.into_iter();
        let mut published_rows = Vec::with_capacity(due.len());
        let mut published_events = 0;
        let mut failed_aggregates: HashSet<&str> = HashSet::new();
        for row in due {
            let failed: Vec<(&Event, BusError)> = row
                .events
                .iter()
                .zip(outcomes.by_ref().take(row.events.len()))
                .filter_map(|(event, outcome)| outcome.err().map(|e| (event, e)))
                .collect();
            let aggregates = row.events.iter().map(|e| e.aggregate_id.as_str());
            if !failed.is_empty() {
                failed_aggregates.extend(aggregates);
                self.give_up_or_retry(row, &failed).await?;
            } else if aggregates.clone().all(|a| !failed_aggregates.contains(a)) {
                published_rows.push(row.id);
                published_events += row.events.len();
            }
            // Otherwise an earlier row of one of its aggregates failed: it stays
            // unpublished and is delivered again after that row (at least once, in order).
        }
        self.store.outbox_mark_published(&published_rows).await?;
        self.metrics.outbox_published.inc_by(published_events as u64);
        Ok(published_events)
    }

    /// A row some of whose events failed: retried as a whole after a backoff, or, once
    /// the bus has rejected them `max_attempts` times, its rejected events move to
    /// `failed_events` and the row goes. While the bus is unavailable it is never given up.
    async fn give_up_or_retry(&self, row: &OutboxRow, failed: &[(&Event, BusError)]) -> Result<(), StoreError> {
        let attempts = row.attempts + 1;
        let message = failed.first().map(|(_, e)| e.to_string()).unwrap_or_default();
        let rejected = failed.iter().all(|(_, e)| matches!(e, BusError::Rejected(_)));
        if rejected && attempts >= self.settings.max_attempts {
            self.metrics.outbox_failed.inc_by(failed.len() as u64);
            for (event, error) in failed {
                warn!(event_id = %event.id, attempts, error = %error, "outbox event moved to failed_events");
            }
            let events: Vec<&Event> = failed.iter().map(|(e, _)| *e).collect();
            return self.store.outbox_fail(row.id, &events, attempts, &message).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::EventType;
    use crate::persistence::sql::StoreOptions;
    use crate::persistence::WriteSet;
    use async_trait::async_trait;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A bus that rejects every event of one aggregate and records what it was given.
    struct Picky {
        rejects: &'static str,
        seen: Mutex<Vec<uuid::Uuid>>,
    }

    #[async_trait]
    impl EventBus for Picky {
        async fn publish(&self, events: &[&Event]) -> Vec<Result<(), BusError>> {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            events
                .iter()
                .map(|e| {
                    seen.push(e.id);
                    if e.aggregate_id == self.rejects {
                        Err(BusError::Rejected("too large".into()))
                    } else {
                        Ok(())
                    }
                })
                .collect()
        }

        fn kind(&self) -> &'static str {
            "picky"
        }
    }

    fn event(aggregate: &str) -> Event {
        Event::new(EventType::ProductUpserted, aggregate, 0, None, serde_json::Value::Null)
    }

    async fn temp_store(dir: &tempfile::TempDir) -> SqlStore {
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("outbox.db").display());
        let options = StoreOptions {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            sqlite_synchronous: "normal".into(),
            lock_timeouts_secs: None,
        };
        let store = SqlStore::connect(&url, &options).await.expect("store");
        store.migrate().await.expect("migrations");
        store
    }

    async fn commit_events(store: &SqlStore, events: Vec<Event>) {
        let set = WriteSet {
            events,
            ..WriteSet::default()
        };
        store.commit(&[&set]).await.expect("commit");
    }

    /// A relay read takes whole rows, oldest first, until it holds the events asked for.
    #[tokio::test]
    async fn a_read_takes_whole_rows_until_it_has_the_events_asked_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = temp_store(&dir).await;
        for _ in 0..3 {
            commit_events(&store, (0..3).map(|_| event("A")).collect()).await;
        }
        let sizes = |rows: Vec<OutboxRow>| rows.iter().map(|r| r.events.len()).collect::<Vec<_>>();
        assert_eq!(sizes(store.outbox_pending(1).await.expect("read")), [3]);
        assert_eq!(sizes(store.outbox_pending(4).await.expect("read")), [3, 3]);
        assert_eq!(sizes(store.outbox_pending(6).await.expect("read")), [3, 3]);
        assert_eq!(sizes(store.outbox_pending(100).await.expect("read")), [3, 3, 3]);
    }

    /// Rows are one transaction's events: a row with a rejected event is retried as a
    /// whole, later rows sharing an aggregate with it wait for it, and once given up on
    /// only the rejected event moves to `failed_events`.
    #[tokio::test]
    async fn a_row_is_retried_whole_and_only_its_rejected_event_is_given_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = temp_store(&dir).await;
        let (a1, b1, a2, c1) = (event("A"), event("B"), event("A"), event("C"));
        for events in [vec![a1.clone(), b1.clone()], vec![a2.clone()], vec![c1.clone()]] {
            commit_events(&store, events).await;
        }
        assert_eq!(store.outbox_backlog().await.expect("backlog"), 4);

        let bus = Arc::new(Picky {
            rejects: "B",
            seen: Mutex::new(Vec::new()),
        });
        let settings = OutboxSettings {
            poll_interval: Duration::from_millis(100),
            batch_size: 64,
            max_attempts: 2,
            backoff_base: Duration::ZERO,
        };
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let relay = OutboxRelay::new(store.clone(), bus.clone(), settings, metrics);

        // First read: c1's row is published; a2's row waits behind the failed row of a1
        // (same aggregate) though the bus took a2. Second read: the failed row is given up
        // on, b1 alone moving to failed_events. a2's row goes on the next drain.
        assert_eq!(relay.drain().await.expect("drain"), 1);
        assert_eq!(store.outbox_backlog().await.expect("backlog"), 1);
        assert_eq!(relay.drain().await.expect("drain"), 1);
        assert_eq!(store.outbox_backlog().await.expect("backlog"), 0);

        let failed = store.failed_events(10).await.expect("failed events");
        assert_eq!(failed.iter().map(|f| f.event.id).collect::<Vec<_>>(), [b1.id]);
        let seen = bus.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(seen, [a1.id, b1.id, a2.id, c1.id, a1.id, b1.id, a2.id, a2.id]);
    }
}
