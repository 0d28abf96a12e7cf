//! Money in integer minor units (cents, won) with an ISO 4217 currency code.
//! No floating point anywhere: totals are exact and overflow is an error.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be a 3-letter ISO 4217 code such as KRW or USD, got {0:?}")]
    InvalidCurrency(String),
    #[error("amount must be zero or positive, got {0}")]
    Negative(i64),
    #[error("cannot add {0} to {1}: different currencies")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount overflows")]
    Overflow,
}

/// The largest price a request may name: 10^12 minor units (ten billion dollars). With at
/// most 50 lines of at most 1000 units an order total stays below 2^63, so a total never
/// overflows whatever the prices. Checked at the edge only: totals may exceed it.
pub(crate) const MAX_PRICE: i64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, MoneyError> {
        match raw.as_bytes() {
            [a, b, c] if raw.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(MoneyError::InvalidCurrency(raw.chars().take(8).collect())),
        }
    }
    pub fn as_str(&self) -> &str {
        // Only ASCII uppercase letters get in through `parse`.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}
impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}
impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}
impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{amount, currency}`; the amount is in minor units and never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "RawMoney")]
pub(crate) struct Money {
    /// Minor units (cents, won), never negative; a price at most 10^12.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub(crate) amount: i64,
    /// ISO 4217 code, e.g. `KRW`.
    #[schema(value_type = String, example = "KRW", pattern = "^[A-Z]{3}$")]
    pub(crate) currency: Currency,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMoney {
    #[serde(deserialize_with = "super::number::whole")]
    amount: i64,
    currency: Currency,
}
impl TryFrom<RawMoney> for Money {
    type Error = MoneyError;
    fn try_from(raw: RawMoney) -> Result<Self, Self::Error> {
        Money::new(raw.amount, raw.currency)
    }
}

impl Money {
    pub fn new(amount: i64, currency: Currency) -> Result<Self, MoneyError> {
        if amount < 0 {
            return Err(MoneyError::Negative(amount));
        }
        Ok(Self { amount, currency })
    }
    pub(crate) fn times(self, qty: i64) -> Result<Self, MoneyError> {
        let amount = self.amount.checked_mul(qty).ok_or(MoneyError::Overflow)?;
        Self::new(amount, self.currency)
    }
    pub(crate) fn plus(self, other: Self) -> Result<Self, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(other.currency, self.currency));
        }
        let amount = self.amount.checked_add(other.amount).ok_or(MoneyError::Overflow)?;
        Ok(Self {
            amount,
            currency: self.currency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krw(amount: i64) -> Money {
        Money::new(amount, Currency::parse("KRW").unwrap()).unwrap()
    }

    #[test]
    fn arithmetic_is_exact_and_checked() {
        assert_eq!(krw(1500).times(3).unwrap(), krw(4500));
        assert_eq!(krw(1).plus(krw(2)).unwrap(), krw(3));
        assert_eq!(krw(i64::MAX).times(2), Err(MoneyError::Overflow));
        let usd = Money::new(1, Currency::parse("USD").unwrap()).unwrap();
        assert!(matches!(krw(1).plus(usd), Err(MoneyError::CurrencyMismatch(..))));
    }

    #[test]
    fn rejects_bad_currency_and_negative_amounts() {
        assert!(Currency::parse("krw").is_err());
        assert!(Currency::parse("KRWW").is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount":-1,"currency":"KRW"}"#).is_err());
        assert!(serde_json::from_str::<Money>(r#"{"amount":1,"currency":"KRW","x":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Money>(r#"{"amount":7,"currency":"KRW"}"#).unwrap(),
            krw(7)
        );
    }
}
