//! Stock of one SKU: `stock` on hand, `reserved` held by unpaid orders, and the live
//! reservations that make up `reserved`.
//!
//! Every accepted operation returns a [`Change`] for the journal. A change records
//! *deltas* of `stock` and `reserved` rather than absolute values: the group commit
//! applies the changes of one SKU as `stock = stock + Σ`, so batches that reach the
//! database in a different order than the actor produced them still add up to the
//! same snapshot. An admin "set stock to n" is recorded as the delta that took the
//! actor's state to n.

use super::ids::OrderId;
use super::Millis;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("out of stock: {requested} requested, {available} available")]
    OutOfStock { requested: i64, available: i64 },
    #[error("quantity must be positive, got {0}")]
    InvalidQuantity(i64),
    #[error("stock cannot go below the {reserved} units reserved by unpaid orders (asked for {requested})")]
    BelowReserved { requested: i64, reserved: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ChangeKind {
    Reserve,
    Confirm,
    Release,
    SetStock,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Confirm => "confirm",
            Self::Release => "release",
            Self::SetStock => "set_stock",
        }
    }
}

/// One accepted inventory operation, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Change {
    pub(crate) kind: ChangeKind,
    pub(crate) order: Option<OrderId>,
    pub(crate) qty: i64,
    pub(crate) stock_delta: i64,
    pub(crate) reserved_delta: i64,
    /// Set for reservations: when the unpaid order expires.
    pub(crate) expires_at: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    pub(crate) qty: i64,
    pub(crate) expires_at: Millis,
}

/// What an idempotent operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Applied(Change),
    /// The order's reservation already exists (reserve) or no longer exists
    /// (confirm, release): repeating the operation changes nothing.
    Unchanged,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SkuInventory {
    stock: i64,
    reserved: i64,
    reservations: HashMap<OrderId, Reservation>,
}

impl SkuInventory {
    pub fn new(stock: i64) -> Result<Self, InventoryError> {
        if stock < 0 {
            return Err(InventoryError::InvalidQuantity(stock));
        }
        Ok(Self {
            stock,
            ..Self::default()
        })
    }

    /// Rebuilds state from a snapshot's stock and its live reservations.
    pub(crate) fn restore(stock: i64, reservations: impl IntoIterator<Item = (OrderId, Reservation)>) -> Self {
        let reservations: HashMap<_, _> = reservations.into_iter().collect();
        let reserved = reservations.values().map(|r| r.qty).sum();
        Self {
            stock,
            reserved,
            reservations,
        }
    }

    pub(crate) fn stock(&self) -> i64 {
        self.stock
    }
    pub(crate) fn reserved(&self) -> i64 {
        self.reserved
    }
    pub(crate) fn available(&self) -> i64 {
        self.stock - self.reserved
    }
    pub(crate) fn reservation(&self, order: &OrderId) -> Option<&Reservation> {
        self.reservations.get(order)
    }
    pub(crate) fn has_reservations(&self) -> bool {
        !self.reservations.is_empty()
    }

    /// Holds `qty` units for `order` if that many are available.
    pub fn reserve(&mut self, order: OrderId, qty: i64, expires_at: Millis) -> Result<Outcome, InventoryError> {
        if self.reservations.contains_key(&order) && qty > 0 {
            return Ok(Outcome::Unchanged);
        }
        let change = reserve_change(order, qty, expires_at, self.available())?;
        self.reserved += qty;
        self.reservations.insert(order, Reservation { qty, expires_at });
        Ok(Outcome::Applied(change))
    }

    /// The order was paid: its units leave stock for good.
    pub(crate) fn confirm(&mut self, order: OrderId) -> Outcome {
        self.settle(order, ChangeKind::Confirm)
    }

    /// The order will not be paid (failed, cancelled, expired): its units become available again.
    pub(crate) fn release(&mut self, order: OrderId) -> Outcome {
        self.settle(order, ChangeKind::Release)
    }

    fn settle(&mut self, order: OrderId, kind: ChangeKind) -> Outcome {
        let Some(held) = self.reservations.remove(&order) else {
            return Outcome::Unchanged;
        };
        let change = settle_change(kind, order, held.qty);
        self.reserved += change.reserved_delta;
        self.stock += change.stock_delta;
        Outcome::Applied(change)
    }

    /// Takes back a reservation whose order never became durable (its commit failed).
    /// Unlike [`release`](Self::release) this is not journaled: the journal never had it.
    pub fn forget(&mut self, order: OrderId) {
        if let Some(held) = self.reservations.remove(&order) {
            self.reserved -= held.qty;
        }
    }

    /// Admin change of stock on hand; never below what unpaid orders hold.
    pub(crate) fn set_stock(&mut self, stock: i64) -> Result<Change, InventoryError> {
        if stock < self.reserved {
            return Err(InventoryError::BelowReserved {
                requested: stock,
                reserved: self.reserved,
            });
        }
        let delta = stock - self.stock;
        self.stock = stock;
        Ok(Change {
            kind: ChangeKind::SetStock,
            order: None,
            qty: stock,
            stock_delta: delta,
            reserved_delta: 0,
            expires_at: None,
        })
    }

    /// Orders whose reservation is past its deadline at `now`.
    pub(crate) fn expired(&self, now: Millis) -> Vec<OrderId> {
        self.reservations
            .iter()
            .filter(|(_, r)| r.expires_at <= now)
            .map(|(order, _)| *order)
            .collect()
    }
}

/// The reservation rule on its own: `qty` units for `order` if `available` allows.
/// [`SkuInventory::reserve`] applies it in memory; the `sql_row_lock` strategy applies
/// it to a locked database row.
pub(crate) fn reserve_change(
    order: OrderId,
    qty: i64,
    expires_at: Millis,
    available: i64,
) -> Result<Change, InventoryError> {
    if qty <= 0 {
        return Err(InventoryError::InvalidQuantity(qty));
    }
    if qty > available {
        return Err(InventoryError::OutOfStock {
            requested: qty,
            available,
        });
    }
    Ok(Change {
        kind: ChangeKind::Reserve,
        order: Some(order),
        qty,
        stock_delta: 0,
        reserved_delta: qty,
        expires_at: Some(expires_at),
    })
}

/// What confirming (units leave stock) or releasing (units become available) a
/// reservation of `qty` changes. `kind` is `Confirm` or `Release`.
pub(crate) fn settle_change(kind: ChangeKind, order: OrderId, qty: i64) -> Change {
    let stock_delta = if kind == ChangeKind::Confirm { -qty } else { 0 };
    Change {
        kind,
        order: Some(order),
        qty,
        stock_delta,
        reserved_delta: -qty,
        expires_at: None,
    }
}

/// The sold-out decision made from published availabilities instead of the actors:
/// `lines` are `(sku, qty, available)` in the order reservations are taken, `available`
/// `None` where it is not known (no live actor). Reservations stop at the first line that
/// cannot be reserved, so that line names the refusal, provided every line before it would
/// have been reserved. Returns that line when it is known to fall short and every earlier
/// line is known; `None` (ask the actors) as soon as an unknown line comes first. Invalid
/// quantities are never refused here: the reservation rule answers those, so a line with
/// one is treated as unknown.
pub(crate) fn first_short<K>(lines: impl IntoIterator<Item = Option<(K, i64, i64)>>) -> Option<(K, i64, i64)> {
    for line in lines {
        let (key, qty, available) = line?;
        if qty <= 0 {
            return None;
        }
        if qty > available {
            return Some((key, qty, available));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn order(n: u128) -> OrderId {
        OrderId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn first_short_names_the_line_reservations_stop_at() {
        let known = |v: &[(u8, i64, i64)]| v.iter().map(|l| Some(*l)).collect::<Vec<_>>();
        assert_eq!(first_short(known(&[(1, 1, 5), (2, 2, 1), (3, 9, 0)])), Some((2, 2, 1)));
        assert_eq!(first_short(known(&[(1, 1, 1), (2, 1, 1)])), None, "enough everywhere");
        // An unknown line before the short one: only the actors can say what happens there.
        assert_eq!(first_short(vec![Some((1, 1, 5)), None, Some((3, 1, 0))]), None);
        // An unknown line after it does not matter: reservations stop before it.
        assert_eq!(first_short(vec![Some((1, 3, 2)), None]), Some((1, 3, 2)));
        // A quantity the rule rejects is the rule's to answer, not a sold-out.
        assert_eq!(first_short(known(&[(1, 0, 0)])), None);
        assert_eq!(first_short(known(&[(1, -1, 0)])), None);
        assert_eq!(first_short(known(&[(1, 0, 5), (2, 1, 0)])), None);
    }

    #[test]
    fn last_unit_goes_to_exactly_one_buyer() {
        let mut inv = SkuInventory::new(1).unwrap();
        assert!(matches!(inv.reserve(order(1), 1, 0), Ok(Outcome::Applied(_))));
        assert_eq!(
            inv.reserve(order(2), 1, 0),
            Err(InventoryError::OutOfStock {
                requested: 1,
                available: 0
            })
        );
    }

    #[test]
    fn operations_are_idempotent_by_order() {
        let mut inv = SkuInventory::new(5).unwrap();
        inv.reserve(order(1), 2, 0).unwrap();
        assert_eq!(inv.reserve(order(1), 2, 0), Ok(Outcome::Unchanged));
        assert_eq!(inv.reserved(), 2);
        assert!(matches!(inv.confirm(order(1)), Outcome::Applied(_)));
        assert_eq!(inv.confirm(order(1)), Outcome::Unchanged);
        assert_eq!(inv.release(order(1)), Outcome::Unchanged);
        assert_eq!((inv.stock(), inv.reserved()), (3, 0));
    }

    #[test]
    fn stock_cannot_drop_below_reserved() {
        let mut inv = SkuInventory::new(5).unwrap();
        inv.reserve(order(1), 4, 0).unwrap();
        assert_eq!(
            inv.set_stock(3),
            Err(InventoryError::BelowReserved {
                requested: 3,
                reserved: 4
            })
        );
        assert_eq!(inv.set_stock(4).unwrap().stock_delta, -1);
    }

    #[test]
    fn expired_lists_only_due_reservations() {
        let mut inv = SkuInventory::new(5).unwrap();
        inv.reserve(order(1), 1, 100).unwrap();
        inv.reserve(order(2), 1, 200).unwrap();
        assert_eq!(inv.expired(150), vec![order(1)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u8, i64),
        Confirm(u8),
        Release(u8),
        Forget(u8),
        SetStock(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..12, -1i64..6).prop_map(|(o, q)| Op::Reserve(o, q)),
            2 => (0u8..12).prop_map(Op::Confirm),
            2 => (0u8..12).prop_map(Op::Release),
            1 => (0u8..12).prop_map(Op::Forget),
            1 => (-2i64..20).prop_map(Op::SetStock),
        ]
    }

    proptest! {
        /// Random operation sequences keep every invariant of docs/design.md, and the journal's
        /// deltas always add up to the state (which is what recovery and reconcile rely on).
        #[test]
        fn random_operations_keep_the_invariants(initial in 0i64..20, ops in proptest::collection::vec(op(), 0..200)) {
            let mut inv = SkuInventory::new(initial).unwrap();
            let (mut journal_stock, mut journal_reserved) = (initial, 0i64);
            let mut received = initial;
            let mut sold = 0i64;
            let mut confirmed = std::collections::HashSet::new();
            let mut forgotten_reserved = 0i64;
            let mut settled = std::collections::HashSet::new();
            for op in ops {
                let change = match op {
                    // Order ids are fresh per placement: a settled order is never reserved again.
                    Op::Reserve(o, _) if settled.contains(&o) => None,
                    Op::Reserve(o, q) => match inv.reserve(order(o.into()), q, 0) {
                        Ok(Outcome::Applied(c)) => Some(c),
                        Ok(Outcome::Unchanged) => None,
                        Err(InventoryError::OutOfStock { requested, available }) => {
                            prop_assert!(requested > available);
                            None
                        }
                        Err(_) => { prop_assert!(q <= 0); None }
                    },
                    Op::Confirm(o) => match inv.confirm(order(o.into())) {
                        Outcome::Applied(c) => {
                            settled.insert(o);
                            prop_assert!(confirmed.insert(o), "order {} confirmed twice", o);
                            sold += c.qty;
                            Some(c)
                        }
                        Outcome::Unchanged => None,
                    },
                    Op::Release(o) => match inv.release(order(o.into())) {
                        Outcome::Applied(c) => {
                            settled.insert(o);
                            Some(c)
                        }
                        Outcome::Unchanged => None,
                    },
                    Op::Forget(o) => {
                        let held = inv.reservation(&order(o.into())).map(|r| r.qty).unwrap_or(0);
                        inv.forget(order(o.into()));
                        forgotten_reserved += held;
                        None
                    }
                    Op::SetStock(n) => inv.set_stock(n).ok(),
                };
                if let Some(c) = change {
                    journal_stock += c.stock_delta;
                    journal_reserved += c.reserved_delta;
                    if c.kind == ChangeKind::SetStock && c.stock_delta > 0 {
                        received += c.stock_delta;
                    }
                }
                prop_assert!(0 <= inv.reserved() && inv.reserved() <= inv.stock());
                prop_assert_eq!(inv.reserved(), inv.reservations.values().map(|r| r.qty).sum::<i64>());
                prop_assert_eq!(journal_stock, inv.stock());
                prop_assert_eq!(journal_reserved - forgotten_reserved, inv.reserved());
                prop_assert!(sold <= received);
            }
        }
    }
}
