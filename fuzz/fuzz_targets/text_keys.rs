//! Fuzz target `text_keys`: key=value text and the negotiation of login keys.
//! The harness and its input format: `fuzz/src/text_keys.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtgt_fuzz::text_keys::run(data));
