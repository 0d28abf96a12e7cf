//! `emporium-bench run`: every strategy through every scenario, verified afterwards
//! (`emporium reconcile`, units sold ≤ stock), written as `BENCH.md` and `bench.json`.

use crate::load::{drive, latency, Latency};
use crate::server::{emporium_binary, mysql_exec, start_strategy, token, Server, Strategy};
use crate::RunArgs;
use anyhow::bail;
use serde::Serialize;
use serde_json::{json, Value};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize, Clone, Default)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) strategy: String,
    pub(crate) attempts: u64,
    pub(crate) seconds: f64,
    pub(crate) attempts_per_s: f64,
    pub(crate) accepted: u64,
    pub(crate) accepted_per_s: f64,
    pub(crate) accepted_latency: Latency,
    pub(crate) sold_out_latency: Latency,
    pub(crate) errors: u64,
    pub(crate) oversold: i64,
    pub(crate) orders_in_db: Option<i64>,
    pub(crate) avg_orders_per_commit: Option<f64>,
    pub(crate) max_commit_batch_bucket: Option<f64>,
    pub(crate) peak_rss_mib: f64,
    pub(crate) cpu_seconds: f64,
    pub(crate) verified: String,
}

pub(crate) async fn scrape(base: &str) -> String {
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The largest batch-size bucket that saw any commit.
pub(crate) fn max_batch_bucket(text: &str) -> Option<f64> {
    let mut previous = 0.0;
    let mut largest = None;
    for line in text
        .lines()
        .filter(|l| l.starts_with("emporium_write_behind_batch_size_bucket"))
    {
        let le = line.split("le=\"").nth(1)?.split('"').next()?;
        let count: f64 = line.rsplit(' ').next()?.parse().ok()?;
        if count > previous && le != "+Inf" {
            largest = le.parse().ok();
        }
        previous = count;
    }
    largest
}

pub(crate) async fn settle(base: &str, skus: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for sku in skus {
        while Instant::now() < deadline {
            let v: Value = match reqwest::get(format!("{base}/v1/inventory/{sku}")).await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            if v["reserved"] == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub(crate) async fn count_orders(server: &Server, database: &Option<String>) -> Option<i64> {
    let url = match database {
        Some(url) => url.clone(),
        None => format!(
            "sqlite://{}?mode=ro",
            server.data_dir.as_ref()?.path().join("emporium.db").display()
        ),
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.ok()?;
    let n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .ok();
    pool.close().await;
    n
}

pub(crate) async fn create_products(server: &Server, admin: &str, skus: &[(String, i64)]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for chunk in skus.chunks(100) {
        let variants: Vec<Value> = chunk
            .iter()
            .map(|(sku, stock)| json!({"sku": sku, "stock": stock}))
            .collect();
        let r = client
            .post(format!("{}/v1/products", server.base))
            .bearer_auth(admin)
            .json(&json!({"name": "벤치마크 상품", "price": {"amount": 1000, "currency": "KRW"}, "variants": variants}))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("product creation answered {}", r.status());
        }
    }
    Ok(())
}

pub(crate) async fn run_one(
    strategy: &Strategy,
    scenario: &str,
    args: &RunArgs,
    half_of: Option<f64>,
) -> anyhow::Result<Row> {
    let (server, database) = start_strategy(strategy, args).await?;
    let is_emporium = !matches!(strategy.name, "bare" | "redis-lua");
    let (skus, attempts): (Vec<(String, i64)>, u64) = match scenario {
        "uniform" | "mixed" => (
            (0..10_000).map(|i| (format!("U-{i:05}"), 100)).collect(),
            args.uniform_attempts,
        ),
        _ => (vec![("FLASH".to_owned(), args.stock)], args.attempts),
    };
    let mut tokens = vec!["none".to_owned()];
    let mut product_ids = Vec::new();
    if is_emporium {
        let admin = token(&server, "bench-admin", true)?;
        create_products(&server, &admin, &skus).await?;
        tokens = (0..args.connections)
            .map(|c| token(&server, &format!("buyer-{c}"), false))
            .collect::<Result<_, _>>()?;
        if scenario == "mixed" {
            // Product ids for reads: list them through one order's view is not possible; read back via inventory only.
            product_ids = skus.iter().map(|(s, _)| s.clone()).collect();
        }
    }
    let sku_names: Arc<Vec<String>> = Arc::new(skus.iter().map(|(s, _)| s.clone()).collect());
    let reads = Arc::new(product_ids);
    let scenario_owned = scenario.to_owned();
    let request: Arc<dyn Fn(u64) -> (reqwest::Method, String, Option<Value>) + Send + Sync> = Arc::new(move |i| {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        match scenario_owned.as_str() {
            "uniform" | "mixed" => {
                // Mixed: 80 % reads, half of them live stock of a SKU and half a product
                // search (full text with facets, as a storefront's listing page does).
                if scenario_owned == "mixed" && rnd() % 10 < 8 && !reads.is_empty() {
                    if rnd() % 2 == 0 {
                        return (reqwest::Method::GET, "/v1/search?q=벤치마크&size=20".to_owned(), None);
                    }
                    let sku = &reads[(rnd() % reads.len() as u64) as usize];
                    return (reqwest::Method::GET, format!("/v1/inventory/{sku}"), None);
                }
                let lines = 1 + rnd() % 3;
                let mut chosen: Vec<&String> = Vec::new();
                while (chosen.len() as u64) < lines {
                    let s = &sku_names[(rnd() % sku_names.len() as u64) as usize];
                    if !chosen.contains(&s) {
                        chosen.push(s);
                    }
                }
                let items: Vec<Value> = chosen.iter().map(|s| json!({"sku": s, "qty": 1})).collect();
                (
                    reqwest::Method::POST,
                    "/v1/orders".to_owned(),
                    Some(json!({"items": items})),
                )
            }
            _ => (
                reqwest::Method::POST,
                "/v1/orders".to_owned(),
                Some(json!({"items": [{"sku": "FLASH", "qty": 1}]})),
            ),
        }
    });
    let rate = half_of.map(|peak| peak / 2.0);
    let attempts = match rate {
        Some(rate) => (rate * 20.0) as u64, // twenty seconds at half of peak
        None => attempts,
    };
    eprintln!(
        "  {} / {scenario}: {attempts} attempts, {} connections{}",
        strategy.name,
        args.connections,
        rate.map(|r| format!(", open loop at {r:.0}/s")).unwrap_or_default()
    );
    let (rec, took) = drive(
        &server.base,
        args.connections,
        attempts,
        rate,
        Arc::new(tokens),
        request,
    )
    .await;

    let mut row = Row {
        scenario: scenario.to_owned(),
        strategy: strategy.name.to_owned(),
        attempts,
        seconds: took.as_secs_f64(),
        attempts_per_s: attempts as f64 / took.as_secs_f64(),
        accepted: rec.accepted_ids,
        accepted_per_s: rec.accepted_ids as f64 / took.as_secs_f64(),
        accepted_latency: latency(&rec.accepted),
        sold_out_latency: latency(&rec.sold_out),
        errors: rec.other,
        ..Row::default()
    };
    let (rss, cpu) = server.resources();
    row.peak_rss_mib = rss;
    row.cpu_seconds = cpu;
    if scenario == "flash" && !is_emporium {
        row.oversold = (rec.accepted_ids as i64 - args.stock).max(0);
        row.verified = if strategy.name == "bare" {
            "n/a (constant answer)".into()
        } else {
            "count only: nothing durable".into()
        };
    }
    if is_emporium {
        let metrics = scrape(&server.base).await;
        let (sum, count) = (
            metric(&metrics, "emporium_write_behind_batch_size_sum"),
            metric(&metrics, "emporium_write_behind_batch_size_count"),
        );
        row.avg_orders_per_commit = sum.zip(count).filter(|(_, c)| *c > 0.0).map(|(s, c)| s / c);
        row.max_commit_batch_bucket = max_batch_bucket(&metrics);
        settle(
            &server.base,
            &skus.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>()[..skus.len().min(50)],
        )
        .await;
        row.orders_in_db = count_orders(&server, &database).await;
        let stock_total: i64 = skus.iter().map(|(_, s)| s).sum();
        let sold_units = if scenario == "flash" {
            row.orders_in_db.unwrap_or(0)
        } else {
            0
        };
        row.oversold = (sold_units - stock_total).max(0);
        let server_env = server.env.clone();
        // Keep the data dir alive past the server: reconcile reads it offline.
        let mut server = server;
        let data_dir = server.data_dir.take();
        server.stop();
        let mut cmd = Command::new(emporium_binary()?);
        cmd.arg("reconcile").envs(server_env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &data_dir {
            cmd.arg("--data-dir").arg(dir.path());
        }
        let out = cmd.output()?;
        row.verified = if out.status.success() {
            "reconcile ok".into()
        } else {
            format!(
                "RECONCILE FAILED: {}",
                String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("")
            )
        };
        if let Some(url) = database {
            if let Some((server_url, name)) = url.rsplit_once('/') {
                let _ = mysql_exec(server_url, &format!("DROP DATABASE IF EXISTS {name}")).await;
            }
        }
    } else {
        server.stop();
    }
    Ok(row)
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let all = [
        Strategy {
            name: "bare",
            store: "-",
        },
        Strategy {
            name: "actor-sqlite",
            store: "sqlite",
        },
        Strategy {
            name: "actor-mysql",
            store: "mysql",
        },
        Strategy {
            name: "row-lock-mysql",
            store: "mysql",
        },
        Strategy {
            name: "redis-lua",
            store: "redis",
        },
    ];
    let wanted: Vec<&str> = args.strategies.split(',').map(str::trim).collect();
    let scenarios: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let mut failed: Vec<String> = Vec::new();
    let strategies: Vec<&Strategy> = all.iter().filter(|s| wanted.contains(&s.name)).collect();
    let mut rows = Vec::new();
    for scenario in ["flash", "uniform", "mixed"]
        .into_iter()
        .filter(|s| scenarios.contains(s))
    {
        for s in &strategies {
            if scenario != "flash" && matches!(s.name, "bare" | "redis-lua") {
                continue; // the yardsticks only model the single-SKU sale
            }
            match run_one(s, scenario, &args, None).await {
                Ok(row) => rows.push(row),
                Err(e) => {
                    eprintln!("  {} / {scenario} failed: {e:#}", s.name);
                    failed.push(format!("{} / {scenario}", s.name));
                }
            }
        }
    }
    if scenarios.contains(&"half-load") {
        for s in strategies.iter().filter(|s| s.name.starts_with("actor")) {
            let peak = rows
                .iter()
                .find(|r| r.scenario == "flash" && r.strategy == s.name)
                .map(|r| r.attempts_per_s);
            if let Some(peak) = peak {
                match run_one(s, "flash", &args, Some(peak)).await {
                    Ok(mut row) => {
                        row.scenario = "flash@half-peak".into();
                        rows.push(row);
                    }
                    Err(e) => {
                        eprintln!("  {} / half-load failed: {e:#}", s.name);
                        failed.push(format!("{} / half-load", s.name));
                    }
                }
            }
        }
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_string_pretty(&json!({
            "machine": machine(),
            "args": {"attempts": args.attempts, "connections": args.connections, "stock": args.stock, "uniform_attempts": args.uniform_attempts},
            "rows": rows,
        }))?,
    )?;
    let table = markdown(&rows);
    std::fs::write(args.out.join("BENCH.md"), format!("Machine: {}\n\n{table}", machine()))?;
    println!("{table}");
    if rows
        .iter()
        .any(|r| r.oversold > 0 || r.verified.starts_with("RECONCILE FAILED"))
    {
        bail!("a strategy oversold or failed verification");
    }
    if !failed.is_empty() {
        bail!("runs that did not complete: {}", failed.join(", "));
    }
    Ok(())
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | strategy | attempts | attempts/s | accepted | accepted/s | accepted p50/p95/p99/max ms | sold-out p50/p95/p99/max ms | errors | oversold | orders in DB | orders/commit (avg, max bucket) | peak RSS MiB | CPU s | verified |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let lat = |l: &Latency| {
        if l.count == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}/{:.2}/{:.2}/{:.1}", l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms)
        }
    };
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} | {} |\n",
            r.scenario,
            r.strategy,
            r.attempts,
            r.attempts_per_s,
            r.accepted,
            r.accepted_per_s,
            lat(&r.accepted_latency),
            lat(&r.sold_out_latency),
            r.errors,
            r.oversold,
            r.orders_in_db.map_or("-".into(), |n| n.to_string()),
            match (r.avg_orders_per_commit, r.max_commit_batch_bucket) {
                (Some(a), Some(m)) => format!("{a:.1}, ≤{m}"),
                (Some(a), None) => format!("{a:.1}"),
                _ => "-".into(),
            },
            r.peak_rss_mib,
            r.cpu_seconds,
            r.verified
        ));
    }
    out
}
