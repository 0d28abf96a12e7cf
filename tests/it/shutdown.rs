//! Graceful shutdown: SIGTERM during a flash sale. The server stops taking orders,
//! finishes in-flight requests, flushes the write-behind queue and the outbox, and
//! exits on its own within the grace period; nothing it acknowledged is lost.

use crate::common;

use common::process::{self, wait_ready, Process};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_flash_sale_loses_nothing_acknowledged() {
    let _serial = common::process::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let Process { mut child, base } = Process::serve(
        dir.path(),
        &[
            ("EMPORIUM__SERVER__SHUTDOWN_GRACE_SECS", "10"),
            // One user places every order here; the rate limits are tested in access_control.rs.
            ("EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC", "0"),
        ],
    );
    let client = reqwest::Client::new();
    wait_ready(&client, &base, Duration::from_secs(20)).await;
    let admin = process::token(dir.path(), &[], "admin", true);
    let r = client
        .post(format!("{base}/v1/products"))
        .bearer_auth(&admin)
        .json(&json!({"name": "sale", "price": {"amount": 10, "currency": "KRW"}, "variants": [{"sku": "TERM", "stock": 300}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let answers = Arc::new(Mutex::new(Vec::<StatusCode>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let user = process::token(dir.path(), &[], "term-buyer", false);
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (client, base, user) = (client.clone(), base.clone(), user.clone());
            let (acknowledged, answers, stop) = (acknowledged.clone(), answers.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let body = json!({"items": [{"sku": "TERM", "qty": 1}]});
                    let Ok(r) = client
                        .post(format!("{base}/v1/orders"))
                        .bearer_auth(&user)
                        .json(&body)
                        .send()
                        .await
                    else {
                        return; // the listener is closed: the server is going away
                    };
                    let status = r.status();
                    answers.lock().unwrap().push(status);
                    if status == StatusCode::CREATED {
                        let body: Value = r.json().await.unwrap();
                        acknowledged
                            .lock()
                            .unwrap()
                            .push(body["id"].as_str().unwrap().to_owned());
                    }
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(12),
            "did not exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    for status in answers.lock().unwrap().iter() {
        assert!(
            matches!(
                *status,
                StatusCode::CREATED | StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
            ),
            "unexpected answer during shutdown: {status}"
        );
    }

    // The write-behind and the outbox were flushed before exit.
    let db = format!("sqlite://{}?mode=ro", dir.path().join("emporium.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db).await.unwrap();
    let unpublished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published = 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unpublished, 0, "outbox flushed on shutdown");
    let acknowledged = acknowledged.lock().unwrap().clone();
    for id in &acknowledged {
        let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE id = ?")
            .bind(id.clone())
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(found, 1, "acknowledged order {id} is durable");
    }
    pool.close().await;
    process::assert_reconciles(dir.path(), &[]);
}
