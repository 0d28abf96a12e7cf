//! Decide first, then apply (docs/cluster.md, "The decision"): a saga step settles in
//! memory only the SKUs of the order's own shard and commits them with the order's
//! final status under that shard's fence ([`settle_and_commit`]); only once that is
//! durable are the owners of its other SKUs told ([`tell_owners`]), and each applies
//! the recorded decision under its own fence ([`apply_decision`], also what a peer's
//! settle and the sweeps run). Everything here reads the decision from the store or
//! carries it; nothing decides twice.

use super::retry::with_backoff;
use super::step_sets::{apply_set, settle_set};
use super::{order_shard, Deps, Orders};
use crate::actors::cluster::RemoteSettle;
use crate::actors::inventory::InventoryFailure;
use crate::actors::write_behind::CommitError;
use crate::domain::cluster::Shard;
use crate::domain::events::Event;
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::ChangeKind;
use crate::domain::order::{Order, OrderStatus};
use crate::persistence::{Consumed, JournalEntry, StatusChange, StoreError, WriteSet};
use std::time::Duration;
use tracing::{error, info, warn};

/// What a saga step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// The order's decision (its final status) is durable.
    Committed,
    /// This node does not hold the order's shard (any more): nothing was decided here.
    /// The saga stops; the shard's owner resumes the order from the store.
    NotOwner,
    /// The store refused the step for good: the order is no longer in the status the
    /// step expected (another decision was recorded first).
    Refused,
}

/// Splits an order's SKUs (sorted, the order's shard first) into those of the order's
/// own shard, settled in memory and committed with the decision, and the others, whose
/// owners apply the decision once it is durable. Outside cluster mode every SKU is in
/// the one shard.
pub(super) fn split_by_order_shard(skus: &[Sku], shard_of: impl Fn(&Sku) -> Shard) -> (Vec<Sku>, Vec<Sku>) {
    let Some(order_shard) = skus.first().map(&shard_of) else {
        return (Vec::new(), Vec::new());
    };
    skus.iter().cloned().partition(|sku| shard_of(sku) == order_shard)
}

/// Confirms or releases the order's reservation on each SKU of the order's own shard in
/// this node's SKU actors, retrying an actor that is briefly unavailable (a saga step
/// must finish, not give up). `None` when the order's shard is no longer this node's:
/// the step stops before anything is decided, and the shard's owner resumes the order.
/// (The actors of a lost shard are dropped, so what was settled in their memory here
/// is reloaded from the store by the next owner.)
pub(super) async fn settle_in_order_shard(
    deps: &Deps,
    skus: &[Sku],
    order: OrderId,
    how: ChangeKind,
) -> Option<Vec<JournalEntry>> {
    let order_shard = skus.first().map(|sku| deps.ownership.shard_of(sku));
    let mut journal = Vec::new();
    for sku in skus {
        let entry = with_backoff(Duration::from_millis(20), Duration::from_secs(2), || async move {
            if order_shard.is_some_and(|shard| deps.ownership.epoch(shard).is_none()) {
                return Some(None);
            }
            let result = match how {
                ChangeKind::Confirm => deps.inventory.confirm(sku, order).await,
                _ => deps.inventory.release(sku, order).await,
            };
            match result {
                Ok(entry) => Some(Some(entry)),
                Err(InventoryFailure::NotOwner(_)) => Some(None),
                Err(e) => {
                    warn!(%sku, order_id = %order, error = %e, "inventory not answering, retrying");
                    None
                }
            }
        })
        .await;
        journal.extend(entry?);
    }
    Some(journal)
}

/// How long a step tells the owners of its other SKUs about its decision before it
/// leaves them to their owners' sweeps (which apply it from the store in any case).
const TELL_OWNERS_WITHIN: Duration = Duration::from_secs(10);

/// After the order's decision is durable: each SKU outside the order's shard has the
/// decision applied by its owner (this node's own SKU actors through the same path, the
/// others through `/internal/v1/reservations/settle`), each owner under its own fence
/// and with its own inventory event. Retried until acknowledged, for a while: an owner
/// that cannot be reached applies it from the store in its sweep.
pub(super) async fn tell_owners(deps: &Deps, skus: &[Sku], order: OrderId, how: ChangeKind) {
    let deadline = std::time::Instant::now() + TELL_OWNERS_WITHIN;
    for sku in skus {
        let told = with_backoff(Duration::from_millis(20), Duration::from_secs(2), || async move {
            let result = if deps.ownership.holds_sku(sku) {
                apply_decision(deps, sku, order).await.map(|_| ()).map_err(|e| format!("{e}"))
            } else {
                let request = RemoteSettle {
                    order,
                    sku: sku.clone(),
                    confirm: how == ChangeKind::Confirm,
                };
                deps.peers.settle(&request).await.map(|_| ()).map_err(|e| format!("{e:?}"))
            };
            match result {
                Ok(()) => Some(true),
                Err(_) if std::time::Instant::now() >= deadline => Some(false),
                Err(e) => {
                    warn!(%sku, order_id = %order, error = e, "owner of the SKU has not applied the decision yet, retrying");
                    None
                }
            }
        })
        .await;
        if !told {
            warn!(%sku, order_id = %order, "decision not acknowledged by the SKU's owner; its sweep applies it");
        }
    }
}

/// Confirms (towards COMPLETED) or releases (towards CANCELLED) every reservation of
/// the order and commits the step, under the configured inventory strategy.
pub(super) async fn settle_and_commit(
    deps: &Deps,
    skus: &[Sku],
    how: ChangeKind,
    change: &StatusChange,
    traceparent: Option<String>,
    prefix: Vec<Event>,
    consumed: Option<Consumed>,
) -> Step {
    let order = change.order_id;
    let order_sku = skus.first();
    let build = |journal| WriteSet {
        consumed: consumed.clone(),
        ..settle_set(how, change, order_sku, traceparent.as_deref(), &prefix, journal)
    };
    deps.keeper.settle(deps, order, skus, how, change.to, &build).await
}

/// Commits a saga step's write-set through the write-behind.
pub(super) async fn commit_step(deps: &Deps, set: WriteSet, order: OrderId, target: OrderStatus) -> Step {
    retry_until_durable(deps, order, target, || async {
        Ok(deps.write_behind.commit(set.clone()).await?)
    })
    .await
}

/// Runs a saga step until it is durable, retrying while the store is down. `Refused`
/// only if the store refuses the step for good and the order is not already in `target`
/// (an earlier attempt may have committed even though it reported failure).
pub(super) async fn retry_until_durable<F, Fut>(
    deps: &Deps,
    order: OrderId,
    target: OrderStatus,
    mut attempt: F,
) -> Step
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    with_backoff(Duration::from_millis(50), Duration::from_secs(5), || {
        let tried = attempt();
        async move {
            match tried.await {
                Ok(()) => Some(Step::Committed),
                Err(StoreError::NotOwner) => {
                    info!(order_id = %order, "the order's shard moved to another node; it resumes there");
                    Some(Step::NotOwner)
                }
                Err(StoreError::Rejected(e) | StoreError::Conflict(e) | StoreError::Corrupt(e)) => {
                    if let Ok(Some(stored)) = deps.store.get_order(order).await {
                        if stored.status == target {
                            return Some(Step::Committed);
                        }
                    }
                    error!(order_id = %order, error = %e, "saga step refused by the store");
                    Some(Step::Refused)
                }
                Err(e) => {
                    warn!(order_id = %order, error = %e, "saga step not durable yet, retrying");
                    None
                }
            }
        }
    })
    .await
}

/// The order's recorded decision applied to its reservation on `sku`, a SKU of this
/// node's outside the order's shard: the SKU actor confirms (COMPLETED) or releases
/// (CANCELLED) it, and the entry commits with its inventory event under this node's fence
/// for the SKU, before this returns. Idempotent: `Ok(None)` when nothing is held for the
/// order any more (applied before, or never reserved here). While another application of
/// the same reservation is on its way to the store, `Unavailable` (come back), never
/// "done" early; `NotOwner` when the SKU moved (its new owner sweeps it from the store).
pub(super) async fn apply_decision(
    deps: &Deps,
    sku: &Sku,
    order: OrderId,
) -> Result<Option<JournalEntry>, InventoryFailure> {
    let key = (sku.clone(), order);
    match deps.settling.entry(key.clone()) {
        dashmap::Entry::Occupied(_) => {
            return Err(InventoryFailure::Unavailable(
                (format!("the decision of order {order} is being applied to {sku}; not durable yet")).into(),
            ))
        }
        dashmap::Entry::Vacant(slot) => {
            slot.insert(());
        }
    }
    let _applying = Applying { deps, key };
    apply_decision_once(deps, sku, order).await
}

/// The "being applied" mark of [`apply_decision`], cleared however the application ends.
struct Applying<'a> {
    deps: &'a Deps,
    key: (Sku, OrderId),
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.deps.settling.remove(&self.key);
    }
}

async fn apply_decision_once(deps: &Deps, sku: &Sku, order: OrderId) -> Result<Option<JournalEntry>, InventoryFailure> {
    let how = match deps.store.order_status(order).await? {
        Some(OrderStatus::Completed) => ChangeKind::Confirm,
        Some(OrderStatus::Cancelled) => ChangeKind::Release,
        Some(status) => {
            return Err(InventoryFailure::Unavailable(
                (format!("order {order} is {} (no decision recorded yet)", status.as_str())).into(),
            ))
        }
        None => {
            return Err(InventoryFailure::Unavailable(
                (format!("order {order} is not in the store")).into(),
            ))
        }
    };
    let entry = match how {
        ChangeKind::Confirm => deps.inventory.confirm(sku, order).await?,
        _ => deps.inventory.release(sku, order).await?,
    };
    let Some(entry) = entry else {
        return Ok(None);
    };
    let set = apply_set(how, order, entry.clone());
    crate::failpoints::hit("apply_decision_before_commit").await;
    let durable = with_backoff(Duration::from_millis(50), Duration::from_secs(2), || async {
        match deps.write_behind.commit(set.clone()).await {
            Ok(()) => Some(true),
            Err(CommitError::Store(StoreError::NotOwner)) => Some(false),
            Err(e) => {
                warn!(%sku, order_id = %order, error = %e, "decision not durable at the SKU's owner yet, retrying");
                None
            }
        }
    })
    .await;
    if !durable {
        return Err(InventoryFailure::NotOwner(sku.clone()));
    }
    Ok(Some(entry))
}

impl Orders {
    /// Cluster mode: applies `order`'s recorded decision to its reservation on `sku`
    /// (a SKU of this node's) for the node that recorded it, made durable here under this
    /// node's fence before it returns ([`apply_decision`]). The decision is read from the
    /// store, not taken from the caller: a settle for an order with no decision yet is
    /// refused (`Unavailable`), and one repeated while the first is not durable is told to
    /// come back rather than "done".
    pub(crate) async fn settle_for_peer(
        &self,
        sku: &Sku,
        order: OrderId,
        confirm: bool,
    ) -> Result<Option<JournalEntry>, InventoryFailure> {
        // On a task of its own: the peer that asked may time out and hang up, and the
        // request's future would be dropped between the SKU actor's settle and its commit
        // (memory settled, the store not, the "being applied" mark never cleared).
        let (deps, owned_sku) = (self.deps.clone(), sku.clone());
        let applied = tokio::spawn(async move { apply_decision(&deps, &owned_sku, order).await })
            .await
            .map_err(|e| {
                InventoryFailure::Unavailable(format!("applying the decision of order {order}: {e}").into())
            })??;
        if let Some(entry) = &applied {
            let confirmed = entry.change.kind == ChangeKind::Confirm;
            if confirmed != confirm {
                // The store's decision wins: the caller's view of it was stale.
                warn!(%sku, order_id = %order, confirm, "a peer asked for the other decision; the recorded one was applied");
            }
        }
        Ok(applied)
    }

    /// Cluster mode: the sweep of the decided orders' reservations. Every reservation of
    /// this node's SKUs whose order is already COMPLETED or CANCELLED gets that decision
    /// applied ([`apply_decision`]): what a saga's node could not tell (it died, lost its
    /// shard, or this node was unreachable) after its decision was durable. Runs every
    /// lease round and after every claim. Returns how many it applied.
    pub(crate) async fn sweep_decided(&self) -> Result<usize, StoreError> {
        let deps = &self.deps;
        if !deps.ownership.enabled() {
            return Ok(0);
        }
        let mut applied = 0;
        for (sku, order) in deps.store.decided_reservations().await? {
            if !deps.ownership.holds_sku(&sku) {
                continue;
            }
            match apply_decision(deps, &sku, order).await {
                Ok(Some(_)) => {
                    info!(%sku, order_id = %order, "swept: the recorded decision applied to a reservation left behind");
                    applied += 1;
                }
                Ok(None) => {}
                // Being applied by the saga's request right now, or the SKU just moved:
                // the next round looks again.
                Err(e) => info!(%sku, order_id = %order, error = %e, "swept reservation not settled yet"),
            }
        }
        Ok(applied)
    }

    /// Cluster mode: runs [`Self::sweep_decided`] every `every` (a lease round).
    pub(crate) fn sweep_in_background(&self, every: Duration) {
        if !self.deps.ownership.enabled() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = this.sweep_decided().await {
                    warn!(error = %e, "cannot sweep decided reservations");
                }
            }
        });
    }

    /// The saga of `order` stopped because its shard moved (a fenced step, a
    /// relinquish). If this node holds the shard again (lost and re-claimed meanwhile: the
    /// re-claim's recovery skipped the order while the old saga was still registered),
    /// the order resumes here from the store. If it does not, a later claim's recovery
    /// finds the order (the saga is deregistered before this runs).
    pub(super) async fn resume_if_held(&self, order: Order) {
        let deps = &self.deps;
        if deps.ownership.epoch(order_shard(&deps.ownership, &order)).is_none() {
            return;
        }
        let id = order.id;
        let stored = with_backoff(Duration::from_millis(50), Duration::from_secs(2), || async {
            match deps.store.get_order(id).await {
                Ok(order) => Some(order),
                Err(e) => {
                    warn!(order_id = %id, error = %e, "cannot read a stopped saga's order yet");
                    None
                }
            }
        })
        .await;
        if let Some(order) = stored.filter(|o| matches!(o.status, OrderStatus::PendingPayment | OrderStatus::Paid)) {
            info!(order_id = %id, "this node holds the order's shard again; resuming its saga");
            self.start_saga(order, None, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skus(names: &[&str]) -> Vec<Sku> {
        names.iter().map(|n| Sku::parse(*n).unwrap()).collect()
    }

    #[test]
    fn the_decision_carries_the_order_shards_skus_and_the_rest_are_told_after() {
        // Shard = first letter: the order's shard is its smallest SKU's ("A").
        let shard = |sku: &Sku| Shard::from(sku.as_str().as_bytes()[0]);
        let (with, after) = split_by_order_shard(&skus(&["A-1", "A-2", "B-1", "C-1"]), shard);
        assert_eq!(with, skus(&["A-1", "A-2"]));
        assert_eq!(after, skus(&["B-1", "C-1"]));
        // One node (every SKU in shard 0): everything settles with the decision.
        let (with, after) = split_by_order_shard(&skus(&["A-1", "B-1"]), |_| 0);
        assert_eq!((with.len(), after.len()), (2, 0));
        assert_eq!(split_by_order_shard(&[], shard), (vec![], vec![]));
    }
}
