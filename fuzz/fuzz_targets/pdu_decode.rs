//! Fuzz target `pdu_decode`: the PDU codec, then a byte stream into a logged-in connection.
//! The harness and its input format: `fuzz/src/pdu_decode.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtgt_fuzz::pdu_decode::run(data));
