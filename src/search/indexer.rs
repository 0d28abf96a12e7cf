//! The search indexer: owns the writes to the search index and is their only writer.
//!
//! Takes `product_upserted` / `product_deleted` events (other event types are ignored)
//! from its mailbox, applies them in batches (everything queued while the previous batch
//! was applied, up to [`MAX_BATCH`]) and makes each batch visible before taking the next,
//! so a product is searchable well within a second of its event. Delivery is at least
//! once and may reorder: every change carries the event's version and the index keeps
//! the newest, so a repeated or late event changes nothing. When the index is down the
//! batch is retried with capped backoff, never dropped.
//!
//! Its mailbox is the in-process event bus (a broadcast channel). That is a stream, not
//! request/response, so the actor is a plain task reading it rather than an actix actor:
//! actix would add a second mailbox in front of the first. If it falls behind by more
//! than the channel holds, it logs how many events it missed; `emporium reindex` rebuilds
//! the index from the catalog.

use crate::domain::events::{Event, EventType};
use crate::domain::search::SearchDoc;
use crate::search::{IndexChange, SearchIndex};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tracing::{debug, warn};

pub(crate) const MAX_BATCH: usize = 1_000;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The order of an event among the events of its product: the time-ordered first 64
/// bits of its UUIDv7 id (milliseconds first). Two events of one product within the same
/// millisecond may tie; a tie is applied in arrival order (the bus keeps a product's
/// events in order). Ids that are not v7 fall back to the event time.
pub(crate) fn event_version(e: &Event) -> u64 {
    if e.id.get_version_num() == 7 {
        let b = e.id.as_bytes();
        u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    } else {
        u64::try_from(e.occurred_at).unwrap_or(0) << 16
    }
}

/// What an event asks of the search index, if anything.
pub(crate) fn change_of(e: &Event) -> Option<IndexChange> {
    let version = event_version(e);
    match e.event_type {
        EventType::ProductUpserted => {
            if !SearchDoc::listed(&e.data) {
                return Some(IndexChange::Delete {
                    id: e.aggregate_id.clone(),
                    version,
                });
            }
            match SearchDoc::from_product(&e.data, version) {
                Ok(doc) => Some(IndexChange::Upsert(doc)),
                Err(err) => {
                    warn!(event_id = %e.id, product = %e.aggregate_id, error = %err, "product event not indexable");
                    None
                }
            }
        }
        EventType::ProductDeleted => Some(IndexChange::Delete {
            id: e
                .data
                .get("id")
                .and_then(|i| i.as_str())
                .unwrap_or(&e.aggregate_id)
                .to_owned(),
            version,
        }),
        _ => None,
    }
}

/// Applies one batch, retrying with capped backoff until the index takes it.
pub(crate) async fn apply_until_done(index: &dyn SearchIndex, changes: Vec<IndexChange>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match index.apply(changes.clone()).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "search index update failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Starts the indexer on a bus subscription; it runs until the bus closes.
pub fn start(index: Arc<dyn SearchIndex>, mut events: broadcast::Receiver<Arc<Event>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let first = match events.recv().await {
                Ok(e) => e,
                Err(RecvError::Lagged(missed)) => {
                    warn!(
                        missed,
                        "search indexer fell behind the event bus; run `emporium reindex`"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let mut changes: Vec<IndexChange> = change_of(&first).into_iter().collect();
            while changes.len() < MAX_BATCH {
                match events.try_recv() {
                    Ok(e) => changes.extend(change_of(&e)),
                    Err(TryRecvError::Lagged(missed)) => {
                        warn!(
                            missed,
                            "search indexer fell behind the event bus; run `emporium reindex`"
                        )
                    }
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if !changes.is_empty() {
                debug!(changes = changes.len(), "indexing");
                apply_until_done(index.as_ref(), changes).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_become_versioned_changes() {
        let doc = json!({"id": "p1", "name": "노트북", "price": {"amount": 1, "currency": "KRW"}});
        let up = Event::new(EventType::ProductUpserted, "p1", 5, None, doc.clone());
        let del = Event::new(EventType::ProductDeleted, "p1", 5, None, json!({"id": "p1"}));
        let (a, b) = (change_of(&up).unwrap(), change_of(&del).unwrap());
        assert!(matches!(a, IndexChange::Upsert(_)));
        assert!(matches!(b, IndexChange::Delete { .. }));
        assert!(b.version() >= a.version(), "a later event is never older");
        let hidden = Event::new(EventType::ProductUpserted, "p1", 6, None, json!({"status": "hidden"}));
        assert!(matches!(change_of(&hidden), Some(IndexChange::Delete { .. })));
        let other = Event::new(EventType::OrderCreated, "o1", 6, None, json!({}));
        assert_eq!(change_of(&other), None);
    }
}
