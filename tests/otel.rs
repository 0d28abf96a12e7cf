//! Traces leave over OTLP/HTTP and follow one order end to end: an OTLP receiver
//! run by this test (a real actix-web server on a random port decoding the protobuf
//! export requests) collects what the real exporter sends while a real Emporium
//! (SQLite file, real HTTP) takes an order carrying a known `traceparent`.
//!
//! Asserted: the request span continues the caller's trace (same trace id, parent =
//! the caller's span), and the inventory reservation, the group commit, the saga's
//! payment attempt, every outbox publish of the order and a consumer of the published
//! event are all in that trace, each under the right parent. The consumer is this
//! test subscribing to the embedded bus and continuing the event's `traceparent` with
//! `emporium::telemetry::continue_trace`, exactly as a Kafka consumer does with the
//! header.
//!
//! The Kafka variant does the same through a real Apache Kafka broker (`EMPORIUM_TEST_KAFKA`):
//! the consumer is an rdkafka consumer continuing the `traceparent` header.
//!
//! The tracing subscriber is global to the process: both tests share one receiver and
//! tell their spans apart by trace id.

// Its own test binary: it installs the process-wide tracing subscriber. It shares the
// harness of tests/it/ and uses only part of it.
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use actix_web::{web, HttpResponse, HttpServer};
use common::{Backend, TestApp};
use emporium::telemetry::traces::{self, TraceSettings};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const KAFKA_TRACE_ID: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The process's exporter and what its receiver got, set up once.
fn telemetry() -> &'static (traces::Telemetry, Received) {
    static TELEMETRY: std::sync::OnceLock<(traces::Telemetry, Received)> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let received: Received = Arc::default();
        let endpoint = start_receiver(received.clone());
        let telemetry = traces::init(&TraceSettings {
            log_format: "pretty".into(),
            log_level: "warn".into(),
            otlp_endpoint: endpoint,
            export_delay: Duration::from_millis(100),
        });
        assert!(telemetry.is_exporting(), "the exporter was installed");
        (telemetry, received)
    })
}

#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

type Received = Arc<Mutex<Vec<Span>>>;

async fn export(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut spans = received.lock().expect("receiver lock");
    for span in request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        let attributes = span
            .attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(AnyValue::StringValue(s)) => s.clone(),
                    Some(AnyValue::IntValue(i)) => i.to_string(),
                    Some(AnyValue::BoolValue(b)) => b.to_string(),
                    Some(other) => format!("{other:?}"),
                    None => String::new(),
                };
                (kv.key.clone(), value)
            })
            .collect();
        spans.push(Span {
            trace_id: hex::encode(&span.trace_id),
            span_id: hex::encode(&span.span_id),
            parent: hex::encode(&span.parent_span_id),
            name: span.name.clone(),
            attributes,
        });
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(Vec::<u8>::new())
}

/// Starts the OTLP receiver on its own thread; returns its base URL.
fn start_receiver(received: Received) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let data = web::Data::new(received);
            let server = HttpServer::new(move || {
                actix_web::App::new()
                    .app_data(data.clone())
                    .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                    .route("/v1/traces", web::post().to(export))
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .expect("receiver binds");
            tx.send(server.addrs()[0]).expect("test alive");
            let _ = server.run().await;
        })
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).expect("receiver started");
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_request_through_actors_commit_outbox_to_a_consumer() {
    let (telemetry, received) = telemetry();
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.product(&[("TRACED", 5)]).await;
    let mut events = app.app.bus.subscribe();
    let buyer = app.token("tracer");
    let r = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&buyer)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({"items": [{"sku": "TRACED", "qty": 2}], "payment": {"token": "test_ok"}}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201);
    let order: serde_json::Value = r.json().await.expect("json");
    let order_id = order["id"].as_str().expect("order id").to_owned();
    assert_eq!(app.final_status(&buyer, &order_id).await, "COMPLETED");

    // The consumer: handles the order's events in spans continuing their traceparent.
    let mut consumed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumed < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.recv())
            .await
            .expect("the order's events were published")
            .expect("bus open");
        if event.aggregate_id != order_id {
            continue;
        }
        let span = tracing::info_span!("consumer.handle", event_id = %event.id);
        emporium::telemetry::continue_trace(&span, event.traceparent.as_deref());
        span.in_scope(|| tracing::info!("handled"));
        drop(span);
        consumed += 1;
    }

    // Poll (with a deadline) until the spans we look for have been exported.
    let wanted = [
        "http_request",
        "order.place",
        "inventory.reserve",
        "write_behind.commit",
        "db.group_commit",
        "saga.payment_attempt",
        "saga.complete",
        "outbox.publish",
        "consumer.handle",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans: Vec<Span> = loop {
        telemetry.flush();
        let spans: Vec<Span> = received
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|s| s.trace_id == TRACE_ID)
            .cloned()
            .collect();
        let missing: Vec<_> = wanted.iter().filter(|w| !spans.iter().any(|s| s.name == **w)).collect();
        let consumers = spans.iter().filter(|s| s.name == "consumer.handle").count();
        if missing.is_empty() && consumers >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans never exported in trace {TRACE_ID}: {missing:?}; got {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    eprintln!(
        "{} spans in trace {TRACE_ID}: {:?}",
        spans.len(),
        spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
    );
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let one = |name: &str| -> &Span {
        let found: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "no {name} span");
        found[0]
    };
    let is_under = |span: &Span, ancestor: &Span| {
        let mut at = span;
        while let Some(parent) = by_id.get(at.parent.as_str()) {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            at = parent;
        }
        false
    };

    // The request continues the caller's span.
    let requests: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "http_request" && s.attributes.get("route").map(String::as_str) == Some("/v1/orders"))
        .collect();
    assert_eq!(requests.len(), 1, "one traced POST /v1/orders");
    let request = requests[0];
    assert_eq!(
        request.parent, CALLER_SPAN,
        "the request span's parent is the caller's span"
    );
    assert_eq!(request.attributes.get("method").map(String::as_str), Some("POST"));
    assert_eq!(request.attributes.get("status").map(String::as_str), Some("201"));

    // Actor work and the durable commit happen under the request.
    let reserve = one("inventory.reserve");
    assert!(is_under(reserve, request), "reservation under the request");
    assert_eq!(reserve.attributes.get("sku").map(String::as_str), Some("TRACED"));
    assert_eq!(reserve.attributes.get("order_id"), Some(&order_id));
    let group = spans
        .iter()
        .filter(|s| s.name == "write_behind.commit" && is_under(s, request))
        .find_map(|wait| {
            spans
                .iter()
                .find(|g| g.name == "db.group_commit" && g.parent == wait.span_id)
        })
        .expect("a group commit is the child of a write-set's wait for durability under the request");
    assert!(group.attributes.contains_key("size"));

    // The saga's steps continue the request's stored traceparent.
    for step in ["saga.payment_attempt", "saga.complete"] {
        let s = one(step);
        assert_eq!(s.parent, request.span_id, "{step} is a child of the request");
        assert_eq!(s.attributes.get("order_id"), Some(&order_id));
    }

    // Every publish of the order's events, and every consumer, is in the trace.
    let publishes: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "outbox.publish" && s.attributes.get("aggregate_id") == Some(&order_id))
        .collect();
    assert!(
        publishes.len() >= 3,
        "order_created, payment_succeeded, order_completed published: {publishes:#?}"
    );
    for publish in &publishes {
        assert!(is_under(publish, request), "publish {publish:?} under the request");
    }
    for consumer in spans.iter().filter(|s| s.name == "consumer.handle") {
        let parent = by_id.get(consumer.parent.as_str()).expect("consumer's parent exported");
        assert_eq!(
            parent.name, "outbox.publish",
            "a consumer continues its event's publish span"
        );
        assert_eq!(
            consumer.attributes.get("event_id"),
            parent.attributes.get("event_id"),
            "the consumer continues the publish of the same event"
        );
    }
    app.assert_consistent().await;
}

/// The Kafka variant: the `traceparent` header of each message names its publish span,
/// so an rdkafka consumer continuing it lands in the request's trace under that span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumers_continue_the_publish_span_from_the_traceparent_header() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message as _};
    // Unset: started through scripts/services.sh (common::services).
    let Some(brokers) = common::services::test_env("EMPORIUM_TEST_KAFKA") else {
        return;
    };
    let (telemetry, received) = telemetry();
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.bus.kind = emporium::config::BusKind::Kafka;
        s.bus.brokers = brokers.clone();
    })
    .await;
    app.product(&[("KTRACED", 5)]).await;
    let buyer = app.token("kafka-tracer");
    let r = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth(&buyer)
        .header("traceparent", format!("00-{KAFKA_TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({"items": [{"sku": "KTRACED", "qty": 1}]}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 201);
    let order: serde_json::Value = r.json().await.expect("json");
    let order_id = order["id"].as_str().expect("order id").to_owned();
    assert_eq!(app.final_status(&buyer, &order_id).await, "COMPLETED");

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("emporium-otel-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&["emporium.orders", "emporium.payments"])
        .expect("subscribe");
    let mut consumed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the order's 3 messages never arrived; got {consumed}");
        let Ok(message) = tokio::time::timeout(left.min(Duration::from_secs(5)), consumer.recv()).await else {
            continue;
        };
        let message = message.expect("consume");
        if message.key() != Some(order_id.as_bytes()) {
            continue;
        }
        let header = |name: &str| {
            message.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let span = tracing::info_span!("consumer.handle", event_id = header("event_id").unwrap_or_default());
        emporium::telemetry::continue_trace(&span, header("traceparent").as_deref());
        span.in_scope(|| tracing::info!("handled"));
        drop(span);
        consumed += 1;
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let spans: Vec<Span> = loop {
        telemetry.flush();
        let spans: Vec<Span> = received
            .lock()
            .expect("receiver lock")
            .iter()
            .filter(|s| s.trace_id == KAFKA_TRACE_ID)
            .cloned()
            .collect();
        if spans.iter().filter(|s| s.name == "consumer.handle").count() >= 3
            && spans.iter().any(|s| s.name == "http_request")
        {
            break spans;
        }
        assert!(Instant::now() < deadline, "spans never exported: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let request = spans
        .iter()
        .find(|s| s.name == "http_request" && s.attributes.get("route").map(String::as_str) == Some("/v1/orders"))
        .expect("the request span");
    assert_eq!(request.parent, CALLER_SPAN);
    for consumer in spans.iter().filter(|s| s.name == "consumer.handle") {
        let publish = by_id.get(consumer.parent.as_str()).expect("consumer's parent exported");
        assert_eq!(
            publish.name, "outbox.publish",
            "a consumer continues its message's publish span"
        );
        assert_eq!(consumer.attributes.get("event_id"), publish.attributes.get("event_id"));
        assert_eq!(publish.attributes.get("aggregate_id"), Some(&order_id));
        assert_eq!(publish.parent, request.span_id, "the publish continues the request");
    }
}
