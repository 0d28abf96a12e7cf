//! The event bus the outbox relays to. The embedded default delivers to in-process
//! subscribers (the outbox table itself is the durable log); Kafka
//! ([`crate::events::kafka::KafkaBus`]) is another implementation of the same trait.

pub mod consumer;
pub mod kafka;
pub mod outbox;
pub(crate) mod payment_outcomes;

use crate::domain::events::Event;
use crate::error::Cause;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::broadcast;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached or did not acknowledge in time: retried without limit
    /// (with capped backoff), because waiting out an outage loses nothing.
    #[error("event bus unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The bus refused this event (too large, not allowed): retried `max_attempts`
    /// times, then moved to `failed_events`.
    #[error("event bus rejected the event: {0}")]
    Rejected(#[source] Cause),
}

#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes the events in the given order and reports, per event, whether the bus
    /// acknowledged it. The outbox marks a row published only on `Ok`.
    async fn publish(&self, events: &[&Event]) -> Vec<Result<(), BusError>>;
    /// A short name for logs and metrics.
    fn kind(&self) -> &'static str;
}

/// In-process delivery to subscribers of a broadcast channel. A slow subscriber
/// that falls behind misses events (it can re-read the outbox table), but publishing
/// never blocks the relay.
#[derive(Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(16_384).0,
        }
    }
}

impl InProcessBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}

#[async_trait]
impl EventBus for InProcessBus {
    async fn publish(&self, events: &[&Event]) -> Vec<Result<(), BusError>> {
        events
            .iter()
            .map(|e| {
                // No subscriber is not an error: the outbox row stays the record.
                let _ = self.sender.send(Arc::new((*e).clone()));
                Ok(())
            })
            .collect()
    }
    fn kind(&self) -> &'static str {
        "embedded"
    }
}
