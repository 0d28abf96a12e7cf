//! The actors of the runtime. Each file starts with what its actor owns, which
//! messages it takes and what it promises.

pub mod cluster;
pub(crate) mod inventory;
pub mod order;
pub(crate) mod payment;
pub(crate) mod refunds;
pub mod write_behind;
