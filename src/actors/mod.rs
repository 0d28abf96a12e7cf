//! The actors of the runtime. Each file starts with what its actor owns, which
//! messages it takes and what it promises.

pub mod cluster;
pub mod inventory;
pub mod order;
pub mod payment;
pub mod refunds;
pub mod write_behind;
