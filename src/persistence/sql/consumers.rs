//! What consumers record: events applied (`processed_events`) and messages given up on
//! (`failed_events` from a consumer, `emporium.dlq`).
use super::corrupt;
use crate::persistence::{Consumed, DeadLetter, SqlStore, StoreError, WriteSet};
use sqlx::Row;
use std::collections::BTreeMap;

impl SqlStore {
    /// Whether `consumer` has already applied the event (its effect is committed).
    pub(crate) async fn is_processed(&self, consumer: &str, event_id: uuid::Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM processed_events WHERE consumer = ? AND event_id = ?")
            .bind(consumer.to_owned())
            .bind(event_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Records an event that has no effect (e.g. a payment for an order that is already
    /// final), so its redeliveries are skipped without looking at it again.
    pub(crate) async fn mark_processed(&self, consumed: &Consumed) -> Result<(), StoreError> {
        let set = WriteSet {
            consumed: Some(consumed.clone()),
            ..WriteSet::default()
        };
        match self.commit(&[&set]).await {
            Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Keeps a message a consumer gave up on in `failed_events`. A message that failed
    /// again after a replay replaces its replayed row.
    pub(crate) async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let (event_id, event_type, aggregate, body) = match &letter.event {
            Some(e) => (
                e.id.to_string(),
                e.event_type.as_str().to_owned(),
                e.aggregate_id.clone(),
                serde_json::to_string(e).map_err(corrupt)?,
            ),
            None => {
                let id = letter
                    .headers
                    .iter()
                    .find(|(k, _)| k == "event_id")
                    .and_then(|(_, v)| uuid::Uuid::parse_str(v).ok())
                    .unwrap_or_else(uuid::Uuid::new_v4);
                let key: String = letter.key.chars().take(128).collect();
                (id.to_string(), "unparseable".to_owned(), key, letter.payload.clone())
            }
        };
        let headers =
            serde_json::to_string(&letter.headers.iter().cloned().collect::<BTreeMap<_, _>>()).map_err(corrupt)?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM failed_events WHERE event_id = ? AND replayed_at IS NOT NULL")
            .bind(event_id.clone())
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO failed_events (event_id, event_type, aggregate_id, body, error, attempts, failed_at, source, topic, headers, replayable) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event_id)
        .bind(event_type)
        .bind(aggregate)
        .bind(body)
        .bind(letter.error.clone())
        .bind(letter.attempts)
        .bind(crate::domain::now_millis())
        .bind(letter.consumer.clone())
        .bind(letter.topic.clone())
        .bind(headers)
        .bind(i64::from(letter.event.is_some()))
        .execute(&mut *tx)
        .await;
        match inserted.map_err(StoreError::from) {
            // Already dead-lettered and not replayed yet: one row is enough.
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        tx.commit().await?;
        Ok(())
    }

    /// `(source, event_type, replayed)` of every failed_events row, oldest first.
    pub async fn failed_event_sources(&self) -> Result<Vec<(String, String, bool)>, StoreError> {
        let rows = sqlx::query("SELECT source, event_type, replayed_at FROM failed_events ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("source")?,
                    r.try_get("event_type")?,
                    r.try_get::<Option<i64>, _>("replayed_at")?.is_some(),
                ))
            })
            .collect()
    }
}
