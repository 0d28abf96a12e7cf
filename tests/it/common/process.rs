//! The real `emporium` binary as a child process, for the suites that kill, pause or
//! restart it (`crash.rs`, `cluster.rs`): start it, mint a token, wait until it is ready,
//! read every order back, and run `emporium reconcile` on its store.

use reqwest::StatusCode;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_emporium");

/// The binary to run: `EMPORIUM_TEST_BIN` when set (a copy kept aside, for worktrees
/// that share one cargo target directory and so one `emporium` binary), else [`BIN`].
pub fn bin() -> String {
    std::env::var("EMPORIUM_TEST_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// A running `emporium serve`; `base` is the address it printed first.
pub struct Process {
    pub child: Child,
    pub base: String,
}

impl Process {
    /// `emporium serve` on a free loopback port with `data_dir` and `env` (logging at
    /// `warn` unless `env` says otherwise).
    pub fn serve(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::serve_on(data_dir, "127.0.0.1:0", env, Stdio::inherit())
    }

    /// `emporium serve` on `listen`, its log (stderr) going to `stderr`.
    pub fn serve_on(data_dir: &Path, listen: &str, env: &[(&str, &str)], stderr: Stdio) -> Self {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env("EMPORIUM__TELEMETRY__LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("emporium starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("listening line");
        let base = line.trim().rsplit(' ').next().expect("address").to_owned();
        assert!(base.starts_with("http://"), "unexpected first line {line:?}");
        Self { child, base }
    }
}

/// A running `emporium gateway` (the shared payment gateway of a test cluster), its
/// store and log in `root`; `test_slow` charges and refunds take `slow`. Killed on drop.
pub struct Gateway {
    child: Child,
    pub base: String,
}

impl Gateway {
    pub fn start(root: &Path, slow: Duration) -> Self {
        let log = std::fs::File::create(root.join("gateway.log")).expect("gateway log");
        let mut child = Command::new(bin())
            .args(["gateway", "--listen", "127.0.0.1:0", "--store"])
            .arg(root.join("gateway.db"))
            .env("EMPORIUM__TELEMETRY__LOG_LEVEL", "warn")
            .env("EMPORIUM__PAYMENT__SLOW_MS", slow.as_millis().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("emporium gateway starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let base = line.trim().rsplit(' ').next().expect("address").to_owned();
        assert!(base.starts_with("http://"), "unexpected first line {line:?}");
        Self { child, base }
    }

    /// Every capture the gateway recorded (`GET /captures`).
    pub async fn captures(&self, client: &reqwest::Client) -> Vec<Value> {
        client
            .get(format!("{}/captures", self.base))
            .send()
            .await
            .expect("gateway answers")
            .json()
            .await
            .expect("captures")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `emporium token` for `sub`: signed with the secret `env` configures, or the one
/// generated in `data_dir`.
pub fn token(data_dir: &Path, env: &[(&str, &str)], sub: &str, admin: bool) -> String {
    let mut cmd = Command::new(bin());
    cmd.env("EMPORIUM__TELEMETRY__LOG_LEVEL", "warn")
        .envs(env.iter().copied())
        .args(["token", "--sub", sub, "--data-dir"])
        .arg(data_dir);
    if admin {
        cmd.arg("--admin");
    }
    String::from_utf8(cmd.output().expect("token").stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// Waits (up to `within`) until `base` answers `/health/ready` with 200.
pub async fn wait_ready(client: &reqwest::Client, base: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .map(|r| r.status())
        .ok()
        != Some(StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "{base} not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `emporium reconcile` on the store `env` names (or the one in `data_dir`) must exit 0.
pub fn assert_reconciles(data_dir: &Path, env: &[(&str, &str)]) {
    let reconcile = Command::new(bin())
        .args(["reconcile", "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&reconcile.stdout),
        String::from_utf8_lossy(&reconcile.stderr)
    );
    assert!(reconcile.status.success(), "reconcile: {report}");
}

/// Every order of `user`, following the cursor.
pub async fn all_orders(client: &reqwest::Client, base: &str, user: &str) -> Vec<Value> {
    let mut orders = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/orders?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(user)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        orders.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return orders,
        }
    }
}

/// One child-process suite at a time: the cluster, crash, shutdown and nemesis tests run
/// several servers each on a machine of two cores, and their takeover and fencing checks
/// measure time against lease TTLs. They share one test binary with everything else, so
/// they take this guard for their whole run.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE_AT_A_TIME.lock().await
}
