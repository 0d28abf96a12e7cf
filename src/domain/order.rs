//! Orders and their state machine:
//! `PENDING_PAYMENT -> PAID -> COMPLETED`, or `PENDING_PAYMENT -> CANCELLED`.
//! Illegal transitions are errors, never applied.

use super::ids::{OrderId, Sku, UserId};
use super::money::{Money, MoneyError};
use super::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Completed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "PENDING_PAYMENT",
            Self::Paid => "PAID",
            Self::Completed => "COMPLETED",
            Self::Cancelled => "CANCELLED",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::PendingPayment, Self::Paid, Self::Completed, Self::Cancelled]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
    pub(crate) fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled)
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CancelReason {
    PaymentFailed,
    Customer,
    Expired,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentFailed => "payment_failed",
            Self::Customer => "customer",
            Self::Expired => "expired",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::PaymentFailed, Self::Customer, Self::Expired]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    PaymentSucceeded,
    Complete,
    Cancel(CancelReason),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("order is {from:?}: cannot apply {transition:?}")]
pub(crate) struct IllegalTransition {
    pub(crate) from: OrderStatus,
    pub(crate) transition: Transition,
}

/// The state machine, as one function.
pub(crate) fn next_status(from: OrderStatus, transition: Transition) -> Result<OrderStatus, IllegalTransition> {
    use OrderStatus::{Cancelled, Completed, Paid, PendingPayment};
    match (from, transition) {
        (PendingPayment, Transition::PaymentSucceeded) => Ok(Paid),
        (Paid, Transition::Complete) => Ok(Completed),
        (PendingPayment, Transition::Cancel(_)) => Ok(Cancelled),
        _ => Err(IllegalTransition { from, transition }),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    #[schema(value_type = String)]
    pub sku: Sku,
    pub(crate) qty: i64,
    pub(crate) unit_price: Money,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub(crate) user_id: UserId,
    pub status: OrderStatus,
    pub lines: Vec<OrderLine>,
    pub(crate) total: Money,
    pub(crate) payment_token: String,
    pub(crate) cancel_reason: Option<CancelReason>,
    pub(crate) created_at: Millis,
    pub(crate) updated_at: Millis,
    pub(crate) expires_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderRequestError {
    #[error("an order needs at least one item")]
    NoItems,
    #[error("an order takes at most {max} items, got {got}")]
    TooManyItems { max: usize, got: usize },
    #[error("qty of {sku} must be between 1 and {max}, got {got}")]
    BadQuantity { sku: Sku, max: i64, got: i64 },
    #[error("{0}")]
    Money(#[from] MoneyError),
}

/// Limits a shop sets on a single order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OrderLimits {
    pub(crate) max_items: usize,
    pub(crate) max_qty_per_item: i64,
}

/// Checks an order request's lines and returns the quantity to reserve per SKU,
/// in SKU order: reserving in one global order keeps multi-item orders from
/// deadlocking each other, and two lines on the same SKU reserve their sum.
pub(crate) fn quantities_by_sku(
    items: &[(Sku, i64)],
    limits: OrderLimits,
) -> Result<BTreeMap<Sku, i64>, OrderRequestError> {
    if items.is_empty() {
        return Err(OrderRequestError::NoItems);
    }
    if items.len() > limits.max_items {
        return Err(OrderRequestError::TooManyItems {
            max: limits.max_items,
            got: items.len(),
        });
    }
    let mut wanted = BTreeMap::new();
    for (sku, qty) in items {
        if *qty < 1 || *qty > limits.max_qty_per_item {
            return Err(OrderRequestError::BadQuantity {
                sku: sku.clone(),
                max: limits.max_qty_per_item,
                got: *qty,
            });
        }
        *wanted.entry(sku.clone()).or_insert(0) += qty;
    }
    Ok(wanted)
}

/// The order total: the sum of qty × unit price; all lines must share one currency.
pub(crate) fn total(lines: &[OrderLine]) -> Result<Money, MoneyError> {
    let mut lines = lines.iter();
    let first = lines.next().map(|l| l.unit_price.times(l.qty)).transpose()?;
    let Some(mut sum) = first else {
        return Err(MoneyError::Overflow);
    };
    for line in lines {
        sum = sum.plus(line.unit_price.times(line.qty)?)?;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::Currency;
    use OrderStatus::{Cancelled, Completed, Paid, PendingPayment};

    #[test]
    fn the_state_machine_allows_only_the_documented_paths() {
        let cancel = Transition::Cancel(CancelReason::Customer);
        assert_eq!(next_status(PendingPayment, Transition::PaymentSucceeded), Ok(Paid));
        assert_eq!(next_status(Paid, Transition::Complete), Ok(Completed));
        assert_eq!(next_status(PendingPayment, cancel), Ok(Cancelled));
        for (from, t) in [
            (Paid, cancel),
            (Completed, cancel),
            (Cancelled, Transition::PaymentSucceeded),
            (Cancelled, cancel),
            (PendingPayment, Transition::Complete),
            (Completed, Transition::Complete),
        ] {
            assert!(next_status(from, t).is_err(), "{from:?} --{t:?}--> must be rejected");
        }
    }

    #[test]
    fn lines_on_the_same_sku_reserve_their_sum_in_sku_order() {
        let limits = OrderLimits {
            max_items: 10,
            max_qty_per_item: 5,
        };
        let (a, b) = (Sku::parse("B").unwrap(), Sku::parse("A").unwrap());
        let wanted = quantities_by_sku(&[(a.clone(), 2), (b.clone(), 1), (a.clone(), 3)], limits).unwrap();
        assert_eq!(wanted.into_iter().collect::<Vec<_>>(), vec![(b, 1), (a, 5)]);
    }

    #[test]
    fn bad_requests_are_refused() {
        let limits = OrderLimits {
            max_items: 2,
            max_qty_per_item: 5,
        };
        let s = Sku::parse("A").unwrap();
        assert_eq!(quantities_by_sku(&[], limits), Err(OrderRequestError::NoItems));
        assert!(matches!(
            quantities_by_sku(&[(s.clone(), 0)], limits),
            Err(OrderRequestError::BadQuantity { .. })
        ));
        assert!(matches!(
            quantities_by_sku(&[(s.clone(), 6)], limits),
            Err(OrderRequestError::BadQuantity { .. })
        ));
        assert!(matches!(
            quantities_by_sku(&[(s.clone(), 1), (s.clone(), 1), (s, 1)], limits),
            Err(OrderRequestError::TooManyItems { .. })
        ));
    }

    #[test]
    fn total_multiplies_and_sums() {
        let krw = Currency::parse("KRW").unwrap();
        let line = |qty, amount| OrderLine {
            sku: Sku::parse("A").unwrap(),
            qty,
            unit_price: Money::new(amount, krw).unwrap(),
        };
        assert_eq!(total(&[line(2, 1000), line(1, 500)]).unwrap().amount, 2500);
    }
}
