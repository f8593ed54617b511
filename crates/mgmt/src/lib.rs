//! rtgt-mgmt: tgt's management wire protocol, its `--op show` text layouts and
//! the `tgtadm` client.
//!
//! tgt's `tgtadm` talks to `tgtd` over a unix stream socket. A request is a
//! fixed 120-byte `struct tgtadm_req` (host byte order, x86-64 layout, see
//! tgt `usr/tgtadm.h`) followed by an optional NUL-terminated `key=value`
//! text body; `len` covers both. The reply is an 8-byte `struct tgtadm_rsp`
//! (`err`, `len`) followed, on success, by a NUL-terminated text body that
//! `tgtadm` prints verbatim. There is no RFC for this protocol: the layouts
//! here were read from tgt 1.0.85 and checked byte for byte against Debian's
//! `/usr/sbin/tgtadm` and `/usr/sbin/tgtd` (see `tests/`).

use std::io::{Read, Write};
use std::path::PathBuf;

pub mod cli;
pub mod show;

/// Default socket directory and prefix, tgt's `TGT_IPC_NAMESPACE` in 1.0.85.
pub const DEFAULT_SOCKET_PREFIX: &str = "/var/run/tgtd/socket";
/// Environment variable that overrides [`DEFAULT_SOCKET_PREFIX`] (tgt 1.0.85 `tgtadm.c`).
pub const SOCKET_ENV: &str = "TGT_IPC_SOCKET";

/// tgt's socket: `$TGT_IPC_SOCKET` (or `/var/run/tgtd/socket`) + `"."` + control port.
///
/// tgtadm 1.0.85 formats it as `"%s.%d"` from the (signed short) control
/// port; an empty `TGT_IPC_SOCKET` still counts as set, as with `getenv`.
pub fn socket_path(control_port: u16) -> PathBuf {
    let prefix = std::env::var_os(SOCKET_ENV)
        .unwrap_or_else(|| std::ffi::OsString::from(DEFAULT_SOCKET_PREFIX));
    let mut p = prefix;
    p.push(format!(".{control_port}"));
    PathBuf::from(p)
}

/// tgt's `GLOBAL_TID` (`~0U` stored in the signed `tid` field): account
/// bindings that apply to every target.
pub const GLOBAL_TID: i32 = -1;
/// tgtadm's "no --lun given" value (`UINT64_MAX`).
pub const NO_LUN: u64 = u64::MAX;

/// Size of `struct tgtadm_req` on the wire (tgt 1.0.85, x86-64).
pub const REQ_HEADER_LEN: usize = 120;
/// Size of `struct tgtadm_rsp` on the wire.
pub const RSP_HEADER_LEN: usize = 8;
/// `TGT_LLD_NAME_LEN`: the fixed, NUL-padded `lld` field.
pub const LLD_NAME_LEN: usize = 64;
/// Largest request (header + body) [`read_request`] accepts. tgtd itself
/// refuses bodies over 8 KiB (`MAX_MGT_BUFSIZE`); we are a bit more lenient.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;
/// Largest response body [`read_response`] accepts: a `show` of many targets
/// can be long, but a peer must not make us allocate without bound.
pub const MAX_RESPONSE_LEN: usize = 64 * 1024 * 1024;

/// tgt's `enum tgtadm_mode`, same numeric values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    System,
    Target,
    Device,
    Portal,
    Lld,
    Session,
    Connection,
    Account,
}

impl Mode {
    /// Every mode, in wire order.
    pub const ALL: [Mode; 8] = [
        Mode::System,
        Mode::Target,
        Mode::Device,
        Mode::Portal,
        Mode::Lld,
        Mode::Session,
        Mode::Connection,
        Mode::Account,
    ];

    /// The wire value (`MODE_SYSTEM` = 0 ... `MODE_ACCOUNT` = 7).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Decode a wire value; `None` for values tgt does not define.
    pub fn from_code(code: u32) -> Option<Mode> {
        Mode::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// tgt's `enum tgtadm_op`, same numeric values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    New,
    Delete,
    Show,
    Bind,
    Unbind,
    Update,
    Stats,
    Start,
    Stop,
}

impl Op {
    /// Every operation, in wire order.
    pub const ALL: [Op; 9] = [
        Op::New,
        Op::Delete,
        Op::Show,
        Op::Bind,
        Op::Unbind,
        Op::Update,
        Op::Stats,
        Op::Start,
        Op::Stop,
    ];

    /// The wire value (`OP_NEW` = 0 ... `OP_STOP` = 8).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Decode a wire value; `None` for values tgt does not define.
    pub fn from_code(code: u32) -> Option<Op> {
        Op::ALL.get(usize::try_from(code).ok()?).copied()
    }
}

/// A decoded struct tgtadm_req plus its text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub mode: Mode,
    pub op: Op,
    pub lld: String,
    pub tid: i32,
    pub sid: u64,
    pub lun: u64,
    pub cid: u32,
    pub host_no: u32,
    pub device_type: u32,
    pub ac_dir: u32,
    pub pack: u32,
    pub force: u32,
    /// The key=value text that follows the struct, exactly as tgt's tgtadm sends it.
    /// On the wire it carries one trailing NUL, which is not part of this string.
    pub body: String,
}

impl Request {
    /// A request with tgtadm's defaults for everything but mode and op
    /// (`tid` -1, `lun` [`NO_LUN`], device type disk, incoming account).
    pub fn new(mode: Mode, op: Op) -> Request {
        Request {
            mode,
            op,
            lld: String::new(),
            tid: -1,
            sid: 0,
            lun: NO_LUN,
            cid: 0,
            host_no: 0,
            device_type: 0,
            ac_dir: 0,
            pack: 0,
            force: 0,
            body: String::new(),
        }
    }

    /// key=value pairs of the body as tgt's server parses them (separator rules from tgt's mgmt.c).
    ///
    /// tgtadm joins its items with `,` (`concat_delim`); tgtd splits them with
    /// `strsep(",")` and each item at its first `=`. The `--params` text is
    /// sent as `targetOps k=v,k=v,` (or `portalOps ...` in portal mode); its
    /// prefix is dropped so its pairs come out like the others. Items without
    /// `=` and empty items are skipped, as tgtd does.
    pub fn params(&self) -> Vec<(String, String)> {
        parse_params(&self.body)
    }

    /// The value of the first `key` in [`Request::params`].
    pub fn param(&self, key: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Split a tgtadm body into `(key, value)` pairs; see [`Request::params`].
pub fn parse_params(body: &str) -> Vec<(String, String)> {
    body.split(',')
        .filter_map(|item| {
            let item = item
                .strip_prefix("targetOps ")
                .or_else(|| item.strip_prefix("portalOps "))
                .unwrap_or(item);
            let (k, v) = item.split_once('=')?;
            let k = k.trim();
            if k.is_empty() {
                return None;
            }
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// tgt's enum tgtadm_errno, same numeric values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TgtadmError {
    Success,
    UnknownErr,
    NoMem,
    NoDriver,
    NoTarget,
    NoLun,
    NoSession,
    NoConnection,
    NoBinding,
    TargetExist,
    /// 10 in tgt 1.0.85 (before BINDING_EXIST), checked against Debian's tgtadm.
    LunExist,
    BindingExist,
    AclExist,
    AclNoExist,
    UserExist,
    NoUser,
    TooManyUser,
    InvalidRequest,
    OutAccountExist,
    TargetActive,
    LunActive,
    DriverActive,
    UnsupportedOperation,
    UnknownParam,
    PreventRemoval,
}

impl TgtadmError {
    /// The defined errors, in wire order (`TGTADM_SUCCESS` = 0 ...).
    pub const ALL: [TgtadmError; 25] = [
        TgtadmError::Success,
        TgtadmError::UnknownErr,
        TgtadmError::NoMem,
        TgtadmError::NoDriver,
        TgtadmError::NoTarget,
        TgtadmError::NoLun,
        TgtadmError::NoSession,
        TgtadmError::NoConnection,
        TgtadmError::NoBinding,
        TgtadmError::TargetExist,
        TgtadmError::LunExist,
        TgtadmError::BindingExist,
        TgtadmError::AclExist,
        TgtadmError::AclNoExist,
        TgtadmError::UserExist,
        TgtadmError::NoUser,
        TgtadmError::TooManyUser,
        TgtadmError::InvalidRequest,
        TgtadmError::OutAccountExist,
        TgtadmError::TargetActive,
        TgtadmError::LunActive,
        TgtadmError::DriverActive,
        TgtadmError::UnsupportedOperation,
        TgtadmError::UnknownParam,
        TgtadmError::PreventRemoval,
    ];

    /// The wire value.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Decode a wire value; values tgt 1.0.85 does not define become
    /// [`TgtadmError::UnknownErr`] (use [`message_for_code`] to print them as tgtadm does).
    pub fn from_code(code: u32) -> TgtadmError {
        usize::try_from(code)
            .ok()
            .and_then(|i| TgtadmError::ALL.get(i).copied())
            .unwrap_or(TgtadmError::UnknownErr)
    }

    /// tgt's message, e.g. NoTarget -> "can't find the target" (tgtadm prints "tgtadm: " + this).
    pub fn message(self) -> &'static str {
        match self {
            TgtadmError::Success => "success",
            TgtadmError::UnknownErr => "unknown error",
            TgtadmError::NoMem => "out of memory",
            TgtadmError::NoDriver => "can't find the driver",
            TgtadmError::NoTarget => "can't find the target",
            TgtadmError::NoLun => "can't find the logical unit",
            TgtadmError::NoSession => "can't find the session",
            TgtadmError::NoConnection => "can't find the connection",
            TgtadmError::NoBinding => "can't find the binding",
            TgtadmError::TargetExist => "this target already exists",
            TgtadmError::BindingExist => "this binding already exists",
            TgtadmError::LunExist => "this logical unit number already exists",
            TgtadmError::AclExist => "this access control rule already exists",
            TgtadmError::AclNoExist => "this access control rule does not exist",
            TgtadmError::UserExist => "this account already exists",
            TgtadmError::NoUser => "can't find the account",
            TgtadmError::TooManyUser => "too many accounts",
            TgtadmError::InvalidRequest => "invalid request",
            TgtadmError::OutAccountExist => "this target already has an outgoing account",
            TgtadmError::TargetActive => "this target is still active",
            TgtadmError::LunActive => "this logical unit is still active",
            TgtadmError::DriverActive => "this driver is busy",
            TgtadmError::UnsupportedOperation => "this operation isn't supported",
            TgtadmError::UnknownParam => "unknown parameter",
            TgtadmError::PreventRemoval => "this device has Prevent Removal set",
        }
    }
}

/// tgtadm's text for a raw `err` value, including "(unknown tgtadm_errno)"
/// for codes tgt does not define (tgtadm.c `tgtadm_strerror`).
pub fn message_for_code(code: u32) -> &'static str {
    match usize::try_from(code)
        .ok()
        .and_then(|i| TgtadmError::ALL.get(i))
    {
        Some(e) => e.message(),
        None => "(unknown tgtadm_errno)",
    }
}

impl std::fmt::Display for TgtadmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TgtadmError {}

/// A decoded struct tgtadm_rsp plus its text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub err: TgtadmError,
    /// Text printed by tgtadm (only sent when `err` is `Success`).
    pub body: String,
}

/// Why a request or response could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream before a whole message arrived.
    #[error("truncated message")]
    Truncated,
    /// The request was read whole, but its mode is not one tgt defines.
    #[error("unknown mode {0}")]
    BadMode(u32),
    /// The request was read whole, but its op is not one tgt defines.
    #[error("unknown operation {0}")]
    BadOp(u32),
    /// The `len` field is larger than we accept.
    #[error("message length {0} too large")]
    TooLarge(u32),
    /// The `len` field is smaller than the fixed header.
    #[error("message length {0} shorter than its header")]
    TooShort(u32),
    /// The body or the lld name is not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
}

/// Fill `buf` completely; a clean EOF part way is `Truncated`.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), WireError> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => return Err(WireError::Truncated),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(())
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// C-string view of a body: the text before the first NUL (tgt treats every
/// body as a C string).
fn c_text(b: &[u8]) -> Result<String, WireError> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    std::str::from_utf8(&b[..end])
        .map(str::to_string)
        .map_err(|_| WireError::NotUtf8)
}

/// Offsets of the fields of `struct tgtadm_req` (tgt 1.0.85 `usr/tgtadm.h`).
mod off {
    pub const MODE: usize = 0;
    pub const OP: usize = 4;
    pub const LLD: usize = 8;
    pub const LEN: usize = 72;
    pub const TID: usize = 76;
    pub const SID: usize = 80;
    pub const LUN: usize = 88;
    pub const CID: usize = 96;
    pub const HOST_NO: usize = 100;
    pub const DEVICE_TYPE: usize = 104;
    pub const AC_DIR: usize = 108;
    pub const PACK: usize = 112;
    pub const FORCE: usize = 116;
}

/// Decode one request from a complete message (header + body). `len` must
/// equal `bytes.len()`.
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    if bytes.len() < REQ_HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let hdr = &bytes[..REQ_HEADER_LEN];
    let len = le_u32(hdr, off::LEN);
    let total = usize::try_from(len).map_err(|_| WireError::TooLarge(len))?;
    if total < REQ_HEADER_LEN {
        return Err(WireError::TooShort(len));
    }
    if total > MAX_REQUEST_LEN {
        return Err(WireError::TooLarge(len));
    }
    if bytes.len() < total {
        return Err(WireError::Truncated);
    }
    let mode_raw = le_u32(hdr, off::MODE);
    let op_raw = le_u32(hdr, off::OP);
    let mode = Mode::from_code(mode_raw).ok_or(WireError::BadMode(mode_raw))?;
    let op = Op::from_code(op_raw).ok_or(WireError::BadOp(op_raw))?;
    // tgtd forces lld[TGT_LLD_NAME_LEN - 1] = '\0'.
    let lld = c_text(&hdr[off::LLD..off::LLD + LLD_NAME_LEN - 1])?;
    let body = c_text(&bytes[REQ_HEADER_LEN..total])?;
    Ok(Request {
        mode,
        op,
        lld,
        tid: le_u32(hdr, off::TID) as i32,
        sid: le_u64(hdr, off::SID),
        lun: le_u64(hdr, off::LUN),
        cid: le_u32(hdr, off::CID),
        host_no: le_u32(hdr, off::HOST_NO),
        device_type: le_u32(hdr, off::DEVICE_TYPE),
        ac_dir: le_u32(hdr, off::AC_DIR),
        pack: le_u32(hdr, off::PACK),
        force: le_u32(hdr, off::FORCE),
        body,
    })
}

/// Server side: read one request from a connected stream. Every length is bounded (a request larger than MAX_REQUEST_LEN is an error, never an allocation of that size).
///
/// The whole message is consumed before mode and op are checked, so after
/// [`WireError::BadMode`] / [`WireError::BadOp`] the server can still answer
/// with [`TgtadmError::InvalidRequest`], as tgtd does.
pub fn read_request(r: &mut impl Read) -> Result<Request, WireError> {
    let mut hdr = [0u8; REQ_HEADER_LEN];
    read_full(r, &mut hdr)?;
    let len = le_u32(&hdr, off::LEN);
    let total = usize::try_from(len).map_err(|_| WireError::TooLarge(len))?;
    if total < REQ_HEADER_LEN {
        return Err(WireError::TooShort(len));
    }
    if total > MAX_REQUEST_LEN {
        return Err(WireError::TooLarge(len));
    }
    let mut msg = vec![0u8; total];
    msg[..REQ_HEADER_LEN].copy_from_slice(&hdr);
    read_full(r, &mut msg[REQ_HEADER_LEN..])?;
    decode_request(&msg)
}

/// Encode a request exactly as tgtadm 1.0.85 does: the header, then (only
/// when the body is not empty) the body and one NUL.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let body_len = if req.body.is_empty() {
        0
    } else {
        req.body.len() + 1
    };
    let total = REQ_HEADER_LEN + body_len;
    let mut b = vec![0u8; total];
    b[off::MODE..off::MODE + 4].copy_from_slice(&req.mode.code().to_le_bytes());
    b[off::OP..off::OP + 4].copy_from_slice(&req.op.code().to_le_bytes());
    // strncpy into a 64-byte field: at most 64 bytes, not necessarily terminated.
    let lld = req.lld.as_bytes();
    let n = lld.len().min(LLD_NAME_LEN);
    b[off::LLD..off::LLD + n].copy_from_slice(&lld[..n]);
    let len32 = u32::try_from(total).unwrap_or(u32::MAX);
    b[off::LEN..off::LEN + 4].copy_from_slice(&len32.to_le_bytes());
    b[off::TID..off::TID + 4].copy_from_slice(&req.tid.to_le_bytes());
    b[off::SID..off::SID + 8].copy_from_slice(&req.sid.to_le_bytes());
    b[off::LUN..off::LUN + 8].copy_from_slice(&req.lun.to_le_bytes());
    b[off::CID..off::CID + 4].copy_from_slice(&req.cid.to_le_bytes());
    b[off::HOST_NO..off::HOST_NO + 4].copy_from_slice(&req.host_no.to_le_bytes());
    b[off::DEVICE_TYPE..off::DEVICE_TYPE + 4].copy_from_slice(&req.device_type.to_le_bytes());
    b[off::AC_DIR..off::AC_DIR + 4].copy_from_slice(&req.ac_dir.to_le_bytes());
    b[off::PACK..off::PACK + 4].copy_from_slice(&req.pack.to_le_bytes());
    b[off::FORCE..off::FORCE + 4].copy_from_slice(&req.force.to_le_bytes());
    if body_len > 0 {
        b[REQ_HEADER_LEN..REQ_HEADER_LEN + req.body.len()].copy_from_slice(req.body.as_bytes());
    }
    b
}

/// Client side.
pub fn write_request(w: &mut impl Write, req: &Request) -> std::io::Result<()> {
    w.write_all(&encode_request(req))?;
    w.flush()
}

/// Encode a response as tgtd does: on success the body plus one NUL (none
/// for an empty body); on error the bare header, with no body at all.
pub fn encode_response(rsp: &Response) -> Vec<u8> {
    let body: &[u8] = if rsp.err == TgtadmError::Success {
        rsp.body.as_bytes()
    } else {
        &[]
    };
    let body_len = if body.is_empty() { 0 } else { body.len() + 1 };
    let total = RSP_HEADER_LEN + body_len;
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(&rsp.err.code().to_le_bytes());
    b.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_le_bytes());
    if body_len > 0 {
        b.extend_from_slice(body);
        b.push(0);
    }
    b
}

/// Server side: send one response.
pub fn write_response(w: &mut impl Write, rsp: &Response) -> std::io::Result<()> {
    w.write_all(&encode_response(rsp))?;
    w.flush()
}

/// Client side: read one response. The body is bounded by [`MAX_RESPONSE_LEN`]
/// and read in chunks, so a lying `len` costs at most what actually arrives.
pub fn read_response(r: &mut impl Read) -> Result<Response, WireError> {
    let (code, body) = read_response_raw(r)?;
    Ok(Response {
        err: TgtadmError::from_code(code),
        body,
    })
}

/// Like [`read_response`], but keeps the raw `err` number (for codes newer
/// or older tgtds define that this crate does not).
pub fn read_response_raw(r: &mut impl Read) -> Result<(u32, String), WireError> {
    let mut hdr = [0u8; RSP_HEADER_LEN];
    read_full(r, &mut hdr)?;
    let code = le_u32(&hdr, 0);
    let len = le_u32(&hdr, 4);
    let total = usize::try_from(len).map_err(|_| WireError::TooLarge(len))?;
    if total < RSP_HEADER_LEN {
        return Err(WireError::TooShort(len));
    }
    if total - RSP_HEADER_LEN > MAX_RESPONSE_LEN {
        return Err(WireError::TooLarge(len));
    }
    let mut rest = total - RSP_HEADER_LEN;
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    while rest > 0 {
        let n = rest.min(chunk.len());
        read_full(r, &mut chunk[..n])?;
        body.extend_from_slice(&chunk[..n]);
        rest -= n;
    }
    Ok((code, c_text(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Request {
        Request {
            mode: Mode::Device,
            op: Op::New,
            lld: "iscsi".into(),
            tid: 1,
            sid: 7,
            lun: 1,
            cid: 3,
            host_no: 4,
            device_type: 0,
            ac_dir: 1,
            pack: 0,
            force: 1,
            body: "path=/tmp/x,bsoflags=direct".into(),
        }
    }

    #[test]
    fn request_layout_matches_tgtadm() {
        // Bytes captured from Debian's tgtadm 1.0.85:
        // --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 -b /tmp/x --bsoflags direct
        let mut req = Request::new(Mode::Device, Op::New);
        req.lld = "iscsi".into();
        req.tid = 1;
        req.lun = 1;
        req.body = "path=/tmp/x,bsoflags=direct".into();
        let b = encode_request(&req);
        assert_eq!(b.len(), 148);
        assert_eq!(&b[0..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..13], b"iscsi");
        assert_eq!(&b[72..80], &[0x94, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[88..96], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[120..], b"path=/tmp/x,bsoflags=direct\0");
    }

    #[test]
    fn request_round_trip() {
        let req = sample();
        let bytes = encode_request(&req);
        assert_eq!(read_request(&mut &bytes[..]).unwrap(), req);
        let mut empty = Request::new(Mode::Target, Op::Show);
        empty.lld = "x".repeat(63);
        let bytes = encode_request(&empty);
        assert_eq!(bytes.len(), REQ_HEADER_LEN);
        assert_eq!(read_request(&mut &bytes[..]).unwrap(), empty);
    }

    #[test]
    fn response_round_trip() {
        for rsp in [
            Response {
                err: TgtadmError::Success,
                body: "Portal: 127.0.0.1:3260,1\n".into(),
            },
            Response {
                err: TgtadmError::Success,
                body: String::new(),
            },
            Response {
                err: TgtadmError::NoTarget,
                body: String::new(),
            },
        ] {
            let b = encode_response(&rsp);
            assert_eq!(read_response(&mut &b[..]).unwrap(), rsp);
        }
        let b = encode_response(&Response {
            err: TgtadmError::Success,
            body: "ab".into(),
        });
        assert_eq!(b, [0, 0, 0, 0, 11, 0, 0, 0, b'a', b'b', 0]);
    }

    #[test]
    fn bad_requests() {
        let mut b = encode_request(&sample());
        assert!(matches!(
            read_request(&mut &b[..100]),
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            read_request(&mut &b[..130]),
            Err(WireError::Truncated)
        ));
        b[72..76].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_request(&mut &b[..]),
            Err(WireError::TooLarge(_))
        ));
        b[72..76].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            read_request(&mut &b[..]),
            Err(WireError::TooShort(10))
        ));
        let mut b = encode_request(&sample());
        b[0] = 9;
        assert!(matches!(
            read_request(&mut &b[..]),
            Err(WireError::BadMode(9))
        ));
        let mut b = encode_request(&sample());
        b[4] = 99;
        assert!(matches!(
            read_request(&mut &b[..]),
            Err(WireError::BadOp(99))
        ));
        let mut b = encode_request(&sample());
        b[121] = 0xff;
        assert!(matches!(read_request(&mut &b[..]), Err(WireError::NotUtf8)));
    }

    #[test]
    fn error_codes() {
        for (i, e) in TgtadmError::ALL.iter().enumerate() {
            assert_eq!(e.code() as usize, i);
            assert_eq!(TgtadmError::from_code(i as u32), *e);
        }
        assert_eq!(TgtadmError::NoTarget.code(), 4);
        assert_eq!(TgtadmError::InvalidRequest.code(), 17);
        assert_eq!(TgtadmError::LunExist.code(), 10);
        assert_eq!(TgtadmError::BindingExist.code(), 11);
        assert_eq!(TgtadmError::PreventRemoval.code(), 24);
        assert_eq!(TgtadmError::from_code(99), TgtadmError::UnknownErr);
        assert_eq!(message_for_code(99), "(unknown tgtadm_errno)");
        assert_eq!(TgtadmError::NoTarget.message(), "can't find the target");
    }

    #[test]
    fn params_follow_tgtd() {
        let mut r = Request::new(Mode::Portal, Op::New);
        r.body = "portalOps portal=1.2.3.4:3260,".into();
        assert_eq!(r.param("portal").as_deref(), Some("1.2.3.4:3260"));
        r.body = "path=/a=b,bstype=rdwr,targetOps readonly=1,removable=0,".into();
        assert_eq!(
            r.params(),
            vec![
                ("path".into(), "/a=b".into()),
                ("bstype".into(), "rdwr".into()),
                ("readonly".into(), "1".into()),
                ("removable".into(), "0".into()),
            ]
        );
        r.body = "MaxRecvDataSegmentLength=65536".into();
        assert_eq!(
            r.param("MaxRecvDataSegmentLength").as_deref(),
            Some("65536")
        );
        assert_eq!(r.param("nope"), None);
    }

    #[test]
    fn socket_path_rule() {
        // Only checks the default; the env override is covered in tests/.
        if std::env::var_os(SOCKET_ENV).is_none() {
            assert_eq!(socket_path(0), PathBuf::from("/var/run/tgtd/socket.0"));
            assert_eq!(socket_path(77), PathBuf::from("/var/run/tgtd/socket.77"));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_request_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read_request(&mut &bytes[..]);
            let _ = decode_request(&bytes);
        }

        #[test]
        fn arbitrary_response_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = read_response(&mut &bytes[..]);
        }

        #[test]
        fn header_with_any_len_is_bounded(len in any::<u32>(), mode in 0u32..12, op in 0u32..12) {
            let mut b = [0u8; REQ_HEADER_LEN];
            b[0..4].copy_from_slice(&mode.to_le_bytes());
            b[4..8].copy_from_slice(&op.to_le_bytes());
            b[72..76].copy_from_slice(&len.to_le_bytes());
            match read_request(&mut &b[..]) {
                // Only a header is available, so only len == header can succeed.
                Ok(_) => prop_assert_eq!(len as usize, REQ_HEADER_LEN),
                Err(WireError::TooLarge(_)) => prop_assert!(len as usize > MAX_REQUEST_LEN),
                Err(_) => {}
            }
        }

        #[test]
        fn round_trip_any_request(tid in any::<i32>(), sid in any::<u64>(), lun in any::<u64>(),
                                  cid in any::<u32>(), body in "[a-zA-Z0-9=,./:-]{0,200}",
                                  lld in "[a-z]{0,63}", m in 0usize..8, o in 0usize..9) {
            let req = Request { mode: Mode::ALL[m], op: Op::ALL[o], lld, tid, sid, lun, cid,
                host_no: 1, device_type: 2, ac_dir: 1, pack: 0, force: 0, body };
            let b = encode_request(&req);
            prop_assert_eq!(read_request(&mut &b[..]).unwrap(), req);
        }
    }
}
