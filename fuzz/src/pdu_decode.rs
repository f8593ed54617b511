//! `pdu_decode`: the PDU codec (pdu.rs) on any bytes, then the same bytes
//! as a byte stream into a connection in full feature phase, where the
//! connection frames them (BHS, AHS, digests, data segment limits,
//! placement of write data) and the [`Driver`] checks what comes back.
//!
//! Input: two setup bytes, then the stream.
//! - `a` bit 0: HeaderDigest=CRC32C offered, bit 1: DataDigest, bit 2: the
//!   stream comes without digests and the driver inserts correct ones after
//!   each PDU's header and data (as the BHS frames it), bits 3-4 both set: a
//!   discovery session; bits 4-7 also as for [`Setup::from_bytes`] (the
//!   target's own NOP-In settings, limits, digests refused, pings);
//! - `b`: read and write sizes, placement, alloc behaviour ([`Setup::from_bytes`]).
//!
//! The canned login always succeeds, so every input reaches full feature
//! phase; CmdSN starts at 1 and StatSN at 0.

use rtgt_iscsi::pdu::{
    self, crc32c_of, digest_bytes, digest_from, pad4, parse_command_ahs, Bhs, InitiatorPdu, Opcode,
    Reader, SnFields, BHS_LEN,
};

use crate::driver::{Driver, Setup};
use crate::frame::{self, keys, Dir, MAX_DSL, NEXT};
use crate::login::plain_names;
use crate::Seed;

pub fn run(data: &[u8]) {
    codec(data);
    let [a, b, stream @ ..] = data else {
        return;
    };
    let mut setup = Setup::from_bytes(*a, *b);
    setup.chap = None;
    setup.reject = false;
    let mut d = Driver::new(setup);
    login(&mut d, *a);
    if a & 4 != 0 {
        with_digests(&mut d, stream);
    } else {
        d.send(stream);
    }
    d.finish();
}

/// A login to full feature phase, asking for the digests `a` says.
fn login(d: &mut Driver, a: u8) {
    let digest = |on: bool| if on { "CRC32C,None" } else { "None" };
    let discovery = (a >> 3) & 3 == 3;
    let names = plain_names(discovery);
    d.pdu(&frame::login(0, 1, true, false, 1, 0), &names);
    let op = keys(&[
        ("HeaderDigest", digest(a & 1 != 0)),
        ("DataDigest", digest(a & 2 != 0)),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxRecvDataSegmentLength", "65536"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "65536"),
        ("MaxOutstandingR2T", "2"),
    ]);
    d.pdu(&frame::login(1, 3, true, false, 1, NEXT), &op);
    assert!(d.conn.is_full_feature(), "the canned login failed");
}

/// Sends `stream` PDU by PDU as each BHS frames it, with the digests in force
/// inserted; what does not frame is sent as it is.
fn with_digests(d: &mut Driver, mut stream: &[u8]) {
    let (hd, dd) = d.digests();
    while let Some(bhs) = Bhs::from_prefix(stream) {
        let ahs = bhs.total_ahs_len();
        let dsl = bhs.data_segment_len();
        let body = BHS_LEN + ahs + pad4(dsl);
        if stream.len() < body || d.is_done() {
            break;
        }
        let data = &stream[BHS_LEN + ahs..BHS_LEN + ahs + dsl];
        d.send(&frame::frame(
            &bhs,
            &stream[BHS_LEN..BHS_LEN + ahs],
            data,
            hd,
            dd,
        ));
        stream = &stream[body..];
    }
    d.send(stream);
}

/// The codec's own promises, on any bytes.
fn codec(data: &[u8]) {
    // A digest over a PDU received in two pieces is the digest of the whole
    // (§13.1: CRC32C over the bytes in order).
    let mid = usize::from(data.first().copied().unwrap_or(0)).min(data.len());
    let crc = crc32c_of(&[data]);
    assert_eq!(crc32c_of(&[&data[..mid], &data[mid..]]), crc);
    assert_eq!(digest_from(digest_bytes(crc)), crc);
    reader(data);
    // Any bytes as an AHS area: bounded walks, never a panic.
    // An accepted Extended CDB AHS fits inside the area (§11.2.2.3).
    if let Ok(a) = parse_command_ahs(data) {
        assert!(a.ext_cdb_len < data.len().max(1));
    }
    let Some(bhs) = Bhs::from_prefix(data) else {
        assert!(data.len() < BHS_LEN);
        return;
    };
    assert_eq!(bhs.0[..], data[..BHS_LEN]);
    assert_eq!(bhs.opcode(), Opcode(data[0] & 0x3f));
    assert_eq!(bhs.immediate(), data[0] & 0x40 != 0);
    let dsl = bhs.data_segment_len();
    assert!(dsl <= MAX_DSL);
    let mut same = bhs;
    same.set_data_segment_len(dsl);
    assert_eq!(same, bhs, "DataSegmentLength round trip");
    let decoded = InitiatorPdu::decode(&bhs);
    let _ = format!("{bhs:?} {decoded:?} {}", bhs.opcode());
    match &decoded {
        InitiatorPdu::ScsiCommand(c) => {
            assert_eq!(c.cdb[..], data[32..48]);
            assert_eq!((c.itt, c.lun), (bhs.itt(), bhs.lun()));
        }
        InitiatorPdu::Login(l) => {
            assert_eq!(l.isid[..], data[8..14]);
            assert!(l.csg.0 <= 3 && l.nsg.0 <= 3);
        }
        InitiatorPdu::DataOut(o) => assert_eq!(o.buffer_offset, bhs.u32_at(40)),
        InitiatorPdu::Unknown(op) => assert!(
            !matches!(op.0, 0x00..=0x06 | 0x10),
            "initiator opcode {op:?} not decoded"
        ),
        _ => {}
    }
    // The AHS the BHS announces, as the connection walks it.
    let end = (BHS_LEN + bhs.total_ahs_len()).min(data.len());
    if let Ok(a) = parse_command_ahs(&data[BHS_LEN..end]) {
        assert!(a.ext_cdb_len < bhs.total_ahs_len().max(1));
    }
    encoders(&bhs);
}

/// A bounded reader driven by the bytes: it never reads past its slice.
fn reader(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut ops = data.iter().copied();
    while let Some(op) = ops.next() {
        let before = r.left();
        let n = usize::from(ops.next().unwrap_or(0) % 64);
        let ok = match op % 7 {
            0 => r.take(n).is_ok(),
            1 => r.sub(n).map(|mut s| s.rest().len() == n).unwrap_or(false),
            2 => r.u8().is_ok(),
            3 => r.u16().is_ok(),
            4 => r.u24().is_ok(),
            5 => r.u32().is_ok(),
            _ => r.u64().is_ok(),
        };
        assert!(r.left() <= before);
        if !ok {
            // A failed read takes nothing.
            assert_eq!(r.left(), before);
        }
    }
}

/// The target's encoders, fed fields from the input: what they write reads
/// back (the initiator parses these).
fn encoders(bhs: &Bhs) {
    let sn = SnFields {
        stat_sn: bhs.u32_at(24),
        exp_cmd_sn: bhs.u32_at(28),
        max_cmd_sn: bhs.u32_at(32),
    };
    let r2t = pdu::encode_r2t(
        bhs.lun(),
        bhs.itt(),
        bhs.u32_at(20),
        sn,
        bhs.u32_at(36),
        bhs.u32_at(40),
        bhs.u32_at(44),
    );
    assert_eq!(r2t.opcode(), Opcode::R2T);
    assert_eq!((r2t.lun(), r2t.itt()), (bhs.lun(), bhs.itt()));
    assert_eq!(r2t.u32_at(44), bhs.u32_at(44));
    let dsl = bhs.data_segment_len();
    let d = pdu::DataIn {
        final_bit: bhs.final_bit(),
        status: (bhs.flags() & 1 != 0).then_some(bhs.0[3]),
        residual_flags: bhs.flags(),
        residual: bhs.u32_at(44),
        lun: bhs.lun(),
        itt: bhs.itt(),
        data_sn: bhs.u32_at(36),
        buffer_offset: bhs.u32_at(40),
        data_len: dsl,
    };
    let di = pdu::encode_data_in(&d, sn);
    assert_eq!(di.data_segment_len(), dsl);
    assert_eq!(di.u32_at(40), d.buffer_offset);
    // §11.7.1: S only with F.
    assert!(di.flags() & 1 == 0 || di.final_bit());
    let resp = pdu::encode_scsi_response(bhs.itt(), bhs.flags(), bhs.0[3], dsl, sn, 0, 0);
    assert_eq!(resp.data_segment_len(), dsl);
    assert!(resp.final_bit());
}

// ----- seeds -----------------------------------------------------------------

fn cmd(itt: u32, dir: Dir, edtl: u32, cmd_sn: u32, cdb: &[u8], data: &[u8]) -> Vec<u8> {
    frame::frame(
        &frame::scsi(itt, 1, dir, edtl, cmd_sn, cdb),
        &[],
        data,
        false,
        false,
    )
}

fn plain(bhs: Bhs, data: &[u8]) -> Vec<u8> {
    frame::frame(&bhs, &[], data, false, false)
}

/// Fixes the ExpStatSN fields the builders leave as [`NEXT`]: the raw
/// stream gets no filling in.
fn exp_stat_sn(mut b: Bhs, sn: u32) -> Bhs {
    if b.u32_at(28) == NEXT {
        b.set_u32(28, sn);
    }
    b
}

pub fn seeds() -> Vec<Seed> {
    const R: Dir = Dir {
        read: true,
        write: false,
        final_bit: true,
    };
    const W: Dir = Dir {
        read: false,
        write: true,
        final_bit: true,
    };
    const W_MORE: Dir = Dir {
        read: false,
        write: true,
        final_bit: false,
    };
    let read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 4, 0];
    let mut ext = frame::scsi(5, 1, R, 512, 4, &[0x7f, 0, 0, 0, 0, 0, 0, 0x18]);
    ext = exp_stat_sn(ext, 2);
    let mut ahs = vec![0u8, 17, 1, 0];
    ahs.extend(16u8..32);
    let stream = |a: u8, b: u8, pdus: Vec<Vec<u8>>| {
        let mut v = vec![a, b];
        v.extend(pdus.concat());
        v
    };
    let session = vec![
        cmd(2, R, 4096, 1, &read10, &[]),
        cmd(4, W, 2048, 2, &write10, &[0xab; 2048]),
        plain(
            exp_stat_sn(frame::nop_out(0x10, u32::MAX, 3, false), 2),
            b"ping",
        ),
        frame::frame(&ext, &ahs, &[], false, false),
        plain(
            exp_stat_sn(frame::text(0x20, u32::MAX, 5, true, false), 4),
            &keys(&[("X-fuzz", "1"), ("MaxRecvDataSegmentLength", "4096")]),
        ),
        cmd(6, W_MORE, 1024, 6, &write10, &[1; 512]),
        plain(
            exp_stat_sn(frame::data_out(6, 1, u32::MAX, 0, 512, true), 5),
            &[2; 512],
        ),
        plain(exp_stat_sn(frame::tmf(0x30, 1, 1, 9, 7), 6), &[]),
        plain(exp_stat_sn(frame::logout(0x40, 0, 7), 7), &[]),
    ];
    let mut seeds = vec![
        ("session", stream(0, 0, session.clone())),
        ("session-digests", stream(0x07, 0x02, session.clone())),
        (
            "session-digests-refused",
            stream(0x47, 0x1d, session.clone()),
        ),
        ("session-small", stream(0x20, 0x04, session.clone())),
        ("session-alloc-fails", stream(0, 0x40 | 0x20, session)),
        (
            "discovery",
            stream(
                0x18,
                0,
                vec![
                    plain(
                        exp_stat_sn(frame::text(0x50, u32::MAX, 1, true, false), 1),
                        &keys(&[("SendTargets", "All")]),
                    ),
                    cmd(2, R, 512, 2, &read10, &[]),
                ],
            ),
        ),
        (
            "large-write-placed",
            stream(
                0,
                0x07 | 0x20,
                vec![cmd(
                    8,
                    W,
                    17408,
                    1,
                    &[0x2a, 0, 0, 0, 0, 0, 0, 0, 34, 0],
                    &[7; 17408],
                )],
            ),
        ),
        (
            "oversize-segment",
            stream(0, 0, {
                let mut b = frame::scsi(2, 1, W, 1 << 20, 1, &write10);
                b.set_data_segment_len(MAX_DSL);
                vec![b.0.to_vec()]
            }),
        ),
        (
            "header-digest-missing",
            stream(0x03, 0, {
                // Digests negotiated but this stream carries none: the
                // header digest check fails at once.
                vec![cmd(2, R, 512, 1, &read10, &[])]
            }),
        ),
    ];
    // Bare codec inputs: every initiator opcode's BHS.
    for (name, op) in [
        ("bhs-nop-out", 0x00u8),
        ("bhs-login", 0x03),
        ("bhs-snack", 0x10),
        ("bhs-target-opcode", 0x21),
    ] {
        let mut b = Bhs::default();
        b.set_opcode(Opcode(op), false);
        b.0[4] = 1;
        let mut v = b.0.to_vec();
        v.extend_from_slice(&[0, 1, 2, 0]);
        seeds.push((name, v));
    }
    seeds
}
