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
use crate::persistence::bus::{BusError, EventBus, InProcessBus};
use async_trait::async_trait;
use std::sync::Arc;

pub struct LocalCopy {
    pub inner: Arc<dyn EventBus>,
    pub local: InProcessBus,
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
