//! The initiator's side of CHAP (RFC 1994 §4.1, RFC 7143 §12.1.3): the
//! accounts the fuzzed target requires and the responses an initiator that
//! knows them computes, so a fuzz input can answer a random challenge.

use base64::Engine as _;
use digest::Digest;
use rtgt_iscsi::{ChapAccount, ChapPolicy};

/// The incoming account an input proves with the `CHAP_R=%` placeholder.
pub const USER: &str = "alice";
pub const SECRET: &str = "alice-secret-1234";
/// An incoming account whose secret is empty: it must never authenticate.
pub const EMPTY_USER: &str = "eve";
/// The target's account for mutual CHAP.
pub const TARGET_USER: &str = "rtgt-target";
pub const TARGET_SECRET: &str = "target-secret-5678";

/// The policy of one fuzz run: 0 none, 1 one-way, 2 mutual, 3 mutual with
/// the initiator's secret reused (RFC 7143 §9.2.1 forbids it).
pub fn policy(mode: u8) -> Option<ChapPolicy> {
    let incoming = vec![
        ChapAccount::new(USER, SECRET),
        ChapAccount::new(EMPTY_USER, ""),
    ];
    match mode & 3 {
        0 => None,
        1 => Some(ChapPolicy {
            incoming,
            outgoing: None,
        }),
        2 => Some(ChapPolicy {
            incoming,
            outgoing: Some(ChapAccount::new(TARGET_USER, TARGET_SECRET)),
        }),
        _ => Some(ChapPolicy {
            incoming,
            outgoing: Some(ChapAccount::new(TARGET_USER, SECRET)),
        }),
    }
}

/// RFC 1994 §4.1: H(identifier || secret || challenge), for the CHAP_A codes
/// of the IANA registry rtgt accepts (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256).
pub fn response(algorithm: u8, identifier: u8, secret: &[u8], challenge: &[u8]) -> Option<Vec<u8>> {
    fn h<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        D::new()
            .chain_update([id])
            .chain_update(secret)
            .chain_update(challenge)
            .finalize()
            .to_vec()
    }
    Some(match algorithm {
        5 => h::<md5::Md5>(identifier, secret, challenge),
        6 => h::<sha1::Sha1>(identifier, secret, challenge),
        7 => h::<sha2::Sha256>(identifier, secret, challenge),
        8 => h::<sha3::Sha3_256>(identifier, secret, challenge),
        _ => return None,
    })
}

/// A binary value as `0x` and lowercase hex (RFC 7143 §6.1).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A binary value as `0b` and base64 (RFC 7143 §6.1).
pub fn base64(bytes: &[u8]) -> String {
    format!(
        "0b{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Decodes `0x` and an even number of hex digits; `None` for anything else
/// (the oracle only judges values in this one plain form).
pub fn unhex(v: &str) -> Option<Vec<u8>> {
    let digits = v.strip_prefix("0x")?.as_bytes();
    if digits.is_empty() || digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// The target's CHAP_A, CHAP_I and CHAP_C, from a Login Response.
#[derive(Clone, Debug)]
pub struct Challenge {
    pub algorithm: u8,
    pub identifier: u8,
    pub value: Vec<u8>,
}
