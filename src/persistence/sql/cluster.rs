//! Cluster mode's tables (migrations/mysql/0007_cluster.sql): members with their
//! heartbeats, shard leases with their epochs, and the fence a group commit checks.
//! MySQL/MariaDB only (the server refuses cluster mode on SQLite). Every time is the
//! database's clock ([`DB_NOW`]), so a node whose clock is off cannot stretch a lease.

use super::{text, SqlStore};
use crate::domain::cluster::{Fence, Shard};
use crate::persistence::{StoreError, WriteSet};
use sqlx::Row;

/// The database's clock in milliseconds.
const DB_NOW: &str = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)";

/// A member as the table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberRow {
    pub(crate) node_id: String,
    pub(crate) url: String,
    /// Its last heartbeat is younger than the lease TTL.
    pub(crate) live: bool,
}

/// A lease as the table has it; `owner` is `None` when free or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRow {
    pub(crate) shard: Shard,
    pub(crate) owner: Option<String>,
    pub(crate) epoch: i64,
}

impl SqlStore {
    /// Creates the lease rows `0..shards` that do not exist yet (every node at start;
    /// the first one creates them).
    pub(crate) async fn ensure_shards(&self, shards: u32) -> Result<(), StoreError> {
        let rows: Vec<String> = (0..shards).map(|s| format!("({s})")).collect();
        for chunk in rows.chunks(1000) {
            sqlx::query(&format!(
                "INSERT IGNORE INTO shard_leases (shard) VALUES {}",
                chunk.join(",")
            ))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Cluster mode rests on the server ending the transaction of a frozen node (one
    /// stopped in the middle of a commit keeps its connection and its locks, and every
    /// claim of its shards would wait behind them): MariaDB's `idle_transaction_timeout`
    /// does. MySQL has no such limit, so it is refused with the reason.
    pub(crate) async fn require_idle_transaction_limit(&self) -> Result<(), StoreError> {
        let row = sqlx::query("SELECT VERSION() AS version").fetch_one(&self.pool).await?;
        let version = text(&row, "version")?;
        if version.contains("MariaDB") {
            return Ok(());
        }
        Err(StoreError::Rejected(
            (format!(
                "cluster mode needs MariaDB: this server ({version}) has no idle_transaction_timeout, so a frozen \
             node's open transaction would hold its lease locks until its connection dies and stall the others"
            ))
            .into(),
        ))
    }

    /// I-am-alive: records (or refreshes) this node's row.
    pub(crate) async fn heartbeat(&self, node: &str, url: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO cluster_members (node_id, url, heartbeat_at, started_at) VALUES (?, ?, {DB_NOW}, {DB_NOW}) \
             ON DUPLICATE KEY UPDATE url = VALUES(url), heartbeat_at = VALUES(heartbeat_at)"
        ))
        .bind(node.to_owned())
        .bind(url.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The members and the leases as the database sees them now: a member is live while
    /// its heartbeat is younger than `ttl_ms`, a lease is held while it has not expired.
    pub(crate) async fn cluster_view(&self, ttl_ms: i64) -> Result<(Vec<MemberRow>, Vec<LeaseRow>), StoreError> {
        let members = sqlx::query(&format!(
            "SELECT node_id, url, CAST(heartbeat_at > {DB_NOW} - ? AS SIGNED) AS live FROM cluster_members ORDER BY node_id"
        ))
        .bind(ttl_ms)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(MemberRow {
                node_id: text(row, "node_id")?,
                url: text(row, "url")?,
                live: row.try_get::<i64, _>("live")? == 1,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let leases = sqlx::query(&format!(
            "SELECT shard, CASE WHEN expires_at > {DB_NOW} THEN owner END AS owner, epoch FROM shard_leases ORDER BY shard"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(LeaseRow {
                shard: row.try_get::<i32, _>("shard")? as Shard,
                owner: row.try_get::<Option<String>, _>("owner")?,
                epoch: row.try_get("epoch")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((members, leases))
    }

    /// Extends this node's leases on `shards` by `ttl_ms` from now; returns the shards it
    /// still holds with their epochs (a shard another node took is missing). A lease that
    /// expired without anybody taking it is renewed: nobody acted on it meanwhile.
    pub(crate) async fn renew_leases(
        &self,
        node: &str,
        shards: &[Shard],
        ttl_ms: i64,
    ) -> Result<Vec<(Shard, i64)>, StoreError> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let list = in_list(shards);
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "UPDATE shard_leases SET expires_at = {DB_NOW} + ? WHERE shard IN ({list}) AND owner = ?"
        ))
        .bind(ttl_ms)
        .bind(node.to_owned())
        .execute(&mut *tx)
        .await?;
        let held = sqlx::query(&format!(
            "SELECT shard, epoch FROM shard_leases WHERE shard IN ({list}) AND owner = ? ORDER BY shard"
        ))
        .bind(node.to_owned())
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| Ok((row.try_get::<i32, _>("shard")? as Shard, row.try_get("epoch")?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(held)
    }

    /// Takes `shard` if it is free or its lease has expired: a new epoch (the fence
    /// against the previous owner). Returns the epoch, or `None` if another node holds it.
    pub(crate) async fn claim_lease(&self, shard: Shard, node: &str, ttl_ms: i64) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin().await?;
        let taken = sqlx::query(&format!(
            "UPDATE shard_leases SET owner = ?, epoch = epoch + 1, expires_at = {DB_NOW} + ? \
             WHERE shard = ? AND (owner IS NULL OR expires_at <= {DB_NOW})"
        ))
        .bind(node.to_owned())
        .bind(ttl_ms)
        .bind(shard as i32)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let epoch = if taken {
            let row = sqlx::query("SELECT epoch FROM shard_leases WHERE shard = ?")
                .bind(shard as i32)
                .fetch_one(&mut *tx)
                .await?;
            Some(row.try_get("epoch")?)
        } else {
            None
        };
        tx.commit().await?;
        Ok(epoch)
    }

    /// Gives `shard` back at once (a hand-over), if this node still holds it at `epoch`.
    pub(crate) async fn release_lease(&self, shard: Shard, node: &str, epoch: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE shard_leases SET owner = NULL, expires_at = 0 WHERE shard = ? AND owner = ? AND epoch = ?")
            .bind(shard as i32)
            .bind(node.to_owned())
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Leaves the cluster: every lease of this node is released and its member row goes.
    pub(crate) async fn leave_cluster(&self, node: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE shard_leases SET owner = NULL, expires_at = 0 WHERE owner = ?")
            .bind(node.to_owned())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM cluster_members WHERE node_id = ?")
            .bind(node.to_owned())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The fenced group commit: inside the commit's own transaction, every fence must
    /// still hold (its node owns its shard at its epoch). The lease rows are read with a
    /// shared lock, so a node taking one of them over waits until this transaction ends
    /// and then loads what it committed. `Ok(Err(fences))`: nothing was written, these
    /// fences no longer hold.
    ///
    /// An order spanning owners also records its placement's decision here
    /// (`placement_outcomes`, "committed"): an owner that reserved for it and never heard
    /// the outcome resolves it from that row ([`Self::resolve_placement`]).
    pub(crate) async fn commit_fenced(
        &self,
        sets: &[&WriteSet],
        fences: &[Fence],
    ) -> Result<Result<(), Vec<Fence>>, StoreError> {
        let mut tx = self.begin().await?;
        if !fences.is_empty() {
            let shards: Vec<Shard> = fences.iter().map(|f| f.shard).collect();
            let held: Vec<(Shard, Option<String>, i64)> = sqlx::query(&format!(
                "SELECT shard, owner, epoch FROM shard_leases WHERE shard IN ({}) ORDER BY shard LOCK IN SHARE MODE",
                in_list(&shards)
            ))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<i32, _>("shard")? as Shard,
                    row.try_get::<Option<String>, _>("owner")?,
                    row.try_get::<i64, _>("epoch")?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
            let lost: Vec<Fence> = fences
                .iter()
                .filter(|f| {
                    !held.iter().any(|(s, owner, e)| {
                        *s == f.shard && owner.as_deref() == Some(f.node.as_str()) && *e == f.epoch
                    })
                })
                .cloned()
                .collect();
            if !lost.is_empty() {
                tx.rollback().await?;
                return Ok(Err(lost));
            }
        }
        for set in sets {
            if let (Some(order), false) = (&set.new_order, set.remote_fences.is_empty()) {
                sqlx::query(&format!(
                    "INSERT INTO placement_outcomes (order_id, outcome, decided_at) VALUES (?, 'committed', {DB_NOW})"
                ))
                .bind(order.id.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        self.write_sets(&mut tx, sets).await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Forgets placement decisions older than `age_ms` (database clock). A decision is
    /// read only while an owner still holds a tentative reservation for its order,
    /// which it resolves within seconds of the placement; a day later nobody asks.
    pub(crate) async fn prune_placement_outcomes(&self, age_ms: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(&format!(
            "DELETE FROM placement_outcomes WHERE decided_at < {DB_NOW} - ?"
        ))
        .bind(age_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Resolves the placement of `order` for an owner that reserved stock for it on
    /// another node's behalf and did not hear the outcome: records "aborted" unless the
    /// placing node recorded "committed" first (a placement still committing is waited
    /// for: the insert meets its row lock). True when the order was committed (the
    /// reservation stays), false when it never will be (forget it).
    pub(crate) async fn resolve_placement(&self, order: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(&format!(
            "INSERT IGNORE INTO placement_outcomes (order_id, outcome, decided_at) VALUES (?, 'aborted', {DB_NOW})"
        ))
        .bind(order.to_owned())
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT outcome FROM placement_outcomes WHERE order_id = ?")
            .bind(order.to_owned())
            .fetch_one(&mut *tx)
            .await?;
        let outcome = text(&row, "outcome")?;
        tx.commit().await?;
        Ok(outcome == "committed")
    }
}

/// `1,2,3`: shard numbers are integers this process computed, safe to inline.
fn in_list(shards: &[Shard]) -> String {
    shards.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
}
