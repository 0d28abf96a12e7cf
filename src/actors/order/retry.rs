//! The one retry loop of the order side (saga steps, in-doubt orders): a step that must
//! finish rather than give up is tried again after a doubling, capped backoff.

use std::time::Duration;

/// The one retry loop of the saga: runs `attempt` until it returns `Some`, sleeping a
/// doubling backoff (from `first`, capped at `cap`) between tries. For steps that must
/// finish rather than give up (a saga step, an in-doubt order); each caller decides
/// which failures are worth another try by returning `None` for them.
pub(super) async fn with_backoff<T, F, Fut>(first: Duration, cap: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut backoff = first;
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cap);
    }
}
