//! A stand-in for the reactor (crates/target/src/reactor.rs) around one
//! sans-IO [`Connection`]: it feeds bytes the way the reactor reads a socket
//! (short reads, write data received straight into a task's buffer), answers
//! every event the way the reactor does (accept or refuse the login, run and
//! complete commands, task management, SendTargets), and checks all that the
//! connection sends back and hands out.
//!
//! What it checks, beyond "no panic":
//! - the output is framed as RFC 7143 §11.2 says: target opcodes only,
//!   correct header and data digests once negotiated, zero padding, data
//!   segments within the initiator's MaxRecvDataSegmentLength (§13.12);
//! - StatSN goes up by one per response and ExpCmdSN never goes back, with
//!   MaxCmdSN never below ExpCmdSN - 1 (§4.2.2.1, §4.2.2.2);
//! - R2Ts ask for 1..=MaxBurstLength bytes (§11.8.5);
//! - with a CHAP policy, full feature phase is reached only after the
//!   initiator proved the account (§12.1.3), and the target's mutual CHAP
//!   answer is the right one;
//! - every buffer the connection took comes back (`shutdown` included).
//!
//! Fuzz inputs drive it frame by frame ([`Driver::frame`]):
//! - a frame of 48 bytes or more whose first byte has bit 7 clear is a PDU:
//!   its BHS, then TotalAHSLength × 4 bytes of AHS, then the data segment.
//!   The driver sets DataSegmentLength, adds digests once they are in force,
//!   and fills in fields holding [`NEXT`]: CmdSN, ExpStatSN, the TTT (and
//!   ITT and BufferOffset of a Data-Out) the target expects. In a Login
//!   Request, `CHAP_R=%` (hex) and `CHAP_R=%b` (base64) become the response
//!   of account `alice` to the target's challenge;
//! - a frame with bit 7 of its first byte set, or shorter than 48 bytes, is
//!   sent as it is, except the short ones `T<n>` (n seconds pass: timers
//!   run) and `C` (the "store" completes every command held).

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use rtgt_iscsi::connection::Transmit;
use rtgt_iscsi::params::IRRELEVANT;
use rtgt_iscsi::pdu::{
    crc32c_of, digest_from, pad4, Bhs, Opcode, BHS_LEN, DIGEST_LEN, RESERVED_TAG,
};
use rtgt_iscsi::{
    text, ChapPolicy, CommandResponse, Connection, Event, LoginAccept, LoginStatus, Residual,
    ScsiCommand, SendTargetsScope, SessionParams, SessionType, TargetConfig,
};

use crate::chap::{self, Challenge};
use crate::frame::{self, NEXT};

/// Serial number arithmetic (RFC 1982), as for CmdSN and StatSN.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// How the alloc callback of `handle_input` behaves (the reactor's pool
/// always gives a buffer; a failing or short one must be survived too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alloc {
    Always,
    FailEveryThird,
    ShortEveryThird,
}

/// The target's configuration and the driver's manners for one run.
#[derive(Clone, Debug)]
pub struct Setup {
    pub config: TargetConfig,
    /// `LoginAccept::chap` (see [`chap::policy`]).
    pub chap: Option<ChapPolicy>,
    /// Refuse the login at `Event::Login`.
    pub reject: bool,
    /// The target's own NOP-In settings, given before accepting the login
    /// as the reactor does (`Connection::set_nop`).
    pub nop: Option<(Option<Duration>, u32)>,
    /// Bytes per read (0: all at once).
    pub chunk: usize,
    /// Bytes per transmit call.
    pub trickle: usize,
    /// Receive write data into `placement_buffer` when offered, as the reactor does.
    pub placement: bool,
    pub alloc: Alloc,
}

impl Setup {
    /// Two input bytes choose everything:
    /// `a`: bits 0-1 CHAP policy, bits 2-4 all set: refuse the login,
    /// bit 4: the target's own NOP-In settings (pings every 3 s, one
    /// unanswered allowed, when bit 7 is set; none otherwise), bit 5 small
    /// limits, bit 6 digests refused, bit 7 no NOP-In pings by default;
    /// `b`: bits 0-2 read size, bits 3-4 write size, bit 5 placement,
    /// bits 6-7 alloc behaviour.
    pub fn from_bytes(a: u8, b: u8) -> Setup {
        let small = a & 0x20 != 0;
        let digests = a & 0x40 == 0;
        let config = TargetConfig {
            max_recv_data_segment_length: if small { 512 } else { 65536 },
            max_burst_length: if small { 1024 } else { 131_072 },
            first_burst_length: if small { 512 } else { 65536 },
            max_outstanding_r2t: if small { 1 } else { 4 },
            initial_r2t: small,
            immediate_data: !small,
            header_digest_crc32c: digests,
            data_digest_crc32c: digests,
            // Few and small buffers: a run must stay far below libFuzzer's
            // RSS limit however many commands it opens.
            queue_depth: if small { 4 } else { 16 },
            max_data_transfer: if small { 16 << 10 } else { 256 << 10 },
            login_timeout: Duration::from_secs(15),
            nop_interval: (a & 0x80 == 0).then_some(Duration::from_secs(5)),
            nop_count: 2,
            ..TargetConfig::default()
        };
        Setup {
            config,
            chap: chap::policy(a),
            reject: (a >> 2) & 7 == 7,
            nop: (a & 0x10 != 0).then(|| {
                let interval = (a & 0x80 != 0).then_some(Duration::from_secs(3));
                (interval, 1)
            }),
            // Odd sizes, so reads and writes end inside headers, data and
            // digests (a byte at a time finds no more, only slower).
            chunk: [0, 3, 7, 48, 61, 512, 1447, 4096][usize::from(b & 7)],
            trickle: [usize::MAX, 61, 1447, 4096][usize::from((b >> 3) & 3)],
            placement: b & 0x20 != 0,
            alloc: match b >> 6 {
                1 => Alloc::FailEveryThird,
                2 => Alloc::ShortEveryThird,
                _ => Alloc::Always,
            },
        }
    }
}

/// An in-memory socket that takes at most `max` bytes per call (partial
/// writes exercise the connection's output offsets).
struct Trickle<'a> {
    out: &'a mut Vec<u8>,
    max: usize,
}

impl Transmit for Trickle<'_> {
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>], _more: bool) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            let take = (self.max - n).min(b.len());
            self.out.extend_from_slice(&b[..take]);
            n += take;
            if n == self.max {
                break;
            }
        }
        Ok(n)
    }

    fn send_file(&mut self, _: BorrowedFd<'_>, _: u64, _: usize) -> io::Result<usize> {
        // The driver never completes a read from a file.
        Err(io::Error::other("no file data expected"))
    }
}

/// Largest read the driver answers with data (the reactor caps it too):
/// enough for many Data-In PDUs and bursts, small enough to keep runs fast.
const MAX_READ: usize = 64 << 10;

/// TSIH the driver's target gives the session.
const TSIH: u16 = 0x1234;

pub struct Driver {
    pub conn: Connection<Vec<u8>>,
    setup: Setup,
    now: Instant,
    /// Received bytes the connection has not consumed yet.
    rbuf: Vec<u8>,
    /// Commands at the "store": odd ITTs wait for a `C` frame or the end.
    pending: Vec<ScsiCommand<Vec<u8>>>,
    /// Buffers the connection holds now (alloc callback and completions in,
    /// events and `poll_free_buffer` out).
    lent: i64,
    allocs: u64,
    /// The session's values, once in full feature phase.
    params: Option<SessionParams>,
    /// The target's CHAP challenge; the initiator's (CHAP_I, CHAP_C) of the
    /// latest Login Request; whether it sent the right response.
    challenge: Option<Challenge>,
    mutual: Option<(u8, Vec<u8>)>,
    proved: bool,
    /// Values for [`NEXT`] fields.
    cmd_sn: u32,
    next_stat_sn: Option<u32>,
    last_ttt: u32,
    last_r2t: (u32, u32),
    /// Output checks: the latest ExpCmdSN, the largest MaxRecvDataSegmentLength
    /// of the initiator in force since the last output.
    exp_cmd_sn: Option<u32>,
    mrdsl: usize,
    failed: bool,
}

impl Driver {
    pub fn new(setup: Setup) -> Driver {
        let now = crate::epoch();
        Driver {
            conn: Connection::new(setup.config.clone(), now),
            setup,
            now,
            rbuf: Vec::new(),
            pending: Vec::new(),
            lent: 0,
            allocs: 0,
            params: None,
            challenge: None,
            mutual: None,
            proved: false,
            cmd_sn: 1,
            next_stat_sn: None,
            last_ttt: RESERVED_TAG,
            last_r2t: (RESERVED_TAG, 0),
            exp_cmd_sn: None,
            mrdsl: 8192,
            failed: false,
        }
    }

    /// The connection failed or closed: nothing more is read.
    pub fn is_done(&self) -> bool {
        self.failed || self.conn.is_closed()
    }

    /// Full feature phase was reached (a seed's intent, for the tests).
    pub fn reached_full_feature(&self) -> bool {
        self.params.is_some()
    }

    /// Header and data digests in force for the initiator's PDUs (§13.1:
    /// from the first PDU after the final Login Response).
    pub fn digests(&self) -> (bool, bool) {
        self.params
            .as_ref()
            .map_or((false, false), |p| (p.header_digest, p.data_digest))
    }

    /// Runs one frame of a fuzz input (see the module docs).
    pub fn frame(&mut self, f: &[u8]) {
        if self.is_done() {
            return;
        }
        match f {
            [] => {}
            [b'T', rest @ ..] if f.len() < BHS_LEN => {
                self.advance(rest.first().copied().unwrap_or(1))
            }
            [b'C'] => self.complete_pending(),
            _ if f.len() < BHS_LEN || f[0] & 0x80 != 0 => self.send(f),
            _ => self.structured(f),
        }
    }

    /// Sends one PDU, framed for the digests in force.
    pub fn pdu(&mut self, bhs: &Bhs, data: &[u8]) {
        let mut f = bhs.0.to_vec();
        f[4] = 0;
        f.extend_from_slice(data);
        self.structured(&f);
    }

    fn structured(&mut self, f: &[u8]) {
        let Some(mut bhs) = Bhs::from_prefix(f) else {
            return self.send(f);
        };
        let ahs_len = bhs.total_ahs_len().min(f.len() - BHS_LEN);
        let ahs = &f[BHS_LEN..BHS_LEN + ahs_len];
        let mut data = f[BHS_LEN + ahs_len..].to_vec();
        self.fill_in(&mut bhs);
        if bhs.opcode() == Opcode::LOGIN_REQUEST {
            data = self.login_text(&data);
        }
        let (hd, dd) = self.digests();
        let bytes = frame::frame(&bhs, ahs, &data, hd, dd);
        self.send(&bytes);
    }

    /// Replaces [`NEXT`] fields with what the target expects.
    fn fill_in(&mut self, b: &mut Bhs) {
        let op = b.opcode();
        if op != Opcode::SCSI_DATA_OUT && b.u32_at(24) == NEXT {
            b.set_u32(24, self.cmd_sn);
            // §4.2.2.1: an immediate request carries CmdSN without taking it.
            let ordered = matches!(
                op,
                Opcode::NOP_OUT
                    | Opcode::SCSI_COMMAND
                    | Opcode::TASK_MGMT_REQUEST
                    | Opcode::TEXT_REQUEST
                    | Opcode::LOGOUT_REQUEST
            );
            if ordered && !b.immediate() {
                self.cmd_sn = self.cmd_sn.wrapping_add(1);
            }
        }
        if b.u32_at(28) == NEXT {
            b.set_u32(28, self.next_stat_sn.unwrap_or(0));
        }
        let answers = matches!(
            op,
            Opcode::SCSI_DATA_OUT | Opcode::TEXT_REQUEST | Opcode::NOP_OUT
        );
        if answers && b.u32_at(20) == NEXT {
            b.set_u32(20, self.last_ttt);
        }
        if op == Opcode::SCSI_DATA_OUT {
            if b.itt() == NEXT {
                b.set_u32(16, self.last_r2t.0);
            }
            if b.u32_at(40) == NEXT {
                b.set_u32(40, self.last_r2t.1);
            }
        }
    }

    /// A Login Request's text with the CHAP placeholders answered; notes the
    /// initiator's own challenge for the mutual CHAP check.
    fn login_text(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 128);
        let (mut id, mut challenge) = (None, None);
        for (i, item) in data.split(|&b| b == 0).enumerate() {
            if i > 0 {
                out.push(0);
            }
            let answer = match item {
                b"CHAP_R=%" | b"CHAP_R=%b" => self.challenge.as_ref().and_then(|c| {
                    chap::response(c.algorithm, c.identifier, chap::SECRET.as_bytes(), &c.value)
                }),
                _ => None,
            };
            if let Some(r) = answer {
                let v = if item.len() == 8 {
                    chap::hex(&r)
                } else {
                    chap::base64(&r)
                };
                out.extend_from_slice(b"CHAP_R=");
                out.extend_from_slice(v.as_bytes());
                self.proved = true;
                continue;
            }
            if let Some(v) = item.strip_prefix(b"CHAP_I=") {
                // Plain decimal only: the oracle judges no other form.
                id = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|s| s.parse::<u8>().ok());
            }
            if let Some(v) = item.strip_prefix(b"CHAP_C=") {
                challenge = std::str::from_utf8(v).ok().and_then(chap::unhex);
            }
            out.extend_from_slice(item);
        }
        self.mutual = id.zip(challenge);
        out
    }

    /// `secs` seconds pass; timers fire as the reactor's would.
    fn advance(&mut self, secs: u8) {
        self.now += Duration::from_secs(u64::from(secs.max(1)));
        if let Some(deadline) = self.conn.poll_timeout() {
            if self.now >= deadline && self.conn.handle_timeout(self.now).is_err() {
                self.failed = true;
            }
        }
        self.pump();
    }

    /// Bytes from the initiator, read as the reactor reads them.
    pub fn send(&mut self, mut input: &[u8]) {
        let chunk = match self.setup.chunk {
            0 => usize::MAX,
            n => n,
        };
        while !input.is_empty() && !self.is_done() {
            if self.setup.placement {
                if let Some(dst) = self.conn.placement_buffer() {
                    // An empty buffer would read as end of stream.
                    assert!(!dst.is_empty(), "empty placement buffer");
                    let n = dst.len().min(input.len()).min(chunk);
                    dst[..n].copy_from_slice(&input[..n]);
                    self.conn.placed(n, self.now);
                    input = &input[n..];
                    self.pump();
                    continue;
                }
            }
            let n = input.len().min(chunk);
            self.rbuf.extend_from_slice(&input[..n]);
            input = &input[n..];
            self.receive();
        }
    }

    fn receive(&mut self) {
        let mode = self.setup.alloc;
        let mut allocs = self.allocs;
        let mut lent = 0;
        let r = self.conn.handle_input(&self.rbuf, self.now, &mut |n| {
            allocs += 1;
            let third = allocs.is_multiple_of(3);
            let b = match mode {
                Alloc::FailEveryThird if third => None,
                Alloc::ShortEveryThird if third => Some(vec![0u8; n / 2]),
                _ => Some(vec![0u8; n]),
            };
            lent += i64::from(b.is_some());
            b
        });
        self.allocs = allocs;
        self.lent += lent;
        match r {
            Ok(used) => {
                assert!(used <= self.rbuf.len(), "consumed more than given");
                self.rbuf.drain(..used);
            }
            Err(_) => self.failed = true,
        }
        self.pump();
    }

    /// Events, returned buffers and output, as the reactor handles them
    /// after each read.
    fn pump(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            self.on_event(ev);
        }
        while self.conn.poll_free_buffer().is_some() {
            self.lent -= 1;
        }
        let mut out = Vec::new();
        while self.conn.wants_write() {
            let mut t = Trickle {
                out: &mut out,
                max: self.setup.trickle,
            };
            let n = self.conn.transmit(&mut t).expect("in-memory transmit");
            assert!(n > 0, "output queued but nothing transmitted");
        }
        self.check_output(&out);
    }

    fn on_event(&mut self, ev: Event<Vec<u8>>) {
        match ev {
            Event::Login(info) => {
                assert!(self.params.is_none(), "login decision after login");
                assert!(!info.initiator_name.is_empty());
                if info.session_type == SessionType::Normal {
                    assert!(info.target_name.as_ref().is_some_and(|t| !t.is_empty()));
                }
                if self.setup.reject {
                    self.conn.reject_login(LoginStatus::AUTHORIZATION_FAILURE);
                } else {
                    if let Some((interval, count)) = self.setup.nop {
                        self.conn.set_nop(interval, count);
                    }
                    self.conn.accept_login(LoginAccept {
                        tsih: TSIH,
                        target_portal_group_tag: 1,
                        target_alias: Some("rtgt-fuzz".into()),
                        chap: self.setup.chap.clone(),
                    });
                }
            }
            Event::FullFeature(p) => {
                assert!(self.params.is_none(), "full feature phase twice");
                assert!(
                    !self.setup.reject,
                    "full feature phase after a refused login"
                );
                // RFC 7143 §12.1.3: no session for an initiator that did
                // not prove an account.
                if self.setup.chap.is_some() {
                    assert!(self.proved, "full feature phase without CHAP");
                }
                check_params(&p, &self.setup.config);
                assert_eq!(p.tsih, TSIH);
                self.params = Some(p);
            }
            Event::SendTargets(scope) => {
                // Enough targets to need continued Text Responses (§11.11.2).
                let n = if scope == SendTargetsScope::All {
                    24
                } else {
                    1
                };
                let targets: Vec<(String, Vec<String>)> = (0..n)
                    .map(|i| {
                        (
                            format!("iqn.2024-01.org.rtgt:fuzz-{i:03}"),
                            vec!["127.0.0.1:3260,1".into(), "[::1]:3260,1".into()],
                        )
                    })
                    .collect();
                self.conn.send_targets_response(&targets);
            }
            Event::Command(cmd) => {
                let p = self
                    .params
                    .as_ref()
                    .expect("a command before full feature phase");
                assert_eq!(
                    p.session_type,
                    SessionType::Normal,
                    "a command in discovery"
                );
                assert!((16..=32).contains(&cmd.cdb_len), "cdb_len {}", cmd.cdb_len);
                if let Some(b) = &cmd.data {
                    assert!(cmd.write, "data for a command without W");
                    assert!(b.len() >= cmd.expected_len as usize, "short write buffer");
                    self.lent -= 1;
                }
                if cmd.itt & 1 == 1 {
                    self.pending.push(cmd);
                } else {
                    self.complete(cmd);
                }
            }
            Event::TaskManagement(tm) => {
                // As the reactor does (SAM-5 §7, RFC 7143 §11.6.1).
                let response = match tm.function & 0x7f {
                    1 => u8::from(!self.conn.abort_task(tm.referenced_itt)),
                    2 | 4 | 5 => {
                        self.conn.abort_tasks(Some(tm.lun));
                        0
                    }
                    6 | 7 => {
                        self.conn.abort_tasks(None);
                        0
                    }
                    _ => 5,
                };
                self.conn.task_management_response(tm.itt, response);
            }
            Event::Logout { .. } => {}
            Event::AuthenticationFailed { .. } => {
                assert!(self.params.is_none(), "authentication failed after login");
            }
        }
    }

    /// The "store" answers a command: ITT bits 1-2 pick GOOD, CHECK
    /// CONDITION, a short read (underflow) or an overflow.
    fn complete(&mut self, cmd: ScsiCommand<Vec<u8>>) {
        let how = (cmd.itt >> 1) & 3;
        let expected = cmd.expected_len as usize;
        let (status, sense) = if how == 1 {
            // ILLEGAL REQUEST, INVALID FIELD IN CDB (SPC-4 §4.5.3).
            let mut s = vec![0u8; 18];
            s[0] = 0x70;
            s[2] = 0x05;
            s[7] = 10;
            s[12] = 0x24;
            (0x02, s)
        } else {
            (0x00, Vec::new())
        };
        let (data, data_len) = if cmd.read && expected > 0 {
            let len = if how == 2 { expected / 2 } else { expected }.min(MAX_READ);
            self.lent += 1;
            (Some(vec![0x5a; len]), len)
        } else if let Some(b) = cmd.data {
            self.lent += 1;
            (Some(b), 0)
        } else {
            (None, 0)
        };
        let residual = match how {
            2 => Residual::Underflow((expected - data_len) as u32),
            3 => Residual::Overflow(512),
            _ => Residual::None,
        };
        self.conn.complete_command(
            cmd.itt,
            CommandResponse {
                status,
                sense,
                data,
                data_len,
                residual,
            },
        );
    }

    fn complete_pending(&mut self) {
        for cmd in std::mem::take(&mut self.pending) {
            self.complete(cmd);
        }
        self.pump();
    }

    /// Ends the run as the reactor ends a connection: what the store still
    /// holds completes, then `shutdown` must hand back every buffer.
    pub fn finish(mut self) {
        self.complete_pending();
        self.conn.shutdown();
        while let Some(ev) = self.conn.poll_event() {
            if let Event::Command(ScsiCommand { data: Some(_), .. }) = ev {
                self.lent -= 1;
            }
        }
        while self.conn.poll_free_buffer().is_some() {
            self.lent -= 1;
        }
        assert_eq!(self.lent, 0, "buffers kept by the connection");
    }

    /// Splits the output into PDUs and checks each (see the module docs).
    fn check_output(&mut self, mut rest: &[u8]) {
        let (hd, dd) = self.digests();
        let mrdsl = self
            .conn
            .session_params()
            .initiator_max_recv_data_segment_length as usize;
        // A re-declaration in a Text Request may have lowered it after
        // earlier PDUs of this output were queued.
        let limit = self.mrdsl.max(mrdsl).max(512);
        self.mrdsl = mrdsl;
        while !rest.is_empty() {
            let bhs = Bhs::from_prefix(rest).expect("output ends inside a BHS");
            // Login Responses precede digests (§13.1).
            let digests = bhs.opcode() != Opcode::LOGIN_RESPONSE;
            assert_eq!(bhs.total_ahs_len(), 0, "AHS in a target PDU");
            let mut at = BHS_LEN;
            if hd && digests {
                let d = rest.get(at..at + DIGEST_LEN).expect("header digest");
                let d = digest_from(d.try_into().expect("4 bytes"));
                assert_eq!(d, crc32c_of(&[&rest[..BHS_LEN]]), "header digest");
                at += DIGEST_LEN;
            }
            let dsl = bhs.data_segment_len();
            let padded = rest.get(at..at + pad4(dsl)).expect("data segment");
            assert!(padded[dsl..].iter().all(|&b| b == 0), "padding not zero");
            at += pad4(dsl);
            if dd && digests && dsl > 0 {
                let d = rest.get(at..at + DIGEST_LEN).expect("data digest");
                let d = digest_from(d.try_into().expect("4 bytes"));
                assert_eq!(d, crc32c_of(&[padded]), "data digest");
                at += DIGEST_LEN;
            }
            self.check_pdu(&bhs, &padded[..dsl], limit);
            rest = &rest[at..];
        }
    }

    fn check_pdu(&mut self, bhs: &Bhs, data: &[u8], mrdsl: usize) {
        let op = bhs.opcode();
        let status = bhs.flags() & 0x01 != 0;
        // §4.2.2.2: StatSN goes up by one per response; R2T and a ping
        // carry the next one without taking it; Data-In only with status.
        let takes = match op {
            Opcode::LOGIN_RESPONSE
            | Opcode::SCSI_RESPONSE
            | Opcode::TASK_MGMT_RESPONSE
            | Opcode::TEXT_RESPONSE
            | Opcode::LOGOUT_RESPONSE
            | Opcode::REJECT => Some(true),
            Opcode::NOP_IN => Some(bhs.itt() != RESERVED_TAG),
            Opcode::SCSI_DATA_IN => status.then_some(true),
            Opcode::R2T => Some(false),
            _ => panic!("target sent {op:?}"),
        };
        if let Some(takes) = takes {
            let sn = bhs.u32_at(24);
            if let Some(next) = self.next_stat_sn {
                assert_eq!(sn, next, "StatSN of {op:?}");
            }
            self.next_stat_sn = Some(if takes { sn.wrapping_add(1) } else { sn });
        }
        // §4.2.2.1: ExpCmdSN never goes back; MaxCmdSN >= ExpCmdSN - 1.
        let (exp, max) = (bhs.u32_at(28), bhs.u32_at(32));
        if let Some(last) = self.exp_cmd_sn {
            assert!(!sn_lt(exp, last), "ExpCmdSN went back: {last} -> {exp}");
        }
        self.exp_cmd_sn = Some(exp);
        assert!(
            (max.wrapping_sub(exp).wrapping_add(1) as i32) >= 0,
            "MaxCmdSN {max} below ExpCmdSN {exp} - 1"
        );
        if sn_lt(self.cmd_sn, exp) {
            self.cmd_sn = exp;
        }
        let dsl = data.len();
        match op {
            Opcode::LOGIN_RESPONSE => {
                assert!(dsl <= 8192, "Login Response of {dsl} bytes");
                self.login_response(data);
            }
            Opcode::SCSI_DATA_IN | Opcode::NOP_IN | Opcode::TEXT_RESPONSE => {
                assert!(dsl <= mrdsl, "{op:?} of {dsl} bytes, limit {mrdsl}");
            }
            Opcode::REJECT => assert_eq!(dsl, BHS_LEN, "Reject carries the BHS"),
            Opcode::SCSI_RESPONSE if dsl > 0 => {
                // §11.4.7: SenseLength, then the sense data.
                let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
                assert!(2 + n <= dsl, "SenseLength {n} in {dsl} bytes");
            }
            _ => {}
        }
        match op {
            Opcode::R2T => {
                // §11.8.5: 0 < DesiredDataTransferLength <= MaxBurstLength.
                let len = bhs.u32_at(44);
                let burst = self.params.as_ref().map_or(0, |p| p.max_burst_length);
                assert!(
                    len > 0 && len <= burst,
                    "R2T for {len} bytes, burst {burst}"
                );
                self.last_ttt = bhs.u32_at(20);
                self.last_r2t = (bhs.itt(), bhs.u32_at(40));
            }
            Opcode::TEXT_RESPONSE => {
                // §11.11.1: F and C are never both set.
                assert_ne!(bhs.flags() & 0xc0, 0xc0, "Text Response with F and C");
                self.last_ttt = bhs.u32_at(20);
            }
            Opcode::NOP_IN if bhs.itt() == RESERVED_TAG => {
                assert_ne!(bhs.u32_at(20), RESERVED_TAG, "ping without a TTT");
                self.last_ttt = bhs.u32_at(20);
            }
            Opcode::SCSI_DATA_IN if status => {
                // §11.7.1: S only with F.
                assert!(bhs.final_bit(), "Data-In with S but not F");
            }
            _ => {}
        }
    }

    /// Keys of a Login Response: the target's challenge, and its answer to
    /// ours under mutual CHAP (RFC 1994 §4.1).
    fn login_response(&mut self, data: &[u8]) {
        let pairs = text::parse(data).expect("Login Response text parses");
        let get = |k: &str| pairs.iter().find(|p| p.key == k).map(|p| p.value.as_str());
        if self.setup.chap.is_none() {
            // No CHAP required: AuthMethod=None makes CHAP keys moot (§6.2),
            // and nothing is ever challenged.
            let chap_key =
                |k: &str| matches!(k, "CHAP_A" | "CHAP_I" | "CHAP_C" | "CHAP_N" | "CHAP_R");
            for p in pairs.iter().filter(|p| chap_key(&p.key)) {
                assert_eq!(p.value, IRRELEVANT, "{p:?} without a CHAP policy");
            }
            return;
        }
        if let (Some(a), Some(i), Some(c)) = (get("CHAP_A"), get("CHAP_I"), get("CHAP_C")) {
            let c = chap::unhex(c).expect("CHAP_C in 0x form");
            assert!(c.len() >= 16, "CHAP challenge of {} bytes", c.len());
            self.challenge = Some(Challenge {
                algorithm: a.parse().expect("CHAP_A number"),
                identifier: i.parse().expect("CHAP_I number"),
                value: c,
            });
        }
        if let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) {
            let ours = self
                .setup
                .chap
                .as_ref()
                .and_then(|p| p.outgoing.clone())
                .expect("mutual CHAP answered without an outgoing account");
            assert_eq!(n, ours.user);
            if let (Some((id, theirs)), Some(c)) = (&self.mutual, &self.challenge) {
                let want = chap::response(c.algorithm, *id, ours.secret.as_bytes(), theirs)
                    .expect("known algorithm");
                assert_eq!(r, chap::hex(&want), "mutual CHAP_R");
            }
        }
    }
}

/// The values of a session must stay within what RFC 7143 §13 and the
/// target's configuration allow.
pub fn check_params(p: &SessionParams, cfg: &TargetConfig) {
    let lengths = 512..=16_777_215;
    assert!(lengths.contains(&p.initiator_max_recv_data_segment_length));
    assert!(lengths.contains(&p.max_burst_length));
    assert!(p.first_burst_length <= p.max_burst_length, "{p:?}");
    assert_eq!(
        p.max_recv_data_segment_length,
        cfg.max_recv_data_segment_length
    );
    assert!(p.max_outstanding_r2t >= 1);
    assert!(p.max_connections >= 1 && p.max_connections <= cfg.max_connections.max(1));
    assert!(p.error_recovery_level <= cfg.error_recovery_level);
    assert!(!p.header_digest || cfg.header_digest_crc32c);
    assert!(!p.data_digest || cfg.data_digest_crc32c);
    assert!(p.default_time2wait <= 3600 && p.default_time2retain <= 3600);
}
