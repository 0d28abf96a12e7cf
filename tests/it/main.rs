//! The integration tests, one binary: each suite is a module (as zero2prod's
//! `tests/api/main.rs`), sharing one harness (`common`) compiled once. Suites that run
//! child-process servers (cluster, crash, shutdown, nemesis) take
//! `common::process::serial` for their whole run. `tests/otel.rs` stays a binary of its
//! own: it installs the process-wide tracing subscriber.

#[macro_use]
mod common;

mod access_control;
mod api_contract;
mod catalog;
mod cluster;
mod consumer_lag;
mod crash;
mod fuzz;
mod hostile_input;
mod inventory_races;
mod kafka;
mod kafka_consumers;
mod kafka_relay_bench;
mod mysql_faults;
mod nemesis;
mod observability;
mod saga;
mod search;
mod shutdown;
mod sold_out;
mod statement_count;
mod upgrade;
mod users;
