//! libFuzzer entry for [`emporium::fuzz::forged_token`]; the property lives there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emporium::fuzz::forged_token(data));
