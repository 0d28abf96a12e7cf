//! Collectors that can be switched off (`telemetry.metrics = false`).
//!
//! [`Gate`] wraps a Prometheus collector and offers the same recording methods
//! (`inc`, `observe`, `with_label_values(..).inc()`, ...), so call sites read as if
//! they used the collector directly. Switched off, a call is one predictable branch: no
//! label lookup (a hash and a read lock per call in a `*Vec`), no atomic add. It exists
//! to measure what recording costs on the hot path (see README, "Metrics overhead").
//!
//! Only what the request path records per message is gated (counters, histograms,
//! the mailbox-depth gauge); gauges set by pollers (outbox backlog, pool usage, live
//! actors) are always kept, because readiness and the dashboard read them.

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{Histogram, IntCounter, IntGauge};

#[derive(Clone)]
pub(crate) struct Gate<T> {
    inner: T,
    on: bool,
}

impl<T: Collector + Clone + 'static> Gate<T> {
    pub fn new(inner: T, on: bool) -> Self {
        Self { inner, on }
    }
}

impl<T> Gate<T> {
    /// Whether recording is on (`telemetry.metrics`).
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// The collector itself (reading values in tests and on the readiness page).
    pub(crate) fn raw(&self) -> &T {
        &self.inner
    }
}

impl Gate<IntCounter> {
    pub(crate) fn inc(&self) {
        if self.on {
            self.inner.inc();
        }
    }
    pub(crate) fn inc_by(&self, v: u64) {
        if self.on {
            self.inner.inc_by(v);
        }
    }
}

impl Gate<Histogram> {
    pub(crate) fn observe(&self, v: f64) {
        if self.on {
            self.inner.observe(v);
        }
    }
}

impl<B: MetricVecBuilder> Gate<MetricVec<B>> {
    /// The child for these label values, or an inert one when recording is off.
    pub(crate) fn with_label_values(&self, values: &[&str]) -> Child<B::M> {
        Child(self.on.then(|| self.inner.with_label_values(values)))
    }
}

/// One labelled series of a gated vector (`None`: recording is off).
pub(crate) struct Child<M>(Option<M>);

impl Child<IntCounter> {
    pub(crate) fn inc(&self) {
        if let Some(c) = &self.0 {
            c.inc();
        }
    }
    /// The series itself, to keep and count into without a label lookup per call.
    pub(crate) fn into_inner(self) -> Option<IntCounter> {
        self.0
    }
    pub(crate) fn inc_by(&self, v: u64) {
        if let Some(c) = &self.0 {
            c.inc_by(v);
        }
    }
}

impl Child<Histogram> {
    pub(crate) fn observe(&self, v: f64) {
        if let Some(h) = &self.0 {
            h.observe(v);
        }
    }
    /// The series itself, to keep and observe into without a label lookup per call.
    pub(crate) fn into_inner(self) -> Option<Histogram> {
        self.0
    }
}

impl Child<IntGauge> {
    pub(crate) fn into_inner(self) -> Option<IntGauge> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn switched_off_records_nothing_and_on_records() {
        let vec = IntCounterVec::new(Opts::new("t_total", "t"), &["l"]).unwrap();
        Gate::new(vec.clone(), false).with_label_values(&["a"]).inc();
        assert_eq!(vec.with_label_values(&["a"]).get(), 0);
        Gate::new(vec.clone(), true).with_label_values(&["a"]).inc_by(3);
        assert_eq!(vec.with_label_values(&["a"]).get(), 3);
        let c = IntCounter::new("c_total", "c").unwrap();
        Gate::new(c.clone(), false).inc();
        Gate::new(c.clone(), true).inc();
        assert_eq!(c.get(), 1);
    }

    /// What one sold-out flash-sale attempt records, timed with recording on and off:
    /// `cargo test --release --lib recording_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a timing, not a check: run it in release"]
    fn recording_cost_per_order_attempt() {
        use crate::telemetry::{ActorProbe, Metrics};
        use std::time::Instant;
        const N: u32 = 2_000_000;
        for on in [true, false, true, false] {
            let m = Metrics::with_recording(on).unwrap();
            let probe = ActorProbe::new(&m, "sku");
            let started = Instant::now();
            for _ in 0..N {
                probe.sent();
                {
                    let _handling = probe.handling(true);
                    m.reservations.with_label_values(&["sold_out"]).inc();
                }
                m.http_requests.with_label_values(&["/v1/orders", "POST", "409"]).inc();
                m.http_duration
                    .with_label_values(&["/v1/orders", "POST"])
                    .observe(0.000_2);
            }
            let per = started.elapsed().as_nanos() as f64 / f64::from(N);
            eprintln!(
                "metrics {}: {per:.0} ns of recording per order attempt",
                if on { "on" } else { "off" }
            );
        }
    }
}
