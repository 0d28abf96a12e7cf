//! Test harness: a real Emporium (real HTTP server on a random port, a real database:
//! a SQLite file in a fresh temp dir, or a fresh MySQL database) started in-process,
//! plus an HTTP client speaking to it.
//!
//! Every contract suite runs over every backend through [`on_every_backend!`]. The MySQL
//! variant uses `EMPORIUM_TEST_MYSQL_URL` (unset: `scripts/services.sh start mysql`),
//! creates a database with a unique name and drops it afterwards. Without a reachable
//! server it skips with a printed reason, except under `CI=true`, where it fails.

pub mod kafka;
pub mod process;
pub mod proxy;
pub mod services;

/// The database a test runs against.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    /// Server URL without a database name.
    MySql(String),
    /// MySQL with `inventory.strategy = "sql_row_lock"`: the prototype's row-lock design.
    MySqlRowLock(String),
    /// Three cluster-mode nodes on one MySQL database (docs/cluster.md); the harness
    /// sends each request to the next node in turn, so every suite runs "through any node".
    MySqlCluster(String),
}

impl Backend {
    /// The MySQL backend, or `None` (with the reason printed) when it cannot be reached
    /// outside CI. Under `CI=true` an unreachable server fails the test.
    pub async fn mysql() -> Option<Self> {
        // Unset: scripts/services.sh starts MariaDB (installing it on a bare machine).
        let url = services::test_env("EMPORIUM_TEST_MYSQL_URL")?;
        let reachable = tokio::time::timeout(Duration::from_secs(3), sqlx_mysql_ping(&url)).await;
        match reachable {
            Ok(Ok(())) => Some(Self::MySql(url.trim_end_matches('/').to_owned())),
            failure => {
                let reason = format!("MySQL at {url} is not reachable: {failure:?}");
                assert!(
                    std::env::var("CI").map_or(true, |ci| ci != "true"),
                    "{reason} (CI=true: failing, not skipping)"
                );
                eprintln!("SKIPPED: {reason}");
                None
            }
        }
    }

    /// Creates a fresh database and returns the store URL for it.
    pub async fn store_url(&self) -> Option<String> {
        match self {
            Self::Sqlite => None,
            Self::MySql(server) | Self::MySqlRowLock(server) | Self::MySqlCluster(server) => {
                let name = format!("emporium_t_{}", uuid::Uuid::new_v4().simple());
                mysql_exec(server, &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")).await;
                Some(format!("{server}/{name}"))
            }
        }
    }
}

async fn sqlx_mysql_ping(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(url).await?;
    sqlx::query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

pub async fn mysql_exec(server: &str, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(server).await.expect("mysql connects");
    sqlx::raw_sql(sql).execute(&mut conn).await.expect("mysql statement");
}

/// Every event in a store's outbox (SQLite or MariaDB), oldest first, each with the id of
/// its row: a row holds one transaction's events, in order, as a JSON array.
pub async fn outbox_events(store_url: &str) -> Vec<(i64, Value)> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(store_url).await.expect("store reachable");
    let rows = sqlx::query("SELECT id, body FROM outbox ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .expect("outbox rows");
    rows.iter()
        .flat_map(|r| {
            let id: i64 = r.get("id");
            let body = r
                .try_get::<String, _>("body")
                .or_else(|_| {
                    r.try_get::<Vec<u8>, _>("body")
                        .map(|b| String::from_utf8(b).expect("utf8"))
                })
                .expect("body");
            let events: Vec<Value> = serde_json::from_str(&body).expect("an outbox row is a JSON array of events");
            events.into_iter().map(move |e| (id, e))
        })
        .collect()
}

/// How many outbox events of `event_type` are about `aggregate` (published or not).
pub async fn outbox_count(store_url: &str, event_type: &str, aggregate: &str) -> i64 {
    outbox_events(store_url)
        .await
        .iter()
        .filter(|(_, e)| e["type"] == event_type && e["aggregate_id"] == aggregate)
        .count() as i64
}

/// Drops a test database named by its store URL.
pub async fn drop_database(store_url: &str) {
    if let Some((server, name)) = store_url.rsplit_once('/') {
        if name.starts_with("emporium_t_") {
            mysql_exec(server, &format!("DROP DATABASE IF EXISTS {name}")).await;
        }
    }
}

/// Runs each named `async fn(Backend)` test once per backend and inventory strategy:
/// `name::sqlite`, `name::mysql` and `name::mysql_row_lock`.
#[macro_export]
macro_rules! on_every_strategy {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                if let Some(backend) = $crate::common::Backend::mysql().await {
                    super::$name(backend).await
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_row_lock() {
                if let Some($crate::common::Backend::MySql(url)) = $crate::common::Backend::mysql().await {
                    super::$name($crate::common::Backend::MySqlRowLock(url)).await
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql_cluster() {
                if let Some($crate::common::Backend::MySql(url)) = $crate::common::Backend::mysql().await {
                    super::$name($crate::common::Backend::MySqlCluster(url)).await
                }
            }
        }
    )*};
}

/// Runs each named `async fn(Backend)` test once per backend: `name::sqlite` and
/// `name::mysql` (for tests that drive the actors themselves).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                if let Some(backend) = $crate::common::Backend::mysql().await {
                    super::$name(backend).await
                }
            }
        }
    )*};
}

use emporium::app::App;
use emporium::config::Settings;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub struct TestApp {
    pub client: reqwest::Client,
    pub app: App,
    pub admin: String,
    /// Every node's base URL and app (one, or three for the cluster backend); requests
    /// made through [`Self::url`] go to each in turn.
    nodes: Vec<(String, App)>,
    next: std::sync::atomic::AtomicUsize,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    servers: Vec<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A server started in a thread of its own; dropping the database (if given) after it stopped.
struct Started {
    addr: std::net::SocketAddr,
    app: App,
    stop: tokio::sync::oneshot::Sender<()>,
    server: std::thread::JoinHandle<()>,
}

fn start_server(settings: Settings, drop_after: Option<String>) -> Started {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let running = App::build(settings)
                .await
                .expect("app builds")
                .start()
                .await
                .expect("server starts");
            started_tx
                .send((running.addr, running.app.clone()))
                .expect("test alive");
            let _ = stop_rx.await;
            running.shutdown().await.expect("clean shutdown");
            if let Some(url) = drop_after {
                drop_database(&url).await;
            }
            actix_rt::System::current().stop();
        })
    });
    let (addr, app) = started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server started");
    Started {
        addr,
        app,
        stop: stop_tx,
        server,
    }
}

/// A node's `/health/cluster` names an owner for every shard: requests it takes are
/// routed at once (a view is refreshed every lease round).
pub fn knows_every_owner(health: &Value, total: u64) -> bool {
    health["members"]
        .as_array()
        .map(|members| members.iter().filter_map(|m| m["shards"].as_u64()).sum::<u64>() == total)
        .unwrap_or(false)
}

/// Settings every test starts from: fast payment retries, a fresh data dir.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::load(None).expect("default settings load");
    s.server.listen = "127.0.0.1:0".into();
    s.server.data_dir = dir.to_path_buf();
    // Tests run payment services side by side: each binds a free port.
    s.payment_service.listen = "127.0.0.1:0".into();
    s.server.workers = 2;
    s.payment.backoff_base = Duration::from_millis(10);
    s.payment.attempt_timeout = Duration::from_millis(300);
    s.payment.gateway_latency = Duration::from_millis(1);
    // The load and fault suites send many orders per user; the rate limits have their
    // own tests (access_control.rs), which set them explicitly.
    s.limits.orders_per_user_per_sec = 0;
    // Likewise for logins and sign-ups (their limits are tested in users.rs).
    s.limits.logins_per_ip_per_min = 0;
    s.limits.logins_per_email_per_min = 0;
    s.limits.signups_per_ip_per_min = 0;
    s
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = test_settings(dir.path());
        let store_url = backend.store_url().await;
        if let Some(url) = &store_url {
            settings.store.url = Some(url.clone());
        }
        if matches!(backend, Backend::MySqlRowLock(_)) {
            settings.inventory.strategy = emporium::config::InventoryStrategy::SqlRowLock;
        }
        let cluster = matches!(backend, Backend::MySqlCluster(_));
        if cluster {
            settings.cluster.enabled = true;
            settings.cluster.shards = 32;
            settings.cluster.lease_ttl = Duration::from_millis(2000);
            settings.auth.jwt_secret = "cluster-suite-secret-0123456789abcdef".into();
        }
        tweak(&mut settings);
        let count = if cluster { 3 } else { 1 };
        let mut started = Vec::with_capacity(count);
        for i in 0..count {
            let mut node = settings.clone();
            if cluster {
                node.cluster.node_id = Some(format!("node-{i}"));
                node.server.data_dir = dir.path().join(format!("node-{i}"));
            }
            // The first node drops the database; it is stopped last.
            let drop_after = if i == 0 { store_url.clone() } else { None };
            started.push(start_server(node, drop_after));
        }
        let app = started[0].app.clone();
        let admin = app.keys.issue("admin", true).expect("token");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        let nodes: Vec<(String, App)> = started
            .iter()
            .map(|s| (format!("http://{}", s.addr), s.app.clone()))
            .collect();
        let (stops, servers) = started.into_iter().map(|s| (s.stop, s.server)).unzip();
        let test = Self {
            client,
            app,
            admin,
            nodes,
            next: Default::default(),
            stops,
            servers,
            _dir: dir,
        };
        test.wait_ready().await;
        test
    }

    /// Every node ready (in a cluster: each holds its share of the shards).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for (base, _) in &self.nodes {
            loop {
                if let Ok(r) = self.client.get(format!("{base}/health/ready")).send().await {
                    if r.status() == StatusCode::OK {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "server never became ready");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if self.nodes.len() > 1 {
            self.wait_fair_split(deadline).await;
        }
    }

    async fn wait_fair_split(&self, deadline: Instant) {
        let total = u64::from(self.app.settings.cluster.shards);
        loop {
            let mut owned = Vec::new();
            let mut views_complete = true;
            for (base, _) in &self.nodes {
                let health: Value = self
                    .client
                    .get(format!("{base}/health/cluster"))
                    .send()
                    .await
                    .expect("cluster health")
                    .json()
                    .await
                    .expect("json");
                owned.push(health["shards_owned"].as_u64().unwrap_or(0));
                views_complete &= knows_every_owner(&health, total);
            }
            let low = total / self.nodes.len() as u64;
            if views_complete && owned.iter().sum::<u64>() == total && owned.iter().all(|o| *o == low || *o == low + 1)
            {
                return;
            }
            assert!(Instant::now() < deadline, "no fair split: {owned:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `path` on the next node (always the same one outside the cluster backend).
    pub fn url(&self, path: &str) -> String {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.nodes.len();
        format!("{}{}", self.nodes[i].0, path)
    }

    /// Every node's app (one, or three for the cluster backend), for tests that ask a
    /// particular node directly.
    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.nodes.iter().map(|(_, app)| app)
    }

    pub fn token(&self, user: &str) -> String {
        self.app.keys.issue(user, false).expect("token")
    }

    /// Creates a product with one variant per `(sku, stock)` at 1,000 KRW each.
    pub async fn product(&self, variants: &[(&str, i64)]) -> Value {
        let variants: Vec<Value> = variants
            .iter()
            .map(|(sku, stock)| json!({"sku": sku, "stock": stock}))
            .collect();
        let r = self
            .client
            .post(self.url("/v1/products"))
            .bearer_auth(&self.admin)
            .json(&json!({"name": "테스트 상품", "price": {"amount": 1000, "currency": "KRW"}, "variants": variants}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::CREATED, "product creation failed");
        r.json().await.expect("json")
    }

    pub async fn order(&self, token: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url("/v1/orders"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn cancel(&self, token: &str, id: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.url(&format!("/v1/orders/{id}/cancel")))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn inventory(&self, sku: &str) -> (i64, i64) {
        let (status, v) = self.get(&self.admin, &format!("/v1/inventory/{sku}")).await;
        assert_eq!(status, StatusCode::OK);
        (
            v["stock"].as_i64().expect("stock"),
            v["reserved"].as_i64().expect("reserved"),
        )
    }

    /// Polls an order until it reaches a final state (or fails the test after 30 s).
    pub async fn final_status(&self, token: &str, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, order) = self.get(token, &format!("/v1/orders/{id}")).await;
            let status = order["status"].as_str().unwrap_or_default().to_owned();
            if status == "COMPLETED" || status == "CANCELLED" {
                return status;
            }
            assert!(Instant::now() < deadline, "order {id} stuck in {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The offline invariant check (same as `emporium reconcile`) must find nothing.
    pub async fn assert_consistent(&self) {
        // Let in-flight saga steps land first: consistency is checked at rest.
        let deadline = Instant::now() + Duration::from_secs(30);
        let at_rest = |app: &App| app.write_behind.is_drained() && app.orders.live_sagas() == 0;
        while !self.nodes.iter().all(|(_, app)| at_rest(app)) {
            assert!(Instant::now() < deadline, "sagas never settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let problems = self.app.store.reconcile().await.expect("reconcile runs");
        assert!(problems.is_empty(), "inconsistencies: {problems:#?}");
    }

    /// A metric's value summed over its series and over every node (the cluster's total).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let mut sum = 0.0;
        for (base, _) in &self.nodes {
            let text = self
                .client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            sum += text
                .lines()
                .filter(|l| l.starts_with(name_and_labels))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The first node drops the database: the others stop before it.
        while let Some(stop) = self.stops.pop() {
            let _ = stop.send(());
            if let Some(server) = self.servers.pop() {
                let _ = server.join();
            }
        }
    }
}
