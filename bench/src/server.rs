//! A server under test: an `emporium` process (or a yardstick) per strategy, its
//! database made ready, and the command-line calls the runs need (tokens, reconcile).

use crate::RunArgs;
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ servers under test

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) data_dir: Option<tempfile::TempDir>,
}

impl Server {
    pub(crate) fn spawn(
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
    pub(crate) fn resources(&self) -> (f64, f64) {
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

    pub(crate) fn stop(mut self) {
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

pub(crate) fn emporium_binary() -> anyhow::Result<PathBuf> {
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

pub(crate) struct Strategy {
    pub(crate) name: &'static str,
    pub(crate) store: &'static str,
}

pub(crate) async fn start_strategy(s: &Strategy, args: &RunArgs) -> anyhow::Result<(Server, Option<String>)> {
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

pub(crate) async fn mysql_exec(server: &str, sql: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(server).await?;
    sqlx::raw_sql(sql).execute(&mut conn).await?;
    Ok(())
}

pub(crate) fn emporium_cli(server: &Server, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut cmd = Command::new(emporium_binary()?);
    cmd.args(args).envs(server.env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = &server.data_dir {
        cmd.arg("--data-dir").arg(dir.path());
    }
    Ok(cmd.output()?)
}

pub(crate) fn token(server: &Server, sub: &str, admin: bool) -> anyhow::Result<String> {
    let mut args = vec!["token", "--sub", sub];
    if admin {
        args.push("--admin");
    }
    Ok(String::from_utf8(emporium_cli(server, &args)?.stdout)?
        .trim()
        .to_owned())
}

pub(crate) async fn wait_ready(base: &str, within: Duration) -> anyhow::Result<()> {
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
