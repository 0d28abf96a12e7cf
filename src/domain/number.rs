//! Whole numbers as JSON Schema counts them: `2`, `2.0` and `2e0` are all the integer 2.
//!
//! serde refuses `2.0` for an `i64`, but the OpenAPI document says `"type": "integer"`,
//! and in JSON Schema that type admits any number with no fractional part. A client (or
//! schemathesis) that writes `"qty": 541.0` sends a valid request, so quantities, stock
//! and amounts take it. A fraction or a value outside `i64` is still refused (422).

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

/// `#[serde(deserialize_with = "crate::domain::number::whole")]` on an `i64` field.
pub(crate) fn whole<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    deserializer.deserialize_any(WholeVisitor)
}

struct WholeVisitor;

impl Visitor<'_> for WholeVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        // 2^63 is exactly representable; anything at or past it does not fit in an i64.
        const LIMIT: f64 = 9_223_372_036_854_775_808.0;
        if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("expected a whole number, got {v}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Qty {
        #[serde(deserialize_with = "whole")]
        qty: i64,
    }

    fn qty(json: &str) -> Option<i64> {
        serde_json::from_str::<Qty>(json).ok().map(|q| q.qty)
    }

    #[test]
    fn integral_numbers_in_any_spelling_are_accepted() {
        assert_eq!(qty(r#"{"qty":541}"#), Some(541));
        assert_eq!(qty(r#"{"qty":541.0}"#), Some(541));
        assert_eq!(qty(r#"{"qty":5.41e2}"#), Some(541));
        assert_eq!(qty(r#"{"qty":-3.0}"#), Some(-3));
    }

    #[test]
    fn fractions_strings_and_out_of_range_numbers_are_refused() {
        for bad in [
            r#"{"qty":1.5}"#,
            r#"{"qty":"1"}"#,
            r#"{"qty":9223372036854775808}"#,
            r#"{"qty":1e300}"#,
            r#"{"qty":null}"#,
        ] {
            assert_eq!(qty(bad), None, "{bad}");
        }
    }
}
