//! Fuzz target: see `est_server::fuzzing::pkcs7`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| est_server::fuzzing::pkcs7(data));
