//! Services: business operations that need no actor of their own. Each one validates
//! with `domain`, commits through `persistence` and emits its events through the outbox
//! in the same transaction; the HTTP handlers only extract, call and map.
//!
//! - [`catalog`]: product and category changes end to end (validate, commit, project).
//! - [`accounts`]: sign-up, login, profile and dormancy; password hashing
//!   ([`accounts::passwords`]) and bearer tokens ([`accounts::tokens`]).

pub mod accounts;
pub(crate) mod catalog;
