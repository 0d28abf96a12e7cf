//! Pure builders of the order side's write-sets: what a placed order and a final saga
//! step commit (rows, journal entries, events in their order). No I/O: the caller hands
//! the result to the write-behind (or to the row-lock transaction).

use super::{PlaceError, PlaceOrder};
use crate::domain::events::{Event, EventType, InventoryChanged, OrderCreated, OrderFinished, PaymentRef};
use crate::domain::ids::{OrderId, Sku};
use crate::domain::inventory::ChangeKind;
use crate::domain::order::{total, Order, OrderLine, OrderRequestError, OrderStatus};
use crate::error::Cause;
use crate::persistence::{IdempotencyRecord, JournalEntry, StatusChange, WriteSet};
use std::collections::HashMap;

/// The event a confirm or release of `order`'s reservation publishes for its SKU.
fn inventory_event(how: ChangeKind, order: OrderId, entry: &JournalEntry, traceparent: Option<&str>) -> Event {
    let event_type = if how == ChangeKind::Confirm {
        EventType::InventoryConfirmed
    } else {
        EventType::InventoryReleased
    };
    Event::of(
        event_type,
        &entry.sku,
        entry.at,
        traceparent.map(str::to_owned),
        &InventoryChanged {
            sku: entry.sku.clone(),
            order_id: order,
            qty: entry.change.qty,
            expires_at: None,
        },
    )
}

/// The write-set of a final saga step, the order's decision: the status change, the
/// journal entries of the SKUs settled with it (those of the order's own shard), and
/// their events (`prefix` first, then one inventory event per SKU, then
/// `order_completed` or `order_cancelled`). Fenced on the order's shard (`order_sku`).
pub(super) fn settle_set(
    how: ChangeKind,
    change: &StatusChange,
    order_sku: Option<&Sku>,
    traceparent: Option<&str>,
    prefix: &[Event],
    journal: Vec<JournalEntry>,
) -> WriteSet {
    let order = change.order_id;
    let tp = || traceparent.map(str::to_owned);
    let mut events = prefix.to_vec();
    events.extend(journal.iter().map(|e| inventory_event(how, order, e, traceparent)));
    events.push(match change.to {
        OrderStatus::Completed => Event::of(
            EventType::OrderCompleted,
            order,
            change.at,
            tp(),
            &OrderFinished {
                order_id: order,
                reason: None,
            },
        ),
        _ => Event::of(
            EventType::OrderCancelled,
            order,
            change.at,
            tp(),
            &OrderFinished {
                order_id: order,
                reason: change.cancel_reason,
            },
        ),
    });
    WriteSet {
        status_change: Some(change.clone()),
        journal,
        events,
        order_sku: order_sku.cloned(),
        ..WriteSet::default()
    }
}

/// The write-set of a SKU's owner applying an order's recorded decision to its
/// reservation there (a SKU outside the order's shard): the journal entry and its
/// `inventory_confirmed` / `inventory_released` event, fenced on the SKU's shard only.
pub(super) fn apply_set(how: ChangeKind, order: OrderId, entry: JournalEntry) -> WriteSet {
    WriteSet {
        events: vec![inventory_event(how, order, &entry, None)],
        journal: vec![entry],
        ..WriteSet::default()
    }
}

/// The write-set that makes a placed order durable: the order with its lines, the
/// reservation journal entries, `order_created` + `inventory_reserved` events and the
/// idempotency record.
pub(super) fn order_write_set(
    request: &PlaceOrder,
    id: OrderId,
    prices: &HashMap<Sku, crate::domain::money::Money>,
    journal: Vec<JournalEntry>,
    now: i64,
    expires_at: i64,
) -> Result<WriteSet, PlaceError> {
    let order = build_order(request, id, prices, now, expires_at)?;
    let tp = || request.traceparent.clone();
    let mut events = vec![Event::of(
        EventType::OrderCreated,
        id,
        now,
        tp(),
        &OrderCreated {
            order_id: id,
            user_id: order.user_id.clone(),
            items: order.lines.clone(),
            total: order.total,
            payment: PaymentRef {
                token: order.payment_token.clone(),
            },
        },
    )];
    events.extend(journal.iter().map(|e| {
        Event::of(
            EventType::InventoryReserved,
            &e.sku,
            now,
            tp(),
            &InventoryChanged {
                sku: e.sku.clone(),
                order_id: id,
                qty: e.change.qty,
                expires_at: Some(expires_at),
            },
        )
    }));
    for event in &mut events {
        event.tracestate = request.tracestate.clone();
    }
    let idempotency = match &request.idempotency {
        Some((key, hash)) => Some(IdempotencyRecord {
            user_id: request.user.clone(),
            key: key.as_str().to_owned(),
            request_hash: hash.as_str().to_owned(),
            order_id: id,
            response: serde_json::to_string(&order).map_err(|e| PlaceError::Unavailable(Cause::new(e)))?,
        }),
        None => None,
    };
    let order_sku = order.lines.iter().map(|l| l.sku.clone()).min();
    Ok(WriteSet {
        order_sku,
        new_order: Some(order),
        status_change: None,
        journal,
        events,
        idempotency,
        consumed: None,
        remote_fences: Vec::new(),
    })
}

pub(super) fn build_order(
    request: &PlaceOrder,
    id: OrderId,
    prices: &HashMap<Sku, crate::domain::money::Money>,
    now: i64,
    expires_at: i64,
) -> Result<Order, PlaceError> {
    let lines: Vec<OrderLine> = request
        .items
        .iter()
        .filter_map(|(sku, qty)| {
            prices.get(sku).map(|price| OrderLine {
                sku: sku.clone(),
                qty: *qty,
                unit_price: *price,
            })
        })
        .collect();
    let total = total(&lines).map_err(OrderRequestError::from)?;
    Ok(Order {
        id,
        user_id: request.user.clone(),
        status: OrderStatus::PendingPayment,
        lines,
        total,
        payment_token: request.payment_token.clone(),
        cancel_reason: None,
        created_at: now,
        updated_at: now,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::inventory::settle_change;
    use crate::domain::order::CancelReason;

    fn entry(sku: &Sku, order: OrderId, how: ChangeKind) -> JournalEntry {
        JournalEntry {
            sku: sku.clone(),
            seq: 3,
            change: settle_change(how, order, 2),
            at: 7,
            epoch: Some(1),
        }
    }

    #[test]
    fn an_owner_applying_a_decision_commits_its_entry_with_its_own_inventory_event() {
        let (order, sku) = (OrderId::generate(), Sku::parse("REMOTE").unwrap());
        let set = apply_set(ChangeKind::Release, order, entry(&sku, order, ChangeKind::Release));
        assert_eq!(set.journal.len(), 1);
        let kinds: Vec<(EventType, &str)> = set
            .events
            .iter()
            .map(|e| (e.event_type, e.aggregate_id.as_str()))
            .collect();
        assert_eq!(kinds, vec![(EventType::InventoryReleased, "REMOTE")]);
        // About a SKU only: not fenced on the order's shard, no status change.
        assert!(set.status_change.is_none() && set.order_sku.is_none());
    }

    #[test]
    fn a_decision_names_its_order_shard_and_announces_only_the_skus_it_settled() {
        let (order, local) = (OrderId::generate(), Sku::parse("A-LOCAL").unwrap());
        let change = StatusChange {
            order_id: order,
            from: OrderStatus::PendingPayment,
            to: OrderStatus::Cancelled,
            cancel_reason: Some(CancelReason::Customer),
            at: 9,
        };
        let journal = vec![entry(&local, order, ChangeKind::Release)];
        let set = settle_set(ChangeKind::Release, &change, Some(&local), None, &[], journal);
        assert_eq!(set.order_sku, Some(local));
        let kinds: Vec<EventType> = set.events.iter().map(|e| e.event_type).collect();
        assert_eq!(kinds, vec![EventType::InventoryReleased, EventType::OrderCancelled]);
    }
}
