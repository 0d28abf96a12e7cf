//! The shop's rules as plain types and pure functions: no async, no I/O, no actix.
//!
//! Actors own instances of these types and call these functions; they never
//! re-implement a rule. Everything here is unit- and property-tested in place.

pub mod catalog;
pub mod categories;
pub mod cluster;
pub mod events;
pub mod idempotency;
pub mod ids;
pub mod inventory;
pub mod money;
pub mod number;
pub mod order;
pub mod payment;
pub mod search;
pub mod user;

/// Milliseconds since the Unix epoch: the one time representation stored in every backend.
pub type Millis = i64;

/// The current wall-clock time in [`Millis`].
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}
