//! Per-actor-type metrics an actor records on every message: mailbox depth, messages
//! handled and handle latency, with the label lookups done once at start.
//!
//! The mailbox depth is counted by the senders (`sent` before a message is queued,
//! taken back when it is handled or could not be delivered): actix does not expose a
//! mailbox's length, and counting at both ends gives the depth summed over all actors
//! of the type.

use super::Metrics;
use prometheus::{Histogram, IntCounter, IntGauge};
use std::time::Instant;

/// The collectors of one actor type, resolved once.
#[derive(Clone)]
pub(crate) struct ActorProbe {
    mailbox: Option<IntGauge>,
    handle: Option<Histogram>,
    messages: Option<IntCounter>,
}

impl ActorProbe {
    pub fn new(metrics: &Metrics, actor: &str) -> Self {
        let on = metrics.actor_mailbox_depth.is_on();
        Self {
            mailbox: metrics.actor_mailbox_depth.with_label_values(&[actor]).into_inner(),
            handle: metrics.actor_handle_duration.with_label_values(&[actor]).into_inner(),
            messages: on.then(|| metrics.actor_messages.raw().with_label_values(&[actor])),
        }
    }

    /// A message was queued for an actor of this type.
    pub(crate) fn sent(&self) {
        if let Some(g) = &self.mailbox {
            g.inc();
        }
    }

    /// A queued message never reached its actor (mailbox closed or full).
    pub(crate) fn undelivered(&self) {
        if let Some(g) = &self.mailbox {
            g.dec();
        }
    }

    /// A message is being handled: keep the guard until the handler returns.
    pub(crate) fn handling(&self, from_mailbox: bool) -> Handling {
        if from_mailbox {
            self.undelivered();
        }
        if let Some(c) = &self.messages {
            c.inc();
        }
        Handling {
            timer: self.handle.as_ref().map(|h| (h.clone(), Instant::now())),
        }
    }
}

/// Observes the handle latency when dropped.
pub(crate) struct Handling {
    timer: Option<(Histogram, Instant)>,
}

impl Drop for Handling {
    fn drop(&mut self) {
        if let Some((h, started)) = &self.timer {
            h.observe(started.elapsed().as_secs_f64());
        }
    }
}
