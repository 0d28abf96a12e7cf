//! The order saga end to end over HTTP: payment outcomes, compensation, customer
//! cancel racing the payment, and reservation expiry.

use crate::common;

on_every_strategy!(
    declined_payment_cancels_and_restores_stock,
    flaky_payment_completes_after_retries,
    gateway_down_cancels_after_three_attempts,
    cancel_racing_payment_never_both,
    customer_cancel_releases_and_second_cancel_conflicts,
    unpaid_reservation_expires_and_releases_stock,
);

on_every_backend!(
    a_charge_that_succeeds_after_a_cancel_is_refunded_exactly_once,
    a_refund_that_keeps_failing_lands_in_failed_events_and_replay_refunds_it,
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
    let app = TestApp::spawn_with(backend, |s| s.payment.gateway_latency = Duration::from_millis(3)).await;
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
    let app = TestApp::spawn_with(backend, |s| s.payment.attempt_timeout = Duration::from_millis(5_000)).await;
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
        s.inventory.reservation_ttl = Duration::from_secs(1);
        s.payment.attempt_timeout = Duration::from_millis(10_000);
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

/// Polls the order until its `payment.status` is `want` (or fails after 20 s).
async fn payment_status_becomes(app: &TestApp, token: &str, id: &str, want: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app.get(token, &format!("/v1/orders/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["payment"]["status"] == want {
            return body;
        }
        assert!(Instant::now() < deadline, "payment of {id} never became {want}: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many events of `event_type` the outbox holds for the order (published or not:
/// published rows stay, marked).
async fn events_of(app: &TestApp, id: &str, event_type: &str) -> i64 {
    common::outbox_count(&app.app.settings.store_url(), event_type, id).await
}

/// The gateway is still charging (`test_slow`) when the customer cancels: the cancel
/// wins (200, stock back at once), the charge then succeeds after all, and the money is
/// given back: the order stays CANCELLED, its payment reads `refunded`, and exactly one
/// `payment_refunded` event leaves (no `payment_succeeded`, no completion).
async fn a_charge_that_succeeds_after_a_cancel_is_refunded_exactly_once(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.payment.attempt_timeout = Duration::from_millis(5_000);
        s.payment.slow = Duration::from_millis(400);
    })
    .await;
    app.product(&[("LATE", 5)]).await;
    let token = app.token("ivy");
    let order = place(&app, "ivy", "LATE", 2, "test_slow").await;
    let id = order["id"].as_str().unwrap();
    let (status, body) = app.cancel(&token, id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["payment"]["status"], "not_charged", "{body}");
    assert_eq!(app.inventory("LATE").await, (5, 0));

    let body = payment_status_becomes(&app, &token, id, "refunded").await;
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["cancel_reason"], "customer");
    app.assert_consistent().await;
    assert_eq!(events_of(&app, id, "payment_refunded").await, 1);
    assert_eq!(events_of(&app, id, "payment_succeeded").await, 0);
    assert_eq!(events_of(&app, id, "order_completed").await, 0);
    assert_eq!(app.metric("emporium_refunds_total{outcome=\"refunded\"}").await, 1.0);
    assert_eq!(app.metric("emporium_refunds_total{outcome=\"requested\"}").await, 1.0);
    assert_eq!(app.inventory("LATE").await, (5, 0));
}

/// The gateway refuses the refund (`test_slow_refund_flaky`: its first three refund
/// calls fail) more often than `payment.refund_attempts` allows: the refund is given up
/// with a `refund_failed` event and a `failed_events` row; the admin replay requests it
/// again and it goes through, refunded once.
async fn a_refund_that_keeps_failing_lands_in_failed_events_and_replay_refunds_it(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.payment.attempt_timeout = Duration::from_millis(5_000);
        s.payment.slow = Duration::from_millis(300);
        s.payment.refund_attempts = 2;
        s.payment.refund_backoff_base = Duration::from_millis(20);
    })
    .await;
    app.product(&[("NOREFUND", 3)]).await;
    let token = app.token("jun");
    let order = place(&app, "jun", "NOREFUND", 1, "test_slow_refund_flaky").await;
    let id = order["id"].as_str().unwrap();
    let (status, body) = app.cancel(&token, id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    payment_status_becomes(&app, &token, id, "refund_failed").await;
    assert_eq!(events_of(&app, id, "refund_failed").await, 1);
    assert_eq!(events_of(&app, id, "payment_refunded").await, 0);
    let sources = app.app.store.failed_event_sources().await.expect("failed events");
    assert_eq!(sources, vec![("refund".to_owned(), "refund_failed".to_owned(), false)]);

    let replay = app
        .client
        .post(app.url("/v1/admin/events/replay"))
        .bearer_auth(&app.admin)
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), StatusCode::OK);
    let replayed: serde_json::Value = replay.json().await.expect("json");
    assert_eq!(replayed["replayed"], 1, "{replayed}");

    let body = payment_status_becomes(&app, &token, id, "refunded").await;
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(events_of(&app, id, "payment_refunded").await, 1);
    let sources = app.app.store.failed_event_sources().await.expect("failed events");
    assert_eq!(sources, vec![("refund".to_owned(), "refund_failed".to_owned(), true)]);
    app.assert_consistent().await;
}
