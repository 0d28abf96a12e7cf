//! `emporium-bench scale`: memory and activation cost as the number of distinct SKUs
//! grows, with and without the live-actor cap.

use crate::load::{drive, latency, Latency};
use crate::run::{machine, metric, scrape, settle};
use crate::server::{emporium_binary, token, wait_ready, Server};
use anyhow::bail;
use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ scale

#[derive(Parser, Clone)]
pub(crate) struct ScaleArgs {
    /// Where SCALE.md and scale.json go.
    #[arg(long, default_value = "bench-results")]
    pub(crate) out: PathBuf,
    /// SKUs in the store (created as products of 100 variants each).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) skus: u64,
    /// SKUs that take orders (spread evenly over all SKUs).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) hot: u64,
    /// Orders placed on the hot SKUs.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) hot_orders: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// `inventory.idle_passivate_secs` of the server under test.
    #[arg(long, default_value_t = 10)]
    pub(crate) idle_passivate_secs: u64,
}

/// What the scale run measured.
#[derive(Debug, Serialize, Default)]
pub(crate) struct ScaleReport {
    pub(crate) skus: u64,
    pub(crate) hot: u64,
    pub(crate) load_seconds: f64,
    pub(crate) skus_loaded_per_s: f64,
    pub(crate) cold_activation: Latency,
    pub(crate) warm_read: Latency,
    pub(crate) hot_orders: u64,
    pub(crate) hot_orders_per_s: f64,
    pub(crate) hot_order_latency: Latency,
    pub(crate) hot_errors: u64,
    pub(crate) rss_after_hot_mib: f64,
    pub(crate) sweep_seconds: f64,
    pub(crate) sweep_reads: Latency,
    pub(crate) peak_active_sku_actors: f64,
    pub(crate) active_sku_actors_after_idle: f64,
    pub(crate) peak_rss_mib: f64,
    pub(crate) journal_entries: i64,
    pub(crate) orders_in_db: i64,
    pub(crate) recovery_to_ready_seconds: f64,
    pub(crate) first_cold_order_after_restart_ms: f64,
    pub(crate) rss_after_restart_mib: f64,
    pub(crate) verified: String,
}

pub(crate) fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

pub(crate) async fn active_sku_actors(base: &str) -> f64 {
    metric(&scrape(base).await, "emporium_actors_active{actor=\"sku\"}").unwrap_or(0.0)
}

pub(crate) async fn sqlite_count(data_dir: &Path, table: &str) -> anyhow::Result<i64> {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=ro", data_dir.join("emporium.db").display());
    let pool = sqlx::AnyPool::connect(&url).await?;
    let n = sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(n)
}

/// Creates `skus` SKUs as products of 100 variants. Product creation is an admin call, not
/// the hot path: a 503 (the SQLite writer was busy past the acquire timeout) is retried as a
/// client should, and a 409 on a retry means the first attempt did commit. The sweep later
/// reads every SKU, so a product that is really missing fails the run.
pub(crate) async fn load_skus(base: &str, admin: &str, skus: u64, connections: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let products = skus.div_ceil(100);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, next, base, admin) = (client.clone(), next.clone(), base.to_owned(), admin.to_owned());
            tokio::spawn(async move {
                loop {
                    let p = next.fetch_add(1, Ordering::Relaxed);
                    if p >= products {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let variants: Vec<Value> = (p * 100..((p + 1) * 100).min(skus))
                        .map(|i| json!({"sku": scale_sku(i), "stock": 100}))
                        .collect();
                    let body = json!({"name": "규모 시험 상품", "price": {"amount": 1000, "currency": "KRW"}, "variants": variants});
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let status = client
                            .post(format!("{base}/v1/products"))
                            .bearer_auth(&admin)
                            .json(&body)
                            .send()
                            .await?
                            .status()
                            .as_u16();
                        match status {
                            201 => break,
                            409 if attempt > 1 => break,
                            503 if attempt < 10 => tokio::time::sleep(Duration::from_millis(200)).await,
                            other => bail!("creating product {p} answered {other} (attempt {attempt})"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub(crate) fn scale_sku(i: u64) -> String {
    format!("S-{i:07}")
}

pub(crate) async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.hot > 0 && args.hot <= args.skus,
        "--hot must be between 1 and --skus"
    );
    let env = vec![
        ("EMPORIUM__TELEMETRY__LOG_LEVEL".to_owned(), "error".to_owned()),
        ("EMPORIUM__SERVER__REQUEST_TIMEOUT_MS".to_owned(), "30000".to_owned()),
        ("EMPORIUM__PAYMENT__GATEWAY_LATENCY_MS".to_owned(), "1".to_owned()),
        ("EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC".to_owned(), "0".to_owned()),
        (
            "EMPORIUM__INVENTORY__IDLE_PASSIVATE_SECS".to_owned(),
            args.idle_passivate_secs.to_string(),
        ),
    ];
    let serve = ["serve", "--listen", "127.0.0.1:0"];
    let dir = tempfile::tempdir()?;
    let data_path = dir.path().to_owned();
    let server = Server::spawn(&emporium_binary()?, &serve, env.clone(), Some(dir))?;
    wait_ready(&server.base, Duration::from_secs(60)).await?;
    let mut report = ScaleReport {
        skus: args.skus,
        hot: args.hot,
        ..ScaleReport::default()
    };
    let admin = Arc::new(vec![token(&server, "scale-admin", true)?]);

    // 1. The store: `skus` SKUs, 100 variants per product, each journaling its stock.
    eprintln!("  loading {} SKUs", args.skus);
    let started = Instant::now();
    load_skus(&server.base, &admin[0], args.skus, args.connections.min(16)).await?;
    let took = started.elapsed();
    report.load_seconds = took.as_secs_f64();
    report.skus_loaded_per_s = args.skus as f64 / took.as_secs_f64();

    // 2. Activation: the first read of a hot SKU loads its actor from the store; the
    // second is answered by the live actor.
    let stride = args.skus / args.hot;
    let hot: Arc<Vec<String>> = Arc::new((0..args.hot).map(|i| scale_sku(i * stride)).collect());
    let read_hot: Arc<dyn Fn(u64) -> (reqwest::Method, String, Option<Value>) + Send + Sync> = {
        let hot = hot.clone();
        Arc::new(move |i| (reqwest::Method::GET, format!("/v1/inventory/{}", hot[i as usize]), None))
    };
    let buyer = Arc::new(
        (0..args.connections)
            .map(|c| token(&server, &format!("scale-buyer-{c}"), false))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let (cold, _) = drive(
        &server.base,
        args.connections,
        args.hot,
        None,
        buyer.clone(),
        read_hot.clone(),
    )
    .await;
    let (warm, _) = drive(&server.base, args.connections, args.hot, None, buyer.clone(), read_hot).await;
    anyhow::ensure!(cold.other == 0 && warm.other == 0, "inventory reads failed");
    report.cold_activation = latency(&cold.accepted);
    report.warm_read = latency(&warm.accepted);

    // 3. Orders on the hot SKUs only.
    eprintln!("  {} orders on {} hot SKUs", args.hot_orders, args.hot);
    let order_hot: Arc<dyn Fn(u64) -> (reqwest::Method, String, Option<Value>) + Send + Sync> = {
        let hot = hot.clone();
        Arc::new(move |i| {
            let sku = &hot[(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % hot.len() as u64) as usize];
            (
                reqwest::Method::POST,
                "/v1/orders".to_owned(),
                Some(json!({"items": [{"sku": sku, "qty": 1}]})),
            )
        })
    };
    let (orders, took) = drive(
        &server.base,
        args.connections,
        args.hot_orders,
        None,
        buyer.clone(),
        order_hot,
    )
    .await;
    report.hot_orders = orders.accepted_ids;
    report.hot_orders_per_s = orders.accepted_ids as f64 / took.as_secs_f64();
    report.hot_order_latency = latency(&orders.accepted);
    report.hot_errors = orders.other;
    report.rss_after_hot_mib = rss_mib(server.child.id());

    // 4. A sweep over every SKU: each read activates a cold actor, and passivation must
    // keep the live set (and memory) bounded while it runs.
    eprintln!("  reading every SKU once");
    let read_all: Arc<dyn Fn(u64) -> (reqwest::Method, String, Option<Value>) + Send + Sync> =
        Arc::new(|i| (reqwest::Method::GET, format!("/v1/inventory/{}", scale_sku(i)), None));
    // The live set is sampled while the sweep runs.
    let peak_active = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (base, peak_active) = (server.base.clone(), peak_active.clone());
        tokio::spawn(async move {
            loop {
                let now = active_sku_actors(&base).await;
                let _ = peak_active.fetch_max(now as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let started = Instant::now();
    let (sweep, _) = drive(&server.base, args.connections, args.skus, None, buyer.clone(), read_all).await;
    report.sweep_seconds = started.elapsed().as_secs_f64();
    report.sweep_reads = latency(&sweep.accepted);
    anyhow::ensure!(sweep.other == 0, "{} reads of the sweep failed", sweep.other);
    watcher.abort();
    report.peak_active_sku_actors = peak_active.load(Ordering::Relaxed) as f64;
    let idle_deadline = Instant::now() + Duration::from_secs(args.idle_passivate_secs * 4 + 30);
    loop {
        let active = active_sku_actors(&server.base).await;
        report.peak_active_sku_actors = report.peak_active_sku_actors.max(active);
        report.active_sku_actors_after_idle = active;
        if active <= args.hot as f64 || Instant::now() > idle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.peak_rss_mib = server.resources().0;
    settle(&server.base, &hot[..hot.len().min(50)]).await;

    // 5. kill -9 and restart on the same data dir: time until ready.
    let mut server = server;
    let data_dir = server.data_dir.take();
    let _ = server.child.kill();
    let _ = server.child.wait();
    report.journal_entries = sqlite_count(&data_path, "inventory_journal").await?;
    report.orders_in_db = sqlite_count(&data_path, "orders").await?;
    eprintln!(
        "  restarting after kill -9 ({} journal entries)",
        report.journal_entries
    );
    let started = Instant::now();
    let restarted = Server::spawn(&emporium_binary()?, &serve, env.clone(), data_dir)?;
    wait_ready(&restarted.base, Duration::from_secs(600)).await?;
    report.recovery_to_ready_seconds = started.elapsed().as_secs_f64();
    let cold_sku = scale_sku(args.skus - 1);
    let started = Instant::now();
    let first = reqwest::Client::new()
        .post(format!("{}/v1/orders", restarted.base))
        .bearer_auth(&buyer[0])
        .json(&json!({"items": [{"sku": cold_sku, "qty": 1}]}))
        .send()
        .await?;
    anyhow::ensure!(
        first.status() == 201,
        "first order after restart answered {}",
        first.status()
    );
    report.first_cold_order_after_restart_ms = started.elapsed().as_secs_f64() * 1000.0;
    report.rss_after_restart_mib = rss_mib(restarted.child.id());
    settle(&restarted.base, std::slice::from_ref(&cold_sku)).await;

    // 6. Verify offline.
    let mut restarted = restarted;
    let data_dir = restarted.data_dir.take();
    restarted.stop();
    let mut cmd = Command::new(emporium_binary()?);
    cmd.arg("reconcile").envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &data_dir {
        cmd.arg("--data-dir").arg(dir.path());
    }
    let out = cmd.output()?;
    report.verified = if out.status.success() {
        "reconcile ok".into()
    } else {
        format!(
            "RECONCILE FAILED: {}",
            String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("")
        )
    };

    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("scale.json"),
        serde_json::to_string_pretty(&json!({"machine": machine(), "report": &report}))?,
    )?;
    let table = scale_markdown(&report);
    std::fs::write(args.out.join("SCALE.md"), format!("Machine: {}\n\n{table}", machine()))?;
    println!("{table}");
    anyhow::ensure!(report.verified == "reconcile ok", "{}", report.verified);
    anyhow::ensure!(report.hot_errors == 0, "{} hot orders failed", report.hot_errors);
    Ok(())
}

pub(crate) fn scale_markdown(r: &ScaleReport) -> String {
    let lat = |l: &Latency| format!("p50 {:.2} / p99 {:.2} / max {:.1} ms", l.p50_ms, l.p99_ms, l.max_ms);
    [
        format!(
            "| SKUs in the store | {} (loaded at {:.0} SKUs/s, {:.0} s) |",
            r.skus, r.skus_loaded_per_s, r.load_seconds
        ),
        format!("| hot SKUs | {} |", r.hot),
        format!(
            "| first read of a hot SKU (actor activation) | {} |",
            lat(&r.cold_activation)
        ),
        format!("| second read (live actor) | {} |", lat(&r.warm_read)),
        format!(
            "| orders on hot SKUs | {} at {:.0}/s, {} ({} errors) |",
            r.hot_orders,
            r.hot_orders_per_s,
            lat(&r.hot_order_latency),
            r.hot_errors
        ),
        format!("| RSS with the hot set live | {:.0} MiB |", r.rss_after_hot_mib),
        format!(
            "| sweep: one read of every SKU | {:.0} s, {} |",
            r.sweep_seconds,
            lat(&r.sweep_reads)
        ),
        format!(
            "| live SKU actors: peak seen / after idle | {:.0} / {:.0} |",
            r.peak_active_sku_actors, r.active_sku_actors_after_idle
        ),
        format!("| peak RSS of the whole run | {:.0} MiB |", r.peak_rss_mib),
        format!(
            "| journal entries / orders at kill -9 | {} / {} |",
            r.journal_entries, r.orders_in_db
        ),
        format!(
            "| restart: process start to /health/ready 200 | {:.2} s |",
            r.recovery_to_ready_seconds
        ),
        format!(
            "| first order on a cold SKU after restart | {:.1} ms |",
            r.first_cold_order_after_restart_ms
        ),
        format!("| RSS after restart | {:.0} MiB |", r.rss_after_restart_mib),
        format!("| verified | {} |", r.verified),
    ]
    .iter()
    .fold("| measure | value |\n|---|---|\n".to_owned(), |acc, l| acc + l + "\n")
}
