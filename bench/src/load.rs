//! The load generator: closed- or open-loop clients over keep-alive connections,
//! recording every answer's latency and status.

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------ load

#[derive(Default)]
pub(crate) struct Recorded {
    pub(crate) accepted: Vec<u64>,
    pub(crate) sold_out: Vec<u64>,
    pub(crate) other: u64,
    /// Status codes of the answers counted in `other` (0 = no answer).
    pub(crate) other_statuses: std::collections::BTreeMap<u16, u64>,
    pub(crate) accepted_ids: u64,
}

#[derive(Debug, Serialize, Clone, Default)]
pub(crate) struct Latency {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

pub(crate) fn latency(samples: &[u64]) -> Latency {
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
pub(crate) async fn drive(
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
