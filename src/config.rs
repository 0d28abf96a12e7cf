//! Settings, read once at start-up and passed down.
//!
//! Layers, later wins: `config/default.toml` (compiled in) < `config/$EMPORIUM_ENV.toml`
//! or `--config FILE` < `EMPORIUM__SECTION__KEY` environment variables < CLI flags.

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub write_behind: WriteBehindSettings,
    pub inventory: InventorySettings,
    pub(crate) orders: OrderSettings,
    pub limits: LimitSettings,
    pub payment: PaymentSettings,
    pub outbox: OutboxSettings,
    pub bus: BusSettings,
    pub auth: AuthSettings,
    pub telemetry: TelemetrySettings,
    pub users: UserSettings,
    pub search: SearchSettings,
    pub consumer: ConsumerSettings,
    pub payment_service: PaymentServiceSettings,
    pub catalog: CatalogSettings,
    pub cluster: ClusterSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub listen: String,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub(crate) body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    pub(crate) shutdown_grace_secs: u64,
    pub public_introspection: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    pub url: String,
    pub(crate) max_connections: u32,
    pub(crate) migrate_on_start: bool,
    pub acquire_timeout_ms: u64,
    pub sqlite_synchronous: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WriteBehindSettings {
    pub(crate) max_batch: usize,
    pub(crate) linger_ms: u64,
    pub(crate) queue_capacity: usize,
}

/// Where reservations are decided (`inventory.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryStrategy {
    /// Per-SKU actors in memory, group-committed (the design of this runtime).
    Actor,
    /// One database transaction per order with `SELECT … FOR UPDATE` on each SKU row
    /// (the prototype's design, kept as the benchmark baseline).
    SqlRowLock,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InventorySettings {
    pub strategy: InventoryStrategy,
    pub(crate) shards: usize,
    pub idle_passivate_secs: u64,
    pub reservation_ttl_secs: u64,
    pub(crate) mailbox_capacity: usize,
    /// Live SKU actors kept at most (0 = no cap); the least recently used go first.
    #[serde(default)]
    pub max_live_actors: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct OrderSettings {
    pub(crate) max_items: usize,
    pub(crate) max_qty_per_item: i64,
}

/// Rate limits on order creation; a rate of 0 turns that limit off.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub orders_per_user_per_sec: u32,
    pub orders_per_user_burst: u32,
    pub orders_per_ip_per_sec: u32,
    pub orders_per_ip_burst: u32,
    /// Login attempts per normalised email and per client IP, per minute.
    pub logins_per_email_per_min: u32,
    pub logins_per_email_burst: u32,
    pub logins_per_ip_per_min: u32,
    pub logins_per_ip_burst: u32,
    /// Sign-ups per client IP, per minute (each one costs a password hash).
    pub signups_per_ip_per_min: u32,
    pub signups_per_ip_burst: u32,
}

/// Who charges an order: the saga's own payment actor, or the payment service over Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMode {
    Local,
    Kafka,
}

/// Where the outbox relay publishes: in-process subscribers, or a Kafka cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentSettings {
    pub mode: PaymentMode,
    pub(crate) attempts: u32,
    pub attempt_timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub gateway_latency_ms: u64,
    /// How long the simulated gateway takes for the `test_slow*` tokens (charge and refund).
    pub slow_ms: u64,
    /// Empty: the simulated gateway in this process. Otherwise the URL of a shared
    /// `emporium gateway` that every charge and refund goes to.
    #[serde(default)]
    pub(crate) gateway_url: String,
    /// Refund attempts before a refund is given up on (`refund_failed`, `failed_events`).
    pub refund_attempts: u32,
    /// Backoff before the second refund attempt; doubles with each further one.
    pub refund_backoff_base_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    pub poll_interval_ms: u64,
    pub(crate) batch_size: i64,
    pub max_attempts: i64,
    pub backoff_base_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BusSettings {
    pub kind: BusKind,
    pub brokers: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub message_timeout_ms: u64,
}

/// Kafka consumers (`payment.mode = "kafka"` and the payment service).
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerSettings {
    /// Consumer group of Emporium's own consumers (the saga reading `emporium.payments`).
    pub(crate) group_id: String,
    /// Attempts at one message before it goes to `emporium.dlq` and `failed_events`.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub(crate) session_timeout_ms: u64,
    /// How often the consumer samples its lag into the `emporium_consumer_*` metrics.
    pub lag_interval_ms: u64,
}

/// `emporium payment-service`: the payment side as its own process.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentServiceSettings {
    /// Its own database (outbox, processed events). Empty = SQLite at
    /// `<data_dir>/payment-service.db`.
    pub(crate) store_url: String,
    pub(crate) group_id: String,
    /// Its health and metrics listener (probes, Prometheus).
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: String,
    pub(crate) jwt_secret_file: String,
    pub token_ttl_secs: u64,
}

/// User accounts: dormancy and password hashing (`[users]`).
#[derive(Debug, Clone, Deserialize)]
pub struct UserSettings {
    pub dormant_after_days: u32,
    pub dormancy_sweep_interval_secs: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; 0 = one per core.
    pub(crate) max_concurrent_hashes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub(crate) log_format: String,
    pub(crate) log_level: String,
    pub(crate) otlp_endpoint: String,
    /// How long finished spans are batched before one OTLP export request.
    pub(crate) otlp_export_delay_ms: u64,
    /// Record Prometheus metrics (false: `/metrics` still answers, with counters and
    /// histograms left at zero; used to measure what recording costs).
    pub(crate) metrics: bool,
}

/// Product search (issue 8): the embedded index, or Elasticsearch when `url` is set.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchSettings {
    pub url: String,
    pub alias: String,
    pub(crate) synonyms_file: String,
    pub(crate) dictionary_file: String,
    pub(crate) particles_file: String,
    pub(crate) suggest_size: usize,
    pub request_timeout_ms: u64,
    pub(crate) alias_poll_ms: u64,
    /// Embedded index: how many recent search answers to keep (0 = no cache).
    pub(crate) cache_entries: usize,
    /// Compiled mecab-ko-dic directory (scripts/mecab.sh): Korean morphemes by MeCab.
    /// Empty, or not loadable: the built-in analysis (particle list + CJK bigrams).
    pub(crate) mecab_dicdir: String,
}

/// Where products and categories are kept and queried (src/persistence/catalog/mod.rs).
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogSettings {
    /// Empty: the embedded catalog in the SQL store. `mongodb://host:port/db`: MongoDB.
    pub url: String,
    /// How often a MongoDB catalog retries changes it could not apply yet.
    pub catch_up_interval_ms: u64,
}

/// Cluster mode (docs/cluster.md): several nodes on one MySQL/MariaDB store, SKUs split
/// over virtual shards by leases with fencing.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    pub enabled: bool,
    /// Empty: the host name and a random suffix (a restarted node is a new member).
    pub node_id: String,
    /// How peers reach this node's HTTP API. Empty: `http://` + the bound listen address.
    pub(crate) advertise_url: String,
    /// Virtual shards (SKU hash modulo this). Every node of a cluster must agree.
    pub shards: u32,
    /// A lease not renewed for this long may be taken by another node.
    pub lease_ttl_ms: u64,
    /// Shared secret of peer-to-peer calls. Empty: derived from the JWT secret.
    pub(crate) peer_secret: String,
}

impl Settings {
    /// Loads the layers. `file` replaces the `$EMPORIUM_ENV` file when given.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => {
                if let Ok(env) = std::env::var("EMPORIUM_ENV") {
                    figment = figment.merge(Toml::file(format!("config/{env}.toml")));
                }
            }
        }
        // An enum-valued key with an unknown value fails here, naming the key and the
        // accepted values (serde's "unknown variant `x`, expected `embedded` or `kafka`").
        figment
            .merge(Env::prefixed("EMPORIUM__").split("__"))
            .extract()
            .map_err(Box::new)
    }

    /// The store URL, defaulting to the SQLite file in the data dir.
    pub fn store_url(&self) -> String {
        if self.store.url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.server.data_dir.join("emporium.db").display()
            )
        } else {
            self.store.url.clone()
        }
    }

    /// The payment service's own store URL.
    pub fn payment_service_store_url(&self) -> String {
        if self.payment_service.store_url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.server.data_dir.join("payment-service.db").display()
            )
        } else {
            self.payment_service.store_url.clone()
        }
    }

    pub(crate) fn reservation_ttl(&self) -> Duration {
        Duration::from_secs(self.inventory.reservation_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_point_at_the_embedded_store() {
        let s: Settings = Figment::from(Toml::string(DEFAULTS)).extract().unwrap();
        assert_eq!(s.inventory.strategy, InventoryStrategy::Actor);
        assert!(s.store_url().starts_with("sqlite://"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
    fn environment_variables_override_the_files() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EMPORIUM__STORE__URL", "mysql://root@127.0.0.1:3306/shop");
            jail.set_env("EMPORIUM__WRITE_BEHIND__MAX_BATCH", "7");
            let s = Settings::load(None).expect("settings load");
            assert_eq!(s.store_url(), "mysql://root@127.0.0.1:3306/shop");
            assert_eq!(s.write_behind.max_batch, 7);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
    fn an_unknown_enum_value_names_the_key_and_the_accepted_values() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("EMPORIUM__BUS__KIND", "rabbit");
            // figment names an environment key as it was written: "BUS.KIND".
            let message = Settings::load(None)
                .expect_err("rabbit is not a bus")
                .to_string()
                .to_lowercase();
            assert!(message.contains("bus.kind"), "{message}");
            assert!(message.contains("embedded") && message.contains("kafka"), "{message}");
            jail.set_env("EMPORIUM__BUS__KIND", "kafka");
            jail.set_env("EMPORIUM__PAYMENT__MODE", "remote");
            let message = Settings::load(None)
                .expect_err("remote is not a mode")
                .to_string()
                .to_lowercase();
            assert!(
                message.contains("payment.mode") && message.contains("local"),
                "{message}"
            );
            jail.set_env("EMPORIUM__PAYMENT__MODE", "local");
            jail.set_env("EMPORIUM__INVENTORY__STRATEGY", "redis_lua");
            let message = Settings::load(None)
                .expect_err("redis_lua is not a strategy")
                .to_string()
                .to_lowercase();
            assert!(
                message.contains("inventory.strategy") && message.contains("sql_row_lock"),
                "{message}"
            );
            Ok(())
        });
    }
}
