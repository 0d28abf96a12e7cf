//! `emporium-bench sqlite-writers`: what one group commit of accepted orders costs SQLite
//! through each way the write-behind could send it, on the project's own schema with the
//! server's pragmas (WAL, `synchronous = FULL`: every commit is fsynced).
//!
//! Each way commits the same rows, `--batch` accepted one-SKU orders per transaction (an
//! order, its line, its reservation, its journal entry, its two events in the batch's
//! outbox rows (a JSON array per 64 events, as the server writes them), and one
//! coalesced snapshot update per commit), for `--seconds`:
//! - `sqlx-json`: the write path before: one statement per table whose rows are one bound
//!   JSON array expanded by `json_each`, through sqlx's `Any` driver;
//! - `sqlx-values`: the write path now: prepared multi-row `VALUES` statements of fixed
//!   sizes, through sqlx's `Any` driver (its SQLite worker thread);
//! - `rusqlite`: the same statements through `rusqlite` on the calling thread (what a
//!   dedicated writer thread would do), no async driver in between.
//!
//! CPU is the whole process's (`/proc/self/stat`), so sqlx's worker thread is counted.

use crate::table::cpu_seconds;
use clap::Parser;
use serde_json::json;
use sqlx::{Any, Connection};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
pub struct SqliteWritersArgs {
    /// Orders per commit (the write-behind's batch under load was ~60).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seconds per way.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
}

/// One accepted order's rows, as the write-behind would write them.
struct OrderRows {
    id: String,
    user: String,
    bodies: [String; 2],
    seq: i64,
    at: i64,
}

fn orders(batch: usize, next_seq: &mut i64) -> Vec<OrderRows> {
    let at = chrono_millis();
    (0..batch)
        .map(|i| {
            *next_seq += 1;
            let id = uuid::Uuid::new_v4().to_string();
            let event_ids = [uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string()];
            let body = |kind: &str, event: &str| {
                json!({"id": event, "type": kind, "aggregate_id": id, "occurred_at": at, "schema_version": 1,
                       "traceparent": null, "data": {"order_id": id, "user_id": format!("user-{i}"),
                       "items": [{"sku": "HOT", "qty": 1, "unit_price": {"amount": 1000, "currency": "KRW"}}],
                       "total": {"amount": 1000, "currency": "KRW"}}})
                .to_string()
            };
            let bodies = [
                body("order_created", &event_ids[0]),
                body("inventory_reserved", &event_ids[1]),
            ];
            OrderRows {
                user: format!("user-{i}"),
                seq: *next_seq,
                at,
                id,
                bodies,
            }
        })
        .collect()
}

fn chrono_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One way's result.
struct Measured {
    way: &'static str,
    orders: u64,
    commits: u64,
    seconds: f64,
    cpu_seconds: f64,
}

async fn prepare(dir: &Path) -> anyhow::Result<String> {
    let url = format!("sqlite://{}?mode=rwc", dir.join("writers.db").display());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await?;
    for pragma in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
    ] {
        sqlx::query(pragma).execute(&mut conn).await?;
    }
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
    sqlx::migrate::Migrator::new(migrations).await?.run(&mut conn).await?;
    sqlx::raw_sql(
        "INSERT INTO products (id, doc, created_at, updated_at) VALUES ('p', '{}', 0, 0);
         INSERT INTO skus (sku, product_id, price_amount, currency) VALUES ('HOT', 'p', 1000, 'KRW');
         INSERT INTO inventory (sku, stock, reserved, seq, updated_at) VALUES ('HOT', 1000000000000, 0, 0, 0);",
    )
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(url)
}

const JSON_STATEMENTS: [&str; 5] = [
    "INSERT INTO orders (id, user_id, status, total_amount, currency, payment_token, cancel_reason, created_at, updated_at, expires_at) \
     SELECT value->>0, value->>1, 'PENDING_PAYMENT', 1000, 'KRW', 'test_ok', NULL, value->>2, value->>2, value->>2 FROM json_each(?) ORDER BY key",
    "INSERT INTO order_items (order_id, line, sku, qty, unit_amount) SELECT value->>0, 0, 'HOT', 1, 1000 FROM json_each(?) ORDER BY key",
    "INSERT INTO inventory_journal (sku, seq, kind, order_id, qty, stock_delta, reserved_delta, created_at) \
     SELECT 'HOT', value->>1, 'reserve', value->>0, 1, 0, 1, value->>2 FROM json_each(?) ORDER BY key",
    "INSERT INTO reservations (sku, order_id, qty, expires_at) SELECT 'HOT', value->>0, 1, value->>2 FROM json_each(?) ORDER BY key",
    "INSERT INTO outbox (events, body, created_at) SELECT value->>0, value->>1, value->>2 FROM json_each(?) ORDER BY key",
];

/// Events per outbox row, as in the server (`outbox::EVENTS_PER_ROW`).
const EVENTS_PER_ROW: usize = 64;

/// The outbox rows of a batch, as the server writes them: its events in order, a JSON
/// array per [`EVENTS_PER_ROW`], with their count.
fn outbox_rows(batch: &[OrderRows]) -> Vec<(i64, String)> {
    let bodies: Vec<&str> = batch.iter().flat_map(|o| o.bodies.iter().map(String::as_str)).collect();
    bodies
        .chunks(EVENTS_PER_ROW)
        .map(|chunk| (chunk.len() as i64, format!("[{}]", chunk.join(","))))
        .collect()
}

const SNAPSHOT: &str = "UPDATE inventory SET reserved = reserved + ?, seq = ?, updated_at = ? WHERE sku = 'HOT'";

/// The multi-row statements for `n` orders (a fixed text per `n`).
fn values_statements(n: usize) -> [String; 5] {
    let tuples = |width: usize, rows: usize| vec![format!("({})", vec!["?"; width].join(", ")); rows].join(", ");
    [
        format!(
            "INSERT INTO orders (id, user_id, status, total_amount, currency, payment_token, cancel_reason, created_at, updated_at, expires_at) VALUES {}",
            tuples(10, n)
        ),
        format!("INSERT INTO order_items (order_id, line, sku, qty, unit_amount) VALUES {}", tuples(5, n)),
        format!(
            "INSERT INTO inventory_journal (sku, seq, kind, order_id, qty, stock_delta, reserved_delta, created_at) VALUES {}",
            tuples(8, n)
        ),
        format!("INSERT INTO reservations (sku, order_id, qty, expires_at) VALUES {}", tuples(4, n)),
        format!(
            "INSERT INTO outbox (events, body, created_at) VALUES {}",
            tuples(3, (2 * n).div_ceil(EVENTS_PER_ROW))
        ),
    ]
}

async fn sqlx_json(url: &str, args: &SqliteWritersArgs) -> anyhow::Result<Measured> {
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    sqlx::query("PRAGMA synchronous = FULL").execute(&mut conn).await?;
    let mut seq = 0;
    let mut timer = Timer::start("sqlx-json");
    while timer.running(args) {
        let batch = orders(args.batch, &mut seq);
        {
            let at = batch[0].at;
            let last = batch[batch.len() - 1].seq;
            let per_order: Vec<_> = batch.iter().map(|o| json!([o.id, o.user, o.at])).collect();
            let journal: Vec<_> = batch.iter().map(|o| json!([o.id, o.seq, o.at])).collect();
            let events: Vec<_> = outbox_rows(&batch)
                .into_iter()
                .map(|(count, body)| json!([count, body, at]))
                .collect();
            let bound = [&per_order, &per_order, &journal, &per_order, &events].map(|rows| json!(rows).to_string());
            let mut tx = conn.begin().await?;
            for (sql, rows) in JSON_STATEMENTS.iter().zip(bound) {
                sqlx::query::<Any>(sql).bind(rows).execute(&mut *tx).await?;
            }
            sqlx::query::<Any>(SNAPSHOT)
                .bind(batch.len() as i64)
                .bind(last)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        timer.committed(batch.len());
    }
    Ok(timer.done())
}

/// One bound value of the multi-row statements.
enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Null,
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Int(n) => ValueRef::Integer(*n),
            Value::Null => ValueRef::Null,
        }))
    }
}

/// The values of [`values_statements`]' five statements for `batch`, in column order:
/// both the sqlx and the rusqlite way bind exactly these.
fn statement_values<'a>(batch: &'a [OrderRows], outbox: &'a [(i64, String)]) -> [Vec<Value<'a>>; 5] {
    use Value::{Int, Null, Text};
    let mut values: [Vec<Value<'a>>; 5] = Default::default();
    for o in batch {
        let at = o.at;
        values[0].extend([
            Text(&o.id),
            Text(&o.user),
            Text("PENDING_PAYMENT"),
            Int(1000),
            Text("KRW"),
        ]);
        values[0].extend([Text("test_ok"), Null, Int(at), Int(at), Int(at)]);
        values[1].extend([Text(&o.id), Int(0), Text("HOT"), Int(1), Int(1000)]);
        values[2].extend([
            Text("HOT"),
            Int(o.seq),
            Text("reserve"),
            Text(&o.id),
            Int(1),
            Int(0),
            Int(1),
            Int(at),
        ]);
        values[3].extend([Text("HOT"), Text(&o.id), Int(1), Int(at)]);
    }
    let at = batch.first().map_or(0, |o| o.at);
    for (count, body) in outbox {
        values[4].extend([Int(*count), Text(body), Int(at)]);
    }
    values
}

async fn sqlx_values(url: &str, args: &SqliteWritersArgs) -> anyhow::Result<Measured> {
    let mut conn = sqlx::AnyConnection::connect(url).await?;
    sqlx::query("PRAGMA synchronous = FULL").execute(&mut conn).await?;
    let texts = values_statements(args.batch);
    let mut seq = 500_000_000;
    let mut timer = Timer::start("sqlx-values");
    while timer.running(args) {
        let batch = orders(args.batch, &mut seq);
        let outbox = outbox_rows(&batch);
        let values = statement_values(&batch, &outbox);
        let mut tx = conn.begin().await?;
        for (text, values) in texts.iter().zip(&values) {
            let mut q = sqlx::query::<Any>(text);
            for v in values {
                q = match v {
                    Value::Text(t) => q.bind(*t),
                    Value::Int(n) => q.bind(*n),
                    Value::Null => q.bind(None::<&str>),
                };
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query::<Any>(SNAPSHOT)
            .bind(batch.len() as i64)
            .bind(batch[batch.len() - 1].seq)
            .bind(batch[0].at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        timer.committed(batch.len());
    }
    Ok(timer.done())
}

fn rusqlite_values(path: &Path, args: &SqliteWritersArgs) -> anyhow::Result<Measured> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let texts = values_statements(args.batch);
    let mut seq = 1_000_000_000;
    let mut timer = Timer::start("rusqlite");
    while timer.running(args) {
        let batch = orders(args.batch, &mut seq);
        let outbox = outbox_rows(&batch);
        let values = statement_values(&batch, &outbox);
        let tx = conn.transaction()?;
        for (text, values) in texts.iter().zip(&values) {
            tx.prepare_cached(text)?.execute(rusqlite::params_from_iter(values))?;
        }
        tx.prepare_cached(SNAPSHOT)?.execute(rusqlite::params![
            batch.len() as i64,
            batch[batch.len() - 1].seq,
            batch[0].at
        ])?;
        tx.commit()?;
        timer.committed(batch.len());
    }
    Ok(timer.done())
}

/// Counts one way's commits, its wall time and the process's CPU time.
struct Timer {
    way: &'static str,
    started: Instant,
    cpu: f64,
    orders: u64,
    commits: u64,
}

impl Timer {
    fn start(way: &'static str) -> Self {
        Self {
            way,
            started: Instant::now(),
            cpu: cpu_seconds(std::process::id()),
            orders: 0,
            commits: 0,
        }
    }

    fn running(&self, args: &SqliteWritersArgs) -> bool {
        self.started.elapsed() < Duration::from_secs(args.seconds)
    }

    fn committed(&mut self, orders: usize) {
        self.orders += orders as u64;
        self.commits += 1;
    }

    fn done(self) -> Measured {
        Measured {
            way: self.way,
            orders: self.orders,
            commits: self.commits,
            seconds: self.started.elapsed().as_secs_f64(),
            cpu_seconds: cpu_seconds(std::process::id()) - self.cpu,
        }
    }
}

pub async fn sqlite_writers(args: SqliteWritersArgs) -> anyhow::Result<()> {
    // A fresh database per way: a table that already holds the previous way's rows would
    // make every later way pay for bigger B-trees.
    let (json_dir, values_dir, rusqlite_dir) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let mut results = vec![
        sqlx_json(&prepare(json_dir.path()).await?, &args).await?,
        sqlx_values(&prepare(values_dir.path()).await?, &args).await?,
    ];
    prepare(rusqlite_dir.path()).await?;
    let path = rusqlite_dir.path().join("writers.db");
    let a = args.clone();
    results.push(tokio::task::spawn_blocking(move || rusqlite_values(&path, &a)).await??);
    println!(
        "SQLite, WAL, synchronous = FULL, {} one-SKU orders per commit, {} s per way, {}",
        args.batch,
        args.seconds,
        crate::run::machine()
    );
    println!();
    println!("| way | orders/s | commits/s | mean commit ms | process CPU µs per order |");
    println!("|---|---|---|---|---|");
    for m in &results {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.1} |",
            m.way,
            m.orders as f64 / m.seconds,
            m.commits as f64 / m.seconds,
            m.seconds * 1000.0 / m.commits.max(1) as f64,
            m.cpu_seconds * 1e6 / m.orders.max(1) as f64
        );
    }
    Ok(())
}
