//! `Idempotency-Key`: the rules in one place. A key names one request of one user; the
//! same key with the same request (by its hash) gets the first answer again, the same key
//! with another request is refused. Where the parts live: the key and the request's hash
//! are built here (the HTTP handler parses with them); the stored answer is a row of
//! `idempotency_keys`, written in the order's own commit (`persistence::IdempotencyRecord`);
//! the `Orders` directory looks it up, holds a key while its request is in flight, and
//! decides with [`replay`].

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// An `Idempotency-Key` header value: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1-255 visible ASCII characters")]
pub struct InvalidKey;

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidKey> {
        if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidKey);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 (hex) of a request as parsed, so formatting differences (spaces, key
/// order the parser normalises) are still "the same request".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHash(String);

impl RequestHash {
    pub(crate) fn of(request: &impl Serialize) -> Self {
        // A parsed request body serializes back without fail (plain structs, string keys).
        let canonical = serde_json::to_vec(request).unwrap_or_default();
        Self(hex::encode(Sha256::digest(canonical)))
    }

    /// A hash as stored.
    pub(crate) fn stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request with a key that already has a stored answer gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// The same request: the stored answer, again.
    StoredAnswer,
    /// Another request under the same key: refused (422), nothing changes.
    Mismatch,
}

/// The rule for a key that already has an answer stored with `stored` as its request hash.
pub(crate) fn replay(stored: &RequestHash, this: &RequestHash) -> Replay {
    if stored == this {
        Replay::StoredAnswer
    } else {
        Replay::Mismatch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(IdempotencyKey::parse("checkout-1").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        for bad in ["", "with space", "tab\t", "한글", &"k".repeat(256)] {
            assert_eq!(IdempotencyKey::parse(bad), Err(InvalidKey), "{bad:?}");
        }
    }

    #[test]
    fn the_same_request_replays_and_another_is_refused() {
        let a = RequestHash::of(&serde_json::json!({"items": [{"sku": "A", "qty": 1}]}));
        let b = RequestHash::of(&serde_json::json!({"items": [{"sku": "A", "qty": 2}]}));
        assert_eq!(
            replay(&a, &RequestHash::stored(a.as_str().to_owned())),
            Replay::StoredAnswer
        );
        assert_eq!(replay(&a, &b), Replay::Mismatch);
        assert_eq!(a.as_str().len(), 64);
    }
}
