//! The fuzz targets of `emporium::fuzz`, driven by proptest: the short run of every
//! `cargo test` and of CI (`PROPTEST_CASES` sets the number of cases per target; 256 by
//! default). The long, coverage-guided run is `cargo fuzz` in `fuzz/` (README,
//! "Security and limits"): both engines run the same functions.
//!
//! Random bytes alone rarely get past a JSON parser, so the request target is also fed
//! valid bodies with a few bytes replaced, JSON-like token soup, and traceparent-shaped
//! strings with the edge values the W3C rules are about.

use emporium::fuzz;
use proptest::prelude::*;

const SEEDS: &[&str] = &[
    r#"{"items":[{"sku":"TSHIRT-RED-M","qty":1},{"sku":"A","qty":2.0}],"payment":{"token":"test_ok"}}"#,
    r#"{"name":"한정판 스니커즈","brand":"Emporium","category_path":"1/4/28","attributes":{"size":{"eu":[42,43]}},"price":{"amount":189000,"currency":"KRW"},"variants":[{"sku":"SNKR-270","attributes":{"size":270},"price":{"amount":1,"currency":"KRW"},"stock":2}]}"#,
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "3fa85f64-5717-4562-b3fc-2c963f66afa6",
];

/// A seed with up to 8 bytes replaced, inserted or removed.
fn mutated_seed() -> impl Strategy<Value = Vec<u8>> {
    let edits = prop::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 0..8);
    (prop::sample::select(SEEDS), edits).prop_map(|(seed, edits)| {
        let mut bytes = seed.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let at = usize::from(at) % (bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {}
            }
        }
        bytes
    })
}

fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"items\"",
        "\"sku\"",
        "\"qty\"",
        "\"A-1\"",
        "1",
        "2.0",
        "-1",
        "1e400",
        "null",
        "\"name\"",
        "\"variants\"",
        "\"price\"",
        "\"amount\"",
        "\"currency\"",
        "\"KRW\"",
        "\"stock\"",
        "\"attributes\"",
        "\"payment\"",
        "\"token\"",
        "\"test_ok\"",
        "\"\\u0000\"",
        "9223372036854775808",
    ]);
    prop::collection::vec(token, 0..60).prop_map(|tokens| tokens.concat().into_bytes())
}

fn traceparent_like() -> impl Strategy<Value = Vec<u8>> {
    "(00|ff|0A|[0-9a-fA-F]{2})-(0{32}|[0-9a-fA-F]{32})-(0{16}|[0-9a-fA-F]{16})-[0-9a-f]{2}(-[0-9a-f]{2})?"
        .prop_map(String::into_bytes)
}

fn request_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        mutated_seed(),
        json_soup(),
        traceparent_like(),
    ]
}

proptest! {
    #[test]
    fn request_parsers(data in request_input()) {
        fuzz::request_parsers(&data);
    }

    #[test]
    fn forged_token(data in prop::collection::vec(any::<u8>(), 2..16)) {
        fuzz::forged_token(&data);
    }

    #[test]
    fn inventory_machine(data in prop::collection::vec(any::<u8>(), 0..400)) {
        fuzz::inventory_machine(&data);
    }

    #[test]
    fn order_machine(data in prop::collection::vec(any::<u8>(), 0..40)) {
        fuzz::order_machine(&data);
    }
}

/// Every seed passes through every target unchanged (so a seed that starts failing is
/// caught even when the random cases miss it).
#[test]
fn seeds_pass() {
    for seed in SEEDS {
        fuzz::request_parsers(seed.as_bytes());
        fuzz::inventory_machine(seed.as_bytes());
        fuzz::order_machine(seed.as_bytes());
    }
}

/// What the fuzz target found in the first run (now fixed): these were passed on into
/// events and Kafka headers as if valid.
#[test]
fn traceparents_the_fuzzer_found() {
    use emporium::telemetry::context::valid_traceparent;
    for found in [
        "00-cFd2cbaC4Bbbd65C889CEdF9Dbd6D0bf-d8Ef9b39e8a9b100-7b", // uppercase hex
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero parent id
    ] {
        assert!(!valid_traceparent(found), "{found}");
    }
    assert!(valid_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ));
}
