//! libFuzzer entry for [`emporium::fuzz::inventory_machine`]; the property lives there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emporium::fuzz::inventory_machine(data));
