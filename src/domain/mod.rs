//! The shop's rules as plain types and pure functions: no async, no I/O, no actix.
//!
//! Actors own instances of these types and call these functions; they never
//! re-implement a rule. Everything here is unit- and property-tested in place.

pub(crate) mod catalog;
pub(crate) mod categories;
pub mod cluster;
pub mod events;
pub(crate) mod idempotency;
pub mod ids;
pub(crate) mod inventory;
pub(crate) mod money;
pub(crate) mod number;
pub(crate) mod order;
pub(crate) mod payment;
pub mod search;
pub mod user;

/// Milliseconds since the Unix epoch: the one time representation stored in every backend.
pub(crate) type Millis = i64;

/// The current wall-clock time in [`Millis`].
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
