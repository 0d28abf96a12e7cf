//! Fuzz targets: each takes arbitrary bytes and panics when a property breaks.
//!
//! They are plain functions so that two engines drive the same code: libFuzzer through
//! `cargo fuzz` (the `fuzz/` crate, coverage-guided, for long runs) and proptest in
//! `tests/it/fuzz.rs` (seconds, in every `cargo test` and in CI). What they check:
//!
//! * [`request_parsers`]: order and product bodies, SKUs, order ids, user ids, the
//!   `Idempotency-Key` header, `traceparent`, JSON depth and bearer tokens. Whatever the
//!   bytes, nothing panics, what parses is what the contract says, and the canonical form
//!   an idempotency hash is taken over is stable.
//! * [`forged_token`]: a valid JWT with bytes changed never verifies.
//! * [`inventory_machine`]: any sequence of reserve / confirm / release / forget /
//!   set_stock / expire on one SKU keeps docs/design.md's invariants, and state rebuilt from
//!   stock + live reservations (recovery) equals the live state.
//! * [`order_machine`]: any sequence of transitions follows the documented state machine.

use crate::domain::catalog::{json_depth, validate as validate_product, ProductInput, MAX_JSON_DEPTH};
use crate::domain::ids::{OrderId, Sku, UserId};
use crate::domain::inventory::{InventoryError, Outcome, Reservation, SkuInventory};
use crate::domain::order::{next_status, quantities_by_sku, CancelReason, OrderLimits, OrderStatus, Transition};
use crate::http::orders;
use crate::services::accounts::tokens::Keys;
use crate::telemetry::context::valid_traceparent;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

const LIMITS: OrderLimits = OrderLimits {
    max_items: 50,
    max_qty_per_item: 1000,
};

/// Request parsing and edge validation on arbitrary bytes.
pub fn request_parsers(data: &[u8]) {
    order_body(data);
    product_body(data);
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        assert_eq!(
            json_depth(&value),
            recursive_depth(&value),
            "json_depth disagrees on {value}"
        );
    }
    let text = String::from_utf8_lossy(data);
    ids(&text);
    idempotency_key(data);
    traceparent(&text);
    assert!(
        keys().verify(&text).is_err(),
        "a token made of fuzz input verified: {text:?}"
    );
}

fn order_body(data: &[u8]) {
    let Ok(order) = serde_json::from_slice::<orders::CreateOrder>(data) else {
        return;
    };
    // The idempotency hash is taken over this canonical form: it must be a fixed point,
    // or the same request could hash two ways.
    let canonical = serde_json::to_vec(&order).expect("a parsed order serializes");
    let again: orders::CreateOrder = serde_json::from_slice(&canonical).expect("the canonical form parses");
    assert_eq!(
        serde_json::to_vec(&again).expect("serializes"),
        canonical,
        "canonical form is not stable"
    );
    let items: Vec<(Sku, i64)> = order.items.iter().map(|i| (i.sku.clone(), i.qty)).collect();
    if let Ok(wanted) = quantities_by_sku(&items, LIMITS) {
        assert!(!items.is_empty() && items.len() <= LIMITS.max_items);
        assert!(items.iter().all(|(_, q)| (1..=LIMITS.max_qty_per_item).contains(q)));
        let asked: i64 = items.iter().map(|(_, q)| q).sum();
        assert_eq!(wanted.values().sum::<i64>(), asked, "lines on one SKU must add up");
        assert!(wanted.values().all(|q| *q >= 1));
    }
}

fn product_body(data: &[u8]) {
    let Ok(product) = serde_json::from_slice::<ProductInput>(data) else {
        return;
    };
    if validate_product(&product).is_err() {
        return;
    }
    let depth =
        |a: &Option<serde_json::Map<String, Value>>| a.as_ref().map_or(0, |m| json_depth(&Value::Object(m.clone())));
    assert!(depth(&product.attributes) <= MAX_JSON_DEPTH);
    assert!(!product.name.trim().is_empty() && !product.name.chars().any(char::is_control));
    assert!(!product.variants.is_empty());
    let skus: HashSet<_> = product.variants.iter().map(|v| &v.sku).collect();
    assert_eq!(skus.len(), product.variants.len(), "duplicate SKUs passed validation");
    for v in &product.variants {
        assert!(depth(&v.attributes) <= MAX_JSON_DEPTH);
        assert!(v.stock.is_none_or(|s| s >= 0));
        assert!(v.price.is_none_or(|p| p.currency == product.price.currency));
    }
}

fn ids(text: &str) {
    if let Ok(sku) = Sku::parse(text) {
        assert_eq!(sku.as_str(), text);
        assert!((1..=64).contains(&text.len()));
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    }
    if let Ok(user) = UserId::parse(text) {
        assert!(!user.as_str().is_empty() && user.as_str().len() <= 128);
        assert!(!text.chars().any(|c| c.is_control() || c.is_whitespace()));
    }
    if let Ok(id) = OrderId::parse(text) {
        assert_eq!(
            OrderId::parse(&id.to_string()),
            Ok(id),
            "an order id must survive a round trip"
        );
    }
}

fn idempotency_key(data: &[u8]) {
    let Ok(value) = actix_web::http::header::HeaderValue::from_bytes(data) else {
        return;
    };
    if let Ok(Some(key)) = orders::idempotency_key(Some(&value)) {
        let key = key.as_str();
        assert!((1..=255).contains(&key.len()));
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key:?}");
    }
}

/// W3C Trace Context, written out independently of the server's check.
fn traceparent(text: &str) {
    let lower_hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let not_zero = |s: &str| s.bytes().any(|b| b != b'0');
    let parts: Vec<&str> = text.split('-').collect();
    let spec_valid = parts.len() == 4
        && lower_hex(parts[0], 2)
        && parts[0] != "ff"
        && lower_hex(parts[1], 32)
        && not_zero(parts[1])
        && lower_hex(parts[2], 16)
        && not_zero(parts[2])
        && lower_hex(parts[3], 2);
    assert_eq!(valid_traceparent(text), spec_valid, "traceparent {text:?}");
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::from_secret(b"fuzzing-secret-not-used-anywhere", 3600))
}

/// A valid token with some bytes replaced (`data` = pairs of position and new byte)
/// must not verify, unless the replacements changed nothing.
pub fn forged_token(data: &[u8]) {
    static TOKEN: OnceLock<String> = OnceLock::new();
    let token = TOKEN.get_or_init(|| keys().issue("fuzz-user", false).expect("issue a token"));
    let mut forged = token.clone().into_bytes();
    for pair in data.chunks_exact(2) {
        let at = usize::from(pair[0]) * forged.len() / 256;
        forged[at] = pair[1];
    }
    let Ok(forged) = String::from_utf8(forged) else {
        return;
    };
    if forged != *token {
        assert!(keys().verify(&forged).is_err(), "forged token verified: {forged}");
    }
}

/// Reads bytes as a sequence of inventory operations on one SKU.
pub fn inventory_machine(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let initial = quantity(bytes.next().unwrap_or(0)).max(0);
    let mut inv = SkuInventory::new(initial).expect("non-negative stock is valid");
    // Oracle bookkeeping in i128, so the oracle itself cannot overflow.
    let mut received = i128::from(initial);
    let mut sold: i128 = 0;
    let mut live: BTreeMap<u8, i64> = BTreeMap::new();
    let mut settled: HashSet<u8> = HashSet::new();
    while let (Some(op), Some(arg)) = (bytes.next(), bytes.next()) {
        let who = arg % 16;
        let id = order_id(who);
        match op % 7 {
            0 | 1 => {
                // Ids are fresh per placement: a settled order is never reserved again.
                if settled.contains(&who) {
                    continue;
                }
                let qty = quantity(bytes.next().unwrap_or(1));
                let available = inv.available();
                match inv.reserve(id, qty, i64::from(arg)) {
                    Ok(Outcome::Applied(change)) => {
                        assert!(!live.contains_key(&who) && qty > 0 && qty <= available);
                        assert_eq!((change.reserved_delta, change.stock_delta), (qty, 0));
                        live.insert(who, qty);
                    }
                    Ok(Outcome::Unchanged) => assert!(live.contains_key(&who)),
                    Err(InventoryError::OutOfStock { requested, available }) => assert!(requested > available),
                    Err(other) => assert!(qty <= 0, "{other}"),
                }
            }
            2 => match inv.confirm(id) {
                Outcome::Applied(change) => {
                    let held = live.remove(&who).expect("confirmed a live reservation");
                    assert!(settled.insert(who), "order confirmed twice");
                    assert_eq!((change.stock_delta, change.reserved_delta), (-held, -held));
                    sold += i128::from(held);
                }
                Outcome::Unchanged => assert!(!live.contains_key(&who)),
            },
            3 => match inv.release(id) {
                Outcome::Applied(change) => {
                    let held = live.remove(&who).expect("released a live reservation");
                    settled.insert(who);
                    assert_eq!((change.stock_delta, change.reserved_delta), (0, -held));
                }
                Outcome::Unchanged => assert!(!live.contains_key(&who)),
            },
            4 => {
                inv.forget(id);
                if live.remove(&who).is_some() {
                    settled.insert(who);
                }
            }
            5 => {
                let target = quantity(bytes.next().unwrap_or(0));
                let before = inv.stock();
                match inv.set_stock(target) {
                    Ok(change) => {
                        assert!(target >= inv.reserved());
                        assert_eq!(change.stock_delta, target - before);
                        received += i128::from(change.stock_delta.max(0));
                    }
                    Err(InventoryError::BelowReserved { .. }) => {
                        assert!(target < inv.reserved());
                        assert_eq!(inv.stock(), before, "a refused change changed stock");
                    }
                    Err(other) => panic!("set_stock({target}): {other}"),
                }
            }
            _ => {
                let now = i64::from(arg);
                for expired in inv.expired(now) {
                    let r = inv.reservation(&expired).expect("an expired order has a reservation");
                    assert!(r.expires_at <= now);
                }
            }
        }
        // docs/design.md's invariants, after every operation.
        assert!(0 <= inv.reserved() && inv.reserved() <= inv.stock(), "{inv:?}");
        assert_eq!(
            inv.reserved(),
            live.values().sum::<i64>(),
            "reserved != sum of live reservations"
        );
        assert!(sold <= received, "sold more than was ever received");
        assert_eq!(inv.has_reservations(), !live.is_empty());
        // Recovery: stock plus the live reservations rebuild exactly this state.
        let reservations = live.keys().map(|who| {
            let id = order_id(*who);
            (id, *inv.reservation(&id).expect("live reservation is held"))
        });
        let rebuilt = SkuInventory::restore(inv.stock(), reservations.collect::<Vec<(OrderId, Reservation)>>());
        assert_eq!(rebuilt, inv, "recovery would rebuild another state");
    }
}

fn order_id(who: u8) -> OrderId {
    OrderId(uuid::Uuid::from_u128(u128::from(who) + 1))
}

/// Small quantities mostly, and the edges: zero, negatives, the largest values.
fn quantity(byte: u8) -> i64 {
    match byte {
        250 => 0,
        251 => -1,
        252 => i64::MIN,
        253 => i64::MAX,
        254 => i64::MAX - 1,
        255 => 1_000_000_000,
        small => i64::from(small % 32),
    }
}

/// Reads bytes as transitions applied to one order.
pub fn order_machine(data: &[u8]) {
    use OrderStatus::{Cancelled, Completed, Paid, PendingPayment};
    let mut status = PendingPayment;
    let mut paid = 0;
    for byte in data {
        let transition = match byte % 5 {
            0 => Transition::PaymentSucceeded,
            1 => Transition::Complete,
            2 => Transition::Cancel(CancelReason::PaymentFailed),
            3 => Transition::Cancel(CancelReason::Customer),
            _ => Transition::Cancel(CancelReason::Expired),
        };
        let documented = match (status, transition) {
            (PendingPayment, Transition::PaymentSucceeded) => Some(Paid),
            (Paid, Transition::Complete) => Some(Completed),
            (PendingPayment, Transition::Cancel(_)) => Some(Cancelled),
            _ => None,
        };
        match next_status(status, transition) {
            Ok(next) => {
                assert_eq!(Some(next), documented, "{status:?} --{transition:?}--> {next:?}");
                assert!(!status.is_final(), "left final state {status:?}");
                if next == Paid {
                    paid += 1;
                }
                status = next;
            }
            Err(_) => assert_eq!(documented, None, "{status:?} --{transition:?}--> refused"),
        }
        assert!(paid <= 1, "paid twice");
        assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        if let Transition::Cancel(reason) = transition {
            assert_eq!(CancelReason::parse(reason.as_str()), Some(reason));
        }
    }
}

fn recursive_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(recursive_depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(recursive_depth).max().unwrap_or(0),
        _ => 0,
    }
}
