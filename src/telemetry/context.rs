//! W3C Trace Context, in one place: what a valid `traceparent` and `tracestate` are, and
//! how a new `traceparent` is made. The HTTP layer reads the caller's headers with these
//! rules, the consumers and the log layer parse stored values (events, Kafka headers) with
//! the same rules, so a value is never accepted by one side and refused by the other.

/// A W3C `traceparent` we pass on: `version-trace_id-parent_id-flags`, lowercase hex of
/// 2-32-16-2, version not `ff`, ids not all zero (W3C Trace Context, section 3.2). Anything
/// else is replaced by a fresh one: it is copied into every event and Kafka header, and
/// tracing backends drop (or worse, merge) traces with invalid ids. Found by the fuzz
/// target: uppercase hex, version `ff` and all-zero ids used to pass.
pub fn valid_traceparent(v: &str) -> bool {
    let lower_hex = |p: &str, len: usize| p.len() == len && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let not_zero = |p: &str| p.bytes().any(|b| b != b'0');
    let mut parts = v.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    lower_hex(version, 2)
        && version != "ff"
        && lower_hex(trace_id, 32)
        && not_zero(trace_id)
        && lower_hex(parent_id, 16)
        && not_zero(parent_id)
        && lower_hex(flags, 2)
}

/// A fresh W3C `traceparent` (random, non-zero ids). From the thread's userspace RNG:
/// every request without one needs it, and `Uuid::new_v4` asks the kernel for its bytes
/// (two `getrandom` calls per request, measurable on a sold-out answer).
pub(crate) fn new_traceparent() -> String {
    let trace: u128 = rand::random::<u128>().max(1);
    let span: u64 = rand::random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-01")
}

/// A W3C `tracestate` we pass on: at most 512 printable ASCII characters, trimmed.
/// Anything else is dropped, as the spec asks, not refused.
pub(crate) fn valid_tracestate(v: &str) -> Option<&str> {
    let value = v.trim();
    let valid = !value.is_empty() && value.len() <= 512 && value.bytes().all(|b| (0x20..=0x7e).contains(&b));
    valid.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_traceparent_is_valid() {
        for _ in 0..100 {
            assert!(valid_traceparent(&new_traceparent()));
        }
    }

    #[test]
    fn traceparent_rules_follow_w3c() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn tracestate_is_trimmed_printable_and_bounded() {
        assert_eq!(valid_tracestate(" vendor=a,other=b "), Some("vendor=a,other=b"));
        assert_eq!(valid_tracestate(""), None);
        assert_eq!(valid_tracestate("a=\u{7f}"), None);
        assert_eq!(valid_tracestate(&"a".repeat(513)), None);
    }
}
