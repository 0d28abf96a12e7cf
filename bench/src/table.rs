//! `emporium-bench table`: the write-path and flash-sale table of issue 18, measured in one
//! run on this machine.
//!
//! The closed-loop load is Debian's `wrk` (one thread, C code, prebuilt requests from
//! `bench/wrk/requests.lua`), so the generator costs a fraction of the server it measures;
//! its own CPU is reported next to the server's. Every request comes from the next of
//! `--users` bearer tokens (20,000 by default) so per-user rate limits stay on. The open-loop
//! figure (p99 of accepted orders at half of the measured peak) uses [`open_loop`], a
//! fixed-schedule HTTP/1.1 client in this crate that measures each answer from its
//! *scheduled* send time (no coordinated omission).
//!
//! Costs come from the operating system and the servers themselves, not from the clock of
//! a shared machine: CPU from `/proc/<pid>/stat` (utime + stime) of the emporium process and
//! of `mariadbd`, statements from MariaDB's `SHOW GLOBAL STATUS` (`Com_stmt_execute` +
//! `Com_query`), orders and commits from the server's `/metrics`. Global MariaDB counters
//! include whatever else runs on that server meanwhile; the harness subtracts its own
//! status queries and the report says so.

use crate::run::{metric, scrape};
use crate::server::{mysql_exec, Server};
use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Clone)]
pub struct TableArgs {
    /// Where TABLE.md and table.json go.
    #[arg(long, default_value = "bench-results/issue18")]
    out: PathBuf,
    /// Seconds per figure (after a one-second warm-up that is not counted).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// wrk connections (and open-loop connections).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Distinct users whose tokens the requests cycle through.
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// Comma-separated: actor-sqlite, actor-mysql, row-lock-mysql.
    #[arg(long, default_value = "actor-sqlite,actor-mysql,row-lock-mysql")]
    strategies: String,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mysql: String,
    /// Skip the open-loop half-peak figures.
    #[arg(long)]
    no_open_loop: bool,
}

/// One measured figure.
#[derive(Debug, Serialize, Clone, Default)]
pub struct Figure {
    pub figure: String,
    pub strategy: String,
    pub seconds: f64,
    pub answers: u64,
    pub answers_per_s: f64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    /// Answers by status (from the server's own counters).
    pub statuses: String,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_cpu_us_per_answer: f64,
    pub server_cpu_us_per_accepted: Option<f64>,
    pub loadgen_cpu_us_per_answer: Option<f64>,
    pub db_cpu_us_per_accepted: Option<f64>,
    pub statements_per_order: Option<f64>,
    pub prepares_per_order: Option<f64>,
    pub write_sets_per_commit: Option<f64>,
    /// Group commits per second and their mean duration (from the server's histogram).
    pub commits_per_s: Option<f64>,
    pub commit_ms: Option<f64>,
    pub note: String,
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    // Children's times (cutime, cstime) are not counted: the servers spawn none.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux this runs on; `getconf` confirms it when present.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The pid of the local `mariadbd`, if one runs (its CPU is the database's cost).
fn mariadbd_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "mariadbd" || comm.trim() == "mysqld").then_some(pid)
    })
}

/// `Com_stmt_execute + Com_query` and `Com_stmt_prepare` of the MariaDB server.
async fn mysql_statements(server: &str) -> anyhow::Result<(f64, f64)> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::MySqlConnection::connect(server).await?;
    let rows =
        sqlx::query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_stmt_execute', 'Com_query', 'Com_stmt_prepare')")
            .fetch_all(&mut conn)
            .await?;
    let mut executed = 0.0;
    let mut prepared = 0.0;
    for row in rows {
        let name: String = row.try_get(0)?;
        let value: String = row.try_get(1)?;
        let value: f64 = value.parse().unwrap_or(0.0);
        if name.eq_ignore_ascii_case("Com_stmt_prepare") {
            prepared += value;
        } else {
            executed += value;
        }
    }
    let _ = conn.close().await;
    Ok((executed, prepared))
}

/// Bearer tokens (HS256, the server's own format) for `users` users and one admin.
fn sign_tokens(secret: &str, users: usize) -> anyhow::Result<(Vec<String>, String)> {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let key = EncodingKey::from_secret(secret.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let sign = |sub: &str, admin: bool| {
        let mut claims = json!({"sub": sub, "iat": now, "exp": now + 6 * 3600});
        if admin {
            claims["role"] = json!("admin");
        }
        encode(&Header::default(), &claims, &key)
    };
    let tokens = (0..users)
        .map(|i| sign(&format!("bench-user-{i:05}"), false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((tokens, sign("bench-admin", true)?))
}

struct Run {
    strategy: &'static str,
    mysql_db: Option<String>,
    server: Server,
    admin: String,
    tokens_file: PathBuf,
    tokens: Arc<Vec<String>>,
}

async fn start(
    strategy: &'static str,
    args: &TableArgs,
    secret: &str,
    tokens: &Arc<Vec<String>>,
    admin: &str,
    tokens_file: &Path,
) -> anyhow::Result<Run> {
    let mut env = vec![
        ("EMPORIUM__TELEMETRY__LOG_LEVEL".to_owned(), "error".to_owned()),
        ("EMPORIUM__SERVER__REQUEST_TIMEOUT_MS".to_owned(), "30000".to_owned()),
        ("EMPORIUM__PAYMENT__GATEWAY_LATENCY_MS".to_owned(), "1".to_owned()),
        ("EMPORIUM__AUTH__JWT_SECRET".to_owned(), secret.to_owned()),
    ];
    let mut mysql_db = None;
    if strategy.ends_with("mysql") {
        let name = format!("emporium_bench_{}", uuid::Uuid::new_v4().simple());
        mysql_exec(&args.mysql, &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")).await?;
        let url = format!("{}/{name}", args.mysql.trim_end_matches('/'));
        env.push(("EMPORIUM__STORE__URL".to_owned(), url.clone()));
        env.push(("EMPORIUM__STORE__MAX_CONNECTIONS".to_owned(), "32".to_owned()));
        mysql_db = Some(url);
    }
    if strategy.starts_with("row-lock") {
        env.push(("EMPORIUM__INVENTORY__STRATEGY".to_owned(), "sql_row_lock".to_owned()));
    }
    let server = Server::spawn(
        &crate::server::emporium_binary()?,
        &["serve", "--listen", "127.0.0.1:0"],
        env,
        Some(tempfile::tempdir()?),
    )?;
    crate::server::wait_ready(&server.base, Duration::from_secs(60)).await?;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/products", server.base))
        .bearer_auth(admin)
        .json(
            &json!({"name": "벤치마크 상품", "price": {"amount": 1000, "currency": "KRW"},
            "variants": [{"sku": "HOT", "stock": 1_000_000_000}, {"sku": "GONE", "stock": 0}]}),
        )
        .send()
        .await?;
    if r.status() != 201 {
        bail!("product creation answered {}", r.status());
    }
    Ok(Run {
        strategy,
        mysql_db,
        server,
        admin: admin.to_owned(),
        tokens_file: tokens_file.to_owned(),
        tokens: tokens.clone(),
    })
}

/// What wrk printed (the JSON line of requests.lua's done()).
#[derive(Debug, Default)]
struct WrkResult {
    requests: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    socket_errors: u64,
    cpu_seconds: f64,
}

fn wrk(
    args: &TableArgs,
    base: &str,
    seconds: u64,
    script: (&Path, &str, &str, &str),
    path: &str,
) -> anyhow::Result<WrkResult> {
    let lua = Path::new(env!("CARGO_MANIFEST_DIR")).join("wrk/requests.lua");
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--timeout")
        .arg("30s")
        .arg("-s")
        .arg(&lua)
        .arg(format!("{base}{path}"))
        .arg("--");
    let (tokens, method, path, body) = script;
    cmd.arg(tokens).arg(method).arg(path).arg(body);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("wrk (scripts/tools.sh wrk)")?;
    let pid = child.id();
    // Its CPU is read just before it exits: poll its stat while waiting.
    let mut last_cpu = 0.0;
    let mut child = child;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("wrk failed: {status}");
            }
            break;
        }
        last_cpu = cpu_seconds(pid).max(last_cpu);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().context("wrk stdout")?, &mut out)?;
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("wrk printed no result: {out}"))?;
    let v: Value = serde_json::from_str(line)?;
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Ok(WrkResult {
        requests: n("requests"),
        seconds: n("duration_us") as f64 / 1e6,
        p50_ms: n("p50_us") as f64 / 1000.0,
        p99_ms: n("p99_us") as f64 / 1000.0,
        max_ms: n("max_us") as f64 / 1000.0,
        socket_errors: n("connect_errors") + n("read_errors") + n("write_errors") + n("timeouts"),
        cpu_seconds: last_cpu,
    })
}

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' ')))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn statuses_of(before: &str, after: &str, route: &str) -> (u64, String) {
    let mut parts = Vec::new();
    let mut total = 0;
    for status in ["200", "201", "409", "429", "503", "422", "401"] {
        let label = format!("status=\"{status}\"");
        let route_label = format!("route=\"{route}\"");
        let n = metric_sum(after, "emporium_http_requests_total", &[&label, &route_label])
            - metric_sum(before, "emporium_http_requests_total", &[&label, &route_label]);
        if n > 0.0 {
            total += n as u64;
            parts.push(format!("{status}: {}", n as u64));
        }
    }
    (total, parts.join(", "))
}

struct Snapshot {
    metrics: String,
    server_cpu: f64,
    db_cpu: Option<f64>,
    statements: Option<(f64, f64)>,
}

async fn snapshot(run: &Run, mysql: &str) -> Snapshot {
    let statements = match &run.mysql_db {
        Some(_) => mysql_statements(mysql).await.ok(),
        None => None,
    };
    Snapshot {
        metrics: scrape(&run.server.base).await,
        server_cpu: cpu_seconds(run.server.child.id()),
        db_cpu: mariadbd_pid().map(cpu_seconds),
        statements,
    }
}

/// Waits until every accepted order has reached a final state (its whole life is counted).
async fn settle_orders(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        let m = scrape(base).await;
        let created = metric(&m, "emporium_orders_created_total").unwrap_or(0.0);
        let finished = metric_sum(&m, "emporium_orders_finished_total", &[]);
        let backlog = metric(&m, "emporium_outbox_backlog").unwrap_or(0.0);
        if finished >= created && backlog == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn closed_loop(
    run: &Run,
    args: &TableArgs,
    figure: &str,
    path: &str,
    body: Option<&str>,
    orders: bool,
) -> anyhow::Result<Figure> {
    let base = &run.server.base;
    // Every figure sends the same bearer headers, the ceiling included: a ceiling measured
    // with shorter requests would flatter it.
    let script = match body {
        Some(b) => (run.tokens_file.as_path(), "POST", path, b),
        None => (run.tokens_file.as_path(), "GET", path, ""),
    };
    // Warm-up: activates the SKU's actor, fills pools and caches; not counted.
    wrk(args, base, 1, script, path)?;
    if orders {
        settle_orders(base).await;
    }
    let before = snapshot(run, &args.mysql).await;
    let w = wrk(args, base, args.seconds, script, path)?;
    let during_cpu = cpu_seconds(run.server.child.id()) - before.server_cpu;
    let mid = scrape(base).await;
    let route = if path.starts_with("/v1/orders") {
        "/v1/orders"
    } else {
        path
    };
    let (answers, statuses) = statuses_of(&before.metrics, &mid, route);
    let mut f = Figure {
        figure: figure.to_owned(),
        strategy: run.strategy.to_owned(),
        seconds: w.seconds,
        answers: w.requests,
        answers_per_s: w.requests as f64 / w.seconds,
        statuses: if w.socket_errors > 0 {
            format!("{statuses}, socket errors: {}", w.socket_errors)
        } else {
            statuses
        },
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        max_ms: w.max_ms,
        server_cpu_us_per_answer: during_cpu * 1e6 / w.requests.max(1) as f64,
        loadgen_cpu_us_per_answer: Some(w.cpu_seconds * 1e6 / w.requests.max(1) as f64),
        ..Figure::default()
    };
    // wrk counts answers within its duration; the server also those still in flight at
    // the end. Only a real disagreement is worth a note.
    if (answers as f64 - w.requests as f64).abs() > 0.01 * w.requests as f64 {
        f.note = format!("server counted {answers} answers");
    }
    if orders {
        settle_orders(base).await;
        let after = snapshot(run, &args.mysql).await;
        let created = |m: &str| metric(m, "emporium_orders_created_total").unwrap_or(0.0);
        let accepted = created(&after.metrics) - created(&before.metrics);
        f.accepted = accepted as u64;
        f.accepted_per_s = accepted / w.seconds;
        let per_order = |x: f64| (accepted > 0.0).then(|| x / accepted);
        f.server_cpu_us_per_accepted = per_order((after.server_cpu - before.server_cpu) * 1e6);
        f.db_cpu_us_per_accepted = match (run.mysql_db.is_some(), before.db_cpu, after.db_cpu) {
            (true, Some(b), Some(a)) => per_order((a - b) * 1e6),
            _ => None,
        };
        if let (Some((eb, pb)), Some((ea, pa))) = (before.statements, after.statements) {
            // Minus the harness's own status query (one Com_query per snapshot).
            f.statements_per_order = per_order(ea - eb - 1.0);
            f.prepares_per_order = per_order(pa - pb);
        }
        let batches = |m: &str| {
            (
                metric(m, "emporium_write_behind_batch_size_sum").unwrap_or(0.0),
                metric(m, "emporium_write_behind_batch_size_count").unwrap_or(0.0),
            )
        };
        let (sb, cb) = batches(&before.metrics);
        let (sa, ca) = batches(&after.metrics);
        f.write_sets_per_commit = (ca > cb).then(|| (sa - sb) / (ca - cb));
        let durations = |m: &str| {
            (
                metric(m, "emporium_write_behind_commit_duration_seconds_sum").unwrap_or(0.0),
                metric(m, "emporium_write_behind_commit_duration_seconds_count").unwrap_or(0.0),
            )
        };
        let (db, nb) = durations(&before.metrics);
        let (da, na) = durations(&mid);
        f.commits_per_s = (na > nb).then(|| (na - nb) / w.seconds);
        f.commit_ms = (na > nb).then(|| (da - db) * 1000.0 / (na - nb));
    }
    Ok(f)
}

/// The HTTP/1.1 request bytes of one order from each user.
fn order_requests(tokens: &[String], host: &str, body: &str) -> Vec<Vec<u8>> {
    tokens
        .iter()
        .map(|t| {
            format!(
                "POST /v1/orders HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect()
}

/// What the open-loop generator saw.
#[derive(Debug, Default)]
pub struct OpenLoop {
    pub sent: u64,
    pub by_status: std::collections::BTreeMap<u16, u64>,
    /// Latency of 201 answers from their scheduled send time, µs.
    pub accepted_us: Vec<u64>,
    /// How far the latest send fell behind its schedule, µs (the generator's own lag).
    pub max_send_lag_us: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
}

/// Fixed schedule: request `i` is due at `start + i / rate` whatever happened to the
/// others; each of `connections` keep-alive connections takes the next due request when it
/// is free. A slow server therefore shows up as latency (measured from the due time), not
/// as a lower offered rate. One current-thread runtime on its own thread: cheap and
/// measurable (its CPU is that thread's).
pub fn open_loop(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    rate: f64,
    seconds: f64,
    connections: usize,
) -> anyhow::Result<OpenLoop> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let total = (rate * seconds) as u64;
            let next = Arc::new(AtomicU64::new(0));
            let cpu_before = thread_cpu_seconds();
            let start = tokio::time::Instant::now() + Duration::from_millis(20);
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let (next, requests) = (next.clone(), requests.clone());
                tasks.push(tokio::spawn(async move {
                    let mut out = OpenLoop::default();
                    let mut conn: Option<tokio::net::TcpStream> = None;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return out;
                        }
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due).await;
                        let lag = tokio::time::Instant::now().saturating_duration_since(due);
                        out.max_send_lag_us = out.max_send_lag_us.max(lag.as_micros() as u64);
                        out.sent += 1;
                        let req = &requests[(i as usize) % requests.len()];
                        let status = match exchange(&mut conn, addr, req, &mut buf).await {
                            Ok(s) => s,
                            Err(_) => {
                                conn = None;
                                0
                            }
                        };
                        *out.by_status.entry(status).or_default() += 1;
                        if status == 201 {
                            out.accepted_us.push(due.elapsed().as_micros() as u64);
                        }
                    }
                }));
            }
            let began = Instant::now();
            let mut all = OpenLoop::default();
            for t in tasks {
                let r = t.await?;
                all.sent += r.sent;
                for (s, n) in r.by_status {
                    *all.by_status.entry(s).or_default() += n;
                }
                all.accepted_us.extend(r.accepted_us);
                all.max_send_lag_us = all.max_send_lag_us.max(r.max_send_lag_us);
            }
            all.seconds = began.elapsed().as_secs_f64();
            all.cpu_seconds = thread_cpu_seconds() - cpu_before;
            Ok(all)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("open-loop thread panicked"))?
}

/// CPU of the calling thread (the open-loop generator runs on one).
fn thread_cpu_seconds() -> f64 {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok());
    let Some(tid) = tid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Sends one request on the connection (opening it if needed) and reads one response:
/// the status line, the headers up to the blank line, then `Content-Length` bytes.
async fn exchange(
    conn: &mut Option<tokio::net::TcpStream>,
    addr: SocketAddr,
    req: &[u8],
    buf: &mut [u8],
) -> anyhow::Result<u16> {
    if conn.is_none() {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        *conn = Some(s);
    }
    let s = conn.as_mut().context("connection")?;
    s.write_all(req).await?;
    let mut filled = 0;
    let header_end = loop {
        if filled == buf.len() {
            bail!("response headers larger than the buffer");
        }
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("connection closed");
        }
        filled += n;
        if let Some(pos) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..header_end])?;
    let status: u16 = head.split(' ').nth(1).context("status line")?.parse()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body_read = filled - header_end;
    while body_read < length {
        let n = s.read(buf).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        body_read += n;
    }
    Ok(status)
}

async fn half_peak(run: &Run, args: &TableArgs, peak: f64) -> anyhow::Result<Figure> {
    let base = &run.server.base;
    let host = base.trim_start_matches("http://");
    let addr: SocketAddr = host.parse().context("server address")?;
    let requests = Arc::new(order_requests(
        &run.tokens,
        host,
        r#"{"items":[{"sku":"HOT","qty":1}]}"#,
    ));
    settle_orders(base).await;
    let rate = peak / 2.0;
    let before_cpu = cpu_seconds(run.server.child.id());
    let seconds = args.seconds as f64;
    let connections = args.connections;
    let r = tokio::task::spawn_blocking(move || open_loop(addr, requests, rate, seconds, connections)).await??;
    let cpu = cpu_seconds(run.server.child.id()) - before_cpu;
    let lat = crate::load::latency(&r.accepted_us);
    let accepted = r.by_status.get(&201).copied().unwrap_or(0);
    Ok(Figure {
        figure: format!("open loop at half peak ({rate:.0}/s offered)"),
        strategy: run.strategy.to_owned(),
        seconds: r.seconds,
        answers: r.sent,
        answers_per_s: r.sent as f64 / r.seconds,
        accepted,
        accepted_per_s: accepted as f64 / r.seconds,
        statuses: r
            .by_status
            .iter()
            .map(|(s, n)| {
                if *s == 0 {
                    format!("no answer: {n}")
                } else {
                    format!("{s}: {n}")
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        p50_ms: lat.p50_ms,
        p99_ms: lat.p99_ms,
        max_ms: lat.max_ms,
        server_cpu_us_per_answer: cpu * 1e6 / r.sent.max(1) as f64,
        loadgen_cpu_us_per_answer: Some(r.cpu_seconds * 1e6 / r.sent.max(1) as f64),
        note: format!(
            "latency from the scheduled send time; the generator's worst send lag {:.1} ms",
            r.max_send_lag_us as f64 / 1000.0
        ),
        ..Figure::default()
    })
}

/// The database ceiling: 200-row INSERTs into the same MariaDB, one connection, a commit
/// (autocommit) each, for `seconds`. Rows per second.
async fn mysql_insert_ceiling(server: &str, seconds: u64) -> anyhow::Result<Figure> {
    use sqlx::Connection;
    let name = format!("emporium_bench_ceiling_{}", uuid::Uuid::new_v4().simple());
    mysql_exec(server, &format!("CREATE DATABASE {name}")).await?;
    let url = format!("{}/{name}", server.trim_end_matches('/'));
    let result = async {
        let mut conn = sqlx::MySqlConnection::connect(&url).await?;
        sqlx::raw_sql("CREATE TABLE t (id BIGINT PRIMARY KEY, order_id BINARY(16) NOT NULL, sku VARCHAR(64) NOT NULL, qty BIGINT NOT NULL, at BIGINT NOT NULL)")
            .execute(&mut conn)
            .await?;
        let rows = 200;
        let sql = format!("INSERT INTO t (id, order_id, sku, qty, at) VALUES {}", vec!["(?, ?, ?, ?, ?)"; rows].join(", "));
        let db_pid = mariadbd_pid();
        let db_before = db_pid.map(cpu_seconds);
        let started = Instant::now();
        let mut id: i64 = 0;
        while started.elapsed() < Duration::from_secs(seconds) {
            let mut q = sqlx::query(&sql);
            for _ in 0..rows {
                id += 1;
                q = q.bind(id).bind(uuid::Uuid::new_v4().as_bytes().to_vec()).bind("HOT").bind(1_i64).bind(id);
            }
            q.execute(&mut conn).await?;
        }
        let took = started.elapsed().as_secs_f64();
        let db_cpu = match (db_pid, db_before) {
            (Some(p), Some(b)) => Some(cpu_seconds(p) - b),
            _ => None,
        };
        let _ = conn.close().await;
        anyhow::Ok(Figure {
            figure: "MariaDB ceiling: 200-row INSERTs, a commit each, one connection (rows)".into(),
            strategy: "mysql".into(),
            seconds: took,
            answers: id as u64,
            answers_per_s: id as f64 / took,
            note: db_cpu.map_or(String::new(), |c| format!("mariadbd CPU {:.2} µs per row", c * 1e6 / id.max(1) as f64)),
            ..Figure::default()
        })
    }
    .await;
    let _ = mysql_exec(server, &format!("DROP DATABASE IF EXISTS {name}")).await;
    result
}

/// The disk's floor under every durable figure: one 4 KiB write and `fdatasync` at a time
/// in `dir` (the filesystem the server's data dir and MariaDB's datadir are on here), for
/// `seconds`. A commit that must reach the disk cannot be faster than one of these.
fn fsync_floor(dir: &Path, seconds: u64) -> anyhow::Result<Figure> {
    use std::os::unix::fs::FileExt;
    let file = tempfile::tempfile_in(dir)?;
    let page = [0x5a_u8; 4096];
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut n: u64 = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let at = Instant::now();
        // A ring of 256 pages: the file stays small, every write still dirties a page.
        file.write_all_at(&page, (n % 256) * 4096)?;
        file.sync_data()?;
        latencies.record(at.elapsed().as_micros() as u64)?;
        n += 1;
    }
    let took = started.elapsed().as_secs_f64();
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(Figure {
        figure: "disk: 4 KiB write + fdatasync, one at a time (the floor of a commit)".into(),
        strategy: "disk".into(),
        seconds: took,
        answers: n,
        answers_per_s: n as f64 / took,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: latencies.max() as f64 / 1000.0,
        note: format!("in {}", dir.display()),
        ..Figure::default()
    })
}

async fn finish(run: Run) {
    let Run { server, mysql_db, .. } = run;
    server.stop();
    if let Some(url) = mysql_db {
        if let Some((server_url, name)) = url.rsplit_once('/') {
            let _ = mysql_exec(server_url, &format!("DROP DATABASE IF EXISTS {name}")).await;
        }
    }
}

pub async fn table(args: TableArgs) -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed (scripts/tools.sh wrk)");
    }
    let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (tokens, admin) = sign_tokens(&secret, args.users)?;
    std::fs::create_dir_all(&args.out)?;
    let tokens_file = args.out.join("tokens.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tokens_file)?);
        for t in &tokens {
            writeln!(f, "{t}")?;
        }
    }
    let tokens = Arc::new(tokens);
    let wanted: Vec<&str> = args.strategies.split(',').map(str::trim).collect();
    eprintln!("  disk: fsync floor");
    let disk = fsync_floor(&std::env::temp_dir(), args.seconds.min(3))?;
    let fsync_note = format!("fsync p50 {:.2} ms", disk.p50_ms);
    let mut figures: Vec<Figure> = vec![disk];
    for strategy in ["actor-sqlite", "actor-mysql", "row-lock-mysql"] {
        if !wanted.contains(&strategy) {
            continue;
        }
        eprintln!("  {strategy}: starting");
        let run = start(strategy, &args, &secret, &tokens, &admin, &tokens_file).await?;
        let _ = &run.admin;
        let result = async {
            let mut mine = Vec::new();
            eprintln!("  {strategy}: GET /health/live");
            mine.push(
                closed_loop(
                    &run,
                    &args,
                    "GET /health/live (HTTP ceiling)",
                    "/health/live",
                    None,
                    false,
                )
                .await?,
            );
            eprintln!("  {strategy}: sold-out");
            mine.push(
                closed_loop(
                    &run,
                    &args,
                    "POST /v1/orders, sold-out SKU",
                    "/v1/orders",
                    Some(r#"{"items":[{"sku":"GONE","qty":1}]}"#),
                    false,
                )
                .await?,
            );
            eprintln!("  {strategy}: durable orders");
            let durable = closed_loop(
                &run,
                &args,
                "POST /v1/orders, durable, one SKU",
                "/v1/orders",
                Some(r#"{"items":[{"sku":"HOT","qty":1}]}"#),
                true,
            )
            .await?;
            let peak = durable.accepted_per_s;
            mine.push(durable);
            if !args.no_open_loop && strategy.starts_with("actor") && peak > 0.0 {
                eprintln!("  {strategy}: open loop at {:.0}/s", peak / 2.0);
                mine.push(half_peak(&run, &args, peak).await?);
            }
            anyhow::Ok(mine)
        }
        .await;
        // Verify what was sold: every order consistent with the journal.
        let verified = reconcile(&run);
        finish(run).await;
        let mut mine = result?;
        for f in &mut mine {
            if f.figure.contains("durable") || f.figure.contains("open loop") {
                f.note = [f.note.clone(), fsync_note.clone()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
            }
            if f.figure.contains("durable") {
                f.note = [f.note.clone(), verified.clone()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
            }
        }
        figures.extend(mine);
    }
    if wanted.iter().any(|s| s.ends_with("mysql")) {
        eprintln!("  MariaDB insert ceiling");
        figures.push(mysql_insert_ceiling(&args.mysql, args.seconds).await?);
    }
    let verdicts = verdicts(&figures);
    let md = markdown(&figures, &verdicts);
    std::fs::write(
        args.out.join("TABLE.md"),
        format!("Machine: {}\n\n{md}", crate::run::machine()),
    )?;
    std::fs::write(
        args.out.join("table.json"),
        serde_json::to_string_pretty(
            &json!({"machine": crate::run::machine(), "figures": figures, "targets": verdicts}),
        )?,
    )?;
    let _ = std::fs::remove_file(&tokens_file);
    println!("{md}");
    // Speed targets are reported, not enforced; a run that sold wrong fails.
    if figures
        .iter()
        .any(|f| f.note.contains("RECONCILE FAILED") || f.note.contains("reconcile did not run"))
    {
        bail!("reconcile failed after a run (see the notes in the table)");
    }
    Ok(())
}

fn reconcile(run: &Run) -> String {
    let out = crate::server::emporium_cli(&run.server, &["reconcile"]);
    match out {
        Ok(o) if o.status.success() => "reconcile ok".into(),
        Ok(o) => format!(
            "RECONCILE FAILED: {}",
            String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("")
        ),
        Err(e) => format!("reconcile did not run: {e}"),
    }
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub wanted: String,
    pub met: Option<bool>,
}

fn verdicts(figures: &[Figure]) -> Vec<Verdict> {
    let find = |figure: &str, strategy: &str| {
        figures
            .iter()
            .find(|f| f.figure.starts_with(figure) && f.strategy == strategy)
    };
    let durable = |s: &str| find("POST /v1/orders, durable", s);
    let ceiling = |s: &str| find("GET /health/live", s).map(|f| f.answers_per_s);
    let mut out = Vec::new();
    let mut ratio = |target: &str, num: Option<f64>, den: Option<f64>, wanted: f64, unit: &str| {
        let r = num.zip(den).filter(|(_, d)| *d > 0.0).map(|(n, d)| n / d);
        out.push(Verdict {
            target: target.into(),
            measured: match (num, den, r) {
                (Some(n), Some(d), Some(r)) => format!("{n:.0} ÷ {d:.0} = {r:.3}{unit}"),
                _ => "not measured".into(),
            },
            wanted: format!("≥ {wanted}{unit}"),
            met: r.map(|r| r >= wanted),
        });
    };
    for s in ["actor-sqlite", "actor-mysql"] {
        ratio(
            &format!("sold-out ÷ /health/live, same headers ({s})"),
            find("POST /v1/orders, sold-out", s).map(|f| f.answers_per_s),
            ceiling(s),
            0.8,
            "",
        );
    }
    ratio(
        "durable accepted orders/s, one SKU, SQLite ÷ /health/live",
        durable("actor-sqlite").map(|f| f.accepted_per_s),
        ceiling("actor-sqlite"),
        0.25,
        "",
    );
    ratio(
        "durable accepted/s, MariaDB, actors ÷ row lock",
        durable("actor-mysql").map(|f| f.accepted_per_s),
        durable("row-lock-mysql").map(|f| f.accepted_per_s),
        10.0,
        "×",
    );
    let mut at_most = |target: &str, measured: Option<f64>, wanted: f64, unit: &str| {
        out.push(Verdict {
            target: target.into(),
            measured: measured.map_or("not measured".into(), |m| format!("{m:.1} {unit}")),
            wanted: format!("≤ {wanted} {unit}"),
            met: measured.map(|m| m <= wanted),
        });
    };
    at_most(
        "MariaDB CPU per accepted order",
        durable("actor-mysql").and_then(|f| f.db_cpu_us_per_accepted),
        60.0,
        "µs",
    );
    at_most(
        "server CPU per durable order (SQLite)",
        durable("actor-sqlite").and_then(|f| f.server_cpu_us_per_accepted),
        60.0,
        "µs",
    );
    at_most(
        "MariaDB statements per accepted order (Com_stmt_execute + Com_query)",
        durable("actor-mysql").and_then(|f| f.statements_per_order),
        0.2,
        "",
    );
    for s in ["actor-sqlite", "actor-mysql"] {
        at_most(
            &format!("p99 of accepted orders at half peak, open loop ({s})"),
            find("open loop", s).filter(|f| f.accepted > 0).map(|f| f.p99_ms),
            10.0,
            "ms",
        );
    }
    out
}

fn markdown(figures: &[Figure], verdicts: &[Verdict]) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let mut out = String::from(
        "| figure | strategy | answers/s | accepted/s | answers by status | p50 / p99 / max ms | server CPU µs per answer | server CPU µs per accepted order | wrk/loadgen CPU µs per answer | MariaDB CPU µs per accepted order | statements per order (prepares) | write-sets per commit | commits/s, mean ms | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in figures {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {:.2} / {:.2} / {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.figure,
            f.strategy,
            f.answers_per_s,
            if f.accepted > 0 {
                format!("{:.0}", f.accepted_per_s)
            } else {
                "-".into()
            },
            f.statuses,
            f.p50_ms,
            f.p99_ms,
            f.max_ms,
            f.server_cpu_us_per_answer,
            opt(f.server_cpu_us_per_accepted, 0),
            opt(f.loadgen_cpu_us_per_answer, 1),
            opt(f.db_cpu_us_per_accepted, 0),
            match (f.statements_per_order, f.prepares_per_order) {
                (Some(s), Some(p)) => format!("{s:.2} ({p:.2})"),
                _ => "-".into(),
            },
            opt(f.write_sets_per_commit, 1),
            match (f.commits_per_s, f.commit_ms) {
                (Some(n), Some(ms)) => format!("{n:.0}, {ms:.1}"),
                _ => "-".into(),
            },
            f.note
        ));
    }
    out.push_str("\n| target | measured | wanted | met |\n|---|---|---|---|\n");
    for v in verdicts {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            v.target,
            v.measured,
            v.wanted,
            match v.met {
                Some(true) => "**met**",
                Some(false) => "**missed**",
                None => "-",
            }
        ));
    }
    out.push_str(
        "\nStatements are MariaDB's global counters: anything else running on that server during the run is counted too.\n",
    );
    out
}
