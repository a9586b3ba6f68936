//! Fuzz target: see `est_server::fuzzing::subject`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| est_server::fuzzing::subject(data));
