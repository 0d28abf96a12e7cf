//! Where an order's stock is taken and settled, chosen once at start: the design's
//! inventory actors + write-behind, or the prototype's row locks (the benchmark baseline).

use super::decision::{
    commit_step, retry_until_durable, settle_in_order_shard, split_by_order_shard, tell_owners, Step,
};
use super::{Orders, PlaceError, PlaceOrder, Placed};
use crate::config::InventoryStrategy;
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::ChangeKind;
use crate::domain::order::OrderStatus;
use crate::persistence::{JournalEntry, WriteSet};
use std::collections::BTreeMap;

use super::Deps;

/// Where an order's stock is taken and settled, chosen once at start from
/// `inventory.strategy`: the design's inventory actors + write-behind, or the
/// prototype's row-locking transactions (kept as the benchmark's baseline). The saga
/// and the placement call it without knowing which: no strategy branches.
#[async_trait::async_trait]
pub(super) trait StockKeeper: Send + Sync {
    /// Reserves every SKU of the order or none and makes the accepted order durable.
    async fn place(
        &self,
        orders: &Orders,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError>;

    /// Confirms or releases the order's reservation on every SKU and commits the step's
    /// write-set, which `build` makes of the journal entries: the order's decision.
    async fn settle(
        &self,
        deps: &Deps,
        order: OrderId,
        skus: &[Sku],
        how: ChangeKind,
        target: OrderStatus,
        build: &(dyn Fn(Vec<JournalEntry>) -> WriteSet + Send + Sync),
    ) -> Step;
}

impl dyn StockKeeper {
    pub(super) fn of(strategy: InventoryStrategy) -> Box<dyn StockKeeper> {
        match strategy {
            InventoryStrategy::Actor => Box::new(InMemory),
            InventoryStrategy::SqlRowLock => Box::new(RowLocked),
        }
    }
}

/// Reservations in the SKU actors' memory, made durable by the group commit.
pub(super) struct InMemory;

#[async_trait::async_trait]
impl StockKeeper for InMemory {
    async fn place(
        &self,
        orders: &Orders,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        orders.place_in_memory(request, wanted, id, now, expires_at).await
    }

    async fn settle(
        &self,
        deps: &Deps,
        order: OrderId,
        skus: &[Sku],
        how: ChangeKind,
        target: OrderStatus,
        build: &(dyn Fn(Vec<JournalEntry>) -> WriteSet + Send + Sync),
    ) -> Step {
        // Decide first, then apply: the SKUs of the order's own shard are settled in
        // memory and committed with the decision (one transaction, one fence); the owners
        // of the others apply it only once it is durable, so no SKU anywhere is confirmed
        // or released for a decision that might still be lost.
        let (with_decision, elsewhere) = split_by_order_shard(skus, |sku| deps.ownership.shard_of(sku));
        let Some(journal) = settle_in_order_shard(deps, &with_decision, order, how).await else {
            return Step::NotOwner;
        };
        if !elsewhere.is_empty() {
            crate::failpoints::hit("before_decision_commit").await;
        }
        let step = commit_step(deps, build(journal), order, target).await;
        if step == Step::Committed && !elsewhere.is_empty() {
            crate::failpoints::hit("after_decision_commit").await;
            tell_owners(deps, &elsewhere, order, how).await;
        }
        step
    }
}

/// `sql_row_lock`: every placement and saga step is one transaction locking the SKU rows.
pub(super) struct RowLocked;

#[async_trait::async_trait]
impl StockKeeper for RowLocked {
    async fn place(
        &self,
        orders: &Orders,
        request: PlaceOrder,
        wanted: BTreeMap<Sku, i64>,
        id: OrderId,
        now: i64,
        expires_at: i64,
    ) -> Result<Placed, PlaceError> {
        orders.place_row_locked(request, wanted, id, now, expires_at).await
    }

    async fn settle(
        &self,
        deps: &Deps,
        order: OrderId,
        skus: &[Sku],
        how: ChangeKind,
        target: OrderStatus,
        build: &(dyn Fn(Vec<JournalEntry>) -> WriteSet + Send + Sync),
    ) -> Step {
        retry_until_durable(deps, order, target, || {
            deps.store.settle_row_locked(order, skus, how, build)
        })
        .await
    }
}
