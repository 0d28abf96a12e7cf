//! MySQL outage while orders flow. The database is cut off by a TCP proxy this test
//! controls (the shared MariaDB itself is never stopped). While it is down: sold-out
//! answers still come from memory, new orders get 503 + Retry-After within the timeout,
//! readiness is 503. After it is back everything resumes by itself; nothing that got a
//! 201 is lost and no stock leaks. A 503 body carries the fixed public sentence, never
//! the store's own error text.

use crate::common;

use common::proxy::Proxy;
use common::{Backend, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_answers_503_loses_nothing_and_recovers() {
    let Some(Backend::MySql(server)) = Backend::mysql().await else {
        return;
    };
    let target = server
        .trim_start_matches("mysql://")
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    let target = target.to_socket_addrs().unwrap().next().unwrap();
    let proxy = Proxy::start(target).await;
    let through_proxy = match server.split_once('@') {
        Some((user, _)) => format!("{user}@{}", proxy.addr),
        None => format!("mysql://{}", proxy.addr),
    };
    let app = Arc::new(
        TestApp::spawn_with(Backend::MySql(through_proxy), |s| {
            s.store.acquire_timeout = Duration::from_millis(500);
            s.server.request_timeout = Duration::from_millis(3_000);
        })
        .await,
    );
    app.product(&[("BUSY", 100_000)]).await;
    app.product(&[("GONE", 1)]).await;
    let buyer = app.token("outage-buyer");
    let (status, _) = app.order(&buyer, json!({"items": [{"sku": "GONE", "qty": 1}]})).await;
    assert_eq!(status, StatusCode::CREATED);

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(Mutex::new(Vec::<(StatusCode, Duration, Option<String>)>::new()));
    let unavailable_bodies = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (app, acknowledged, statuses, stop) =
                (app.clone(), acknowledged.clone(), statuses.clone(), stop.clone());
            let unavailable_bodies = unavailable_bodies.clone();
            tokio::spawn(async move {
                let token = app.token(&format!("outage-{c}"));
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let r = app
                        .client
                        .post(app.url("/v1/orders"))
                        .bearer_auth(&token)
                        .json(&json!({"items": [{"sku": "BUSY", "qty": 1}]}))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                    if status == StatusCode::CREATED {
                        let body: serde_json::Value = r.json().await.unwrap();
                        acknowledged
                            .lock()
                            .unwrap()
                            .push(body["id"].as_str().unwrap().to_owned());
                    } else if status == StatusCode::SERVICE_UNAVAILABLE {
                        let body = r.text().await.unwrap();
                        unavailable_bodies.lock().unwrap().push(body);
                    }
                    statuses.lock().unwrap().push((status, started.elapsed(), retry_after));
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let cut_at = statuses.lock().unwrap().len();
    // Readiness notices.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.client.get(app.url("/health/ready")).send().await.unwrap().status() != StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "ready stayed 200 with the database down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sold out is still answered from memory, fast.
    let started = Instant::now();
    let (status, body) = app.order(&buyer, json!({"items": [{"sku": "GONE", "qty": 1}]})).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (StatusCode::CONFLICT, Some("/problems/out-of-stock"))
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let during: Vec<_> = statuses.lock().unwrap()[cut_at..].to_vec();
    assert!(
        during.iter().any(|(s, _, _)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "orders got 503 while down"
    );
    for (status, took, retry_after) in &during {
        assert!(
            matches!(*status, StatusCode::CREATED | StatusCode::SERVICE_UNAVAILABLE),
            "unexpected {status}"
        );
        assert!(*took < Duration::from_millis(4_000), "a request hung for {took:?}");
        if *status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(retry_after.as_deref(), Some("1"));
        }
    }

    // What the client read: the problem type and the fixed sentence, nothing of the cause
    // (sqlx's "pool timed out", MariaDB's "Lost connection", an address or a port).
    let bodies = unavailable_bodies.lock().unwrap().clone();
    assert!(!bodies.is_empty());
    for body in &bodies {
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["type"], "/problems/unavailable", "{body}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        // A store failure reads the generic sentence; a commit still in doubt when the
        // request timed out reads the (equally fixed) sentence that says how to retry.
        assert!(
            detail == emporium::http::problem::UNAVAILABLE_DETAIL
                || detail.starts_with("the order was not confirmed in time"),
            "{body}"
        );
        for internal in [
            "pool",
            "timed out",
            "connection",
            "mysql",
            "sqlx",
            "127.0.0.1",
            &proxy.addr.port().to_string(),
        ] {
            assert!(
                !body.to_lowercase().contains(internal),
                "503 body leaks {internal:?}: {body}"
            );
        }
    }

    proxy.restore();
    let restored_at = statuses.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let after = statuses.lock().unwrap()[restored_at..]
            .iter()
            .any(|(s, _, _)| *s == StatusCode::CREATED);
        if after && app.client.get(app.url("/health/ready")).send().await.unwrap().status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    app.assert_consistent().await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in &acknowledged {
        let order = app
            .app
            .store
            .get_order(emporium::domain::ids::OrderId::parse(id).unwrap())
            .await
            .unwrap();
        assert_eq!(
            order.map(|o| o.status.as_str()),
            Some("COMPLETED"),
            "acknowledged order {id}"
        );
    }
    let mut busy_sold = 0i64;
    let mut cursor = None;
    loop {
        let page = app.app.store.list_orders(None, cursor, 1000).await.unwrap();
        busy_sold += page.iter().filter(|o| o.lines[0].sku.as_str() == "BUSY").count() as i64;
        match page.last() {
            Some(last) if page.len() == 1000 => cursor = Some(last.id),
            _ => break,
        }
    }
    assert!(busy_sold >= acknowledged.len() as i64);
    assert_eq!(app.inventory("BUSY").await, (100_000 - busy_sold, 0), "no stock leaked");
}
