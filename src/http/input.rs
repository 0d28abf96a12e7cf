//! Checks on request content that serde's types cannot express: how deep free-form JSON
//! nests, how long and how clean free text is, how large a price may be.
//!
//! Why a depth limit when serde_json already stops at 128 levels (answered 400): the
//! documents are stored and re-read by other backends (MongoDB refuses documents nested
//! past 100 levels, and recursive code that walks them — indexers, `Drop` — uses stack per
//! level). 16 levels is far more than any product attribute needs. Each check answers
//! 422 `/problems/invalid-request` and names the field, so the client knows what to fix.

use super::problem::ApiError;
use crate::domain::money::{Money, MAX_PRICE};
use serde_json::{Map, Value};

pub use crate::domain::catalog::{json_depth, MAX_JSON_DEPTH};

/// A free-form object field (`attributes`): at most [`MAX_JSON_DEPTH`] levels, and keys
/// that are short visible text.
pub fn check_attributes(field: &str, attributes: &Map<String, Value>) -> Result<(), ApiError> {
    let depth = json_depth(&Value::Object(attributes.clone()));
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::unprocessable(format!(
            "{field} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are allowed"
        )));
    }
    Ok(())
}

/// Free text a person typed (names, brands, paths): 1 to `max_chars` characters once
/// trimmed, no control characters (they break logs, CSV exports and terminals).
pub fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || value.chars().count() > max_chars {
        return Err(ApiError::unprocessable(format!(
            "{field} must be 1-{max_chars} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// A price a request names: at most [`MAX_PRICE`] minor units (never negative: `Money`).
pub fn check_price(field: &str, price: &Money) -> Result<(), ApiError> {
    if price.amount > MAX_PRICE {
        return Err(ApiError::unprocessable(format!(
            "{field} must be at most {MAX_PRICE} minor units"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!({ "a": inner }))
    }

    #[test]
    fn depth_counts_containers_not_scalars() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(json_depth(&nested(100)), 100);
    }

    #[test]
    fn attributes_deeper_than_the_limit_are_refused() {
        let ok = nested(MAX_JSON_DEPTH);
        let deep = nested(MAX_JSON_DEPTH + 1);
        assert!(check_attributes("attributes", ok.as_object().unwrap()).is_ok());
        assert!(check_attributes("attributes", deep.as_object().unwrap()).is_err());
    }

    #[test]
    fn text_must_be_visible_and_bounded() {
        assert!(check_text("name", "운동화 270", 10).is_ok());
        for bad in ["", "   ", "a\u{0}b", "line\nbreak", "elevenchars"] {
            assert!(check_text("name", bad, 10).is_err(), "{bad:?}");
        }
    }
}
