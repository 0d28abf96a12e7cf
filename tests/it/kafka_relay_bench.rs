//! Measurement, not a test (`#[ignore]`d): outbox relay throughput to Kafka and
//! commit-to-broker-ack latency, on an Apache Kafka broker of its own (`common::kafka`)
//! and a SQLite store (`synchronous = full`), through the real write-behind, outbox
//! relay and idempotent `acks=all` producer. Run it on a release build:
//!
//! ```sh
//! eval "$(scripts/services.sh env kafka)"
//! cargo test --release --test it kafka_relay_bench:: -- --ignored --nocapture
//! ```
//!
//! Throughput: 20,000 committed events waiting in the outbox, timed until the relay has
//! published and marked all of them. Latency: 5,000 events committed one write-set at a
//! time at ~1,000/s while the relay runs as in the server; per event, from the moment its
//! group commit returned to the moment the relay had the broker's acknowledgement. The
//! bus is the real `KafkaBus` wrapped in a decorator that only notes the ack time.

use crate::common;

use async_trait::async_trait;
use common::kafka::KafkaBroker;
use dashmap::DashMap;
use emporium::actors::write_behind::WriteBehind;
use emporium::domain::events::{Event, EventType};
use emporium::events::kafka::KafkaBus;
use emporium::events::outbox::OutboxRelay;
use emporium::events::{BusError, EventBus};
use emporium::persistence::sql::StoreOptions;
use emporium::persistence::{SqlStore, WriteSet};
use emporium::telemetry::Metrics;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The real Kafka bus, noting when each event was acknowledged.
struct AckClock {
    inner: KafkaBus,
    acked: DashMap<uuid::Uuid, Instant>,
}

#[async_trait]
impl EventBus for AckClock {
    async fn publish(&self, events: &[&Event]) -> Vec<Result<(), BusError>> {
        let outcomes = self.inner.publish(events).await;
        let now = Instant::now();
        for (event, outcome) in events.iter().zip(&outcomes) {
            if outcome.is_ok() {
                self.acked.entry(event.id).or_insert(now);
            }
        }
        outcomes
    }
    fn kind(&self) -> &'static str {
        "kafka"
    }
}

fn event() -> Event {
    let order = uuid::Uuid::now_v7();
    Event::new(
        EventType::OrderCreated,
        order,
        emporium::domain::now_millis(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        serde_json::json!({"order_id": order, "total": {"amount": 1000, "currency": "KRW"}}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
async fn relay_throughput_and_commit_to_ack_latency() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = common::test_settings(dir.path());
    settings.bus.kind = emporium::config::BusKind::Kafka;
    settings.bus.brokers = broker.address();
    let store = SqlStore::connect(
        &settings.store_url(),
        &StoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(3),
            sqlite_synchronous: "full".into(),
            lock_timeouts_secs: None,
        },
    )
    .await
    .expect("store");
    store.migrate().await.expect("migrate");
    let bus = Arc::new(AckClock {
        inner: KafkaBus::new(&settings.bus).expect("producer"),
        acked: DashMap::new(),
    });
    KafkaBus::ensure_topics_in_background(&settings.bus);
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let relay = Arc::new(OutboxRelay::new(
        store.clone(),
        bus.clone(),
        settings.outbox.clone(),
        metrics.clone(),
    ));

    // Warm-up: topics exist, producer id assigned, connections open.
    let warm: Vec<Event> = (0..100).map(|_| event()).collect();
    store
        .commit(&[&WriteSet {
            events: warm,
            ..WriteSet::default()
        }])
        .await
        .expect("commit");
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.outbox_backlog().await.expect("backlog") > 0 {
        assert!(Instant::now() < deadline, "warm-up never drained");
        relay.drain().await.expect("drain");
    }

    // Throughput: a backlog of N committed events, relayed as fast as it goes.
    const BACKLOG: usize = 20_000;
    for _ in 0..BACKLOG / 1_000 {
        let set = WriteSet {
            events: (0..1_000).map(|_| event()).collect(),
            ..WriteSet::default()
        };
        store.commit(&[&set]).await.expect("commit");
    }
    let started = Instant::now();
    while store.outbox_backlog().await.expect("backlog") > 0 {
        relay.drain().await.expect("drain");
    }
    let elapsed = started.elapsed();
    let throughput = BACKLOG as f64 / elapsed.as_secs_f64();

    // Latency: events committed one write-set at a time while the relay runs as in the server.
    let committed = Arc::new(tokio::sync::Notify::new());
    let (write_behind, _) = WriteBehind::start(
        store.clone(),
        &settings.write_behind,
        metrics,
        committed.clone(),
        emporium::actors::cluster::Ownership::single(),
    );
    relay.relay_in_background(committed);
    const EVENTS: usize = 5_000;
    let commits: Arc<DashMap<uuid::Uuid, Instant>> = Arc::new(DashMap::new());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut tasks = Vec::with_capacity(EVENTS);
    for _ in 0..EVENTS {
        tick.tick().await;
        let (wb, commits) = (write_behind.clone(), commits.clone());
        tasks.push(tokio::spawn(async move {
            let e = event();
            let id = e.id;
            wb.commit(WriteSet {
                events: vec![e],
                ..WriteSet::default()
            })
            .await
            .expect("commit");
            commits.insert(id, Instant::now());
        }));
    }
    for t in tasks {
        t.await.expect("commit task");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let ids: Vec<uuid::Uuid> = commits.iter().map(|e| *e.key()).collect();
    while !ids.iter().all(|id| bus.acked.contains_key(id)) {
        assert!(Instant::now() < deadline, "not every event was acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    for id in &ids {
        let acked = *bus.acked.get(id).expect("acked");
        let committed = *commits.get(id).expect("committed");
        latency
            .record(acked.saturating_duration_since(committed).as_micros() as u64)
            .expect("record");
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "relay throughput: {BACKLOG} events in {:.2} s = {throughput:.0} events/s",
        elapsed.as_secs_f64()
    );
    println!(
        "commit-to-broker-ack latency over {EVENTS} events at ~1,000/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
}
