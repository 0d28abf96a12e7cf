//! Cluster mode (docs/cluster.md): several real `emporium` processes on loopback, one
//! real MariaDB. Shards split fairly; a flash sale through every node sells exactly the
//! stock; `kill -9` of a node loses no acknowledged order and its SKUs sell again
//! through every survivor within the lease TTL + 2 s; a paused owner (SIGSTOP past its
//! lease) is fenced: nothing it held becomes durable twice, nothing is oversold.
//!
//! Under `CI=true` an unreachable MariaDB fails these tests; elsewhere they skip.

use crate::common;

use common::process::{self, all_orders, Process, BIN};
use common::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: u32 = 32;
const LEASE_TTL: Duration = Duration::from_millis(2000);
const SECRET: &str = "cluster-test-secret-0123456789abcdef";

struct Node {
    process: Process,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(store: &str, name: &str) -> Self {
        Self::start_with(store, name, &[])
    }

    /// A node with more environment (failpoints, payment timings) over the defaults.
    fn start_with(store: &str, name: &str, extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ttl = LEASE_TTL.as_millis().to_string();
        let shards = SHARDS.to_string();
        let log = std::env::var("CLUSTER_TEST_LOG").unwrap_or("warn".into());
        let process = Process::serve(
            dir.path(),
            &[
                ("EMPORIUM__STORE__URL", store),
                ("EMPORIUM__CLUSTER__ENABLED", "true"),
                ("EMPORIUM__CLUSTER__NODE_ID", name),
                ("EMPORIUM__CLUSTER__SHARDS", &shards),
                ("EMPORIUM__CLUSTER__LEASE_TTL_MS", &ttl),
                ("EMPORIUM__AUTH__JWT_SECRET", SECRET),
                ("EMPORIUM__PAYMENT__BACKOFF_BASE_MS", "10"),
                ("EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC", "0"),
                ("EMPORIUM__STORE__MAX_CONNECTIONS", "4"),
                ("EMPORIUM__SERVER__WORKERS", "2"),
                ("EMPORIUM__TELEMETRY__LOG_LEVEL", &log),
                ("EMPORIUM__TELEMETRY__LOG_FORMAT", "json"),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        Self { process, _dir: dir }
    }

    fn base(&self) -> &str {
        &self.process.base
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal}");
    }

    fn kill_9(&mut self) {
        self.process.child.kill().expect("SIGKILL");
        self.process.child.wait().unwrap();
    }

    /// SIGTERM and wait: the node drains and hands its shards over.
    fn stop(&mut self) {
        self.signal("-TERM");
        self.process.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }
}

fn token(sub: &str, admin: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    process::token(dir.path(), &[("EMPORIUM__AUTH__JWT_SECRET", SECRET)], sub, admin)
}

/// A fresh database on the test MariaDB, or `None` (skipped outside CI).
async fn fresh_store() -> Option<String> {
    let backend = Backend::mysql().await?;
    backend.store_url().await
}

async fn cluster_health(client: &reqwest::Client, node: &Node) -> Option<Value> {
    let r = client
        .get(format!("{}/health/cluster", node.base()))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Waits until every node is ready and the nodes hold a fair split of all shards.
async fn wait_fair_split(client: &reqwest::Client, nodes: &[&Node], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut owned = Vec::new();
        let mut ready = true;
        for node in nodes {
            let r = client.get(format!("{}/health/ready", node.base())).send().await;
            ready &= r.map(|r| r.status() == StatusCode::OK).unwrap_or(false);
            let health = cluster_health(client, node).await.unwrap_or(Value::Null);
            owned.push(health["shards_owned"].as_u64().unwrap_or(0));
            ready &= common::knows_every_owner(&health, u64::from(SHARDS));
        }
        let fair_low = u64::from(SHARDS) / nodes.len() as u64;
        let fair = owned.iter().all(|o| *o == fair_low || *o == fair_low + 1);
        if ready && fair && owned.iter().sum::<u64>() == u64::from(SHARDS) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no fair split of {SHARDS} shards over {} nodes within {within:?}: {owned:?}",
            nodes.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_product(client: &reqwest::Client, node: &Node, admin: &str, skus: &[(&str, i64)]) {
    let variants: Vec<Value> = skus
        .iter()
        .map(|(sku, stock)| json!({"sku": sku, "stock": stock}))
        .collect();
    let r = client
        .post(format!("{}/v1/products", node.base()))
        .bearer_auth(admin)
        .json(&json!({"name": skus[0].0.to_lowercase(), "price": {"amount": 10, "currency": "KRW"}, "variants": variants}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
}

/// One order of one unit; the status and the order id of a 201.
async fn order(client: &reqwest::Client, base: &str, user: &str, sku: &str) -> (StatusCode, Option<String>) {
    match client
        .post(format!("{base}/v1/orders"))
        .bearer_auth(user)
        .json(&json!({"items": [{"sku": sku, "qty": 1}]}))
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(r.headers().contains_key("retry-after"), "a 503 says when to retry");
            }
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body["id"].as_str().map(str::to_owned))
        }
        // The node died under the request (its socket closed): for the client the same
        // as a 503 without an answer; it retries.
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
    }
}

/// Waits until every order of `user` is COMPLETED; returns them.
async fn all_completed(client: &reqwest::Client, base: &str, user: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let orders = all_orders(client, base, user).await;
        let open: Vec<&Value> = orders.iter().filter(|o| o["status"] != "COMPLETED").collect();
        if open.is_empty() {
            return orders;
        }
        assert!(Instant::now() < deadline, "orders not finished: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn inventory(client: &reqwest::Client, base: &str, sku: &str) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("{base}/v1/inventory/{sku}")).send().await.unwrap();
        if r.status() == StatusCode::OK {
            let v: Value = r.json().await.unwrap();
            return (v["stock"].as_i64().unwrap(), v["reserved"].as_i64().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "inventory of {sku} not answered: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_reconciles(store: &str) {
    let dir = tempfile::tempdir().unwrap();
    process::assert_reconciles(dir.path(), &[("EMPORIUM__STORE__URL", store)]);
}

/// The node id owning `sku`'s shard, from the lease table.
async fn owner_of(store: &str, sku: &str) -> String {
    use sqlx::{Connection, Row};
    let shard = emporium::domain::cluster::shard_of(sku, SHARDS);
    let mut conn = sqlx::MySqlConnection::connect(store).await.unwrap();
    let row = sqlx::query("SELECT owner FROM shard_leases WHERE shard = ?")
        .bind(shard as i32)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // A `_bin` collation reads as bytes through the MySQL driver.
    let owner: Option<Vec<u8>> = row.try_get("owner").unwrap();
    String::from_utf8(owner.unwrap_or_default()).unwrap()
}

/// Only answers a client may see in cluster mode during faults: a result, or 503.
fn assert_expected(status: StatusCode) {
    assert!(
        [
            StatusCode::CREATED,
            StatusCode::CONFLICT,
            StatusCode::SERVICE_UNAVAILABLE
        ]
        .contains(&status),
        "unexpected status {status}"
    );
}

/// A cluster of real nodes on a fresh database, split fairly, with an admin's and a
/// buyer's token; one at a time (see [`common::process::serial`]).
struct Cluster {
    nodes: Vec<Node>,
    store: String,
    client: reqwest::Client,
    admin: String,
    user: String,
    /// How long the fair split took.
    split_in: Duration,
    serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    async fn start(names: &[&str]) -> Option<Self> {
        Self::start_with(names, &[]).await
    }

    /// Every node with `extra` environment.
    async fn start_with(names: &[&str], extra: &[(&str, &str)]) -> Option<Self> {
        Self::start_each(names, |_| extra.to_vec()).await
    }

    /// Each node with the environment `extra` gives for its name.
    async fn start_each<'a>(names: &[&str], extra: impl Fn(&str) -> Vec<(&'a str, &'a str)>) -> Option<Self> {
        let serial = common::process::serial().await;
        let store = fresh_store().await?;
        let client = reqwest::Client::new();
        let nodes: Vec<Node> = names
            .iter()
            .map(|name| Node::start_with(&store, name, &extra(name)))
            .collect();
        let split_in = wait_fair_split(&client, &nodes.iter().collect::<Vec<_>>(), Duration::from_secs(15)).await;
        Some(Self {
            nodes,
            store,
            client,
            admin: token("admin", true),
            user: token("buyer", false),
            split_in,
            serial,
        })
    }
}

/// Stops every node, then `emporium reconcile` must find the store consistent; the
/// database goes.
async fn finish(nodes: Vec<Node>, store: &str) {
    drop(nodes);
    assert_reconciles(store);
    common::drop_database(store).await;
}

const THREE: [&str; 3] = ["node-a", "node-b", "node-c"];

#[test]
fn cluster_mode_on_the_embedded_sqlite_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("EMPORIUM__CLUSTER__ENABLED", "true")
        .env("EMPORIUM__AUTH__JWT_SECRET", SECRET)
        .env("EMPORIUM__TELEMETRY__LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(!run.status.success(), "a cluster on SQLite must not start");
    let said = String::from_utf8_lossy(&run.stderr);
    assert!(said.contains("needs a MySQL/MariaDB store"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_split_fairly_sell_exactly_the_stock_and_a_fourth_joins() {
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        split_in: took,
        serial: _serial,
    }) = Cluster::start(&THREE).await
    else {
        return;
    };
    eprintln!("3 nodes split {SHARDS} shards fairly in {took:?}");
    let health = cluster_health(&client, &nodes[0]).await.unwrap();
    assert_eq!(health["node"], "node-a");
    assert_eq!(health["shards_total"], SHARDS);
    assert_eq!(health["members"].as_array().unwrap().len(), 3, "{health}");

    // Peers only: a wrong peer secret is refused, whatever the route.
    let r = client
        .get(format!("{}/v1/inventory/ANY", nodes[0].base()))
        .header("emporium-peer", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A flash sale of 300 units, 90 clients spread over the three nodes, 600 attempts.
    create_product(&client, &nodes[0], &admin, &[("FLASH", 300)]).await;
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bases: Vec<String> = nodes.iter().map(|n| n.base().to_owned()).collect();
    let clients: Vec<_> = (0..90)
        .map(|i| {
            let (client, base, user) = (client.clone(), bases[i % 3].clone(), user.clone());
            let (created, attempts) = (created.clone(), attempts.clone());
            tokio::spawn(async move {
                while attempts.fetch_add(1, Ordering::SeqCst) < 600 {
                    let (status, id) = order(&client, &base, &user, "FLASH").await;
                    assert_expected(status);
                    if let Some(id) = id.filter(|_| status == StatusCode::CREATED) {
                        created.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let created = created.lock().unwrap().clone();
    assert_eq!(created.len(), 300, "exactly the stock is sold");
    assert_eq!(created.iter().collect::<HashSet<_>>().len(), 300);
    let orders = all_completed(&client, nodes[1].base(), &user, Duration::from_secs(30)).await;
    assert_eq!(orders.len(), 300);
    for node in &nodes {
        assert_eq!(
            inventory(&client, node.base(), "FLASH").await,
            (0, 0),
            "through {}",
            node.base()
        );
    }

    // A fourth node joins while orders keep flowing: it gets a fair share, selling
    // never stops (answers stay 201/409/503), and nothing is oversold.
    create_product(
        &client,
        &nodes[0],
        &admin,
        &[("JOIN-1", 1000), ("JOIN-2", 1000), ("JOIN-3", 1000)],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sold = Arc::new(Mutex::new(BTreeMap::<String, i64>::new()));
    let sellers: Vec<_> = (0..12)
        .map(|i| {
            let (client, base, user) = (client.clone(), bases[i % 3].clone(), user.clone());
            let (stop, sold) = (stop.clone(), sold.clone());
            tokio::spawn(async move {
                let sku = format!("JOIN-{}", i % 3 + 1);
                while !stop.load(Ordering::SeqCst) {
                    let (status, _) = order(&client, &base, &user, &sku).await;
                    assert_expected(status);
                    if status == StatusCode::CREATED {
                        *sold.lock().unwrap().entry(sku.clone()).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fourth = Node::start(&store, "node-d");
    let all: Vec<&Node> = nodes.iter().chain([&fourth]).collect();
    let took = wait_fair_split(&client, &all, Duration::from_secs(15)).await;
    eprintln!("a fourth node took its fair share in {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for s in sellers {
        s.await.unwrap();
    }
    let sold = sold.lock().unwrap().clone();
    assert_eq!(sold.len(), 3, "every SKU sold during the join: {sold:?}");
    all_completed(&client, fourth.base(), &user, Duration::from_secs(30)).await;
    for (sku, n) in &sold {
        assert_eq!(inventory(&client, fourth.base(), sku).await, (1000 - n, 0), "{sku}");
    }
    nodes.push(fourth);
    finish(nodes, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_loses_no_order_and_its_skus_sell_again_within_the_ttl() {
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start(&THREE).await
    else {
        return;
    };
    let skus: Vec<String> = (0..12).map(|i| format!("MIX-{i}")).collect();
    let stocked: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 500)).collect();
    create_product(&client, &nodes[0], &admin, &stocked).await;

    // The victim owns some SKUs for sure: pick the owner of the first.
    let victim_id = owner_of(&store, &skus[0]).await;
    let victim = ["node-a", "node-b", "node-c"]
        .iter()
        .position(|n| *n == victim_id)
        .unwrap();
    let mut victims_skus = Vec::new();
    for sku in &skus {
        if owner_of(&store, sku).await == victim_id {
            victims_skus.push(sku.clone());
        }
    }

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let bases: Vec<String> = nodes.iter().map(|n| n.base().to_owned()).collect();
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let (client, base, user) = (client.clone(), bases[i % 3].clone(), user.clone());
            let (acknowledged, stop, skus) = (acknowledged.clone(), stop.clone(), skus.clone());
            tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let (status, id) = order(&client, &base, &user, &skus[n % skus.len()]).await;
                    assert_expected(status);
                    if let Some(id) = id.filter(|_| status == StatusCode::CREATED) {
                        acknowledged.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "orders are not flowing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[victim].kill_9();
    let killed_at = Instant::now();

    // Every SKU of the dead node sells again through every survivor within TTL + 2 s.
    let survivors: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| bases[i].clone()).collect();
    let mut takeover = Duration::ZERO;
    for sku in &victims_skus {
        for base in &survivors {
            loop {
                let (status, id) = order(&client, base, &user, sku).await;
                if status == StatusCode::CREATED {
                    acknowledged.lock().unwrap().push(id.unwrap());
                    break;
                }
                assert_expected(status);
                assert!(
                    killed_at.elapsed() < LEASE_TTL + Duration::from_secs(2),
                    "{sku} does not sell through {base} {:?} after the kill",
                    killed_at.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        takeover = takeover.max(killed_at.elapsed());
    }
    eprintln!(
        "takeover: {} SKUs of the killed node sold again through both survivors after {takeover:?}",
        victims_skus.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    // Every 201 survived; the dead node's in-flight sagas finished on the new owners.
    let acknowledged = acknowledged.lock().unwrap().clone();
    let orders = all_completed(&client, &survivors[0], &user, Duration::from_secs(30)).await;
    let stored: HashSet<&str> = orders.iter().map(|o| o["id"].as_str().unwrap()).collect();
    for id in &acknowledged {
        assert!(stored.contains(id.as_str()), "acknowledged order {id} lost");
    }
    // Inventory equals completed orders, SKU by SKU.
    let mut per_sku: BTreeMap<String, i64> = BTreeMap::new();
    for o in &orders {
        for line in o["items"].as_array().unwrap() {
            *per_sku.entry(line["sku"].as_str().unwrap().to_owned()).or_default() += line["qty"].as_i64().unwrap();
        }
    }
    for sku in &skus {
        let (stock, reserved) = inventory(&client, &survivors[1], sku).await;
        assert_eq!(reserved, 0, "{sku}");
        assert_eq!(stock, 500 - per_sku.get(sku).copied().unwrap_or(0), "{sku}");
    }
    finish(nodes, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_is_fenced_and_nothing_is_oversold() {
    let Some(Cluster {
        nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start(&THREE).await
    else {
        return;
    };
    let stock = 400;
    create_product(&client, &nodes[0], &admin, &[("HOT", stock)]).await;
    let owner_id = owner_of(&store, "HOT").await;
    let owner = ["node-a", "node-b", "node-c"]
        .iter()
        .position(|n| *n == owner_id)
        .unwrap();
    let others: Vec<String> = (0..3)
        .filter(|i| *i != owner)
        .map(|i| nodes[i].base().to_owned())
        .collect();

    // Units sell through the owner from eight clients; it is frozen while they do, so
    // requests, saga steps and a group commit are in flight (a frozen transaction keeps
    // its row locks until the database ends it, see docs/cluster.md).
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let frozen = Arc::new(AtomicBool::new(false));
    let paused: Vec<_> = (0..8)
        .map(|_| {
            let (client, base, user) = (client.clone(), nodes[owner].base().to_owned(), user.clone());
            let (created, frozen) = (created.clone(), frozen.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !frozen.load(Ordering::SeqCst) {
                    let (status, id) = order(&client, &base, &user, "HOT").await;
                    // A request that waited in the frozen process's socket longer than the
                    // header timeout (5 s) is answered 408 when it wakes: nothing was done.
                    if status != StatusCode::REQUEST_TIMEOUT {
                        assert_expected(status);
                    }
                    if let Some(id) = id.filter(|_| status == StatusCode::CREATED) {
                        created.lock().unwrap().push(id);
                    }
                    answers.push(status);
                }
                answers
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while created.lock().unwrap().len() < 20 {
        assert!(Instant::now() < deadline, "the owner does not sell");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[owner].signal("-STOP");
    frozen.store(true, Ordering::SeqCst);

    // The others take the shard over and sell while the owner sleeps: six clients on
    // the two other nodes, until the owner has slept 2 x TTL and the others have sold.
    // The owner sleeps 2 x TTL whatever the clients wait for: a forward to it waits up
    // to the owner's own request timeout, longer than the pause, and is answered when
    // it wakes (fenced by then).
    let paused_at = Instant::now();
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let sellers: Vec<_> = (0..6)
        .map(|i| {
            let (client, base, user) = (client.clone(), others[i % 2].clone(), user.clone());
            let (created, statuses) = (created.clone(), statuses.clone());
            tokio::spawn(async move {
                let sold = || statuses.lock().unwrap().get(&201).copied().unwrap_or(0) > 0;
                while paused_at.elapsed() < 2 * LEASE_TTL || !sold() {
                    assert!(
                        paused_at.elapsed() < Duration::from_secs(30),
                        "the others never sold while the owner slept"
                    );
                    let (status, id) = order(&client, &base, &user, "HOT").await;
                    assert_expected(status);
                    *statuses.lock().unwrap().entry(status.as_u16()).or_default() += 1;
                    if let Some(id) = id.filter(|_| status == StatusCode::CREATED) {
                        created.lock().unwrap().push(id);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep_until((paused_at + 2 * LEASE_TTL).into()).await;
    nodes[owner].signal("-CONT");
    for s in sellers {
        s.await.unwrap();
    }
    eprintln!(
        "answers while the owner slept 2 x TTL and until the others sold ({:?}): {:?}",
        paused_at.elapsed(),
        statuses.lock().unwrap()
    );
    for p in paused {
        let answers = p.await.unwrap();
        eprintln!(
            "the frozen owner's client, last answers: {:?}",
            &answers[answers.len().saturating_sub(2)..]
        );
    }
    // The paused owner learns that its leases went to another node (on its keeper's
    // first round after waking: within a lease round).
    let woke = Instant::now();
    loop {
        let metrics = client
            .get(format!("{}/metrics", nodes[owner].base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lost: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("emporium_cluster_leases_lost_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if lost >= 1.0 {
            break;
        }
        assert!(
            woke.elapsed() < LEASE_TTL * 2,
            "the paused owner never noticed it lost its leases"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sell out through every node.
    for node in &nodes {
        loop {
            let (status, id) = order(&client, node.base(), &user, "HOT").await;
            assert_expected(status);
            if let Some(id) = id.filter(|_| status == StatusCode::CREATED) {
                created.lock().unwrap().push(id);
            } else if status == StatusCode::CONFLICT {
                break;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let created = created.lock().unwrap().clone();
    assert_eq!(created.len() as i64, stock, "exactly the stock was acknowledged");
    let orders = all_completed(&client, &others[0], &user, Duration::from_secs(30)).await;
    assert_eq!(orders.len() as i64, stock, "0 oversold: one order per unit");
    let stored: HashSet<&str> = orders.iter().map(|o| o["id"].as_str().unwrap()).collect();
    for id in &created {
        assert!(stored.contains(id.as_str()), "acknowledged order {id} lost");
    }
    for node in &nodes {
        assert_eq!(inventory(&client, node.base(), "HOT").await, (0, 0));
    }
    finish(nodes, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_no_order() {
    let names = THREE;
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start(&names).await
    else {
        return;
    };
    let skus: Vec<String> = (0..6).map(|i| format!("ROLL-{i}")).collect();
    let stocked: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 5000)).collect();
    create_product(&client, &nodes[0], &admin, &stocked).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let bases = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.base().to_owned()).collect::<Vec<_>>(),
    ));
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let (client, bases, user) = (client.clone(), bases.clone(), user.clone());
            let (acknowledged, stop, skus) = (acknowledged.clone(), stop.clone(), skus.clone());
            tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let base = bases.lock().unwrap()[n % 3].clone();
                    let (status, id) = order(&client, &base, &user, &skus[n % skus.len()]).await;
                    assert_expected(status);
                    if let Some(id) = id.filter(|_| status == StatusCode::CREATED) {
                        acknowledged.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        nodes[i].stop();
        let replacement = Node::start(&store, &format!("{}-2", names[i]));
        bases.lock().unwrap()[i] = replacement.base().to_owned();
        nodes[i] = replacement;
        wait_fair_split(&client, &nodes.iter().collect::<Vec<_>>(), Duration::from_secs(15)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 100, "orders flowed: {}", acknowledged.len());
    let orders = all_completed(&client, nodes[0].base(), &user, Duration::from_secs(30)).await;
    let stored: HashSet<&str> = orders.iter().map(|o| o["id"].as_str().unwrap()).collect();
    for id in &acknowledged {
        assert!(stored.contains(id.as_str()), "acknowledged order {id} lost");
    }
    finish(nodes, &store).await;
}

/// Two SKU names whose shards have different owners, from the lease table, the smaller
/// first (an order spanning them is placed and decided by the first one's owner).
async fn skus_owned_by_two(store: &str, prefix: &str) -> (String, String) {
    let mut by_owner: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..200 {
        let sku = format!("{prefix}-{i}");
        by_owner.entry(owner_of(store, &sku).await).or_insert(sku);
        if by_owner.len() >= 2 {
            break;
        }
    }
    let mut skus: Vec<String> = by_owner.into_values().take(2).collect();
    skus.sort();
    let high = skus.pop().unwrap();
    (skus.pop().unwrap(), high)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_whose_skus_have_different_owners_is_all_or_nothing() {
    let Some(Cluster {
        nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start(&THREE).await
    else {
        return;
    };
    let (x, y) = skus_owned_by_two(&store, "SPAN").await;
    assert_ne!(owner_of(&store, &x).await, owner_of(&store, &y).await);
    create_product(&client, &nodes[0], &admin, &[(&x, 40), (&y, 40), ("SPAN-EMPTY", 0)]).await;
    let both = json!({"items": [{"sku": x, "qty": 1}, {"sku": y, "qty": 1}]});

    // A flash sale of two-SKU orders through every node: exactly the stock, both SKUs
    // always together.
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let bases: Vec<String> = nodes.iter().map(|n| n.base().to_owned()).collect();
    let answers = Arc::new(Mutex::new(BTreeMap::<u16, usize>::new()));
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let (client, base, user, body) = (client.clone(), bases[i % 3].clone(), user.clone(), both.clone());
            let (created, answers) = (created.clone(), answers.clone());
            tokio::spawn(async move {
                // Each client buys until the sale is over (409), retrying a 503.
                loop {
                    let r = client
                        .post(format!("{base}/v1/orders"))
                        .bearer_auth(&user)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    assert_expected(status);
                    *answers.lock().unwrap().entry(status.as_u16()).or_default() += 1;
                    match status {
                        StatusCode::CREATED => {
                            let v: Value = r.json().await.unwrap();
                            created.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                        }
                        StatusCode::CONFLICT => return,
                        _ => {
                            eprintln!("DEBUG503 {base} {}", r.text().await.unwrap_or_default());
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    eprintln!("two-SKU sale across owners: {:?}", answers.lock().unwrap());
    let created = created.lock().unwrap().clone();
    assert_eq!(created.len(), 40, "exactly the stock of two-SKU orders is sold");
    all_completed(&client, nodes[2].base(), &user, Duration::from_secs(30)).await;
    for node in &nodes {
        assert_eq!(inventory(&client, node.base(), &x).await, (0, 0));
        assert_eq!(inventory(&client, node.base(), &y).await, (0, 0));
    }
    // F4: every SKU of every order gets its inventory_confirmed, whichever node owns it.
    sku_events_become(&store, "inventory_confirmed", &x, None, 40).await;
    sku_events_become(&store, "inventory_confirmed", &y, None, 40).await;

    // All or nothing: one SKU sold out refuses the order and holds nothing elsewhere.
    let admin_put = |sku: String, stock: i64| {
        let (client, base, admin) = (client.clone(), nodes[1].base().to_owned(), admin.clone());
        async move {
            let r = client
                .put(format!("{base}/v1/inventory/{sku}"))
                .bearer_auth(&admin)
                .json(&json!({"stock": stock}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{sku}");
        }
    };
    admin_put(x.clone(), 5).await;
    let (low, high) = (&x, &y);
    let r = client
        .post(format!("{}/v1/orders", nodes[0].base()))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": low, "qty": 1}, {"sku": high, "qty": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "the sold-out SKU refuses the whole order"
    );
    assert_eq!(
        inventory(&client, nodes[2].base(), &x).await,
        (5, 0),
        "nothing held on the other SKU"
    );

    // A cross-owner order that is cancelled gives every SKU back.
    admin_put(y.clone(), 5).await;
    let r = client
        .post(format!("{}/v1/orders", nodes[1].base()))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": x, "qty": 2}, {"sku": y, "qty": 3}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(inventory(&client, nodes[0].base(), &x).await, (5, 2));
    assert_eq!(inventory(&client, nodes[0].base(), &y).await, (5, 3));
    let r = client
        .post(format!("{}/v1/orders/{id}/cancel", nodes[2].base()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(inventory(&client, nodes[0].base(), &x).await, (5, 0));
    assert_eq!(inventory(&client, nodes[0].base(), &y).await, (5, 0));
    sku_events_become(&store, "inventory_released", &x, Some(&id), 1).await;
    sku_events_become(&store, "inventory_released", &y, Some(&id), 1).await;
    finish(nodes, &store).await;
}

/// Outbox events of `event_type` about `sku` (their aggregate) for `order`, straight
/// from the store.
async fn sku_events(store: &str, event_type: &str, sku: &str, order: Option<&str>) -> i64 {
    common::outbox_events(store)
        .await
        .iter()
        .filter(|(_, e)| e["type"] == event_type && e["aggregate_id"] == sku)
        .filter(|(_, e)| order.is_none_or(|o| e["data"]["order_id"] == o))
        .count() as i64
}

/// Polls until `sku` has exactly `want` events of `event_type` (for `order`): the
/// inventory an owner answers is its memory, whose commit may still be on its way.
async fn sku_events_become(store: &str, event_type: &str, sku: &str, order: Option<&str>, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n = sku_events(store, event_type, sku, order).await;
        if n == want {
            return;
        }
        assert!(
            n < want && Instant::now() < deadline,
            "{sku}: {n} {event_type} events, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of order `id` in the store (None before it is committed).
async fn stored_status(store: &str, id: &str) -> Option<String> {
    stored_text(store, "SELECT status FROM orders WHERE id = ?", id).await
}

/// The one text column `sql` selects for `id` (MariaDB answers these as bytes), if a row
/// matches.
async fn stored_text(store: &str, sql: &str, id: &str) -> Option<String> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::MySqlConnection::connect(store).await.unwrap();
    let row = sqlx::query(sql).bind(id).fetch_optional(&mut conn).await.unwrap()?;
    let text: Vec<u8> = row.try_get(0).unwrap();
    Some(String::from_utf8(text).unwrap())
}

/// Waits until `node`'s process has exited (a failpoint aborted it).
async fn exited(node: &mut Node, within: Duration) {
    let deadline = Instant::now() + within;
    while node.process.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node did not stop at its failpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `sku` reads `want` (stock, reserved) at `base`.
async fn inventory_becomes(client: &reqwest::Client, base: &str, sku: &str, want: (i64, i64), within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = inventory(client, base, sku).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sku} is {now:?}, expected {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Review finding F1 (and F4): the node running a cross-owner order's saga dies right
/// after its decision is durable and before it told the other SKU's owner (failpoint
/// `after_decision_commit=abort`). The decision stands: nobody decides again, the other
/// owner's sweep applies it to its SKU, each SKU gets its own inventory event, stock is
/// the initial stock minus what completed orders took, nothing stays reserved and
/// `emporium reconcile` is clean. Run once for a cancel (release) and once for a payment
/// (confirm); before the fix the remote SKU was settled first, so a death in between
/// left it released for an order that a resumed saga then completed (sold twice).
async fn a_decision_outlives_its_node(cancel: bool) {
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start_with(
        &THREE,
        &[
            ("EMPORIUM_FAILPOINTS", "after_decision_commit=abort"),
            // The charge takes 3 s: long enough to cancel first, short enough to wait for.
            ("EMPORIUM__PAYMENT__SLOW_MS", "3000"),
            ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "10000"),
        ],
    )
    .await
    else {
        return;
    };
    let (low, high) = skus_owned_by_two(&store, "DECIDE").await;
    create_product(&client, &nodes[0], &admin, &[(&low, 5), (&high, 5)]).await;
    let deciding = owner_of(&store, &low).await;
    let other = owner_of(&store, &high).await;
    assert_ne!(deciding, other);
    let dying = THREE.iter().position(|n| *n == deciding).unwrap();
    let alive = (dying + 1) % 3;

    let r = client
        .post(format!("{}/v1/orders", nodes[alive].base()))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": low, "qty": 2}, {"sku": high, "qty": 3}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    if cancel {
        // The deciding node commits CANCELLED with its own SKU's release, then dies
        // before telling the other owner: the client hears no answer (or a 503).
        let _ = client
            .post(format!("{}/v1/orders/{id}/cancel", nodes[alive].base()))
            .bearer_auth(&user)
            .send()
            .await;
    }
    exited(&mut nodes[dying], Duration::from_secs(15)).await;
    let decided = if cancel { "CANCELLED" } else { "COMPLETED" };
    assert_eq!(stored_status(&store, &id).await.as_deref(), Some(decided));

    // The other SKU's owner sweeps the recorded decision; the dead node's SKU was
    // settled with the decision itself and is claimed by a survivor.
    let sold = if cancel { (0, 0) } else { (2, 3) };
    let within = Duration::from_secs(20);
    inventory_becomes(&client, nodes[alive].base(), &low, (5 - sold.0, 0), within).await;
    inventory_becomes(&client, nodes[alive].base(), &high, (5 - sold.1, 0), within).await;
    let order: Value = client
        .get(format!("{}/v1/orders/{id}", nodes[alive].base()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["status"], decided, "the recorded decision stands: {order}");

    // F4: each SKU's owner wrote its own inventory event, once.
    let event = if cancel {
        "inventory_released"
    } else {
        "inventory_confirmed"
    };
    sku_events_become(&store, event, &low, Some(&id), 1).await;
    sku_events_become(&store, event, &high, Some(&id), 1).await;
    finish(nodes, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_decided_before_its_node_died_is_applied_by_the_other_owner() {
    a_decision_outlives_its_node(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_decided_before_its_node_died_is_applied_by_the_other_owner() {
    a_decision_outlives_its_node(false).await;
}

/// Review finding F2: the owner of a cross-owner order's other SKU takes its time making
/// the decision durable (failpoint `apply_decision_before_commit=sleep(4000)`, longer
/// than the 2 s peer timeout), so the deciding node asks again meanwhile; then that owner
/// is killed before its commit. Before the fix the repeated settle was answered "done"
/// at once (nothing left in the owner's memory) and the reservation, still in the store,
/// was never settled by anyone: held forever. Now a repeated settle is answered 503 until
/// the first is durable, and the SKU's next owner applies the recorded decision from the
/// store: the unit comes back, each SKU has one inventory event, reconcile is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_lost_with_its_owner_is_applied_by_the_next_owner() {
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start_with(
        &THREE,
        &[
            ("EMPORIUM_FAILPOINTS", "apply_decision_before_commit=sleep(4000)"),
            ("EMPORIUM__PAYMENT__SLOW_MS", "30000"),
            ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "60000"),
        ],
    )
    .await
    else {
        return;
    };
    let (low, high) = skus_owned_by_two(&store, "SLOWSETTLE").await;
    create_product(&client, &nodes[0], &admin, &[(&low, 5), (&high, 5)]).await;
    let applying = owner_of(&store, &high).await;
    let applying = THREE.iter().position(|n| *n == applying).unwrap();
    let asking = (applying + 1) % 3;

    let r = client
        .post(format!("{}/v1/orders", nodes[asking].base()))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": low, "qty": 2}, {"sku": high, "qty": 3}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let cancel = {
        let (client, base, user, id) = (
            client.clone(),
            nodes[asking].base().to_owned(),
            user.clone(),
            id.clone(),
        );
        tokio::spawn(async move {
            client
                .post(format!("{base}/v1/orders/{id}/cancel"))
                .bearer_auth(&user)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    // The decision is durable; the other owner is now inside its 4 s before the commit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_status(&store, &id).await.as_deref() != Some("CANCELLED") {
        assert!(Instant::now() < deadline, "the cancel was not decided");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[applying].kill_9();
    let _ = cancel.await;

    let within = Duration::from_secs(30);
    inventory_becomes(&client, nodes[asking].base(), &high, (5, 0), within).await;
    inventory_becomes(&client, nodes[asking].base(), &low, (5, 0), within).await;
    sku_events_become(&store, "inventory_released", &low, Some(&id), 1).await;
    sku_events_become(&store, "inventory_released", &high, Some(&id), 1).await;
    finish(nodes, &store).await;
}

/// Review finding F3: an order belongs to its smallest SKU's shard, and only that
/// shard's owner may place it, so the node that places it is the one that runs its saga.
/// A node asked to place an order whose shard it does not hold (the shard moved after the
/// request was routed) refuses with 503 and holds nothing; before the fix it reserved at
/// the owner, committed the order and started the saga on itself, where nothing would
/// ever settle it once its steps were fenced. (In-process nodes, to ask one directly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_owner_of_the_order_shard_places_the_order() {
    use emporium::actors::order::{PlaceError, PlaceOrder};
    use emporium::domain::ids::{Sku, UserId};
    let _serial = common::process::serial().await;
    let Some(Backend::MySql(url)) = Backend::mysql().await else {
        return;
    };
    let app = common::TestApp::spawn(Backend::MySqlCluster(url)).await;
    app.product(&[("ORPHAN", 5)]).await;
    let sku = Sku::parse("ORPHAN").unwrap();
    let request = || PlaceOrder {
        user: UserId::parse("f3-buyer").unwrap(),
        items: vec![(sku.clone(), 1)],
        payment_token: "test_ok".into(),
        idempotency: None,
        traceparent: None,
        tracestate: None,
    };
    let elsewhere = app
        .apps()
        .find(|a| !a.ownership.holds_sku(&sku))
        .expect("a node not owning it");
    let refused = elsewhere.orders.place(request()).await;
    assert!(matches!(refused, Err(PlaceError::Unavailable(_))), "{refused:?}");
    assert_eq!(elsewhere.orders.live_sagas(), 0, "no saga where the order is not owned");
    assert_eq!(app.inventory("ORPHAN").await, (5, 0), "nothing held");

    let owner = app.apps().find(|a| a.ownership.holds_sku(&sku)).expect("an owner");
    let placed = owner.orders.place(request()).await.expect("placed by the owner");
    let token = app.app.keys.issue("f3-buyer", false).unwrap();
    assert_eq!(
        app.final_status(&token, &placed.order.id.to_string()).await,
        "COMPLETED"
    );
    assert_eq!(app.inventory("ORPHAN").await, (4, 0));
    app.assert_consistent().await;
}

/// The first SKU named `prefix-<n>` whose shard `pick` accepts the owner of.
async fn sku_owned(store: &str, prefix: &str, pick: impl Fn(&str) -> bool) -> String {
    for i in 0..500 {
        let sku = format!("{prefix}-{i}");
        if pick(&owner_of(store, &sku).await) {
            return sku;
        }
    }
    panic!("no {prefix} SKU with a matching owner");
}

/// Review finding F1, the oversell: the node running a cross-owner order's saga dies
/// while the customer's cancel is being decided, after it settled its own SKU in memory
/// and before the decision is durable (failpoint `before_decision_commit=abort`, on that
/// node only). Before the fix the other owner had already released its SKU durably at
/// that point; the saga resumed on the new owner, the payment succeeded and the order
/// completed with that SKU back on sale: sold twice. Now nothing was decided, so nothing
/// was applied: the resumed saga completes the order and both SKUs are confirmed once,
/// stock = initial − sold, nothing reserved, reconcile clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_lost_before_its_decision_sells_nothing_twice() {
    const DYING: &str = "node-a";
    let slow = [
        ("EMPORIUM__PAYMENT__SLOW_MS", "3000"),
        ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "10000"),
    ];
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start_each(&THREE, |name| {
        let mut env = slow.to_vec();
        if name == DYING {
            env.push(("EMPORIUM_FAILPOINTS", "before_decision_commit=abort"));
        }
        env
    })
    .await
    else {
        return;
    };
    let low = sku_owned(&store, "LOST-A", |owner| owner == DYING).await;
    let high = sku_owned(&store, "LOST-B", |owner| owner != DYING).await;
    create_product(&client, &nodes[1], &admin, &[(&low, 5), (&high, 5)]).await;
    let r = client
        .post(format!("{}/v1/orders", nodes[1].base()))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": low, "qty": 2}, {"sku": high, "qty": 3}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let _ = client
        .post(format!("{}/v1/orders/{id}/cancel", nodes[1].base()))
        .bearer_auth(&user)
        .send()
        .await;
    exited(&mut nodes[0], Duration::from_secs(15)).await;
    assert_eq!(stored_status(&store, &id).await.as_deref(), Some("PENDING_PAYMENT"));
    // The other owner never heard of a decision: its SKU is still held in the store.
    assert_eq!(inventory(&client, nodes[1].base(), &high).await, (5, 3));

    // A survivor claims the dead node's shards and resumes the order; the payment succeeds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_status(&store, &id).await.as_deref() != Some("COMPLETED") {
        assert!(Instant::now() < deadline, "the resumed saga did not finish the order");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let within = Duration::from_secs(20);
    inventory_becomes(&client, nodes[1].base(), &low, (3, 0), within).await;
    inventory_becomes(&client, nodes[1].base(), &high, (2, 0), within).await;
    sku_events_become(&store, "inventory_confirmed", &low, Some(&id), 1).await;
    sku_events_become(&store, "inventory_confirmed", &high, Some(&id), 1).await;
    assert_eq!(sku_events(&store, "inventory_released", &high, Some(&id)).await, 0);
    finish(nodes, &store).await;
}

/// Review finding F9 in a cluster: the owner's payment was captured and the owner died
/// before its settle (failpoint `after_capture=abort`, on that node only); the survivor
/// that claims its shard finds the order past its reservation deadline and cancels it as
/// expired. The money goes back: a refund keyed by the order id is requested and carried
/// out by the leader, the stock is whole, and the store reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_whose_owner_died_is_refunded_when_a_survivor_expires_the_order() {
    const DYING: &str = "node-a";
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start_each(&THREE, |name| {
        let mut env = vec![
            ("EMPORIUM__INVENTORY__RESERVATION_TTL_SECS", "1"),
            ("EMPORIUM__PAYMENT__SLOW_MS", "300"),
            ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "10000"),
        ];
        if name == DYING {
            env.push(("EMPORIUM_FAILPOINTS", "after_capture=abort"));
        }
        env
    })
    .await
    else {
        return;
    };
    let sku = sku_owned(&store, "CAPTURED", |owner| owner == DYING).await;
    create_product(&client, &nodes[1], &admin, &[(&sku, 4)]).await;
    let r = client
        .post(format!("{}/v1/orders", nodes[1].base()))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": sku, "qty": 1}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    exited(&mut nodes[0], Duration::from_secs(15)).await;
    assert_eq!(stored_status(&store, &id).await.as_deref(), Some("PENDING_PAYMENT"));

    // The lease runs out (2 s) after the 1 s reservation: the claimer expires the order.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let order: Value = client
            .get(format!("{}/v1/orders/{id}", nodes[1].base()))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if order["payment"]["status"] == "refunded" {
            assert_eq!(order["status"], "CANCELLED", "{order}");
            assert_eq!(order["cancel_reason"], "expired", "{order}");
            break;
        }
        assert!(Instant::now() < deadline, "no refund for the captured order: {order}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    inventory_becomes(&client, nodes[1].base(), &sku, (4, 0), Duration::from_secs(10)).await;
    finish(nodes, &store).await;
}

/// The status of order `id`'s refund row in the store, if it has one.
async fn stored_refund(store: &str, id: &str) -> Option<String> {
    stored_text(store, "SELECT status FROM refunds WHERE order_id = ?", id).await
}

/// The F9 gap the nemesis found (seed 12497241351254603777): with a shared gateway, the
/// customer's cancel commits while the charge is still at the gateway, and the node
/// dies at once (failpoint `after_cancel_commit=abort`), so no task of it hears the
/// charge's late success. The refund was requested before the cancel committed; the
/// leader asks the gateway, which captured nothing yet and voids the order: the charge
/// that finishes afterwards takes nothing. The order shows `not_charged`, its refund
/// `voided`, the gateway lists no capture, the stock is whole, the store reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_in_flight_when_its_cancelling_node_dies_captures_nothing() {
    const DYING: &str = "node-a";
    const SLOW: Duration = Duration::from_secs(8);
    let root = tempfile::tempdir().unwrap();
    let gateway = common::process::Gateway::start(root.path(), SLOW);
    let Some(Cluster {
        mut nodes,
        store,
        client,
        admin,
        user,
        serial: _serial,
        ..
    }) = Cluster::start_each(&THREE, |name| {
        let mut env = vec![
            ("EMPORIUM__PAYMENT__GATEWAY_URL", gateway.base.as_str()),
            ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "20000"),
        ];
        if name == DYING {
            env.push(("EMPORIUM_FAILPOINTS", "after_cancel_commit=abort"));
        }
        env
    })
    .await
    else {
        return;
    };
    let sku = sku_owned(&store, "INFLIGHT", |owner| owner == DYING).await;
    create_product(&client, &nodes[1], &admin, &[(&sku, 4)]).await;
    let r = client
        .post(format!("{}/v1/orders", nodes[0].base()))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": sku, "qty": 1}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let charge_done = Instant::now() + SLOW + Duration::from_secs(1);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // The owner commits the cancel and dies before it can answer.
    let cancelled = client
        .post(format!("{}/v1/orders/{id}/cancel", nodes[0].base()))
        .bearer_auth(&user)
        .send()
        .await;
    assert!(cancelled.is_err(), "the node must die before answering: {cancelled:?}");
    exited(&mut nodes[0], Duration::from_secs(15)).await;
    assert_eq!(stored_status(&store, &id).await.as_deref(), Some("CANCELLED"));
    assert!(
        stored_refund(&store, &id).await.is_some(),
        "the refund is requested before the cancel commits"
    );

    // A survivor leads the refunds (at once, or after the dead node's lease runs out).
    let deadline = Instant::now() + SLOW;
    while stored_refund(&store, &id).await.as_deref() != Some("voided") {
        assert!(
            Instant::now() < deadline,
            "not voided while the charge was in flight: {:?}",
            stored_refund(&store, &id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the end of the charge that was in flight: it captured nothing.
    tokio::time::sleep_until(charge_done.into()).await;
    let captures = gateway.captures(&client).await;
    assert!(
        captures.iter().all(|c| c["order_id"] != id.as_str()),
        "the late charge captured: {captures:?}"
    );
    let order: Value = client
        .get(format!("{}/v1/orders/{id}", nodes[1].base()))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["payment"]["status"], "not_charged", "{order}");
    inventory_becomes(&client, nodes[1].base(), &sku, (4, 0), Duration::from_secs(10)).await;
    finish(nodes, &store).await;
}
