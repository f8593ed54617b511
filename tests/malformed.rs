//! Hostile input over raw TCP (std::net), against one daemon process: every
//! bad connection must end in a Reject PDU or a close (RFC 7143 §7.2, §11.17)
//! within a bounded wait, and the daemon must keep serving everyone else: a
//! QEMU run started before the garbage finishes cleanly, `iscsi-ls` still
//! lists the target afterwards, and the process is still alive.
//!
//! Also over raw TCP, because no initiator tool paces itself this way: a
//! pipelining initiator that stops short of the batch the target's receive
//! coalescing waits for still gets every answer.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::raw::rss_kib;
use common::{require, require_qemu_iscsi, run_tool, spawn_tool, Tgtd, TgtdOpts, XorShift};

const IQN: &str = "iqn.2026-11.org.rtgt:malformed";
const INITIATOR: &str = "iqn.2026-11.org.rtgt:e2e-malformed";
const GIB: u64 = 1 << 30;
/// Bound on how long a bad connection may stay open without an answer.
/// This is a liveness bound, not a timing assertion.
const END_WAIT: Duration = Duration::from_secs(60);
/// Bound on any single read while we expect an answer.
const READ_WAIT: Duration = Duration::from_secs(20);
/// Largest data segment this client accepts from the target.
const MAX_SEGMENT: usize = 1 << 20;

const BHS_LEN: usize = 48;

/// RFC 7143 §11.2.1.2 opcodes used here.
const OP_SCSI_COMMAND: u8 = 0x01;
const OP_LOGIN_REQUEST: u8 = 0x03;
const OP_LOGIN_RESPONSE: u8 = 0x23;
const OP_REJECT: u8 = 0x3f;
const IMMEDIATE: u8 = 0x40;

/// Login flags, RFC 7143 §11.12.2: T (transit), C (continue), CSG, NSG.
const LOGIN_T: u8 = 0x80;
const LOGIN_C: u8 = 0x40;
const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FULL_FEATURE: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// The target closed (FIN or RST).
    Closed,
    /// A Reject PDU (opcode 0x3f) arrived.
    Rejected,
    /// A Login Response with a non-zero Status-Class arrived (the way a
    /// login is refused, RFC 7143 §11.13.5).
    LoginRefused(u8, u8),
}

struct Pdu {
    bhs: [u8; BHS_LEN],
    data: Vec<u8>,
}

impl Pdu {
    fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
}

fn put_u24(b: &mut [u8], v: u32) {
    b[0] = (v >> 16) as u8;
    b[1] = (v >> 8) as u8;
    b[2] = v as u8;
}

fn pad4(v: &mut Vec<u8>) {
    while v.len() % 4 != 0 {
        v.push(0);
    }
}

/// A Login Request BHS, RFC 7143 §11.12. `dsl` is written as given (it may
/// lie about the data that follows).
fn login_bhs(flags: u8, dsl: u32, itt: u32, cmdsn: u32) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[0] = IMMEDIATE | OP_LOGIN_REQUEST;
    b[1] = flags;
    put_u24(&mut b[5..8], dsl);
    // ISID: type "random" (0x80), then qualifier bytes.
    b[8..14].copy_from_slice(&[0x80, 0x3a, 0x11, 0x22, 0x33, 0x44]);
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[24..28].copy_from_slice(&cmdsn.to_be_bytes());
    b
}

fn login_pdu(flags: u8, text: &[u8], itt: u32, cmdsn: u32) -> Vec<u8> {
    let mut v = login_bhs(flags, text.len() as u32, itt, cmdsn).to_vec();
    v.extend_from_slice(text);
    pad4(&mut v);
    v
}

/// A SCSI Command BHS (RFC 7143 §11.3) for TEST UNIT READY on LUN 1.
fn scsi_tur_bhs(itt: u32, cmdsn: u32, exp_statsn: u32) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[0] = OP_SCSI_COMMAND;
    b[1] = 0x80 | 0x01; // F, simple task attribute
    b[9] = 1; // LUN 1, peripheral addressing
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[24..28].copy_from_slice(&cmdsn.to_be_bytes());
    b[28..32].copy_from_slice(&exp_statsn.to_be_bytes());
    // CDB bytes 32..48: TEST UNIT READY is all zeros.
    b
}

fn text_keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

fn connect(d: &Tgtd) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], d.port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(READ_WAIT))
        .expect("set_read_timeout");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("set_write_timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads one PDU; `Ok(None)` on a clean or reset close.
fn read_pdu(s: &mut TcpStream) -> Result<Option<Pdu>, String> {
    let mut bhs = [0u8; BHS_LEN];
    if let Err(e) = s.read_exact(&mut bhs) {
        return match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted => Ok(None),
            _ => Err(format!("read BHS: {e}")),
        };
    }
    let ahs = usize::from(bhs[4]) * 4;
    let dsl = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    if dsl > MAX_SEGMENT {
        return Err(format!("target sent a {dsl}-byte data segment"));
    }
    let padded = ahs + dsl.div_ceil(4) * 4;
    let mut rest = vec![0u8; padded];
    if let Err(e) = s.read_exact(&mut rest) {
        return match e.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted => Ok(None),
            _ => Err(format!("read PDU body: {e}")),
        };
    }
    let data = rest[ahs..ahs + dsl].to_vec();
    Ok(Some(Pdu { bhs, data }))
}

/// Reads until the target closes, rejects, or refuses the login; any other
/// PDU (e.g. an empty Login Response to a continued request) is skipped.
/// An error if nothing of the sort happens within [`END_WAIT`].
fn expect_end(s: &mut TcpStream, what: &str) -> Result<End, String> {
    let deadline = Instant::now() + END_WAIT;
    loop {
        match read_pdu(s) {
            Ok(None) => return Ok(End::Closed),
            Ok(Some(p)) if p.opcode() == OP_REJECT => return Ok(End::Rejected),
            Ok(Some(p)) if p.opcode() == OP_LOGIN_RESPONSE && p.bhs[36] != 0 => {
                return Ok(End::LoginRefused(p.bhs[36], p.bhs[37]))
            }
            Ok(Some(_)) => {}
            Err(e)
                if e.contains("timed out")
                    || e.contains("would block")
                    || e.contains("temporarily") => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: the connection is still open {END_WAIT:?} later with neither a Reject PDU nor a close"
            ));
        }
    }
}

/// Sends `first`, then keeps sending what `more` produces (until it returns
/// `None`, a write fails, or the connection has ended) on a second thread
/// while this one waits for the end.
fn send_and_expect_end(
    mut s: TcpStream,
    what: &str,
    first: Vec<u8>,
    mut more: impl FnMut() -> Option<Vec<u8>> + Send + 'static,
) -> Result<End, String> {
    let mut w = s.try_clone().expect("clone stream");
    let writer = thread::spawn(move || {
        if w.write_all(&first).is_err() {
            return;
        }
        while let Some(chunk) = more() {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let end = expect_end(&mut s, what);
    let _ = s.shutdown(Shutdown::Both);
    let _ = writer.join();
    end
}

/// A full login to `IQN` (security stage straight to full feature phase,
/// AuthMethod=None). Returns the next CmdSN and ExpStatSN.
fn login(d: &Tgtd, s: &mut TcpStream) -> (u32, u32) {
    let mut csg = STAGE_SECURITY;
    let mut text = text_keys(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Normal"),
        ("TargetName", IQN),
        ("AuthMethod", "None"),
    ]);
    for round in 0..4u32 {
        let flags = LOGIN_T | (csg << 2) | STAGE_FULL_FEATURE;
        s.write_all(&login_pdu(flags, &text, 0x1000 + round, 1))
            .expect("send login");
        let p = match read_pdu(s) {
            Ok(Some(p)) => p,
            other => panic!(
                "login: no Login Response ({:?})\n--- daemon ---\n{}",
                other.map(|p| p.map(|p| p.opcode())),
                d.log()
            ),
        };
        assert_eq!(
            p.opcode(),
            OP_LOGIN_RESPONSE,
            "login: unexpected PDU {:#04x}",
            p.opcode()
        );
        assert_eq!(
            (p.bhs[36], p.bhs[37]),
            (0, 0),
            "login refused; target said {:?}",
            String::from_utf8_lossy(&p.data)
        );
        let statsn = u32::from_be_bytes([p.bhs[24], p.bhs[25], p.bhs[26], p.bhs[27]]);
        let transit = p.bhs[1] & LOGIN_T != 0;
        let nsg = p.bhs[1] & 0x03;
        if transit && nsg == STAGE_FULL_FEATURE {
            return (1, statsn.wrapping_add(1));
        }
        if transit {
            csg = nsg;
        }
        text = if csg == STAGE_OPERATIONAL {
            text_keys(&[("HeaderDigest", "None"), ("DataDigest", "None")])
        } else {
            Vec::new()
        };
    }
    panic!("login did not reach full feature phase in 4 rounds");
}

fn random_chunks(seed: u64, chunk: usize, total: usize) -> impl FnMut() -> Option<Vec<u8>> + Send {
    let mut rng = XorShift::new(seed);
    let mut sent = 0usize;
    move || {
        if sent >= total {
            return None;
        }
        sent += chunk;
        let mut v = vec![0u8; chunk];
        rng.fill(&mut v);
        Some(v)
    }
}

fn nothing_more() -> impl FnMut() -> Option<Vec<u8>> + Send {
    || None
}

#[test]
fn garbage_never_wins() {
    require("iscsi-ls");
    require_qemu_iscsi();
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, GIB);

    // A well-behaved initiator working on its own connection throughout.
    let lun = d.qemu_opts(IQN, 1, "");
    let bench = spawn_tool(
        "qemu-img",
        &[
            "bench",
            "-w",
            "-c",
            "60000",
            "-d",
            "8",
            "-s",
            "4096",
            "--image-opts",
            &lun,
        ],
    );

    // 50 connections that open and say nothing, held for the whole test.
    let silent: Vec<TcpStream> = (0..50).map(|_| connect(&d)).collect();

    // Every case runs even if an earlier one failed; failures are reported
    // together at the end, after the liveness checks.
    let mut failures = Vec::new();
    let mut record = |what: &str, end: Result<End, String>| {
        println!("{what}: {end:?}");
        if let Err(e) = end {
            failures.push(e);
        }
    };

    // 1. Random bytes instead of a Login Request (first byte forced to a
    //    non-login opcode so the case is what its name says).
    {
        let mut first = vec![0u8; 4096];
        XorShift::new(0xbad0_0001).fill(&mut first);
        first[0] = 0x7f;
        let e = send_and_expect_end(
            connect(&d),
            "random bytes",
            first,
            random_chunks(0xbad0_0002, 4096, 1 << 20),
        );
        record("random bytes", e);
    }

    // 2. A truncated BHS, then our side closes for writing.
    {
        let mut s = connect(&d);
        let bhs = login_bhs(LOGIN_T | STAGE_FULL_FEATURE, 0, 1, 1);
        s.write_all(&bhs[..20]).expect("send partial BHS");
        s.shutdown(Shutdown::Write).expect("shutdown write");
        let e = expect_end(&mut s, "truncated BHS");
        record("truncated BHS", e);
    }

    // 3. A Login Request announcing a 16 MiB - 1 data segment (beyond any
    //    MaxRecvDataSegmentLength, RFC 7143 §13.12) and sending none of it.
    {
        let first = login_bhs(LOGIN_T | STAGE_FULL_FEATURE, 0x00ff_ffff, 1, 1).to_vec();
        let e = send_and_expect_end(
            connect(&d),
            "DataSegmentLength 0xFFFFFF",
            first,
            nothing_more(),
        );
        record("DataSegmentLength 0xFFFFFF", e);
    }

    // 4. Before login: an unknown opcode, and a SCSI Command.
    {
        let mut b = login_bhs(0, 0, 1, 1);
        b[0] = IMMEDIATE | 0x0d;
        let e = send_and_expect_end(
            connect(&d),
            "unknown opcode before login",
            b.to_vec(),
            nothing_more(),
        );
        record("unknown opcode before login", e);

        let b = scsi_tur_bhs(1, 1, 0);
        let e = send_and_expect_end(
            connect(&d),
            "SCSI Command before login",
            b.to_vec(),
            nothing_more(),
        );
        record("SCSI Command before login", e);
    }

    // 5. Login text that never ends: Login Requests with C=1, 8 KiB of one
    //    key's value each, continued until the target gives up (cap 64 MiB).
    {
        let mut first = text_keys(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Normal"),
            ("TargetName", IQN),
        ]);
        first.extend_from_slice(b"X-rtgt-e2e-endless=");
        first.resize(8192, b'a');
        let flags = LOGIN_C | (STAGE_SECURITY << 2);
        let pdu0 = login_pdu(flags, &first, 1, 1);
        let mut n = 0u32;
        let more = move || {
            n += 1;
            (n < 8192).then(|| login_pdu(flags, &[b'a'; 8192], 1, 1))
        };
        let e = send_and_expect_end(connect(&d), "endless login text", pdu0, more);
        record("endless login text", e);
    }

    // 6. After a valid login: an unknown opcode, an AHS length beyond the
    //    PDU, and then random bytes.
    {
        let mut s = connect(&d);
        let (cmdsn, exp_statsn) = login(&d, &mut s);
        let mut b = scsi_tur_bhs(2, cmdsn, exp_statsn);
        b[0] = IMMEDIATE | 0x0d; // not an initiator opcode, RFC 7143 §11.2.1.2
        b[1] = 0x80;
        let e = send_and_expect_end(s, "unknown opcode after login", b.to_vec(), nothing_more());
        record("unknown opcode after login", e);
    }
    {
        let mut s = connect(&d);
        let (cmdsn, exp_statsn) = login(&d, &mut s);
        let mut pdu = scsi_tur_bhs(3, cmdsn, exp_statsn).to_vec();
        pdu[4] = 0xff; // TotalAHSLength: 1020 bytes follow
        let mut ahs = vec![0u8; 1020];
        // First AHS claims 0xFFFF bytes (RFC 7143 §11.2.2), far beyond the
        // 1020 bytes of TotalAHSLength.
        ahs[0] = 0xff;
        ahs[1] = 0xff;
        ahs[2] = 0x01; // extended CDB
        pdu.extend_from_slice(&ahs);
        let e = send_and_expect_end(s, "AHS beyond TotalAHSLength", pdu, nothing_more());
        record("AHS beyond TotalAHSLength", e);
    }
    {
        let mut s = connect(&d);
        login(&d, &mut s);
        let mut first = vec![0u8; 4096];
        XorShift::new(0xbad0_0003).fill(&mut first);
        let e = send_and_expect_end(
            s,
            "garbage after login",
            first,
            random_chunks(0xbad0_0004, 4096, 1 << 20),
        );
        record("garbage after login", e);
    }

    d.assert_alive("after the malformed connections");

    // The initiator that was busy all along finished cleanly.
    let out = bench.wait(Duration::from_secs(900));
    assert!(
        out.success(),
        "{}\n--- daemon ---\n{}",
        out.describe("qemu-img bench started before the garbage"),
        d.log()
    );

    // A new initiator still gets served, with the silent ones still open.
    let out = run_tool("iscsi-ls", &["-s", &d.url()], Duration::from_secs(120));
    assert!(
        out.success(),
        "{}",
        out.describe("iscsi-ls after the garbage")
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&format!("Target:{IQN} "))),
        "{}",
        out.describe("iscsi-ls after the garbage")
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("Lun:1") && l.contains("DIRECT_ACCESS")),
        "{}",
        out.describe("iscsi-ls after the garbage")
    );
    drop(silent);
    d.assert_alive("at the end");
    assert!(
        failures.is_empty(),
        "bad connections that were neither rejected nor closed:\n{}\n--- daemon ---\n{}",
        failures.join("\n"),
        d.log()
    );
}

/// A connection that opens and never sends a Login Request is closed by the
/// target's login timeout (15 s by default), and meanwhile does not keep
/// another initiator from logging in.
#[test]
fn silent_connection_is_closed_by_the_login_timeout() {
    require("iscsi-ls");
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, GIB);
    let mut silent = connect(&d);
    silent
        .set_read_timeout(Some(END_WAIT))
        .expect("set a read timeout");

    let out = run_tool("iscsi-ls", &["-s", &d.url()], Duration::from_secs(120));
    assert!(
        out.success(),
        "{}",
        out.describe("iscsi-ls beside a silent connection")
    );

    let mut byte = [0u8; 1];
    match silent.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Ok(_) => panic!("the target sent data to a connection that never logged in"),
        Err(e) => panic!(
            "a silent connection was still open after {END_WAIT:?} ({e}): no login timeout\n{}",
            d.log()
        ),
    }
    d.assert_alive("after the login timeout");
}

/// A logged-in peer that floods NOP-Out pings (RFC 7143 §11.18: each asks for
/// a NOP-In echo) and never reads the answers must not make the target queue
/// answers without bound: the target stops reading from it, its memory stays
/// bounded, and other initiators are still served.
#[test]
fn a_peer_that_never_reads_cannot_grow_the_target() {
    require("iscsi-ls");
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, GIB);
    let mut s = connect(&d);
    let (cmdsn, exp_statsn) = login(&d, &mut s);
    let before = rss_kib(d.pid());

    const PING: usize = 8192;
    // 2 GiB of pings if the target kept reading: far more than any socket
    // buffer, so only back-pressure keeps the target's memory flat.
    const PINGS: u32 = 256 * 1024;
    let writer = {
        let mut s = s.try_clone().expect("clone the socket");
        s.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        thread::spawn(move || {
            let payload = vec![0xa5u8; PING];
            let mut sent = 0u32;
            for itt in 1..=PINGS {
                let mut bhs = [0u8; BHS_LEN];
                bhs[0] = IMMEDIATE; // NOP-Out, opcode 0x00
                bhs[1] = 0x80;
                put_u24(&mut bhs[5..8], PING as u32);
                bhs[16..20].copy_from_slice(&itt.to_be_bytes());
                bhs[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
                bhs[24..28].copy_from_slice(&cmdsn.to_be_bytes());
                bhs[28..32].copy_from_slice(&exp_statsn.to_be_bytes());
                if s.write_all(&bhs)
                    .and_then(|_| s.write_all(&payload))
                    .is_err()
                {
                    break;
                }
                sent = itt;
            }
            sent
        })
    };
    let sent = writer.join().expect("writer thread");
    assert!(
        sent < PINGS,
        "the target read all {PINGS} pings of a peer that never read its answers"
    );
    let after = rss_kib(d.pid());
    assert!(
        after < before + 256 * 1024,
        "tgtd grew from {before} KiB to {after} KiB while a peer left {sent} pings unanswered"
    );
    let out = run_tool("iscsi-ls", &["-s", &d.url()], Duration::from_secs(120));
    assert!(
        out.success(),
        "{}",
        out.describe("iscsi-ls beside a flooding peer")
    );
    drop(s);
    d.assert_alive("after the flood");
}

/// Receive coalescing (`--iscsi rx_coalesce`) waits for a batch only while
/// the initiator is behind on our answers; an initiator that then stops
/// sending must still have its last commands read, when the wait runs out.
/// Bursts of TEST UNIT READY acknowledge nothing (ExpStatSN stays at its
/// login value), so once they are answered the initiator looks many answers
/// behind and the target waits for more; then one to three stragglers come,
/// fewer than it waits for. Every command must be answered, in order, and a
/// queue-depth-1 phase afterwards must run as usual.
#[test]
fn commands_short_of_a_coalescing_batch_are_still_answered() {
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, GIB);
    let mut s = connect(&d);
    let (mut cmdsn, login_statsn) = login(&d, &mut s);
    let mut itt = 0x100u32;
    let expect = |s: &mut TcpStream, itt: u32, what: &str| {
        let p = match read_pdu(s) {
            Ok(Some(p)) => p,
            other => panic!(
                "{what}: no answer to ITT {itt:#x} ({:?})\n--- daemon ---\n{}",
                other.map(|p| p.map(|p| p.opcode())),
                d.log()
            ),
        };
        assert_eq!(p.opcode(), 0x21, "{what}: SCSI Response expected");
        assert_eq!(
            u32::from_be_bytes([p.bhs[16], p.bhs[17], p.bhs[18], p.bhs[19]]),
            itt,
            "{what}: answers in order"
        );
        // (The first may carry the power-on UNIT ATTENTION: any status will do.)
    };
    for (burst, stragglers) in [(12u32, 1u32), (20, 3), (9, 2), (32, 1)] {
        let mut bytes = Vec::new();
        for _ in 0..burst {
            bytes.extend_from_slice(&scsi_tur_bhs(
                itt + bytes.len() as u32 / 48,
                cmdsn,
                login_statsn,
            ));
            cmdsn += 1;
        }
        s.write_all(&bytes).expect("send a burst");
        for i in 0..burst {
            expect(&mut s, itt + i, "burst");
        }
        itt += burst;
        // The target decides before it sleeps; give it the moment.
        thread::sleep(Duration::from_millis(5));
        for i in 0..stragglers {
            s.write_all(&scsi_tur_bhs(itt + i, cmdsn, login_statsn))
                .expect("send a straggler");
            cmdsn += 1;
        }
        for i in 0..stragglers {
            expect(&mut s, itt + i, "straggler");
        }
        itt += stragglers;
    }
    // Queue depth 1, every answer acknowledged.
    let mut statsn = None;
    for _ in 0..50 {
        let exp = statsn.map_or(login_statsn, |sn: u32| sn + 1);
        s.write_all(&scsi_tur_bhs(itt, cmdsn, exp)).expect("send");
        cmdsn += 1;
        let p = read_pdu(&mut s).expect("read").expect("an answer");
        assert_eq!(p.opcode(), 0x21);
        statsn = Some(u32::from_be_bytes([
            p.bhs[24], p.bhs[25], p.bhs[26], p.bhs[27],
        ]));
        itt += 1;
    }
    d.assert_alive("after the stragglers");
}

/// 10,000 connections that open and never send a byte must not keep a real
/// initiator out: past `max_pending_logins` (4,096, or half the open file
/// limit) the target closes the oldest connections still logging in, so
/// `iscsi-inq` logs in beside them and the daemon's memory stays bounded.
#[test]
fn stalled_connections_do_not_keep_an_initiator_out() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    require("iscsi-inq");
    // Our side needs a descriptor per connection too. Where the limit is
    // below 10,000 (+ room for the rest) we open what it allows: still more
    // than the daemon's cap (half the same limit), so the oldest are closed
    // all the same.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    let stalled_count = usize::try_from(hard.saturating_sub(256))
        .unwrap_or(usize::MAX)
        .min(10_000);
    let daemon_cap = (hard / 2).min(4096) as usize;
    assert!(
        stalled_count > daemon_cap,
        "the open file limit ({hard}) leaves too few connections to test"
    );
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, GIB);
    let before = rss_kib(d.pid());
    let addr = SocketAddr::from(([127, 0, 0, 1], d.port));
    let mut stalled = Vec::with_capacity(stalled_count);
    for _ in 0..stalled_count {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => stalled.push(s),
            Err(e) => panic!(
                "connection {} of {stalled_count} failed: {e}\n{}",
                stalled.len() + 1,
                d.log()
            ),
        }
    }
    let out = run_tool(
        "iscsi-inq",
        &[&format!("{}{IQN}/1", d.url())],
        Duration::from_secs(60),
    );
    assert!(
        out.success(),
        "{}\nbeside {} stalled connections\n{}",
        out.describe("iscsi-inq"),
        stalled.len(),
        d.log()
    );
    let grown = rss_kib(d.pid()).saturating_sub(before);
    // A few KiB per connection at most (~1 MiB per 100): a per-connection
    // receive buffer (64 KiB + a maximal PDU) would be gigabytes here.
    assert!(
        grown < 256 * 1024,
        "RSS grew by {grown} KiB with {} stalled connections",
        stalled.len()
    );
    drop(stalled);
    d.assert_alive("after the stalled connections");
}
