//! Typed identifiers that can only be built valid, so a handler that holds a `Sku`
//! or a `UserId` never re-checks it.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

/// A stock-keeping unit: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidId> {
        let raw = raw.into();
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if raw.is_empty() || raw.len() > 64 || !raw.chars().all(valid_char) {
            return Err(InvalidId(format!(
                "sku must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-', got {:?}",
                truncate(&raw)
            )));
        }
        Ok(Self(raw))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sku {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}
impl From<Sku> for String {
    fn from(value: Sku) -> Self {
        value.0
    }
}
impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The user an order belongs to: the JWT `sub`, 1 to 128 visible characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidId> {
        let raw = raw.into();
        if raw.is_empty() || raw.len() > 128 || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(InvalidId(format!(
                "user id must be 1-128 visible characters, got {:?}",
                truncate(&raw)
            )));
        }
        Ok(Self(raw))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for UserId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}
impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}
impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id, so ids sort by creation time.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn parse(raw: &str) -> Result<Self, InvalidId> {
                Uuid::parse_str(raw)
                    .map(Self)
                    .map_err(|_| InvalidId(format!("{} must be a UUID, got {:?}", stringify!($name), truncate(raw))))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// An order's id.
    OrderId
);
uuid_id!(
    /// A product's id.
    ProductId
);

/// Keeps error messages short when echoing hostile input.
fn truncate(raw: &str) -> String {
    raw.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_accepts_plain_codes_and_rejects_the_rest() {
        assert!(Sku::parse("TSHIRT-RED_XL.2").is_ok());
        for bad in ["", "has space", "ünïcode", "a/b", &"x".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn user_id_rejects_whitespace_and_empty() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
    }

    #[test]
    fn order_ids_sort_by_creation() {
        let a = OrderId::generate();
        let b = OrderId::generate();
        assert!(a < b);
        assert_eq!(OrderId::parse(&a.to_string()), Ok(a));
        assert!(OrderId::parse("nope").is_err());
    }
}
