//! Rate limits on order creation, per user (JWT subject) and per client IP.
//!
//! Both are GCRA limiters from `governor`, keyed in a concurrent map: checking costs a
//! hash and an atomic update, so a refused request is answered 429 before it touches an
//! actor or the database. A rate of 0 turns a limit off.

use super::problem::ApiError;
use crate::config::LimitSettings;
use crate::domain::ids::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// Forget idle keys every this many checks, so the maps do not grow with every user
/// or address ever seen.
const HOUSEKEEPING_EVERY: u64 = 4096;

pub struct RateLimits {
    per_user: Option<DefaultKeyedRateLimiter<UserId>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    checks: AtomicU64,
}

/// A limiter for `per_sec` with room for `burst` at once (0 = the same as the rate),
/// or `None` when `per_sec` is 0.
fn keyed<K: Clone + Hash + Eq>(per_sec: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst)))
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            per_user: keyed(settings.orders_per_user_per_sec, settings.orders_per_user_burst),
            per_ip: keyed(settings.orders_per_ip_per_sec, settings.orders_per_ip_burst),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one order request; `Err` (429 with `Retry-After`) when over a limit.
    /// The caller's own limit is checked first, so a user over it does not use up the
    /// allowance of others behind the same address.
    pub fn check_order(&self, user: &UserId, ip: Option<IpAddr>) -> Result<(), ApiError> {
        self.housekeeping();
        if let Some(limiter) = &self.per_user {
            limiter
                .check_key(user)
                .map_err(|not_until| self.refused("orders from this user", &not_until))?;
        }
        if let (Some(limiter), Some(ip)) = (&self.per_ip, ip) {
            limiter
                .check_key(&ip)
                .map_err(|not_until| self.refused("orders from this address", &not_until))?;
        }
        Ok(())
    }

    fn refused(&self, what: &str, not_until: &NotUntil<<DefaultClock as Clock>::Instant>) -> ApiError {
        let wait = not_until.wait_time_from(self.clock.now());
        // Retry-After takes whole seconds: round up, and never say 0 (that invites a retry storm).
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        ApiError::RateLimited {
            detail: format!("too many {what}; retry after {secs} s"),
            retry_after_secs: secs,
        }
    }

    fn housekeeping(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % HOUSEKEEPING_EVERY != 0 {
            return;
        }
        if let Some(limiter) = &self.per_user {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(user: (u32, u32), ip: (u32, u32)) -> LimitSettings {
        LimitSettings {
            orders_per_user_per_sec: user.0,
            orders_per_user_burst: user.1,
            orders_per_ip_per_sec: ip.0,
            orders_per_ip_burst: ip.1,
        }
    }

    #[test]
    fn a_user_gets_the_burst_then_429_and_others_are_not_affected() {
        let limits = RateLimits::new(&settings((1, 2), (0, 0)));
        let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
        assert!(limits.check_order(&alice, None).is_ok());
        assert!(limits.check_order(&alice, None).is_ok());
        match limits.check_order(&alice, None) {
            Err(ApiError::RateLimited { retry_after_secs, .. }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limits.check_order(&bob, None).is_ok());
    }

    #[test]
    fn the_address_limit_counts_every_user_behind_it_and_zero_turns_limits_off() {
        let ip: IpAddr = [10, 0, 0, 1].into();
        let limits = RateLimits::new(&settings((0, 0), (1, 1)));
        assert!(limits.check_order(&UserId::parse("a").unwrap(), Some(ip)).is_ok());
        assert!(limits.check_order(&UserId::parse("b").unwrap(), Some(ip)).is_err());
        assert!(limits.check_order(&UserId::parse("b").unwrap(), None).is_ok());

        let off = RateLimits::new(&settings((0, 0), (0, 0)));
        let user = UserId::parse("busy").unwrap();
        assert!((0..1000).all(|_| off.check_order(&user, Some(ip)).is_ok()));
    }
}
