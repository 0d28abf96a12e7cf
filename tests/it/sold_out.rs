//! The sold-out fast path (issue 18): an order that the SKU actors' published availability
//! already refuses is answered 409 on the HTTP worker. These tests hold it to the one rule
//! that makes that safe: it may only ever answer what the actors themselves would have
//! answered. Never selling is checked by the flash-sale invariants; never refusing what
//! could be sold is checked right after every change that makes units available again
//! (release, restock, forget), sequentially and under many concurrent clients.
//! Also: the live-actor cap keeps memory bounded under a flood of distinct SKUs without
//! changing any answer.

use crate::common;

on_every_strategy!(
    a_release_is_seen_by_the_very_next_order,
    a_restock_is_seen_by_the_very_next_order,
    multi_sku_orders_are_refused_on_the_line_the_actors_would_name,
    a_keyed_retry_replays_its_201_on_a_sold_out_sku,
    flood_with_concurrent_releases_and_restocks_sells_what_is_there,
);
on_every_backend!(
    live_actors_stay_under_the_cap_and_answers_do_not_change,
    refused_attempts_are_counted_as_sold_out,
);

use common::{Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Orders stay PENDING_PAYMENT (the gateway hangs on `test_down` far past the test), so
/// the test decides when their units come back.
async fn app_with_pending_payments(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |s| s.payment.attempt_timeout = Duration::from_millis(120_000)).await
}

fn pending_order(sku: &str, qty: i64) -> Value {
    json!({"items": [{"sku": sku, "qty": qty}], "payment": {"token": "test_down"}})
}

async fn cancel(app: &TestApp, token: &str, id: &str) -> StatusCode {
    app.client
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
        .status()
}

async fn set_stock(app: &TestApp, sku: &str, stock: i64) -> (StatusCode, Value) {
    let r = app
        .client
        .put(app.url(&format!("/v1/inventory/{sku}")))
        .bearer_auth(&app.admin)
        .json(&json!({ "stock": stock }))
        .send()
        .await
        .expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn assert_out_of_stock(status: StatusCode, body: &Value, sku: &str) {
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/out-of-stock", "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(&format!("{sku} is out of stock")),
        "names {sku}: {body}"
    );
}

/// Sold out, then a cancel releases the unit: the next order must get it. Repeated, so a
/// stale "sold out" left behind by any one release would show.
async fn a_release_is_seen_by_the_very_next_order(backend: Backend) {
    let app = app_with_pending_payments(backend).await;
    app.product(&[("ONE-LEFT", 1)]).await;
    let (buyer, other) = (app.token("buyer"), app.token("other"));
    for round in 0..30 {
        let (status, order) = app.order(&buyer, pending_order("ONE-LEFT", 1)).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "round {round}: the released unit is sold: {order}"
        );
        let (status, body) = app.order(&other, pending_order("ONE-LEFT", 1)).await;
        assert_out_of_stock(status, &body, "ONE-LEFT");
        let id = order["id"].as_str().expect("id");
        assert_eq!(cancel(&app, &buyer, id).await, StatusCode::OK, "round {round}");
    }
    assert_eq!(app.inventory("ONE-LEFT").await, (1, 0));
    app.assert_consistent().await;
}

/// Sold out, then an admin adds stock: once the PUT is answered, the next order sells.
async fn a_restock_is_seen_by_the_very_next_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("RESTOCK", 0)]).await;
    let buyer = app.token("buyer");
    let (status, body) = app
        .order(&buyer, json!({"items": [{"sku": "RESTOCK", "qty": 1}]}))
        .await;
    assert_out_of_stock(status, &body, "RESTOCK");
    for round in 0..20 {
        // Whatever is left of the stock (orders complete and take their unit), plus one.
        let (stock, reserved) = app.inventory("RESTOCK").await;
        assert_eq!(reserved, 0, "round {round}: nothing held before the restock");
        let (status, view) = set_stock(&app, "RESTOCK", stock + 1).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        let (status, order) = app
            .order(&buyer, json!({"items": [{"sku": "RESTOCK", "qty": 1}]}))
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "round {round}: the restocked unit sells: {order}"
        );
        let (status, body) = app
            .order(&buyer, json!({"items": [{"sku": "RESTOCK", "qty": 1}]}))
            .await;
        assert_out_of_stock(status, &body, "RESTOCK");
        assert_eq!(
            app.final_status(&buyer, order["id"].as_str().expect("id")).await,
            "COMPLETED"
        );
    }
    app.assert_consistent().await;
}

/// Reservations are taken in SKU order and stop at the first line that falls short; the
/// refusal names that line and holds nothing anywhere. An unknown SKU before it is the
/// actors' to answer (422), after it is never reached.
async fn multi_sku_orders_are_refused_on_the_line_the_actors_would_name(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("M-A", 5), ("M-B", 0), ("M-C", 5)]).await;
    let buyer = app.token("buyer");
    // Every SKU live (a view activates its actor), so memory knows them all.
    for sku in ["M-A", "M-B", "M-C"] {
        app.inventory(sku).await;
    }
    for _ in 0..3 {
        let (status, body) = app
            .order(
                &buyer,
                json!({"items": [{"sku": "M-C", "qty": 1}, {"sku": "M-B", "qty": 1}, {"sku": "M-A", "qty": 1}]}),
            )
            .await;
        assert_out_of_stock(status, &body, "M-B");
        assert!(
            body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("1 requested, 0 available"),
            "{body}"
        );
        // More than there is of M-A, before the sold-out M-B: M-A is named.
        let (status, body) = app
            .order(
                &buyer,
                json!({"items": [{"sku": "M-A", "qty": 6}, {"sku": "M-B", "qty": 1}]}),
            )
            .await;
        assert_out_of_stock(status, &body, "M-A");
        // Unknown after the short line: never reached.
        let (status, body) = app
            .order(
                &buyer,
                json!({"items": [{"sku": "M-B", "qty": 1}, {"sku": "M-Z-UNKNOWN", "qty": 1}]}),
            )
            .await;
        assert_out_of_stock(status, &body, "M-B");
        // Unknown before it: the actors answer, as they always did.
        let (status, body) = app
            .order(
                &buyer,
                json!({"items": [{"sku": "M-0-UNKNOWN", "qty": 1}, {"sku": "M-B", "qty": 1}]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        // Invalid quantity on a sold-out SKU: still the validation error, not a 409.
        let (status, body) = app.order(&buyer, json!({"items": [{"sku": "M-B", "qty": 0}]})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    for sku in ["M-A", "M-C"] {
        assert_eq!(app.inventory(sku).await, (5, 0), "{sku}: a refused order holds nothing");
    }
    let (status, order) = app
        .order(
            &buyer,
            json!({"items": [{"sku": "M-A", "qty": 2}, {"sku": "M-C", "qty": 5}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    app.assert_consistent().await;
}

/// A keyed request is never answered from memory: its retry must replay the 201 it got,
/// even after the SKU sold out.
async fn a_keyed_retry_replays_its_201_on_a_sold_out_sku(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("KEYED", 1)]).await;
    let buyer = app.token("buyer");
    let body = json!({"items": [{"sku": "KEYED", "qty": 1}]});
    let send = |key: &'static str| {
        app.client
            .post(app.url("/v1/orders"))
            .bearer_auth(&buyer)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send("key-1").await.expect("request");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    let (status, refused) = app.order(&buyer, body.clone()).await;
    assert_out_of_stock(status, &refused, "KEYED");
    for _ in 0..3 {
        let again = send("key-1").await.expect("request");
        assert_eq!(again.status(), StatusCode::CREATED, "the retry replays");
        let again: Value = again.json().await.expect("json");
        assert_eq!(again["id"], first["id"]);
    }
    let other = send("key-2").await.expect("request");
    assert_eq!(
        other.status(),
        StatusCode::CONFLICT,
        "a new key on a sold-out SKU is refused"
    );
    app.assert_consistent().await;
}

/// 64 clients hammer a small stock while other tasks cancel accepted orders and add
/// stock. Nothing is oversold (reconcile), every refusal is a proper out-of-stock, and
/// at rest memory and actors agree: exactly the available units still sell.
async fn flood_with_concurrent_releases_and_restocks_sells_what_is_there(backend: Backend) {
    let app = Arc::new(app_with_pending_payments(backend).await);
    app.product(&[("FLOOD", 10)]).await;
    let accepted: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    const ATTEMPTS: usize = 3_000;
    let buyers: Vec<_> = (0..64)
        .map(|c| {
            let (app, accepted, next) = (app.clone(), accepted.clone(), next.clone());
            tokio::spawn(async move {
                let user = format!("flood-{c}");
                let token = app.token(&user);
                let mut refused = 0usize;
                while next.fetch_add(1, Ordering::SeqCst) < ATTEMPTS {
                    let (status, body) = app.order(&token, pending_order("FLOOD", 1)).await;
                    match status {
                        StatusCode::CREATED => accepted
                            .lock()
                            .expect("lock")
                            .push((user.clone(), body["id"].as_str().expect("id").to_owned())),
                        StatusCode::CONFLICT => {
                            assert_eq!(body["type"], "/problems/out-of-stock", "{body}");
                            refused += 1;
                        }
                        other => panic!("unexpected {other}: {body}"),
                    }
                }
                refused
            })
        })
        .collect();
    // Releases: cancel accepted orders as they come, so units keep coming back.
    let releaser = {
        let (app, accepted, cancelled, done) = (app.clone(), accepted.clone(), cancelled.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let victim = accepted.lock().expect("lock").pop();
                match victim {
                    Some((user, id)) => {
                        let status = cancel(&app, &app.token(&user), &id).await;
                        assert_eq!(status, StatusCode::OK, "cancel of a pending order");
                        cancelled.fetch_add(1, Ordering::SeqCst);
                    }
                    None => tokio::task::yield_now().await,
                }
            }
        })
    };
    // Restocks: ten times, one more unit each.
    let restocker = {
        let app = app.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                let (stock, _) = app.inventory("FLOOD").await;
                let (status, body) = set_stock(&app, "FLOOD", stock + 1).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                tokio::task::yield_now().await;
            }
        })
    };
    let mut refused = 0;
    for b in buyers {
        refused += b.await.expect("buyer");
    }
    restocker.await.expect("restocker");
    done.store(true, Ordering::SeqCst);
    releaser.await.expect("releaser");
    let still_held = accepted.lock().expect("lock").len();
    let cancelled = cancelled.load(Ordering::SeqCst);
    assert_eq!(
        still_held + cancelled + refused,
        ATTEMPTS,
        "every attempt answered 201 or 409"
    );
    assert!(cancelled > 0, "releases happened during the flood");

    // At rest: what is held is exactly the pending orders, and what is available sells,
    // unit for unit, then the next attempt is refused.
    let (stock, reserved) = app.inventory("FLOOD").await;
    assert_eq!(stock, 20, "ten restocks of one unit on top of ten");
    assert_eq!(reserved as usize, still_held, "held = the orders not cancelled");
    let token = app.token("late-buyer");
    for unit in 0..(stock - reserved) {
        let (status, body) = app.order(&token, pending_order("FLOOD", 1)).await;
        assert_eq!(status, StatusCode::CREATED, "unit {unit} of what is left: {body}");
    }
    let (status, body) = app.order(&token, pending_order("FLOOD", 1)).await;
    assert_out_of_stock(status, &body, "FLOOD");
    // Every pending order cancelled, so the sagas end and the store is checked at rest.
    let mut pending: Vec<(String, String)> = accepted.lock().expect("lock").drain(..).collect();
    let (_, mine) = app.get(&token, "/v1/orders").await;
    for order in mine["items"].as_array().expect("orders") {
        pending.push(("late-buyer".into(), order["id"].as_str().expect("id").to_owned()));
    }
    for (user, id) in pending {
        assert_eq!(cancel(&app, &app.token(&user), &id).await, StatusCode::OK);
    }
    assert_eq!(app.inventory("FLOOD").await, (20, 0));
    app.assert_consistent().await;
}

/// A sold-out answer from memory still counts as a refused reservation, as it did when
/// the actor answered it.
async fn refused_attempts_are_counted_as_sold_out(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("COUNTED", 0)]).await;
    app.inventory("COUNTED").await;
    let buyer = app.token("buyer");
    let before = app.metric("emporium_reservations_total{outcome=\"sold_out\"}").await;
    for _ in 0..25 {
        let (status, body) = app
            .order(&buyer, json!({"items": [{"sku": "COUNTED", "qty": 1}]}))
            .await;
        assert_out_of_stock(status, &body, "COUNTED");
    }
    let after = app.metric("emporium_reservations_total{outcome=\"sold_out\"}").await;
    assert_eq!(after - before, 25.0);
}

/// Many clients sweep 400 distinct SKUs (views and orders) with the cap at 25 live
/// actors: the live count comes back under the cap, and every SKU still answers exactly
/// what it holds (evicted ones are loaded again from the store).
async fn live_actors_stay_under_the_cap_and_answers_do_not_change(backend: Backend) {
    const CAP: usize = 25;
    const SKUS: usize = 400;
    let app = Arc::new(TestApp::spawn_with(backend, |s| s.inventory.max_live_actors = CAP).await);
    let skus: Vec<String> = (0..SKUS).map(|i| format!("SWEEP-{i:04}")).collect();
    for chunk in skus.chunks(50) {
        let variants: Vec<(&str, i64)> = chunk.iter().map(|s| (s.as_str(), 3)).collect();
        app.product(&variants).await;
    }
    let skus = Arc::new(skus);
    let next = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (app, skus, next, peak) = (app.clone(), skus.clone(), next.clone(), peak.clone());
            tokio::spawn(async move {
                let token = app.token(&format!("sweeper-{c}"));
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= skus.len() {
                        return;
                    }
                    let sku = &skus[i];
                    assert_eq!(app.inventory(sku).await.0, 3, "{sku}");
                    // Every eighth SKU sells one unit (its order completes: test_ok).
                    if i % 8 == 0 {
                        let (status, body) = app.order(&token, json!({"items": [{"sku": sku, "qty": 1}]})).await;
                        assert_eq!(status, StatusCode::CREATED, "{sku}: {body}");
                    }
                    peak.fetch_max(app.app.inventory.active_count(), Ordering::SeqCst);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    // Evictions are messages to the chosen actors: wait for them to land (a condition,
    // not a sleep), then the live set is back under the cap.
    app.assert_consistent().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.app.inventory.active_count() > CAP {
        // An actor that just settled an order goes once the store has the settle.
        assert!(
            Instant::now() < deadline,
            "live actors stay over the cap: {}",
            app.app.inventory.active_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak < SKUS / 2, "the live set never grew with the sweep (peak {peak})");
    assert!(app.metric("emporium_actor_passivations_total").await >= (SKUS - CAP) as f64 * 0.9);
    // Every SKU, evicted or not, still shows exactly what it holds.
    for (i, sku) in skus.iter().enumerate() {
        let expected = if i % 8 == 0 { 2 } else { 3 };
        assert_eq!(app.inventory(sku).await, (expected, 0), "{sku}");
    }
    app.assert_consistent().await;
}
