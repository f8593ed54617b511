//! `login`: the login state machine through the sans-IO `Connection`, with
//! AuthMethod and CHAP (one-way and mutual), then whatever follows in full
//! feature phase, driven by [`Driver`].
//!
//! Input: two setup bytes ([`Setup::from_bytes`]: CHAP policy, a refused
//! login, limits, read and write sizes), then frames separated by
//! [`crate::SEP`] (see `driver` for what a frame is).

use rtgt_iscsi::pdu::Bhs;

use crate::driver::{Driver, Setup};
use crate::frame::{self, keys, Dir, NEXT};
use crate::{join, split, Seed};

pub fn run(data: &[u8]) {
    if let Some(d) = drive(data) {
        d.finish();
    }
}

/// The run up to its end, before the driver tears the connection down.
fn drive(data: &[u8]) -> Option<Driver> {
    let [a, b, rest @ ..] = data else {
        return None;
    };
    let mut d = Driver::new(Setup::from_bytes(*a, *b));
    for f in split(rest) {
        d.frame(f);
    }
    Some(d)
}

pub const INITIATOR: &str = "iqn.1994-05.com.redhat:rtgt-fuzz";
pub const TARGET: &str = "iqn.2024-01.org.rtgt:disk";

/// A structured frame: the BHS, then the data segment.
pub fn pdu(bhs: Bhs, data: &[u8]) -> Vec<u8> {
    let mut v = bhs.0.to_vec();
    v.extend_from_slice(data);
    v
}

/// The names of a normal session's first Login Request (§13.4–§13.6).
fn names(auth: &str) -> Vec<u8> {
    keys(&[
        ("InitiatorName", INITIATOR),
        ("InitiatorAlias", "fuzz"),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("AuthMethod", auth),
    ])
}

/// The first Login Request's names without authentication: a discovery
/// session (§13.6) or a normal one to [`TARGET`] (§13.4).
pub fn plain_names(discovery: bool) -> Vec<u8> {
    if discovery {
        keys(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Discovery"),
            ("AuthMethod", "None"),
        ])
    } else {
        keys(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("AuthMethod", "None"),
        ])
    }
}

/// The operational keys open-iscsi offers (§13).
pub fn op_keys(digest: &str) -> Vec<u8> {
    keys(&[
        ("HeaderDigest", digest),
        ("DataDigest", digest),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("MaxConnections", "1"),
        ("MaxOutstandingR2T", "1"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
    ])
}

/// Security stage with AuthMethod=None, then the operational stage.
fn plain_login(digest: &str) -> Vec<Vec<u8>> {
    vec![
        pdu(frame::login(0, 1, true, false, 1, 0), &names("None")),
        pdu(frame::login(1, 3, true, false, 1, NEXT), &op_keys(digest)),
    ]
}

/// Security stage with CHAP as open-iscsi does it: names and AuthMethod
/// with T=1 (the target stays), CHAP_A alone, then CHAP_N and CHAP_R (and
/// CHAP_I, CHAP_C for mutual CHAP) with T=1.
fn chap_login(algorithms: &str, answer: &[(&str, &str)], nsg: u8) -> Vec<Vec<u8>> {
    let mut answer_keys = vec![("CHAP_N", "alice")];
    answer_keys.extend_from_slice(answer);
    let mut v = vec![
        pdu(frame::login(0, 1, true, false, 1, 0), &names("CHAP,None")),
        pdu(
            frame::login(0, 1, false, false, 1, NEXT),
            &keys(&[("CHAP_A", algorithms)]),
        ),
        pdu(
            frame::login(0, nsg, true, false, 1, NEXT),
            &keys(&answer_keys),
        ),
    ];
    if nsg == 1 {
        v.push(pdu(
            frame::login(1, 3, true, false, 1, NEXT),
            &op_keys("None"),
        ));
    }
    v
}

const READ: Dir = Dir {
    read: true,
    write: false,
    final_bit: true,
};
const WRITE: Dir = Dir {
    read: false,
    write: true,
    final_bit: true,
};

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

/// A few commands of a normal session: reads completed at once (even ITT)
/// and held at the store (odd ITT), a write with immediate data and
/// solicited data, a ping, a text request, task management.
fn session() -> Vec<Vec<u8>> {
    vec![
        pdu(frame::scsi(2, 1, READ, 4096, NEXT, &read10(0, 8)), &[]),
        pdu(
            frame::scsi(0x14, 1, READ, 96, NEXT, &[0x12, 0, 0, 0, 96, 0]),
            &[],
        ),
        pdu(frame::nop_out(0x20, u32::MAX, NEXT, false), b"ping"),
        pdu(
            frame::scsi(4, 1, WRITE, 2048, NEXT, &write10(1, 4)),
            &[0xab; 1024],
        ),
        pdu(frame::data_out(NEXT, 1, NEXT, 0, NEXT, true), &[0xcd; 1024]),
        pdu(frame::scsi(9, 1, READ, 512, NEXT, &read10(2, 1)), &[]),
        pdu(frame::tmf(0x30, 1, 1, 9, NEXT), &[]),
        b"C".to_vec(),
        pdu(
            frame::text(0x40, u32::MAX, NEXT, true, false),
            &keys(&[
                ("X-org.rtgt.fuzz", "1"),
                ("MaxRecvDataSegmentLength", "8192"),
            ]),
        ),
        pdu(
            frame::scsi(0x16, 1, READ, 8, NEXT, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            &[],
        ),
        pdu(frame::tmf(0x32, 5, 1, u32::MAX, NEXT), &[]),
    ]
}

fn logout() -> Vec<u8> {
    pdu(frame::logout(0x50, 0, NEXT), &[])
}

/// A seed: setup bytes, then frames.
fn seed(name: &'static str, a: u8, b: u8, frames: Vec<Vec<u8>>) -> Seed {
    let mut v = vec![a, b];
    v.extend(join(&frames));
    (name, v)
}

/// Setup byte `a` values (see [`Setup::from_bytes`]).
const NO_PINGS: u8 = 0x80;
const SMALL: u8 = 0x20;
const REFUSE: u8 = 0x1c;

pub fn seeds() -> Vec<Seed> {
    let mutual_c = crate::chap::hex(
        &(0u8..32)
            .map(|i| i.wrapping_mul(37) ^ 0x5a)
            .collect::<Vec<_>>(),
    );
    let mut v = Vec::new();

    let mut f = plain_login("None");
    f.extend(session());
    f.push(logout());
    v.push(seed("plain-session", NO_PINGS, 0, f));

    // Digests, short reads and writes, pings answered.
    let mut f = plain_login("CRC32C,None");
    f.extend(session());
    f.push(b"T\x06".to_vec());
    f.push(pdu(frame::nop_out(u32::MAX, NEXT, NEXT, true), &[]));
    f.push(b"T\x06".to_vec());
    f.push(b"T\x06".to_vec());
    f.push(b"T\x06".to_vec());
    v.push(seed("digests-pings", 0, 0x0b | 0x08, f));

    // Small limits: InitialR2T=Yes, ImmediateData=No, R2Ts of 1024 bytes.
    let mut f = plain_login("None");
    f.push(pdu(
        frame::scsi(6, 1, WRITE, 2048, NEXT, &write10(0, 4)),
        &[],
    ));
    f.push(pdu(
        frame::data_out(NEXT, 1, NEXT, 0, NEXT, false),
        &[1; 512],
    ));
    f.push(pdu(frame::data_out(NEXT, 1, NEXT, 1, 512, true), &[2; 512]));
    f.push(pdu(
        frame::data_out(NEXT, 1, NEXT, 0, NEXT, false),
        &[3; 512],
    ));
    f.push(pdu(
        frame::data_out(NEXT, 1, NEXT, 1, 1536, true),
        &[4; 512],
    ));
    f.push(pdu(frame::scsi(8, 1, READ, 4096, NEXT, &read10(0, 8)), &[]));
    f.push(logout());
    v.push(seed("small-r2t", NO_PINGS | SMALL, 0x40, f));

    // Solicited data of 17 KiB read in 4 KiB pieces: its header is checked
    // first, then the rest is placed straight into the task's buffer.
    let mut f = plain_login("None");
    f.push(pdu(
        frame::scsi(0x10, 1, WRITE, 18432, NEXT, &write10(0, 36)),
        &[0x77; 1024],
    ));
    f.push(pdu(
        frame::data_out(NEXT, 1, NEXT, 0, NEXT, true),
        &[0x78; 17408],
    ));
    f.push(logout());
    v.push(seed("placement", NO_PINGS, 0x07 | 0x20, f));

    // Extended CDB (AHS type 1, §11.2.2.3) and a bidirectional command.
    let mut f = plain_login("None");
    let mut ext = pdu(
        frame::scsi(0x12, 1, READ, 512, NEXT, &[0x7f, 0, 0, 0, 0, 0, 0, 0x18]),
        &[],
    );
    ext[4] = 5;
    let mut ahs = vec![0u8, 17, 1, 0];
    ahs.extend(16u8..32);
    ext.splice(48..48, ahs);
    f.push(ext);
    let bidi = Dir {
        read: true,
        write: true,
        final_bit: true,
    };
    f.push(pdu(
        frame::scsi(0x18, 1, bidi, 512, NEXT, &read10(0, 1)),
        &[9; 512],
    ));
    f.push(pdu(frame::snack(0x60, 0), &[]));
    f.push(pdu(frame::login(1, 3, true, false, 1, NEXT), &[]));
    let mut unknown = vec![0u8; 48];
    unknown[0] = 0xbc;
    f.push(unknown);
    f.push(logout());
    v.push(seed("ahs-bidi-odd-pdus", NO_PINGS, 0, f));

    // Discovery: SendTargets=All answered over several Text Responses.
    let mut f = vec![
        pdu(
            frame::login(0, 1, true, false, 1, 0),
            &keys(&[
                ("InitiatorName", INITIATOR),
                ("SessionType", "Discovery"),
                ("AuthMethod", "None"),
            ]),
        ),
        pdu(
            frame::login(1, 3, true, false, 1, NEXT),
            &keys(&[
                ("HeaderDigest", "None"),
                ("MaxRecvDataSegmentLength", "512"),
            ]),
        ),
        pdu(
            frame::text(0x70, u32::MAX, NEXT, true, false),
            &keys(&[("SendTargets", "All")]),
        ),
    ];
    for _ in 0..4 {
        f.push(pdu(frame::text(0x70, NEXT, NEXT, true, false), &[]));
    }
    f.push(pdu(
        frame::text(0x72, u32::MAX, NEXT, false, true),
        b"SendTarg",
    ));
    f.push(pdu(frame::text(0x72, NEXT, NEXT, true, false), b"ets=\0"));
    f.push(logout());
    v.push(seed("discovery-sendtargets", NO_PINGS, 0, f));

    // CHAP, one-way, MD5.
    let mut f = chap_login("5", &[("CHAP_R", "%")], 1);
    f.extend(session());
    f.push(logout());
    v.push(seed("chap-md5", NO_PINGS | 1, 0, f));

    // Mutual CHAP with SHA-256, straight to full feature phase.
    let mut f = chap_login(
        "7,5",
        &[("CHAP_R", "%"), ("CHAP_I", "77"), ("CHAP_C", &mutual_c)],
        3,
    );
    f.push(pdu(frame::scsi(2, 1, READ, 512, NEXT, &read10(0, 1)), &[]));
    f.push(logout());
    v.push(seed("chap-mutual-sha256", NO_PINGS | 2, 0, f));

    // SHA3-256 answered in base64, SHA-1 mutual.
    let mut f = chap_login("8", &[("CHAP_R", "%b")], 1);
    f.push(logout());
    v.push(seed("chap-sha3-base64", NO_PINGS | 1, 0x03, f));
    let mut f = chap_login(
        "6",
        &[("CHAP_R", "%"), ("CHAP_I", "3"), ("CHAP_C", &mutual_c)],
        1,
    );
    f.push(logout());
    v.push(seed("chap-sha1-mutual", NO_PINGS | 2, 0, f));

    // Refusals: wrong response, the empty-secret account, same secret both
    // ways, CHAP keys outside the security stage, skipping security.
    v.push(seed(
        "chap-wrong-response",
        NO_PINGS | 1,
        0,
        chap_login("5", &[("CHAP_R", "0x000102030405060708090a0b0c0d0e0f")], 1),
    ));
    let mut f = chap_login("5", &[("CHAP_R", "%")], 1);
    f[2] = pdu(
        frame::login(0, 1, true, false, 1, NEXT),
        &keys(&[("CHAP_N", "eve"), ("CHAP_R", "%")]),
    );
    v.push(seed("chap-empty-secret", NO_PINGS | 1, 0, f));
    v.push(seed(
        "chap-same-secret",
        NO_PINGS | 3,
        0,
        chap_login(
            "5",
            &[("CHAP_R", "%"), ("CHAP_I", "1"), ("CHAP_C", &mutual_c)],
            1,
        ),
    ));
    v.push(seed(
        "chap-skip-security",
        NO_PINGS | 1,
        0,
        vec![pdu(
            frame::login(1, 3, true, false, 1, 0),
            &[names("CHAP"), op_keys("None")].concat(),
        )],
    ));

    // A login refused by the target; one that times out; one continued
    // over two PDUs (C bit, §11.12.2).
    v.push(seed("refused", NO_PINGS | REFUSE, 0, plain_login("None")));
    v.push(seed(
        "login-timeout",
        0,
        0,
        vec![
            pdu(frame::login(0, 1, false, false, 1, 0), &names("None")),
            b"T\x10".to_vec(),
        ],
    ));
    let first = names("None");
    let (a, b) = first.split_at(30);
    v.push(seed(
        "login-continued",
        NO_PINGS,
        0x01,
        vec![
            pdu(frame::login(0, 1, false, true, 1, 0), a),
            pdu(frame::login(0, 1, true, false, 1, NEXT), b),
            pdu(frame::login(1, 3, true, false, 1, NEXT), &op_keys("None")),
            logout(),
        ],
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each seed gets where it is meant to: a session, or a refusal.
    #[test]
    fn seeds_reach_their_state() {
        let refused = [
            "refused",
            "login-timeout",
            "chap-wrong-response",
            "chap-empty-secret",
            "chap-same-secret",
            "chap-skip-security",
        ];
        for (name, data) in seeds() {
            let d = drive(&data).expect("setup bytes");
            let want = !refused.contains(&name);
            assert_eq!(d.reached_full_feature(), want, "seed {name}");
            d.finish();
        }
    }
}
