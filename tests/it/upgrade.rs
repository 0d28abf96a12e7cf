//! Upgrading a store keeps its outbox. Before SQLite migration 0006 (MariaDB 0009) each
//! outbox row was one event with `published_at`; after 0006 and 0007 (0009 and 0010) a row
//! holds a transaction's events as a JSON array and a `published` flag. A store written
//! by the old schema must come out with every event, in order, each published one still
//! published and each pending one relayed.
use crate::common;
use common::Backend;
use emporium::domain::events::{Event, EventType};
use emporium::events::outbox::OutboxRelay;
use emporium::events::InProcessBus;
use emporium::persistence::sql::StoreOptions;
use emporium::persistence::SqlStore;
use emporium::telemetry::Metrics;
use sqlx::Connection;
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

crate::on_every_backend!(an_outbox_written_before_the_upgrade_is_relayed_after_it);

/// The last migration with one outbox row per event, and the engine's migrations.
fn before_outbox_rows(backend: &Backend) -> (i64, &'static str) {
    match backend {
        Backend::Sqlite => (5, "migrations/sqlite"),
        _ => (8, "migrations/mysql"),
    }
}

fn event(order: &str) -> Event {
    Event::new(
        EventType::OrderCreated,
        order,
        1_765_000_000_000,
        None,
        serde_json::json!({"order_id": order}),
    )
}

async fn an_outbox_written_before_the_upgrade_is_relayed_after_it(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = match backend.store_url().await {
        Some(url) => url,
        None => format!("sqlite:{}?mode=rwc", dir.path().join("old.db").display()),
    };

    // The schema as it was: the migrations up to the last one before the change, alone.
    // (`migrations` is a public field sqlx keeps for its macro; sqlx is pinned by
    // Cargo.lock.)
    let (last_old, migrations) = before_outbox_rows(&backend);
    let mut old = sqlx::migrate::Migrator::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(migrations))
        .await
        .expect("migrations readable");
    old.migrations = Cow::Owned(
        old.migrations
            .iter()
            .filter(|m| m.version <= last_old)
            .cloned()
            .collect(),
    );
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("store");
    old.run(&mut conn).await.expect("old migrations");
    let (published, pending) = (event("order-1"), event("order-2"));
    for (event, published_at) in [(&published, Some(1_765_000_000_001_i64)), (&pending, None)] {
        sqlx::query(
            "INSERT INTO outbox (event_id, event_type, aggregate_id, body, created_at, published_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(event.id.to_string())
        .bind("order_created")
        .bind(&event.aggregate_id)
        .bind(serde_json::to_string(event).expect("event JSON"))
        .bind(1_765_000_000_000_i64)
        .bind(published_at)
        .execute(&mut conn)
        .await
        .expect("an old outbox row");
    }
    conn.close().await.expect("close");

    // The server's own upgrade: every later migration.
    let store = SqlStore::connect(
        &url,
        &StoreOptions {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(5),
            sqlite_synchronous: "full".into(),
            lock_timeouts_secs: None,
        },
    )
    .await
    .expect("store");
    store.migrate().await.expect("the upgrade");

    let ids: Vec<String> = common::outbox_events(&url)
        .await
        .iter()
        .map(|(_, e)| e["id"].as_str().expect("an event id").to_owned())
        .collect();
    assert_eq!(
        ids,
        [published.id.to_string(), pending.id.to_string()],
        "every event, in order"
    );
    assert_eq!(
        store.outbox_backlog().await.expect("backlog"),
        1,
        "only the pending one waits"
    );

    let settings = common::test_settings(dir.path());
    let bus = Arc::new(InProcessBus::default());
    let mut delivered = bus.subscribe();
    let relay = OutboxRelay::new(
        store.clone(),
        bus,
        settings.outbox.clone(),
        Arc::new(Metrics::new().expect("metrics")),
    );
    assert_eq!(relay.drain().await.expect("relay"), 1);
    assert_eq!(delivered.try_recv().expect("the pending event").id, pending.id);
    assert!(delivered.try_recv().is_err(), "the published one is not sent again");
    assert_eq!(store.outbox_backlog().await.expect("backlog"), 0);
    common::drop_database(&url).await;
}
