//! rtgt's fuzz targets (`scripts/fuzz`, cargo-fuzz layout): each target's
//! harness lives here as `run(data)` beside the `seeds()` that write its
//! committed corpus (`fuzz/corpus/<target>`), so the input format and its
//! seeds cannot drift apart. `fuzz_targets/*.rs` only hand libFuzzer's bytes
//! to `run`.
//!
//! A harness must never panic on well-formed use of the crates' APIs: every
//! panic is a bug in the crates, or an oracle below that caught one.
#![forbid(unsafe_code)]

pub mod cdb;
pub mod chap;
pub mod driver;
pub mod frame;
pub mod login;
pub mod pdu_decode;
pub mod text_keys;

use std::sync::OnceLock;
use std::time::Instant;

/// Separates the frames of a `login` input and the commands of a `cdb`
/// input: a marker survives mutation better than length prefixes.
pub const SEP: &[u8] = b"~PDU~";

/// The fixed time base of every run (the sans-IO crates take time as an
/// argument): runs differ only by their input, not by the clock.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The pieces of `data` between [`SEP`] markers.
pub fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                rest = Some(&r[i + SEP.len()..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// `pieces` joined with [`SEP`]: how the seeds are written.
pub fn join(pieces: &[Vec<u8>]) -> Vec<u8> {
    pieces.join(SEP)
}

/// A named seed input.
pub type Seed = (&'static str, Vec<u8>);
