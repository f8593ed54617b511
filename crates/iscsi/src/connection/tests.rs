//! Deterministic tests: an in-memory initiator drives a `Connection<Vec<u8>>`.

use super::*;
use crate::chap::{ChapAccount, ChapPolicy};
use crate::pdu::Stage;
use proptest::prelude::*;

const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];

/// Frames a PDU as an initiator would (§11.2): BHS, AHS, header digest, data,
/// padding, data digest.
fn frame(bhs: &Bhs, ahs: &[u8], data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let mut b = *bhs;
    b.0[4] = (ahs.len() / 4) as u8;
    b.set_data_segment_len(data.len());
    let mut out = b.0.to_vec();
    out.extend_from_slice(ahs);
    if hd {
        let crc = crc32c_of(&[&out]);
        out.extend_from_slice(&digest_bytes(crc));
    }
    out.extend_from_slice(data);
    let pad = pad4(data.len()) - data.len();
    out.extend(std::iter::repeat_n(0u8, pad));
    if dd && !data.is_empty() {
        let mut padded = data.to_vec();
        padded.extend(std::iter::repeat_n(0u8, pad));
        out.extend_from_slice(&digest_bytes(crc32c_of(&[&padded])));
    }
    out
}

fn login_bhs(csg: u8, nsg: u8, transit: bool, cont: bool, itt: u32, cmd_sn: u32) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::LOGIN_REQUEST, true);
    let mut f = (csg << 2) | nsg;
    if transit {
        f |= 0x80;
    }
    if cont {
        f |= 0x40;
    }
    b.set_flags(f);
    b.0[8..14].copy_from_slice(&ISID);
    b.set_u32(16, itt);
    b.set_u32(24, cmd_sn);
    b
}

#[allow(clippy::too_many_arguments)]
fn scsi_bhs(
    itt: u32,
    read: bool,
    write: bool,
    fin: bool,
    edtl: u32,
    cmd_sn: u32,
    cdb0: u8,
    imm: bool,
) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::SCSI_COMMAND, imm);
    let mut f = 0x01; // SIMPLE
    if fin {
        f |= 0x80;
    }
    if read {
        f |= 0x40;
    }
    if write {
        f |= 0x20;
    }
    b.set_flags(f);
    b.set_u64(8, 0x0001_0000_0000_0000);
    b.set_u32(16, itt);
    b.set_u32(20, edtl);
    b.set_u32(24, cmd_sn);
    b.0[32] = cdb0;
    b
}

fn data_out_bhs(itt: u32, ttt: u32, data_sn: u32, offset: u32, fin: bool) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::SCSI_DATA_OUT, false);
    b.set_flags(if fin { 0x80 } else { 0 });
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_u32(36, data_sn);
    b.set_u32(40, offset);
    b
}

fn nop_out_bhs(itt: u32, ttt: u32, cmd_sn: u32) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::NOP_OUT, true);
    b.set_flags(0x80);
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_u32(24, cmd_sn);
    b
}

fn text_bhs(itt: u32, ttt: u32, cmd_sn: u32, fin: bool, cont: bool) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::TEXT_REQUEST, true);
    b.set_flags(if fin { 0x80 } else { 0 } | if cont { 0x40 } else { 0 });
    b.set_u32(16, itt);
    b.set_u32(20, ttt);
    b.set_u32(24, cmd_sn);
    b
}

fn logout_bhs(itt: u32, reason: u8, cmd_sn: u32) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::LOGOUT_REQUEST, true);
    b.set_flags(0x80 | reason);
    b.set_u32(16, itt);
    b.set_u32(24, cmd_sn);
    b
}

/// A received target PDU.
#[derive(Debug)]
struct Rx {
    bhs: Bhs,
    data: Vec<u8>,
}

impl Rx {
    fn op(&self) -> Opcode {
        self.bhs.opcode()
    }
    fn text(&self) -> Vec<(String, String)> {
        text::parse(&self.data)
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }
    fn key(&self, k: &str) -> Option<String> {
        self.text()
            .into_iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v)
    }
}

struct Harness {
    c: Connection<Vec<u8>>,
    now: Instant,
    hd: bool,
    dd: bool,
    cmd_sn: u32,
    max_alloc: usize,
    /// Buffers handed to the connection by the alloc callback.
    allocs: usize,
    alloc_ok: bool,
}

impl Harness {
    fn new(config: TargetConfig) -> Self {
        let now = Instant::now();
        Harness {
            c: Connection::new(config, now),
            now,
            hd: false,
            dd: false,
            cmd_sn: 1,
            max_alloc: 0,
            allocs: 0,
            alloc_ok: true,
        }
    }

    fn input(&mut self, bytes: &[u8]) -> Result<usize, ConnectionError> {
        let mut max = self.max_alloc;
        let mut allocs = self.allocs;
        let ok = self.alloc_ok;
        let r = self.c.handle_input(bytes, self.now, &mut |n| {
            max = max.max(n);
            if ok {
                allocs += 1;
                Some(vec![0u8; n])
            } else {
                None
            }
        });
        self.allocs = allocs;
        self.max_alloc = max;
        r
    }

    fn send(&mut self, bhs: Bhs, ahs: &[u8], data: &[u8]) -> Result<usize, ConnectionError> {
        let bytes = frame(&bhs, ahs, data, self.hd, self.dd);
        let n = self.input(&bytes)?;
        assert_eq!(n, bytes.len(), "whole PDU consumed");
        Ok(n)
    }

    fn ok(&mut self, bhs: Bhs, data: &[u8]) {
        self.send(bhs, &[], data).unwrap();
    }

    fn raw_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.c.wants_write() {
            let n = self.c.write_to(&mut out).unwrap();
            assert!(n > 0);
        }
        out
    }

    /// Splits the target's output into PDUs, verifying digests.
    fn recv(&mut self) -> Vec<Rx> {
        let bytes = self.raw_output();
        parse_target_pdus(&bytes, self.hd, self.dd)
    }

    fn events(&mut self) -> Vec<Event<Vec<u8>>> {
        std::iter::from_fn(|| self.c.poll_event()).collect()
    }

    fn next_sn(&mut self) -> u32 {
        let s = self.cmd_sn;
        self.cmd_sn += 1;
        s
    }
}

fn parse_target_pdus(bytes: &[u8], hd: bool, dd: bool) -> Vec<Rx> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let bhs = Bhs::from_prefix(&bytes[i..]).unwrap();
        // Digests apply to everything but login responses.
        let digests = bhs.opcode() != Opcode::LOGIN_RESPONSE;
        let mut p = i + BHS_LEN + bhs.total_ahs_len();
        if hd && digests {
            let d = digest_from(bytes[p..p + 4].try_into().unwrap());
            assert_eq!(d, crc32c_of(&[&bytes[i..p]]), "header digest");
            p += 4;
        }
        let dsl = bhs.data_segment_len();
        let data = bytes[p..p + dsl].to_vec();
        let padded = &bytes[p..p + pad4(dsl)];
        p += pad4(dsl);
        if dd && digests && dsl > 0 {
            let d = digest_from(bytes[p..p + 4].try_into().unwrap());
            assert_eq!(d, crc32c_of(&[padded]), "data digest");
            p += 4;
        }
        v.push(Rx { bhs, data });
        i = p;
    }
    v
}

fn accept() -> LoginAccept {
    LoginAccept {
        tsih: 7,
        target_portal_group_tag: 1,
        target_alias: Some("rtgt".into()),
        chap: None,
    }
}

/// Normal session login: security stage then operational stage.
fn login_normal(config: TargetConfig, op_keys: &str) -> Harness {
    let mut h = Harness::new(config);
    h.ok(
        login_bhs(0, 1, true, false, 1, 1),
        b"InitiatorName=iqn.1994-05.com.example:ini\0InitiatorAlias=ini\0TargetName=iqn.2024-01.org.rtgt:disk\0SessionType=Normal\0AuthMethod=None\0",
    );
    let ev = h.events();
    match &ev[..] {
        [Event::Login(info)] => {
            assert_eq!(info.initiator_name, "iqn.1994-05.com.example:ini");
            assert_eq!(
                info.target_name.as_deref(),
                Some("iqn.2024-01.org.rtgt:disk")
            );
            assert_eq!(info.isid, ISID);
            assert_eq!(info.session_type, SessionType::Normal);
        }
        other => panic!("{other:?}"),
    }
    assert!(h.recv().is_empty(), "no response before the target decides");
    h.c.accept_login(accept());
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::LOGIN_RESPONSE);
    assert_eq!(r[0].bhs.flags(), 0x80 | 1); // T, CSG 0, NSG 1
    assert_eq!(r[0].key("AuthMethod").as_deref(), Some("None"));
    assert_eq!(r[0].key("TargetPortalGroupTag").as_deref(), Some("1"));
    h.ok(login_bhs(1, 3, true, false, 1, 1), op_keys.as_bytes());
    let r = h.recv();
    assert_eq!(r.len(), 1);
    let resp = &r[0];
    assert_eq!(resp.bhs.flags(), 0x80 | (1 << 2) | 3);
    assert_eq!(resp.bhs.u16_at(14), 7, "TSIH in the final response");
    assert_eq!(resp.bhs.u16_at(36), 0, "success");
    assert!(resp.key("MaxRecvDataSegmentLength").is_some());
    let ev = h.events();
    match &ev[..] {
        [Event::FullFeature(p)] => {
            h.hd = p.header_digest;
            h.dd = p.data_digest;
            assert_eq!(p.tsih, 7);
        }
        other => panic!("{other:?}"),
    }
    assert!(h.c.is_full_feature());
    h
}

const OP_KEYS: &str = "HeaderDigest=None\0DataDigest=None\0InitialR2T=No\0ImmediateData=Yes\0MaxBurstLength=16384\0FirstBurstLength=8192\0MaxRecvDataSegmentLength=4096\0MaxOutstandingR2T=2\0";

fn command_event(ev: Event<Vec<u8>>) -> ScsiCommand<Vec<u8>> {
    match ev {
        Event::Command(c) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn garbage_before_login_closes_without_allocating() {
    let mut h = Harness::new(TargetConfig::default());
    let mut b = scsi_bhs(1, true, false, true, 512, 1, 0x28, false);
    b.set_data_segment_len(1 << 20);
    let err = h.input(&b.0).unwrap_err();
    assert!(matches!(
        err,
        ConnectionError::LoginExpected(Opcode::SCSI_COMMAND)
    ));
    assert!(h.c.is_closed());
    assert_eq!(h.max_alloc, 0);
    // Even a partial header is recognised.
    let mut h = Harness::new(TargetConfig::default());
    assert!(h.input(b"GET / HTTP/1.1").is_err());
}

#[test]
fn oversize_login_data_segment_is_refused() {
    let mut h = Harness::new(TargetConfig::default());
    let mut b = login_bhs(0, 1, true, false, 1, 1);
    b.set_data_segment_len(8193);
    let e = h.input(&b.0).unwrap_err();
    assert!(matches!(
        e,
        ConnectionError::DataSegmentTooLong {
            len: 8193,
            limit: 8192
        }
    ));
}

#[test]
fn incomplete_pdu_is_left_for_later() {
    let mut h = Harness::new(TargetConfig::default());
    let bytes = frame(
        &login_bhs(1, 3, true, false, 1, 1),
        &[],
        b"InitiatorName=iqn.x\0SessionType=Discovery\0",
        false,
        false,
    );
    assert_eq!(h.input(&bytes[..30]).unwrap(), 0);
    assert_eq!(h.input(&bytes[..bytes.len() - 1]).unwrap(), 0);
    assert_eq!(h.input(&bytes).unwrap(), bytes.len());
    assert!(matches!(h.events()[..], [Event::Login(_)]));
}

#[test]
fn discovery_login_and_send_targets_with_continuation() {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(1, 3, true, false, 9, 5),
        b"InitiatorName=iqn.x\0SessionType=Discovery\0MaxRecvDataSegmentLength=512\0HeaderDigest=None\0MaxBurstLength=4096\0",
    );
    match &h.events()[..] {
        [Event::Login(i)] => {
            assert_eq!(i.session_type, SessionType::Discovery);
            assert!(i.target_name.is_none());
        }
        e => panic!("{e:?}"),
    }
    h.c.accept_login(accept());
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.u32_at(16), 9);
    assert_eq!(r[0].key("MaxBurstLength").as_deref(), Some("Irrelevant"));
    assert_eq!(r[0].key("TargetPortalGroupTag"), None);
    assert_eq!(r[0].bhs.u32_at(28), 5, "ExpCmdSN from the login CmdSN");
    assert!(matches!(h.events()[..], [Event::FullFeature(_)]));

    // SendTargets=All, answer larger than 512 bytes -> continued.
    h.ok(
        text_bhs(20, RESERVED_TAG, 5, true, false),
        b"SendTargets=All\0",
    );
    match &h.events()[..] {
        [Event::SendTargets(SendTargetsScope::All)] => {}
        e => panic!("{e:?}"),
    }
    let targets: Vec<(String, Vec<String>)> = (0..20)
        .map(|i| {
            (
                format!("iqn.2024-01.org.rtgt:target-number-{i}"),
                vec![
                    format!("192.168.1.{i}:3260,1"),
                    format!("[fe80::{i}]:3260,1"),
                ],
            )
        })
        .collect();
    h.c.send_targets_response(&targets);
    let mut all = Vec::new();
    let mut pdus = 0;
    loop {
        let r = h.recv();
        assert_eq!(r.len(), 1);
        let p = &r[0];
        assert_eq!(p.op(), Opcode::TEXT_RESPONSE);
        assert!(p.data.len() <= 512);
        all.extend_from_slice(&p.data);
        pdus += 1;
        if p.bhs.final_bit() {
            assert_eq!(p.bhs.u32_at(20), RESERVED_TAG);
            assert_eq!(p.bhs.flags() & 0x40, 0);
            break;
        }
        assert_eq!(p.bhs.flags() & 0x40, 0x40, "C bit");
        let ttt = p.bhs.u32_at(20);
        assert_ne!(ttt, RESERVED_TAG);
        h.ok(text_bhs(20, ttt, 5, true, false), b"");
    }
    assert!(pdus > 1);
    let kv = text::parse(&all).unwrap();
    assert_eq!(kv.iter().filter(|k| k.key == "TargetName").count(), 20);
    assert_eq!(kv.iter().filter(|k| k.key == "TargetAddress").count(), 40);
    assert_eq!(kv[0].value, "iqn.2024-01.org.rtgt:target-number-0");

    // SCSI commands are not allowed in a discovery session.
    let e = h.send(
        scsi_bhs(1, true, false, true, 512, 5, 0x12, false),
        &[],
        &[],
    );
    assert!(matches!(e, Err(ConnectionError::DiscoverySession(_))));
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::REJECT);
}

#[test]
fn text_request_continuation_and_unknown_keys() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    h.ok(
        text_bhs(3, RESERVED_TAG, 1, false, true),
        b"X-com.example.a=1\0Send",
    );
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert!(!r[0].bhs.final_bit() && r[0].data.is_empty());
    let ttt = r[0].bhs.u32_at(20);
    assert_ne!(ttt, RESERVED_TAG);
    h.ok(text_bhs(3, ttt, 1, true, false), b"Targets=\0");
    match &h.events()[..] {
        [Event::SendTargets(SendTargetsScope::Session)] => {}
        e => panic!("{e:?}"),
    }
    h.c.send_targets_response(&[("iqn.t".into(), vec!["10.0.0.1:3260,1".into()])]);
    let r = h.recv();
    assert_eq!(
        r[0].key("X-com.example.a").as_deref(),
        Some("NotUnderstood")
    );
    assert_eq!(r[0].key("TargetName").as_deref(), Some("iqn.t"));
    assert!(r[0].bhs.final_bit());
    // A named target and a login-only key.
    h.ok(
        text_bhs(4, RESERVED_TAG, 1, true, false),
        b"SendTargets=iqn.other\0",
    );
    assert!(
        matches!(&h.events()[..], [Event::SendTargets(SendTargetsScope::Target(n))] if n == "iqn.other")
    );
    h.ok(
        text_bhs(5, RESERVED_TAG, 1, true, false),
        b"MaxBurstLength=512\0",
    );
    let r = h.recv();
    assert_eq!(
        r.last().unwrap().key("MaxBurstLength").as_deref(),
        Some("Reject")
    );
}

#[test]
fn normal_login_with_digests_and_read() {
    let keys = "HeaderDigest=CRC32C,None\0DataDigest=CRC32C,None\0MaxRecvDataSegmentLength=8192\0";
    let mut h = login_normal(TargetConfig::default(), keys);
    assert!(h.hd && h.dd);
    let sn = h.next_sn();
    h.ok(
        scsi_bhs(0x10, true, false, true, 1000, sn, 0x28, false),
        &[],
    );
    let cmd = command_event(h.events().remove(0));
    assert_eq!(cmd.itt, 0x10);
    assert!(cmd.read && !cmd.write);
    assert_eq!(cmd.cdb[0], 0x28);
    assert_eq!(cmd.lun, 0x0001_0000_0000_0000);
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    h.c.complete_command(
        0x10,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: Some(data.clone()),
            data_len: 1000,
            residual: Residual::None,
        },
    );
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::SCSI_DATA_IN);
    assert_eq!(r[0].data, data);
    assert_eq!(r[0].bhs.flags() & 0x81, 0x81, "F and S");
    // Buffer back to the pool after sending.
    assert_eq!(h.c.poll_free_buffer().map(|b| b.len()), Some(1000));

    // A corrupted header digest closes the connection.
    let mut bytes = frame(&nop_out_bhs(5, RESERVED_TAG, 2), &[], &[], true, true);
    bytes[BHS_LEN] ^= 1;
    assert!(matches!(
        h.input(&bytes),
        Err(ConnectionError::HeaderDigest)
    ));
    assert!(h.c.is_closed());
}

#[test]
fn data_digest_error_on_data_out_is_rejected() {
    let keys = "HeaderDigest=None\0DataDigest=CRC32C\0InitialR2T=Yes\0";
    let mut h = login_normal(TargetConfig::default(), keys);
    assert!(h.dd && !h.hd);
    let sn = h.next_sn();
    h.ok(scsi_bhs(1, false, true, true, 512, sn, 0x2a, false), &[]);
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::R2T);
    let ttt = r[0].bhs.u32_at(20);
    let mut bytes = frame(
        &data_out_bhs(1, ttt, 0, 0, true),
        &[],
        &[7u8; 512],
        false,
        true,
    );
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    assert_eq!(h.input(&bytes).unwrap(), n);
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::REJECT);
    assert_eq!(r[0].bhs.0[2], RejectReason::DATA_DIGEST_ERROR.0);
    assert_eq!(&r[0].data[..], &bytes[..BHS_LEN]);
    // At ERL 0 there is no recovery R2T: the task ends with "protocol service
    // CRC error" (§7.8 option b); the discarded PDU carried the F bit.
    assert_eq!(r.len(), 2);
    assert_aborted(&r[1], 1, 0x47, 0x05);
    assert!(h.events().is_empty());
    // A resend is too late: discarded.
    h.ok(data_out_bhs(1, ttt, 0, 0, true), &[7u8; 512]);
    assert!(h.events().is_empty() && h.recv().is_empty());
    assert!(!h.c.is_closed());
}

#[test]
fn write_gathering_immediate_unsolicited_and_r2t() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let p = h.c.session_params().clone();
    assert_eq!(p.max_burst_length, 16384);
    assert_eq!(p.first_burst_length, 8192);
    assert_eq!(p.initiator_max_recv_data_segment_length, 4096);
    assert!(!p.initial_r2t && p.immediate_data);
    let edtl = 8192 + 3 * 16384 + 100;
    let payload: Vec<u8> = (0..edtl).map(|i| (i % 251) as u8).collect();
    let sn = h.next_sn();
    // Immediate data 2048, unsolicited Data-Out up to 8192 follows (F=0).
    h.ok(
        scsi_bhs(0x42, false, true, false, edtl, sn, 0x2a, false),
        &payload[..2048],
    );
    assert!(
        h.recv().is_empty(),
        "no R2T while the unsolicited burst is open"
    );
    h.ok(
        data_out_bhs(0x42, RESERVED_TAG, 0, 2048, false),
        &payload[2048..6144],
    );
    h.ok(
        data_out_bhs(0x42, RESERVED_TAG, 1, 6144, true),
        &payload[6144..8192],
    );
    let r = h.recv();
    assert_eq!(r.len(), 2, "MaxOutstandingR2T=2");
    for (i, p) in r.iter().enumerate() {
        assert_eq!(p.op(), Opcode::R2T);
        assert_eq!(p.bhs.u32_at(36), i as u32, "R2TSN");
        assert_eq!(p.bhs.u32_at(40), 8192 + 16384 * i as u32);
        assert_eq!(p.bhs.u32_at(44), 16384);
    }
    let mut r2ts: Vec<(u32, u32, u32)> = r
        .iter()
        .map(|p| (p.bhs.u32_at(20), p.bhs.u32_at(40), p.bhs.u32_at(44)))
        .collect();
    let mut next_r2tsn = 2;
    while let Some((ttt, off, len)) = r2ts.first().copied() {
        r2ts.remove(0);
        // Send the burst in 4096-byte PDUs.
        let mut o = off;
        let mut dsn = 0;
        while o < off + len {
            let n = 4096.min(off + len - o);
            let fin = o + n == off + len;
            h.ok(
                data_out_bhs(0x42, ttt, dsn, o, fin),
                &payload[o as usize..(o + n) as usize],
            );
            o += n;
            dsn += 1;
        }
        for p in h.recv() {
            assert_eq!(p.op(), Opcode::R2T);
            assert_eq!(p.bhs.u32_at(36), next_r2tsn);
            next_r2tsn += 1;
            r2ts.push((p.bhs.u32_at(20), p.bhs.u32_at(40), p.bhs.u32_at(44)));
        }
    }
    assert_eq!(next_r2tsn, 4);
    let cmd = command_event(h.events().remove(0));
    assert_eq!(cmd.expected_len, edtl);
    assert_eq!(cmd.data.as_deref(), Some(&payload[..]));
    // Hand the buffer back with the status.
    h.c.complete_command(
        0x42,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: cmd.data,
            data_len: 0,
            residual: Residual::None,
        },
    );
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::SCSI_RESPONSE);
    assert_eq!(r[0].bhs.u32_at(36), 4, "ExpDataSN = R2Ts sent");
    assert_eq!(h.c.poll_free_buffer().map(|b| b.len()), Some(edtl as usize));
    assert_eq!(h.c.outstanding_tasks(), 0);
}

#[test]
fn write_with_all_immediate_data_is_delivered_at_once() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let sn = h.next_sn();
    h.ok(
        scsi_bhs(1, false, true, true, 512, sn, 0x2a, false),
        &[9u8; 512],
    );
    let c = command_event(h.events().remove(0));
    assert_eq!(c.data.unwrap(), vec![9u8; 512]);
    assert!(h.recv().is_empty());
}

/// Checks a SCSI Response carrying CHECK CONDITION, ABORTED COMMAND and the
/// given ASC/ASCQ (RFC 7143 §11.4.7.2), for `itt`.
fn assert_aborted(r: &Rx, itt: u32, asc: u8, ascq: u8) {
    assert_eq!(r.op(), Opcode::SCSI_RESPONSE, "{r:?}");
    assert_eq!(r.bhs.itt(), itt);
    assert_eq!(r.bhs.0[2], 0, "response: command completed at target");
    assert_eq!(r.bhs.0[3], 2, "CHECK CONDITION");
    assert_eq!(&r.data[..2], &[0, 18], "SenseLength");
    assert_eq!(r.data[2] & 0x7f, 0x70);
    assert_eq!(r.data[2 + 2], 0x0b, "ABORTED COMMAND");
    assert_eq!((r.data[2 + 12], r.data[2 + 13]), (asc, ascq));
}

/// After a failed write the connection carries on: the next command runs.
fn assert_still_serving(h: &mut Harness) {
    assert!(!h.c.is_closed());
    assert_eq!(h.c.outstanding_tasks(), 0, "failed task forgotten");
    let sn = h.next_sn();
    h.ok(scsi_bhs(0x99, true, false, true, 512, sn, 0x28, false), &[]);
    assert_eq!(command_event(h.events().remove(0)).itt, 0x99);
}

/// libiscsi's iSCSIDataSnInvalid with ImmediateData off and InitialR2T=No:
/// the unsolicited Data-Out PDUs of a WRITE carry a wrong DataSN. At ERL 0
/// that implies a lost PDU (§7.9), so the task ends with CHECK CONDITION
/// "protocol service CRC error" once the sequence is closed (§7.8 option b);
/// the connection stays up and nothing is written.
#[test]
fn unsolicited_data_sn_errors_fail_the_task_not_the_connection() {
    // (DataSN of each 512-byte PDU, write length)
    let cases: [(&[u32], u32); 4] = [
        (&[0, 0], 1024),    // repeated DataSN
        (&[27], 512),       // DataSN 27
        (&[u32::MAX], 512), // DataSN -1
        (&[1, 0], 1024),    // reversed
    ];
    for (sns, edtl) in cases {
        let mut h = login_normal(TargetConfig::default(), OP_KEYS);
        let sn = h.next_sn();
        h.ok(scsi_bhs(5, false, true, false, edtl, sn, 0x2a, false), &[]);
        assert!(h.recv().is_empty());
        for (i, &dsn) in sns.iter().enumerate() {
            let last = i + 1 == sns.len();
            h.ok(
                data_out_bhs(5, RESERVED_TAG, dsn, 512 * i as u32, last),
                &[0xaa; 512],
            );
            if !last {
                assert!(h.recv().is_empty(), "{sns:?}: status waits for the F bit");
            }
        }
        let r = h.recv();
        assert_eq!(r.len(), 1, "{sns:?}");
        assert_aborted(&r[0], 5, 0x47, 0x05);
        assert!(h.events().is_empty(), "{sns:?}: never delivered");
        assert_eq!(h.c.poll_free_buffer().map(|b| b.len()), Some(edtl as usize));
        assert_still_serving(&mut h);
    }
}

#[test]
fn solicited_data_sn_error_fails_after_the_sequence_and_stops_r2ts() {
    let keys = "HeaderDigest=None\0DataDigest=None\0InitialR2T=Yes\0ImmediateData=No\0MaxBurstLength=1024\0MaxOutstandingR2T=1\0";
    let mut h = login_normal(TargetConfig::default(), keys);
    let sn = h.next_sn();
    h.ok(scsi_bhs(6, false, true, true, 4096, sn, 0x2a, false), &[]);
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::R2T);
    let ttt = r[0].bhs.u32_at(20);
    // First sequence fine.
    h.ok(data_out_bhs(6, ttt, 0, 0, false), &[1u8; 512]);
    h.ok(data_out_bhs(6, ttt, 1, 512, true), &[1u8; 512]);
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::R2T);
    let ttt = r[0].bhs.u32_at(20);
    assert_eq!(r[0].bhs.u32_at(40), 1024);
    // Second sequence: DataSN 1 where 0 is expected.
    h.ok(data_out_bhs(6, ttt, 1, 1024, false), &[2u8; 512]);
    assert!(h.recv().is_empty(), "waits for the F bit of the open R2T");
    h.ok(data_out_bhs(6, ttt, 2, 1536, true), &[2u8; 512]);
    let r = h.recv();
    assert_eq!(r.len(), 1, "no further R2T, just the status: {r:?}");
    assert_aborted(&r[0], 6, 0x47, 0x05);
    assert_eq!(r[0].bhs.u32_at(36), 2, "ExpDataSN = R2Ts sent");
    assert!(h.events().is_empty());
    // A late Data-Out of the ended task is discarded silently.
    h.ok(data_out_bhs(6, ttt, 3, 2048, true), &[2u8; 512]);
    assert!(h.recv().is_empty());
    assert_still_serving(&mut h);
}

#[test]
fn data_out_offset_and_length_errors_fail_the_task() {
    // (TTT choice, DataSN, offset, length, F) of the bad PDU on a 2048-byte
    // write with an R2T for 0..2048 (InitialR2T=Yes, MaxBurstLength 2048).
    struct Case {
        offset: u32,
        len: usize,
        fin: bool,
        asc: (u8, u8),
    }
    let cases = [
        // A gap: offset 512 where 0 is expected.
        Case {
            offset: 512,
            len: 512,
            fin: true,
            asc: (0x0c, 0x0d),
        },
        // Beyond the R2T (and EDTL).
        Case {
            offset: 0,
            len: 4096,
            fin: true,
            asc: (0x0c, 0x0d),
        },
        // Offset near 2^32: no overflow, no copy.
        Case {
            offset: u32::MAX - 100,
            len: 512,
            fin: true,
            asc: (0x0c, 0x0d),
        },
        // F bit before the R2T's data is all there.
        Case {
            offset: 0,
            len: 512,
            fin: true,
            asc: (0x0c, 0x0d),
        },
    ];
    let keys = "HeaderDigest=None\0DataDigest=None\0InitialR2T=Yes\0ImmediateData=No\0MaxBurstLength=2048\0MaxRecvDataSegmentLength=8192\0";
    let cfg = TargetConfig {
        max_recv_data_segment_length: 8192,
        ..Default::default()
    };
    for c in cases {
        let mut h = login_normal(cfg.clone(), keys);
        let sn = h.next_sn();
        h.ok(scsi_bhs(7, false, true, true, 2048, sn, 0x2a, false), &[]);
        let ttt = h.recv()[0].bhs.u32_at(20);
        h.ok(data_out_bhs(7, ttt, 0, c.offset, c.fin), &vec![9u8; c.len]);
        let r = h.recv();
        assert_eq!(r.len(), 1, "offset {} len {}", c.offset, c.len);
        assert_aborted(&r[0], 7, c.asc.0, c.asc.1);
        assert!(h.events().is_empty());
        let b = h.c.poll_free_buffer().unwrap();
        assert!(
            b.iter().all(|&x| x == 0),
            "nothing stored for a failed task"
        );
        assert_still_serving(&mut h);
    }
}

#[test]
fn unknown_ttt_and_unexpected_unsolicited_data_fail_the_task() {
    let keys = "HeaderDigest=None\0DataDigest=None\0InitialR2T=Yes\0ImmediateData=No\0";
    // A TTT that names no R2T: the task fails once its R2T is closed.
    let mut h = login_normal(TargetConfig::default(), keys);
    let sn = h.next_sn();
    h.ok(scsi_bhs(8, false, true, true, 512, sn, 0x2a, false), &[]);
    let ttt = h.recv()[0].bhs.u32_at(20);
    h.ok(data_out_bhs(8, ttt ^ 0x5555, 0, 0, true), &[1u8; 512]);
    assert!(h.recv().is_empty(), "the R2T is still open");
    h.ok(data_out_bhs(8, ttt, 0, 0, true), &[1u8; 512]);
    let r = h.recv();
    assert_aborted(&r[0], 8, 0x4b, 0x01);
    assert!(h.events().is_empty());
    assert_still_serving(&mut h);

    // Unsolicited data under InitialR2T=Yes.
    let mut h = login_normal(TargetConfig::default(), keys);
    let sn = h.next_sn();
    h.ok(scsi_bhs(9, false, true, true, 512, sn, 0x2a, false), &[]);
    let ttt = h.recv()[0].bhs.u32_at(20);
    h.ok(data_out_bhs(9, RESERVED_TAG, 0, 0, true), &[1u8; 512]);
    assert!(h.recv().is_empty());
    h.ok(data_out_bhs(9, ttt, 0, 0, true), &[1u8; 512]);
    let r = h.recv();
    assert_aborted(&r[0], 9, 0x0c, 0x0c);
    assert_still_serving(&mut h);
}

#[test]
fn unbufferable_write_is_delivered_without_data_and_data_out_discarded() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    h.alloc_ok = false;
    let sn = h.next_sn();
    h.ok(
        scsi_bhs(1, false, true, false, 4096, sn, 0x2a, false),
        &[1u8; 1024],
    );
    let c = command_event(h.events().remove(0));
    assert!(c.write && c.data.is_none());
    h.ok(data_out_bhs(1, RESERVED_TAG, 0, 1024, true), &[1u8; 3072]);
    assert!(h.recv().is_empty());
    // Too large for max_data_transfer: alloc is not even asked.
    let mut h = login_normal(
        TargetConfig {
            max_data_transfer: 4096,
            ..Default::default()
        },
        OP_KEYS,
    );
    let sn = h.next_sn();
    h.ok(scsi_bhs(1, false, true, true, 8192, sn, 0x2a, false), &[]);
    assert_eq!(h.max_alloc, 0);
    let c = command_event(h.events().remove(0));
    assert!(c.data.is_none());
    h.c.complete_command(
        1,
        CommandResponse {
            status: 2,
            sense: vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x55, 0, 0, 0, 0, 0],
            data: None,
            data_len: 0,
            residual: Residual::None,
        },
    );
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::SCSI_RESPONSE);
    assert_eq!(r[0].bhs.0[3], 2);
    assert_eq!(&r[0].data[..2], &[0, 18]);
}

#[test]
fn data_in_splitting_and_phase_collapse() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    // MaxRecvDataSegmentLength 4096, MaxBurstLength 16384.
    let len = 40000usize;
    let sn = h.next_sn();
    h.ok(scsi_bhs(2, true, false, true, 65536, sn, 0x28, false), &[]);
    let _ = h.events();
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
    h.c.complete_command(
        2,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: Some(data.clone()),
            data_len: len,
            residual: Residual::Underflow(65536 - len as u32),
        },
    );
    let r = h.recv();
    assert_eq!(r.len(), 10); // 4+4 per burst of 16384, then 7232 -> 2
    let mut got = Vec::new();
    for (i, p) in r.iter().enumerate() {
        assert_eq!(p.op(), Opcode::SCSI_DATA_IN);
        assert_eq!(p.bhs.u32_at(36), i as u32, "DataSN");
        assert_eq!(p.bhs.u32_at(40) as usize, got.len(), "BufferOffset");
        assert!(p.data.len() <= 4096);
        got.extend_from_slice(&p.data);
        let end_of_burst = got.len() % 16384 == 0 || got.len() == len;
        assert_eq!(p.bhs.final_bit(), end_of_burst, "F at burst ends, pdu {i}");
        let last = i == r.len() - 1;
        assert_eq!(p.bhs.flags() & 0x01 != 0, last, "S only on the last");
        if last {
            assert_eq!(p.bhs.flags() & 0x02, 0x02, "U");
            assert_eq!(p.bhs.u32_at(44), 65536 - len as u32);
        }
    }
    assert_eq!(got, data[..len]);

    // With sense data the status goes in a separate SCSI Response.
    let sn = h.next_sn();
    h.ok(scsi_bhs(3, true, false, true, 512, sn, 0x28, false), &[]);
    let _ = h.events();
    h.c.complete_command(
        3,
        CommandResponse {
            status: 2,
            sense: vec![0x70; 18],
            data: Some(vec![1u8; 512]),
            data_len: 512,
            residual: Residual::None,
        },
    );
    let r = h.recv();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].op(), Opcode::SCSI_DATA_IN);
    assert_eq!(r[0].bhs.flags() & 0x01, 0);
    assert_eq!(r[1].op(), Opcode::SCSI_RESPONSE);
    assert_eq!(r[1].bhs.u32_at(36), 1, "ExpDataSN");
    assert_eq!(r[1].data.len(), 20);
    // StatSN increases by one per status.
    let s_first = r[1].bhs.u32_at(24);
    let sn = h.next_sn();
    h.ok(nop_out_bhs(9, RESERVED_TAG, sn), &[]);
    assert_eq!(h.recv()[0].bhs.u32_at(24), s_first + 1);
}

#[test]
fn partial_writes_resume_correctly() {
    struct Dribble(Vec<u8>);
    impl Write for Dribble {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(7);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let sn = h.next_sn();
    h.ok(scsi_bhs(2, true, false, true, 10000, sn, 0x28, false), &[]);
    let _ = h.events();
    let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
    h.c.complete_command(
        2,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: Some(data.clone()),
            data_len: 10000,
            residual: Residual::None,
        },
    );
    let mut w = Dribble(Vec::new());
    while h.c.wants_write() {
        h.c.write_to(&mut w).unwrap();
    }
    let r = parse_target_pdus(&w.0, false, false);
    let got: Vec<u8> = r.iter().flat_map(|p| p.data.clone()).collect();
    assert_eq!(got, data);
}

#[test]
fn cmd_sn_window_drop_and_ordering() {
    let cfg = TargetConfig {
        queue_depth: 4,
        ..Default::default()
    };
    let mut h = login_normal(cfg, OP_KEYS);
    // ExpCmdSN = 1, MaxCmdSN = 4.
    h.ok(scsi_bhs(10, true, false, true, 0, 5, 0, false), &[]);
    assert!(h.events().is_empty(), "CmdSN 5 outside the window: dropped");
    assert!(h.recv().is_empty());
    assert!(!h.c.is_closed());
    // CmdSN 3 and 2 arrive before 1: held until 1 arrives.
    h.ok(scsi_bhs(13, true, false, true, 0, 3, 0, false), &[]);
    h.ok(scsi_bhs(12, true, false, true, 0, 2, 0, false), &[]);
    assert!(h.events().is_empty());
    // A duplicate of 3 is dropped.
    h.ok(scsi_bhs(99, true, false, true, 0, 3, 0, false), &[]);
    h.ok(scsi_bhs(11, true, false, true, 0, 1, 0, false), &[]);
    let itts: Vec<u32> = h
        .events()
        .into_iter()
        .map(|e| command_event(e).itt)
        .collect();
    assert_eq!(itts, vec![11, 12, 13]);
    // Immediate command: not subject to ordering, CmdSN not advanced.
    h.ok(scsi_bhs(20, true, false, true, 0, 4, 0, true), &[]);
    assert_eq!(command_event(h.events().remove(0)).itt, 20);
    // Four outstanding on a queue depth of 4: the window stays at MaxCmdSN 4.
    for itt in [11, 12, 13, 20] {
        h.c.complete_command(
            itt,
            CommandResponse {
                status: 0,
                sense: vec![],
                data: None,
                data_len: 0,
                residual: Residual::None,
            },
        );
    }
    let r = h.recv();
    assert_eq!(r.len(), 4);
    let last = r.last().unwrap();
    assert_eq!(last.bhs.u32_at(28), 4, "ExpCmdSN");
    assert!(sn_lt(3, last.bhs.u32_at(32)) || last.bhs.u32_at(32) == 3);
    assert_eq!(
        last.bhs.u32_at(32),
        7,
        "MaxCmdSN = ExpCmdSN + depth - 1 once idle"
    );
}

#[test]
fn closed_window_drops_commands() {
    let cfg = TargetConfig {
        queue_depth: 2,
        ..Default::default()
    };
    let mut h = login_normal(cfg, OP_KEYS);
    // ExpCmdSN 1, MaxCmdSN 2: two commands fill the window.
    h.ok(scsi_bhs(1, true, false, true, 0, 1, 0, false), &[]);
    h.ok(scsi_bhs(2, true, false, true, 0, 2, 0, false), &[]);
    assert_eq!(h.events().len(), 2);
    // The NOP-In answer shows the closed window: MaxCmdSN = ExpCmdSN - 1.
    h.ok(nop_out_bhs(7, RESERVED_TAG, 3), &[]);
    let r = h.recv();
    assert_eq!(r[0].bhs.u32_at(28), 3);
    assert_eq!(r[0].bhs.u32_at(32), 2);
    h.ok(scsi_bhs(3, true, false, true, 0, 3, 0, false), &[]);
    assert!(h.events().is_empty(), "window closed");
    h.c.complete_command(
        1,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: None,
            data_len: 0,
            residual: Residual::None,
        },
    );
    let r = h.recv();
    assert_eq!(r[0].bhs.u32_at(32), 3, "window reopens by one");
    h.ok(scsi_bhs(3, true, false, true, 0, 3, 0, false), &[]);
    assert_eq!(command_event(h.events().remove(0)).itt, 3);
}

#[test]
fn nop_echo_and_idle_ping_timeout() {
    let cfg = TargetConfig {
        nop_interval: Some(Duration::from_secs(5)),
        nop_count: 2,
        ..Default::default()
    };
    let mut h = login_normal(cfg, OP_KEYS);
    h.ok(nop_out_bhs(0x77, RESERVED_TAG, 1), b"ping!");
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::NOP_IN);
    assert_eq!(r[0].bhs.itt(), 0x77);
    assert_eq!(r[0].bhs.u32_at(20), RESERVED_TAG);
    assert_eq!(r[0].data, b"ping!");

    let start = h.now;
    assert_eq!(h.c.poll_timeout(), Some(start + Duration::from_secs(5)));
    h.c.handle_timeout(start + Duration::from_secs(4)).unwrap();
    assert!(h.recv().is_empty());
    h.c.handle_timeout(start + Duration::from_secs(5)).unwrap();
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::NOP_IN);
    assert_eq!(r[0].bhs.itt(), RESERVED_TAG);
    let ttt = r[0].bhs.u32_at(20);
    assert_ne!(ttt, RESERVED_TAG);
    // The answer resets the ping state.
    h.now = start + Duration::from_secs(6);
    h.ok(nop_out_bhs(RESERVED_TAG, ttt, 1), &[]);
    assert_eq!(h.c.poll_timeout(), Some(start + Duration::from_secs(11)));
    // Silence: ping at 11 and 16, give up at 21.
    h.c.handle_timeout(start + Duration::from_secs(11)).unwrap();
    h.c.handle_timeout(start + Duration::from_secs(16)).unwrap();
    assert_eq!(h.recv().len(), 2);
    let e =
        h.c.handle_timeout(start + Duration::from_secs(21))
            .unwrap_err();
    assert!(matches!(e, ConnectionError::NopTimeout(2)));
    assert!(h.c.is_closed());
}

#[test]
fn the_target_sets_its_own_nop_policy() {
    let cfg = TargetConfig {
        nop_interval: None,
        ..Default::default()
    };
    let mut h = login_normal(cfg, OP_KEYS);
    assert_eq!(h.c.poll_timeout(), None, "no pings by default here");
    h.c.set_nop(Some(Duration::from_secs(2)), 1);
    let start = h.now;
    assert_eq!(h.c.poll_timeout(), Some(start + Duration::from_secs(2)));
    h.c.handle_timeout(start + Duration::from_secs(2)).unwrap();
    assert_eq!(h.recv()[0].op(), Opcode::NOP_IN);
    let e =
        h.c.handle_timeout(start + Duration::from_secs(4))
            .unwrap_err();
    assert!(matches!(e, ConnectionError::NopTimeout(1)));
}

#[test]
fn login_timeout() {
    let mut h = Harness::new(TargetConfig::default());
    let start = h.now;
    assert_eq!(h.c.poll_timeout(), Some(start + Duration::from_secs(15)));
    h.c.handle_timeout(start + Duration::from_secs(14)).unwrap();
    let e =
        h.c.handle_timeout(start + Duration::from_secs(15))
            .unwrap_err();
    assert!(matches!(e, ConnectionError::LoginTimeout(_)));
    assert!(h.c.is_closed());
}

#[test]
fn logout_closes_after_flush() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    h.ok(logout_bhs(0x55, 0, 1), &[]);
    assert!(matches!(h.events()[..], [Event::Logout { reason: 0 }]));
    assert!(!h.c.is_closed(), "response not flushed yet");
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::LOGOUT_RESPONSE);
    assert_eq!(r[0].bhs.itt(), 0x55);
    assert_eq!(r[0].bhs.0[2], 0);
    assert_eq!(r[0].bhs.u16_at(40), 2, "Time2Wait");
    assert!(h.c.is_closed());
}

#[test]
fn unknown_opcode_and_snack_are_rejected() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let mut b = Bhs::default();
    b.set_opcode(Opcode(0x1c), false);
    b.set_u32(16, 3);
    h.ok(b, &[]);
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::REJECT);
    assert_eq!(r[0].bhs.0[2], RejectReason::COMMAND_NOT_SUPPORTED.0);
    assert_eq!(r[0].bhs.itt(), RESERVED_TAG);
    assert_eq!(Bhs::from_prefix(&r[0].data).unwrap().opcode(), Opcode(0x1c));
    let mut s = Bhs::default();
    s.set_opcode(Opcode::SNACK_REQUEST, false);
    h.ok(s, &[]);
    assert_eq!(h.recv()[0].op(), Opcode::REJECT);
    assert!(!h.c.is_closed());
}

#[test]
fn oversize_data_segment_after_login() {
    let cfg = TargetConfig {
        max_recv_data_segment_length: 8192,
        ..Default::default()
    };
    let mut h = login_normal(cfg, OP_KEYS);
    assert_eq!(h.c.max_pdu_len(), 48 + 1020 + 4 + 8192 + 4);
    let mut b = nop_out_bhs(1, RESERVED_TAG, 1);
    b.set_data_segment_len(8196);
    let e = h.input(&b.0).unwrap_err();
    assert!(matches!(
        e,
        ConnectionError::DataSegmentTooLong {
            len: 8196,
            limit: 8192
        }
    ));
    assert_eq!(h.recv()[0].op(), Opcode::REJECT);
}

#[test]
fn extended_cdb_and_too_long_cdb() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let mut ahs = vec![0u8, 17, 1, 0];
    ahs.extend(0..16u8);
    let sn = h.next_sn();
    h.send(
        scsi_bhs(1, true, false, true, 0, sn, 0x7f, false),
        &ahs,
        &[],
    )
    .unwrap();
    let c = command_event(h.events().remove(0));
    assert_eq!(c.cdb_len, 32);
    assert_eq!(c.ext_cdb[15], 15);
    // 40-byte CDB: 24 extended bytes -> Reject, CmdSN consumed.
    let mut ahs = vec![0u8, 25, 1, 0];
    ahs.extend(0..24u8);
    ahs.extend([0u8; 0]);
    assert_eq!(ahs.len(), 28);
    let sn = h.next_sn();
    h.send(
        scsi_bhs(2, true, false, true, 0, sn, 0x7f, false),
        &ahs,
        &[],
    )
    .unwrap();
    assert!(h.events().is_empty());
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::REJECT);
    assert_eq!(
        r[0].bhs.u32_at(28),
        3,
        "ExpCmdSN advanced past the rejected command"
    );
}

#[test]
fn task_management_and_abort() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let sn = h.next_sn();
    h.ok(scsi_bhs(1, false, true, true, 65536, sn, 0x2a, false), &[]);
    assert!(!h.recv().is_empty());
    let mut t = Bhs::default();
    t.set_opcode(Opcode::TASK_MGMT_REQUEST, true);
    t.set_flags(0x80 | 1);
    t.set_u32(16, 50);
    t.set_u32(20, 1);
    t.set_u32(24, 2);
    h.ok(t, &[]);
    match &h.events()[..] {
        [Event::TaskManagement(tm)] => {
            assert_eq!(tm.function, 1);
            assert_eq!(tm.referenced_itt, 1);
        }
        e => panic!("{e:?}"),
    }
    assert!(h.c.abort_task(1));
    assert_eq!(h.c.poll_free_buffer().map(|b| b.len()), Some(65536));
    // A second ABORT TASK finds nothing: "task does not exist" (§11.6.1).
    assert!(!h.c.abort_task(1));
    h.c.task_management_response(50, 0);
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::TASK_MGMT_RESPONSE);
    assert_eq!(r[0].bhs.itt(), 50);
    // Late Data-Out for the aborted task is discarded; late completion ignored.
    h.ok(data_out_bhs(1, 1, 0, 0, true), &[0u8; 512]);
    h.c.complete_command(
        1,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: Some(vec![0u8; 4]),
            data_len: 0,
            residual: Residual::None,
        },
    );
    assert!(h.recv().is_empty());
    assert_eq!(h.c.poll_free_buffer().map(|b| b.len()), Some(4));
}

#[test]
fn abort_tasks_forgets_a_luns_outstanding_commands() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    // Two writes to LUN 1 waiting for their data, one to LUN 2.
    for itt in [1, 2] {
        let sn = h.next_sn();
        h.ok(scsi_bhs(itt, false, true, true, 8192, sn, 0x2a, false), &[]);
    }
    let sn = h.next_sn();
    let mut other = scsi_bhs(3, false, true, true, 8192, sn, 0x2a, false);
    other.set_u64(8, 0x0002_0000_0000_0000);
    h.ok(other, &[]);
    let _ = h.recv();
    assert_eq!(h.c.abort_tasks(Some(0x0001_0000_0000_0000)), 2);
    let mut freed = 0;
    while h.c.poll_free_buffer().is_some() {
        freed += 1;
    }
    assert_eq!(freed, 2, "both buffers of LUN 1's writes come back");
    assert!(!h.c.abort_task(1));
    // LUN 2's write is still there; a target reset takes it too.
    assert_eq!(h.c.abort_tasks(None), 1);
}

#[test]
fn login_rejected_by_target() {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, true, false, 1, 1),
        b"InitiatorName=iqn.i\0TargetName=iqn.nope\0",
    );
    assert!(matches!(h.events()[..], [Event::Login(_)]));
    h.c.reject_login(LoginStatus::TARGET_NOT_FOUND);
    assert!(!h.c.is_closed());
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::LOGIN_RESPONSE);
    assert_eq!(r[0].bhs.u16_at(36), 0x0203);
    assert!(h.c.is_closed());
}

#[test]
fn login_failure_missing_initiator_name() {
    let mut h = Harness::new(TargetConfig::default());
    let e = h.send(
        login_bhs(1, 3, true, false, 1, 1),
        &[],
        b"TargetName=iqn.t\0",
    );
    assert!(matches!(
        e,
        Err(ConnectionError::LoginFailed(LoginStatus::MISSING_PARAMETER))
    ));
    let r = h.recv();
    assert_eq!(r[0].bhs.u16_at(36), 0x0207);
    assert!(h.c.is_closed());
}

#[test]
fn non_login_pdu_during_login_fails() {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, false, false, 1, 1),
        b"InitiatorName=iqn.i\0SessionType=Discovery\0",
    );
    h.c.accept_login(accept());
    let _ = h.recv();
    let e = h.send(nop_out_bhs(1, RESERVED_TAG, 1), &[], &[]);
    assert!(matches!(e, Err(ConnectionError::InvalidDuringLogin(_))));
    assert_eq!(h.recv()[0].bhs.u16_at(36), 0x020b);
}

#[test]
fn login_continuation_and_security_stage_stays() {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(login_bhs(0, 1, false, true, 1, 1), b"InitiatorName=iqn.");
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert!(r[0].data.is_empty());
    assert_eq!(r[0].bhs.flags() & 0xc0, 0);
    h.ok(
        login_bhs(0, 1, false, false, 1, 1),
        b"i\0SessionType=Discovery\0AuthMethod=None\0",
    );
    assert!(matches!(h.events()[..], [Event::Login(_)]));
    h.c.accept_login(accept());
    let r = h.recv();
    assert_eq!(r[0].bhs.flags() & 0x80, 0, "no transit requested");
    h.ok(login_bhs(0, 3, true, false, 1, 1), b"");
    let r = h.recv();
    assert_eq!(r[0].bhs.flags(), 0x83);
    assert!(r[0].key("MaxRecvDataSegmentLength").is_some());
    assert!(h.c.is_full_feature());
    let _ = Stage::FULL_FEATURE_PHASE;
}

fn arbitrary_input_is_safe(mut h: Harness, data: &[u8], chunk: usize) {
    let cap = h.c.config.max_data_transfer as usize;
    let mut buf = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        match h.input(&buf) {
            Ok(n) => {
                buf.drain(..n);
            }
            Err(_) => break,
        }
        assert!(buf.len() <= h.c.max_pdu_len() + chunk);
        let _ = h.raw_output();
        let _ = h.events();
    }
    assert!(h.max_alloc <= cap);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_before_login(data in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..600) {
        arbitrary_input_is_safe(Harness::new(TargetConfig::default()), &data, chunk);
    }

    #[test]
    fn arbitrary_login_text(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut h = Harness::new(TargetConfig::default());
        let _ = h.send(login_bhs(0, 1, true, false, 1, 1), &[], &data);
        let _ = h.raw_output();
        let _ = h.events();
        h.c.accept_login(accept());
        let _ = h.raw_output();
    }

    #[test]
    fn arbitrary_bytes_after_login(
        data in proptest::collection::vec(any::<u8>(), 0..8192),
        chunk in 1usize..2000,
        opcode in prop_oneof![Just(0u8), Just(1), Just(2), Just(4), Just(5), Just(6), Just(0x10), any::<u8>()],
    ) {
        let h = login_normal(TargetConfig { max_data_transfer: 1 << 20, ..Default::default() }, OP_KEYS);
        // Start with a plausible header so the state machine gets exercised.
        let mut bytes = data.clone();
        if bytes.len() >= 48 {
            bytes[0] = opcode & 0x7f;
            bytes[4] %= 8;
            bytes[5] = 0;
            bytes[6] %= 0x20;
        }
        arbitrary_input_is_safe(h, &bytes, chunk);
    }

    #[test]
    fn structured_commands_never_panic(
        cmds in proptest::collection::vec(
            (any::<u32>(), any::<bool>(), any::<bool>(), any::<bool>(), 0u32..200_000, 0u32..12, any::<bool>(), 0usize..9000),
            1..20),
    ) {
        let mut h = login_normal(TargetConfig::default(), OP_KEYS);
        for (itt, r, w, f, edtl, sn, imm, dlen) in cmds {
            let data = vec![0u8; dlen.min(4096)];
            let _ = h.send(scsi_bhs(itt % 8, r, w, f, edtl, sn, 0x2a, imm), &[], &data);
            let _ = h.send(data_out_bhs(itt % 8, RESERVED_TAG, 0, dlen as u32, f), &[], &data);
            let _ = h.raw_output();
            for e in h.events() {
                if let Event::Command(c) = e {
                    h.c.complete_command(c.itt, CommandResponse {
                        status: 0, sense: vec![], data: c.data.or(Some(vec![0u8; 100])), data_len: 100, residual: Residual::None,
                    });
                }
            }
            let _ = h.raw_output();
            prop_assert!(h.max_alloc <= h.c.config.max_data_transfer as usize);
        }
    }
}

/// Clears the I bit: the request is ordered by its CmdSN (§4.2.2.1).
fn non_immediate(mut b: Bhs) -> Bhs {
    b.0[0] &= !0x40;
    b
}

fn good_status() -> CommandResponse<Vec<u8>> {
    CommandResponse {
        status: 0,
        sense: vec![],
        data: None,
        data_len: 0,
        residual: Residual::None,
    }
}

/// libiscsi's iSCSICmdSnTooHigh / iSCSICmdSnTooLow: a TEST UNIT READY with
/// CmdSN = MaxCmdSN + 1, or ExpCmdSN - 1, is silently ignored (§4.2.2.1),
/// the connection stays up, and the same command with CmdSN = ExpCmdSN runs.
#[test]
fn cmd_sn_outside_the_window_is_ignored_and_the_session_goes_on() {
    let cfg = TargetConfig {
        queue_depth: 8,
        ..Default::default()
    };
    let mut h = login_normal(cfg, OP_KEYS);
    // Move ExpCmdSN on so that "too low" is a real earlier CmdSN.
    for itt in 1..=3 {
        let sn = h.next_sn();
        h.ok(scsi_bhs(itt, false, false, true, 0, sn, 0x00, false), &[]);
        let _ = h.events();
        h.c.complete_command(itt, good_status());
    }
    let r = h.recv();
    let last = r.last().unwrap();
    let (exp, max) = (last.bhs.u32_at(28), last.bhs.u32_at(32));
    assert_eq!(exp, 4);
    for bad in [
        max.wrapping_add(1),
        exp.wrapping_sub(1),
        exp.wrapping_add(0x8000_0000),
    ] {
        h.ok(scsi_bhs(10, false, false, true, 0, bad, 0x00, false), &[]);
        assert!(h.events().is_empty(), "CmdSN {bad} ignored");
        assert!(h.recv().is_empty(), "no reply to CmdSN {bad}");
        assert!(!h.c.is_closed());
        // Non-SCSI requests outside the window are ignored the same way.
        h.ok(non_immediate(nop_out_bhs(11, RESERVED_TAG, bad)), b"x");
        assert!(h.recv().is_empty());
    }
    h.ok(scsi_bhs(10, false, false, true, 0, exp, 0x00, false), &[]);
    assert_eq!(command_event(h.events().remove(0)).itt, 10);
    h.c.complete_command(10, good_status());
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::SCSI_RESPONSE);
    assert_eq!(r[0].bhs.u32_at(28), exp + 1, "ExpCmdSN advanced");
    // An immediate command carries the current CmdSN and does not consume it.
    h.ok(
        scsi_bhs(12, false, false, true, 0, exp + 1, 0x00, true),
        &[],
    );
    assert_eq!(command_event(h.events().remove(0)).itt, 12);
    h.c.complete_command(12, good_status());
    assert_eq!(h.recv()[0].bhs.u32_at(28), exp + 1);
}

/// Non-immediate NOP-Out, Text and Logout requests ahead of ExpCmdSN wait,
/// like commands, until the gap before them is filled (§4.2.2.1).
#[test]
fn non_immediate_requests_run_in_cmd_sn_order() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    // ExpCmdSN = 1. A ping with CmdSN 2 and a SendTargets with CmdSN 3.
    h.ok(non_immediate(nop_out_bhs(0x20, RESERVED_TAG, 2)), b"ping");
    h.ok(
        non_immediate(text_bhs(0x21, RESERVED_TAG, 3, true, false)),
        b"SendTargets=All\0",
    );
    // A duplicate of CmdSN 2 is dropped.
    h.ok(non_immediate(nop_out_bhs(0x22, RESERVED_TAG, 2)), b"dup");
    assert!(h.recv().is_empty() && h.events().is_empty());
    // CmdSN 1 fills the gap: the command, then the ping, then the text.
    h.ok(scsi_bhs(0x1f, true, false, true, 512, 1, 0x28, false), &[]);
    let ev = h.events();
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert!(matches!(&ev[0], Event::Command(c) if c.itt == 0x1f));
    assert!(matches!(&ev[1], Event::SendTargets(SendTargetsScope::All)));
    h.c.send_targets_response(&[("iqn.t".into(), vec!["127.0.0.1:3260,1".into()])]);
    let r = h.recv();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].op(), Opcode::NOP_IN);
    assert_eq!(r[0].bhs.itt(), 0x20);
    assert_eq!(r[0].data, b"ping");
    assert_eq!(r[1].op(), Opcode::TEXT_RESPONSE);
    assert_eq!(r[1].bhs.u32_at(28), 4, "ExpCmdSN past all three");
    // A Logout ahead of ExpCmdSN waits too.
    h.ok(non_immediate(logout_bhs(0x30, 0, 5)), &[]);
    assert!(h.recv().is_empty() && !h.c.is_closed());
    h.ok(non_immediate(nop_out_bhs(0x31, RESERVED_TAG, 4)), &[]);
    let r = h.recv();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].op(), Opcode::NOP_IN);
    assert_eq!(r[1].op(), Opcode::LOGOUT_RESPONSE);
    assert!(h.c.is_closed());
}

/// libiscsi's iSCSINop: NOP-Out pings with and without data are answered
/// with a NOP-In echoing the data (§11.18, §11.19), StatSN advancing.
#[test]
fn nop_out_pings_are_echoed() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    h.ok(nop_out_bhs(0x40, RESERVED_TAG, 1), b"nopping\0");
    h.ok(nop_out_bhs(0x41, RESERVED_TAG, 1), &[]);
    // Non-immediate: consumes CmdSN 1.
    h.ok(non_immediate(nop_out_bhs(0x42, RESERVED_TAG, 1)), b"abcde");
    let r = h.recv();
    assert_eq!(r.len(), 3);
    for p in &r {
        assert_eq!(p.op(), Opcode::NOP_IN);
        assert_eq!(p.bhs.u32_at(20), RESERVED_TAG, "TTT reserved in an answer");
        assert!(p.bhs.final_bit());
    }
    assert_eq!((r[0].bhs.itt(), &r[0].data[..]), (0x40, &b"nopping\0"[..]));
    assert_eq!((r[1].bhs.itt(), r[1].data.len()), (0x41, 0));
    assert_eq!((r[2].bhs.itt(), &r[2].data[..]), (0x42, &b"abcde"[..]));
    assert_eq!(r[1].bhs.u32_at(24), r[0].bhs.u32_at(24) + 1, "StatSN");
    assert_eq!(r[1].bhs.u32_at(28), 1, "immediate pings leave ExpCmdSN");
    assert_eq!(r[2].bhs.u32_at(28), 2);
}

/// SendTargets=All inside a normal session (libiscsi's iSCSISendTargets):
/// answered with one final Text Response, TTT reserved (§11.11).
#[test]
fn send_targets_in_a_normal_session() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let sn = h.cmd_sn;
    h.ok(
        text_bhs(0x50, RESERVED_TAG, sn, true, false),
        b"SendTargets=All\0",
    );
    match &h.events()[..] {
        [Event::SendTargets(SendTargetsScope::All)] => {}
        e => panic!("{e:?}"),
    }
    h.c.send_targets_response(&[
        (
            "iqn.2026-11.org.rtgt:a".into(),
            vec!["127.0.0.1:3290,1".into(), "127.0.0.2:3290,1".into()],
        ),
        (
            "iqn.2026-11.org.rtgt:b".into(),
            vec!["127.0.0.1:3290,1".into()],
        ),
    ]);
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::TEXT_RESPONSE);
    assert_eq!(r[0].bhs.itt(), 0x50);
    assert_eq!(r[0].bhs.flags(), 0x80, "F, not C");
    assert_eq!(r[0].bhs.u32_at(20), RESERVED_TAG);
    let kv = r[0].text();
    assert_eq!(kv.len(), 5);
    assert_eq!(
        kv[0],
        ("TargetName".into(), "iqn.2026-11.org.rtgt:a".into())
    );
    assert_eq!(kv[2], ("TargetAddress".into(), "127.0.0.2:3290,1".into()));
    // The session goes on.
    let sn = h.next_sn();
    h.ok(scsi_bhs(0x51, true, false, true, 512, sn, 0x28, false), &[]);
    assert_eq!(command_event(h.events().remove(0)).itt, 0x51);
}

/// Logout with I/O outstanding (§11.14): pending commands are terminated,
/// every buffer comes back, the Logout Response goes out at once and a late
/// completion sends nothing.
#[test]
fn logout_with_outstanding_io_terminates_tasks_and_returns_buffers() {
    let keys = "HeaderDigest=None\0DataDigest=None\0InitialR2T=Yes\0ImmediateData=No\0";
    let mut h = login_normal(TargetConfig::default(), keys);
    // A write waiting for its R2T data (buffer held by the connection).
    let sn = h.next_sn();
    h.ok(scsi_bhs(1, false, true, true, 4096, sn, 0x2a, false), &[]);
    let ttt = h.recv()[0].bhs.u32_at(20);
    h.ok(data_out_bhs(1, ttt, 0, 0, false), &[1u8; 1024]);
    // A read delivered to the target and still running.
    let sn = h.next_sn();
    h.ok(scsi_bhs(2, true, false, true, 8192, sn, 0x28, false), &[]);
    assert_eq!(command_event(h.events().remove(0)).itt, 2);
    // A write waiting for an earlier CmdSN (3 never arrives).
    h.ok(scsi_bhs(3, false, true, true, 512, 4, 0x2a, false), &[]);
    assert_eq!(h.recv()[0].op(), Opcode::R2T);
    assert_eq!(h.c.outstanding_tasks(), 3);

    h.ok(logout_bhs(0x60, 0, h.cmd_sn), &[]);
    assert!(matches!(h.events()[..], [Event::Logout { reason: 0 }]));
    assert_eq!(h.c.outstanding_tasks(), 0);
    let mut freed: Vec<usize> = std::iter::from_fn(|| h.c.poll_free_buffer())
        .map(|b| b.len())
        .collect();
    freed.sort();
    assert_eq!(freed, vec![512, 4096], "both write buffers back");
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::LOGOUT_RESPONSE);
    assert_eq!(r[0].bhs.0[2], 0);
    assert!(h.c.is_closed());
    // The running read completes later: its buffer comes back, nothing is sent.
    h.c.complete_command(
        2,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: Some(vec![5u8; 8192]),
            data_len: 8192,
            residual: Residual::None,
        },
    );
    assert!(!h.c.wants_write());
    assert_eq!(h.c.poll_free_buffer().map(|b| b.len()), Some(8192));
    // Data-Out arriving after the Logout is ignored.
    assert!(h
        .input(&frame(
            &data_out_bhs(1, ttt, 1, 1024, true),
            &[],
            &[0u8; 512],
            false,
            false
        ))
        .is_ok());
    assert!(h.c.poll_free_buffer().is_none());
}

/// libiscsi's iSCSISendTargets.Invalid: a key that is not understood gets
/// NotUnderstood (§6.2); a SendTargets value that is not All, nothing or an
/// iSCSI name ("Alle", "A") gets the request rejected, with no effect; a
/// valid request afterwards works.
#[test]
fn invalid_send_targets_requests() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let sn = h.cmd_sn;
    h.ok(
        text_bhs(0x70, RESERVED_TAG, sn, true, false),
        b"SendTargetsPlease=All\0",
    );
    let r = h.recv();
    assert_eq!(r[0].op(), Opcode::TEXT_RESPONSE);
    assert_eq!(
        r[0].key("SendTargetsPlease").as_deref(),
        Some("NotUnderstood")
    );
    for (itt, bad) in [
        (0x71, &b"SendTargets=Alle\0"[..]),
        (0x72, b"SendTargets=A\0"),
        (0x73, b"MaxRecvDataSegmentLength=512\0SendTargets=iqn.\0"),
    ] {
        h.ok(text_bhs(itt, RESERVED_TAG, sn, true, false), bad);
        let r = h.recv();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].op(), Opcode::REJECT);
        assert_eq!(r[0].bhs.0[2], RejectReason::INVALID_PDU_FIELD.0);
        assert_eq!(Bhs::from_prefix(&r[0].data).unwrap().itt(), itt);
        assert!(h.events().is_empty());
    }
    assert_eq!(
        h.c.session_params().initiator_max_recv_data_segment_length,
        4096,
        "a rejected request changes nothing"
    );
    h.ok(
        text_bhs(0x74, RESERVED_TAG, sn, true, false),
        b"sENDtARGETS=aLL\0",
    );
    assert_eq!(
        h.recv()[0].key("sENDtARGETS").as_deref(),
        Some("NotUnderstood")
    );
    h.ok(
        text_bhs(0x75, RESERVED_TAG, sn, true, false),
        b"SendTargets=IQN.2026-11.org.rtgt:x\0",
    );
    assert!(matches!(
        &h.events()[..],
        [Event::SendTargets(SendTargetsScope::Target(_))]
    ));
    h.c.send_targets_response(&[]);
    h.ok(
        text_bhs(0x76, RESERVED_TAG, sn, true, false),
        b"SendTargets=All\0",
    );
    assert!(matches!(
        &h.events()[..],
        [Event::SendTargets(SendTargetsScope::All)]
    ));
    assert!(!h.c.is_closed());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Writes with Data-Out PDUs of any TTT, DataSN, offset, length and F bit,
    /// mixed with pings of any CmdSN and completions: no panic, the connection
    /// never closes over Data-Out, and every buffer it was given comes back.
    #[test]
    fn data_out_sequences_never_panic_close_or_leak(
        ops in proptest::collection::vec(
            (0u8..5, any::<u32>(), any::<u32>(), 0u32..3, any::<bool>(), 0usize..3000),
            1..60),
    ) {
        let keys = "HeaderDigest=None\0DataDigest=None\0InitialR2T=No\0ImmediateData=Yes\0MaxBurstLength=4096\0FirstBurstLength=2048\0MaxRecvDataSegmentLength=4096\0MaxOutstandingR2T=2\0";
        let mut h = login_normal(TargetConfig::default(), keys);
        let mut ttts: Vec<u32> = Vec::new();
        let mut delivered: Vec<ScsiCommand<Vec<u8>>> = Vec::new();
        for (kind, a, b, itt, fin, len) in ops {
            let data = vec![0x5au8; len];
            let r = match kind {
                0 => {
                    let edtl = a % 20_000;
                    let imm = &data[..len.min(edtl as usize).min(2048)];
                    let sn = h.cmd_sn.wrapping_add(b % 3);
                    if sn == h.cmd_sn {
                        h.cmd_sn += 1;
                    }
                    h.send(scsi_bhs(itt, false, true, fin, edtl, sn, 0x2a, false), &[], imm)
                }
                1 | 2 => {
                    let ttt = if kind == 1 || ttts.is_empty() {
                        RESERVED_TAG
                    } else {
                        ttts[a as usize % ttts.len()]
                    };
                    let offset = if b % 2 == 0 { (b % 20_000) & !511 } else { b };
                    h.send(data_out_bhs(itt, ttt, a % 4, offset, fin), &[], &data)
                }
                3 => {
                    let sn = h.cmd_sn.wrapping_add(a % 4).wrapping_sub(1);
                    let bhs = nop_out_bhs(0x1000 + itt, RESERVED_TAG, sn);
                    h.send(if fin { bhs } else { non_immediate(bhs) }, &[], &data[..len.min(64)])
                }
                _ => {
                    if !delivered.is_empty() {
                        let c = delivered.remove(a as usize % delivered.len());
                        h.c.complete_command(c.itt, CommandResponse {
                            status: 0, sense: vec![], data: c.data, data_len: 0, residual: Residual::None,
                        });
                    }
                    Ok(0)
                }
            };
            prop_assert!(r.is_ok(), "{r:?}");
            prop_assert!(!h.c.is_closed());
            for p in h.recv() {
                if p.op() == Opcode::R2T {
                    ttts.push(p.bhs.u32_at(20));
                }
            }
            for e in h.events() {
                if let Event::Command(c) = e {
                    delivered.push(c);
                }
            }
        }
        for c in delivered {
            h.c.complete_command(c.itt, CommandResponse {
                status: 0, sense: vec![], data: c.data, data_len: 0, residual: Residual::None,
            });
        }
        h.c.shutdown();
        let returned = std::iter::from_fn(|| h.c.poll_free_buffer()).count();
        prop_assert_eq!(returned, h.allocs);
    }
}

// ----- write data received straight into the task's buffer ------------------

const BIG_KEYS: &str = "HeaderDigest=None\0DataDigest=None\0InitialR2T=No\0ImmediateData=Yes\0MaxBurstLength=262144\0FirstBurstLength=65536\0MaxRecvDataSegmentLength=262144\0MaxOutstandingR2T=1\0";

/// Feed `bytes` the way the reactor does, at most `chunk` bytes per read(2):
/// into [`Connection::placement_buffer`] when the connection offers one,
/// otherwise into a receive buffer handed to `handle_input` (whose
/// unconsumed tail stays for the next read). Returns how many bytes went
/// straight into task buffers.
fn drive(h: &mut Harness, bytes: &[u8], chunk: usize) -> usize {
    let mut pos = 0;
    let mut rbuf: Vec<u8> = Vec::new();
    let mut placed = 0;
    while pos < bytes.len() {
        let n = chunk.min(bytes.len() - pos);
        if let Some(dst) = h.c.placement_buffer() {
            assert!(rbuf.is_empty(), "placement starts with the input consumed");
            let n = n.min(dst.len());
            dst[..n].copy_from_slice(&bytes[pos..pos + n]);
            h.c.placed(n, h.now);
            pos += n;
            placed += n;
            continue;
        }
        rbuf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        let used = h.input(&rbuf).unwrap();
        rbuf.drain(..used);
    }
    assert!(rbuf.is_empty(), "{} bytes left unparsed", rbuf.len());
    placed
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A write whose immediate data (with padding), unsolicited Data-Out and
/// solicited Data-Out are each large: all of it lands in the task's buffer
/// without passing through the receive buffer, and the PDUs after it parse.
#[test]
fn large_write_data_is_placed_in_the_task_buffer() {
    let mut h = login_normal(TargetConfig::default(), BIG_KEYS);
    let edtl: u32 = 65536 + 70_001;
    let payload = pattern(edtl as usize, 7);
    let sn = h.next_sn();
    let mut stream = frame(
        &scsi_bhs(0x10, false, true, false, edtl, sn, 0x2a, false),
        &[],
        &payload[..40_002],
        false,
        false,
    );
    stream.extend(frame(
        &data_out_bhs(0x10, RESERVED_TAG, 0, 40_002, true),
        &[],
        &payload[40_002..65536],
        false,
        false,
    ));
    let placed = drive(&mut h, &stream, 9000);
    // Only what came in the same read as each header was copied.
    assert!(placed >= 65536 - 2 * 9000, "placed {placed}");
    assert!(h.events().is_empty(), "not delivered before all data is in");
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::R2T);
    assert_eq!((r[0].bhs.u32_at(40), r[0].bhs.u32_at(44)), (65536, 70_001));
    let ttt = r[0].bhs.u32_at(20);
    let sn = h.cmd_sn; // a ping (immediate) does not consume its CmdSN
    let mut stream = frame(
        &data_out_bhs(0x10, ttt, 0, 65536, true),
        &[],
        &payload[65536..],
        false,
        false,
    );
    stream.extend(frame(
        &nop_out_bhs(0x77, RESERVED_TAG, sn),
        &[],
        &[],
        false,
        false,
    ));
    let placed = drive(&mut h, &stream, 30_000);
    assert!(placed >= 70_001 - 30_000, "placed {placed}");
    let cmd = command_event(h.events().remove(0));
    assert_eq!(cmd.data.as_deref(), Some(&payload[..]));
    let r = h.recv();
    assert_eq!(r.len(), 1, "the ping after the data parses");
    assert_eq!(r[0].op(), Opcode::NOP_IN);
    assert_eq!(h.c.stats().write_bytes, u64::from(edtl));
}

/// The task goes away while its data is still arriving (a LU reset from
/// another session): the rest of the data is read and dropped, the buffer
/// comes back, and the next PDU is served.
#[test]
fn placement_of_an_aborted_task_is_skipped() {
    let mut h = login_normal(TargetConfig::default(), BIG_KEYS);
    let payload = pattern(50_001, 3);
    let sn = h.next_sn();
    let stream = frame(
        &scsi_bhs(0x20, false, true, true, 50_001, sn, 0x2a, false),
        &[],
        &payload,
        false,
        false,
    );
    assert_eq!(h.input(&stream[..100]).unwrap(), 100);
    assert_eq!(h.c.placement_buffer().map(|b| b.len()), Some(50_001 - 52));
    assert_eq!(h.c.abort_tasks(None), 1);
    assert_eq!(h.c.poll_free_buffer().map(|b| b.len()), Some(50_001));
    assert!(h.c.placement_buffer().is_none());
    let sn = h.cmd_sn;
    let mut rest = stream[100..].to_vec();
    rest.extend(frame(
        &nop_out_bhs(0x78, RESERVED_TAG, sn),
        &[],
        &[],
        false,
        false,
    ));
    assert_eq!(drive(&mut h, &rest, 7000), 0);
    assert!(h.events().is_empty());
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::NOP_IN);
}

/// Immediate data that cannot be buffered (beyond MaxBurstLength-sized
/// transfers the target allows) or belongs to a rejected command is skipped,
/// never placed.
#[test]
fn data_without_a_buffer_is_skipped() {
    let config = TargetConfig {
        max_data_transfer: 32 * 1024,
        ..TargetConfig::default()
    };
    let mut h = login_normal(config, BIG_KEYS);
    let sn = h.next_sn();
    let payload = pattern(40_000, 1);
    let mut stream = frame(
        &scsi_bhs(0x30, false, true, true, 40_000, sn, 0x2a, false),
        &[],
        &payload,
        false,
        false,
    );
    // Immediate data larger than EDTL: rejected (§11.3.5).
    let sn = h.next_sn();
    stream.extend(frame(
        &scsi_bhs(0x31, false, true, true, 100, sn, 0x2a, false),
        &[],
        &payload[..30_000],
        false,
        false,
    ));
    let sn = h.cmd_sn;
    stream.extend(frame(
        &nop_out_bhs(0x79, RESERVED_TAG, sn),
        &[],
        &[],
        false,
        false,
    ));
    assert_eq!(drive(&mut h, &stream, 5000), 0);
    let cmd = command_event(h.events().remove(0));
    assert_eq!(cmd.itt, 0x30);
    assert!(
        cmd.data.is_none(),
        "unbufferable write delivered without data"
    );
    let ops: Vec<Opcode> = h.recv().iter().map(Rx::op).collect();
    assert_eq!(ops, [Opcode::REJECT, Opcode::NOP_IN]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// However the input is cut into reads, and whether the driver receives
    /// into the placement buffer or hands every byte to `handle_input`, the
    /// commands carry exactly the data sent and the PDUs after them parse;
    /// with header digests too.
    #[test]
    fn placement_gives_the_same_data_for_any_read_sizes(
        sizes in proptest::collection::vec(1usize..70_000, 1..4),
        chunk in 1usize..80_000,
        use_placement in any::<bool>(),
        hd in any::<bool>(),
    ) {
        let keys = if hd {
            BIG_KEYS.replace("HeaderDigest=None", "HeaderDigest=CRC32C")
        } else {
            BIG_KEYS.to_string()
        };
        let mut h = login_normal(TargetConfig::default(), &keys);
        prop_assert_eq!(h.hd, hd);
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let len = len.min(65536);
            let data = pattern(len, i as u8);
            let sn = h.next_sn();
            let itt = 0x100 + i as u32;
            stream.extend(frame(&scsi_bhs(itt, false, true, true, len as u32, sn, 0x2a, false), &[], &data, hd, false));
            let sn = h.cmd_sn;
            stream.extend(frame(&nop_out_bhs(0x200 + i as u32, RESERVED_TAG, sn), &[], &[], hd, false));
            sent.push((itt, data));
        }
        if use_placement {
            drive(&mut h, &stream, chunk);
        } else {
            let mut rbuf = Vec::new();
            for piece in stream.chunks(chunk) {
                rbuf.extend_from_slice(piece);
                let used = h.input(&rbuf).unwrap();
                rbuf.drain(..used);
            }
            prop_assert!(rbuf.is_empty());
        }
        let got: Vec<(u32, Vec<u8>)> = h
            .events()
            .into_iter()
            .map(command_event)
            .map(|c| (c.itt, c.data.unwrap_or_default()))
            .collect();
        prop_assert_eq!(got, sent.clone());
        let pings = h.recv().iter().filter(|r| r.op() == Opcode::NOP_IN).count();
        prop_assert_eq!(pings, sent.len());
    }
}

// ----- Data-In sent from a file -------------------------------------------

/// A file in the temp dir holding `data`, removed on drop.
struct TempFile(std::path::PathBuf, Arc<std::fs::File>);

impl TempFile {
    fn new(tag: &str, data: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!("rtgt-conn-{tag}-{}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        TempFile(path, Arc::new(f))
    }

    fn data(&self) -> FileData {
        Arc::clone(&self.1) as FileData
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Records how the connection drives a [`Transmit`]: gathered writes (and
/// whether file data was announced after them) and file sends, each taking
/// at most `max` bytes.
struct Recorder {
    out: Vec<u8>,
    calls: Vec<String>,
    max: usize,
}

impl Transmit for Recorder {
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>], more: bool) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(self.max - n);
            self.out.extend_from_slice(&b[..take]);
            n += take;
        }
        self.calls
            .push(format!("writev {n}{}", if more { " more" } else { "" }));
        Ok(n)
    }

    fn send_file(&mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize> {
        let n = Plain(&mut self.out).send_file(file, offset, len.min(self.max))?;
        self.calls.push(format!("sendfile {offset} {n}"));
        Ok(n)
    }
}

/// A read answered from a file: Data-In PDUs split as for a buffer, the
/// header announced with `more`, the data by `send_file` at the right file
/// offsets (resuming after partial sends), the status in the last PDU.
#[test]
fn data_in_from_a_file() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let content: Vec<u8> = (0..20000u32).map(|i| (i * 13) as u8).collect();
    let file = TempFile::new("datain", &content);
    let sn = h.next_sn();
    h.ok(scsi_bhs(5, true, false, true, 10000, sn, 0x28, false), &[]);
    let _ = h.events();
    assert!(h.c.can_send_files());
    h.c.complete_read_from_file(
        5,
        CommandResponse {
            status: 0,
            sense: vec![],
            data: None,
            data_len: 10000,
            residual: Residual::None,
        },
        file.data(),
        1000,
    );
    let mut rec = Recorder {
        out: Vec::new(),
        calls: Vec::new(),
        max: 3000,
    };
    while h.c.wants_write() {
        assert!(h.c.transmit(&mut rec).unwrap() > 0);
    }
    assert_eq!(rec.calls[0], "writev 48 more");
    assert_eq!(rec.calls[1], "sendfile 1000 3000");
    assert_eq!(
        rec.calls[2], "sendfile 4000 1096",
        "resumes where it stopped"
    );
    let r = parse_target_pdus(&rec.out, false, false);
    assert_eq!(r.len(), 3, "MaxRecvDataSegmentLength 4096");
    let got: Vec<u8> = r.iter().flat_map(|p| p.data.clone()).collect();
    assert_eq!(got, content[1000..11000]);
    assert!(r.iter().all(|p| p.op() == Opcode::SCSI_DATA_IN));
    assert_eq!(r[2].bhs.flags() & 0x01, 0x01, "status in the last Data-In");
    assert_eq!(h.c.outstanding_tasks(), 0);
    assert!(h.c.poll_free_buffer().is_none(), "no buffer was involved");
}

/// Past the end of the file, `Plain` sends zeros: the stream stays framed.
#[test]
fn data_in_past_the_end_of_a_file_is_zeros() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    let file = TempFile::new("short", &[0xaa; 1000]);
    let sn = h.next_sn();
    h.ok(scsi_bhs(6, true, false, true, 3000, sn, 0x28, false), &[]);
    let _ = h.events();
    let response = CommandResponse {
        status: 0,
        sense: vec![],
        data: None,
        data_len: 3000,
        residual: Residual::None,
    };
    h.c.complete_read_from_file(6, response, file.data(), 500);
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0].data[..500], &[0xaa; 500][..]);
    assert!(r[0].data[500..].iter().all(|&b| b == 0));
    assert_eq!(r[0].data.len(), 3000);
}

/// With a data digest the bytes must pass through the target: a read
/// answered from a file is refused (CHECK CONDITION, HARDWARE ERROR,
/// INTERNAL TARGET FAILURE) rather than sent without its digest.
#[test]
fn no_file_data_in_with_a_data_digest() {
    let keys = OP_KEYS.replace("DataDigest=None", "DataDigest=CRC32C");
    let mut h = login_normal(TargetConfig::default(), &keys);
    assert!(h.dd);
    assert!(!h.c.can_send_files());
    let file = TempFile::new("digest", &[1u8; 4096]);
    let sn = h.next_sn();
    h.ok(scsi_bhs(7, true, false, true, 4096, sn, 0x28, false), &[]);
    let _ = h.events();
    let response = CommandResponse {
        status: 0,
        sense: vec![],
        data: None,
        data_len: 4096,
        residual: Residual::None,
    };
    h.c.complete_read_from_file(7, response, file.data(), 0);
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::SCSI_RESPONSE);
    assert_eq!(r[0].bhs.0[3], 0x02, "CHECK CONDITION");
    assert_eq!(r[0].data[2 + 2] & 0x0f, 0x04, "HARDWARE ERROR");
    assert_eq!(r[0].data[2 + 12], 0x44);
}

/// A SCSI Command acknowledging status up to `exp_stat_sn - 1` (§11.3).
fn acked(mut b: Bhs, exp_stat_sn: u32) -> Bhs {
    b.set_u32(28, exp_stat_sn);
    b
}

fn answer_all(h: &mut Harness) {
    for ev in h.events() {
        let c = command_event(ev);
        h.c.complete_command(
            c.itt,
            CommandResponse {
                status: 0,
                sense: vec![],
                data: c.data,
                data_len: 0,
                residual: Residual::None,
            },
        );
    }
}

#[test]
fn initiator_pace_counts_answers_sent_beyond_exp_stat_sn() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    assert_eq!(h.c.take_initiator_pace(), None, "no command yet");
    // The two login responses took StatSN 0 and 1: ten commands
    // acknowledging them.
    for itt in 1..=10 {
        let sn = h.next_sn();
        h.ok(
            acked(scsi_bhs(itt, false, false, true, 0, sn, 0x00, false), 2),
            &[],
        );
    }
    answer_all(&mut h);
    assert_eq!(h.recv().len(), 10);
    assert_eq!(
        h.c.take_initiator_pace(),
        Some(InitiatorPace {
            backlog: 10,
            command_bytes: BHS_LEN as u32,
            commands: 10
        }),
        "ten answers out, none acknowledged"
    );
    assert_eq!(h.c.take_initiator_pace(), None, "once per command");

    // A write with its data, from an initiator that has taken in eight of
    // them (StatSN 2..=9): two still unacknowledged, and the write's own.
    let sn = h.next_sn();
    h.ok(
        acked(scsi_bhs(11, false, true, true, 512, sn, 0x2a, false), 10),
        &[7u8; 512],
    );
    answer_all(&mut h);
    assert_eq!(h.recv().len(), 1);
    let p = h.c.take_initiator_pace().unwrap();
    assert_eq!((p.backlog, p.command_bytes, p.commands), (3, 48 + 512, 1));

    // Answers not yet sent are not the initiator's backlog.
    let sn = h.next_sn();
    h.ok(
        acked(scsi_bhs(12, false, false, true, 0, sn, 0x00, false), 13),
        &[],
    );
    answer_all(&mut h);
    assert_eq!(h.c.take_initiator_pace().unwrap().backlog, 0);
    assert_eq!(h.recv().len(), 1);

    // An ExpStatSN beyond what we sent says nothing.
    let sn = h.next_sn();
    h.ok(
        acked(scsi_bhs(13, false, false, true, 0, sn, 0x00, false), 5000),
        &[],
    );
    answer_all(&mut h);
    h.recv();
    assert_eq!(h.c.take_initiator_pace().unwrap().backlog, 0);
}

#[test]
fn initiator_pace_is_withheld_while_the_peer_owes_us_bytes() {
    let mut h = login_normal(TargetConfig::default(), OP_KEYS);
    // A write whose unsolicited Data-Out is still to come (F=0).
    let sn = h.next_sn();
    h.ok(
        acked(scsi_bhs(1, false, true, false, 4096, sn, 0x2a, false), 1),
        &[1u8; 1024],
    );
    assert_eq!(h.c.take_initiator_pace(), None, "write data awaited");
    h.ok(data_out_bhs(1, RESERVED_TAG, 0, 1024, true), &[1u8; 3072]);
    answer_all(&mut h);
    h.recv();
    // A CmdSN gap: the missing command is awaited.
    let skipped = h.next_sn();
    let sn = h.next_sn();
    h.ok(
        acked(scsi_bhs(2, false, false, true, 0, sn, 0x00, false), 2),
        &[],
    );
    assert_eq!(h.c.take_initiator_pace(), None, "CmdSN {skipped} awaited");
    h.ok(
        acked(scsi_bhs(3, false, false, true, 0, skipped, 0x00, false), 2),
        &[],
    );
    answer_all(&mut h);
    assert_eq!(h.recv().len(), 2);
    assert_eq!(
        h.c.take_initiator_pace().map(|p| p.commands),
        Some(1),
        "one since the last look"
    );
}

// ----- CHAP (RFC 7143 §12.1.3) ----------------------------------------------

const INITIATOR: &str = "iqn.1994-05.com.example:ini";
const CHAP_NAMES: &str = "InitiatorName=iqn.1994-05.com.example:ini\0TargetName=iqn.2024-01.org.rtgt:disk\0SessionType=Normal\0";
const ALICE_SECRET: &str = "alice-secret-12";
const TARGET_SECRET: &str = "target-secret-34";

fn chap_policy() -> ChapPolicy {
    ChapPolicy {
        incoming: vec![ChapAccount::new("alice", ALICE_SECRET)],
        outgoing: Some(ChapAccount::new("rtgt-target", TARGET_SECRET)),
    }
}

fn accept_chap(policy: ChapPolicy) -> LoginAccept {
    LoginAccept {
        chap: Some(policy),
        ..accept()
    }
}

/// What the initiator computes (RFC 1994 §4.1): H(identifier || secret ||
/// challenge), straight from the digest crates.
fn chap_hash(algorithm: &str, id: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
    fn h<D: digest::Digest>(id: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
        D::new()
            .chain_update([id])
            .chain_update(secret.as_bytes())
            .chain_update(challenge)
            .finalize()
            .to_vec()
    }
    match algorithm {
        "5" => h::<md5::Md5>(id, secret, challenge),
        "6" => h::<sha1::Sha1>(id, secret, challenge),
        "7" => h::<sha2::Sha256>(id, secret, challenge),
        "8" => h::<sha3::Sha3_256>(id, secret, challenge),
        a => panic!("CHAP_A={a}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{digits}")
}

fn unhex(v: &str) -> Vec<u8> {
    let digits = v.strip_prefix("0x").expect("0x value");
    assert_eq!(digits.len() % 2, 0);
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

/// The target's CHAP_A, CHAP_I, CHAP_C.
struct TargetChallenge {
    algorithm: String,
    id: u8,
    challenge: Vec<u8>,
}

impl TargetChallenge {
    fn from(r: &Rx) -> Self {
        let algorithm = r.key("CHAP_A").expect("CHAP_A");
        let id = r.key("CHAP_I").expect("CHAP_I").parse().unwrap();
        let challenge = unhex(&r.key("CHAP_C").expect("CHAP_C"));
        TargetChallenge {
            algorithm,
            id,
            challenge,
        }
    }

    fn response(&self, secret: &str) -> String {
        hex(&chap_hash(
            &self.algorithm,
            self.id,
            secret,
            &self.challenge,
        ))
    }
}

/// Logs in up to the target's challenge the way open-iscsi does: names and
/// AuthMethod=CHAP,None with T=1 (the target stays, T=0), then CHAP_A alone.
fn chap_challenged(policy: ChapPolicy, chap_a: &str) -> (Harness, TargetChallenge) {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, true, false, 1, 1),
        format!("{CHAP_NAMES}AuthMethod=CHAP,None\0").as_bytes(),
    );
    assert!(matches!(h.events()[..], [Event::Login(_)]));
    assert!(h.recv().is_empty());
    h.c.accept_login(accept_chap(policy));
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.u16_at(36), 0);
    assert_eq!(
        r[0].bhs.flags(),
        0,
        "T=0, CSG=NSG=0: authentication under way"
    );
    assert_eq!(r[0].key("AuthMethod").as_deref(), Some("CHAP"));
    assert_eq!(r[0].key("TargetPortalGroupTag").as_deref(), Some("1"));
    h.ok(
        login_bhs(0, 1, false, false, 1, 1),
        format!("CHAP_A={chap_a}\0").as_bytes(),
    );
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].bhs.flags(), 0);
    let c = TargetChallenge::from(&r[0]);
    // RFC 7143 §12.1.3 and our choice: a challenge of the digest's length.
    let len = match c.algorithm.as_str() {
        "5" => 16,
        "6" => 20,
        _ => 32,
    };
    assert_eq!(c.challenge.len(), len);
    assert!(h.events().is_empty());
    (h, c)
}

/// The target refused with Authentication failure (status-class 2, detail 1)
/// and told the driver once; returns the reported CHAP_N and reason.
fn auth_failed(h: &mut Harness) -> (Option<String>, &'static str) {
    let r = h.recv();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].op(), Opcode::LOGIN_RESPONSE);
    assert_eq!(r[0].bhs.0[36], 2, "Status-Class: initiator error");
    assert_eq!(r[0].bhs.0[37], 1, "Status-Detail: authentication failure");
    assert!(r[0].data.is_empty());
    assert!(h.c.is_closed());
    assert!(!h.c.is_full_feature());
    let ev = h.events();
    match &ev[..] {
        [Event::AuthenticationFailed {
            initiator_name,
            user,
            reason,
        }] => {
            assert_eq!(initiator_name, INITIATOR);
            (user.clone(), *reason)
        }
        other => panic!("{other:?}"),
    }
}

/// Sends a security-stage Login Request the target must refuse.
fn refused(h: &mut Harness, transit: bool, keys: &str) -> (Option<String>, &'static str) {
    let sent = h.send(login_bhs(0, 1, transit, false, 1, 1), &[], keys.as_bytes());
    assert!(matches!(
        sent,
        Err(ConnectionError::LoginFailed(
            LoginStatus::AUTHENTICATION_FAILURE
        ))
    ));
    auth_failed(h)
}

/// Finishes the login in the operational stage.
fn finish_operational(h: &mut Harness) {
    h.ok(login_bhs(1, 3, true, false, 1, 1), OP_KEYS.as_bytes());
    let r = h.recv();
    assert_eq!(r[0].bhs.flags(), 0x80 | (1 << 2) | 3);
    assert_eq!(r[0].bhs.u16_at(36), 0);
    assert!(matches!(h.events()[..], [Event::FullFeature(_)]));
    assert!(h.c.is_full_feature());
}

#[test]
fn chap_one_way_login() {
    let (mut h, c) = chap_challenged(chap_policy(), "5");
    assert_eq!(c.algorithm, "5");
    // CHAP_N/CHAP_R with T=1: the target transits once they check out.
    let keys = format!("CHAP_N=alice\0CHAP_R={}\0", c.response(ALICE_SECRET));
    h.ok(login_bhs(0, 1, true, false, 1, 1), keys.as_bytes());
    let r = h.recv();
    assert_eq!(r[0].bhs.u16_at(36), 0);
    assert_eq!(r[0].bhs.flags(), 0x80 | 1, "T=1, CSG 0, NSG 1");
    assert_eq!(r[0].key("CHAP_N"), None, "no mutual CHAP asked for");
    finish_operational(&mut h);
}

#[test]
fn chap_mutual_login_straight_to_full_feature() {
    let (mut h, c) = chap_challenged(chap_policy(), "7,5");
    assert_eq!(c.algorithm, "7", "the initiator's first choice");
    let ours: Vec<u8> = (0..32).map(|i| i * 7 + 1).collect();
    let keys = format!(
        "CHAP_N=alice\0CHAP_R={}\0CHAP_I=200\0CHAP_C={}\0",
        c.response(ALICE_SECRET),
        hex(&ours)
    );
    h.ok(login_bhs(0, 3, true, false, 1, 1), keys.as_bytes());
    let r = h.recv();
    assert_eq!(r[0].bhs.u16_at(36), 0);
    assert_eq!(r[0].bhs.flags(), 0x80 | 3, "T=1, CSG 0, NSG 3");
    assert_eq!(r[0].bhs.u16_at(14), 7, "TSIH in the final response");
    assert_eq!(r[0].key("CHAP_N").as_deref(), Some("rtgt-target"));
    // The initiator checks the target's answer to its challenge.
    let expected = hex(&chap_hash("7", 200, TARGET_SECRET, &ours));
    assert_eq!(r[0].key("CHAP_R"), Some(expected));
    assert!(r[0].key("MaxRecvDataSegmentLength").is_some());
    assert!(matches!(h.events()[..], [Event::FullFeature(_)]));
    assert!(h.c.is_full_feature());
}

#[test]
fn chap_mutual_then_transit_in_a_later_request() {
    let (mut h, c) = chap_challenged(chap_policy(), "6");
    let keys = format!(
        "CHAP_I=0x10\0CHAP_C={}\0CHAP_R={}\0CHAP_N=alice\0",
        hex(&[0xa5; 16]),
        c.response(ALICE_SECRET),
    );
    h.ok(login_bhs(0, 1, false, false, 1, 1), keys.as_bytes());
    let r = h.recv();
    assert_eq!(r[0].bhs.flags(), 0, "no transit asked for");
    let expected = hex(&chap_hash("6", 0x10, TARGET_SECRET, &[0xa5; 16]));
    assert_eq!(r[0].key("CHAP_R"), Some(expected));
    h.ok(login_bhs(0, 1, true, false, 1, 1), b"");
    assert_eq!(h.recv()[0].bhs.flags(), 0x81);
    finish_operational(&mut h);
}

#[test]
fn chap_sha3_256_login() {
    let (mut h, c) = chap_challenged(chap_policy(), "8");
    assert_eq!(c.algorithm, "8");
    let keys = format!("CHAP_N=alice\0CHAP_R={}\0", c.response(ALICE_SECRET));
    h.ok(login_bhs(0, 1, true, false, 1, 1), keys.as_bytes());
    assert_eq!(h.recv()[0].bhs.flags(), 0x81);
    finish_operational(&mut h);
}

#[test]
fn chap_base64_response_is_accepted() {
    use base64::Engine as _;
    let (mut h, c) = chap_challenged(chap_policy(), "5");
    let r = chap_hash("5", c.id, ALICE_SECRET, &c.challenge);
    let b64 = base64::engine::general_purpose::STANDARD.encode(r);
    let keys = format!("CHAP_N=alice\0CHAP_R=0b{b64}\0");
    h.ok(login_bhs(0, 1, true, false, 1, 1), keys.as_bytes());
    assert_eq!(h.recv()[0].bhs.flags(), 0x81);
    finish_operational(&mut h);
}

#[test]
fn chap_algorithm_in_the_first_request() {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, true, false, 1, 1),
        format!("{CHAP_NAMES}AuthMethod=None,CHAP\0CHAP_A=6,5\0").as_bytes(),
    );
    assert!(matches!(h.events()[..], [Event::Login(_)]));
    h.c.accept_login(accept_chap(chap_policy()));
    let r = h.recv();
    assert_eq!(r[0].bhs.flags(), 0);
    assert_eq!(r[0].key("AuthMethod").as_deref(), Some("CHAP"));
    let c = TargetChallenge::from(&r[0]);
    assert_eq!((c.algorithm.as_str(), c.challenge.len()), ("6", 20));
    let keys = format!("CHAP_N=alice\0CHAP_R={}\0", c.response(ALICE_SECRET));
    h.ok(login_bhs(0, 1, true, false, 1, 1), keys.as_bytes());
    assert_eq!(h.recv()[0].bhs.flags(), 0x81);
    finish_operational(&mut h);
}

#[test]
fn chap_wrong_secret() {
    let (mut h, c) = chap_challenged(chap_policy(), "5");
    let keys = format!("CHAP_N=alice\0CHAP_R={}\0", c.response("not-the-secret"));
    assert_eq!(
        refused(&mut h, true, &keys),
        (Some("alice".into()), "wrong CHAP response")
    );
}

#[test]
fn chap_unknown_user() {
    let (mut h, c) = chap_challenged(chap_policy(), "5");
    let keys = format!("CHAP_N=mallory\0CHAP_R={}\0", c.response(ALICE_SECRET));
    assert_eq!(
        refused(&mut h, true, &keys),
        (Some("mallory".into()), "unknown CHAP user")
    );
}

#[test]
fn chap_wrong_length_response() {
    let (mut h, c) = chap_challenged(chap_policy(), "7");
    // An MD5-sized answer to a SHA-256 challenge.
    let r = hex(&chap_hash("5", c.id, ALICE_SECRET, &c.challenge));
    let keys = format!("CHAP_N=alice\0CHAP_R={r}\0");
    assert_eq!(refused(&mut h, true, &keys).1, "CHAP value of wrong length");
}

#[test]
fn chap_reflected_challenge() {
    let (mut h, c) = chap_challenged(chap_policy(), "5");
    let keys = format!(
        "CHAP_N=alice\0CHAP_R={}\0CHAP_I={}\0CHAP_C={}\0",
        c.response(ALICE_SECRET),
        c.id,
        hex(&c.challenge)
    );
    assert_eq!(refused(&mut h, true, &keys).1, "reflected challenge");
}

/// alice's right answer to `c`, with a challenge of her own (mutual CHAP).
fn alice_asking_back(c: &TargetChallenge) -> String {
    format!(
        "CHAP_N=alice\0CHAP_R={}\0CHAP_I=1\0CHAP_C={}\0",
        c.response(ALICE_SECRET),
        hex(&[3; 16])
    )
}

#[test]
fn chap_same_secret_both_ways_is_refused() {
    let policy = ChapPolicy {
        outgoing: Some(ChapAccount::new("rtgt-target", ALICE_SECRET)),
        ..chap_policy()
    };
    let (mut h, c) = chap_challenged(policy, "5");
    let keys = alice_asking_back(&c);
    assert_eq!(refused(&mut h, true, &keys).1, "same secret both ways");
}

#[test]
fn chap_mutual_without_outgoing_account() {
    let policy = ChapPolicy {
        outgoing: None,
        ..chap_policy()
    };
    let (mut h, c) = chap_challenged(policy, "5");
    let keys = alice_asking_back(&c);
    assert_eq!(refused(&mut h, true, &keys).1, "mutual CHAP not configured");
}

#[test]
fn chap_unsupported_algorithms() {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, false, false, 1, 1),
        format!("{CHAP_NAMES}AuthMethod=CHAP\0").as_bytes(),
    );
    h.c.accept_login(accept_chap(chap_policy()));
    let _ = h.recv();
    let _ = h.events();
    assert_eq!(
        refused(&mut h, false, "CHAP_A=1,2,3\0"),
        (None, "no supported CHAP algorithm")
    );
}

#[test]
fn chap_required_but_initiator_offers_none() {
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, true, false, 1, 1),
        format!("{CHAP_NAMES}AuthMethod=None\0").as_bytes(),
    );
    assert!(matches!(h.events()[..], [Event::Login(_)]));
    h.c.accept_login(accept_chap(chap_policy()));
    assert_eq!(auth_failed(&mut h), (None, "CHAP required"));
}

#[test]
fn chap_required_but_no_auth_method_offered() {
    // Leaving the security stage without AuthMethod.
    let mut h = Harness::new(TargetConfig::default());
    h.ok(login_bhs(0, 1, false, false, 1, 1), CHAP_NAMES.as_bytes());
    h.c.accept_login(accept_chap(chap_policy()));
    assert_eq!(h.recv()[0].bhs.flags(), 0);
    let _ = h.events();
    assert_eq!(refused(&mut h, true, ""), (None, "CHAP required"));

    // Skipping the security stage altogether (§6.3).
    let mut h = Harness::new(TargetConfig::default());
    h.ok(login_bhs(1, 3, true, false, 1, 1), CHAP_NAMES.as_bytes());
    assert!(matches!(h.events()[..], [Event::Login(_)]));
    h.c.accept_login(accept_chap(chap_policy()));
    assert_eq!(auth_failed(&mut h), (None, "CHAP required"));
}

#[test]
fn chap_transit_without_response_fails() {
    let (mut h, _) = chap_challenged(chap_policy(), "5");
    assert_eq!(
        refused(&mut h, true, ""),
        (None, "CHAP_N or CHAP_R missing")
    );
}

#[test]
fn chap_keys_out_of_order() {
    // CHAP_N before the challenge.
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, false, false, 1, 1),
        format!("{CHAP_NAMES}AuthMethod=CHAP\0").as_bytes(),
    );
    h.c.accept_login(accept_chap(chap_policy()));
    let _ = (h.recv(), h.events());
    assert_eq!(
        refused(&mut h, false, "CHAP_N=alice\0"),
        (Some("alice".into()), "CHAP key out of order")
    );

    // A second CHAP_A after the challenge.
    let (mut h, _) = chap_challenged(chap_policy(), "5");
    assert_eq!(
        refused(&mut h, false, "CHAP_A=5\0").1,
        "CHAP key out of order"
    );

    // AuthMethod again mid-exchange.
    let (mut h, _) = chap_challenged(chap_policy(), "5");
    assert_eq!(
        refused(&mut h, false, "AuthMethod=None\0").1,
        "AuthMethod renegotiated"
    );
}

#[test]
fn chap_keys_in_the_operational_stage() {
    let (mut h, c) = chap_challenged(chap_policy(), "5");
    let keys = format!("CHAP_N=alice\0CHAP_R={}\0", c.response(ALICE_SECRET));
    h.ok(login_bhs(0, 1, true, false, 1, 1), keys.as_bytes());
    let _ = h.recv();
    let sent = h.send(login_bhs(1, 3, true, false, 1, 1), &[], keys.as_bytes());
    assert!(sent.is_err());
    assert_eq!(
        auth_failed(&mut h),
        (Some("alice".into()), "CHAP key outside the security stage")
    );
}

#[test]
fn chap_keys_are_irrelevant_when_none_is_agreed() {
    // No policy: AuthMethod=None is agreed and CHAP keys are moot (§6.2).
    let mut h = Harness::new(TargetConfig::default());
    h.ok(
        login_bhs(0, 1, true, false, 1, 1),
        format!("{CHAP_NAMES}AuthMethod=CHAP,None\0CHAP_A=5\0").as_bytes(),
    );
    h.c.accept_login(accept());
    let r = h.recv();
    assert_eq!(r[0].bhs.flags(), 0x81);
    assert_eq!(r[0].key("AuthMethod").as_deref(), Some("None"));
    assert_eq!(r[0].key("CHAP_A").as_deref(), Some("Irrelevant"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the initiator puts in CHAP keys, the target neither panics nor
    /// lets it in without the secret.
    #[test]
    fn arbitrary_chap_values_never_panic(
        chap_a in prop_oneof![Just("5".to_string()), Just("7,8".to_string()), "[0-9,x]{0,12}"],
        requests in proptest::collection::vec(
            (
                any::<bool>(),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("CHAP_A"), Just("CHAP_I"), Just("CHAP_C"),
                            Just("CHAP_N"), Just("CHAP_R"), Just("AuthMethod"),
                        ],
                        prop_oneof![
                            "(0x|0X|0b|0B)[0-9a-fA-F+/=]{0,80}",
                            "[0-9]{0,5}",
                            "[^\u{0}]{0,40}",
                        ],
                    ),
                    0..6,
                ),
            ),
            1..5,
        ),
    ) {
        let mut h = Harness::new(TargetConfig::default());
        let first = format!("{CHAP_NAMES}AuthMethod=CHAP\0CHAP_A={chap_a}\0");
        let _ = h.send(login_bhs(0, 1, false, false, 1, 1), &[], first.as_bytes());
        let _ = h.events();
        h.c.accept_login(accept_chap(chap_policy()));
        for (transit, pairs) in requests {
            let _ = h.raw_output();
            let _ = h.events();
            if h.c.is_closed() {
                break;
            }
            let data: String = pairs.iter().map(|(k, v)| format!("{k}={v}\0")).collect();
            let _ = h.send(login_bhs(0, 3, transit, false, 1, 1), &[], data.as_bytes());
            prop_assert!(!h.c.is_full_feature());
        }
        let _ = h.raw_output();
        prop_assert!(!h.c.is_full_feature());
    }
}
