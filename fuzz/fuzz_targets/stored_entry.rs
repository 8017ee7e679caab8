#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| causal_core::fuzzing::stored_entry(data));
