//! The order saga end to end over HTTP: payment outcomes, compensation, customer
//! cancel racing the payment, and reservation expiry.

mod common;

on_every_strategy!(
    declined_payment_cancels_and_restores_stock,
    flaky_payment_completes_after_retries,
    gateway_down_cancels_after_three_attempts,
    cancel_racing_payment_never_both,
    customer_cancel_releases_and_second_cancel_conflicts,
    unpaid_reservation_expires_and_releases_stock,
);

use common::{Backend, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

async fn place(app: &TestApp, user: &str, sku: &str, qty: i64, token: &str) -> serde_json::Value {
    let (status, body) = app
        .order(
            &app.token(user),
            json!({"items": [{"sku": sku, "qty": qty}], "payment": {"token": token}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn declined_payment_cancels_and_restores_stock(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("DECLINE", 5)]).await;
    let order = place(&app, "dave", "DECLINE", 2, "test_decline").await;
    let id = order["id"].as_str().unwrap();
    assert_eq!(app.final_status(&app.token("dave"), id).await, "CANCELLED");
    let (_, body) = app.get(&app.token("dave"), &format!("/v1/orders/{id}")).await;
    assert_eq!(body["cancel_reason"], "payment_failed");
    assert_eq!(app.inventory("DECLINE").await, (5, 0));
    assert_eq!(
        app.metric("emporium_payment_attempts_total{outcome=\"declined\"}")
            .await,
        1.0,
        "a decline is not retried"
    );
    app.assert_consistent().await;
}

async fn flaky_payment_completes_after_retries(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("FLAKY", 5)]).await;
    let order = place(&app, "erin", "FLAKY", 1, "test_flaky").await;
    assert_eq!(
        app.final_status(&app.token("erin"), order["id"].as_str().unwrap())
            .await,
        "COMPLETED"
    );
    assert_eq!(
        app.metric("emporium_payment_attempts_total{outcome=\"error\"}").await,
        2.0
    );
    assert_eq!(
        app.metric("emporium_payment_attempts_total{outcome=\"succeeded\"}")
            .await,
        1.0
    );
    assert_eq!(app.inventory("FLAKY").await, (4, 0));
    app.assert_consistent().await;
}

async fn gateway_down_cancels_after_three_attempts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.product(&[("DOWN", 5)]).await;
    let order = place(&app, "frank", "DOWN", 3, "test_down").await;
    assert_eq!(
        app.final_status(&app.token("frank"), order["id"].as_str().unwrap())
            .await,
        "CANCELLED"
    );
    assert_eq!(
        app.metric("emporium_payment_attempts_total{outcome=\"timeout\"}").await,
        3.0
    );
    assert_eq!(app.inventory("DOWN").await, (5, 0));
    app.assert_consistent().await;
}

/// A customer cancel and a payment outcome race: exactly one of them wins, and the
/// stock matches the winner.
async fn cancel_racing_payment_never_both(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.payment.gateway_latency_ms = 3).await;
    app.product(&[("RACE", 100)]).await;
    let token = app.token("gina");
    let mut cancelled = 0;
    let mut completed = 0;
    for _ in 0..40 {
        let order = place(&app, "gina", "RACE", 1, "test_ok").await;
        let id = order["id"].as_str().unwrap().to_owned();
        let r = app
            .client
            .post(app.url(&format!("/v1/orders/{id}/cancel")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let cancel_status = r.status();
        let cancel_body = r.text().await.unwrap_or_default();
        let final_status = app.final_status(&token, &id).await;
        match cancel_status {
            StatusCode::OK => {
                assert_eq!(
                    final_status, "CANCELLED",
                    "a 200 cancel means the order stays cancelled"
                );
                cancelled += 1;
            }
            StatusCode::CONFLICT => {
                assert_eq!(final_status, "COMPLETED", "a refused cancel means the payment won");
                completed += 1;
            }
            other => panic!("unexpected cancel answer {other}: {cancel_body} (order ended {final_status})"),
        }
    }
    assert_eq!(app.inventory("RACE").await, (100 - completed, 0));
    assert_eq!(cancelled + completed, 40);
    app.assert_consistent().await;
}

async fn customer_cancel_releases_and_second_cancel_conflicts(backend: Backend) {
    // The gateway hangs (test_down) long enough for the customer to cancel first.
    let app = TestApp::spawn_with(backend, |s| s.payment.attempt_timeout_ms = 5_000).await;
    app.product(&[("CANCEL", 3)]).await;
    let token = app.token("hana");
    let order = place(&app, "hana", "CANCEL", 2, "test_down").await;
    assert_eq!(app.inventory("CANCEL").await, (3, 2));
    let id = order["id"].as_str().unwrap();
    let r = app
        .client
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(app.inventory("CANCEL").await, (3, 0));
    let again = app
        .client
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let other = app
        .client
        .post(app.url(&format!("/v1/orders/{id}/cancel")))
        .bearer_auth(app.token("mallory"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        StatusCode::NOT_FOUND,
        "another user's order does not exist for them"
    );
}

async fn unpaid_reservation_expires_and_releases_stock(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.inventory.reservation_ttl_secs = 1;
        s.payment.attempt_timeout_ms = 10_000;
    })
    .await;
    app.product(&[("EXPIRE", 4)]).await;
    let token = app.token("ivan");
    let order = place(&app, "ivan", "EXPIRE", 3, "test_down").await;
    let placed = Instant::now();
    assert_eq!(app.inventory("EXPIRE").await, (4, 3));
    assert_eq!(
        app.final_status(&token, order["id"].as_str().unwrap()).await,
        "CANCELLED"
    );
    assert!(
        placed.elapsed() < Duration::from_millis(2_500),
        "released within 1 s of the deadline"
    );
    let (_, body) = app
        .get(&token, &format!("/v1/orders/{}", order["id"].as_str().unwrap()))
        .await;
    assert_eq!(body["cancel_reason"], "expired");
    assert_eq!(app.inventory("EXPIRE").await, (4, 0));
    assert_eq!(app.metric("emporium_reservation_expirations_total").await, 1.0);
}
