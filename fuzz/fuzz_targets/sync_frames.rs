#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| causal_sync::fuzzing::sync_frames(data));
