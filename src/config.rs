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

/// A secret from the settings (the JWT key, the peer secret): read where it is used
/// ([`Secret::expose`]), never printed: its `Debug` (and so any logged `Settings`) shows
/// `***`. Empty means unset.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

/// A text setting that may be left out: `""` in the files (where the key is listed to
/// be found) or in the environment means unset, `None` in code.
fn unset_if_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()))
}

/// A time in the settings: an integer of milliseconds in the files and the environment
/// (the key says so: `_ms`), a [`Duration`] in code.
fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// Likewise for keys in seconds (`_secs`).
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

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
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "seconds")]
    pub(crate) shutdown_grace: Duration,
    pub public_introspection: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub url: Option<String>,
    pub(crate) max_connections: u32,
    pub(crate) migrate_on_start: bool,
    #[serde(rename = "acquire_timeout_ms", deserialize_with = "millis")]
    pub acquire_timeout: Duration,
    pub sqlite_synchronous: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WriteBehindSettings {
    pub(crate) max_batch: usize,
    #[serde(rename = "linger_ms", deserialize_with = "millis")]
    pub(crate) linger: Duration,
    pub(crate) queue_capacity: usize,
    /// Group commits in flight at once on MariaDB/MySQL (SQLite has one writer: always 1).
    pub(crate) max_in_flight: usize,
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
    #[serde(rename = "idle_passivate_secs", deserialize_with = "seconds")]
    pub idle_passivate: Duration,
    #[serde(rename = "reservation_ttl_secs", deserialize_with = "seconds")]
    pub reservation_ttl: Duration,
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
    #[serde(rename = "attempt_timeout_ms", deserialize_with = "millis")]
    pub attempt_timeout: Duration,
    #[serde(rename = "backoff_base_ms", deserialize_with = "millis")]
    pub backoff_base: Duration,
    #[serde(rename = "gateway_latency_ms", deserialize_with = "millis")]
    pub gateway_latency: Duration,
    /// How long the simulated gateway takes for the `test_slow*` tokens (charge and refund).
    #[serde(rename = "slow_ms", deserialize_with = "millis")]
    pub slow: Duration,
    /// Empty: the simulated gateway in this process. Otherwise the URL of a shared
    /// `emporium gateway` that every charge and refund goes to.
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) gateway_url: Option<String>,
    /// Refund attempts before a refund is given up on (`refund_failed`, `failed_events`).
    pub refund_attempts: u32,
    /// Backoff before the second refund attempt; doubles with each further one.
    #[serde(rename = "refund_backoff_base_ms", deserialize_with = "millis")]
    pub refund_backoff_base: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxSettings {
    #[serde(rename = "poll_interval_ms", deserialize_with = "millis")]
    pub poll_interval: Duration,
    /// Events per relay read, rounded up to whole outbox rows (a row holds one
    /// transaction's events, at most 64).
    pub(crate) batch_size: i64,
    pub max_attempts: i64,
    #[serde(rename = "backoff_base_ms", deserialize_with = "millis")]
    pub backoff_base: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BusSettings {
    pub kind: BusKind,
    pub brokers: String,
    pub partitions: i32,
    pub replication_factor: i32,
    #[serde(rename = "message_timeout_ms", deserialize_with = "millis")]
    pub message_timeout: Duration,
}

/// Kafka consumers (`payment.mode = "kafka"` and the payment service).
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerSettings {
    /// Consumer group of Emporium's own consumers (the saga reading `emporium.payments`).
    pub(crate) group_id: String,
    /// Attempts at one message before it goes to `emporium.dlq` and `failed_events`.
    pub max_attempts: u32,
    #[serde(rename = "backoff_base_ms", deserialize_with = "millis")]
    pub backoff_base: Duration,
    #[serde(rename = "session_timeout_ms", deserialize_with = "millis")]
    pub(crate) session_timeout: Duration,
    /// How often the consumer samples its lag into the `emporium_consumer_*` metrics.
    #[serde(rename = "lag_interval_ms", deserialize_with = "millis")]
    pub lag_interval: Duration,
}

/// `emporium payment-service`: the payment side as its own process.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentServiceSettings {
    /// Its own database (outbox, processed events). Empty = SQLite at
    /// `<data_dir>/payment-service.db`.
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) store_url: Option<String>,
    pub(crate) group_id: String,
    /// Its health and metrics listener (probes, Prometheus).
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: Secret,
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) jwt_secret_file: Option<String>,
    #[serde(rename = "token_ttl_secs", deserialize_with = "seconds")]
    pub token_ttl: Duration,
    /// Verified tokens remembered (`Keys::verify`); 0 = verify every request.
    pub(crate) verified_token_cache: usize,
}

/// User accounts: dormancy and password hashing (`[users]`).
#[derive(Debug, Clone, Deserialize)]
pub struct UserSettings {
    pub dormant_after_days: u32,
    #[serde(rename = "dormancy_sweep_interval_secs", deserialize_with = "seconds")]
    pub dormancy_sweep_interval: Duration,
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
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) otlp_endpoint: Option<String>,
    /// How long finished spans are batched before one OTLP export request.
    #[serde(rename = "otlp_export_delay_ms", deserialize_with = "millis")]
    pub(crate) otlp_export_delay: Duration,
    /// Record Prometheus metrics (false: `/metrics` still answers, with counters and
    /// histograms left at zero; used to measure what recording costs).
    pub(crate) metrics: bool,
}

/// Product search: the embedded index, or Elasticsearch when `url` is set.
#[derive(Debug, Clone, Deserialize)]
pub struct SearchSettings {
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub url: Option<String>,
    pub alias: String,
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) synonyms_file: Option<String>,
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) dictionary_file: Option<String>,
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) particles_file: Option<String>,
    pub(crate) suggest_size: usize,
    #[serde(rename = "request_timeout_ms", deserialize_with = "millis")]
    pub request_timeout: Duration,
    #[serde(rename = "alias_poll_ms", deserialize_with = "millis")]
    pub(crate) alias_poll: Duration,
    /// Embedded index: how many recent search answers to keep (0 = no cache).
    pub(crate) cache_entries: usize,
    /// Compiled mecab-ko-dic directory (scripts/mecab.sh): Korean morphemes by MeCab.
    /// Empty, or not loadable: the built-in analysis (particle list + CJK bigrams).
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) mecab_dicdir: Option<String>,
}

/// Where products and categories are kept and queried (src/persistence/catalog/mod.rs).
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogSettings {
    /// Empty: the embedded catalog in the SQL store. `mongodb://host:port/db`: MongoDB.
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub url: Option<String>,
    /// How often a MongoDB catalog retries changes it could not apply yet.
    #[serde(rename = "catch_up_interval_ms", deserialize_with = "millis")]
    pub catch_up_interval: Duration,
}

/// Cluster mode (docs/cluster.md): several nodes on one MySQL/MariaDB store, SKUs split
/// over virtual shards by leases with fencing.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    pub enabled: bool,
    /// Empty: the host name and a random suffix (a restarted node is a new member).
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub node_id: Option<String>,
    /// How peers reach this node's HTTP API. Empty: `http://` + the bound listen address.
    #[serde(default, deserialize_with = "unset_if_empty")]
    pub(crate) advertise_url: Option<String>,
    /// Virtual shards (SKU hash modulo this). Every node of a cluster must agree.
    pub shards: u32,
    /// A lease not renewed for this long may be taken by another node.
    #[serde(rename = "lease_ttl_ms", deserialize_with = "millis")]
    pub lease_ttl: Duration,
    /// Shared secret of peer-to-peer calls. Empty: derived from the JWT secret.
    pub(crate) peer_secret: Secret,
}

/// A setting outside what it may be (see [`Settings::validate`]).
#[derive(Debug, thiserror::Error)]
#[error("{key} {problem}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub problem: String,
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

    /// Every floor a setting must respect, checked once (at start, after the command
    /// line's overrides) so that the code uses the values as they are. The error
    /// names the key, as the files and the environment spell it.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let at_least = |key: &'static str, value: u64, floor: u64| {
            if value >= floor {
                Ok(())
            } else {
                Err(InvalidSetting {
                    key,
                    problem: format!("is {value}; it must be at least {floor}"),
                })
            }
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        at_least("payment.attempts", self.payment.attempts.into(), 1)?;
        at_least("payment.refund_attempts", self.payment.refund_attempts.into(), 1)?;
        at_least("payment.attempt_timeout_ms", ms(self.payment.attempt_timeout), 1)?;
        at_least("outbox.max_attempts", self.outbox.max_attempts.max(0) as u64, 1)?;
        at_least("outbox.batch_size", self.outbox.batch_size.max(0) as u64, 1)?;
        at_least("consumer.max_attempts", self.consumer.max_attempts.into(), 1)?;
        at_least("consumer.lag_interval_ms", ms(self.consumer.lag_interval), 10)?;
        at_least("write_behind.max_batch", self.write_behind.max_batch as u64, 1)?;
        at_least("write_behind.max_in_flight", self.write_behind.max_in_flight as u64, 1)?;
        at_least(
            "write_behind.queue_capacity",
            self.write_behind.queue_capacity as u64,
            1,
        )?;
        at_least("store.max_connections", self.store.max_connections.into(), 1)?;
        at_least(
            "users.dormancy_sweep_interval_secs",
            self.users.dormancy_sweep_interval.as_secs(),
            1,
        )?;
        at_least("search.request_timeout_ms", ms(self.search.request_timeout), 1)?;
        at_least("search.alias_poll_ms", ms(self.search.alias_poll), 50)?;
        at_least("catalog.catch_up_interval_ms", ms(self.catalog.catch_up_interval), 100)?;
        at_least("cluster.shards", self.cluster.shards.into(), 1)?;
        // A lease round (and the decided-reservation sweep) is a third of the TTL; below
        // this the renewals alone would keep the database busy.
        at_least("cluster.lease_ttl_ms", ms(self.cluster.lease_ttl), 300)?;
        Ok(())
    }

    /// The store URL, defaulting to the SQLite file in the data dir.
    pub fn store_url(&self) -> String {
        self.store.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.server.data_dir.join("emporium.db").display()
            )
        })
    }

    /// The payment service's own store URL.
    pub fn payment_service_store_url(&self) -> String {
        self.payment_service.store_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.server.data_dir.join("payment-service.db").display()
            )
        })
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
    fn the_defaults_are_valid_and_a_value_under_its_floor_is_named() {
        let mut s: Settings = Figment::from(Toml::string(DEFAULTS)).extract().unwrap();
        s.validate().expect("the defaults are valid");
        s.payment.attempts = 0;
        let e = s.validate().expect_err("no attempt at all");
        assert_eq!(e.key, "payment.attempts");
        assert_eq!(e.to_string(), "payment.attempts is 0; it must be at least 1");
        s.payment.attempts = 3;
        s.cluster.lease_ttl = Duration::from_millis(100);
        assert_eq!(s.validate().expect_err("too short a lease").key, "cluster.lease_ttl_ms");
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
