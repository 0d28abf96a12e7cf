//! Emporium: an order and inventory runtime for flash sales. The contract it keeps (domain
//! rules, invariants, what a 201 promises) is `docs/design.md`; how to run it is README.md.
//!
//! # Layout
//!
//! Dependencies point downwards only: `http` → `actors` / `services` / `events` /
//! `search` → `persistence` → `domain`; `domain` is pure (no I/O, no async), and `app`
//! wires everything once at start.
//!
//! - [`domain`]: types that can only be built valid (ids, money, SKUs) and the rules as pure
//!   functions (inventory, order state machine, events, catalog input, users, search input).
//! - [`actors`]: the owners of live state. `inventory` (one actor per SKU), `order` (one
//!   saga per open order, and the `Orders` directory), `payment`, `write_behind` (group
//!   commit, the only path to the database for orders), `cluster` (shard ownership and the
//!   lease keeper), `refunds` (gives back payments captured for orders cancelled meanwhile,
//!   and voids at the gateway the orders it captured nothing for).
//! - [`events`]: what leaves and enters through a bus: the buses (in-process, Kafka), the
//!   outbox relay, the Kafka consumer loop with its retries and dead letters, and the
//!   payment outcomes that drive saga steps.
//! - [`search`]: product search: Korean analysis (particles, synonyms, MeCab), the
//!   embedded tantivy engine, the Elasticsearch/OpenSearch backend, the indexer that
//!   feeds them from the outbox, and reindexing.
//! - [`services`]: business operations without actors: `catalog` (product and category
//!   changes end to end) and `accounts` (sign-up, login, dormancy, argon2id passwords, JWT).
//! - [`http`]: actix-web handlers (thin: extract, call, map), problem+json, OpenAPI.
//! - [`persistence`]: durable state only: the SQL store (SQLite, MySQL/MariaDB), the
//!   catalog backends, accounts, the row-lock baseline.
//! - [`telemetry`]: tracing subscriber, OpenTelemetry export, metrics registry.
//! - [`error`]: `Cause`, the error under an error, kept whole (its `source()` chain) and
//!   cheap to clone.
//! - [`app`]: wiring: start-up, recovery and graceful shutdown of the server, of the
//!   payment service (`app::payment_service`) and of the test gateway (`app::gateway`),
//!   and the bulk loader behind `emporium seed` (`app::seed`); [`config`]: layered settings.
//! - `failpoints`: test-only hooks that abort or pause the process at named points of the
//!   saga (feature `failpoints`, on in the test build only).
//! - [`fuzz`]: fuzz targets shared by proptest and cargo-fuzz (not part of the API).
//!
//! Visibility: an item is `pub` only where the binaries (`main.rs`, `bench/`) or the
//! end-to-end tests reach it; everything else is `pub(crate)` or private.

pub mod actors;
pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
mod failpoints;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod persistence;
pub mod search;
pub mod services;
pub mod telemetry;
