//! The outbox: pending events for the relay, marking them published, deferring and giving
//! up on them (`failed_events`), and replaying what was given up on.
use super::write_sets::{covering_size, Shape, SIZES};
use super::{corrupt, text, ROWS_PER_INSERT};
use crate::domain::events::Event;
use crate::domain::Millis;
use crate::persistence::{FailedEvent, OutboxRow, SqlStore, StoreError};
use sqlx::{Any, QueryBuilder, Row};

static MARK_PUBLISHED: Shape = Shape::new(|n| {
    format!(
        "UPDATE outbox SET published_at = ? WHERE id IN ({})",
        vec!["?"; n].join(", ")
    )
});

impl SqlStore {
    /// The oldest unpublished outbox rows, in id order.
    pub(crate) async fn outbox_pending(&self, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body, attempts, next_attempt_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    event: serde_json::from_str(&text(r, "body")?).map_err(corrupt)?,
                    attempts: r.try_get("attempts")?,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                })
            })
            .collect()
    }

    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    pub(crate) async fn outbox_mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        let now = crate::domain::now_millis();
        // A primary-key lookup per id, in one execution per 256 ids: the list is padded to
        // a fixed size by repeating its last id (so each connection prepares a few texts).
        for chunk in ids.chunks(SIZES[0]) {
            let size = covering_size(chunk.len());
            let mut query = sqlx::query(MARK_PUBLISHED.text(size)).bind(now);
            for i in 0..size {
                query = query.bind(chunk[i.min(chunk.len() - 1)]);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    pub(crate) async fn outbox_defer(
        &self,
        id: i64,
        attempts: i64,
        next_attempt_at: Millis,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?")
            .bind(attempts)
            .bind(next_attempt_at)
            .bind(error.to_owned())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Gives up on an outbox row: it moves to `failed_events`, from where `replay` re-publishes it.
    pub(crate) async fn outbox_fail(&self, row: &OutboxRow, error: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO failed_events (event_id, event_type, aggregate_id, body, error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.event.id.to_string())
        .bind(row.event.event_type.as_str())
        .bind(row.event.aggregate_id.clone())
        .bind(serde_json::to_string(&row.event).map_err(corrupt)?)
        .bind(error.to_owned())
        .bind(row.attempts)
        .bind(crate::domain::now_millis())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM outbox WHERE id = ?")
            .bind(row.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn failed_events(&self, limit: i64) -> Result<Vec<FailedEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, body, error, attempts FROM failed_events WHERE replayed_at IS NULL AND replayable = 1 ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FailedEvent {
                    id: r.try_get("id")?,
                    event: serde_json::from_str(&text(r, "body")?).map_err(corrupt)?,
                })
            })
            .collect()
    }

    /// Puts failed events back into the outbox (with fresh attempts) and marks them
    /// replayed; refunds given up on are requested again. Returns how many in all.
    pub async fn replay_failed(&self) -> Result<usize, StoreError> {
        let refunds = self.replay_failed_refunds(crate::domain::now_millis()).await?;
        let failed = self.failed_events(10_000).await?;
        let mut tx = self.begin().await?;
        let events: Vec<&Event> = failed.iter().map(|f| &f.event).collect();
        // The event keeps its id, so consumers that saw it once still deduplicate it.
        for f in &failed {
            sqlx::query("DELETE FROM outbox WHERE event_id = ?")
                .bind(f.event.id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        insert_outbox(&mut tx, &events).await?;
        for f in &failed {
            sqlx::query("UPDATE failed_events SET replayed_at = ? WHERE id = ?")
                .bind(crate::domain::now_millis())
                .bind(f.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(failed.len() + refunds)
    }
}

pub(in crate::persistence) async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, Any>,
    events: &[&Event],
) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let bodies = chunk
            .iter()
            .map(|e| serde_json::to_string(e).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        let mut q =
            QueryBuilder::<Any>::new("INSERT INTO outbox (event_id, event_type, aggregate_id, body, created_at) ");
        q.push_values(chunk.iter().zip(bodies), |mut b, (e, body)| {
            b.push_bind(e.id.to_string())
                .push_bind(e.event_type.as_str())
                .push_bind(e.aggregate_id.clone())
                .push_bind(body)
                .push_bind(e.occurred_at);
        });
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}
