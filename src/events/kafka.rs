//! The Kafka event bus: the outbox relay publishes here when `bus.kind = "kafka"`.
//!
//! One idempotent producer (`enable.idempotence`, `acks=all`): the broker keeps each
//! partition free of duplicates and in send order while the producer lives, and the
//! outbox marks a row published only after the broker acknowledged it. The key is the
//! aggregate id, so one order's events land on one partition in order. Headers carry
//! what a consumer needs before it parses the body: event id (for deduplication), type,
//! schema version, content type and the W3C `traceparent` (and `tracestate`, when the
//! request had one) of the request.

use crate::config::BusSettings;
use crate::domain::events::Event;
use crate::error::Cause;
use crate::events::{BusError, EventBus};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::RwLock;
use std::time::Duration;
use tracing::{info, warn};

/// Every topic Emporium writes, created on start when missing.
pub(crate) const TOPICS: [&str; 5] = [
    "emporium.orders",
    "emporium.payments",
    "emporium.inventory",
    "emporium.products",
    "emporium.dlq",
];

pub struct KafkaBus {
    settings: BusSettings,
    /// Replaced after a fatal producer error (e.g. the broker fenced the idempotent
    /// producer after an outage): such a producer refuses every later send.
    producer: RwLock<FutureProducer>,
}

impl KafkaBus {
    /// Creates the producer. Connecting is lazy: a broker that is down now only delays
    /// publishing (the outbox keeps the events), it does not stop the server.
    pub fn new(settings: &BusSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            settings: settings.clone(),
            producer: RwLock::new(producer(settings)?),
        })
    }

    fn current(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Swaps in a new producer after `used` was fenced or hit a fatal error. The events
    /// it failed stay in the outbox and are sent again by the new one (consumers
    /// deduplicate on event id).
    fn renew(&self, used: &FutureProducer) {
        warn!(fatal = ?used.client().fatal_error(), "kafka producer unusable; creating a new one");
        match producer(&self.settings) {
            Ok(fresh) => *self.producer.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh,
            Err(e) => warn!(error = %e, "cannot create a new kafka producer; retrying on the next publish"),
        }
    }
}

pub(crate) fn producer(settings: &BusSettings) -> Result<FutureProducer, KafkaError> {
    client_config(settings)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", settings.message_timeout.as_millis().to_string())
        .set("linger.ms", "2")
        .create()
}

impl KafkaBus {
    /// Creates the missing topics, retrying in the background until the broker answers.
    pub fn ensure_topics_in_background(settings: &BusSettings) {
        let settings = settings.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match create_topics(&settings).await {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(error = %e, "kafka topics not created yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }
}

pub(crate) fn client_config(settings: &BusSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "emporium");
    config
}

async fn create_topics(settings: &BusSettings) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
    let topics: Vec<NewTopic> = TOPICS
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for outcome in admin.create_topics(&topics, &options).await? {
        match outcome {
            Ok(topic) => info!(topic, "kafka topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                warn!(topic, error = %code, "cannot create kafka topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// The headers of one event's message.
fn headers(event: &Event) -> OwnedHeaders {
    let id = event.id.to_string();
    let version = event.schema_version.to_string();
    let mut headers = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: "event_id",
            value: Some(&id),
        })
        .insert(Header {
            key: "event_type",
            value: Some(event.event_type.as_str()),
        })
        .insert(Header {
            key: "schema_version",
            value: Some(&version),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
    if let Some(traceparent) = &event.traceparent {
        headers = headers.insert(Header {
            key: "traceparent",
            value: Some(traceparent),
        });
    }
    if let Some(tracestate) = &event.tracestate {
        headers = headers.insert(Header {
            key: "tracestate",
            value: Some(tracestate),
        });
    }
    headers
}

/// Errors after which this producer instance can never send again (the broker gave its
/// producer id or epoch to someone else, typically after an outage with timed-out sends).
fn fences_producer(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::Fatal
        )
    )
}

/// Whether waiting can fix a failed send. Anything not known to be about the message
/// itself counts as an outage: an event is never given up on because a broker was down.
fn classify(error: KafkaError) -> BusError {
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
        )
    );
    if permanent {
        BusError::Rejected(Cause::new(error))
    } else {
        BusError::Unavailable(Cause::new(error))
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, events: &[&Event]) -> Vec<Result<(), BusError>> {
        // Enqueue all first (in order, so each key keeps its order), then await the
        // broker's acknowledgements: one round trip for the batch, not one per event.
        let producer = self.current();
        let mut fenced = false;
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let payload = match serde_json::to_vec(event) {
                Ok(p) => p,
                Err(e) => {
                    pending.push(Err(BusError::Rejected(Cause::new(e))));
                    continue;
                }
            };
            let record = FutureRecord::to(event.event_type.topic())
                .key(event.aggregate_id.as_bytes())
                .payload(&payload)
                .headers(headers(event));
            pending.push(producer.send_result(record).map_err(|(e, _)| classify(e)));
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for sent in pending {
            outcomes.push(match sent {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => {
                        fenced |= fences_producer(&e);
                        Err(classify(e))
                    }
                    Err(_) => Err(BusError::Unavailable("producer closed".into())),
                },
                Err(e) => Err(e),
            });
        }
        if fenced || producer.client().fatal_error().is_some() {
            self.renew(&producer);
        }
        outcomes
    }

    fn kind(&self) -> &'static str {
        "kafka"
    }
}
