//! Fuzz target `login`: the login state machine with CHAP, driven PDU by PDU.
//! The harness and its input format: `fuzz/src/login.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtgt_fuzz::login::run(data));
