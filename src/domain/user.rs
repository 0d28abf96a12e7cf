//! User accounts: what a valid sign-up is, and when an account is dormant.
//!
//! [`Email`], [`Password`] and [`DisplayName`] can only be built valid, so the layers
//! above never re-check them. Dormancy is one pure rule ([`is_dormant`]) plus the cutoff
//! the daily sweep queries with ([`dormancy_cutoff`]); the sweep's SQL compares the same
//! cutoff, so "dormant at time t" means one thing everywhere.

use super::Millis;
use std::fmt;

/// Why a sign-up field was refused. The message names the field, for the client's form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub(crate) field: &'static str,
    pub(crate) reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// RFC 5321 limits: 254 octets in all (a 256-octet path less the angle brackets),
/// 64 for the local part, 63 per domain label.
const EMAIL_MAX_BYTES: usize = 254;
const LOCAL_MAX_BYTES: usize = 64;
const LABEL_MAX_BYTES: usize = 63;

/// A normalised email address: trimmed and lower-cased as a whole.
///
/// The whole address is lower-cased, not only the domain: RFC 5321 lets a mail server
/// treat `Alice@` and `alice@` as two mailboxes, but practically none does, and two
/// accounts that differ only in case would be a gift to impersonation. Quoted local
/// parts and IP-literal domains are refused (no shop customer has one). Non-ASCII
/// letters are accepted in both parts (SMTPUTF8 addresses, `한국.kr` domains); they are
/// not Unicode-normalised, so a decomposed spelling is a different address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(invalid("email", "must not be empty"));
        }
        if email.len() > EMAIL_MAX_BYTES {
            return Err(invalid("email", format!("must be at most {EMAIL_MAX_BYTES} bytes")));
        }
        let (local, domain) = match email.split_once('@') {
            Some((local, domain)) if !domain.contains('@') => (local, domain),
            _ => return Err(invalid("email", "must contain exactly one '@'")),
        };
        validate_local(local)?;
        validate_domain(domain)?;
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn validate_local(local: &str) -> Result<(), InvalidField> {
    if local.is_empty() || local.len() > LOCAL_MAX_BYTES {
        return Err(invalid(
            "email",
            format!("the part before '@' must be 1-{LOCAL_MAX_BYTES} bytes"),
        ));
    }
    // RFC 5322 "atext" plus non-ASCII letters and digits; dots only between atoms.
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
    if let Some(c) = local.chars().find(|&c| !(atext(c) || c == '.')) {
        return Err(invalid("email", format!("{c:?} is not allowed before '@'")));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(invalid("email", "dots before '@' must sit between other characters"));
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), InvalidField> {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid("email", "the domain needs a dot, as in example.com"));
    }
    for label in &labels {
        let valid = !label.is_empty()
            && label.len() <= LABEL_MAX_BYTES
            && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(invalid(
                "email",
                format!("the domain label {label:?} must be 1-{LABEL_MAX_BYTES} letters, digits or inner '-'"),
            ));
        }
    }
    // A numeric top-level label would be an IP address, not a mail domain.
    if labels.last().is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit())) {
        return Err(invalid("email", "the domain must end in a name, not a number"));
    }
    Ok(())
}

/// Password length in characters (Unicode scalar values), not bytes, so a Korean
/// passphrase counts what the user typed. NIST SP 800-63B: length is what makes a
/// password strong, composition rules are not required, and at least 64 characters
/// must be accepted. The maximum only bounds the work and memory of one request.
pub(crate) const PASSWORD_MIN_CHARS: usize = 12;
pub(crate) const PASSWORD_MAX_CHARS: usize = 128;

/// A password that meets the sign-up rules. Never printed: `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let chars = raw.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            return Err(invalid(
                "password",
                format!("must be at least {PASSWORD_MIN_CHARS} characters"),
            ));
        }
        if chars > PASSWORD_MAX_CHARS {
            return Err(invalid(
                "password",
                format!("must be at most {PASSWORD_MAX_CHARS} characters"),
            ));
        }
        if raw.chars().all(char::is_whitespace) {
            return Err(invalid("password", "must not be only spaces"));
        }
        if raw.chars().any(char::is_control) {
            return Err(invalid("password", "must not contain control characters"));
        }
        // Kept exactly as typed: trimming would silently change what the user chose.
        Ok(Self(raw.to_owned()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

pub(crate) const NAME_MAX_CHARS: usize = 100;

/// The name a user is greeted with: trimmed, 1-100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if name.chars().count() > NAME_MAX_CHARS {
            return Err(invalid("name", format!("must be at most {NAME_MAX_CHARS} characters")));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid("name", "must not contain control characters"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const DAY_MILLIS: Millis = 24 * 60 * 60 * 1000;

/// When a user was last active: their last login, or their sign-up if they never logged in
/// (a new account is not dormant from birth).
#[cfg(test)]
pub(crate) fn last_active(created_at: Millis, last_login_at: Option<Millis>) -> Millis {
    last_login_at.map_or(created_at, |login| login.max(created_at))
}

/// The latest last-activity time that counts as dormant at `now`: activity at or before
/// it is `dormant_after_days` or more old. `0` days makes every account dormant at the
/// next sweep (for tests); it never underflows.
pub(crate) fn dormancy_cutoff(now: Millis, dormant_after_days: u32) -> Millis {
    now.saturating_sub(Millis::from(dormant_after_days).saturating_mul(DAY_MILLIS))
}

/// Whether an account last active at `last_active` is dormant at `now`: no login for
/// `dormant_after_days` days or more.
#[cfg(test)]
pub(crate) fn is_dormant(last_active: Millis, now: Millis, dormant_after_days: u32) -> bool {
    last_active <= dormancy_cutoff(now, dormant_after_days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        let email = Email::parse("  Alice.Kim+shop@Example.CO.KR ").unwrap();
        assert_eq!(email.as_str(), "alice.kim+shop@example.co.kr");
        assert_eq!(Email::parse("김민수@한국.kr").unwrap().as_str(), "김민수@한국.kr");
    }

    #[test]
    fn malformed_emails_are_refused_naming_the_field() {
        let long_local = format!("{}@example.com", "a".repeat(65));
        let long_total = format!("a@{}.com", vec!["b".repeat(60); 5].join("."));
        for bad in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "a@b@example.com",
            "alice@localhost",
            "alice@example..com",
            "alice@-example.com",
            "alice@example.com-",
            "alice@127.0.0.1",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "al ice@example.com",
            "\"alice\"@example.com",
            "alice@[127.0.0.1]",
            "alice@exa_mple.com",
            "alice\n@example.com",
            &long_local,
            &long_total,
        ] {
            let err = Email::parse(bad).expect_err(bad);
            assert_eq!(err.field, "email", "{bad:?}");
        }
    }

    #[test]
    fn passwords_follow_the_length_rules_and_stay_as_typed() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse(&"x".repeat(PASSWORD_MIN_CHARS - 1)).is_err());
        assert!(Password::parse(&"x".repeat(PASSWORD_MIN_CHARS)).is_ok());
        assert!(Password::parse(&"x".repeat(PASSWORD_MAX_CHARS)).is_ok());
        assert!(Password::parse(&"x".repeat(PASSWORD_MAX_CHARS + 1)).is_err());
        // Twelve Hangul syllables are twelve characters (36 bytes).
        assert!(Password::parse("비밀번호는열두글자입니다").is_ok());
        assert!(Password::parse(&" ".repeat(20)).is_err());
        assert!(Password::parse("correct horse\u{0}battery").is_err());
        let kept = Password::parse("  spaces around  ").unwrap();
        assert_eq!(kept.expose(), "  spaces around  ");
        assert_eq!(format!("{kept:?}"), "Password(***)");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(DisplayName::parse("  김민수 ").unwrap().as_str(), "김민수");
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"가".repeat(NAME_MAX_CHARS)).is_ok());
        assert!(DisplayName::parse(&"가".repeat(NAME_MAX_CHARS + 1)).is_err());
        assert!(DisplayName::parse("bell\u{7}").is_err());
    }

    #[test]
    fn an_account_turns_dormant_exactly_after_the_configured_days() {
        let day = DAY_MILLIS;
        let login = 1_000 * day;
        assert!(!is_dormant(login, login, 180));
        assert!(!is_dormant(login, login + 180 * day - 1, 180));
        assert!(is_dormant(login, login + 180 * day, 180));
        assert!(is_dormant(login, login + 400 * day, 180));
        // Zero days: dormant at once (what the short-interval tests use).
        assert!(is_dormant(login, login, 0));
    }

    #[test]
    fn an_account_that_never_logged_in_counts_from_its_sign_up() {
        let day = DAY_MILLIS;
        assert_eq!(last_active(5 * day, None), 5 * day);
        assert_eq!(last_active(5 * day, Some(9 * day)), 9 * day);
        // A login time before the sign-up (clock skew between servers) does not age the account.
        assert_eq!(last_active(5 * day, Some(day)), 5 * day);
    }

    #[test]
    fn the_cutoff_never_underflows() {
        assert_eq!(dormancy_cutoff(Millis::MIN + 5, 180), Millis::MIN);
        assert_eq!(dormancy_cutoff(0, u32::MAX), -(Millis::from(u32::MAX) * DAY_MILLIS));
    }

    proptest! {
        /// The sweep marks exactly the accounts the rule calls dormant: the cutoff it
        /// queries with and the rule agree for every time and setting.
        #[test]
        fn the_sweep_cutoff_and_the_rule_agree(
            active in -1_000_000_000_000i64..10_000_000_000_000,
            idle in 0i64..1_000_000_000_000,
            days in 0u32..100_000,
        ) {
            let now = active + idle;
            prop_assert_eq!(is_dormant(active, now, days), active <= dormancy_cutoff(now, days));
            prop_assert_eq!(is_dormant(active, now, days), idle >= Millis::from(days) * DAY_MILLIS);
        }

        /// Waking (a login at `now`) always makes an account active again at `now`.
        #[test]
        fn a_login_wakes_the_account(now in -1_000_000_000_000i64..10_000_000_000_000, days in 1u32..100_000) {
            prop_assert!(!is_dormant(last_active(now - 5, Some(now)), now, days));
        }
    }
}
