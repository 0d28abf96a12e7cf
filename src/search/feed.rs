//! How product events reach the search indexer in each bus mode.
//!
//! Embedded bus: the indexer subscribes to the in-process bus, nothing else to do.
//! Kafka bus: the outbox relay publishes to Kafka only, so [`LocalCopy`] wraps the Kafka
//! bus and, once the broker has acknowledged a product event, also hands it to the
//! in-process bus. The process that relays an event therefore indexes it, exactly as in
//! embedded mode, without a Kafka consumer of its own. Limit: with several replicas,
//! each replica indexes the events its own relay published — right for a shared
//! Elasticsearch, but an embedded index per replica only sees its share (run one
//! replica with the embedded index, or use Elasticsearch; README says so).

use crate::domain::events::{Event, EventType};
use crate::events::{BusError, EventBus, InProcessBus};
use async_trait::async_trait;
use std::sync::Arc;

pub(crate) struct LocalCopy {
    pub(crate) inner: Arc<dyn EventBus>,
    pub(crate) local: InProcessBus,
}

fn is_product_event(e: &Event) -> bool {
    matches!(e.event_type, EventType::ProductUpserted | EventType::ProductDeleted)
}

#[async_trait]
impl EventBus for LocalCopy {
    async fn publish(&self, events: &[&Event]) -> Vec<Result<(), BusError>> {
        let results = self.inner.publish(events).await;
        let acked: Vec<&Event> = events
            .iter()
            .zip(&results)
            .filter(|(e, r)| r.is_ok() && is_product_event(e))
            .map(|(e, _)| *e)
            .collect();
        if !acked.is_empty() {
            // The in-process bus never fails.
            let _ = self.local.publish(&acked).await;
        }
        results
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn acknowledged_product_events_are_copied_to_the_local_bus() {
        // The "remote" bus is a second in-process bus standing in for Kafka (the Kafka
        // path itself is covered by tests/it/kafka.rs); what matters here is the copy.
        let remote = InProcessBus::default();
        let local = InProcessBus::default();
        let mut indexer_side = local.subscribe();
        let mut remote_side = remote.subscribe();
        let bus = LocalCopy {
            inner: Arc::new(remote),
            local,
        };
        let product = Event::new(EventType::ProductUpserted, "p1", 1, None, serde_json::json!({}));
        let order = Event::new(EventType::OrderCreated, "o1", 1, None, serde_json::json!({}));
        let results = bus.publish(&[&order, &product]).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(remote_side.try_recv().map(|e| e.id).ok(), Some(order.id));
        assert_eq!(indexer_side.try_recv().map(|e| e.id).ok(), Some(product.id));
        assert!(indexer_side.try_recv().is_err(), "only product events are copied");
    }
}
