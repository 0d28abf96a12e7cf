//! The outbox: pending events for the relay, marking them published, deferring and giving
//! up on them (`failed_events`), and replaying what was given up on.
//!
//! A row holds one transaction's events, in order, as a JSON array (at most
//! [`EVENTS_PER_ROW`] of them; a bigger transaction writes several rows in id order). The
//! relay publishes, retries and marks a row as a whole.
use super::write_sets::{covering_size, Shape, INSERT_OUTBOX, SIZES};
use super::{corrupt, text};
use crate::domain::events::Event;
use crate::domain::Millis;
use crate::persistence::{FailedEvent, OutboxRow, SqlStore, StoreError};
use sqlx::{Any, Row};

/// The most events one outbox row holds. It bounds a row's size, how far a relay read
/// overshoots `outbox.batch_size` events, and what a retry of one row publishes again.
pub(super) const EVENTS_PER_ROW: usize = 64;

/// The outbox rows of a transaction's events, in order: (how many events, their JSON array).
pub(super) fn outbox_rows(events: &[&Event]) -> Result<Vec<(i64, String)>, StoreError> {
    events
        .chunks(EVENTS_PER_ROW)
        .map(|chunk| Ok((chunk.len() as i64, serde_json::to_string(chunk).map_err(corrupt)?)))
        .collect()
}

/// A flag, not a time: on SQLite a row whose size stays the same is overwritten in place,
/// only its changed pages written, so a mark writes the row's leaf page and not its events
/// again (migrations/sqlite/0007_outbox_published_flag.sql).
static MARK_PUBLISHED: Shape = Shape::new(|n| {
    format!(
        "UPDATE outbox SET published = 1 WHERE id IN ({})",
        vec!["?"; n].join(", ")
    )
});

impl SqlStore {
    /// The oldest unpublished outbox rows, in id order, holding about `events` events: the
    /// rows before which fewer than `events` are counted (so at least one row, and at
    /// most `events` + 63 events). Bounding a read by events, not rows, keeps each relay
    /// round (its read of the events, and its update) about as large whether rows hold one
    /// event or 64.
    pub(crate) async fn outbox_pending(&self, events: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.id, o.body, o.attempts, o.next_attempt_at \
             FROM (SELECT id, events, SUM(events) OVER (ORDER BY id) AS upto \
                   FROM (SELECT id, events FROM outbox WHERE published = 0 ORDER BY id LIMIT ?) head) w \
             JOIN outbox o ON o.id = w.id \
             WHERE w.upto - w.events < ? \
             ORDER BY o.id",
        )
        .bind(events)
        .bind(events)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    events: serde_json::from_str(&text(r, "body")?).map_err(corrupt)?,
                    attempts: r.try_get("attempts")?,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                })
            })
            .collect()
    }

    /// How many events wait in the outbox.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        let sql = format!(
            "SELECT {} AS n FROM outbox WHERE published = 0",
            self.dialect().int("COALESCE(SUM(events), 0)")
        );
        let row = sqlx::query(&sql).fetch_one(&self.pool).await?;
        Ok(row.try_get("n")?)
    }

    pub(crate) async fn outbox_mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
        // A primary-key lookup per id, in one execution per 256 ids: the list is padded to
        // a fixed size by repeating its last id (so each connection prepares a few texts).
        for chunk in ids.chunks(SIZES[0]) {
            let size = covering_size(chunk.len());
            let mut query = sqlx::query(MARK_PUBLISHED.text(size));
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

    /// Gives up on an outbox row: the events of it the bus rejected move to `failed_events`
    /// (from where `replay` re-publishes them) and the row goes; its other events were
    /// published by the same attempt.
    pub(crate) async fn outbox_fail(
        &self,
        row_id: i64,
        rejected: &[&Event],
        attempts: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for event in rejected {
            sqlx::query(
                "INSERT INTO failed_events (event_id, event_type, aggregate_id, body, error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(event.id.to_string())
            .bind(event.event_type.as_str())
            .bind(event.aggregate_id.clone())
            .bind(serde_json::to_string(event).map_err(corrupt)?)
            .bind(error.to_owned())
            .bind(attempts)
            .bind(crate::domain::now_millis())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM outbox WHERE id = ?")
            .bind(row_id)
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
        // The events keep their ids, so consumers that saw one once still deduplicate it.
        // `replayed_at` below is what keeps a failed event from being put back twice.
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

/// Writes a transaction's events to the outbox (see [`outbox_rows`]).
pub(in crate::persistence) async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, Any>,
    events: &[&Event],
) -> Result<(), StoreError> {
    let now = crate::domain::now_millis();
    for (count, body) in outbox_rows(events)? {
        sqlx::query(INSERT_OUTBOX.text(1))
            .bind(count)
            .bind(body)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
