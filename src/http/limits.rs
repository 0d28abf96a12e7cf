//! Rate limits on order creation, per user (JWT subject) and per client IP; on logins,
//! per client IP and per email; on sign-ups, per client IP.
//!
//! All are GCRA limiters from `governor`, keyed in a concurrent map: checking costs a
//! hash and an atomic update, so a refused request is answered 429 before it touches an
//! actor, the database or the password hasher. A rate of 0 turns a limit off.

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

pub(crate) struct RateLimits {
    per_user: Option<DefaultKeyedRateLimiter<UserId>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    logins_per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Keyed by the normalised email, so `Alice@` and `alice@` share one allowance.
    logins_per_email: Option<DefaultKeyedRateLimiter<String>>,
    signups_per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
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

/// The same per minute: password guessing is counted in attempts per minute, not second.
fn keyed_per_minute<K: Clone + Hash + Eq>(per_min: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(per_min)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(RateLimiter::dashmap(Quota::per_minute(rate).allow_burst(burst)))
}

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            per_user: keyed(settings.orders_per_user_per_sec, settings.orders_per_user_burst),
            per_ip: keyed(settings.orders_per_ip_per_sec, settings.orders_per_ip_burst),
            logins_per_ip: keyed_per_minute(settings.logins_per_ip_per_min, settings.logins_per_ip_burst),
            logins_per_email: keyed_per_minute(settings.logins_per_email_per_min, settings.logins_per_email_burst),
            signups_per_ip: keyed_per_minute(settings.signups_per_ip_per_min, settings.signups_per_ip_burst),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one order request; `Err` (429 with `Retry-After`) when over a limit.
    /// The caller's own limit is checked first, so a user over it does not use up the
    /// allowance of others behind the same address.
    pub(crate) fn check_order(&self, user: &UserId, ip: Option<IpAddr>) -> Result<(), ApiError> {
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

    /// Counts one login attempt from `ip` (before the body is looked at).
    pub(crate) fn check_login_ip(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        self.housekeeping();
        check_ip(&self.logins_per_ip, ip).map_err(|not_until| self.refused("logins from this address", &not_until))
    }

    /// Counts one login attempt for `email` (normalised), from any address.
    pub(crate) fn check_login_email(&self, email: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.logins_per_email else {
            return Ok(());
        };
        limiter
            .check_key(&email.to_owned())
            .map_err(|not_until| self.refused("logins for this account", &not_until))
    }

    /// Counts one sign-up from `ip`.
    pub(crate) fn check_signup(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        self.housekeeping();
        check_ip(&self.signups_per_ip, ip).map_err(|not_until| self.refused("sign-ups from this address", &not_until))
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
        for limiter in [&self.logins_per_ip, &self.signups_per_ip].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.logins_per_email {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

type Refusal = NotUntil<<DefaultClock as Clock>::Instant>;

/// Checks an address limit; a request with no known peer address is not limited by it.
fn check_ip(limiter: &Option<DefaultKeyedRateLimiter<IpAddr>>, ip: Option<IpAddr>) -> Result<(), Refusal> {
    match (limiter, ip) {
        (Some(limiter), Some(ip)) => limiter.check_key(&ip),
        _ => Ok(()),
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
            logins_per_email_per_min: 0,
            logins_per_email_burst: 0,
            logins_per_ip_per_min: 0,
            logins_per_ip_burst: 0,
            signups_per_ip_per_min: 0,
            signups_per_ip_burst: 0,
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

    #[test]
    fn logins_are_limited_per_email_across_addresses_and_per_address_across_emails() {
        let mut s = settings((0, 0), (0, 0));
        s.logins_per_email_per_min = 2;
        s.logins_per_ip_per_min = 3;
        let limits = RateLimits::new(&s);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        // Two attempts for one account, from two addresses: the third is refused anywhere.
        assert!(limits.check_login_ip(Some(a)).is_ok() && limits.check_login_email("kim@example.com").is_ok());
        assert!(limits.check_login_ip(Some(b)).is_ok() && limits.check_login_email("kim@example.com").is_ok());
        match limits.check_login_email("kim@example.com") {
            // 2 per minute: the next attempt is allowed in 30 s.
            Err(ApiError::RateLimited { retry_after_secs, .. }) => assert_eq!(retry_after_secs, 30),
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limits.check_login_email("lee@example.com").is_ok());
        // Address a has used 1 of 3; two more, then 429 whatever the email.
        assert!(limits.check_login_ip(Some(a)).is_ok());
        assert!(limits.check_login_ip(Some(a)).is_ok());
        assert!(limits.check_login_ip(Some(a)).is_err());
        assert!(
            limits.check_signup(Some(a)).is_ok(),
            "sign-ups are off in these settings"
        );
    }
}
