//! What happened to an order's money: the payment outcome an order's view shows, and
//! the states of a refund.
//!
//! A refund exists for one situation: the gateway may have captured a payment for an
//! order that was cancelled meanwhile (a customer cancel or the reservation expiry won
//! while the charge was still in flight, or the node that charged died). The order stays
//! `CANCELLED`; any money taken goes back, and where nothing was taken the gateway voids
//! the order so that a charge still in flight captures nothing (docs/design.md,
//! "Refunds").

use super::order::{CancelReason, OrderStatus};
use serde::{Deserialize, Serialize};

/// Where a refund stands. Stored as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefundStatus {
    /// Recorded; the refunder calls the gateway (again) when it is due.
    Requested,
    /// The gateway gave the money back (`payment_refunded` event).
    Refunded,
    /// The gateway had captured nothing for the order and now refuses any capture of it
    /// (a void): nothing was taken, nothing goes back, no event.
    Voided,
    /// Given up after `payment.refund_attempts` (`refund_failed` event, `failed_events`
    /// row; `emporium replay` requests it again).
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Refunded => "refunded",
            Self::Voided => "voided",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "requested" => Some(Self::Requested),
            "refunded" => Some(Self::Refunded),
            "voided" => Some(Self::Voided),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// The payment outcome of an order, as its view shows it (`payment.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PaymentStatus {
    /// No final answer from the gateway yet.
    Pending,
    /// Charged; the order completed.
    Captured,
    /// The gateway refused (or never answered within the attempts); nothing was taken.
    Failed,
    /// Cancelled before any charge succeeded; nothing was taken.
    NotCharged,
    /// Cancelled while a charge may have been taken (or still be under way): the
    /// gateway is being asked to give it back, or to void the order if it took nothing.
    RefundPending,
    /// Charged after the order was cancelled, and given back.
    Refunded,
    /// Charged after the order was cancelled; the refund was given up on (operators
    /// replay it from `failed_events`).
    RefundFailed,
}

/// The rule: an order's payment status from its state and its refund, if it has one. A
/// refund counts only once the order is `CANCELLED`: one may be requested just before
/// a cancel that then loses to the payment (the refunder drops it).
pub(crate) fn payment_status(
    status: OrderStatus,
    cancel_reason: Option<CancelReason>,
    refund: Option<RefundStatus>,
) -> PaymentStatus {
    match (status, refund) {
        (OrderStatus::PendingPayment, _) => PaymentStatus::Pending,
        (OrderStatus::Paid | OrderStatus::Completed, _) => PaymentStatus::Captured,
        (OrderStatus::Cancelled, Some(RefundStatus::Requested)) => PaymentStatus::RefundPending,
        (OrderStatus::Cancelled, Some(RefundStatus::Refunded)) => PaymentStatus::Refunded,
        (OrderStatus::Cancelled, Some(RefundStatus::Failed)) => PaymentStatus::RefundFailed,
        (OrderStatus::Cancelled, Some(RefundStatus::Voided) | None) => {
            if cancel_reason == Some(CancelReason::PaymentFailed) {
                PaymentStatus::Failed
            } else {
                PaymentStatus::NotCharged
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refund_decides_the_payment_status_of_a_cancelled_order() {
        use OrderStatus::*;
        assert_eq!(payment_status(PendingPayment, None, None), PaymentStatus::Pending);
        assert_eq!(payment_status(Completed, None, None), PaymentStatus::Captured);
        assert_eq!(
            payment_status(Cancelled, Some(CancelReason::PaymentFailed), None),
            PaymentStatus::Failed
        );
        assert_eq!(
            payment_status(Cancelled, Some(CancelReason::Customer), None),
            PaymentStatus::NotCharged
        );
        let cases = [
            (RefundStatus::Requested, PaymentStatus::RefundPending),
            (RefundStatus::Refunded, PaymentStatus::Refunded),
            (RefundStatus::Failed, PaymentStatus::RefundFailed),
        ];
        // A void: nothing was taken, as if no refund had been asked for.
        assert_eq!(
            payment_status(Cancelled, Some(CancelReason::Customer), Some(RefundStatus::Voided)),
            PaymentStatus::NotCharged
        );
        assert_eq!(
            payment_status(Cancelled, Some(CancelReason::PaymentFailed), Some(RefundStatus::Voided)),
            PaymentStatus::Failed
        );
        // Requested before a cancel that lost to the payment: the order shows its own state.
        assert_eq!(
            payment_status(Completed, None, Some(RefundStatus::Requested)),
            PaymentStatus::Captured
        );
        for (refund, shown) in cases {
            assert_eq!(
                payment_status(Cancelled, Some(CancelReason::Customer), Some(refund)),
                shown
            );
            assert_eq!(RefundStatus::parse(refund.as_str()), Some(refund));
        }
    }
}
