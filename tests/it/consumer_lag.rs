//! Consumer lag on a real Apache Kafka broker (one per test, `common::kafka`): the
//! `emporium_consumer_*` metrics follow the group's committed offset and the partition's
//! end offset as the broker reports them. A handler that holds every message until the
//! test lets it go makes the lag rise (messages published, none committed) and fall
//! (released, committed), twice, in whole and in part; the rebalance counter sees the
//! assignment.

use crate::common;

use async_trait::async_trait;
use common::kafka::KafkaBroker;
use common::test_settings;
use emporium::domain::events::{Event, EventType};
use emporium::events::consumer::{self, ConsumeError, ConsumerSpec, EventHandler};
use emporium::persistence::sql::StoreOptions;
use emporium::persistence::{Consumed, SqlStore};
use emporium::telemetry::Metrics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const TOPIC: &str = "emporium.orders";
const GROUP: &str = "lag-test";

/// Applies a message only when the test hands out a permit.
struct HeldHandler {
    permits: Arc<Semaphore>,
}

#[async_trait]
impl EventHandler for HeldHandler {
    async fn apply(&self, _event: &Event, _consumed: Consumed) -> Result<(), ConsumeError> {
        // Closed = the test stops this consumer: "unavailable" leaves the message
        // uncommitted (the loop then sees the stop), as a real outage would.
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| ConsumeError::Unavailable((e.to_string()).into()))?;
        permit.forget();
        Ok(())
    }
}

async fn create_topic(brokers: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

async fn publish(producer: &FutureProducer, n: usize) {
    for _ in 0..n {
        let event = Event::new(EventType::OrderCreated, "o-1", 0, None, json!({}));
        let payload = serde_json::to_vec(&event).expect("json");
        producer
            .send(
                FutureRecord::to(TOPIC).key("o-1").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("broker acknowledged");
    }
}

fn gauge(metrics: &Metrics, name: &str) -> Option<f64> {
    // Read through the exposition, as Prometheus would.
    let prefix = format!("{name}{{group=\"{GROUP}\",partition=\"0\",topic=\"{TOPIC}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

/// Polls until `done` holds for (committed, end, lag, seconds), or fails with the last reading.
async fn wait_for(metrics: &Metrics, what: &str, done: impl Fn(f64, f64, f64, f64) -> bool) -> (f64, f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = (
            gauge(metrics, "emporium_consumer_committed_offset"),
            gauge(metrics, "emporium_consumer_end_offset"),
            gauge(metrics, "emporium_consumer_lag_messages"),
            gauge(metrics, "emporium_consumer_lag_seconds"),
        );
        if let (Some(c), Some(e), Some(l), Some(s)) = read {
            if done(c, e, l, s) {
                return (c, e, l, s);
            }
        }
        assert!(Instant::now() < deadline, "{what}: never seen; last reading {read:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Consumer {
    stop: tokio::sync::watch::Sender<bool>,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

async fn start_consumer(brokers: &str, dir: &std::path::Path, name: &str) -> Consumer {
    let mut settings = test_settings(dir);
    settings.bus.kind = emporium::config::BusKind::Kafka;
    settings.bus.brokers = brokers.to_owned();
    settings.consumer.lag_interval = Duration::from_millis(100);
    let url = format!("sqlite://{}?mode=rwc", dir.join(format!("{name}.db")).display());
    let options = StoreOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        sqlite_synchronous: settings.store.sqlite_synchronous.clone(),
        lock_timeouts_secs: None,
    };
    let store = SqlStore::connect(&url, &options).await.expect("store");
    store.migrate().await.expect("migrated");
    let permits = Arc::new(Semaphore::new(0));
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(consumer::run(
        settings.bus.clone(),
        settings.consumer.clone(),
        ConsumerSpec {
            name: name.into(),
            group_id: GROUP.into(),
            topics: vec![TOPIC],
        },
        store,
        Arc::new(HeldHandler {
            permits: permits.clone(),
        }),
        metrics.clone(),
        stopped,
    ));
    Consumer { stop, permits, metrics }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_rises_while_messages_wait_and_falls_when_they_are_committed() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let brokers = broker.address();
    create_topic(&brokers).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let dir = tempfile::tempdir().expect("temp dir");
    let first = start_consumer(&brokers, dir.path(), "lag-a").await;

    // Nothing published yet: assigned, caught up.
    wait_for(&first.metrics, "assigned and caught up", |_, e, l, s| {
        e == 0.0 && l == 0.0 && s == 0.0
    })
    .await;
    let rebalances = first.metrics.consumer_rebalances.with_label_values(&[GROUP]).get();
    assert!(
        rebalances >= 1,
        "the assignment is counted as a rebalance: {rebalances}"
    );

    // Rise: five published, the first held in the handler, none committed.
    publish(&producer, 5).await;
    let (committed, end, _, _) = wait_for(&first.metrics, "lag 5", |_, _, l, _| l == 5.0).await;
    assert_eq!((committed, end), (0.0, 5.0));
    // Seconds behind grows while the oldest message waits (its own timestamp dates it).
    let (_, _, _, behind) = wait_for(&first.metrics, "seconds behind > 0.3", |_, _, l, s| l == 5.0 && s > 0.3).await;
    assert!(
        behind < 60.0,
        "seconds behind {behind} is the held message's age, not the epoch"
    );

    // Fall: released and committed one by one.
    first.permits.add_permits(5);
    let (committed, end, _, _) = wait_for(&first.metrics, "caught up again", |_, _, l, s| l == 0.0 && s == 0.0).await;
    assert_eq!((committed, end), (5.0, 5.0));

    // And again, partly: three more, two released.
    publish(&producer, 3).await;
    wait_for(&first.metrics, "lag 3", |_, e, l, _| e == 8.0 && l == 3.0).await;
    first.permits.add_permits(2);
    wait_for(&first.metrics, "lag 1", |c, e, l, _| c == 7.0 && e == 8.0 && l == 1.0).await;

    first.permits.close();
    consumer::stop_all(&first.stop, Duration::from_secs(10)).await;
    assert_eq!(first.stop.receiver_count(), 0, "the consumer left its group");
}
