//! Hostile request bodies and methods against a real server (SQLite file): deep JSON,
//! control characters, huge prices, numbers in unusual spellings, wrong methods. Each
//! gets a problem with a stable type and changes nothing; the server stays up.
//!
//! These are the cases schemathesis and the fuzz targets found or guard (README,
//! "Security and limits"); the edge rules do not depend on the store, so SQLite only.

use crate::common;

use common::{Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn post_product(app: &TestApp, body: String) -> (StatusCode, Value) {
    let r = app
        .client
        .post(app.url("/v1/products"))
        .bearer_auth(&app.admin)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status();
    assert_eq!(
        r.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some(if status.is_success() {
            "application/json"
        } else {
            "application/problem+json"
        })
    );
    (status, r.json().await.unwrap_or(Value::Null))
}

fn product_with(sku: &str, extra: Value) -> String {
    let mut body = json!({"name": "깊은 속성", "price": {"amount": 1000, "currency": "KRW"},
        "variants": [{"sku": sku, "stock": 5}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body.to_string()
}

async fn assert_no_sku(app: &TestApp, sku: &str) {
    let (status, _) = app.get(&app.admin, &format!("/v1/inventory/{sku}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{sku} must not have been created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_attributes_get_a_clean_problem() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let nested = |levels: usize| (0..levels).fold(json!("leaf"), |inner, _| json!({ "k": inner }));

    // Within the limit: accepted.
    let (status, _) = post_product(&app, product_with("DEEP-OK", json!({"attributes": nested(15)}))).await;
    assert_eq!(status, StatusCode::CREATED);

    // Past our limit (16) but within serde's (128): 422, for the product and a variant.
    for (sku, extra) in [
        ("DEEP-17", json!({"attributes": nested(17)})),
        ("DEEP-100", json!({"attributes": nested(100)})),
    ] {
        let (status, problem) = post_product(&app, product_with(sku, extra)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["type"], "/problems/invalid-request");
        assert!(
            problem["detail"].as_str().unwrap_or_default().contains("nests"),
            "{problem}"
        );
        assert_no_sku(&app, sku).await;
    }
    let variant = json!({"name": "v", "price": {"amount": 1, "currency": "KRW"},
        "variants": [{"sku": "DEEP-V", "stock": 1, "attributes": nested(40)}]});
    assert_eq!(
        post_product(&app, variant.to_string()).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_no_sku(&app, "DEEP-V").await;

    // Far past serde's recursion limit, as deep as the body limit allows: 400, no stack
    // overflow, and the server still answers.
    for open in ["[", "{\"a\":"] {
        let depth = 60_000 / open.len();
        let body = format!(
            r#"{{"name":"x","price":{{"amount":1,"currency":"KRW"}},"variants":[],"attributes":{{"a":{}"#,
            open.repeat(depth)
        );
        let (status, problem) = post_product(&app, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["type"], "/problems/invalid-request");
    }
    let (status, _) = app.get(&app.admin, "/health/live").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_prices_are_validated_at_the_edge() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let cases = [
        ("CTL-NAME", json!({"name": "bell\u{7}"})),
        ("CTL-BRAND", json!({"brand": "new\nline"})),
        ("LONG-BRAND", json!({"brand": "b".repeat(201)})),
        ("BLANK-PATH", json!({"category_path": "   "})),
        (
            "HUGE-PRICE",
            json!({"price": {"amount": 1_000_000_000_001_i64, "currency": "KRW"}}),
        ),
        ("NEG-PRICE", json!({"price": {"amount": -1, "currency": "KRW"}})),
        ("FRACTION", json!({"price": {"amount": 10.5, "currency": "KRW"}})),
        ("LOWER-CUR", json!({"price": {"amount": 10, "currency": "krw"}})),
    ];
    for (sku, extra) in cases {
        let (status, problem) = post_product(&app, product_with(sku, extra)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{sku}: {problem}");
        assert_eq!(problem["type"], "/problems/invalid-request", "{sku}");
        assert_no_sku(&app, sku).await;
    }
    // The largest price is fine, and so is an integral number written as 1000.0.
    let max = json!({"price": {"amount": 1_000_000_000_000_i64, "currency": "KRW"}});
    assert_eq!(
        post_product(&app, product_with("MAX-PRICE", max)).await.0,
        StatusCode::CREATED
    );
    let (status, product) = post_product(
        &app,
        product_with("FLOAT-INT", json!({"price": {"amount": 1000.0, "currency": "KRW"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(product["price"]["amount"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_are_whole_numbers_in_any_spelling() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.product(&[("QTY-1", 10)]).await;
    let alice = app.token("alice");
    let (status, order) = app
        .order(&alice, json!({"items": [{"sku": "QTY-1", "qty": 2.0}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["items"][0]["qty"], 2);
    for qty in [json!(1.5), json!("1"), json!(1e300)] {
        let (status, problem) = app
            .order(&alice, json!({"items": [{"sku": "QTY-1", "qty": qty}]}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{qty}: {problem}");
    }
    // Paid or not yet, exactly the valid order's 2 units are held or sold.
    let (stock, reserved) = app.inventory("QTY-1").await;
    assert_eq!(stock - reserved, 8, "only the valid order took stock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_a_route_is_405_with_allow() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    for (method, path, allow) in [
        (Method::TRACE, "/v1/orders", "GET, POST"),
        (Method::DELETE, "/v1/orders/00000000-0000-0000-0000-000000000000", "GET"),
        (Method::PATCH, "/v1/inventory/ANY", "GET, PUT"),
        (Method::POST, "/health/live", "GET"),
        (Method::PUT, "/metrics", "GET"),
    ] {
        let r = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
        let problem: Value = r.json().await.expect("problem");
        assert_eq!(problem["type"], "/problems/method-not-allowed");
    }
    let r = app
        .client
        .get(app.url("/v1/nothing-here"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
