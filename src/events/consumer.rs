//! The Kafka consumer loop every Emporium consumer runs: the saga reading
//! `emporium.payments` (`payment.mode = "kafka"`) and the payment service reading
//! `emporium.orders`.
//!
//! Why it is shaped this way: delivery from Kafka is at least once, so the effect must be
//! exactly once on our side. The loop skips an event whose id the consumer already
//! recorded in `processed_events`; otherwise the [`EventHandler`] applies the effect and
//! records the id *in the same transaction* (a [`Consumed`] in its write-set). The offset
//! is committed only after that, so a crash in between redelivers the event, and the
//! redelivery finds its id and has no second effect.
//!
//! Failures: while the store or a saga is unavailable the loop waits and retries without
//! limit (an outage is not the message's fault). A message that cannot be processed
//! (`Failed`, or not an event at all) is tried `consumer.max_attempts` times, then
//! published to `emporium.dlq` with the original key, payload and headers plus `dlq_*`
//! headers (error, consumer, source topic, partition, offset, attempts), and kept in
//! `failed_events`, from where `emporium replay` or `POST /v1/admin/events/replay`
//! re-publishes it. Messages are handled one at a time per consumer, which keeps each
//! key's (order's) events in order.
//!
//! Lag: every `consumer.lag_interval_ms` a sampler asks the broker, for each partition the
//! consumer is assigned, for the group's committed offset and the partition's end offset
//! and exports them with the difference (`emporium_consumer_lag_messages`) and how old the
//! oldest uncommitted message is (`emporium_consumer_lag_seconds`). Offsets come from the
//! broker, not from what this process remembers, so the numbers are the group's, as an
//! operator's `kafka-consumer-groups --describe` would show them. The broker calls block,
//! so they run on the blocking pool, never on the consume loop's thread.

use crate::config::{BusSettings, ConsumerSettings};
use crate::domain::events::Event;
use crate::error::Cause;
use crate::events::kafka::{client_config, producer};
use crate::persistence::{Consumed, DeadLetter, SqlStore};
use crate::telemetry::Metrics;
use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The topic dead letters go to.
pub(crate) const DLQ_TOPIC: &str = "emporium.dlq";

/// Why a handler could not apply an event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsumeError {
    /// Something it depends on is down or not ready yet: retried without limit.
    #[error("unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The event itself cannot be applied: retried `max_attempts` times, then dead-lettered.
    #[error("{0}")]
    Failed(#[source] Cause),
}

#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies the event's effect and records `consumed` in the same transaction.
    /// Events the handler does not react to return `Ok` without writing anything.
    async fn apply(&self, event: &Event, consumed: Consumed) -> Result<(), ConsumeError>;
}

/// One consumer: its name (recorded in `processed_events` and `failed_events`), its
/// consumer group and the topics it reads.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub name: String,
    pub group_id: String,
    pub topics: Vec<&'static str>,
}

/// Asks the consumers listening on `stop` to stop and waits (up to `within`) until
/// they left their groups.
pub async fn stop_all(stop: &watch::Sender<bool>, within: Duration) {
    stop.send_replace(true);
    let deadline = tokio::time::Instant::now() + within;
    while stop.receiver_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the consumer until `stop` turns true. Broker errors are logged and waited out.
/// It holds its `stop` receiver until it has left its group ([`stop_all`] waits for that).
pub async fn run(
    bus: BusSettings,
    settings: ConsumerSettings,
    spec: ConsumerSpec,
    store: SqlStore,
    handler: Arc<dyn EventHandler>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::from_millis(200);
    while !*stop.borrow() {
        match ConsumerLoop::new(&bus, &settings, &spec, store.clone(), handler.clone(), metrics.clone()) {
            Ok(consumer) => {
                consumer.run(&mut stop).await;
                return;
            }
            Err(e) => {
                warn!(consumer = spec.name, error = %e, "cannot create kafka consumer; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Counts the group's rebalances as they happen (librdkafka calls it on its own thread).
pub(crate) struct LagContext {
    metrics: Arc<Metrics>,
    group: String,
}

impl ClientContext for LagContext {}

impl ConsumerContext for LagContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.metrics.consumer_rebalances.with_label_values(&[&self.group]).inc();
        }
    }
}

type LagConsumer = StreamConsumer<LagContext>;

/// What the consume loop knows about a partition that the broker does not tell: the
/// timestamp of the message it is working on (uncommitted, the oldest not done).
type InFlight = Arc<Mutex<HashMap<(String, i32), i64>>>;

struct ConsumerLoop {
    consumer: Arc<LagConsumer>,
    dlq: rdkafka::producer::FutureProducer,
    spec: ConsumerSpec,
    settings: ConsumerSettings,
    store: SqlStore,
    handler: Arc<dyn EventHandler>,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
}

/// One assigned partition as the broker reports it.
#[derive(Debug, Clone, PartialEq)]
struct PartitionOffsets {
    topic: String,
    partition: i32,
    /// The group's committed offset; the partition's start when it committed nothing yet
    /// (the group begins there: `auto.offset.reset = earliest`).
    committed: i64,
    end: i64,
}

/// Asks the broker for the committed and end offset of every assigned partition (blocking).
fn read_offsets(consumer: &LagConsumer) -> rdkafka::error::KafkaResult<Vec<PartitionOffsets>> {
    let timeout = Duration::from_secs(5);
    let assigned = consumer.assignment()?;
    if assigned.count() == 0 {
        return Ok(Vec::new());
    }
    let committed = consumer.committed_offsets(assigned, timeout)?;
    let mut out = Vec::with_capacity(committed.count());
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let committed = match e.offset() {
            Offset::Offset(n) => n,
            _ => low,
        };
        out.push(PartitionOffsets {
            topic: e.topic().to_owned(),
            partition: e.partition(),
            committed,
            end: high,
        });
    }
    Ok(out)
}

/// Seconds behind for a partition `lag` messages behind: the age of the message the
/// consumer is working on when there is one (the oldest uncommitted), else the time since
/// a sample first saw the partition behind (the consumer has not fetched the backlog yet:
/// a lower bound, at the sampling interval's resolution). 0 when caught up.
fn lag_seconds(lag: i64, in_flight_ms: Option<i64>, behind_since_ms: Option<i64>, now_ms: i64) -> f64 {
    if lag <= 0 {
        return 0.0;
    }
    let since = in_flight_ms.or(behind_since_ms).unwrap_or(now_ms);
    (now_ms - since).max(0) as f64 / 1000.0
}

/// Samples the consumer's lag into the metrics every `interval`, until aborted.
async fn sample_lag(
    consumer: Arc<LagConsumer>,
    group: String,
    metrics: Arc<Metrics>,
    in_flight: InFlight,
    interval: Duration,
) {
    let mut reported: HashSet<(String, i32)> = HashSet::new();
    let mut behind_since: HashMap<(String, i32), i64> = HashMap::new();
    loop {
        let c = consumer.clone();
        let offsets = match tokio::task::spawn_blocking(move || read_offsets(&c)).await {
            Ok(Ok(offsets)) => offsets,
            Ok(Err(e)) => {
                debug!(group, error = %e, "consumer lag not sampled");
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(_) => return,
        };
        let now = crate::domain::now_millis();
        let mut seen = HashSet::new();
        for p in offsets {
            let key = (p.topic.clone(), p.partition);
            let lag = (p.end - p.committed).max(0);
            let since = if lag > 0 {
                Some(*behind_since.entry(key.clone()).or_insert(now))
            } else {
                behind_since.remove(&key);
                None
            };
            let working_on = in_flight.lock().map_or(None, |m| m.get(&key).copied());
            let partition = p.partition.to_string();
            let labels = [group.as_str(), p.topic.as_str(), partition.as_str()];
            metrics
                .consumer_committed_offset
                .with_label_values(&labels)
                .set(p.committed);
            metrics.consumer_end_offset.with_label_values(&labels).set(p.end);
            metrics.consumer_lag_messages.with_label_values(&labels).set(lag);
            metrics
                .consumer_lag_seconds
                .with_label_values(&labels)
                .set(lag_seconds(lag, working_on, since, now));
            seen.insert(key);
        }
        // Partitions taken away by a rebalance are another consumer's to report now.
        for (topic, partition) in reported.difference(&seen) {
            let partition = partition.to_string();
            let labels = [group.as_str(), topic.as_str(), partition.as_str()];
            let _ = metrics.consumer_committed_offset.remove_label_values(&labels);
            let _ = metrics.consumer_end_offset.remove_label_values(&labels);
            let _ = metrics.consumer_lag_messages.remove_label_values(&labels);
            let _ = metrics.consumer_lag_seconds.remove_label_values(&labels);
        }
        behind_since.retain(|k, _| seen.contains(k));
        reported = seen;
        tokio::time::sleep(interval).await;
    }
}

/// What became of one message.
enum Outcome {
    Applied,
    Duplicate,
    DeadLettered,
    Stopped,
}

impl ConsumerLoop {
    fn new(
        bus: &BusSettings,
        settings: &ConsumerSettings,
        spec: &ConsumerSpec,
        store: SqlStore,
        handler: Arc<dyn EventHandler>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        // The group's series exists (at 0) before its first assignment.
        metrics.consumer_rebalances.with_label_values(&[&spec.group_id]);
        let context = LagContext {
            metrics: metrics.clone(),
            group: spec.group_id.clone(),
        };
        let consumer: LagConsumer = client_config(bus)
            .set("group.id", &spec.group_id)
            .set("client.id", &spec.name)
            // Offsets are committed by hand, after the effect is durable.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A new group starts at the beginning: events published before it first
            // joined are still somebody's orders.
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
            .create_with_context(context)?;
        consumer.subscribe(&spec.topics)?;
        info!(consumer = spec.name, group = spec.group_id, topics = ?spec.topics, "kafka consumer started");
        Ok(Self {
            consumer: Arc::new(consumer),
            dlq: producer(bus)?,
            spec: spec.clone(),
            settings: settings.clone(),
            store,
            handler,
            metrics,
            in_flight: InFlight::default(),
        })
    }

    async fn run(&self, stop: &mut watch::Receiver<bool>) {
        let sampler = tokio::spawn(sample_lag(
            self.consumer.clone(),
            self.spec.group_id.clone(),
            self.metrics.clone(),
            self.in_flight.clone(),
            self.settings.lag_interval,
        ));
        self.consume(stop).await;
        sampler.abort();
        // Leave the group now rather than when the broker's session timeout notices,
        // so a restarted instance gets the partitions at once.
        self.consumer.unsubscribe();
        info!(consumer = self.spec.name, "kafka consumer stopped");
    }

    async fn consume(&self, stop: &mut watch::Receiver<bool>) {
        loop {
            let received = tokio::select! {
                m = self.consumer.recv() => m,
                _ = stop.changed() => return,
            };
            let message = match received {
                Ok(m) => m.detach(),
                Err(e) => {
                    warn!(consumer = self.spec.name, error = %e, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // One span per message, continuing the trace of the outbox publish that sent it
            // (its `traceparent` header), so a consumer's work shows under the request.
            let span = tracing::info_span!(
                "consumer.handle",
                consumer = %self.spec.name,
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset()
            );
            crate::telemetry::continue_trace(&span, header(&message, "traceparent").as_deref());
            let key = (message.topic().to_owned(), message.partition());
            if let (Ok(mut m), Some(ts)) = (self.in_flight.lock(), message.timestamp().to_millis()) {
                m.insert(key.clone(), ts);
            }
            let outcome = tracing::Instrument::instrument(self.process(&message, stop), span).await;
            match outcome {
                Outcome::Stopped => return,
                Outcome::Applied | Outcome::Duplicate | Outcome::DeadLettered => self.commit(&message),
            }
            if let Ok(mut m) = self.in_flight.lock() {
                m.remove(&key);
            }
        }
    }

    /// Commits the offset after `message`. A failed commit only means a redelivery,
    /// which `processed_events` absorbs.
    fn commit(&self, message: &OwnedMessage) {
        let mut offsets = TopicPartitionList::new();
        let added = offsets.add_partition_offset(
            message.topic(),
            message.partition(),
            Offset::Offset(message.offset() + 1),
        );
        if let Err(e) = added.and_then(|()| self.consumer.commit(&offsets, CommitMode::Sync)) {
            warn!(consumer = self.spec.name, error = %e, "offset commit failed; the message may be redelivered");
        }
    }

    async fn process(&self, message: &OwnedMessage, stop: &watch::Receiver<bool>) -> Outcome {
        let payload = message.payload().unwrap_or_default();
        let event: Event = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                // Not an event at all: no attempt can change that.
                return self
                    .dead_letter(message, None, format!("not an event: {e}"), 1, stop)
                    .await;
            }
        };
        let consumed = Consumed {
            consumer: self.spec.name.clone(),
            event_id: event.id,
        };
        let mut failures = 0u32;
        let mut outage_backoff = self.settings.backoff_base.max(Duration::from_millis(1));
        loop {
            if *stop.borrow() {
                return Outcome::Stopped;
            }
            let result = match self.store.is_processed(&consumed.consumer, event.id).await {
                Ok(true) => {
                    debug!(consumer = self.spec.name, event_id = %event.id, "duplicate event skipped");
                    return Outcome::Duplicate;
                }
                Ok(false) => self.handler.apply(&event, consumed.clone()).await,
                Err(e) => Err(ConsumeError::Unavailable(Cause::new(e))),
            };
            match result {
                Ok(()) => return Outcome::Applied,
                Err(ConsumeError::Unavailable(e)) => {
                    warn!(consumer = self.spec.name, event_id = %event.id, error = %e, "cannot apply event yet; retrying");
                    tokio::time::sleep(outage_backoff).await;
                    outage_backoff = (outage_backoff * 2).min(Duration::from_secs(5));
                }
                Err(ConsumeError::Failed(e)) => {
                    failures += 1;
                    if failures >= self.settings.max_attempts {
                        return self
                            .dead_letter(message, Some(event), crate::error::chain(&e), i64::from(failures), stop)
                            .await;
                    }
                    warn!(consumer = self.spec.name, event_id = %event.id, attempt = failures, error = %e, "event failed; retrying");
                    let backoff = self.settings.backoff_base.saturating_mul(1 << (failures - 1).min(10));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Publishes the message to the DLQ topic and records it in `failed_events`, each
    /// retried until it succeeds (or the consumer stops: then the offset stays, and the
    /// message comes back).
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        event: Option<Event>,
        error: String,
        attempts: i64,
        stop: &watch::Receiver<bool>,
    ) -> Outcome {
        warn!(
            consumer = self.spec.name,
            topic = message.topic(),
            offset = message.offset(),
            error,
            "message moved to the dead letter queue"
        );
        let original: Vec<(String, String)> = message.headers().map_or_else(Vec::new, |hs| {
            hs.iter()
                .map(|h| {
                    let value = h
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    (h.key.to_owned(), value)
                })
                .collect()
        });
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let extra = [
            ("dlq_error", error.clone()),
            ("dlq_consumer", self.spec.name.clone()),
            ("dlq_topic", message.topic().to_owned()),
            ("dlq_partition", message.partition().to_string()),
            ("dlq_offset", message.offset().to_string()),
            ("dlq_attempts", attempts.to_string()),
        ];
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut headers = OwnedHeaders::new_with_capacity(original.len() + extra.len());
            for (k, v) in &original {
                headers = headers.insert(Header { key: k, value: Some(v) });
            }
            for (k, v) in &extra {
                headers = headers.insert(Header { key: k, value: Some(v) });
            }
            let record = FutureRecord::to(DLQ_TOPIC)
                .key(message.key().unwrap_or_default())
                .payload(message.payload().unwrap_or_default())
                .headers(headers);
            match self.dlq.send(record, Duration::from_secs(10)).await {
                Ok(_) => break,
                Err((e, _)) => warn!(error = %e, "cannot publish to the DLQ yet; retrying"),
            }
            if *stop.borrow() {
                return Outcome::Stopped;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        let letter = DeadLetter {
            consumer: self.spec.name.clone(),
            topic: message.topic().to_owned(),
            event,
            payload: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            key,
            headers: original,
            error,
            attempts,
        };
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = self.store.dead_letter(&letter).await {
            warn!(error = %e, "cannot record the dead letter yet; retrying");
            if *stop.borrow() {
                return Outcome::Stopped;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        Outcome::DeadLettered
    }
}

/// A message header as text, when present and UTF-8.
fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let value = message.headers()?.iter().find(|h| h.key == key)?.value?;
    std::str::from_utf8(value).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::lag_seconds;

    #[test]
    fn caught_up_is_zero_seconds_behind_whatever_the_timestamps() {
        assert_eq!(lag_seconds(0, Some(1_000), Some(2_000), 10_000), 0.0);
    }

    #[test]
    fn the_message_in_flight_dates_the_lag() {
        assert_eq!(lag_seconds(3, Some(4_000), Some(9_000), 10_000), 6.0);
    }

    #[test]
    fn without_a_message_in_flight_the_lag_dates_from_when_it_was_first_seen() {
        assert_eq!(lag_seconds(3, None, Some(7_500), 10_000), 2.5);
        // A clock step back never shows negative seconds.
        assert_eq!(lag_seconds(3, Some(11_000), None, 10_000), 0.0);
    }
}
