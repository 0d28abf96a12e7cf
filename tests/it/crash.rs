//! Crash recovery: the real `emporium` binary is killed with SIGKILL while orders
//! are being accepted, then restarted on the same data dir. Every order that got a
//! 201 must be there, nothing may hold stock without an order, and the inventory must
//! equal what the orders say (checked by `emporium reconcile`).

use crate::common;

use common::process::{self, all_orders, assert_reconciles, wait_ready, Process};
use common::Backend;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

on_every_backend!(
    kill_9_during_orders_loses_no_acknowledged_order,
    expiries_due_during_downtime_are_swept_at_start,
    kill_9_between_accept_and_settle_at_many_points,
    a_refund_in_flight_at_kill_9_is_finished_once_after_restart,
    a_payment_captured_before_a_crash_is_refunded_when_the_order_expires_at_restart
);

/// The crash suites' server: one user places every order (the rate limits are tested in
/// access_control.rs) and payment retries are fast.
fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Process {
    let mut env = env.to_vec();
    env.push(("EMPORIUM__PAYMENT__BACKOFF_BASE_MS", "10"));
    env.push(("EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC", "0"));
    Process::serve(data_dir, &env)
}

/// How long a (re)started server may take to recover and become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

fn start(data_dir: &Path, store: &[(&str, &str)]) -> Process {
    start_with(data_dir, store)
}

/// The store of a backend as environment for the binary, and its URL to drop afterwards.
async fn store_env(backend: &Backend) -> Option<String> {
    backend.store_url().await
}

fn token(data_dir: &Path, sub: &str, admin: bool) -> String {
    process::token(data_dir, &[], sub, admin)
}

/// The store of a dead server, opened directly (SQLite read-only).
async fn open_store(data_dir: &Path, url: Option<&str>) -> sqlx::AnyConnection {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&store_url(data_dir, url))
        .await
        .expect("store opens")
}

/// The store's URL: `url` (MariaDB), or the data dir's SQLite file, read-only.
fn store_url(data_dir: &Path, url: Option<&str>) -> String {
    match url {
        Some(url) => url.to_owned(),
        None => format!("sqlite:{}?mode=ro", data_dir.join("emporium.db").display()),
    }
}

/// Creates a product with one SKU of `stock` units.
async fn create_product(client: &reqwest::Client, base: &str, admin: &str, sku: &str, stock: i64) {
    let r = client
        .post(format!("{base}/v1/products"))
        .bearer_auth(admin)
        .json(&json!({"name": sku.to_lowercase(), "price": {"amount": 10, "currency": "KRW"}, "variants": [{"sku": sku, "stock": stock}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn kill_9_during_orders_loses_no_acknowledged_order(backend: Backend) {
    let _serial = common::process::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let url = store_env(&backend).await;
    let store: Vec<(&str, &str)> = url.iter().map(|u| ("EMPORIUM__STORE__URL", u.as_str())).collect();
    let mut server = start(dir.path(), &store);
    let client = reqwest::Client::new();
    wait_ready(&client, &server.base, READY_WITHIN).await;
    let admin = token(dir.path(), "admin", true);
    let user = token(dir.path(), "crash-buyer", false);
    let stock = 400;
    create_product(&client, &server.base, &admin, "CRASH", stock).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (client, base, user) = (client.clone(), server.base.clone(), user.clone());
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let sent = client
                        .post(format!("{base}/v1/orders"))
                        .bearer_auth(&user)
                        .json(&json!({"items": [{"sku": "CRASH", "qty": 1}]}))
                        .send()
                        .await;
                    let Ok(response) = sent else { return };
                    if response.status() == StatusCode::CREATED {
                        if let Ok(body) = response.json::<Value>().await {
                            acknowledged
                                .lock()
                                .unwrap()
                                .push(body["id"].as_str().unwrap().to_owned());
                        }
                    }
                }
            })
        })
        .collect();
    // Kill while orders are flowing: after the first hundred acknowledgements.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "orders are not flowing");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 100);

    let mut server = start(dir.path(), &store);
    wait_ready(&client, &server.base, READY_WITHIN).await;
    for id in &acknowledged {
        let r = client
            .get(format!("{}/v1/orders/{id}", server.base))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged order {id} lost");
    }
    // Recovery resumes the sagas; wait until every order is final.
    let deadline = Instant::now() + Duration::from_secs(30);
    let orders = loop {
        let page: Value = client
            .get(format!("{}/v1/orders?limit=1000", server.base))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let orders = page["items"].as_array().unwrap().clone();
        if orders.iter().all(|o| o["status"] == "COMPLETED") {
            break orders;
        }
        assert!(Instant::now() < deadline, "sagas not resumed after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        orders.len() >= acknowledged.len(),
        "every stored order is a real one, at least the acknowledged"
    );
    let inventory: Value = client
        .get(format!("{}/v1/inventory/CRASH", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        inventory["stock"],
        stock - orders.len() as i64,
        "stock equals what the orders took"
    );
    assert_eq!(inventory["reserved"], 0);

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_reconciles(dir.path(), &store);
    if let Some(url) = &url {
        common::drop_database(url).await;
    }
}

/// Reservations that fell due while the server was down are released at start in a
/// coalesced sweep (shared group commits), not one commit per order.
async fn expiries_due_during_downtime_are_swept_at_start(backend: Backend) {
    let _serial = common::process::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let url = store_env(&backend).await;
    // The gateway hangs, so orders stay unpaid until their 1 s reservation expires.
    let mut env = vec![
        ("EMPORIUM__INVENTORY__RESERVATION_TTL_SECS", "1"),
        ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "60000"),
    ];
    env.extend(url.iter().map(|u| ("EMPORIUM__STORE__URL", u.as_str())));
    let mut server = start_with(dir.path(), &env);
    let client = reqwest::Client::new();
    wait_ready(&client, &server.base, READY_WITHIN).await;
    let admin = token(dir.path(), "admin", true);
    let user = token(dir.path(), "sleeper", false);
    create_product(&client, &server.base, &admin, "SWEEP", 100).await;
    let placing: Vec<_> = (0..60)
        .map(|_| {
            let (client, base, user) = (client.clone(), server.base.clone(), user.clone());
            tokio::spawn(async move {
                let body = json!({"items": [{"sku": "SWEEP", "qty": 1}], "payment": {"token": "test_down"}});
                client
                    .post(format!("{base}/v1/orders"))
                    .bearer_auth(&user)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for p in placing {
        assert_eq!(p.await.unwrap(), StatusCode::CREATED);
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await; // let every reservation fall due while down

    let mut server = start_with(dir.path(), &env);
    wait_ready(&client, &server.base, READY_WITHIN).await;
    let inventory: Value = client
        .get(format!("{}/v1/inventory/SWEEP", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (inventory["stock"].as_i64(), inventory["reserved"].as_i64()),
        (Some(100), Some(0)),
        "released by the sweep"
    );
    let page: Value = client
        .get(format!("{}/v1/orders?limit=100", server.base))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orders = page["items"].as_array().unwrap();
    assert_eq!(orders.len(), 60);
    assert!(orders
        .iter()
        .all(|o| o["status"] == "CANCELLED" && o["cancel_reason"] == "expired"));
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let commits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("emporium_write_behind_batch_size_count "))
        .and_then(|v| v.parse().ok())
        .expect("batch size histogram");
    assert!(commits < 60.0, "60 expiries took {commits} commits: not coalesced");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    if let Some(url) = &url {
        common::drop_database(url).await;
    }
}

/// How many orders the store holds between their two commits (accepted, not settled),
/// read straight from the database while the server is dead.
async fn between_commits(data_dir: &Path, url: Option<&str>) -> i64 {
    use sqlx::Row;
    let mut conn = open_store(data_dir, url).await;
    let row = sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE status = 'PENDING_PAYMENT'")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    row.try_get::<i64, _>("n").expect("n")
}

/// A happy order is two commits (accept, then settle = PAID+COMPLETED together). The
/// process is killed with SIGKILL again and again while orders are between the two (the
/// flaky token makes the saga retry the charge, so many orders sit accepted-unsettled at
/// any moment), each round at a different count of acknowledgements, with declines and
/// customer cancels in the mix. After the last restart every 201 is there, every order
/// ends COMPLETED or CANCELLED, nothing stays reserved, stock equals what the completed
/// orders took, and `emporium reconcile` is clean. The test also checks that kills did
/// land between the commits (orders found PENDING_PAYMENT in the store of a dead server).
async fn kill_9_between_accept_and_settle_at_many_points(backend: Backend) {
    let _serial = common::process::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let url = store_env(&backend).await;
    let store: Vec<(&str, &str)> = url.iter().map(|u| ("EMPORIUM__STORE__URL", u.as_str())).collect();
    // Every request bounded: a request caught by the SIGKILL must end (as an error)
    // rather than leave its client task, and so the round, waiting forever.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut server = start(dir.path(), &store);
    wait_ready(&client, &server.base, READY_WITHIN).await;
    let admin = token(dir.path(), "admin", true);
    let user = token(dir.path(), "settle-buyer", false);
    let stock: i64 = 100_000;
    create_product(&client, &server.base, &admin, "SETTLE", stock).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut caught_between = 0;
    // Kill points: acknowledgements in the round before SIGKILL, spread from "at once" to
    // "well into the run", so the kill meets the saga at different steps.
    let kill_after = [1usize, 3, 9, 20, 45, 80, 130, 7];
    for (round, &after) in kill_after.iter().enumerate() {
        if round > 0 {
            server = start(dir.path(), &store);
            wait_ready(&client, &server.base, READY_WITHIN).await;
        }
        let in_round = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let acked = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..24)
            .map(|c| {
                let (client, base, user) = (client.clone(), server.base.clone(), user.clone());
                let (acknowledged, stop, in_round) = (acknowledged.clone(), stop.clone(), in_round.clone());
                let acked = acked.clone();
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let payment = match (c + n) % 7 {
                            0 => "test_decline",
                            1 | 2 => "test_ok",
                            _ => "test_flaky",
                        };
                        let sent = client
                            .post(format!("{base}/v1/orders"))
                            .bearer_auth(&user)
                            .json(&json!({"items": [{"sku": "SETTLE", "qty": 1 + (n % 3) as i64}], "payment": {"token": payment}}))
                            .send()
                            .await;
                        let Ok(response) = sent else { return };
                        if response.status() != StatusCode::CREATED {
                            continue;
                        }
                        let Ok(body) = response.json::<Value>().await else { return };
                        let id = body["id"].as_str().unwrap().to_owned();
                        acknowledged.lock().unwrap().push(id.clone());
                        in_round.fetch_add(1, Ordering::SeqCst);
                        acked.notify_one();
                        if n % 5 == 0 {
                            // A customer cancel racing the payment: either may win, never both.
                            let _ = client
                                .post(format!("{base}/v1/orders/{id}/cancel"))
                                .bearer_auth(&user)
                                .send()
                                .await;
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while in_round.load(Ordering::SeqCst) < after {
            let woken = tokio::time::timeout_at(deadline.into(), acked.notified()).await;
            assert!(woken.is_ok(), "orders are not flowing in round {round}");
        }
        server.child.kill().expect("SIGKILL");
        server.child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            tokio::time::timeout(Duration::from_secs(30), c)
                .await
                .unwrap_or_else(|_| panic!("a client of round {round} is still waiting after the kill"))
                .unwrap();
        }
        caught_between += between_commits(dir.path(), url.as_deref()).await;
    }
    assert!(
        caught_between > 0,
        "no kill landed between an order's accept and its settle: the test did not test the shape"
    );

    let mut server = start(dir.path(), &store);
    wait_ready(&client, &server.base, READY_WITHIN).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let orders = loop {
        let orders = all_orders(&client, &server.base, &user).await;
        if orders
            .iter()
            .all(|o| o["status"] == "COMPLETED" || o["status"] == "CANCELLED")
        {
            break orders;
        }
        assert!(Instant::now() < deadline, "sagas not finished after the last restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stored: std::collections::HashSet<&str> = orders.iter().filter_map(|o| o["id"].as_str()).collect();
    for id in &acknowledged {
        assert!(stored.contains(id.as_str()), "acknowledged order {id} lost");
    }
    let sold: i64 = orders
        .iter()
        .filter(|o| o["status"] == "COMPLETED")
        .flat_map(|o| o["items"].as_array().unwrap().iter())
        .map(|i| i["qty"].as_i64().unwrap())
        .sum();
    assert!(
        orders.iter().any(|o| o["status"] == "COMPLETED") && orders.iter().any(|o| o["status"] == "CANCELLED"),
        "both outcomes occurred"
    );
    let inventory: Value = client
        .get(format!("{}/v1/inventory/SETTLE", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inventory["reserved"], 0, "no reservation leaks");
    assert_eq!(
        inventory["stock"],
        stock - sold,
        "stock equals what the completed orders took"
    );

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_reconciles(dir.path(), &store);
    eprintln!(
        "{} acknowledged over {} kills, {caught_between} found between accept and settle",
        acknowledged.len(),
        kill_after.len()
    );
    if let Some(url) = &url {
        common::drop_database(url).await;
    }
}

/// Rows of `refunds` by status and `payment_refunded` events of the order, read
/// straight from the database while the server is dead.
async fn refund_rows(data_dir: &Path, url: Option<&str>, order: &str) -> (Vec<String>, i64) {
    use sqlx::Row;
    let mut conn = open_store(data_dir, url).await;
    let statuses = sqlx::query("SELECT status FROM refunds WHERE order_id = ?")
        .bind(order.to_owned())
        .fetch_all(&mut conn)
        .await
        .expect("refunds")
        .iter()
        .map(|r| r.try_get::<String, _>("status").expect("status"))
        .collect();
    let events = common::outbox_count(&store_url(data_dir, url), "payment_refunded", order).await;
    (statuses, events)
}

/// Polls the order until its payment status is `want`.
async fn payment_becomes(client: &reqwest::Client, base: &str, user: &str, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = client
            .get(format!("{base}/v1/orders/{id}"))
            .bearer_auth(user)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["payment"]["status"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "payment never became {want}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A charge succeeds after the customer cancelled (`test_slow`), so a refund is owed;
/// the server is killed while the gateway is working on the refund (it takes
/// `payment.slow_ms` too). After the restart the refund is finished from the store:
/// refunded, with exactly one `payment_refunded` event, and the store reconciles.
async fn a_refund_in_flight_at_kill_9_is_finished_once_after_restart(backend: Backend) {
    let _serial = common::process::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let url = store_env(&backend).await;
    let mut env = vec![
        ("EMPORIUM__PAYMENT__SLOW_MS", "1500"),
        ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "10000"),
    ];
    env.extend(url.iter().map(|u| ("EMPORIUM__STORE__URL", u.as_str())));
    let mut server = start_with(dir.path(), &env);
    let client = reqwest::Client::new();
    wait_ready(&client, &server.base, READY_WITHIN).await;
    let admin = token(dir.path(), "admin", true);
    let user = token(dir.path(), "refund-buyer", false);
    create_product(&client, &server.base, &admin, "REFUND", 3).await;
    let placed: Value = client
        .post(format!("{}/v1/orders", server.base))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": "REFUND", "qty": 1}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = placed["id"].as_str().expect("order id").to_owned();
    let cancel = client
        .post(format!("{}/v1/orders/{id}/cancel", server.base))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);

    // The charge lands after ~1.5 s; the refund call then takes another 1.5 s.
    payment_becomes(&client, &server.base, &user, &id, "refund_pending").await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_eq!(
        refund_rows(dir.path(), url.as_deref(), &id).await,
        (vec!["requested".to_owned()], 0),
        "killed while the refund was at the gateway"
    );

    let mut server = start_with(dir.path(), &env);
    wait_ready(&client, &server.base, READY_WITHIN).await;
    payment_becomes(&client, &server.base, &user, &id, "refunded").await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_eq!(
        refund_rows(dir.path(), url.as_deref(), &id).await,
        (vec!["refunded".to_owned()], 1),
        "refunded once"
    );
    assert_reconciles(dir.path(), &env);
    if let Some(url) = &url {
        common::drop_database(url).await;
    }
}

/// Review finding F9: the gateway captured the payment and the process died before the
/// settle committed (failpoint `after_capture=abort`, as `kill -9` there). It restarts
/// after the order's reservation fell due, so recovery cancels the order as expired: the
/// money must go back. A refund keyed by the order id is requested and carried out, once;
/// the stock is whole again and the store reconciles.
async fn a_payment_captured_before_a_crash_is_refunded_when_the_order_expires_at_restart(backend: Backend) {
    let _serial = common::process::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let url = store_env(&backend).await;
    let mut env = vec![
        ("EMPORIUM__INVENTORY__RESERVATION_TTL_SECS", "2"),
        ("EMPORIUM__PAYMENT__SLOW_MS", "300"),
        ("EMPORIUM__PAYMENT__ATTEMPT_TIMEOUT_MS", "10000"),
    ];
    env.extend(url.iter().map(|u| ("EMPORIUM__STORE__URL", u.as_str())));
    let mut crashing = env.clone();
    crashing.push(("EMPORIUM_FAILPOINTS", "after_capture=abort"));
    let mut server = start_with(dir.path(), &crashing);
    let client = reqwest::Client::new();
    wait_ready(&client, &server.base, READY_WITHIN).await;
    let admin = token(dir.path(), "admin", true);
    let user = token(dir.path(), "captured-buyer", false);
    create_product(&client, &server.base, &admin, "CAPTURED", 3).await;
    // `test_slow`: the 201 leaves before the charge succeeds and the failpoint aborts.
    let placed: Value = client
        .post(format!("{}/v1/orders", server.base))
        .bearer_auth(&user)
        .json(&json!({"items": [{"sku": "CAPTURED", "qty": 1}], "payment": {"token": "test_slow"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let due = Instant::now() + Duration::from_secs(2);
    let id = placed["id"].as_str().expect("order id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop after the capture");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        between_commits(dir.path(), url.as_deref()).await,
        1,
        "captured, not settled"
    );
    assert_eq!(refund_rows(dir.path(), url.as_deref(), &id).await, (vec![], 0));
    // Down until the reservation fell due: recovery cancels the order as expired.
    tokio::time::sleep_until((due + Duration::from_millis(200)).into()).await;

    let mut server = start_with(dir.path(), &env);
    wait_ready(&client, &server.base, READY_WITHIN).await;
    payment_becomes(&client, &server.base, &user, &id, "refunded").await;
    let order: Value = client
        .get(format!("{}/v1/orders/{id}", server.base))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (order["status"].as_str(), order["cancel_reason"].as_str()),
        (Some("CANCELLED"), Some("expired"))
    );
    let inventory: Value = client
        .get(format!("{}/v1/inventory/CAPTURED", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (inventory["stock"].as_i64(), inventory["reserved"].as_i64()),
        (Some(3), Some(0))
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_eq!(
        refund_rows(dir.path(), url.as_deref(), &id).await,
        (vec!["refunded".to_owned()], 1),
        "refunded once"
    );
    assert_reconciles(dir.path(), &env);
    if let Some(url) = &url {
        common::drop_database(url).await;
    }
}
