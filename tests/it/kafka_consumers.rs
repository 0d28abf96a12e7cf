//! Kafka consumers on a real Apache Kafka broker (one per test, `common::kafka`):
//! `payment.mode = "kafka"` with the payment service (`emporium payment-service`, run
//! in-process here) completing orders end to end, also across a server restart; a
//! redelivered payment event having no second effect; and a poison message landing in
//! `emporium.dlq` and `failed_events`, from where the admin endpoint replays it.
//! Without the broker binary these tests skip with a reason, except under `CI=true`.

use crate::common;

use common::kafka::KafkaBroker;
use common::{test_settings, Backend, TestApp};
use emporium::app::payment_service::PaymentService;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use sqlx::{Connection, Row};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

async fn kafka_app(
    brokers: &str,
    data_dir: Option<&Path>,
    tweak: impl FnOnce(&mut emporium::config::Settings),
) -> TestApp {
    let brokers = brokers.to_owned();
    let data_dir = data_dir.map(Path::to_path_buf);
    TestApp::spawn_with(Backend::Sqlite, move |s| {
        kafka_settings(s, brokers);
        if let Some(dir) = data_dir {
            s.server.data_dir = dir;
        }
        tweak(s);
    })
    .await
}

/// `payment.mode = "kafka"` on the broker at `brokers`, with fast retries.
fn kafka_settings(s: &mut emporium::config::Settings, brokers: String) {
    s.bus.kind = emporium::config::BusKind::Kafka;
    s.bus.brokers = brokers;
    s.bus.partitions = 2;
    s.payment.mode = emporium::config::PaymentMode::Kafka;
    s.consumer.backoff_base = Duration::from_millis(10);
    s.consumer.max_attempts = 3;
    s.outbox.poll_interval = Duration::from_millis(20);
}

/// The payment service on its own actix system and data dir, as its own process would run.
struct PaymentServiceProcess {
    store_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl PaymentServiceProcess {
    fn start(brokers: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(dir.path());
        settings.bus.kind = emporium::config::BusKind::Kafka;
        settings.bus.brokers = brokers.to_owned();
        settings.bus.partitions = 2;
        settings.consumer.backoff_base = Duration::from_millis(10);
        settings.outbox.poll_interval = Duration::from_millis(20);
        let store_url = settings.payment_service_store_url();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let service = PaymentService::start(&settings).await.expect("payment service starts");
                started_tx.send(()).expect("test alive");
                let _ = stop_rx.await;
                service.shutdown().await;
            })
        });
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("payment service started");
        Self {
            store_url,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for PaymentServiceProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn sqlite_rows(store_url: &str, sql: &str) -> Vec<sqlx::sqlite::SqliteRow> {
    let mut conn = sqlx::SqliteConnection::connect(store_url).await.expect("sqlite");
    sqlx::query(sql).fetch_all(&mut conn).await.expect("query")
}

async fn count(store_url: &str, sql: &str) -> i64 {
    sqlite_rows(store_url, sql).await[0].get::<i64, _>(0)
}

async fn place(app: &TestApp, buyer: &str, sku: &str, token: &str) -> String {
    let (status, order) = app
        .order(
            buyer,
            json!({"items": [{"sku": sku, "qty": 1}], "payment": {"token": token}}),
        )
        .await;
    assert_eq!(status, 201, "order placed: {order}");
    assert_eq!(order["status"], "PENDING_PAYMENT");
    order["id"].as_str().expect("id").to_owned()
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer")
}

/// Publishes a message to `topic` the way the payment service's relay would.
async fn publish(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8], event_id: &str, event_type: &str) {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event_id",
            value: Some(event_id),
        })
        .insert(Header {
            key: "event_type",
            value: Some(event_type),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload).headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("broker acknowledged");
}

fn payment_event(id: uuid::Uuid, event_type: &str, order: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "type": event_type, "aggregate_id": order, "occurred_at": 0,
        "schema_version": 1, "traceparent": null,
        "data": {"order_id": order, "amount": {"amount": 1000, "currency": "KRW"}, "attempts": 1},
    }))
    .expect("json")
}

/// Publishes a `payment_succeeded` for `order` with event id `id`, as the payment service would.
async fn publish_payment_succeeded(producer: &FutureProducer, id: uuid::Uuid, order: &str) {
    let event = payment_event(id, "payment_succeeded", order);
    publish(
        producer,
        "emporium.payments",
        order,
        &event,
        &id.to_string(),
        "payment_succeeded",
    )
    .await;
}

#[derive(Debug)]
struct Received {
    key: String,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

/// Reads `topic` from the beginning (a fresh group) until `done`, or fails after 60 s.
async fn consume_until(brokers: &str, topic: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = Vec::new();
    while !done(&received) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "gave up waiting on {topic}; got {received:?}");
        let Ok(message) = tokio::time::timeout(left.min(Duration::from_secs(5)), consumer.recv()).await else {
            continue;
        };
        let message = message.expect("consume");
        received.push(Received {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            headers: message.headers().map_or_else(HashMap::new, |hs| {
                hs.iter()
                    .map(|h| {
                        let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        (h.key.to_owned(), v.unwrap_or_default())
                    })
                    .collect()
            }),
            payload: message.payload().unwrap_or_default().to_vec(),
        });
    }
    received
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "emporium=t61rcWkgMzE,rojo=00f067aa0ba902b7";

async fn status_of(app: &TestApp, token: &str, id: &str) -> String {
    let (_, order) = app.get(token, &format!("/v1/orders/{id}")).await;
    order["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_complete_end_to_end_through_the_payment_service() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let service = PaymentServiceProcess::start(&broker.address());
    let app = kafka_app(&broker.address(), None, |_| {}).await;
    let sku = "PAYSVC-1";
    app.product(&[(sku, 10)]).await;
    let buyer = app.token("kafka-payer");
    let tokens = ["test_ok", "test_flaky", "test_decline"];
    let mut ids = Vec::new();
    for token in tokens {
        ids.push(place(&app, &buyer, sku, token).await);
    }
    // The trace context of the request travels to the payment service and back.
    let traced = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&buyer)
        .header("traceparent", TRACEPARENT)
        .header("tracestate", TRACESTATE)
        .json(&json!({"items": [{"sku": sku, "qty": 1}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(traced.status(), 201);
    ids.push(
        traced.json::<Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned(),
    );
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(app.final_status(&buyer, id).await);
    }
    assert_eq!(finals, ["COMPLETED", "COMPLETED", "CANCELLED", "COMPLETED"]);
    let (_, declined) = app.get(&buyer, &format!("/v1/orders/{}", ids[2])).await;
    assert_eq!(declined["cancel_reason"], "payment_failed");
    app.assert_consistent().await;
    assert_eq!(app.inventory(sku).await, (7, 0));

    // The payment side's events come from the payment service's own outbox, one per
    // order, with the attempts the simulated gateway needed; Emporium wrote none.
    let store = app.app.settings.store_url();
    let ours = common::outbox_events(&store).await;
    assert!(!ours
        .iter()
        .any(|(_, e)| e["type"].as_str().is_some_and(|t| t.starts_with("payment_"))));
    let payments = common::outbox_events(&service.store_url).await;
    let by_order: HashMap<String, (String, Value)> = payments
        .iter()
        .map(|(_, event)| {
            (
                event["aggregate_id"].as_str().expect("key").to_owned(),
                (event["type"].as_str().expect("type").to_owned(), event.clone()),
            )
        })
        .collect();
    assert_eq!(payments.len(), 4, "one payment event per order");
    assert_eq!(by_order[&ids[1]].0, "payment_succeeded");
    assert_eq!(by_order[&ids[1]].1["data"]["attempts"], 3, "test_flaky fails twice");
    assert_eq!(by_order[&ids[2]].0, "payment_failed");
    assert_eq!(by_order[&ids[3]].1["traceparent"], TRACEPARENT);
    assert_eq!(by_order[&ids[3]].1["tracestate"], TRACESTATE);
    let on_kafka = consume_until(&broker.address(), "emporium.payments", |r| {
        r.iter().any(|m| m.key == ids[3])
    })
    .await;
    let message = on_kafka
        .iter()
        .find(|m| m.key == ids[3])
        .expect("payment event of the traced order");
    assert_eq!(message.headers["traceparent"], TRACEPARENT);
    assert_eq!(message.headers["tracestate"], TRACESTATE);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM processed_events WHERE consumer = 'saga-payments'"
        )
        .await,
        4
    );
}

/// Cluster mode (docs/cluster.md) on one MariaDB: three nodes share the saga's consumer
/// group over two partitions, so at least one node consumes no payment event at all and
/// the nodes that do receive outcomes for orders whose sagas run elsewhere; they hand each
/// to the node running the saga, which applies it with the consumed event's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_payment_outcomes_reach_the_node_running_the_saga() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let Some(Backend::MySql(mysql)) = Backend::mysql().await else {
        return;
    };
    let _service = PaymentServiceProcess::start(&broker.address());
    let brokers = broker.address();
    let app = TestApp::spawn_with(Backend::MySqlCluster(mysql), move |s| kafka_settings(s, brokers)).await;
    let skus: Vec<String> = (0..12).map(|i| format!("KCLUSTER-{i}")).collect();
    let stocked: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 5)).collect();
    app.product(&stocked).await;
    let buyer = app.token("kafka-cluster-payer");
    let mut ids = Vec::new();
    for sku in &skus {
        ids.push(place(&app, &buyer, sku, "test_ok").await);
    }
    ids.push(place(&app, &buyer, &skus[0], "test_decline").await);
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(app.final_status(&buyer, id).await);
    }
    let mut expected = vec!["COMPLETED"; skus.len()];
    expected.push("CANCELLED");
    assert_eq!(finals, expected);
    app.assert_consistent().await;
    for sku in &skus[1..] {
        assert_eq!(app.inventory(sku).await, (4, 0), "{sku}");
    }
    let mut conn = sqlx::MySqlConnection::connect(&app.app.settings.store_url())
        .await
        .expect("mysql");
    let processed: i64 = sqlx::query("SELECT COUNT(*) FROM processed_events WHERE consumer = 'saga-payments'")
        .fetch_one(&mut conn)
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        processed,
        ids.len() as i64,
        "each outcome applied once, wherever it was consumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_in_flight_at_a_restart_still_finish() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let data = tempfile::tempdir().expect("data dir");
    let sku = "RESTART-1";
    let (ids, buyer) = {
        // No payment service yet: the orders wait in PENDING_PAYMENT when the server stops.
        let app = kafka_app(&broker.address(), Some(data.path()), |_| {}).await;
        app.product(&[(sku, 5)]).await;
        let buyer = app.token("restart-buyer");
        // First a payment outcome the running server consumes, so the server that stops
        // is one whose consumer had joined its group and committed an offset.
        // (A real restart stops a member that has joined its group.)
        let before = place(&app, &buyer, sku, "test_ok").await;
        let event_id = uuid::Uuid::now_v7();
        let producer = producer(&broker.address());
        publish_payment_succeeded(&producer, event_id, &before).await;
        assert_eq!(app.final_status(&buyer, &before).await, "COMPLETED");
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(place(&app, &buyer, sku, "test_ok").await);
        }
        (ids, buyer)
    };
    let app = kafka_app(&broker.address(), Some(data.path()), |_| {}).await;
    for id in &ids {
        assert_eq!(status_of(&app, &buyer, id).await, "PENDING_PAYMENT");
    }
    let _service = PaymentServiceProcess::start(&broker.address());
    for id in &ids {
        assert_eq!(app.final_status(&buyer, id).await, "COMPLETED");
    }
    app.assert_consistent().await;
    assert_eq!(app.inventory(sku).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_payment_event_has_no_second_effect() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    // One partition: the sentinel published last is consumed after both copies.
    let app = kafka_app(&broker.address(), None, |s| s.bus.partitions = 1).await;
    let sku = "REDELIVER-1";
    app.product(&[(sku, 5)]).await;
    let buyer = app.token("redelivery-buyer");
    let order = place(&app, &buyer, sku, "test_ok").await;
    let sentinel = place(&app, &buyer, sku, "test_ok").await;

    let producer = producer(&broker.address());
    let event_id = uuid::Uuid::now_v7();
    for _ in 0..2 {
        publish_payment_succeeded(&producer, event_id, &order).await;
    }
    let sentinel_id = uuid::Uuid::now_v7();
    publish_payment_succeeded(&producer, sentinel_id, &sentinel).await;

    assert_eq!(app.final_status(&buyer, &order).await, "COMPLETED");
    assert_eq!(app.final_status(&buyer, &sentinel).await, "COMPLETED");
    app.assert_consistent().await;
    let store = app.app.settings.store_url();
    let one = |sql: String| {
        let store = store.clone();
        async move { count(&store, &sql).await }
    };
    assert_eq!(
        one(format!(
            "SELECT COUNT(*) FROM inventory_journal WHERE kind = 'confirm' AND order_id = '{order}'"
        ))
        .await,
        1,
        "one confirm journal entry"
    );
    assert_eq!(
        common::outbox_count(&store, "order_completed", &order).await,
        1,
        "one transition to COMPLETED"
    );
    assert_eq!(
        one(format!(
            "SELECT COUNT(*) FROM processed_events WHERE event_id = '{event_id}'"
        ))
        .await,
        1
    );
    assert_eq!(app.inventory(sku).await, (3, 0), "two units sold, not three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_lands_in_the_dlq_and_failed_events_and_replay_publishes_it_again() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let app = kafka_app(&broker.address(), None, |_| {}).await;
    let producer = producer(&broker.address());
    // Not an event at all, and an event the saga can never apply (no such order).
    let garbage_id = uuid::Uuid::new_v4();
    publish(
        &producer,
        "emporium.payments",
        "poison",
        b"{not json",
        &garbage_id.to_string(),
        "payment_succeeded",
    )
    .await;
    let unknown_order = uuid::Uuid::now_v7().to_string();
    let poison_id = uuid::Uuid::now_v7();
    let poison = payment_event(poison_id, "payment_succeeded", &unknown_order);
    publish_payment_succeeded(&producer, poison_id, &unknown_order).await;

    let dlq = consume_until(&broker.address(), "emporium.dlq", |r| r.len() >= 2).await;
    let by_id: HashMap<&str, &Received> = dlq.iter().map(|r| (r.headers["event_id"].as_str(), r)).collect();
    let garbage = by_id[garbage_id.to_string().as_str()];
    assert_eq!(garbage.payload, b"{not json");
    assert_eq!(garbage.key, "poison");
    assert!(garbage.headers["dlq_error"].starts_with("not an event"));
    assert_eq!(garbage.headers["dlq_attempts"], "1");
    let dead = by_id[poison_id.to_string().as_str()];
    assert_eq!(dead.payload, poison, "the original message, untouched");
    assert_eq!(dead.key, unknown_order);
    assert_eq!(dead.headers["event_type"], "payment_succeeded", "original headers kept");
    assert_eq!(dead.headers["dlq_consumer"], "saga-payments");
    assert_eq!(dead.headers["dlq_topic"], "emporium.payments");
    assert_eq!(dead.headers["dlq_attempts"], "3", "consumer.max_attempts");
    assert!(
        dead.headers["dlq_error"].contains("does not exist"),
        "{:?}",
        dead.headers
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let failed = app.app.store.failed_event_sources().await.expect("failed events");
        if failed.len() >= 2 {
            break failed;
        }
        assert!(Instant::now() < deadline, "dead letters never reached failed_events");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(failed
        .iter()
        .all(|(source, _, replayed)| source == "saga-payments" && !replayed));

    // Replay: users may not, admins may; only the event is replayable.
    let replay = app.url("/v1/admin/events/replay");
    let user = app.token("not-an-admin");
    let r = app
        .client
        .post(&replay)
        .bearer_auth(&user)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.expect("problem")["type"], "/problems/forbidden");
    let r = app
        .client
        .post(&replay)
        .bearer_auth(&app.admin)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"replayed": 1}));
    let (_, openapi) = app.get(&app.admin, "/openapi.json").await;
    assert!(openapi["paths"]["/v1/admin/events/replay"]["post"].is_object());

    // The relay publishes it again under its own id; the saga fails it again into the DLQ.
    let poison_key = poison_id.to_string();
    let copies = |r: &[Received]| {
        r.iter()
            .filter(|m| m.headers.get("event_id") == Some(&poison_key))
            .count()
    };
    consume_until(&broker.address(), "emporium.payments", |r| copies(r) >= 2).await;
    consume_until(&broker.address(), "emporium.dlq", |r| copies(r) >= 2).await;
}

/// The payment service's `payment_succeeded` arrives after the customer cancelled (a
/// slow charge), and again (a redelivery with the same event id, and a second event id
/// for the same order as a re-publishing payment service would send): the order stays
/// CANCELLED, and its payment is refunded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_that_lands_after_a_cancel_is_refunded_once_however_often_it_arrives() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    // One partition: the sentinel published last is consumed after every copy.
    let app = kafka_app(&broker.address(), None, |s| s.bus.partitions = 1).await;
    let sku = "LATE-PAYMENT-1";
    app.product(&[(sku, 5)]).await;
    let buyer = app.token("late-payment-buyer");
    // No payment service runs: the test is the payment side and answers late.
    let order = place(&app, &buyer, sku, "test_ok").await;
    let sentinel = place(&app, &buyer, sku, "test_ok").await;
    let (status, body) = app.cancel(&buyer, &order).await;
    assert_eq!(status, 200, "{body}");

    let producer = producer(&broker.address());
    let first = uuid::Uuid::now_v7();
    let again = uuid::Uuid::now_v7();
    for id in [first, first, again] {
        publish_payment_succeeded(&producer, id, &order).await;
    }
    let sentinel_id = uuid::Uuid::now_v7();
    publish_payment_succeeded(&producer, sentinel_id, &sentinel).await;
    assert_eq!(app.final_status(&buyer, &sentinel).await, "COMPLETED");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = app.get(&buyer, &format!("/v1/orders/{order}")).await;
        if body["payment"]["status"] == "refunded" {
            assert_eq!(body["status"], "CANCELLED");
            break;
        }
        assert!(Instant::now() < deadline, "never refunded: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    app.assert_consistent().await;
    let store = app.app.settings.store_url();
    let one = |sql: String| {
        let store = store.clone();
        async move { count(&store, &sql).await }
    };
    assert_eq!(
        common::outbox_count(&store, "payment_refunded", &order).await,
        1,
        "refunded once"
    );
    assert_eq!(
        one(format!("SELECT COUNT(*) FROM refunds WHERE order_id = '{order}'")).await,
        1
    );
    assert_eq!(
        one(format!(
            "SELECT COUNT(*) FROM processed_events WHERE event_id IN ('{first}', '{again}')"
        ))
        .await,
        2,
        "both payment events recorded as processed"
    );
    assert_eq!(
        app.metric("emporium_refunds_total{outcome=\"requested\"}").await,
        1.0,
        "three deliveries, one refund requested"
    );
    assert_eq!(app.inventory(sku).await, (4, 0), "only the sentinel sold");
}
