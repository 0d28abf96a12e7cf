//! Resuming orders from the store: at start, and in cluster mode for the shards this
//! node gains (and stopping those of the shards it loses). Orders whose reservation
//! fell due meanwhile are cancelled as expired in one coalesced sweep; the others
//! resume their saga where it stopped.

use super::decision::{settle_and_commit, Step};
use super::saga::Relinquish;
use super::{order_shard, request_refund_until_recorded, Orders, RecoveryReport};
use crate::domain::cluster::Shard;
use crate::domain::ids::Sku;
use crate::domain::inventory::ChangeKind;
use crate::domain::now_millis;
use crate::domain::order::{CancelReason, Order, OrderStatus};
use crate::persistence::{StatusChange, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use tracing::info;

impl Orders {
    /// Start-up recovery of the sagas: orders whose reservation expired while the
    /// server was down are cancelled in one coalesced sweep (their write-sets share
    /// group commits); the others resume where they stopped.
    pub(crate) async fn recover(&self) -> Result<RecoveryReport, StoreError> {
        self.recover_where(|_| true).await
    }

    /// Cluster mode: this node now owns `shards`; the in-flight orders of those shards
    /// (a dead or departed owner's) resume here, their due expiries swept.
    pub(crate) async fn recover_shards(&self, shards: &[Shard]) -> Result<RecoveryReport, StoreError> {
        let deps = self.deps.clone();
        self.recover_where(move |order| {
            shards.contains(&order_shard(&deps.ownership, order)) && !deps.actors.contains_key(&order.id)
        })
        .await
    }

    /// Cluster mode: the sagas of orders in `shards` stop here (another node owns them
    /// now and resumes them from the store). A saga in the middle of a step finishes
    /// the step first; the fence refuses it if the shard has passed on.
    pub(crate) fn relinquish(&self, shards: &[Shard]) {
        let shards: Arc<[Shard]> = shards.into();
        for entry in self.deps.actors.iter() {
            entry.value().do_send(Relinquish(shards.clone()));
        }
    }

    async fn recover_where(&self, mine: impl Fn(&Order) -> bool) -> Result<RecoveryReport, StoreError> {
        let mut in_flight = self.deps.store.orders_in_flight().await?;
        in_flight.retain(|o| mine(o));
        let now = now_millis();
        let (expired, live): (Vec<Order>, Vec<Order>) = in_flight
            .into_iter()
            .partition(|o| o.status == OrderStatus::PendingPayment && o.expires_at <= now);
        let report = RecoveryReport {
            resumed: live.len(),
            expired: expired.len(),
        };
        let sweeps = expired.into_iter().map(|order| self.expire_offline(order));
        futures_util::future::join_all(sweeps).await;
        for order in live {
            self.start_saga(order, None, true);
        }
        info!(resumed = report.resumed, expired = report.expired, "sagas recovered");
        Ok(report)
    }

    async fn expire_offline(&self, order: Order) {
        let skus: Vec<Sku> = order
            .lines
            .iter()
            .map(|l| l.sku.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let change = StatusChange {
            order_id: order.id,
            from: OrderStatus::PendingPayment,
            to: OrderStatus::Cancelled,
            cancel_reason: Some(CancelReason::Expired),
            at: now_millis(),
        };
        // The run that placed it may have been paid before it stopped (F9): the refund is
        // requested before the cancel commits (the refunder waits for the CANCELLED); the
        // gateway refunds by order id, and voids an order it captured nothing for.
        let refund_first = !self.deps.options.external_payment;
        if refund_first {
            request_refund_until_recorded(&self.deps, &order).await;
        }
        let step = settle_and_commit(&self.deps, &skus, ChangeKind::Release, &change, None, Vec::new(), None).await;
        if step == Step::Committed {
            if refund_first {
                self.deps.refunder.wake();
            }
            self.deps.metrics.reservation_expirations.inc();
            self.deps
                .metrics
                .orders_finished
                .with_label_values(&["CANCELLED"])
                .inc();
        }
    }
}
