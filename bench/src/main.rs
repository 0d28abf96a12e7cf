//! The benchmark harness: one command runs every strategy through the same HTTP API on
//! this machine and writes `BENCH.md` (a Markdown table) and `bench.json`.
//!
//! Strategies: `actor-sqlite` and `actor-mysql` (this runtime), `row-lock-mysql` (the
//! prototype's `SELECT … FOR UPDATE`), `redis-lua` (the usual seckill: a Lua
//! check-and-decrement in Redis that answers before anything is durable) and `bare` (an
//! actix-web handler returning a constant: the HTTP ceiling of the machine). The last
//! two are served by this binary itself (`serve-redis-lua`, `serve-bare`); they exist
//! only as yardsticks.
//!
//! Every emporium run is verified afterwards: `emporium reconcile` must pass and the
//! number of units sold (counted in the database) may not exceed the stock, so a fast
//! wrong answer cannot win.

mod table;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "emporium-bench",
    about = "Load generator and strategy comparison for Emporium"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the comparison and write the results.
    Run(RunArgs),
    /// The write-path and flash-sale table of issue 18: wrk-driven, with CPU, statements and
    /// commits per order and both ceilings measured in the same run.
    Table(table::TableArgs),
    /// Scale: many SKUs with few hot ones (memory, activation, passivation) and the
    /// restart recovery time of a large store.
    Scale(ScaleArgs),
    /// Yardstick: POST /v1/orders answers a constant 409 (the HTTP ceiling).
    ServeBare {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Yardstick: the Redis + Lua seckill, answering 201 before anything is durable.
    ServeRedisLua {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long)]
        stock: i64,
    },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Where BENCH.md and bench.json go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Order attempts in the flash sale.
    #[arg(long, default_value_t = 1_000_000)]
    attempts: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Stock of the flash-sale SKU.
    #[arg(long, default_value_t = 10_000)]
    stock: i64,
    /// Order attempts in the uniform (10,000 SKUs) and mixed scenarios.
    #[arg(long, default_value_t = 200_000)]
    uniform_attempts: u64,
    /// Comma-separated strategies to run.
    #[arg(long, default_value = "bare,actor-sqlite,actor-mysql,row-lock-mysql,redis-lua")]
    strategies: String,
    /// Comma-separated scenarios: flash, uniform, mixed, half-load.
    #[arg(long, default_value = "flash,uniform,mixed,half-load")]
    scenarios: String,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(args)),
        Cmd::Table(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(table::table(args)),
        Cmd::Scale(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(scale(args)),
        Cmd::ServeBare { listen } => actix_rt::System::new().block_on(serve_bare(listen)),
        Cmd::ServeRedisLua { listen, redis, stock } => {
            actix_rt::System::new().block_on(serve_redis_lua(listen, redis, stock))
        }
    }
}

// ------------------------------------------------------------------ yardstick servers

async fn serve_bare(listen: String) -> anyhow::Result<()> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let server = HttpServer::new(|| {
        App::new().route(
            "/v1/orders",
            // Reads the body like a real handler: actix closes a keep-alive connection
            // whose request body was left unread, which would measure reconnects.
            web::post().to(|_body: web::Bytes| async {
                HttpResponse::Conflict()
                    .content_type("application/problem+json")
                    .body(r#"{"type":"/problems/out-of-stock","title":"Out of stock","status":409}"#)
            }),
        )
    })
    .bind(&listen)?;
    println!("emporium listening on http://{}", server.addrs()[0]);
    server.run().await?;
    Ok(())
}

/// KEYS[1] = stock counter. Returns 1 and decrements when a unit is left, else 0.
const SECKILL_LUA: &str = r#"
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left >= tonumber(ARGV[1]) then
  redis.call('DECRBY', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

async fn serve_redis_lua(listen: String, redis_url: String, stock: i64) -> anyhow::Result<()> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_tokio_connection().await?;
    let key = format!("emporium-bench:stock:{}", std::process::id());
    redis::cmd("SET")
        .arg(&key)
        .arg(stock)
        .query_async::<()>(&mut conn)
        .await?;
    let state = web::Data::new((conn, key, redis::Script::new(SECKILL_LUA)));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route(
                "/v1/orders",
                web::post().to(
                    |state: web::Data<(redis::aio::MultiplexedConnection, String, redis::Script)>,
                     _body: web::Bytes| async move {
                        let (conn, key, script) = state.get_ref();
                        let mut conn = conn.clone();
                        match script.key(key).arg(1).invoke_async::<i64>(&mut conn).await {
                            // The usual seckill answers here; the order itself would go to a queue later.
                            Ok(1) => HttpResponse::Created()
                                .json(json!({"id": uuid::Uuid::now_v7(), "status": "PENDING_PAYMENT"})),
                            Ok(_) => HttpResponse::Conflict()
                                .content_type("application/problem+json")
                                .body(r#"{"type":"/problems/out-of-stock","title":"Out of stock","status":409}"#),
                            Err(_) => HttpResponse::ServiceUnavailable().finish(),
                        }
                    },
                ),
            )
            .route(
                "/stock",
                web::get().to(
                    |state: web::Data<(redis::aio::MultiplexedConnection, String, redis::Script)>| async move {
                        let (conn, key, _) = state.get_ref();
                        let left: i64 = redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut conn.clone())
                            .await
                            .unwrap_or(-1);
                        HttpResponse::Ok().json(json!({"left": left}))
                    },
                ),
            )
    })
    .bind(&listen)?;
    println!("emporium listening on http://{}", server.addrs()[0]);
    server.run().await?;
    Ok(())
}

// ------------------------------------------------------------------ servers under test

struct Server {
    child: Child,
    base: String,
    env: Vec<(String, String)>,
    data_dir: Option<tempfile::TempDir>,
}

impl Server {
    fn spawn(
        program: &Path,
        args: &[&str],
        env: Vec<(String, String)>,
        data_dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(dir) = &data_dir {
            cmd.arg("--data-dir").arg(dir.path());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let base = line.trim().rsplit(' ').next().unwrap_or_default().to_owned();
        if !base.starts_with("http://") {
            bail!("{} did not start: {line:?}", program.display());
        }
        Ok(Self {
            child,
            base,
            env,
            data_dir,
        })
    }

    /// Peak resident memory (VmHWM) in MiB and CPU seconds (user + system) of the server.
    fn resources(&self) -> (f64, f64) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: utime and stime are the 12th and 13th.
        let after = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (hwm_kib / 1024.0, ticks / 100.0)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run that fails half-way must not leave its server behind (it would skew every later
/// measurement on this machine).
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn emporium_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("emporium");
    if sibling.exists() {
        Ok(sibling)
    } else {
        bail!(
            "the emporium binary is not next to {} (cargo build --release --bins)",
            me.display()
        )
    }
}

struct Strategy {
    name: &'static str,
    store: &'static str,
}

async fn start_strategy(s: &Strategy, args: &RunArgs) -> anyhow::Result<(Server, Option<String>)> {
    let me = std::env::current_exe()?;
    match s.name {
        "bare" => Ok((Server::spawn(&me, &["serve-bare"], vec![], None)?, None)),
        "redis-lua" => {
            let stock = args.stock.to_string();
            Ok((
                Server::spawn(
                    &me,
                    &["serve-redis-lua", "--redis", &args.redis, "--stock", &stock],
                    vec![],
                    None,
                )?,
                None,
            ))
        }
        _ => {
            let mut env = vec![
                ("EMPORIUM__TELEMETRY__LOG_LEVEL".to_owned(), "error".to_owned()),
                ("EMPORIUM__SERVER__REQUEST_TIMEOUT_MS".to_owned(), "30000".to_owned()),
                // A big sale: no customer of the benchmark ever pays late.
                ("EMPORIUM__PAYMENT__GATEWAY_LATENCY_MS".to_owned(), "1".to_owned()),
                ("EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC".to_owned(), "0".to_owned()),
            ];
            let mut database = None;
            if s.store == "mysql" {
                let name = format!("emporium_bench_{}", uuid::Uuid::new_v4().simple());
                mysql_exec(&args.mysql, &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")).await?;
                let url = format!("{}/{name}", args.mysql.trim_end_matches('/'));
                env.push(("EMPORIUM__STORE__URL".to_owned(), url.clone()));
                env.push(("EMPORIUM__STORE__MAX_CONNECTIONS".to_owned(), "32".to_owned()));
                database = Some(url);
            }
            if s.name == "row-lock-mysql" {
                env.push(("EMPORIUM__INVENTORY__STRATEGY".to_owned(), "sql_row_lock".to_owned()));
            }
            let dir = tempfile::tempdir()?;
            Ok((
                Server::spawn(
                    &emporium_binary()?,
                    &["serve", "--listen", "127.0.0.1:0"],
                    env,
                    Some(dir),
                )?,
                database,
            ))
        }
    }
}

async fn mysql_exec(server: &str, sql: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(server).await?;
    sqlx::raw_sql(sql).execute(&mut conn).await?;
    Ok(())
}

fn emporium_cli(server: &Server, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new(emporium_binary()?);
    cmd.args(args).envs(server.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &server.data_dir {
        cmd.arg("--data-dir").arg(dir.path());
    }
    Ok(cmd.output()?)
}

fn token(server: &Server, sub: &str, admin: bool) -> anyhow::Result<String> {
    let mut args = vec!["token", "--sub", sub];
    if admin {
        args.push("--admin");
    }
    Ok(String::from_utf8(emporium_cli(server, &args)?.stdout)?
        .trim()
        .to_owned())
}

// ------------------------------------------------------------------ load

#[derive(Default)]
struct Recorded {
    accepted: Vec<u64>,
    sold_out: Vec<u64>,
    other: u64,
    /// Status codes of the answers counted in `other` (0 = no answer).
    other_statuses: std::collections::BTreeMap<u16, u64>,
    accepted_ids: u64,
}

#[derive(Debug, Serialize, Clone, Default)]
struct Latency {
    count: u64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn latency(samples: &[u64]) -> Latency {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for s in samples {
        let _ = h.record((*s).max(1));
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1000.0,
    }
}

/// Closed loop (`rate = None`: every connection sends its next request when the last
/// one is answered) or open loop (`rate` requests/s spread over the connections, latency
/// measured from the scheduled send time so a stalled server is not hidden).
async fn drive(
    base: &str,
    connections: usize,
    attempts: u64,
    rate: Option<f64>,
    tokens: Arc<Vec<String>>,
    request: Arc<dyn Fn(u64) -> (reqwest::Method, String, Option<Value>) + Send + Sync>,
) -> (Recorded, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("client");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (client, next, tokens, request, base) = (
                client.clone(),
                next.clone(),
                tokens.clone(),
                request.clone(),
                base.to_owned(),
            );
            tokio::spawn(async move {
                let mut rec = Recorded::default();
                let token = &tokens[c % tokens.len()];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= attempts {
                        return rec;
                    }
                    let scheduled = match rate {
                        Some(rate) => {
                            let at = started + Duration::from_secs_f64(i as f64 / rate);
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    let (method, path, body) = request(i);
                    let mut req = client.request(method, format!("{base}{path}")).bearer_auth(token);
                    if let Some(body) = body {
                        req = req.json(&body);
                    }
                    let status = match req.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    let micros = scheduled.elapsed().as_micros() as u64;
                    match status {
                        201 => {
                            rec.accepted.push(micros);
                            rec.accepted_ids += 1;
                        }
                        200 => rec.accepted.push(micros),
                        409 => rec.sold_out.push(micros),
                        _ => {
                            rec.other += 1;
                            *rec.other_statuses.entry(status).or_default() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let mut all = Recorded::default();
    for t in tasks {
        if let Ok(r) = t.await {
            all.accepted.extend(r.accepted);
            all.sold_out.extend(r.sold_out);
            all.other += r.other;
            for (status, n) in r.other_statuses {
                *all.other_statuses.entry(status).or_default() += n;
            }
            all.accepted_ids += r.accepted_ids;
        }
    }
    (all, started.elapsed())
}

#[derive(Debug, Serialize, Clone, Default)]
struct Row {
    scenario: String,
    strategy: String,
    attempts: u64,
    seconds: f64,
    attempts_per_s: f64,
    accepted: u64,
    accepted_per_s: f64,
    accepted_latency: Latency,
    sold_out_latency: Latency,
    errors: u64,
    oversold: i64,
    orders_in_db: Option<i64>,
    avg_orders_per_commit: Option<f64>,
    max_commit_batch_bucket: Option<f64>,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    verified: String,
}

async fn scrape(base: &str) -> String {
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The largest batch-size bucket that saw any commit.
fn max_batch_bucket(text: &str) -> Option<f64> {
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

async fn settle(base: &str, skus: &[String]) {
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

async fn count_orders(server: &Server, database: &Option<String>) -> Option<i64> {
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

async fn create_products(server: &Server, admin: &str, skus: &[(String, i64)]) -> anyhow::Result<()> {
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

async fn run_one(strategy: &Strategy, scenario: &str, args: &RunArgs, half_of: Option<f64>) -> anyhow::Result<Row> {
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
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

fn machine() -> String {
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

fn markdown(rows: &[Row]) -> String {
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

// ------------------------------------------------------------------ scale

#[derive(Parser, Clone)]
struct ScaleArgs {
    /// Where SCALE.md and scale.json go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// SKUs in the store (created as products of 100 variants each).
    #[arg(long, default_value_t = 1_000_000)]
    skus: u64,
    /// SKUs that take orders (spread evenly over all SKUs).
    #[arg(long, default_value_t = 10_000)]
    hot: u64,
    /// Orders placed on the hot SKUs.
    #[arg(long, default_value_t = 100_000)]
    hot_orders: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// `inventory.idle_passivate_secs` of the server under test.
    #[arg(long, default_value_t = 10)]
    idle_passivate_secs: u64,
}

/// What the scale run measured.
#[derive(Debug, Serialize, Default)]
struct ScaleReport {
    skus: u64,
    hot: u64,
    load_seconds: f64,
    skus_loaded_per_s: f64,
    cold_activation: Latency,
    warm_read: Latency,
    hot_orders: u64,
    hot_orders_per_s: f64,
    hot_order_latency: Latency,
    hot_errors: u64,
    rss_after_hot_mib: f64,
    sweep_seconds: f64,
    sweep_reads: Latency,
    peak_active_sku_actors: f64,
    active_sku_actors_after_idle: f64,
    peak_rss_mib: f64,
    journal_entries: i64,
    orders_in_db: i64,
    recovery_to_ready_seconds: f64,
    first_cold_order_after_restart_ms: f64,
    rss_after_restart_mib: f64,
    verified: String,
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn wait_ready(base: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{base}/health/ready")).await {
            if r.status() == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{base} was not ready within {within:?}")
}

async fn active_sku_actors(base: &str) -> f64 {
    metric(&scrape(base).await, "emporium_actors_active{actor=\"sku\"}").unwrap_or(0.0)
}

async fn sqlite_count(data_dir: &Path, table: &str) -> anyhow::Result<i64> {
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
async fn load_skus(base: &str, admin: &str, skus: u64, connections: usize) -> anyhow::Result<()> {
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

fn scale_sku(i: u64) -> String {
    format!("S-{i:07}")
}

async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
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

fn scale_markdown(r: &ScaleReport) -> String {
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
