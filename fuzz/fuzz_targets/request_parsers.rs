//! libFuzzer entry for [`emporium::fuzz::request_parsers`]; the property lives there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emporium::fuzz::request_parsers(data));
