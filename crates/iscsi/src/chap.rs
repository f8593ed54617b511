//! CHAP (RFC 1994) as iSCSI uses it in the security stage (RFC 7143 §12.1.3):
//! the target challenges, the initiator proves it knows the secret of one of
//! the configured accounts, and for mutual CHAP the target proves its own.
//!
//! Everything the initiator sends is bounded before it is decoded or hashed,
//! responses are compared in constant time, and secrets appear in no `Debug`
//! output and no error.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use digest::Digest;
use subtle::ConstantTimeEq;

use crate::params::parse_number;
use crate::text;

/// Shortest challenge we send or answer. RFC 1994 §2.3 wants challenges that
/// never repeat and cannot be predicted; 16 random bytes (the MD5 digest
/// length) make a repeat negligible.
const MIN_CHALLENGE_LEN: usize = 16;
/// Longest challenge we answer (RFC 7143 §12.1.3: the binary length of C and R
/// MUST NOT exceed 1024 bytes).
const MAX_CHALLENGE_LEN: usize = 1024;
/// Longest CHAP_N we look up (RFC 7143 §6.1: values are at most 255 bytes
/// unless a key says otherwise, and CHAP_N does not).
const MAX_NAME_LEN: usize = 255;

/// One CHAP identity: the name carried in CHAP_N and the shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapAccount {
    pub user: String,
    /// RFC 1994 §2.3: at least one octet; an account with an empty secret
    /// never authenticates (anyone could compute its response).
    pub secret: String,
}

impl ChapAccount {
    pub fn new(user: impl Into<String>, secret: impl Into<String>) -> Self {
        ChapAccount {
            user: user.into(),
            secret: secret.into(),
        }
    }
}

impl fmt::Debug for ChapAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChapAccount")
            .field("user", &self.user)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

/// The target's CHAP requirements for one login (`LoginAccept::chap`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChapPolicy {
    /// The initiator must prove one of these: CHAP_N equal to `user` and a
    /// CHAP_R computed from `secret`.
    pub incoming: Vec<ChapAccount>,
    /// Our identity when the initiator asks for mutual CHAP (sends CHAP_I and
    /// CHAP_C); without one, mutual CHAP fails.
    pub outgoing: Option<ChapAccount>,
}

/// CHAP_A: the hash of the response. The numbers are those of the IANA "PPP
/// Authentication Algorithms" registry, 5 being RFC 1994's MD5, which RFC 7143
/// §12.1.3 makes mandatory. (tgt answered 7 with SHA-1; we follow the
/// registry, as open-iscsi and LIO do.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChapAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha3_256,
}

impl ChapAlgorithm {
    pub(crate) fn from_code(code: u64) -> Option<Self> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            6 => Some(ChapAlgorithm::Sha1),
            7 => Some(ChapAlgorithm::Sha256),
            8 => Some(ChapAlgorithm::Sha3_256),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha1 => 6,
            ChapAlgorithm::Sha256 => 7,
            ChapAlgorithm::Sha3_256 => 8,
        }
    }

    pub(crate) fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha1 => 20,
            ChapAlgorithm::Sha256 | ChapAlgorithm::Sha3_256 => 32,
        }
    }

    /// The first algorithm of the initiator's CHAP_A list that we support: the
    /// list is in the initiator's order of preference (§12.1.3) and list
    /// negotiation answers with the first acceptable value (§6.2.1).
    pub(crate) fn choose(list: &str) -> Option<Self> {
        list.split(',')
            .find_map(|v| parse_number(v).and_then(Self::from_code))
    }

    /// RFC 1994 §4.1: the Response Value is the hash of the Identifier, the
    /// secret and the Challenge Value, concatenated.
    pub(crate) fn response(self, identifier: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn hash<D: Digest>(identifier: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([identifier]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            ChapAlgorithm::Md5 => hash::<md5::Md5>(identifier, secret, challenge),
            ChapAlgorithm::Sha1 => hash::<sha1::Sha1>(identifier, secret, challenge),
            ChapAlgorithm::Sha256 => hash::<sha2::Sha256>(identifier, secret, challenge),
            ChapAlgorithm::Sha3_256 => hash::<sha3::Sha3_256>(identifier, secret, challenge),
        }
    }
}

/// Why a CHAP exchange failed. Each is an Authentication failure (RFC 7143
/// §12.1.3, status 0x0201) but [`ChapError::NoRandomness`], which is ours.
/// The text names the failure for the log and never carries a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChapError {
    /// CHAP_A listed none of 5, 6, 7, 8.
    NoAlgorithm,
    /// The request after AuthMethod=CHAP did not carry CHAP_A.
    MissingAlgorithm,
    /// The request after our challenge lacked CHAP_N or CHAP_R.
    MissingResponse,
    /// A CHAP key in the wrong step of the exchange.
    OutOfOrder,
    /// The same CHAP key twice in one request.
    RepeatedKey,
    /// A value that is not a §6.1 binary-value or number, or out of range.
    MalformedValue,
    /// CHAP_R not of the digest's length, CHAP_C not 16..=1024 bytes, CHAP_N too long.
    BadLength,
    /// CHAP_I without CHAP_C or the reverse.
    IncompleteMutual,
    /// No incoming account has the CHAP_N sent.
    UnknownUser,
    /// CHAP_R is not what the account's secret gives.
    WrongResponse,
    /// The account the initiator named, or our outgoing one, has an empty secret.
    EmptySecret,
    /// Mutual CHAP asked for, but we have no outgoing account.
    NoOutgoingAccount,
    /// RFC 7143 §9.2.1: the initiator's challenge is the one we sent it.
    ReflectedChallenge,
    /// RFC 7143 §9.2.1: one secret must not authenticate both directions.
    SameSecret,
    /// The OS random number generator failed.
    NoRandomness,
}

impl ChapError {
    /// A short fixed phrase for the log.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ChapError::NoAlgorithm => "no supported CHAP algorithm",
            ChapError::MissingAlgorithm => "CHAP_A missing",
            ChapError::MissingResponse => "CHAP_N or CHAP_R missing",
            ChapError::OutOfOrder => "CHAP key out of order",
            ChapError::RepeatedKey => "CHAP key repeated",
            ChapError::MalformedValue => "malformed CHAP value",
            ChapError::BadLength => "CHAP value of wrong length",
            ChapError::IncompleteMutual => "CHAP_I and CHAP_C not together",
            ChapError::UnknownUser => "unknown CHAP user",
            ChapError::WrongResponse => "wrong CHAP response",
            ChapError::EmptySecret => "empty CHAP secret configured",
            ChapError::NoOutgoingAccount => "mutual CHAP not configured",
            ChapError::ReflectedChallenge => "reflected challenge",
            ChapError::SameSecret => "same secret both ways",
            ChapError::NoRandomness => "no randomness for the CHAP challenge",
        }
    }
}

impl fmt::Display for ChapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// RFC 7143 §6.1 base64 (the RFC 4648 alphabet); the `=` padding is accepted
/// whether present or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a binary-value (RFC 7143 §6.1): `0x`/`0X` and hex digits (an odd
/// count means a leading zero nibble), or `0b`/`0B` and base64. A value whose
/// encoding could hold more than `max_len` bytes is refused before decoding.
pub(crate) fn decode_binary(value: &str, max_len: usize) -> Result<Vec<u8>, ChapError> {
    let (Some(prefix), Some(body)) = (value.get(..2), value.get(2..)) else {
        return Err(ChapError::MalformedValue);
    };
    if body.is_empty() {
        return Err(ChapError::MalformedValue);
    }
    let bytes = match prefix {
        "0x" | "0X" => {
            if body.len().div_ceil(2) > max_len {
                return Err(ChapError::BadLength);
            }
            decode_hex(body.as_bytes())?
        }
        "0b" | "0B" => {
            // Four characters carry three bytes.
            if body.len() > max_len.div_ceil(3) * 4 {
                return Err(ChapError::BadLength);
            }
            BASE64.decode(body).map_err(|_| ChapError::MalformedValue)?
        }
        _ => return Err(ChapError::MalformedValue),
    };
    if bytes.len() > max_len {
        return Err(ChapError::BadLength);
    }
    Ok(bytes)
}

fn decode_hex(digits: &[u8]) -> Result<Vec<u8>, ChapError> {
    fn nibble(c: u8) -> Result<u8, ChapError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(ChapError::MalformedValue),
        }
    }
    let (head, pairs) = digits.split_at(digits.len() % 2);
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    for &c in head {
        out.push(nibble(c)?);
    }
    for pair in pairs.chunks_exact(2) {
        out.push((nibble(pair[0])? << 4) | nibble(pair[1])?);
    }
    Ok(out)
}

/// `0x` and lowercase hex: how we send CHAP_C and CHAP_R.
fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// CHAP_I: one octet (RFC 1994 §4.1) sent as a number, decimal or `0x` hex
/// (RFC 7143 §6.1); open-iscsi sends decimal.
fn parse_identifier(v: &str) -> Result<u8, ChapError> {
    parse_number(v)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(ChapError::MalformedValue)
}

/// The CHAP keys of one Login Request. RFC 7143 §12.1.3 says which keys
/// travel together, not in which order, so a request's keys are gathered
/// before the exchange acts on them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChapKeys {
    algorithms: Option<String>,
    identifier: Option<String>,
    challenge: Option<String>,
    name: Option<String>,
    response: Option<String>,
}

impl ChapKeys {
    /// Keeps `key=value` if `key` is a CHAP key and says whether it was.
    pub(crate) fn take(&mut self, key: &str, value: &str) -> Result<bool, ChapError> {
        let slot = match key {
            "CHAP_A" => &mut self.algorithms,
            "CHAP_I" => &mut self.identifier,
            "CHAP_C" => &mut self.challenge,
            "CHAP_N" => &mut self.name,
            "CHAP_R" => &mut self.response,
            _ => return Ok(false),
        };
        if slot.is_some() {
            return Err(ChapError::RepeatedKey);
        }
        *slot = Some(value.to_owned());
        Ok(true)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.present().next().is_none()
    }

    /// CHAP_N as sent (bounded), to report who failed.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref().filter(|n| n.len() <= MAX_NAME_LEN)
    }

    /// The names of the keys present.
    pub(crate) fn present(&self) -> impl Iterator<Item = &'static str> + '_ {
        [
            ("CHAP_A", &self.algorithms),
            ("CHAP_I", &self.identifier),
            ("CHAP_C", &self.challenge),
            ("CHAP_N", &self.name),
            ("CHAP_R", &self.response),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|_| k))
    }
}

/// The challenge we sent: the RFC 1994 §4.1 Identifier and Challenge Value.
#[derive(Clone, Debug)]
struct Challenge {
    algorithm: ChapAlgorithm,
    identifier: u8,
    value: Vec<u8>,
}

impl Challenge {
    /// A fresh identifier and challenge from the OS CSPRNG, the challenge as
    /// long as the digest and at least [`MIN_CHALLENGE_LEN`] bytes.
    fn random(algorithm: ChapAlgorithm) -> Result<Self, ChapError> {
        let mut identifier = [0u8; 1];
        let mut value = vec![0u8; algorithm.digest_len().max(MIN_CHALLENGE_LEN)];
        getrandom::fill(&mut identifier).map_err(|_| ChapError::NoRandomness)?;
        getrandom::fill(&mut value).map_err(|_| ChapError::NoRandomness)?;
        Ok(Challenge {
            algorithm,
            identifier: identifier[0],
            value,
        })
    }

    /// Checks the initiator's CHAP_N and CHAP_R and, when it asks for mutual
    /// CHAP, returns our CHAP_N and CHAP_R.
    fn verify(
        &self,
        policy: &ChapPolicy,
        keys: &ChapKeys,
    ) -> Result<Option<(String, String)>, ChapError> {
        let (Some(name), Some(response)) = (keys.name.as_deref(), keys.response.as_deref()) else {
            return Err(ChapError::MissingResponse);
        };
        // Everything the initiator sent is decoded and bounded before use.
        if name.len() > MAX_NAME_LEN {
            return Err(ChapError::BadLength);
        }
        let digest_len = self.algorithm.digest_len();
        let response = decode_binary(response, digest_len)?;
        if response.len() != digest_len {
            return Err(ChapError::BadLength);
        }
        let mutual = match (keys.identifier.as_deref(), keys.challenge.as_deref()) {
            (None, None) => None,
            (Some(i), Some(c)) => {
                let identifier = parse_identifier(i)?;
                let challenge = decode_binary(c, MAX_CHALLENGE_LEN)?;
                if challenge.len() < MIN_CHALLENGE_LEN {
                    return Err(ChapError::BadLength);
                }
                Some((identifier, challenge))
            }
            _ => return Err(ChapError::IncompleteMutual),
        };
        // RFC 7143 §9.2.1: an originator MUST NOT reuse the responder's
        // challenge for the other direction; responders MUST check.
        if mutual.as_ref().is_some_and(|(_, c)| *c == self.value) {
            return Err(ChapError::ReflectedChallenge);
        }
        let account = self.check_response(policy, name, &response)?;
        let Some((identifier, challenge)) = mutual else {
            return Ok(None);
        };
        let ours = policy
            .outgoing
            .as_ref()
            .ok_or(ChapError::NoOutgoingAccount)?;
        if ours.secret.is_empty() {
            return Err(ChapError::EmptySecret);
        }
        // RFC 7143 §9.2.1: a secret used to authenticate initiators MUST NOT
        // authenticate the target, or a peer could have us answer for it.
        if bool::from(ours.secret.as_bytes().ct_eq(account.secret.as_bytes())) {
            return Err(ChapError::SameSecret);
        }
        let r = self
            .algorithm
            .response(identifier, ours.secret.as_bytes(), &challenge);
        Ok(Some((ours.user.clone(), encode_hex(&r))))
    }

    /// The incoming account `name` whose secret gives `response`.
    fn check_response<'p>(
        &self,
        policy: &'p ChapPolicy,
        name: &str,
        response: &[u8],
    ) -> Result<&'p ChapAccount, ChapError> {
        let mut named = false;
        let mut usable = false;
        let mut proven = None;
        for account in policy.incoming.iter().filter(|a| a.user == name) {
            named = true;
            if account.secret.is_empty() {
                continue;
            }
            usable = true;
            let expected =
                self.algorithm
                    .response(self.identifier, account.secret.as_bytes(), &self.value);
            if bool::from(expected.as_slice().ct_eq(response)) && proven.is_none() {
                proven = Some(account);
            }
        }
        match proven {
            Some(a) => Ok(a),
            None if usable => Err(ChapError::WrongResponse),
            None if named => Err(ChapError::EmptySecret),
            None => Err(ChapError::UnknownUser),
        }
    }
}

/// The target's side of one CHAP exchange (RFC 7143 §12.1.3): the
/// initiator's CHAP_A; our CHAP_A, CHAP_I, CHAP_C; its CHAP_N, CHAP_R (with
/// CHAP_I, CHAP_C for mutual CHAP); our CHAP_N, CHAP_R for mutual CHAP.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChapExchange {
    state: Exchange,
}

#[derive(Clone, Debug, Default)]
enum Exchange {
    /// AuthMethod=CHAP agreed; the initiator's CHAP_A comes next.
    #[default]
    AwaitAlgorithm,
    /// Our challenge is out; CHAP_N and CHAP_R come next.
    Challenged(Challenge),
    /// The initiator proved an incoming account.
    Authenticated,
    /// A step failed: nothing can succeed any more.
    Failed,
}

impl ChapExchange {
    pub(crate) fn is_authenticated(&self) -> bool {
        matches!(self.state, Exchange::Authenticated)
    }

    /// Takes the CHAP keys of one Login Request and appends ours to `out`.
    pub(crate) fn step(
        &mut self,
        policy: &ChapPolicy,
        keys: &ChapKeys,
        out: &mut Vec<u8>,
    ) -> Result<(), ChapError> {
        let r = self.advance(policy, keys, out);
        if r.is_err() {
            self.state = Exchange::Failed;
        }
        r
    }

    fn advance(
        &mut self,
        policy: &ChapPolicy,
        keys: &ChapKeys,
        out: &mut Vec<u8>,
    ) -> Result<(), ChapError> {
        match &self.state {
            Exchange::AwaitAlgorithm => {
                let Some(list) = keys.algorithms.as_deref() else {
                    return Err(if keys.is_empty() {
                        ChapError::MissingAlgorithm
                    } else {
                        ChapError::OutOfOrder
                    });
                };
                if keys.present().any(|k| k != "CHAP_A") {
                    return Err(ChapError::OutOfOrder);
                }
                let algorithm = ChapAlgorithm::choose(list).ok_or(ChapError::NoAlgorithm)?;
                let challenge = Challenge::random(algorithm)?;
                text::encode_pair(out, "CHAP_A", &algorithm.code().to_string());
                text::encode_pair(out, "CHAP_I", &challenge.identifier.to_string());
                text::encode_pair(out, "CHAP_C", &encode_hex(&challenge.value));
                self.state = Exchange::Challenged(challenge);
            }
            Exchange::Challenged(challenge) => {
                if keys.algorithms.is_some() {
                    return Err(ChapError::OutOfOrder);
                }
                if let Some((user, response)) = challenge.verify(policy, keys)? {
                    text::encode_pair(out, "CHAP_N", &user);
                    text::encode_pair(out, "CHAP_R", &response);
                }
                self.state = Exchange::Authenticated;
            }
            Exchange::Authenticated => {
                if !keys.is_empty() {
                    return Err(ChapError::OutOfOrder);
                }
            }
            Exchange::Failed => return Err(ChapError::OutOfOrder),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u8 = 0x2a;
    const SECRET: &str = "squeamish ossifrage";

    fn challenge16() -> Vec<u8> {
        (0..16).collect()
    }

    /// An exchange that sent `identifier` = ID and `value` = 0..16.
    fn challenged(algorithm: ChapAlgorithm) -> ChapExchange {
        ChapExchange {
            state: Exchange::Challenged(Challenge {
                algorithm,
                identifier: ID,
                value: challenge16(),
            }),
        }
    }

    fn policy() -> ChapPolicy {
        ChapPolicy {
            incoming: vec![ChapAccount::new("alice", SECRET)],
            outgoing: Some(ChapAccount::new("target", "target-secret-1")),
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> ChapKeys {
        let mut k = ChapKeys::default();
        for (key, value) in pairs {
            assert!(k.take(key, value).unwrap());
        }
        k
    }

    fn pairs(out: &[u8]) -> Vec<(String, String)> {
        text::parse(out)
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }

    fn md5_response() -> String {
        // MD5(0x2a || "squeamish ossifrage" || 00..0f), from Python's hashlib.
        "0x4090f76dc1ed1964ab018940ecef0ad2".into()
    }

    #[test]
    fn known_answers() {
        // hashlib.new(name, bytes([0x2a]) + b"squeamish ossifrage" + bytes(range(16)))
        let vectors = [
            (ChapAlgorithm::Md5, "4090f76dc1ed1964ab018940ecef0ad2"),
            (
                ChapAlgorithm::Sha1,
                "4927aaacd31456fb961fcd568f2476e55155b782",
            ),
            (
                ChapAlgorithm::Sha256,
                "e07d0164bce2978b31fa41fe10ec5915995a96187b5b1c65c1c395b881e340c7",
            ),
            (
                ChapAlgorithm::Sha3_256,
                "1e698a914d8bb3c040137b122a91961f14eb05514fbb652355cd72916a5dd87f",
            ),
        ];
        for (alg, hex) in vectors {
            let r = alg.response(ID, SECRET.as_bytes(), &challenge16());
            assert_eq!(r.len(), alg.digest_len());
            assert_eq!(encode_hex(&r), format!("0x{hex}"), "{alg:?}");
        }
    }

    #[test]
    fn response_is_the_hash_of_identifier_secret_challenge() {
        let c: Vec<u8> = (0..=255).collect();
        let mut m = vec![7u8];
        m.extend_from_slice(b"s");
        m.extend_from_slice(&c);
        assert_eq!(
            ChapAlgorithm::Sha256.response(7, b"s", &c),
            sha2::Sha256::digest(&m).to_vec()
        );
        assert_eq!(
            ChapAlgorithm::Md5.response(7, b"s", &c),
            md5::Md5::digest(&m).to_vec()
        );
    }

    #[test]
    fn algorithm_codes_and_choice() {
        for alg in [
            ChapAlgorithm::Md5,
            ChapAlgorithm::Sha1,
            ChapAlgorithm::Sha256,
            ChapAlgorithm::Sha3_256,
        ] {
            assert_eq!(ChapAlgorithm::from_code(alg.code().into()), Some(alg));
        }
        assert_eq!(ChapAlgorithm::choose("5"), Some(ChapAlgorithm::Md5));
        assert_eq!(
            ChapAlgorithm::choose("9,8,5"),
            Some(ChapAlgorithm::Sha3_256)
        );
        assert_eq!(ChapAlgorithm::choose("x,0x7"), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::choose("6,5"), Some(ChapAlgorithm::Sha1));
        assert_eq!(ChapAlgorithm::choose("1,2,128"), None);
        assert_eq!(ChapAlgorithm::choose(""), None);
        assert_eq!(ChapAlgorithm::choose("99999999999999999999999"), None);
    }

    #[test]
    fn binary_value_encodings() {
        assert_eq!(decode_binary("0x0102", 16), Ok(vec![1, 2]));
        assert_eq!(decode_binary("0XaBcD", 16), Ok(vec![0xab, 0xcd]));
        // Odd digit count: a leading nibble.
        assert_eq!(decode_binary("0xabc", 16), Ok(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0x1", 16), Ok(vec![1]));
        assert_eq!(decode_binary("0bAQID", 16), Ok(vec![1, 2, 3]));
        assert_eq!(decode_binary("0BAQI=", 16), Ok(vec![1, 2]));
        assert_eq!(decode_binary("0bAQI", 16), Ok(vec![1, 2]));
        assert_eq!(
            decode_binary("0bQJD3bcHtGWSrAYlA7O8K0g==", 16),
            decode_binary(&md5_response(), 16)
        );
        for bad in [
            "", "0", "0x", "0b", "12", "0y12", "0xzz", "0x12 ", " 0x12", "0b@@@@", "0bA", "0b====",
            "0é", "é1", "0x-1",
        ] {
            assert_eq!(
                decode_binary(bad, 16),
                Err(ChapError::MalformedValue),
                "{bad:?}"
            );
        }
        let hex17 = format!("0x{}", "ab".repeat(17));
        assert_eq!(decode_binary(&hex17, 16), Err(ChapError::BadLength));
        assert_eq!(
            decode_binary(&format!("0x1{}", "ab".repeat(16)), 16),
            Err(ChapError::BadLength)
        );
        let b64 = format!("0b{}", "AAAA".repeat(7));
        assert_eq!(decode_binary(&b64, 16), Err(ChapError::BadLength));
        // 24 characters decode to 18 bytes: refused after decoding.
        let b64 = format!("0b{}", "AAAA".repeat(6));
        assert_eq!(decode_binary(&b64, 16), Err(ChapError::BadLength));
        assert_eq!(encode_hex(&[0, 0x0f, 0xf0, 0xff]), "0x000ff0ff");
    }

    #[test]
    fn identifier_numbers() {
        assert_eq!(parse_identifier("0"), Ok(0));
        assert_eq!(parse_identifier("255"), Ok(255));
        assert_eq!(parse_identifier("0xff"), Ok(255));
        for bad in ["256", "-1", "", "0x100", "1.0", "ff", "0b/w=="] {
            assert_eq!(
                parse_identifier(bad),
                Err(ChapError::MalformedValue),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let s = format!("{:?}", policy());
        assert!(s.contains("alice") && s.contains("target"), "{s}");
        assert!(!s.contains(SECRET) && !s.contains("target-secret-1"), "{s}");
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn challenge_for_each_algorithm() {
        for (list, code, len) in [
            ("5", "5", 16),
            ("6", "6", 20),
            ("7", "7", 32),
            ("8,5", "8", 32),
        ] {
            let mut x = ChapExchange::default();
            let mut out = Vec::new();
            x.step(&policy(), &keys(&[("CHAP_A", list)]), &mut out)
                .unwrap();
            let p = pairs(&out);
            assert_eq!(p[0], ("CHAP_A".into(), code.into()));
            assert_eq!(p[1].0, "CHAP_I");
            assert!(parse_identifier(&p[1].1).is_ok());
            assert_eq!(p[2].0, "CHAP_C");
            assert_eq!(p[2].1.len(), 2 + 2 * len);
            assert_eq!(decode_binary(&p[2].1, 1024).unwrap().len(), len);
            assert!(!x.is_authenticated());
        }
    }

    #[test]
    fn full_exchange_each_algorithm() {
        for code in ["5", "6", "7", "8"] {
            let mut x = ChapExchange::default();
            let mut out = Vec::new();
            x.step(&policy(), &keys(&[("CHAP_A", code)]), &mut out)
                .unwrap();
            let p = pairs(&out);
            let alg = ChapAlgorithm::choose(code).unwrap();
            let id = parse_identifier(&p[1].1).unwrap();
            let c = decode_binary(&p[2].1, 1024).unwrap();
            let r = encode_hex(&alg.response(id, SECRET.as_bytes(), &c));
            let mut out = Vec::new();
            x.step(
                &policy(),
                &keys(&[("CHAP_N", "alice"), ("CHAP_R", &r)]),
                &mut out,
            )
            .unwrap();
            assert!(out.is_empty(), "one-way: nothing to answer");
            assert!(x.is_authenticated());
            // A later request without CHAP keys is fine; with one it is not.
            x.step(&policy(), &ChapKeys::default(), &mut out).unwrap();
            assert_eq!(
                x.step(&policy(), &keys(&[("CHAP_N", "alice")]), &mut out),
                Err(ChapError::OutOfOrder)
            );
        }
    }

    #[test]
    fn one_way_and_base64_responses() {
        let mut x = challenged(ChapAlgorithm::Md5);
        let k = keys(&[("CHAP_N", "alice"), ("CHAP_R", &md5_response())]);
        x.step(&policy(), &k, &mut Vec::new()).unwrap();
        assert!(x.is_authenticated());

        let mut x = challenged(ChapAlgorithm::Md5);
        let k = keys(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", "0bQJD3bcHtGWSrAYlA7O8K0g=="),
        ]);
        x.step(&policy(), &k, &mut Vec::new()).unwrap();
        assert!(x.is_authenticated());

        // Upper-case hex is the same value.
        let mut x = challenged(ChapAlgorithm::Md5);
        let k = keys(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &md5_response().to_uppercase()),
        ]);
        x.step(&policy(), &k, &mut Vec::new()).unwrap();
        assert!(x.is_authenticated());
    }

    #[test]
    fn mutual_answer() {
        let mut x = challenged(ChapAlgorithm::Md5);
        let c: Vec<u8> = (100..132).collect();
        let k = keys(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &md5_response()),
            ("CHAP_I", "7"),
            ("CHAP_C", &encode_hex(&c)),
        ]);
        let mut out = Vec::new();
        x.step(&policy(), &k, &mut out).unwrap();
        assert!(x.is_authenticated());
        // hashlib.md5(bytes([7]) + b"target-secret-1" + bytes(range(100, 132)))
        assert_eq!(
            pairs(&out),
            [
                ("CHAP_N".to_string(), "target".to_string()),
                (
                    "CHAP_R".to_string(),
                    "0xcd483a4124e9ca53bdfc6bc6c7c38789".to_string()
                ),
            ]
        );

        // The answer uses the agreed algorithm: hashlib.sha256 of the same bytes.
        let mut x = challenged(ChapAlgorithm::Sha256);
        let r = encode_hex(&ChapAlgorithm::Sha256.response(ID, SECRET.as_bytes(), &challenge16()));
        let k = keys(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &r),
            ("CHAP_I", "0x07"),
            ("CHAP_C", &encode_hex(&c)),
        ]);
        let mut out = Vec::new();
        x.step(&policy(), &k, &mut out).unwrap();
        assert_eq!(
            pairs(&out)[1].1,
            "0x731e2f9000671cb0fa493dcac5be48419acc955f390196930ee5fb04f8815200"
        );
    }

    fn fails(policy: &ChapPolicy, pairs: &[(&str, &str)]) -> ChapError {
        let mut x = challenged(ChapAlgorithm::Md5);
        let mut out = Vec::new();
        let e = x.step(policy, &keys(pairs), &mut out).unwrap_err();
        assert!(out.is_empty());
        assert!(!x.is_authenticated());
        // A failed exchange stays failed, even for the right answer.
        let good = keys(&[("CHAP_N", "alice"), ("CHAP_R", &md5_response())]);
        assert_eq!(x.step(policy, &good, &mut out), Err(ChapError::OutOfOrder));
        e
    }

    #[test]
    fn refusals() {
        let r = md5_response();
        let p = policy();
        let wrong = encode_hex(&ChapAlgorithm::Md5.response(ID, b"guess", &challenge16()));
        assert_eq!(
            fails(&p, &[("CHAP_N", "alice"), ("CHAP_R", &wrong)]),
            ChapError::WrongResponse
        );
        assert_eq!(
            fails(&p, &[("CHAP_N", "bob"), ("CHAP_R", &r)]),
            ChapError::UnknownUser
        );
        // Names are compared exactly.
        assert_eq!(
            fails(&p, &[("CHAP_N", "Alice"), ("CHAP_R", &r)]),
            ChapError::UnknownUser
        );
        assert_eq!(
            fails(&p, &[("CHAP_N", "alice")]),
            ChapError::MissingResponse
        );
        assert_eq!(fails(&p, &[("CHAP_R", &r)]), ChapError::MissingResponse);
        assert_eq!(fails(&p, &[]), ChapError::MissingResponse);
        assert_eq!(
            fails(&p, &[("CHAP_A", "5"), ("CHAP_N", "alice"), ("CHAP_R", &r)]),
            ChapError::OutOfOrder
        );
        // Wrong length: a truncated MD5, or a SHA-1 sized value.
        assert_eq!(
            fails(&p, &[("CHAP_N", "alice"), ("CHAP_R", &r[..r.len() - 2])]),
            ChapError::BadLength
        );
        let long = format!("{r}00000000");
        assert_eq!(
            fails(&p, &[("CHAP_N", "alice"), ("CHAP_R", &long)]),
            ChapError::BadLength
        );
        assert_eq!(
            fails(&p, &[("CHAP_N", "alice"), ("CHAP_R", "alice")]),
            ChapError::MalformedValue
        );
        let name = "n".repeat(256);
        assert_eq!(
            fails(&p, &[("CHAP_N", &name), ("CHAP_R", &r)]),
            ChapError::BadLength
        );
    }

    #[test]
    fn mutual_refusals() {
        let r = md5_response();
        let p = policy();
        let mutual = |p: &ChapPolicy, i: &str, c: &str| {
            fails(
                p,
                &[
                    ("CHAP_N", "alice"),
                    ("CHAP_R", &r),
                    ("CHAP_I", i),
                    ("CHAP_C", c),
                ],
            )
        };
        let c = encode_hex(&[0x55; 16]);
        // Reflection: our own challenge sent back, in hex or base64.
        let ours = encode_hex(&challenge16());
        assert_eq!(mutual(&p, "1", &ours), ChapError::ReflectedChallenge);
        let ours = "0bAAECAwQFBgcICQoLDA0ODw==";
        assert_eq!(mutual(&p, "1", ours), ChapError::ReflectedChallenge);
        // No outgoing account.
        let one_way = ChapPolicy {
            outgoing: None,
            ..policy()
        };
        assert_eq!(mutual(&one_way, "1", &c), ChapError::NoOutgoingAccount);
        // One secret both ways.
        let same = ChapPolicy {
            outgoing: Some(ChapAccount::new("target", SECRET)),
            ..policy()
        };
        assert_eq!(mutual(&same, "1", &c), ChapError::SameSecret);
        let empty = ChapPolicy {
            outgoing: Some(ChapAccount::new("target", "")),
            ..policy()
        };
        assert_eq!(mutual(&empty, "1", &c), ChapError::EmptySecret);
        // Half a request.
        let half = [("CHAP_N", "alice"), ("CHAP_R", r.as_str()), ("CHAP_I", "1")];
        assert_eq!(fails(&p, &half), ChapError::IncompleteMutual);
        let half = [("CHAP_N", "alice"), ("CHAP_R", r.as_str()), ("CHAP_C", &c)];
        assert_eq!(fails(&p, &half), ChapError::IncompleteMutual);
        // Absurd values.
        assert_eq!(mutual(&p, "256", &c), ChapError::MalformedValue);
        assert_eq!(mutual(&p, "1", "0xnope"), ChapError::MalformedValue);
        assert_eq!(mutual(&p, "1", &encode_hex(&[1; 15])), ChapError::BadLength);
        assert_eq!(
            mutual(&p, "1", &encode_hex(&[1; 1025])),
            ChapError::BadLength
        );
        // 1024 bytes is the limit, and accepted.
        let mut x = challenged(ChapAlgorithm::Md5);
        let c = encode_hex(&[1; 1024]);
        let k = keys(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", &c),
        ]);
        x.step(&p, &k, &mut Vec::new()).unwrap();
    }

    #[test]
    fn empty_secrets_never_authenticate() {
        let empty = ChapAccount::new("alice", "");
        let p = ChapPolicy {
            incoming: vec![empty.clone()],
            outgoing: None,
        };
        // With an empty secret anyone can compute the response.
        let r = encode_hex(&ChapAlgorithm::Md5.response(ID, b"", &challenge16()));
        let k = [("CHAP_N", "alice"), ("CHAP_R", r.as_str())];
        assert_eq!(fails(&p, &k), ChapError::EmptySecret);
        // Another account of the same name with a real secret still works.
        let p = ChapPolicy {
            incoming: vec![empty, ChapAccount::new("alice", SECRET)],
            outgoing: None,
        };
        let mut x = challenged(ChapAlgorithm::Md5);
        let k = keys(&[("CHAP_N", "alice"), ("CHAP_R", &md5_response())]);
        x.step(&p, &k, &mut Vec::new()).unwrap();
        assert!(x.is_authenticated());
    }

    #[test]
    fn first_step_wants_chap_a_alone() {
        let p = policy();
        let mut out = Vec::new();
        let mut x = ChapExchange::default();
        assert_eq!(
            x.step(&p, &ChapKeys::default(), &mut out),
            Err(ChapError::MissingAlgorithm)
        );
        let mut x = ChapExchange::default();
        assert_eq!(
            x.step(&p, &keys(&[("CHAP_N", "alice")]), &mut out),
            Err(ChapError::OutOfOrder)
        );
        let mut x = ChapExchange::default();
        assert_eq!(
            x.step(&p, &keys(&[("CHAP_A", "5"), ("CHAP_C", "0x00")]), &mut out),
            Err(ChapError::OutOfOrder)
        );
        let mut x = ChapExchange::default();
        assert_eq!(
            x.step(&p, &keys(&[("CHAP_A", "3,4")]), &mut out),
            Err(ChapError::NoAlgorithm)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn keys_are_gathered_once() {
        let mut k = ChapKeys::default();
        assert_eq!(k.take("AuthMethod", "CHAP"), Ok(false));
        assert!(k.is_empty());
        assert_eq!(k.take("CHAP_N", "alice"), Ok(true));
        assert_eq!(k.take("CHAP_N", "bob"), Err(ChapError::RepeatedKey));
        assert_eq!(k.name(), Some("alice"));
        assert_eq!(k.present().collect::<Vec<_>>(), ["CHAP_N"]);
        let mut k = ChapKeys::default();
        k.take("CHAP_N", &"n".repeat(300)).unwrap();
        assert_eq!(k.name(), None, "an absurd name is not reported");
    }

    #[test]
    fn reasons_are_fixed_phrases() {
        assert_eq!(ChapError::WrongResponse.to_string(), "wrong CHAP response");
        assert_eq!(ChapError::SameSecret.reason(), "same secret both ways");
    }
}
