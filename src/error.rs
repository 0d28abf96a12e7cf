//! [`Cause`]: what an error wraps, kept whole.
//!
//! Errors here cross actors and tasks and are often cloned (an answer shared by the
//! callers of one request, a failure kept in a saga's state), so the lower error they
//! wrap is held behind an `Arc` rather than flattened to its text: `source()` still
//! walks the whole chain (a `sqlx` error, the I/O error under it), and logs print it
//! with [`chain`]. Where nothing lower exists (an unexpected status, a rule of ours),
//! a cause is built from its text.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The error under another one (its own `source()` chain included), cheap to clone.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    /// Wraps `error`, keeping its chain.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }
}

/// A cause with nothing under it but its description.
#[derive(Debug)]
struct Described(String);

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Described {}

impl From<String> for Cause {
    fn from(text: String) -> Self {
        Self::new(Described(text))
    }
}

impl From<&str> for Cause {
    fn from(text: &str) -> Self {
        Self::new(Described(text.to_owned()))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The wrapped error stands in for its own place in the chain: `source()` continues
/// with what it wraps.
impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// `error` and every source under it, on one line (`a: b: c`), for logs. Text a
/// message repeats from its source (`"store unavailable: x"` over `"x"`) is not
/// printed twice.
pub(crate) fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] Cause);

    #[test]
    fn a_cause_keeps_the_chain_of_what_it_wraps() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        #[derive(Debug, thiserror::Error)]
        #[error("connection lost")]
        struct Lost(#[source] std::io::Error);
        let outer = Outer(Cause::new(Lost(io)));
        let under = outer.source().expect("the cause");
        assert_eq!(under.to_string(), "connection lost");
        assert_eq!(under.source().map(|e| e.to_string()).as_deref(), Some("reset by peer"));
        assert_eq!(chain(&outer), "outer: connection lost: reset by peer");
        let clone = Outer(outer.0.clone());
        assert_eq!(chain(&clone), chain(&outer));
    }

    #[test]
    fn a_described_cause_has_nothing_under_it() {
        let cause = Cause::from("gateway answered 502");
        assert_eq!(cause.to_string(), "gateway answered 502");
        assert!(cause.source().is_none());
    }
}
