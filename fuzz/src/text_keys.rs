//! `text_keys`: key=value text (RFC 7143 §6.1, text.rs), the negotiation of
//! operational keys (§6.2, §13; params.rs), and both through the login state
//! machine (login.rs) without a connection around it.
//!
//! Input: one setup byte, then the text.
//! - bits 0-1: the target's configuration (default, small limits, digests
//!   and immediate data refused, the largest values), bit 2: discovery;
//! - bit 3 clear: the text is an operational-stage Login Request after a
//!   fixed first one; bit 3 set: the text is the first Login Request, in
//!   the security stage (bit 4 clear) or the operational stage (bit 4 set),
//!   CHAP required when bit 5 is set;
//! - bit 6: T bit; bit 7: the text comes in two requests (C bit, §11.12.2);
//! - bits 4-7 also size the pieces given to a `TextCollector`.
//!
//! Oracles: what parses is within the §6.1 limits and re-encodes to the same
//! pairs; numbers parse as §6.1 says; answers are single well-formed values;
//! negotiated values stay within §13 and the configuration; a login reply
//! fits one PDU (8192 bytes) and parses.

use rtgt_iscsi::login::{LoginState, LoginStep, MAX_LOGIN_RESPONSE_TEXT};
use rtgt_iscsi::params::{parse_bool, parse_number, KeyOutcome, Negotiation};
use rtgt_iscsi::pdu::{LoginRequestPdu, Stage};
use rtgt_iscsi::text::{
    self, KeyValue, TextCollector, MAX_KEY_LEN, MAX_PAIRS, MAX_TEXT_LEN, MAX_VALUE_LEN,
};
use rtgt_iscsi::{LoginAccept, LoginStatus, SessionType, TargetConfig};

use crate::driver::check_params;
use crate::frame::{keys, ISID};
use crate::login::{op_keys, plain_names, INITIATOR, TARGET};
use crate::Seed;

pub fn run(data: &[u8]) {
    let [sel, text @ ..] = data else {
        return;
    };
    parse(text);
    collect(text, *sel);
    let cfg = config(*sel);
    negotiate(text, *sel, &cfg);
    login(text, *sel, &cfg);
}

fn config(sel: u8) -> TargetConfig {
    let d = TargetConfig::default();
    match sel & 3 {
        0 => d,
        1 => TargetConfig {
            max_recv_data_segment_length: 512,
            max_burst_length: 512,
            first_burst_length: 512,
            max_outstanding_r2t: 1,
            ..d
        },
        2 => TargetConfig {
            header_digest_crc32c: false,
            data_digest_crc32c: false,
            initial_r2t: true,
            immediate_data: false,
            data_pdu_in_order: false,
            data_sequence_in_order: false,
            ..d
        },
        _ => TargetConfig {
            max_recv_data_segment_length: 16_777_215,
            max_burst_length: 16_777_215,
            first_burst_length: 16_777_215,
            max_outstanding_r2t: 65535,
            max_connections: 8,
            error_recovery_level: 2,
            default_time2wait: 3600,
            default_time2retain: 3600,
            ..d
        },
    }
}

/// text::parse: the §6.1 limits hold and the pairs re-encode to themselves.
fn parse(text: &[u8]) {
    let Ok(pairs) = text::parse(text) else {
        return;
    };
    assert!(pairs.len() <= MAX_PAIRS);
    for p in &pairs {
        assert!(!p.key.is_empty() && p.key.len() <= MAX_KEY_LEN, "{p:?}");
        assert!(p.value.len() <= MAX_VALUE_LEN);
        assert!(
            !p.key.contains(['=', '\0']) && !p.value.contains('\0'),
            "{p:?}"
        );
    }
    let again = text::encode(&pairs);
    assert!(again.len() <= text.len() + 1);
    if again.len() <= MAX_TEXT_LEN {
        assert_eq!(text::parse(&again).as_ref(), Ok(&pairs), "re-encoded");
    }
}

/// TextCollector gathers continued text unchanged (§11.10.2, §11.12.2).
fn collect(text: &[u8], sel: u8) {
    if text.len() > MAX_TEXT_LEN {
        return;
    }
    let mut c = TextCollector::default();
    for piece in text.chunks(usize::from(sel >> 4) + 1) {
        c.push(piece).expect("within MAX_TEXT_LEN");
    }
    assert_eq!(c.take(), text);
    assert!(c.is_empty());
}

/// §6.1 numerical values (decimal, or 0x hexadecimal) and booleans.
fn values(v: &str) {
    match parse_number(v) {
        Some(n) => match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => assert_eq!(u64::from_str_radix(hex, 16).ok(), Some(n), "{v:?}"),
            None => {
                assert!(v.bytes().all(|b| b.is_ascii_digit()), "{v:?}");
                assert_eq!(v.parse::<u64>().ok(), Some(n), "{v:?}");
            }
        },
        None => assert!(
            v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()),
            "{v:?} is a number"
        ),
    }
    assert_eq!(parse_bool(v).is_some(), v == "Yes" || v == "No");
}

/// Negotiation on its own: each answer is one well-formed value.
fn negotiate(text: &[u8], sel: u8, cfg: &TargetConfig) {
    let Ok(pairs) = text::parse(text) else {
        return;
    };
    let mut n = Negotiation::new(cfg);
    if sel & 4 != 0 {
        n.params.session_type = SessionType::Discovery;
    }
    for kv in &pairs {
        values(&kv.value);
        match n.negotiate(&kv.key, &kv.value) {
            Ok(KeyOutcome::Respond(v)) => {
                // §6.1: values of at most 255 bytes unless a key says otherwise.
                assert!(v.len() <= 255 && !v.contains('\0'), "{kv:?} -> {v:?}");
                let mut out = Vec::new();
                text::encode_pair(&mut out, &kv.key, &v);
                let want = [KeyValue {
                    key: kv.key.clone(),
                    value: v,
                }];
                assert_eq!(text::parse(&out).as_deref(), Ok(&want[..]));
            }
            Ok(KeyOutcome::Silent) => {}
            // §6.2: only a key offered twice ends the negotiation.
            Err(s) => {
                assert_eq!(s, LoginStatus::INITIATOR_ERROR);
                return;
            }
        }
    }
    check_params(&n.finish(), cfg);
}

fn request(csg: u8, nsg: u8, transit: bool, continue_bit: bool) -> LoginRequestPdu {
    LoginRequestPdu {
        transit,
        continue_bit,
        csg: Stage(csg),
        nsg: Stage(nsg),
        version_max: 0,
        version_min: 0,
        isid: ISID,
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    }
}

fn accept(chap: bool) -> LoginAccept {
    LoginAccept {
        tsih: 1,
        target_portal_group_tag: 1,
        target_alias: Some("rtgt-fuzz".into()),
        chap: crate::chap::policy(if chap { 2 } else { 0 }),
    }
}

/// What a login step may be, whatever the text.
fn check_step(step: LoginStep, cfg: &TargetConfig) {
    match step {
        LoginStep::Reply(r) => {
            assert!(r.status.is_success());
            assert!(
                r.text.len() <= MAX_LOGIN_RESPONSE_TEXT,
                "{} bytes",
                r.text.len()
            );
            text::parse(&r.text).expect("Login Response text parses");
            if let Some(p) = r.full_feature {
                assert!(r.transit);
                check_params(&p, cfg);
            }
        }
        LoginStep::Fail(s) => assert!(!s.is_success()),
        LoginStep::AuthFail(_) => {}
        LoginStep::NeedDecision(i) => panic!("a second login decision: {i:?}"),
    }
}

/// The text through `LoginState`, as the first request or as the
/// operational stage's.
fn login(text: &[u8], sel: u8, cfg: &TargetConfig) {
    let mut l = LoginState::new(cfg);
    let transit = sel & 0x40 != 0;
    if sel & 8 != 0 {
        let csg = (sel >> 4) & 1;
        let nsg = if csg == 0 { 1 } else { 3 };
        match l.handle_request(&request(csg, nsg, transit, false), text) {
            LoginStep::NeedDecision(info) => {
                assert!(!info.initiator_name.is_empty());
                let step = l.accept(accept(sel & 0x20 != 0)).expect("a request waits");
                check_step(step, cfg);
            }
            step => check_step(step, cfg),
        }
        return;
    }
    let names = plain_names(sel & 4 != 0);
    match l.handle_request(&request(0, 1, true, false), &names) {
        LoginStep::NeedDecision(_) => {}
        s => panic!("a valid first request: {s:?}"),
    }
    match l.accept(accept(false)) {
        Some(LoginStep::Reply(r)) => assert!(r.transit && r.status.is_success()),
        s => panic!("a valid first request accepted: {s:?}"),
    }
    if sel & 0x80 != 0 && text.len() > 1 {
        let (a, b) = text.split_at(text.len() / 2);
        match l.handle_request(&request(1, 3, false, true), a) {
            // §11.13.2: a partial text is acknowledged with an empty response.
            LoginStep::Reply(r) => assert!(r.text.is_empty() && !r.transit),
            s => return check_step(s, cfg),
        }
        check_step(l.handle_request(&request(1, 3, transit, false), b), cfg);
    } else {
        check_step(l.handle_request(&request(1, 3, transit, false), text), cfg);
    }
}

pub fn seeds() -> Vec<Seed> {
    let with = |sel: u8, text: Vec<u8>| {
        let mut v = vec![sel];
        v.extend(text);
        v
    };
    let first = [
        ("InitiatorName", INITIATOR),
        ("InitiatorAlias", "fuzz"),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("AuthMethod", "CHAP,None"),
    ];
    vec![
        ("op-keys", with(0x40, op_keys("CRC32C,None"))),
        ("op-keys-small", with(0x41, op_keys("None"))),
        ("op-keys-refused", with(0x42, op_keys("CRC32C"))),
        ("op-keys-largest", with(0x43, op_keys("None"))),
        ("op-keys-continued", with(0xc0, op_keys("None"))),
        (
            "discovery",
            with(
                0x44,
                keys(&[
                    ("HeaderDigest", "None"),
                    ("MaxBurstLength", "65536"),
                    ("InitialR2T", "Yes"),
                    ("MaxRecvDataSegmentLength", "512"),
                ]),
            ),
        ),
        (
            "odd-values",
            with(
                0x40,
                keys(&[
                    ("MaxBurstLength", "0x10000"),
                    ("FirstBurstLength", "99999999999999999999999"),
                    ("DefaultTime2Wait", "3601"),
                    ("OFMarkInt", "2048~8192"),
                    ("TaskReporting", "RFC3720,ResponseFence"),
                    ("iSCSIProtocolLevel", "2"),
                    ("X-com.example.key", "1"),
                    ("X#vendor", ""),
                    ("TargetAddress", "1.2.3.4"),
                    ("DataDigest", "NotUnderstood"),
                    ("MaxOutstandingR2T", "0"),
                ]),
            ),
        ),
        (
            "duplicate-key",
            with(
                0x40,
                keys(&[("MaxBurstLength", "65536"), ("MaxBurstLength", "65536")]),
            ),
        ),
        ("first-request", with(0x48, keys(&first))),
        ("first-request-chap", with(0x28, keys(&first))),
        (
            "first-request-chap-keys",
            with(
                0x28,
                [
                    keys(&first),
                    keys(&[("CHAP_A", "7,5"), ("CHAP_N", "alice"), ("CHAP_R", "0bAAEC")]),
                ]
                .concat(),
            ),
        ),
        (
            "first-request-operational",
            with(0x58, [keys(&first), op_keys("None")].concat()),
        ),
        (
            "garbage",
            with(0x40, b"novalue\0=v\0a b=c\0k=\xff\0\0\0".to_vec()),
        ),
    ]
}
