//! libFuzzer entry for [`emporium::fuzz::order_machine`]; the property lives there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emporium::fuzz::order_machine(data));
