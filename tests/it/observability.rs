//! Every metric the Grafana dashboard and the alert rules query exists in a live
//! `/metrics` scrape after a flash sale, and the scrape is valid Prometheus text.

use crate::common;
use std::time::Duration;

use common::{Backend, TestApp};
use serde_json::json;
use std::collections::BTreeSet;

/// `emporium_*` metric families named in a dashboard or rules file.
fn families_used_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("emporium_") {
        let start = i + at;
        let preceded_by_word = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if !preceded_by_word {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_metrics_exist_after_a_flash_sale() {
    let app = TestApp::spawn_with(Backend::Sqlite, |s| s.inventory.idle_passivate = Duration::from_secs(0)).await;
    app.product(&[("OBS", 3)]).await;
    let buyer = app.token("watcher");
    let mut placed = Vec::new();
    for token in ["test_ok", "test_ok", "test_decline", "test_ok", "test_ok"] {
        let (status, body) = app
            .order(
                &buyer,
                json!({"items": [{"sku": "OBS", "qty": 1}], "payment": {"token": token}}),
            )
            .await;
        if status == 201 {
            placed.push(body["id"].as_str().unwrap().to_owned());
        }
    }
    for id in &placed {
        app.final_status(&buyer, id).await;
    }
    app.assert_consistent().await;

    let scrape = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let root = env!("CARGO_MANIFEST_DIR");
    // Exported only by a Kafka consumer (payment.mode = kafka), which this embedded server
    // does not run: their series are per group and partition, so there is nothing to show
    // before an assignment. They must still be registered; tests/it/consumer_lag.rs and
    // scripts/prometheus-check.sh scrape them live from real consumers.
    const KAFKA_CONSUMER_ONLY: [&str; 5] = [
        "emporium_consumer_committed_offset",
        "emporium_consumer_end_offset",
        "emporium_consumer_lag_messages",
        "emporium_consumer_lag_seconds",
        "emporium_consumer_rebalances_total",
    ];
    let telemetry = std::fs::read_to_string(format!("{root}/src/telemetry.rs")).unwrap();
    for name in KAFKA_CONSUMER_ONLY {
        assert!(telemetry.contains(&format!("\"{name}\"")), "{name} is not registered");
    }
    for file in ["dashboards/emporium.json", "config/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let used = families_used_in(&text);
        assert!(used.len() > 5, "{file} queries emporium metrics");
        let missing: Vec<_> = used
            .difference(&exported)
            .filter(|name| !KAFKA_CONSUMER_ONLY.contains(&name.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics the server does not export: {missing:?}"
        );
    }
    for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample line: {line}");
    }
}
