//! A raw iSCSI initiator over `std::net`, for tests that must behave in ways
//! no initiator tool does (vanish in the middle of a write, send half a PDU):
//! builders for the few PDUs they send, a bounded PDU reader, and a login
//! that negotiates chosen operational keys (RFC 7143).
//!
//! Everything returns `Err(String)` rather than panicking, so a test may run
//! it on worker threads and report which connection failed.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const BHS_LEN: usize = 48;

/// Opcodes, RFC 7143 §11.2.1.2.
pub const OP_SCSI_COMMAND: u8 = 0x01;
pub const OP_LOGIN_REQUEST: u8 = 0x03;
pub const OP_SCSI_DATA_OUT: u8 = 0x05;
pub const OP_SCSI_RESPONSE: u8 = 0x21;
pub const OP_LOGIN_RESPONSE: u8 = 0x23;
pub const OP_SCSI_DATA_IN: u8 = 0x25;
pub const OP_R2T: u8 = 0x31;
pub const OP_REJECT: u8 = 0x3f;
pub const IMMEDIATE: u8 = 0x40;

/// SCSI Command flags, RFC 7143 §11.3.1: F, R, W.
pub const CMD_FINAL: u8 = 0x80;
pub const CMD_READ: u8 = 0x40;
pub const CMD_WRITE: u8 = 0x20;
/// Task attribute Simple (§11.3.1.3).
const ATTR_SIMPLE: u8 = 0x01;

/// Login flags and stages, RFC 7143 §11.12.2: T (transit), CSG, NSG.
const LOGIN_T: u8 = 0x80;
const STAGE_SECURITY: u8 = 0;
const STAGE_OPERATIONAL: u8 = 1;
const STAGE_FULL_FEATURE: u8 = 3;
/// CmdSN of the login, which is immediate: the first command after it
/// carries the same CmdSN (RFC 7143 §11.12).
const LOGIN_CMD_SN: u32 = 1;

/// Bound on any single read or write of a connection.
pub const IO_WAIT: Duration = Duration::from_secs(20);
/// Largest data segment accepted from the target.
const MAX_SEGMENT: usize = 1 << 20;

/// One PDU from the target: its BHS and its data segment (AHS dropped).
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub data: Vec<u8>,
}

impl Pdu {
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    /// The big-endian 32-bit field at byte `at` of the BHS.
    pub fn field(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[at],
            self.bhs[at + 1],
            self.bhs[at + 2],
            self.bhs[at + 3],
        ])
    }

    pub fn itt(&self) -> u32 {
        self.field(16)
    }
}

/// An R2T (RFC 7143 §11.8): the task, its Target Transfer Tag, and the
/// range of the task's data it asks for.
#[derive(Clone, Copy, Debug)]
pub struct R2t {
    pub itt: u32,
    pub ttt: u32,
    pub offset: u32,
    pub len: u32,
}

impl R2t {
    pub fn from_pdu(p: &Pdu) -> Option<R2t> {
        (p.opcode() == OP_R2T).then(|| R2t {
            itt: p.itt(),
            ttt: p.field(20),
            offset: p.field(40),
            len: p.field(44),
        })
    }
}

fn put_u24(b: &mut [u8], v: u32) {
    b[..3].copy_from_slice(&v.to_be_bytes()[1..]);
}

fn text_keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(format!("{k}={val}\0").as_bytes());
    }
    v
}

fn parse_keys(data: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    data.split(|&b| b == 0).filter_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        let (k, v) = kv.split_once('=')?;
        Some((k.to_string(), v.to_string()))
    })
}

/// Connects to the portal on 127.0.0.1:`port`, every read and write bounded
/// by [`IO_WAIT`].
pub fn connect(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, IO_WAIT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(IO_WAIT))
        .and_then(|_| s.set_write_timeout(Some(IO_WAIT)))
        .and_then(|_| s.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(s)
}

/// Reads one PDU; `Ok(None)` when the target closed (FIN or RST).
pub fn read_pdu(s: &mut TcpStream) -> Result<Option<Pdu>, String> {
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        )
    };
    let mut bhs = [0u8; BHS_LEN];
    match s.read_exact(&mut bhs) {
        Err(e) if closed(&e) => return Ok(None),
        Err(e) => return Err(format!("read a BHS: {e}")),
        Ok(()) => {}
    }
    let ahs = usize::from(bhs[4]) * 4;
    let dsl = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    if dsl > MAX_SEGMENT {
        return Err(format!("the target sent a {dsl}-byte data segment"));
    }
    let mut rest = vec![0u8; ahs + dsl.div_ceil(4) * 4];
    match s.read_exact(&mut rest) {
        Err(e) if closed(&e) => return Ok(None),
        Err(e) => return Err(format!("read a PDU's body: {e}")),
        Ok(()) => {}
    }
    rest.truncate(ahs + dsl);
    rest.drain(..ahs);
    Ok(Some(Pdu { bhs, data: rest }))
}

/// Who logs in to what, with which operational keys (RFC 7143 §13) offered
/// beside HeaderDigest=None and DataDigest=None.
pub struct LoginParams<'a> {
    pub initiator: &'a str,
    pub target: &'a str,
    /// Distinct per session, or the target reinstates (ends) the session
    /// that had it (§6.3.5).
    pub isid: [u8; 6],
    pub operational: &'a [(&'a str, &'a str)],
}

/// A session in full feature phase: the CmdSN of its first command, the
/// ExpStatSN to send, and every key the target answered during login.
pub struct Session {
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub keys: Vec<(String, String)>,
}

impl Session {
    /// The value the target answered for `key`, if it did.
    pub fn key(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A Login Request (RFC 7143 §11.12), TSIH 0 (a new session), CID 0.
fn login_pdu(flags: u8, isid: [u8; 6], text: &[u8], exp_stat_sn: u32) -> Vec<u8> {
    let mut v = vec![0u8; BHS_LEN];
    v[0] = IMMEDIATE | OP_LOGIN_REQUEST;
    v[1] = flags;
    put_u24(&mut v[5..8], text.len() as u32);
    v[8..14].copy_from_slice(&isid);
    v[16..20].copy_from_slice(&1u32.to_be_bytes()); // ITT
    v[24..28].copy_from_slice(&LOGIN_CMD_SN.to_be_bytes());
    v[28..32].copy_from_slice(&exp_stat_sn.to_be_bytes());
    v.extend_from_slice(text);
    v.resize(v.len().div_ceil(4) * 4, 0);
    v
}

/// Logs in without authentication: security stage, then the operational
/// stage with `p.operational`, then full feature phase.
pub fn login(s: &mut TcpStream, p: &LoginParams) -> Result<Session, String> {
    let mut csg = STAGE_SECURITY;
    let mut text = text_keys(&[
        ("InitiatorName", p.initiator),
        ("SessionType", "Normal"),
        ("TargetName", p.target),
        ("AuthMethod", "None"),
    ]);
    let mut offered = false;
    let mut exp_stat_sn = 0;
    let mut keys = Vec::new();
    for _ in 0..4 {
        let nsg = if csg == STAGE_SECURITY {
            STAGE_OPERATIONAL
        } else {
            STAGE_FULL_FEATURE
        };
        s.write_all(&login_pdu(
            LOGIN_T | (csg << 2) | nsg,
            p.isid,
            &text,
            exp_stat_sn,
        ))
        .map_err(|e| format!("send a Login Request: {e}"))?;
        let r = read_pdu(s)?.ok_or("the target closed the connection during login")?;
        if r.opcode() != OP_LOGIN_RESPONSE {
            return Err(format!(
                "login: PDU {:#04x} instead of a Login Response",
                r.opcode()
            ));
        }
        if (r.bhs[36], r.bhs[37]) != (0, 0) {
            return Err(format!(
                "login refused: status {:#04x}/{:#04x}",
                r.bhs[36], r.bhs[37]
            ));
        }
        exp_stat_sn = r.field(24).wrapping_add(1);
        keys.extend(parse_keys(&r.data));
        let next = r.bhs[1] & 0x03;
        if r.bhs[1] & LOGIN_T != 0 {
            if next == STAGE_FULL_FEATURE {
                return Ok(Session {
                    cmd_sn: LOGIN_CMD_SN,
                    exp_stat_sn,
                    keys,
                });
            }
            csg = next;
        }
        text = if csg == STAGE_OPERATIONAL && !offered {
            offered = true;
            let mut ops = vec![("HeaderDigest", "None"), ("DataDigest", "None")];
            ops.extend_from_slice(p.operational);
            text_keys(&ops)
        } else {
            Vec::new()
        };
    }
    Err("login did not reach full feature phase in 4 exchanges".into())
}

/// A SCSI Command BHS (RFC 7143 §11.3) to LUN 1, task attribute Simple,
/// without immediate data: `flags` are F/R/W, `edtl` the Expected Data
/// Transfer Length.
pub fn scsi_command(
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    flags: u8,
    edtl: u32,
    cdb: &[u8],
) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[0] = OP_SCSI_COMMAND;
    b[1] = flags | ATTR_SIMPLE;
    b[9] = 1; // LUN 1, peripheral device addressing (SAM-5 §4.7)
    b[16..20].copy_from_slice(&itt.to_be_bytes());
    b[20..24].copy_from_slice(&edtl.to_be_bytes());
    b[24..28].copy_from_slice(&cmd_sn.to_be_bytes());
    b[28..32].copy_from_slice(&exp_stat_sn.to_be_bytes());
    b[32..32 + cdb.len()].copy_from_slice(cdb);
    b
}

/// A SCSI Data-Out BHS (RFC 7143 §11.7) answering `r2t`: `dsl` bytes at
/// `offset`, the F bit on the last PDU of the sequence.
pub fn data_out(
    r2t: &R2t,
    exp_stat_sn: u32,
    data_sn: u32,
    offset: u32,
    dsl: u32,
    final_bit: bool,
) -> [u8; BHS_LEN] {
    let mut b = [0u8; BHS_LEN];
    b[0] = OP_SCSI_DATA_OUT;
    b[1] = if final_bit { 0x80 } else { 0 };
    put_u24(&mut b[5..8], dsl);
    b[9] = 1; // LUN 1
    b[16..20].copy_from_slice(&r2t.itt.to_be_bytes());
    b[20..24].copy_from_slice(&r2t.ttt.to_be_bytes());
    b[28..32].copy_from_slice(&exp_stat_sn.to_be_bytes());
    b[36..40].copy_from_slice(&data_sn.to_be_bytes());
    b[40..44].copy_from_slice(&offset.to_be_bytes());
    b
}

/// READ(10) or WRITE(10) (SBC-3): `opcode` 0x28 or 0x2a.
fn cdb10(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// READ(10) (SBC-3) of `blocks` blocks at `lba`.
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    cdb10(0x28, lba, blocks)
}

/// WRITE(10) (SBC-3) of `blocks` blocks at `lba`.
pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    cdb10(0x2a, lba, blocks)
}

/// WRITE(16) (SBC-3) of `blocks` blocks at `lba`.
pub fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Resident set size of process `pid` in KiB (VmRSS), 0 if unknown.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
