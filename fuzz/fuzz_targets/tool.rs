#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| scinterp_fuzz_harness::run("tool", data));
