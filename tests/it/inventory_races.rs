//! Concurrency: many real HTTP clients against one server; afterwards every invariant
//! of docs/design.md is checked (nothing oversold, reserved back to zero, journal and
//! snapshots agree).

use crate::common;

on_every_strategy!(
    flash_sale_sells_exactly_the_stock,
    last_unit_two_buyers_at_once_magento_msi_spree,
    one_order_two_lines_on_the_same_sku_medusa,
    random_multi_item_orders_reserve_all_or_nothing,
);
on_every_backend!(inventory_actor_called_directly_alongside_http_medusa);

use common::{Backend, TestApp};
use emporium::actors::order::PlaceOrder;
use emporium::domain::ids::{OrderId, Sku, UserId};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Runs `attempts` order requests from `clients` concurrent clients, each user distinct.
/// Returns (status, body) per attempt.
async fn hammer(
    app: &Arc<TestApp>,
    clients: usize,
    attempts: usize,
    body: impl Fn(usize) -> serde_json::Value + Send + Sync + 'static,
) -> Vec<(StatusCode, serde_json::Value)> {
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (app, next, body) = (app.clone(), next.clone(), body.clone());
            tokio::spawn(async move {
                let token = app.token(&format!("buyer-{c}"));
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= attempts {
                        return out;
                    }
                    out.push(app.order(&token, body(i)).await);
                }
            })
        })
        .collect();
    let mut results = Vec::with_capacity(attempts);
    for t in tasks {
        results.extend(t.await.expect("client task"));
    }
    results
}

fn count(results: &[(StatusCode, serde_json::Value)], status: StatusCode) -> usize {
    results.iter().filter(|(s, _)| *s == status).count()
}

async fn flash_sale_sells_exactly_the_stock(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    app.product(&[("FLASH-1", 100)]).await;

    let results = hammer(&app, 64, 2_000, |_| json!({"items": [{"sku": "FLASH-1", "qty": 1}]})).await;

    assert_eq!(count(&results, StatusCode::CREATED), 100, "exactly the stock is sold");
    assert_eq!(
        count(&results, StatusCode::CONFLICT),
        1_900,
        "everyone else is told sold out"
    );
    for (status, body) in &results {
        if *status == StatusCode::CONFLICT {
            assert_eq!(body["type"], "/problems/out-of-stock");
        }
    }
    for (status, body) in results.iter().filter(|(s, _)| *s == StatusCode::CREATED) {
        let owner = app.token(body["user_id"].as_str().expect("user"));
        assert_eq!(*status, StatusCode::CREATED);
        assert_eq!(
            app.final_status(&owner, body["id"].as_str().expect("id")).await,
            "COMPLETED"
        );
    }
    assert_eq!(app.inventory("FLASH-1").await, (0, 0));
    app.assert_consistent().await;
}

/// Magento MSI and Spree both sold the last unit twice when two checkouts raced.
async fn last_unit_two_buyers_at_once_magento_msi_spree(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let skus: Vec<String> = (0..25).map(|i| format!("LAST-{i}")).collect();
    for sku in &skus {
        app.product(&[(sku, 1)]).await;
    }
    for sku in &skus {
        let (a, b) = (app.token("first"), app.token("second"));
        let body = json!({"items": [{"sku": sku, "qty": 1}]});
        let (ra, rb) = tokio::join!(app.order(&a, body.clone()), app.order(&b, body));
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "{sku}: one buyer gets the last unit"
        );
    }
    for sku in &skus {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while app.inventory(sku).await != (0, 0) {
            assert!(std::time::Instant::now() < deadline, "{sku} never settled");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    app.assert_consistent().await;
}

/// Medusa reserved each line separately, so two lines of one SKU could exceed stock.
async fn one_order_two_lines_on_the_same_sku_medusa(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("TWO-LINES", 3)]).await;
    let token = app.token("carol");

    let (status, body) = app
        .order(
            &token,
            json!({"items": [{"sku": "TWO-LINES", "qty": 2}, {"sku": "TWO-LINES", "qty": 2}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        app.inventory("TWO-LINES").await,
        (3, 0),
        "a refused order holds nothing"
    );

    let (status, body) = app
        .order(
            &token,
            json!({"items": [{"sku": "TWO-LINES", "qty": 1}, {"sku": "TWO-LINES", "qty": 2}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["total"]["amount"], 3000);
    assert_eq!(
        app.final_status(&token, body["id"].as_str().unwrap()).await,
        "COMPLETED"
    );
    assert_eq!(app.inventory("TWO-LINES").await, (0, 0));
    app.assert_consistent().await;
}

/// Medusa's inventory service could be called around the checkout path; here the
/// actor itself and the order service are driven directly while HTTP orders run.
async fn inventory_actor_called_directly_alongside_http_medusa(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    app.product(&[("DIRECT", 50)]).await;
    let sku = Sku::parse("DIRECT").unwrap();

    let http = {
        let app = app.clone();
        tokio::spawn(async move { hammer(&app, 32, 200, |_| json!({"items": [{"sku": "DIRECT", "qty": 1}]})).await })
    };
    let service: Vec<_> = (0..100)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                app.app
                    .orders
                    .place(PlaceOrder {
                        user: UserId::parse(format!("direct-{i}")).unwrap(),
                        items: vec![(Sku::parse("DIRECT").unwrap(), 1)],
                        payment_token: "test_ok".into(),
                        idempotency: None,
                        traceparent: None,
                        tracestate: None,
                    })
                    .await
                    .is_ok()
            })
        })
        .collect();
    let expires = emporium::domain::now_millis() + 60_000;
    let actor: Vec<_> = (0..100)
        .map(|_| {
            let (app, sku) = (app.clone(), sku.clone());
            tokio::spawn(async move {
                let order = OrderId::generate();
                app.app
                    .inventory
                    .reserve(&sku, order, 1, expires)
                    .await
                    .ok()
                    .map(|_| order)
            })
        })
        .collect();

    let http_accepted = count(&http.await.unwrap(), StatusCode::CREATED);
    let mut service_accepted = 0;
    for s in service {
        service_accepted += usize::from(s.await.unwrap());
    }
    let mut held_by_actor_calls = Vec::new();
    for a in actor {
        held_by_actor_calls.extend(a.await.unwrap());
    }
    assert_eq!(
        http_accepted + service_accepted + held_by_actor_calls.len(),
        50,
        "every path together sells exactly the stock"
    );
    // The direct reservations were never made durable: drop them the way a failed commit does.
    for order in held_by_actor_calls {
        app.app.inventory.forget(&sku, order).await.unwrap();
    }
    app.assert_consistent().await;
    let (stock, reserved) = app.inventory("DIRECT").await;
    assert_eq!((stock, reserved), (50 - (http_accepted + service_accepted) as i64, 0));
}

async fn random_multi_item_orders_reserve_all_or_nothing(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let initial: BTreeMap<String, i64> = (0..20).map(|i| (format!("MULTI-{i:02}"), 5 + (i % 11))).collect();
    for (sku, stock) in &initial {
        app.product(&[(sku, *stock)]).await;
    }
    let skus: Vec<String> = initial.keys().cloned().collect();
    // A deterministic pseudo-random mix: 1-4 distinct SKUs, qty 1-3 each.
    let results = hammer(&app, 64, 1_000, move |i| {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let lines = 1 + (next() % 4) as usize;
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < lines {
            let s = (next() % skus.len() as u64) as usize;
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        let items: Vec<_> = chosen
            .iter()
            .map(|s| json!({"sku": skus[*s], "qty": 1 + next() % 3}))
            .collect();
        json!({"items": items})
    })
    .await;

    let accepted: Vec<&serde_json::Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, b)| b)
        .collect();
    assert!(!accepted.is_empty());
    assert_eq!(
        accepted.len() + count(&results, StatusCode::CONFLICT),
        results.len(),
        "only 201 or 409"
    );
    let mut sold: HashMap<String, i64> = HashMap::new();
    for order in &accepted {
        let owner = app.token(order["user_id"].as_str().unwrap());
        assert_eq!(
            app.final_status(&owner, order["id"].as_str().unwrap()).await,
            "COMPLETED"
        );
        for line in order["items"].as_array().unwrap() {
            *sold.entry(line["sku"].as_str().unwrap().to_owned()).or_default() += line["qty"].as_i64().unwrap();
        }
    }
    for (sku, stock) in &initial {
        let (now, reserved) = app.inventory(sku).await;
        let sold = sold.get(sku).copied().unwrap_or(0);
        assert!(now >= 0 && sold <= *stock, "{sku} oversold");
        assert_eq!(
            (now, reserved),
            (stock - sold, 0),
            "{sku}: stock taken equals what accepted orders bought"
        );
    }
    app.assert_consistent().await;
}
