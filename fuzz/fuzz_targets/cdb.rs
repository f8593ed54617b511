//! Fuzz target `cdb`: CDB decoding and commands against in-memory logical units.
//! The harness and its input format: `fuzz/src/cdb.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtgt_fuzz::cdb::run(data));
