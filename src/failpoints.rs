//! Failpoints: named places in the order side where a test can make the process abort or
//! pause, to pin the windows of docs/cluster.md's decision protocol deterministically
//! (between a saga's decision commit and its remote settles, between a capture and its
//! settle). Compiled only with the `failpoints` feature, which the test build enables
//! (Cargo.toml's dev-dependency on this package); without it [`hit`] is an empty inline
//! function and costs nothing.
//!
//! The points: `after_capture` (a saga's payment succeeded, its settle not committed yet),
//! `after_cancel_commit` (a saga's cancel is durable; a charge it sent may still be at
//! the gateway),
//! `before_decision_commit` (a cross-owner order's step settled its own shard's SKUs in
//! memory, its decision not committed yet), `after_decision_commit` (the decision is
//! durable, the owners of its other SKUs not told yet), `apply_decision_before_commit` (a SKU's owner settled the
//! reservation in memory, its commit not queued yet).
//!
//! Configuration is one environment variable read once per process:
//! `EMPORIUM_FAILPOINTS="after_decision_commit=abort;after_capture=sleep(500)"`.
//! Actions: `abort` (the process dies at once, like `kill -9`: nothing is flushed or
//! handed over) and `sleep(<ms>)` (the calling task pauses).
//!
//! It reads the environment directly rather than through `Settings`: it is a test hook,
//! not configuration, and must not be settable from a config file in production.

/// What a failpoint does when it is hit.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Abort,
    Sleep(std::time::Duration),
}

#[cfg(feature = "failpoints")]
fn parse(spec: &str) -> Vec<(String, Action)> {
    spec.split(';')
        .filter_map(|point| {
            let (name, action) = point.trim().split_once('=')?;
            let action = match action.trim() {
                "abort" => Action::Abort,
                other => {
                    let ms = other.strip_prefix("sleep(")?.strip_suffix(')')?.parse().ok()?;
                    Action::Sleep(std::time::Duration::from_millis(ms))
                }
            };
            Some((name.trim().to_owned(), action))
        })
        .collect()
}

#[cfg(feature = "failpoints")]
fn configured(name: &str) -> Option<Action> {
    static POINTS: std::sync::OnceLock<Vec<(String, Action)>> = std::sync::OnceLock::new();
    let points = POINTS.get_or_init(|| {
        std::env::var("EMPORIUM_FAILPOINTS")
            .map(|s| parse(&s))
            .unwrap_or_default()
    });
    points.iter().find(|(n, _)| n == name).map(|(_, a)| a.clone())
}

/// Runs the failpoint `name` if the environment configures it.
#[cfg(feature = "failpoints")]
pub(crate) async fn hit(name: &str) {
    match configured(name) {
        Some(Action::Abort) => {
            tracing::error!(failpoint = name, "failpoint: aborting");
            std::process::abort();
        }
        Some(Action::Sleep(pause)) => {
            tracing::warn!(failpoint = name, ?pause, "failpoint: sleeping");
            tokio::time::sleep(pause).await;
        }
        None => {}
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) async fn hit(_name: &str) {}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_points_and_skips_what_it_does_not_understand() {
        assert_eq!(
            parse("a=abort; b = sleep(250) ;c=explode;d"),
            vec![
                ("a".to_owned(), Action::Abort),
                ("b".to_owned(), Action::Sleep(Duration::from_millis(250)))
            ]
        );
    }
}
