//! The HTTP contract: idempotency, bad input (problem+json, nothing changes), access
//! control, health, OpenAPI, metrics.

use crate::common;
use std::time::Duration;

on_every_strategy!(
    idempotency_key_replays_without_reserving_twice,
    concurrent_requests_with_one_key_make_one_order,
    bad_input_gets_a_problem_and_changes_nothing,
    orders_are_private_and_admin_routes_need_the_role,
    stock_changes_are_admin_only_and_never_below_reserved,
    health_openapi_metrics_and_dashboard_answer,
);

use common::{Backend, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;

async fn raw_order(
    app: &TestApp,
    token: Option<&str>,
    body: &str,
    key: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = app
        .client
        .post(app.url("/v1/orders"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let r = req.send().await.unwrap();
    let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    (r.status(), r.json().await.unwrap_or(Value::Null), content_type)
}

async fn idempotency_key_replays_without_reserving_twice(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.payment.attempt_timeout = Duration::from_millis(5_000)).await;
    app.product(&[("IDEM", 10)]).await;
    let token = app.token("jo");
    let body = r#"{"items":[{"sku":"IDEM","qty":2}],"payment":{"token":"test_down"}}"#;
    let (s1, first, _) = raw_order(&app, Some(&token), body, Some("key-1")).await;
    // Same request, other formatting: still the same body.
    let spaced = r#"{ "items": [ { "sku": "IDEM", "qty": 2 } ], "payment": { "token": "test_down" } }"#;
    let (s2, second, _) = raw_order(&app, Some(&token), spaced, Some("key-1")).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first, second, "same key and body: the same answer");
    assert_eq!(app.inventory("IDEM").await, (10, 2), "reserved once");

    let (s3, problem, _) = raw_order(
        &app,
        Some(&token),
        r#"{"items":[{"sku":"IDEM","qty":3}]}"#,
        Some("key-1"),
    )
    .await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["type"], "/problems/idempotency-mismatch");
    assert_eq!(app.inventory("IDEM").await, (10, 2));
}

async fn concurrent_requests_with_one_key_make_one_order(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    app.product(&[("IDEM-RACE", 100)]).await;
    let token = app.token("kim");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, token) = (app.clone(), token.clone());
            tokio::spawn(async move {
                raw_order(
                    &app,
                    Some(&token),
                    r#"{"items":[{"sku":"IDEM-RACE","qty":1}]}"#,
                    Some("same"),
                )
                .await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, body, _) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                ids.insert(body["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => assert_eq!(body["type"], "/problems/conflict"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "one key, one order");
    let (_, list) = app.get(&token, "/v1/orders").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    app.assert_consistent().await;
}

async fn bad_input_gets_a_problem_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("SAFE", 5)]).await;
    let token = app.token("lee");
    let huge = format!(
        r#"{{"items":[{{"sku":"SAFE","qty":1}}],"pad":"{}"}}"#,
        "x".repeat(200_000)
    );
    let cases: Vec<(&str, Option<&str>, String, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            Some(&token),
            "{\"items\": [".into(),
            StatusCode::BAD_REQUEST,
            "/problems/invalid-request",
        ),
        (
            "qty 0",
            Some(&token),
            r#"{"items":[{"sku":"SAFE","qty":0}]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            "negative qty",
            Some(&token),
            r#"{"items":[{"sku":"SAFE","qty":-3}]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            "no items",
            Some(&token),
            r#"{"items":[]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            "unknown sku",
            Some(&token),
            r#"{"items":[{"sku":"NOPE","qty":1}]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            "invalid sku",
            Some(&token),
            r#"{"items":[{"sku":"a b/c","qty":1}]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            "unknown field",
            Some(&token),
            r#"{"items":[{"sku":"SAFE","qty":1}],"coupon":"FREE"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            "unknown payment token",
            Some(&token),
            r#"{"items":[{"sku":"SAFE","qty":1}],"payment":{"token":"4111"}}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "/problems/invalid-request",
        ),
        (
            "huge body",
            Some(&token),
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/invalid-request",
        ),
        (
            "missing token",
            None,
            r#"{"items":[{"sku":"SAFE","qty":1}]}"#.into(),
            StatusCode::UNAUTHORIZED,
            "/problems/unauthorized",
        ),
        (
            "garbage token",
            Some("not.a.jwt"),
            r#"{"items":[{"sku":"SAFE","qty":1}]}"#.into(),
            StatusCode::UNAUTHORIZED,
            "/problems/unauthorized",
        ),
    ];
    for (what, token, body, status, problem) in cases {
        let (got, body, content_type) = raw_order(&app, token, &body, None).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["type"], problem, "{what}");
        assert_eq!(body["status"], status.as_u16(), "{what}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{what}");
    }
    assert_eq!(app.inventory("SAFE").await, (5, 0), "nothing was reserved");
    let (_, list) = app.get(&token, "/v1/orders").await;
    assert_eq!(list["items"], json!([]), "no order was created");
}

async fn orders_are_private_and_admin_routes_need_the_role(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("PRIV", 5)]).await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    let (_, order) = app.order(&alice, json!({"items": [{"sku": "PRIV", "qty": 1}]})).await;
    let path = format!("/v1/orders/{}", order["id"].as_str().unwrap());
    assert_eq!(app.get(&alice, &path).await.0, StatusCode::OK);
    let (status, problem) = app.get(&bob, &path).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/not-found"))
    );
    assert_eq!(
        app.get(&app.admin, &path).await.0,
        StatusCode::OK,
        "admins see every order"
    );
    let (_, bobs) = app.get(&bob, "/v1/orders").await;
    assert_eq!(bobs["items"], json!([]));
    assert_eq!(app.get(&alice, "/v1/orders/not-a-uuid").await.0, StatusCode::NOT_FOUND);

    let product =
        json!({"name": "x", "price": {"amount": 1, "currency": "KRW"}, "variants": [{"sku": "NEW", "stock": 1}]});
    let r = app
        .client
        .post(app.url("/v1/products"))
        .bearer_auth(&alice)
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app
        .client
        .put(app.url("/v1/inventory/PRIV"))
        .bearer_auth(&alice)
        .json(&json!({"stock": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let expired = {
        let claims = json!({"sub": "alice", "iat": 1, "exp": 2});
        // Generated into the data dir, or configured (the cluster backend's nodes share one).
        let configured = &app.app.settings.auth.jwt_secret;
        let secret = if configured.is_empty() {
            std::fs::read_to_string(app.app.settings.server.data_dir.join("jwt_secret")).unwrap()
        } else {
            configured.expose().to_owned()
        };
        sign_with_server_secret(&claims, &secret)
    };
    assert_eq!(
        app.get(&expired, "/v1/orders").await.0,
        StatusCode::UNAUTHORIZED,
        "expired token"
    );
}

/// Signs HS256 claims with the server's secret: an expired token needs a past `exp`,
/// which the server itself never issues.
fn sign_with_server_secret(claims: &Value, secret: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

async fn stock_changes_are_admin_only_and_never_below_reserved(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.payment.attempt_timeout = Duration::from_millis(5_000)).await;
    app.product(&[("RESTOCK", 5)]).await;
    let (status, _) = app
        .order(
            &app.token("max"),
            json!({"items": [{"sku": "RESTOCK", "qty": 3}], "payment": {"token": "test_down"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let put = |stock: i64| {
        app.client
            .put(app.url("/v1/inventory/RESTOCK"))
            .bearer_auth(&app.admin)
            .json(&json!({"stock": stock}))
            .send()
    };
    let r = put(2).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["type"], "/problems/conflict");
    let r = put(20).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"sku": "RESTOCK", "stock": 20, "reserved": 3, "available": 17})
    );
    let r = app
        .client
        .put(app.url("/v1/inventory/NOPE"))
        .bearer_auth(&app.admin)
        .json(&json!({"stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let dup =
        json!({"name": "dup", "price": {"amount": 1, "currency": "KRW"}, "variants": [{"sku": "RESTOCK", "stock": 1}]});
    let r = app
        .client
        .post(app.url("/v1/products"))
        .bearer_auth(&app.admin)
        .json(&dup)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT, "SKUs are unique");
}

async fn health_openapi_metrics_and_dashboard_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    assert_eq!(
        app.client.get(app.url("/health/live")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        app.client.get(app.url("/health/ready")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let spec: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/orders",
        "/v1/orders/{id}",
        "/v1/orders/{id}/cancel",
        "/v1/products",
        "/v1/inventory/{sku}",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} documented");
    }
    app.product(&[("M", 1)]).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("# TYPE emporium_http_requests_total counter"), "{text}");
    // Summed over the nodes (one, or three for the cluster backend, each answering in turn).
    assert_eq!(
        app.metric("emporium_http_requests_total{method=\"POST\",route=\"/v1/products\",status=\"201\"}")
            .await,
        1.0
    );
    let page = app
        .client
        .get(app.url("/dashboard"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("/metrics") && !page.contains("https://"),
        "self-contained page reading /metrics"
    );
    let (status, problem) = app.get(&app.admin, "/no/such/route").await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("/problems/not-found"))
    );
}
