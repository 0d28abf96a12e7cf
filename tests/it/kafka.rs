//! The outbox relay on a real Apache Kafka broker (the shared one started by
//! `scripts/services.sh start kafka`, address in `EMPORIUM_TEST_KAFKA`, or brokers of a
//! test's own from `common::kafka`).
//!
//! Every committed outbox event reaches its topic exactly once (idempotent producer),
//! keyed by its aggregate, in outbox order per key, with the headers consumers rely on;
//! and while the broker is unreachable orders are still taken, nothing is given up on,
//! and everything is delivered once it is back. Without a broker these tests skip with a
//! reason, except under `CI=true`, where they fail.

use crate::common;

use common::kafka::{leader_of, KafkaBroker, KafkaCluster};
use common::proxy::Proxy;
use common::services::test_env;
use common::{Backend, TestApp};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// One consumed message, reduced to what the tests check.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    key: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// Reads the given topics from the beginning (fresh consumer group) until `done` says
/// enough has arrived, or fails after two minutes.
async fn consume_until(brokers: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("emporium-test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[
            "emporium.orders",
            "emporium.payments",
            "emporium.inventory",
            "emporium.products",
        ])
        .expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut received = Vec::new();
    while !done(&received) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &received {
                *per_topic.entry(r.topic.as_str()).or_default() += 1;
            }
            panic!("gave up waiting for messages; got {} {per_topic:?}", received.len());
        }
        let Ok(message) = tokio::time::timeout(left.min(Duration::from_secs(5)), consumer.recv()).await else {
            continue;
        };
        let message = message.expect("consume");
        let headers = message.headers().map_or_else(HashMap::new, |hs| {
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
        received.push(Received {
            topic: message.topic().to_owned(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            headers,
            body: serde_json::from_slice(message.payload().unwrap_or_default()).expect("JSON payload"),
        });
    }
    received
}

/// `(outbox id, event)` for every row in the test's own database, in outbox order.
async fn outbox_events(app: &TestApp) -> Vec<(i64, Value)> {
    common::outbox_events(&app.app.settings.store_url()).await
}

async fn outbox_max_attempts(app: &TestApp) -> i64 {
    let mut conn = sqlx::SqliteConnection::connect(&app.app.settings.store_url())
        .await
        .expect("sqlite");
    sqlx::query("SELECT COALESCE(MAX(attempts), 0) AS a FROM outbox WHERE published = 0")
        .fetch_one(&mut conn)
        .await
        .expect("attempts")
        .get("a")
}

async fn wait_backlog_empty(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.app.store.outbox_backlog().await.expect("backlog") > 0 {
        if Instant::now() > deadline {
            let mut conn = sqlx::SqliteConnection::connect(&app.app.settings.store_url())
                .await
                .expect("sqlite");
            let errors: Vec<(i64, Option<String>)> =
                sqlx::query_as("SELECT attempts, last_error FROM outbox WHERE published = 0 LIMIT 3")
                    .fetch_all(&mut conn)
                    .await
                    .expect("errors");
            panic!("outbox never drained: {errors:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kafka_app(brokers: &str, tweak: impl FnOnce(&mut emporium::config::Settings)) -> TestApp {
    let brokers = brokers.to_owned();
    TestApp::spawn_with(Backend::Sqlite, move |s| {
        s.bus.kind = emporium::config::BusKind::Kafka;
        s.bus.brokers = brokers;
        s.bus.partitions = 3;
        tweak(s);
    })
    .await
}

/// Places `attempts` one-unit orders for `sku` (with a known `traceparent`), declining
/// every third payment; returns the ids of the accepted ones once they are final.
async fn sell(app: &TestApp, sku: &str, attempts: usize) -> Vec<String> {
    let buyer = app.token("kafka-buyer");
    let mut accepted = Vec::new();
    for i in 0..attempts {
        let token = if i % 3 == 2 { "test_decline" } else { "test_ok" };
        let r = app
            .client
            .post(app.url("/v1/orders"))
            .bearer_auth(&buyer)
            .header("traceparent", TRACEPARENT)
            .json(&json!({"items": [{"sku": sku, "qty": 1}], "payment": {"token": token}}))
            .send()
            .await
            .expect("request");
        match r.status().as_u16() {
            201 => accepted.push(
                r.json::<Value>().await.expect("json")["id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            ),
            409 => {}
            other => panic!("order answered {other}"),
        }
    }
    for id in &accepted {
        app.final_status(&buyer, id).await;
    }
    accepted
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Every outbox event arrived once, on its topic, keyed by its aggregate, with its
/// headers, and each key's events in outbox order.
fn assert_delivered(outbox: &[(i64, Value)], received: &[Received]) {
    let mut by_id: HashMap<&str, Vec<&Received>> = HashMap::new();
    for r in received {
        if let Some(id) = r.headers.get("event_id") {
            by_id.entry(id.as_str()).or_default().push(r);
        }
    }
    let mut expected_order: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (_, event) in outbox {
        let id = event["id"].as_str().expect("event id");
        let copies = by_id.get(id).map_or(0, Vec::len);
        assert_eq!(copies, 1, "event {id} ({}) arrived {copies} times", event["type"]);
        let got = by_id[id][0];
        assert_eq!(&got.body, event, "the message body is the outbox event");
        assert_eq!(got.key, event["aggregate_id"].as_str().expect("aggregate"));
        assert_eq!(got.headers["event_type"], event["type"].as_str().expect("type"));
        assert_eq!(got.headers["schema_version"], event["schema_version"].to_string());
        assert_eq!(got.headers["content-type"], "application/json");
        if let Some(tp) = event["traceparent"].as_str() {
            assert_eq!(got.headers["traceparent"], tp);
        }
        expected_order
            .entry((got.topic.clone(), got.key.clone()))
            .or_default()
            .push(id.to_owned());
    }
    for ((topic, key), ids) in &expected_order {
        let seen: Vec<&str> = received
            .iter()
            .filter(|r| &r.topic == topic && &r.key == key)
            .filter_map(|r| r.headers.get("event_id").map(String::as_str))
            .collect();
        assert_eq!(seen, *ids, "events of {key} on {topic} out of outbox order");
    }
}

fn all_arrived(outbox: &[(i64, Value)]) -> impl Fn(&[Received]) -> bool + '_ {
    move |received| {
        let got: std::collections::HashSet<&str> = received
            .iter()
            .filter_map(|r| r.headers.get("event_id").map(String::as_str))
            .collect();
        outbox
            .iter()
            .all(|(_, e)| got.contains(e["id"].as_str().unwrap_or_default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outbox_event_reaches_kafka_once_in_order_with_headers() {
    let Some(brokers) = test_env("EMPORIUM_TEST_KAFKA") else {
        return;
    };
    let app = kafka_app(&brokers, |_| {}).await;
    let sku = format!("KAFKA-{}", uuid::Uuid::new_v4().simple());
    app.product(&[(&sku, 6)]).await;
    // Declined payments give their unit back, so later attempts can still buy it.
    let accepted = sell(&app, &sku, 12).await;
    assert!(
        accepted.len() > 6 && accepted.len() < 12,
        "6 units, 12 attempts: {}",
        accepted.len()
    );
    app.assert_consistent().await;
    wait_backlog_empty(&app).await;

    let outbox = outbox_events(&app).await;
    let types: std::collections::BTreeSet<&str> = outbox.iter().filter_map(|(_, e)| e["type"].as_str()).collect();
    for t in [
        "product_upserted",
        "order_created",
        "payment_succeeded",
        "payment_failed",
        "order_completed",
        "order_cancelled",
    ] {
        assert!(types.contains(t), "the sale produced a {t} event");
    }
    let received = consume_until(&brokers, all_arrived(&outbox)).await;
    let ours: Vec<Received> = received
        .into_iter()
        .filter(|r| {
            outbox
                .iter()
                .any(|(_, e)| r.headers.get("event_id").map(String::as_str) == e["id"].as_str())
        })
        .collect();
    assert_delivered(&outbox, &ours);

    let (status, ready) = app.get(&app.admin, "/health/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["bus"], json!({"kind": "kafka", "reachable": true}));
}

/// A broker of the test's own, reachable only through a proxy the test can cut (it
/// advertises the proxy's address, so clients never bypass it).
struct ProxiedBroker {
    proxy: Proxy,
    _broker: KafkaBroker,
}

impl ProxiedBroker {
    async fn start() -> Option<Self> {
        // The proxy's port is known before the broker's: the broker advertises it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let proxy = Proxy::start(target).await;
        let broker = KafkaBroker::start_on(port, &[format!("advertised.listeners=PLAINTEXT://{}", proxy.addr)]).await?;
        Some(Self { proxy, _broker: broker })
    }

    fn brokers(&self) -> String {
        self.proxy.addr.to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_keeps_taking_orders_and_delivers_everything_afterwards() {
    let Some(broker) = ProxiedBroker::start().await else {
        return;
    };
    let app = kafka_app(&broker.brokers(), |s| {
        s.bus.message_timeout = Duration::from_millis(1500);
        s.outbox.backoff_base = Duration::from_millis(20);
        // Low on purpose: an outage must not use up the attempts of a rejected event.
        s.outbox.max_attempts = 2;
    })
    .await;
    let sku = format!("OUTAGE-{}", uuid::Uuid::new_v4().simple());
    app.product(&[(&sku, 20)]).await;
    assert_eq!(sell(&app, &sku, 3).await.len(), 3);
    wait_backlog_empty(&app).await;

    broker.proxy.cut();
    let during_outage = sell(&app, &sku, 6).await;
    assert_eq!(during_outage.len(), 6, "orders are taken while the broker is down");
    // Retried past max_attempts, still in the outbox, nothing given up on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_max_attempts(&app).await <= 2 {
        assert!(
            Instant::now() < deadline,
            "the relay stopped retrying during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, ready) = app.get(&app.admin, "/health/ready").await;
    assert_eq!(status, 200, "a broker outage does not stop order intake");
    assert_eq!(ready["bus"]["reachable"], false);
    assert!(ready["outbox_backlog"].as_i64().expect("backlog") > 0);
    assert!(app.app.store.failed_events(100).await.expect("failed").is_empty());

    broker.proxy.restore();
    wait_backlog_empty(&app).await;
    app.assert_consistent().await;
    let outbox = outbox_events(&app).await;
    let received = consume_until(&broker.brokers(), all_arrived(&outbox)).await;
    // The broker is this test's own: every message on it must be one of our events,
    // and librdkafka's idempotent producer keeps retries from duplicating any.
    assert_delivered(&outbox, &received);
    let (_, ready) = app.get(&app.admin, "/health/ready").await;
    assert_eq!(ready["bus"]["reachable"], true);
}

/// Every outbox event arrived at least once, with at most one effect: by event id each
/// is there, and per key the first copies come in outbox order. (A broker that crashed
/// after appending a batch and before acknowledging it makes the relay send that batch
/// again; consumers drop the second copy by its event id.)
fn assert_delivered_once_in_effect(outbox: &[(i64, Value)], received: &[Received]) {
    // First copy of each event id, in arrival order, with its topic.
    let mut first_seen: Vec<(&str, &str)> = Vec::new();
    for r in received {
        if let Some(id) = r.headers.get("event_id") {
            if !first_seen.iter().any(|(seen, _)| seen == id) {
                first_seen.push((id, &r.topic));
            }
        }
    }
    // Order holds per partition: per topic and key.
    let mut by_key: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (_, event) in outbox {
        let id = event["id"].as_str().expect("event id");
        let Some((_, topic)) = first_seen.iter().find(|(seen, _)| *seen == id) else {
            panic!("event {id} ({}) never arrived", event["type"]);
        };
        by_key
            .entry((topic, event["aggregate_id"].as_str().expect("aggregate")))
            .or_default()
            .push(id);
    }
    for ((topic, key), ids) in by_key {
        let seen: Vec<&str> = first_seen
            .iter()
            .filter(|(id, t)| *t == topic && ids.contains(id))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(seen, ids, "events of {key} on {topic} out of outbox order");
    }
}

/// Sells on a background task while `fault` runs, then waits for every order and for
/// the outbox to drain; the outbox once it has.
async fn sell_through<F, Fut>(app: &TestApp, sku: &str, fault: F) -> Vec<(i64, Value)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (sale, stop) = {
        let client = app.client.clone();
        let url = app.url("/v1/orders");
        let buyer = app.token("kafka-fault-buyer");
        let sku = sku.to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let until = stop.clone();
        let sale = tokio::spawn(async move {
            let mut accepted = 0;
            while !until.load(std::sync::atomic::Ordering::SeqCst) {
                let r = client
                    .post(&url)
                    .bearer_auth(&buyer)
                    .json(&json!({"items": [{"sku": sku, "qty": 1}], "payment": {"token": "test_ok"}}))
                    .send()
                    .await
                    .expect("request");
                match r.status().as_u16() {
                    201 => accepted += 1,
                    409 => {}
                    other => panic!("order answered {other} while the broker was failing"),
                }
                // Paced: the point is orders across the fault, not a backlog so large
                // that consuming it back outlasts the test's patience on a busy machine.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            accepted
        });
        (sale, stop)
    };
    fault().await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let accepted = sale.await.expect("sale task");
    assert!(accepted > 0, "orders were taken while the broker failed");
    app.assert_consistent().await;
    wait_backlog_empty(app).await;
    outbox_events(app).await
}

/// Waits until the outbox has events the relay could not publish yet (the broker is
/// down and the sale goes on), bounded.
async fn wait_backlog_over(app: &TestApp, rows: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.app.store.outbox_backlog().await.expect("backlog") <= rows {
        assert!(
            Instant::now() < deadline,
            "no backlog built up while the broker was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_sale_comes_back_with_its_log_and_every_event_arrives() {
    let Some(mut broker) = KafkaBroker::start().await else {
        return;
    };
    let app = kafka_app(&broker.address(), |s| {
        s.bus.message_timeout = Duration::from_millis(1500);
        s.outbox.backoff_base = Duration::from_millis(20);
        s.outbox.max_attempts = 2;
    })
    .await;
    let sku = format!("KILLED-{}", uuid::Uuid::new_v4().simple());
    app.product(&[(&sku, 100_000)]).await;
    // Events published before the crash must still be on the broker after it.
    assert_eq!(sell(&app, &sku, 3).await.len(), 3);
    wait_backlog_empty(&app).await;
    let before_crash = outbox_events(&app).await;

    let outbox = sell_through(&app, &sku, || async {
        broker.kill9();
        wait_backlog_over(&app, 5).await;
        broker.restart();
        common::kafka::wait_for_brokers(&broker.address(), 1).await;
    })
    .await;
    assert!(outbox.len() > before_crash.len());
    let received = consume_until(&broker.address(), all_arrived(&outbox)).await;
    assert_delivered_once_in_effect(&outbox, &received);
    assert!(app.app.store.failed_events(100).await.expect("failed").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_partition_leader_of_three_brokers_loses_no_acknowledged_event() {
    let Some(mut cluster) = KafkaCluster::start(3).await else {
        return;
    };
    let bootstrap = cluster.bootstrap();
    let app = kafka_app(&bootstrap, |s| {
        s.bus.replication_factor = 3;
        s.bus.partitions = 1;
        s.outbox.backoff_base = Duration::from_millis(20);
        s.outbox.max_attempts = 1_000;
    })
    .await;
    let sku = format!("LEADER-{}", uuid::Uuid::new_v4().simple());
    app.product(&[(&sku, 100_000)]).await;
    assert_eq!(sell(&app, &sku, 3).await.len(), 3);
    wait_backlog_empty(&app).await;
    let leader = leader_of(&bootstrap, "emporium.orders", 0).await.expect("a leader");

    let outbox = sell_through(&app, &sku, || async {
        cluster.broker(leader).kill9();
        // The controller moves leadership to an in-sync follower; the relay goes on
        // with acks=all on two replicas (min.insync.replicas = 2).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match leader_of(&bootstrap, "emporium.orders", 0).await {
                Some(new) if new != leader => break,
                _ => {
                    assert!(Instant::now() < deadline, "no new leader within 60 s");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        // More orders are taken and their events published through the new leader.
        let before = outbox_events(&app).await.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while outbox_events(&app).await.len() < before + 10 {
            assert!(Instant::now() < deadline, "the sale stalled after the leader died");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_backlog_empty(&app).await;
    })
    .await;
    let survivors: String = cluster
        .brokers
        .iter()
        .filter(|b| b.node_id as i32 != leader)
        .map(KafkaBroker::address)
        .collect::<Vec<_>>()
        .join(",");
    let mut per_topic: BTreeMap<String, usize> = BTreeMap::new();
    for (_, e) in &outbox {
        let topic = match e["type"].as_str().unwrap_or_default() {
            t if t.starts_with("order_") => "emporium.orders",
            t if t.starts_with("payment_") => "emporium.payments",
            t if t.starts_with("inventory_") => "emporium.inventory",
            _ => "emporium.products",
        };
        *per_topic.entry(topic.to_owned()).or_default() += 1;
    }
    eprintln!("outbox: {} events {per_topic:?}", outbox.len());
    let received = consume_until(&survivors, all_arrived(&outbox)).await;
    assert_delivered_once_in_effect(&outbox, &received);
}
