//! Test servers for a plain `cargo test`: a suite that needs MariaDB, Kafka, MongoDB or
//! Elasticsearch gets it whether or not anybody ran `scripts/services.sh start` first.
//!
//! Order of preference: the variable the suite reads (`EMPORIUM_TEST_KAFKA`, ...) when it
//! is set — CI and `eval "$(scripts/services.sh env)"` set them; else the project's own
//! `scripts/services.sh start <service>` (it installs the server once into the ignored
//! `.services/venv`, starts it on a free port and records its pid; it serializes
//! concurrent callers, so parallel test binaries share one server) followed by
//! `scripts/services.sh env <service>`. Servers started this way keep running after the
//! tests, for the next run; `scripts/services.sh stop` stops them. Only when that fails
//! too (typically: no package registry reachable to install the server) does the suite
//! skip, printing `SKIPPED:` and the reason; under `CI=true` it fails instead.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// What `services.sh env` printed per service, or why it could not start (once per test binary).
type Started = HashMap<&'static str, Result<HashMap<String, String>, String>>;

fn started() -> &'static Mutex<Started> {
    static STARTED: OnceLock<Mutex<Started>> = OnceLock::new();
    STARTED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The service of `scripts/services.sh` that provides a test variable.
fn service_of(var: &str) -> Option<&'static str> {
    match var {
        "EMPORIUM_TEST_KAFKA" | "EMPORIUM_TEST_KAFKA_BROKER" => Some("kafka"),
        "EMPORIUM_TEST_MONGO_URL" => Some("mongo"),
        "EMPORIUM_TEST_ES_URL" => Some("search"),
        "EMPORIUM_TEST_MYSQL_URL" => Some("mysql"),
        _ => None,
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Runs `scripts/services.sh start SERVICE` then `env SERVICE`; the exported variables.
fn start(service: &str) -> Result<HashMap<String, String>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/services.sh");
    eprintln!("{service}: not configured; starting it with scripts/services.sh start {service}");
    let out = Command::new("bash")
        .arg(&script)
        .args(["start", service])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        let log = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        return Err(format!(
            "scripts/services.sh start {service} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    let env = Command::new("bash")
        .arg(&script)
        .args(["env", service])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let vars: HashMap<String, String> = String::from_utf8_lossy(&env.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect();
    Ok(vars)
}

/// The value of a test variable: from the environment, else from a server started
/// through scripts/services.sh. `None` (with `SKIPPED:` and the reason printed) only when
/// neither works; under `CI=true` that fails the test instead.
pub fn test_env(var: &str) -> Option<String> {
    if let Ok(v) = std::env::var(var) {
        if !v.is_empty() {
            return Some(v);
        }
    }
    let reason = match service_of(var) {
        None => format!("{var} is not set"),
        Some(service) => {
            let mut started = started().lock().unwrap_or_else(|e| e.into_inner());
            let vars = started.entry(service).or_insert_with(|| start(service));
            match vars {
                Ok(vars) => match vars.get(var) {
                    Some(v) => return Some(v.clone()),
                    None => format!("scripts/services.sh env {service} printed no {var}"),
                },
                Err(e) => format!("{var} is not set and the server could not be started: {e}"),
            }
        }
    };
    assert!(!in_ci(), "{reason} (CI=true: failing, not skipping)");
    eprintln!("SKIPPED: {reason}");
    None
}
