//! Nemesis: three real cluster nodes (child processes) on one MariaDB under a seeded
//! schedule of faults, with 32 concurrent clients; afterwards, with every fault healed,
//! a checker reads the history of requests and the final store and asserts the
//! cluster's guarantees (docs/cluster.md).
//!
//! Short run (CI, about 3 minutes; 10 faults over 90 s of load):
//!
//! ```sh
//! cargo test --test it nemesis::nemesis_short
//! ```
//!
//! Long run (200 faults over 20 minutes):
//!
//! ```sh
//! NEMESIS_FAULTS=200 NEMESIS_SECONDS=1200 cargo test --test it nemesis::long -- --ignored
//! ```
//!
//! `NEMESIS_SEED=N` replays a schedule (the seed is always printed; the faults' timing
//! against the load is not deterministic, the schedule and the client mix are).
//! `NEMESIS_FAULTS` and `NEMESIS_SECONDS` size a run.
//!
//! Topology: every node reaches the database through a fault proxy of its own (freeze:
//! a silent partition; cut: connections reset), and the other nodes reach it through a
//! second proxy (its `cluster.advertise_url`), so a node-to-node partition is a cut or
//! freeze of that proxy. Clients talk to the nodes directly. All nodes charge and refund
//! through one shared `emporium gateway`, so the captures can be audited.
//!
//! Faults: `kill -9` and restart; SIGSTOP past the lease TTL and SIGCONT; freeze or cut a
//! node's database link; cut or freeze the links to a node; a rolling SIGTERM restart of
//! every node; a fourth node joining (or, when it is there, leaving by SIGTERM).
//!
//! The checker ([`check`], pure, unit-tested below) asserts:
//! - answers: orders 201/409/503 (+Retry-After)/408, cancels 200/409/503/408, reads
//!   200/503/408 (no answer at all is recorded and allowed: the node was killed);
//! - every 201 order is stored and reaches COMPLETED or CANCELLED within the
//!   reservation TTL + two lease TTLs after the heal, and so does every stored order; an
//!   acknowledged cancel (200) ends CANCELLED;
//! - per SKU: units in completed orders ≤ initial stock, stock = initial − completed,
//!   reserved = 0;
//! - every capture at the gateway belongs to a COMPLETED order or was refunded exactly
//!   once; every COMPLETED order was captured and not refunded;
//! - every order's events (order_created, then one order_completed / order_cancelled) and
//!   every SKU's events per order (inventory_reserved, then one confirmed / released)
//!   are in the outbox, in order;
//! - `emporium reconcile` is clean; no node exited by itself.
//!
//! A failing run prints its seed, the faults, and the history around each violation.
//! Under `CI=true` an unreachable MariaDB fails the test; elsewhere it skips.

use crate::common;

use common::process::{self, bin, Gateway, Process};
use common::proxy::Proxy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const SHARDS: u32 = 32;
const LEASE_TTL: Duration = Duration::from_millis(3000);
const RESERVATION_TTL: Duration = Duration::from_secs(20);
const SECRET: &str = "nemesis-test-secret-0123456789abcdef";
const CLIENTS: usize = 32;
/// How long the gateway's `test_slow` charges (and their refunds) take.
const GATEWAY_SLOW: Duration = Duration::from_millis(500);
/// Hot SKUs (one-SKU orders; they sell out) and the SKUs carts are made of, with their
/// stock for 90 s of load (see [`initial_stock`]).
const HOT: [(&str, i64); 3] = [("HOT-1", 150), ("HOT-2", 150), ("HOT-3", 150)];
const CART: [(&str, i64); 5] = [
    ("CART-A", 400),
    ("CART-B", 400),
    ("CART-C", 400),
    ("CART-D", 400),
    ("CART-E", 400),
];

/// Every SKU with its initial stock for a run of `seconds`: the stock grows with the run,
/// so a long run keeps selling (and selling out) instead of answering 409 for most of it.
fn initial_stock(seconds: u64) -> BTreeMap<String, i64> {
    let scale = i64::try_from(seconds / 90).unwrap_or(1).max(1);
    HOT.iter()
        .chain(CART.iter())
        .map(|(sku, stock)| (sku.to_string(), stock * scale))
        .collect()
}

// ---------------------------------------------------------------------------------
// The history and the checker: plain data and pure functions.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum OpKind {
    Place { skus: Vec<String>, token: String },
    Cancel { order: String },
    ReadOrder { order: String },
    ReadSku { sku: String },
}

/// One request and its answer; times in ms since the run started. `status` 0: no answer
/// (connection refused or reset, or the client's timeout).
#[derive(Debug, Clone)]
struct Op {
    client: usize,
    node: usize,
    kind: OpKind,
    start_ms: u64,
    end_ms: u64,
    status: u16,
    retry_after: bool,
    /// The order id a 201 answered.
    order: Option<String>,
    note: String,
}

impl Op {
    fn order_id(&self) -> Option<&str> {
        match &self.kind {
            OpKind::Cancel { order } | OpKind::ReadOrder { order } => Some(order),
            _ => self.order.as_deref(),
        }
    }
}

/// One fault the nemesis applied.
#[derive(Debug, Clone)]
struct FaultRecord {
    kind: &'static str,
    node: String,
    start_ms: u64,
    end_ms: u64,
    note: String,
}

#[derive(Debug, Clone, PartialEq)]
struct StoredOrder {
    status: String,
    lines: Vec<(String, i64)>,
}

#[derive(Debug, Clone, PartialEq)]
struct StoredSku {
    stock: i64,
    reserved: i64,
}

#[derive(Debug, Clone)]
struct GatewayCapture {
    order: String,
    refunds: i64,
}

/// One outbox row: its position, type, aggregate and the order it is about.
#[derive(Debug, Clone)]
struct OutboxRow {
    id: i64,
    event_type: String,
    aggregate: String,
    order: Option<String>,
}

/// What the store and the gateway hold at the end.
#[derive(Debug, Clone, Default)]
struct Final {
    initial: BTreeMap<String, i64>,
    orders: BTreeMap<String, StoredOrder>,
    skus: BTreeMap<String, StoredSku>,
    captures: Vec<GatewayCapture>,
    /// The store's refund rows: order → "status, N attempts".
    refunds: BTreeMap<String, String>,
    outbox: Vec<OutboxRow>,
    /// `emporium reconcile`'s INCONSISTENT lines (and its failure, if it failed).
    reconcile: Vec<String>,
    /// Nodes that exited without being told to.
    crashed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Violation {
    invariant: &'static str,
    detail: String,
    order: Option<String>,
}

fn violation(invariant: &'static str, detail: String, order: Option<&str>) -> Violation {
    Violation {
        invariant,
        detail,
        order: order.map(str::to_owned),
    }
}

/// Every invariant over the history and the final state.
fn check(history: &[Op], fin: &Final) -> Vec<Violation> {
    let mut found = check_answers(history);
    found.extend(check_orders(history, fin));
    found.extend(check_stock(fin));
    found.extend(check_captures(fin));
    found.extend(check_outbox(fin));
    found.extend(
        fin.reconcile
            .iter()
            .map(|line| violation("reconcile", line.clone(), None)),
    );
    found.extend(
        fin.crashed
            .iter()
            .map(|node| violation("node-exited", format!("{node} exited by itself"), None)),
    );
    found
}

/// Only the answers the contract allows.
fn check_answers(history: &[Op]) -> Vec<Violation> {
    let mut found = Vec::new();
    for op in history {
        let allowed: &[u16] = match op.kind {
            OpKind::Place { .. } => &[0, 201, 409, 503, 408],
            OpKind::Cancel { .. } => &[0, 200, 409, 503, 408],
            OpKind::ReadOrder { .. } | OpKind::ReadSku { .. } => &[0, 200, 503, 408],
        };
        if !allowed.contains(&op.status) {
            found.push(violation(
                "answer",
                format!("{:?} at node {} answered {} {}", op.kind, op.node, op.status, op.note),
                op.order_id(),
            ));
        } else if op.status == 503 && !op.retry_after {
            found.push(violation(
                "answer",
                format!("{:?} at node {} answered 503 without Retry-After", op.kind, op.node),
                op.order_id(),
            ));
        }
    }
    found
}

fn is_final(status: &str) -> bool {
    status == "COMPLETED" || status == "CANCELLED"
}

/// Every acknowledged order is stored and finished; every stored order is finished; an
/// acknowledged cancel ends cancelled.
fn check_orders(history: &[Op], fin: &Final) -> Vec<Violation> {
    let mut found = Vec::new();
    for op in history {
        match (&op.kind, op.status, &op.order) {
            (OpKind::Place { .. }, 201, Some(id)) if !fin.orders.contains_key(id) => {
                found.push(violation(
                    "acknowledged-lost",
                    format!("201 order {id} is not stored"),
                    Some(id),
                ));
            }
            (OpKind::Place { .. }, 201, None) => {
                found.push(violation("answer", "201 without an order id".into(), None));
            }
            (OpKind::Cancel { order }, 200, _) => {
                if let Some(o) = fin.orders.get(order).filter(|o| o.status != "CANCELLED") {
                    found.push(violation(
                        "cancel-lost",
                        format!("cancel of {order} answered 200, the order ended {}", o.status),
                        Some(order),
                    ));
                }
            }
            _ => {}
        }
    }
    for (id, order) in &fin.orders {
        if !is_final(&order.status) {
            found.push(violation(
                "order-unfinished",
                format!(
                    "order {id} is {} after the reservation TTL + 2 lease TTLs",
                    order.status
                ),
                Some(id),
            ));
        }
    }
    found
}

/// Nothing oversold; stock matches the completed orders; no reservation left.
fn check_stock(fin: &Final) -> Vec<Violation> {
    let mut sold: BTreeMap<&str, i64> = BTreeMap::new();
    for order in fin.orders.values().filter(|o| o.status == "COMPLETED") {
        for (sku, qty) in &order.lines {
            *sold.entry(sku.as_str()).or_default() += qty;
        }
    }
    let mut found = Vec::new();
    for (sku, initial) in &fin.initial {
        let sold = sold.get(sku.as_str()).copied().unwrap_or(0);
        if sold > *initial {
            found.push(violation(
                "oversold",
                format!("{sku}: {sold} units in completed orders, initial stock {initial}"),
                None,
            ));
        }
        match fin.skus.get(sku) {
            None => found.push(violation("stock", format!("{sku} has no inventory row"), None)),
            Some(stored) => {
                if stored.stock != initial - sold {
                    found.push(violation(
                        "stock",
                        format!(
                            "{sku}: stock {} but initial {initial} − completed {sold} = {}",
                            stored.stock,
                            initial - sold
                        ),
                        None,
                    ));
                }
                if stored.reserved != 0 {
                    found.push(violation(
                        "stuck-reservation",
                        format!("{sku}: {} units still reserved", stored.reserved),
                        None,
                    ));
                }
            }
        }
    }
    found
}

/// Money: each capture is a completed order's or was given back once.
fn check_captures(fin: &Final) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut captured = BTreeSet::new();
    for c in &fin.captures {
        captured.insert(c.order.as_str());
        let status = fin.orders.get(&c.order).map(|o| o.status.as_str());
        match (status, c.refunds) {
            (Some("COMPLETED"), 0) => {}
            (Some("COMPLETED"), n) => found.push(violation(
                "capture",
                format!("completed order {} was refunded {n} time(s)", c.order),
                Some(&c.order),
            )),
            (_, 1) => {}
            (status, n) => found.push(violation(
                "capture-kept",
                format!(
                    "capture of order {} ({}) refunded {n} time(s); the store's refund: {}",
                    c.order,
                    status.unwrap_or("not stored"),
                    fin.refunds.get(&c.order).map_or("none", String::as_str)
                ),
                Some(&c.order),
            )),
        }
    }
    for (id, _) in fin.orders.iter().filter(|(_, o)| o.status == "COMPLETED") {
        if !captured.contains(id.as_str()) {
            found.push(violation(
                "capture",
                format!("completed order {id} has no capture at the gateway"),
                Some(id),
            ));
        }
    }
    found
}

/// The outbox holds each order's and each SKU's events, complete and in order.
fn check_outbox(fin: &Final) -> Vec<Violation> {
    // Per aggregate and order: the event types in outbox order.
    let mut by_order: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_sku_order: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    let mut rows: Vec<&OutboxRow> = fin.outbox.iter().collect();
    rows.sort_by_key(|r| r.id);
    for row in rows {
        let Some(order) = row.order.as_deref() else {
            continue;
        };
        if row.event_type.starts_with("inventory_") {
            by_sku_order
                .entry((row.aggregate.as_str(), order))
                .or_default()
                .push(&row.event_type);
        } else if row.aggregate == order {
            by_order.entry(order).or_default().push(&row.event_type);
        }
    }
    let mut found = Vec::new();
    for (id, order) in &fin.orders {
        if !is_final(&order.status) {
            continue; // reported as unfinished
        }
        let events = by_order.get(id.as_str()).cloned().unwrap_or_default();
        let terminal = if order.status == "COMPLETED" {
            "order_completed"
        } else {
            "order_cancelled"
        };
        let order_events: Vec<&str> = events.iter().copied().filter(|e| e.starts_with("order_")).collect();
        if order_events != ["order_created", terminal] {
            found.push(violation(
                "events",
                format!("order {id} ({}) has order events {order_events:?}", order.status),
                Some(id),
            ));
        }
        let settled = if order.status == "COMPLETED" {
            "inventory_confirmed"
        } else {
            "inventory_released"
        };
        for (sku, _) in &order.lines {
            let events = by_sku_order
                .get(&(sku.as_str(), id.as_str()))
                .cloned()
                .unwrap_or_default();
            if events != ["inventory_reserved", settled] {
                found.push(violation(
                    "events",
                    format!("{sku} of order {id} ({}) has events {events:?}", order.status),
                    Some(id),
                ));
            }
        }
    }
    found
}

/// The ops of the history that concern `order`, and the faults overlapping them.
fn context_of<'a>(history: &'a [Op], faults: &'a [FaultRecord], order: &str) -> (Vec<&'a Op>, Vec<&'a FaultRecord>) {
    let ops: Vec<&Op> = history.iter().filter(|op| op.order_id() == Some(order)).collect();
    let (from, to) = ops
        .iter()
        .fold((u64::MAX, 0), |(a, b), op| (a.min(op.start_ms), b.max(op.end_ms)));
    let faults = faults
        .iter()
        .filter(|f| f.end_ms + 5_000 >= from && f.start_ms <= to + 5_000)
        .collect();
    (ops, faults)
}

// ---------------------------------------------------------------------------------
// The schedule.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill9 { down: Duration },
    Pause { for_: Duration },
    DbFreeze { for_: Duration },
    DbCut { for_: Duration },
    PeerCut { for_: Duration },
    PeerFreeze { for_: Duration },
    RollingRestart,
    JoinOrLeave,
}

impl Fault {
    fn name(self, nodes: usize) -> &'static str {
        match self {
            Self::Kill9 { .. } => "kill-9",
            Self::Pause { .. } => "sigstop",
            Self::DbFreeze { .. } => "db-freeze",
            Self::DbCut { .. } => "db-cut",
            Self::PeerCut { .. } => "peer-cut",
            Self::PeerFreeze { .. } => "peer-freeze",
            Self::RollingRestart => "rolling-restart",
            Self::JoinOrLeave if nodes <= 3 => "join",
            Self::JoinOrLeave => "leave",
        }
    }
}

/// `count` faults with their target (an index taken modulo the nodes then running) and
/// the pause after each, drawn from `seed`.
fn schedule(seed: u64, count: usize) -> Vec<(Fault, usize, Duration)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ttl = LEASE_TTL.as_millis() as u64;
    (0..count)
        .map(|_| {
            let long = Duration::from_millis(rng.random_range(ttl * 3 / 2..=ttl * 3));
            let fault = match rng.random_range(0..100) {
                0..=19 => Fault::Kill9 {
                    down: Duration::from_millis(rng.random_range(200..=ttl)),
                },
                20..=34 => Fault::Pause {
                    for_: Duration::from_millis(rng.random_range(ttl * 2..=ttl * 3)),
                },
                35..=49 => Fault::DbFreeze { for_: long },
                50..=59 => Fault::DbCut { for_: long },
                60..=69 => Fault::PeerCut { for_: long },
                70..=79 => Fault::PeerFreeze { for_: long },
                80..=89 => Fault::RollingRestart,
                _ => Fault::JoinOrLeave,
            };
            let target = rng.random_range(0..4);
            let gap = Duration::from_millis(rng.random_range(500..=2_500));
            (fault, target, gap)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The cluster under test.
// ---------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `mysql://user@host:port/db` with `host:port` replaced by `addr`.
fn via(store: &str, addr: SocketAddr) -> String {
    let (scheme_user, rest) = store.split_once('@').expect("store URL has user@host");
    let (_, db) = rest.split_once('/').expect("store URL names a database");
    format!("{scheme_user}@{addr}/{db}")
}

fn server_addr(store: &str) -> SocketAddr {
    let rest = store.split_once('@').expect("user@host").1;
    let host_port = rest.split_once('/').map_or(rest, |(h, _)| h);
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().expect("the test MariaDB's address is ip:port")
}

/// One node slot: a stable listen port behind its peer proxy, its own database proxy;
/// each (re)start is a new process with a new node id.
struct Node {
    name: String,
    generation: u32,
    port: u16,
    peer_proxy: Proxy,
    db_proxy: Proxy,
    process: Option<Process>,
    dir: std::path::PathBuf,
    store: String,
    gateway: String,
}

impl Node {
    async fn create(root: &std::path::Path, name: &str, store: &str, gateway: &str) -> Self {
        let port = free_port();
        let peer_proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap()).await;
        let db_proxy = Proxy::start(server_addr(store)).await;
        Self {
            name: name.to_owned(),
            generation: 0,
            port,
            peer_proxy,
            db_proxy,
            process: None,
            dir: {
                let dir = root.join(name);
                std::fs::create_dir_all(&dir).unwrap();
                dir
            },
            store: store.to_owned(),
            gateway: gateway.to_owned(),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn id(&self) -> String {
        format!("{}-g{}", self.name, self.generation)
    }

    fn start(&mut self) {
        self.generation += 1;
        let store = via(&self.store, self.db_proxy.addr);
        let advertise = format!("http://{}", self.peer_proxy.addr);
        let (ttl, shards, res_ttl) = (
            LEASE_TTL.as_millis().to_string(),
            SHARDS.to_string(),
            RESERVATION_TTL.as_secs().to_string(),
        );
        let id = self.id();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let level = std::env::var("NEMESIS_LOG").unwrap_or("warn".into());
        let env = [
            ("EMPORIUM__STORE__URL", store.as_str()),
            ("EMPORIUM__CLUSTER__ENABLED", "true"),
            ("EMPORIUM__CLUSTER__NODE_ID", &id),
            ("EMPORIUM__CLUSTER__ADVERTISE_URL", &advertise),
            ("EMPORIUM__CLUSTER__SHARDS", &shards),
            ("EMPORIUM__CLUSTER__LEASE_TTL_MS", &ttl),
            ("EMPORIUM__INVENTORY__RESERVATION_TTL_SECS", &res_ttl),
            ("EMPORIUM__AUTH__JWT_SECRET", SECRET),
            ("EMPORIUM__PAYMENT__GATEWAY_URL", &self.gateway),
            ("EMPORIUM__PAYMENT__BACKOFF_BASE_MS", "50"),
            ("EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC", "0"),
            ("EMPORIUM__STORE__MAX_CONNECTIONS", "4"),
            ("EMPORIUM__SERVER__WORKERS", "2"),
            ("EMPORIUM__TELEMETRY__LOG_LEVEL", &level),
        ];
        let listen = format!("127.0.0.1:{}", self.port);
        let dir = self.dir.clone();
        self.process = Some(tokio::task::block_in_place(|| {
            Process::serve_on(&dir, &listen, &env, Stdio::from(log))
        }));
    }

    fn pid(&self) -> Option<String> {
        self.process.as_ref().map(|p| p.child.id().to_string())
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args([signal, &pid]).status();
        }
    }

    fn kill_9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM and wait (a drain and hand-over) up to 30 s, then SIGKILL.
    async fn stop(&mut self) -> String {
        let Some(mut p) = self.process.take() else {
            return String::new();
        };
        self.signal_pid(&p, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                return String::new();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        "did not stop within 30 s of SIGTERM; killed".into()
    }

    fn signal_pid(&self, p: &Process, signal: &str) {
        let _ = Command::new("kill").args([signal, &p.child.id().to_string()]).status();
    }

    /// Whether the process exited (without being told to).
    fn exited(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(Some(_))))
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill_9();
    }
}

/// Waits up to `within` for `/health/ready`; whether it came.
async fn ready(client: &reqwest::Client, base: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let r = client.get(format!("{base}/health/ready")).send().await;
        if r.map(|r| r.status() == StatusCode::OK).unwrap_or(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ---------------------------------------------------------------------------------
// The clients.
// ---------------------------------------------------------------------------------

struct Shared {
    bases: RwLock<Vec<String>>,
    history: Mutex<Vec<Op>>,
    stop: AtomicBool,
    t0: Instant,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }
}

/// Sends one request; records it.
async fn send(shared: &Shared, client: usize, node: usize, kind: OpKind, request: reqwest::RequestBuilder) -> Op {
    let start_ms = shared.ms();
    let (status, retry_after, body, note) = match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let text = r.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let note = if status >= 400 {
                text.chars().take(200).collect()
            } else {
                String::new()
            };
            (status, retry_after, body, note)
        }
        Err(e) => (0, false, Value::Null, format!("no answer: {e}")),
    };
    let order = match (&kind, status) {
        (OpKind::Place { .. }, 201) => body["id"].as_str().map(str::to_owned),
        _ => None,
    };
    let op = Op {
        client,
        node,
        kind,
        start_ms,
        end_ms: shared.ms(),
        status,
        retry_after,
        order,
        note,
    };
    shared.history.lock().unwrap().push(op.clone());
    op
}

/// One client: a seeded mix of one-SKU orders on hot SKUs, two-SKU carts across shards,
/// cancels of its own orders, and reads.
async fn run_client(shared: Arc<Shared>, http: reqwest::Client, user: String, client: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut mine: Vec<String> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let bases = shared.bases.read().unwrap().clone();
        let node = rng.random_range(0..bases.len());
        let base = &bases[node];
        let roll = rng.random_range(0..100);
        let (kind, request) = if roll < 40 || (roll < 80 && mine.is_empty()) {
            let skus: Vec<String> = if roll < 25 {
                vec![HOT[rng.random_range(0..HOT.len())].0.to_owned()]
            } else {
                // Two SKUs on different shards: usually different owners.
                let a = CART[rng.random_range(0..CART.len())].0;
                let others: Vec<&str> = CART
                    .iter()
                    .map(|(s, _)| *s)
                    .filter(|b| {
                        emporium::domain::cluster::shard_of(b, SHARDS) != emporium::domain::cluster::shard_of(a, SHARDS)
                    })
                    .collect();
                let b = others[rng.random_range(0..others.len())];
                vec![a.to_owned(), b.to_owned()]
            };
            let token = match rng.random_range(0..10) {
                0..=6 => "test_ok",
                7..=8 => "test_slow",
                _ => "test_decline",
            };
            let items: Vec<Value> = skus.iter().map(|s| json!({"sku": s, "qty": 1})).collect();
            let request = http
                .post(format!("{base}/v1/orders"))
                .bearer_auth(&user)
                .json(&json!({"items": items, "payment": {"token": token}}));
            (
                OpKind::Place {
                    skus,
                    token: token.into(),
                },
                request,
            )
        } else if roll < 55 {
            // Mostly the newest orders: those still pending (slow payments).
            let pick = mine.len() - 1 - rng.random_range(0..mine.len().min(3));
            let order = mine[pick].clone();
            let request = http.post(format!("{base}/v1/orders/{order}/cancel")).bearer_auth(&user);
            (OpKind::Cancel { order }, request)
        } else if roll < 80 {
            let order = mine[rng.random_range(0..mine.len())].clone();
            let request = http.get(format!("{base}/v1/orders/{order}")).bearer_auth(&user);
            (OpKind::ReadOrder { order }, request)
        } else {
            let all: Vec<&str> = HOT.iter().chain(CART.iter()).map(|(s, _)| *s).collect();
            let sku = all[rng.random_range(0..all.len())].to_owned();
            let request = http.get(format!("{base}/v1/inventory/{sku}"));
            (OpKind::ReadSku { sku }, request)
        };
        let op = send(&shared, client, node, kind, request).await;
        if let Some(id) = op.order {
            mine.push(id);
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
    }
}

// ---------------------------------------------------------------------------------
// The final read.
// ---------------------------------------------------------------------------------

fn text(row: &sqlx::mysql::MySqlRow, column: &str) -> String {
    use sqlx::Row;
    // `_bin` collations read as bytes through the MySQL driver.
    match row.try_get::<String, _>(column) {
        Ok(s) => s,
        Err(_) => String::from_utf8(row.try_get::<Vec<u8>, _>(column).unwrap_or_default()).unwrap_or_default(),
    }
}

async fn unfinished(store: &str) -> i64 {
    count(
        store,
        "SELECT COUNT(*) AS n FROM orders WHERE status NOT IN ('COMPLETED', 'CANCELLED')",
    )
    .await
}

/// A `SELECT COUNT(*) AS n` on the store (-1 when it cannot be read).
async fn count(store: &str, sql: &str) -> i64 {
    use sqlx::{Connection, Row};
    let Ok(mut conn) = sqlx::MySqlConnection::connect(store).await else {
        return -1;
    };
    sqlx::query(sql)
        .fetch_one(&mut conn)
        .await
        .map(|r| r.get::<i64, _>("n"))
        .unwrap_or(-1)
}

async fn read_final(store: &str, gateway: &str, http: &reqwest::Client, initial: BTreeMap<String, i64>) -> Final {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::MySqlConnection::connect(store).await.unwrap();
    let mut fin = Final {
        initial,
        ..Final::default()
    };
    for row in sqlx::query("SELECT id, status FROM orders")
        .fetch_all(&mut conn)
        .await
        .unwrap()
    {
        fin.orders.insert(
            text(&row, "id"),
            StoredOrder {
                status: text(&row, "status"),
                lines: Vec::new(),
            },
        );
    }
    for row in sqlx::query("SELECT order_id, sku, qty FROM order_items ORDER BY order_id, line")
        .fetch_all(&mut conn)
        .await
        .unwrap()
    {
        if let Some(order) = fin.orders.get_mut(&text(&row, "order_id")) {
            order.lines.push((text(&row, "sku"), row.get("qty")));
        }
    }
    for row in sqlx::query("SELECT sku, stock, reserved FROM inventory")
        .fetch_all(&mut conn)
        .await
        .unwrap()
    {
        fin.skus.insert(
            text(&row, "sku"),
            StoredSku {
                stock: row.get("stock"),
                reserved: row.get("reserved"),
            },
        );
    }
    for row in sqlx::query("SELECT order_id, status, attempts FROM refunds")
        .fetch_all(&mut conn)
        .await
        .unwrap()
    {
        let attempts: i64 = row.get("attempts");
        fin.refunds.insert(
            text(&row, "order_id"),
            format!("{}, {attempts} attempts", text(&row, "status")),
        );
    }
    // A row holds one transaction's events in order: an event's position in the
    // flattened list is its place in the outbox.
    for (position, (_, event)) in common::outbox_events(store).await.into_iter().enumerate() {
        fin.outbox.push(OutboxRow {
            id: position as i64,
            event_type: event["type"].as_str().unwrap_or_default().to_owned(),
            aggregate: event["aggregate_id"].as_str().unwrap_or_default().to_owned(),
            order: event["data"]["order_id"].as_str().map(str::to_owned),
        });
    }
    let captures: Value = http
        .get(format!("{gateway}/captures"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fin.captures = captures
        .as_array()
        .unwrap()
        .iter()
        .map(|c| GatewayCapture {
            order: c["order_id"].as_str().unwrap().to_owned(),
            refunds: c["refunds"].as_i64().unwrap(),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let reconcile = Command::new(bin())
        .args(["reconcile", "--data-dir"])
        .arg(dir.path())
        .env("EMPORIUM__STORE__URL", store)
        .env("EMPORIUM__TELEMETRY__LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&reconcile.stdout).to_string();
    fin.reconcile = said
        .lines()
        .filter(|l| l.starts_with("INCONSISTENT"))
        .map(str::to_owned)
        .collect();
    if !reconcile.status.success() && fin.reconcile.is_empty() {
        fin.reconcile.push(format!(
            "reconcile failed: {said}{}",
            String::from_utf8_lossy(&reconcile.stderr)
        ));
    }
    fin
}

// ---------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn create_products(http: &reqwest::Client, base: &str, admin: &str, stock: &BTreeMap<String, i64>) {
    for (i, (sku, stock)) in stock.iter().enumerate() {
        let r = http
            .post(format!("{base}/v1/products"))
            .bearer_auth(admin)
            .json(
                &json!({"name": format!("nemesis {i}"), "price": {"amount": 10 + i as i64, "currency": "KRW"},
                "variants": [{"sku": sku, "stock": stock}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    }
}

/// Applies one fault to `nodes` (a fourth slot is used for joins); returns a note.
async fn apply(
    fault: Fault,
    target: usize,
    nodes: &mut Vec<Node>,
    shared: &Shared,
    http: &reqwest::Client,
) -> (String, String) {
    let running = nodes.iter().filter(|n| n.process.is_some()).count();
    let i = target % running.max(1);
    let node_name = nodes[i].id();
    let mut note = String::new();
    match fault {
        Fault::Kill9 { down } => {
            nodes[i].kill_9();
            tokio::time::sleep(down).await;
            nodes[i].start();
            if !ready(http, &nodes[i].base(), Duration::from_secs(20)).await {
                note = "not ready 20 s after its restart".into();
            }
        }
        Fault::Pause { for_ } => {
            nodes[i].signal("-STOP");
            tokio::time::sleep(for_).await;
            nodes[i].signal("-CONT");
        }
        Fault::DbFreeze { for_ } => {
            nodes[i].db_proxy.freeze();
            tokio::time::sleep(for_).await;
            nodes[i].db_proxy.restore();
        }
        Fault::DbCut { for_ } => {
            nodes[i].db_proxy.cut();
            tokio::time::sleep(for_).await;
            nodes[i].db_proxy.restore();
        }
        Fault::PeerCut { for_ } => {
            nodes[i].peer_proxy.cut();
            tokio::time::sleep(for_).await;
            nodes[i].peer_proxy.restore();
        }
        Fault::PeerFreeze { for_ } => {
            nodes[i].peer_proxy.freeze();
            tokio::time::sleep(for_).await;
            nodes[i].peer_proxy.restore();
        }
        Fault::RollingRestart => {
            let mut notes = Vec::new();
            for node in nodes.iter_mut().filter(|n| n.process.is_some()) {
                let said = node.stop().await;
                if !said.is_empty() {
                    notes.push(format!("{}: {said}", node.id()));
                }
                node.start();
                if !ready(http, &node.base(), Duration::from_secs(20)).await {
                    notes.push(format!("{} not ready 20 s after its restart", node.id()));
                }
            }
            note = notes.join("; ");
            return ("all".into(), note);
        }
        Fault::JoinOrLeave => {
            if running <= 3 {
                if nodes.len() < 4 {
                    let (store, gateway) = (nodes[0].store.clone(), nodes[0].gateway.clone());
                    let root = nodes[0].dir.parent().unwrap().to_owned();
                    nodes.push(Node::create(&root, "node-d", &store, &gateway).await);
                }
                nodes[3].start();
                shared.bases.write().unwrap().push(nodes[3].base());
                if !ready(http, &nodes[3].base(), Duration::from_secs(20)).await {
                    note = "the new node was not ready within 20 s".into();
                }
                return (nodes[3].id(), note);
            }
            shared.bases.write().unwrap().pop();
            let name = nodes[3].id();
            note = nodes[3].stop().await;
            return (name, note);
        }
    }
    (node_name, note)
}

async fn run(faults: usize, seconds: u64) {
    let _serial = common::process::serial().await;
    let seed = std::env::var("NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("NEMESIS_SEED={seed} NEMESIS_FAULTS={faults} NEMESIS_SECONDS={seconds}");
    let Some(backend) = common::Backend::mysql().await else {
        return;
    };
    let store = backend.store_url().await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    // Node logs, the gateway's store and log: kept when the run fails.
    let root = tempfile::Builder::new().prefix("nemesis-").tempdir().unwrap();
    let gateway = Gateway::start(root.path(), GATEWAY_SLOW);
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b", "node-c"] {
        let mut node = Node::create(root.path(), name, &store, &gateway.base).await;
        node.start();
        nodes.push(node);
    }
    for node in &nodes {
        assert!(
            ready(&http, &node.base(), Duration::from_secs(30)).await,
            "{} not ready",
            node.id()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [("EMPORIUM__AUTH__JWT_SECRET", SECRET)];
    let admin = process::token(dir.path(), &env, "admin", true);
    let user = process::token(dir.path(), &env, "buyer", false);
    let stock = initial_stock(seconds);
    create_products(&http, &nodes[0].base(), &admin, &stock).await;

    let shared = Arc::new(Shared {
        bases: RwLock::new(nodes.iter().map(Node::base).collect()),
        history: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        t0: Instant::now(),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(run_client(shared.clone(), http.clone(), user.clone(), c, seed)))
        .collect();

    // The nemesis: one fault at a time, spread over `seconds`.
    let plan = schedule(seed, faults);
    let slot = Duration::from_secs(seconds) / (faults.max(1) as u32);
    let mut applied: Vec<FaultRecord> = Vec::new();
    for (n, (fault, target, gap)) in plan.into_iter().enumerate() {
        let due = shared.t0 + slot * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let running = nodes.iter().filter(|n| n.process.is_some()).count();
        let kind = fault.name(running);
        let start_ms = shared.ms();
        let (node, note) = apply(fault, target, &mut nodes, &shared, &http).await;
        let record = FaultRecord {
            kind,
            node,
            start_ms,
            end_ms: shared.ms(),
            note,
        };
        eprintln!(
            "fault {n}: {} on {} {}..{} ms {}",
            record.kind, record.node, record.start_ms, record.end_ms, record.note
        );
        applied.push(record);
        tokio::time::sleep(gap).await;
    }
    let end = shared.t0 + Duration::from_secs(seconds);
    if let Some(wait) = end.checked_duration_since(Instant::now()) {
        tokio::time::sleep(wait).await;
    }
    shared.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    // Healed: every proxy open, every node running.
    for node in &nodes {
        node.db_proxy.restore();
        node.peer_proxy.restore();
        node.signal("-CONT");
    }
    let healed_ms = shared.ms();
    let deadline = Instant::now() + RESERVATION_TTL + LEASE_TTL * 2;
    while Instant::now() < deadline && unfinished(&store).await != 0 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Refunds run after the order is final, one at a time on the leader (a slow one
    // takes the gateway's slow_ms): wait until none is left requested, bounded by the
    // backlog.
    let backlog = count(&store, "SELECT COUNT(*) AS n FROM refunds WHERE status = 'requested'").await;
    let drain = Duration::from_secs(10) + GATEWAY_SLOW * 2 * u32::try_from(backlog.max(0)).unwrap_or(0);
    let drained = Instant::now();
    let deadline = drained + drain.min(Duration::from_secs(120));
    while Instant::now() < deadline
        && count(&store, "SELECT COUNT(*) AS n FROM refunds WHERE status = 'requested'").await != 0
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "{backlog} refunds were pending after the orders settled; drained in {:?}",
        drained.elapsed()
    );
    let settled_ms = shared.ms();
    let mut crashed = Vec::new();
    for node in nodes.iter_mut() {
        if node.exited() {
            crashed.push(node.id());
        }
    }
    let mut fin = read_final(&store, &gateway.base, &http, stock).await;
    fin.crashed = crashed;
    let history = shared.history.lock().unwrap().clone();
    let violations = check(&history, &fin);

    // The report.
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &applied {
        *by_kind.entry(f.kind).or_default() += 1;
    }
    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for op in &history {
        let kind = match op.kind {
            OpKind::Place { .. } => "place",
            OpKind::Cancel { .. } => "cancel",
            OpKind::ReadOrder { .. } => "read-order",
            OpKind::ReadSku { .. } => "read-sku",
        };
        *statuses.entry((kind, op.status)).or_default() += 1;
    }
    let acknowledged = history
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Place { .. }) && op.status == 201)
        .count();
    let completed = fin.orders.values().filter(|o| o.status == "COMPLETED").count();
    let mut by_invariant: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &violations {
        *by_invariant.entry(v.invariant).or_default() += 1;
    }
    eprintln!(
        "NEMESIS seed {seed}: faults {by_kind:?}; {} requests, {} orders stored, {acknowledged} acknowledged (201), \
         {completed} completed, {} captures; healed at {healed_ms} ms, settled at {settled_ms} ms",
        history.len(),
        fin.orders.len(),
        fin.captures.len()
    );
    eprintln!("answers: {statuses:?}");
    let mut refunds: BTreeMap<&str, usize> = BTreeMap::new();
    for refund in fin.refunds.values() {
        *refunds.entry(refund.split(',').next().unwrap_or("")).or_default() += 1;
    }
    eprintln!("refunds by status: {refunds:?}");
    eprintln!("violations by invariant: {by_invariant:?}");
    if !violations.is_empty() {
        for f in &applied {
            eprintln!(
                "  fault {} on {} {}..{} ms {}",
                f.kind, f.node, f.start_ms, f.end_ms, f.note
            );
        }
        // Up to 10 of each invariant, the history of the first 3 orders of each.
        let mut per_invariant: BTreeMap<&str, usize> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for v in &violations {
            let n = per_invariant.entry(v.invariant).or_default();
            *n += 1;
            if *n > 10 {
                continue;
            }
            eprintln!("VIOLATION [{}] {}", v.invariant, v.detail);
            let Some(order) = v.order.as_deref() else {
                continue;
            };
            if *n > 3 || !seen.insert(order.to_owned()) {
                continue;
            }
            let (ops, faults) = context_of(&history, &applied, order);
            for op in ops {
                eprintln!(
                    "    {}..{} ms client {} node {} {:?} -> {} {} {}",
                    op.start_ms,
                    op.end_ms,
                    op.client,
                    op.node,
                    op.kind,
                    op.status,
                    op.order.as_deref().unwrap_or(""),
                    op.note
                );
            }
            for f in faults {
                eprintln!(
                    "    during fault {} on {} {}..{} ms",
                    f.kind, f.node, f.start_ms, f.end_ms
                );
            }
        }
        for node in &nodes {
            eprintln!("--- last log lines of {} ---\n{}", node.id(), node.log_tail(15));
        }
    }
    drop(nodes);
    drop(gateway);
    if violations.is_empty() {
        common::drop_database(&store).await;
    } else {
        let mut lines: Vec<String> = applied
            .iter()
            .map(|f| {
                format!(
                    "{}..{} ms FAULT {} on {} {}",
                    f.start_ms, f.end_ms, f.kind, f.node, f.note
                )
            })
            .collect();
        lines.extend(history.iter().map(|op| {
            format!(
                "{}..{} ms client {} node {} {:?} -> {} {} {}",
                op.start_ms,
                op.end_ms,
                op.client,
                op.node,
                op.kind,
                op.status,
                op.order.as_deref().unwrap_or(""),
                op.note
            )
        }));
        lines.sort_by_key(|l| l.split("..").next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0));
        let _ = std::fs::write(root.path().join("history.txt"), lines.join("\n"));
        eprintln!(
            "kept for inspection: the database {store}; the history, node logs and the gateway's store in {}",
            root.keep().display()
        );
    }
    assert!(
        violations.is_empty(),
        "NEMESIS_SEED={seed}: {} violations: {by_invariant:?}",
        violations.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nemesis_short() {
    run(env_or("NEMESIS_FAULTS", 10) as usize, env_or("NEMESIS_SECONDS", 90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long mode: 200 faults over 20 minutes; run by hand (see the top of the file)"]
async fn long() {
    run(env_or("NEMESIS_FAULTS", 200) as usize, env_or("NEMESIS_SECONDS", 1200)).await;
}

// ---------------------------------------------------------------------------------
// The checker's own tests.
// ---------------------------------------------------------------------------------

fn op(kind: OpKind, status: u16, order: Option<&str>) -> Op {
    Op {
        client: 0,
        node: 0,
        kind,
        start_ms: 0,
        end_ms: 1,
        status,
        retry_after: status == 503,
        order: order.map(str::to_owned),
        note: String::new(),
    }
}

fn place(sku: &str) -> OpKind {
    OpKind::Place {
        skus: vec![sku.into()],
        token: "test_ok".into(),
    }
}

fn row(id: i64, event_type: &str, aggregate: &str, order: &str) -> OutboxRow {
    OutboxRow {
        id,
        event_type: event_type.into(),
        aggregate: aggregate.into(),
        order: Some(order.into()),
    }
}

/// Two orders of X (stock 2): o1 completed, o2 cancelled and refunded; all consistent.
fn clean() -> (Vec<Op>, Final) {
    let history = vec![
        op(place("X"), 201, Some("o1")),
        op(place("X"), 201, Some("o2")),
        op(OpKind::Cancel { order: "o2".into() }, 200, None),
        op(place("X"), 409, None),
        op(OpKind::ReadSku { sku: "X".into() }, 503, None),
    ];
    let stored = |status: &str| StoredOrder {
        status: status.into(),
        lines: vec![("X".into(), 1)],
    };
    let fin = Final {
        initial: [("X".to_string(), 2)].into(),
        orders: [
            ("o1".to_string(), stored("COMPLETED")),
            ("o2".to_string(), stored("CANCELLED")),
        ]
        .into(),
        skus: [("X".to_string(), StoredSku { stock: 1, reserved: 0 })].into(),
        captures: vec![
            GatewayCapture {
                order: "o1".into(),
                refunds: 0,
            },
            GatewayCapture {
                order: "o2".into(),
                refunds: 1,
            },
        ],
        outbox: vec![
            row(1, "order_created", "o1", "o1"),
            row(2, "inventory_reserved", "X", "o1"),
            row(3, "order_created", "o2", "o2"),
            row(4, "inventory_reserved", "X", "o2"),
            row(5, "payment_succeeded", "o1", "o1"),
            row(6, "inventory_confirmed", "X", "o1"),
            row(7, "order_completed", "o1", "o1"),
            row(8, "inventory_released", "X", "o2"),
            row(9, "order_cancelled", "o2", "o2"),
        ],
        ..Final::default()
    };
    (history, fin)
}

fn invariants(found: &[Violation]) -> Vec<&'static str> {
    found.iter().map(|v| v.invariant).collect()
}

#[test]
fn checker_a_consistent_run_has_no_violation() {
    let (history, fin) = clean();
    assert_eq!(check(&history, &fin), vec![]);
}

#[test]
fn checker_finds_unexpected_answers_and_a_503_without_retry_after() {
    let (mut history, fin) = clean();
    history.push(op(place("X"), 500, None));
    let mut no_retry = op(place("X"), 503, None);
    no_retry.retry_after = false;
    history.push(no_retry);
    history.push(op(OpKind::ReadOrder { order: "o1".into() }, 404, None));
    assert_eq!(invariants(&check(&history, &fin)), ["answer", "answer", "answer"]);
}

#[test]
fn checker_finds_a_lost_acknowledged_order_and_a_lost_cancel() {
    let (mut history, mut fin) = clean();
    history.push(op(place("X"), 201, Some("o9")));
    history.push(op(OpKind::Cancel { order: "o1".into() }, 200, None));
    fin.outbox.retain(|r| r.order.as_deref() != Some("o9"));
    let found = check(&history, &fin);
    assert_eq!(invariants(&found), ["acknowledged-lost", "cancel-lost"]);
    assert_eq!(found[0].order.as_deref(), Some("o9"));
}

#[test]
fn checker_finds_oversell_stock_drift_and_stuck_reservations() {
    let (_, mut fin) = clean();
    fin.orders.get_mut("o2").unwrap().status = "COMPLETED".into();
    fin.initial.insert("X".into(), 1);
    fin.skus.insert("X".into(), StoredSku { stock: 0, reserved: 1 });
    let found = check_stock(&fin);
    assert_eq!(invariants(&found), ["oversold", "stock", "stuck-reservation"]);
}

#[test]
fn checker_finds_an_unfinished_order() {
    let (history, mut fin) = clean();
    fin.orders.get_mut("o2").unwrap().status = "PENDING_PAYMENT".into();
    let found = check_orders(&history, &fin);
    assert_eq!(invariants(&found), ["cancel-lost", "order-unfinished"]);
}

#[test]
fn checker_finds_kept_captures_refunded_completions_and_free_orders() {
    let (_, mut fin) = clean();
    fin.captures[1].refunds = 0; // cancelled, charged, never refunded
    fin.captures.push(GatewayCapture {
        order: "ghost".into(),
        refunds: 0,
    });
    assert_eq!(invariants(&check_captures(&fin)), ["capture-kept", "capture-kept"]);
    fin.captures[0].refunds = 1; // completed and refunded
    fin.captures.retain(|c| c.order != "ghost");
    assert_eq!(invariants(&check_captures(&fin)), ["capture", "capture-kept"]);
    fin.captures.remove(0); // completed without a capture
    assert_eq!(invariants(&check_captures(&fin)), ["capture-kept", "capture"]);
}

#[test]
fn checker_finds_missing_and_misordered_events() {
    let (_, mut fin) = clean();
    fin.outbox.retain(|r| r.event_type != "inventory_confirmed");
    assert_eq!(invariants(&check_outbox(&fin)), ["events"]);
    let (_, mut fin) = clean();
    // o2's release before its reservation.
    fin.outbox[3].id = 10;
    assert_eq!(invariants(&check_outbox(&fin)), ["events"]);
    let (_, mut fin) = clean();
    fin.outbox.push(row(11, "order_completed", "o1", "o1"));
    assert_eq!(invariants(&check_outbox(&fin)), ["events"]);
}

#[test]
fn checker_reports_reconcile_and_crashed_nodes() {
    let (history, mut fin) = clean();
    fin.reconcile.push("INCONSISTENT X".into());
    fin.crashed.push("node-a-g1".into());
    assert_eq!(invariants(&check(&history, &fin)), ["reconcile", "node-exited"]);
}

#[test]
fn the_schedule_is_a_function_of_the_seed() {
    assert_eq!(schedule(7, 50), schedule(7, 50));
    assert_ne!(schedule(7, 50), schedule(8, 50));
    let kinds: BTreeSet<&str> = schedule(1, 400).iter().map(|(f, _, _)| f.name(3)).collect();
    assert_eq!(kinds.len(), 8, "every kind of fault is drawn: {kinds:?}");
}

#[test]
fn store_urls_are_rewritten_to_the_proxy() {
    let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    assert_eq!(
        via("mysql://root@127.0.0.1:3306/emporium_t_x", addr),
        "mysql://root@127.0.0.1:4000/emporium_t_x"
    );
    assert_eq!(
        server_addr("mysql://root@127.0.0.1:3306/emporium_t_x"),
        "127.0.0.1:3306".parse().unwrap()
    );
}

#[test]
fn stock_grows_with_the_length_of_a_run() {
    assert_eq!(initial_stock(90)["HOT-1"], 150);
    assert_eq!(initial_stock(30)["CART-A"], 400);
    assert_eq!(initial_stock(1200)["HOT-1"], 150 * 13);
}
