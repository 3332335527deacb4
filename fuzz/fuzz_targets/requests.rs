#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qtapd::fuzz::requests(data));
