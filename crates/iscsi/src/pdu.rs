//! iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment, Additional
//! Header Segments, typed decoding of the PDUs an initiator sends, encoding of the
//! PDUs a target sends, and CRC32C digests (§13.1, Appendix B.4).
//!
//! Decoding goes through a bounded [`Reader`] (rustls style): a length field can
//! never make the decoder look past the bytes that belong to its PDU.

use std::fmt;

/// Size of the Basic Header Segment, RFC 7143 §11.2.1.
pub const BHS_LEN: usize = 48;
/// Size of a CRC32C header or data digest, RFC 7143 §11.2.4.
pub const DIGEST_LEN: usize = 4;
/// The reserved tag value (§11.2.1.8, §11.18.4): "no task" / "no target transfer".
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// Largest TotalAHSLength in bytes (one byte counting 4-byte words, §11.2.1.3).
pub const MAX_AHS_LEN: usize = 255 * 4;

/// Rounds a data segment length up to the 4-byte boundary (§11.2.3: padding).
pub fn pad4(len: usize) -> usize {
    (len + 3) & !3
}

/// CRC32C (Castagnoli) over several slices, as used for header and data digests
/// (RFC 7143 §13.1, Appendix B.4). Hardware accelerated by the `crc32c` crate.
pub fn crc32c_of(parts: &[&[u8]]) -> u32 {
    let mut crc = 0u32;
    for p in parts {
        crc = crc32c::crc32c_append(crc, p);
    }
    crc
}

/// Digest bytes as sent on the wire. The CRC is transmitted least significant
/// byte first (the byte order of RFC 7143 Appendix B.4's examples, and of every
/// interoperable implementation).
pub fn digest_bytes(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// Reads a digest from the wire.
pub fn digest_from(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

/// Opcode (RFC 7143 §11.2.1.2). Open: unknown values round-trip and print as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

impl Opcode {
    pub const NOP_OUT: Opcode = Opcode(0x00);
    pub const SCSI_COMMAND: Opcode = Opcode(0x01);
    pub const TASK_MGMT_REQUEST: Opcode = Opcode(0x02);
    pub const LOGIN_REQUEST: Opcode = Opcode(0x03);
    pub const TEXT_REQUEST: Opcode = Opcode(0x04);
    pub const SCSI_DATA_OUT: Opcode = Opcode(0x05);
    pub const LOGOUT_REQUEST: Opcode = Opcode(0x06);
    pub const SNACK_REQUEST: Opcode = Opcode(0x10);
    pub const NOP_IN: Opcode = Opcode(0x20);
    pub const SCSI_RESPONSE: Opcode = Opcode(0x21);
    pub const TASK_MGMT_RESPONSE: Opcode = Opcode(0x22);
    pub const LOGIN_RESPONSE: Opcode = Opcode(0x23);
    pub const TEXT_RESPONSE: Opcode = Opcode(0x24);
    pub const SCSI_DATA_IN: Opcode = Opcode(0x25);
    pub const LOGOUT_RESPONSE: Opcode = Opcode(0x26);
    pub const R2T: Opcode = Opcode(0x31);
    pub const ASYNC_MESSAGE: Opcode = Opcode(0x32);
    pub const REJECT: Opcode = Opcode(0x3f);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NOP_OUT => "NOP-Out",
            Self::SCSI_COMMAND => "SCSI Command",
            Self::TASK_MGMT_REQUEST => "Task Management Function Request",
            Self::LOGIN_REQUEST => "Login Request",
            Self::TEXT_REQUEST => "Text Request",
            Self::SCSI_DATA_OUT => "SCSI Data-Out",
            Self::LOGOUT_REQUEST => "Logout Request",
            Self::SNACK_REQUEST => "SNACK Request",
            Self::NOP_IN => "NOP-In",
            Self::SCSI_RESPONSE => "SCSI Response",
            Self::TASK_MGMT_RESPONSE => "Task Management Function Response",
            Self::LOGIN_RESPONSE => "Login Response",
            Self::TEXT_RESPONSE => "Text Response",
            Self::SCSI_DATA_IN => "SCSI Data-In",
            Self::LOGOUT_RESPONSE => "Logout Response",
            Self::R2T => "Ready To Transfer",
            Self::ASYNC_MESSAGE => "Asynchronous Message",
            Self::REJECT => "Reject",
            _ => return None,
        })
    }
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#04x})", self.0),
            None => write!(f, "Opcode({:#04x})", self.0),
        }
    }
}

impl fmt::Display for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Reject reason (RFC 7143 §11.17.1). Open enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RejectReason(pub u8);

impl RejectReason {
    pub const DATA_DIGEST_ERROR: RejectReason = RejectReason(0x02);
    pub const SNACK_REJECT: RejectReason = RejectReason(0x03);
    pub const PROTOCOL_ERROR: RejectReason = RejectReason(0x04);
    pub const COMMAND_NOT_SUPPORTED: RejectReason = RejectReason(0x05);
    pub const IMMEDIATE_COMMAND_REJECT: RejectReason = RejectReason(0x06);
    pub const TASK_IN_PROGRESS: RejectReason = RejectReason(0x07);
    pub const INVALID_DATA_ACK: RejectReason = RejectReason(0x08);
    pub const INVALID_PDU_FIELD: RejectReason = RejectReason(0x09);
    pub const LONG_OPERATION_REJECT: RejectReason = RejectReason(0x0a);
    pub const WAITING_FOR_LOGOUT: RejectReason = RejectReason(0x0c);
}

/// Task Management function codes (RFC 7143 §11.5.1). Open enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TmfFunction(pub u8);

impl TmfFunction {
    pub const ABORT_TASK: TmfFunction = TmfFunction(1);
    pub const ABORT_TASK_SET: TmfFunction = TmfFunction(2);
    pub const CLEAR_ACA: TmfFunction = TmfFunction(3);
    pub const CLEAR_TASK_SET: TmfFunction = TmfFunction(4);
    pub const LOGICAL_UNIT_RESET: TmfFunction = TmfFunction(5);
    pub const TARGET_WARM_RESET: TmfFunction = TmfFunction(6);
    pub const TARGET_COLD_RESET: TmfFunction = TmfFunction(7);
    pub const TASK_REASSIGN: TmfFunction = TmfFunction(8);
}

/// Why decoding failed. These are framing problems: the caller decides whether
/// they mean a Reject or closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("PDU truncated: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("AHS length {0} runs past TotalAHSLength")]
    BadAhsLength(usize),
}

/// A bounded reader over one PDU's bytes (rustls `Reader` style).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// Bytes not yet read.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError::Truncated {
                needed: n - self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// A sub-reader over the next `n` bytes: it can never read past them.
    pub fn sub(&mut self, n: usize) -> Result<Reader<'a>, DecodeError> {
        self.take(n).map(Reader::new)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u24(&mut self) -> Result<u32, DecodeError> {
        let a = self.array::<3>()?;
        Ok(u32::from_be_bytes([0, a[0], a[1], a[2]]))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// The Basic Header Segment (RFC 7143 §11.2.1), kept as its raw bytes so a
/// Reject can carry it back verbatim (§11.17).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl fmt::Debug for Bhs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bhs")
            .field("opcode", &self.opcode())
            .field("immediate", &self.immediate())
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("ahs", &self.total_ahs_len())
            .field("dsl", &self.data_segment_len())
            .field("itt", &format_args!("{:#010x}", self.itt()))
            .finish()
    }
}

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl Bhs {
    /// Reads the BHS at the front of `bytes`, or None when fewer than 48 bytes.
    pub fn from_prefix(bytes: &[u8]) -> Option<Bhs> {
        let b: [u8; BHS_LEN] = bytes.get(..BHS_LEN)?.try_into().ok()?;
        Some(Bhs(b))
    }
    pub fn opcode(&self) -> Opcode {
        Opcode(self.0[0] & 0x3f)
    }
    /// The I bit (§11.2.1.1): an immediate request does not advance CmdSN.
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    /// Byte 1: the F bit and opcode-specific flags.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn final_bit(&self) -> bool {
        self.0[1] & 0x80 != 0
    }
    /// TotalAHSLength in bytes (§11.2.1.3: counted in 4-byte words).
    pub fn total_ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    /// DataSegmentLength (§11.2.1.4), without padding.
    pub fn data_segment_len(&self) -> usize {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]]) as usize
    }
    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }
    pub fn u64_at(&self, off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[off..off + 8]);
        u64::from_be_bytes(a)
    }
    pub fn set_opcode(&mut self, op: Opcode, immediate: bool) {
        self.0[0] = (op.0 & 0x3f) | if immediate { 0x40 } else { 0 };
    }
    pub fn set_flags(&mut self, flags: u8) {
        self.0[1] = flags;
    }
    /// Sets DataSegmentLength; lengths are limited to 24 bits by the caller.
    pub fn set_data_segment_len(&mut self, len: usize) {
        let b = (len as u32 & 0x00ff_ffff).to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..]);
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_be_bytes());
    }
}

/// AHS types (RFC 7143 §11.2.2.1).
pub const AHS_EXTENDED_CDB: u8 = 1;
pub const AHS_BIDI_READ_LENGTH: u8 = 2;

/// What the AHS of a SCSI Command carried (§11.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandAhs {
    /// CDB bytes beyond the first 16 (at most 16 kept; see `ext_cdb_len`).
    pub ext_cdb: [u8; 16],
    /// Length of the extended CDB part as announced (may exceed 16: unsupported).
    pub ext_cdb_len: usize,
    pub bidi_read_length: Option<u32>,
}

/// Walks the AHS list of a SCSI Command (§11.2.2). Each AHS is AHSLength (2),
/// AHSType (1), then AHSLength bytes of type-specific data, padded to 4 bytes.
pub fn parse_command_ahs(ahs: &[u8]) -> Result<CommandAhs, DecodeError> {
    let mut out = CommandAhs::default();
    let mut r = Reader::new(ahs);
    while r.left() > 0 {
        let len = r.u16()? as usize;
        let ty = r.u8()?;
        let total = pad4(3 + len);
        if total - 3 > r.left() {
            return Err(DecodeError::BadAhsLength(len));
        }
        let mut body = r.sub(total - 3)?;
        match ty {
            AHS_EXTENDED_CDB => {
                // The first specific byte is reserved; the CDB tail follows (§11.2.2.3).
                let _reserved = body.u8()?;
                let n = len.saturating_sub(1);
                out.ext_cdb_len = n;
                if n <= 16 {
                    let tail = body.take(n)?;
                    out.ext_cdb[..n].copy_from_slice(tail);
                }
            }
            AHS_BIDI_READ_LENGTH => {
                let _reserved = body.u8()?;
                out.bidi_read_length = Some(body.u32()?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Login stage codes for CSG/NSG (RFC 7143 §11.12.3). Open enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stage(pub u8);

impl Stage {
    pub const SECURITY_NEGOTIATION: Stage = Stage(0);
    pub const LOGIN_OPERATIONAL_NEGOTIATION: Stage = Stage(1);
    pub const FULL_FEATURE_PHASE: Stage = Stage(3);
}

/// SCSI Command (RFC 7143 §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommandPdu {
    pub immediate: bool,
    /// F: no unsolicited Data-Out follows (§11.3.1).
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_data_transfer_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

/// SCSI Data-Out (RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutPdu {
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// NOP-Out (RFC 7143 §11.18).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOutPdu {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Task Management Function Request (RFC 7143 §11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtPdu {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (RFC 7143 §11.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequestPdu {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Request (RFC 7143 §11.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequestPdu {
    pub immediate: bool,
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Logout Request (RFC 7143 §11.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequestPdu {
    pub immediate: bool,
    pub reason_code: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (RFC 7143 §11.16); only its tag matters to an ERL 0 target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnackPdu {
    pub snack_type: u8,
    pub itt: u32,
}

/// An initiator PDU decoded from its BHS (§11.2.1.2: initiator opcodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiatorPdu {
    NopOut(NopOutPdu),
    ScsiCommand(ScsiCommandPdu),
    TaskMgmt(TaskMgmtPdu),
    Login(LoginRequestPdu),
    Text(TextRequestPdu),
    DataOut(DataOutPdu),
    Logout(LogoutRequestPdu),
    Snack(SnackPdu),
    /// An opcode a target does not accept (target opcodes, vendor codes, reserved).
    Unknown(Opcode),
}

impl InitiatorPdu {
    /// Decodes the opcode-specific fields of a BHS. It cannot fail: every BHS is
    /// 48 bytes; field validation is the state machine's job.
    pub fn decode(bhs: &Bhs) -> InitiatorPdu {
        let b = &bhs.0;
        let imm = bhs.immediate();
        let f = bhs.final_bit();
        match bhs.opcode() {
            Opcode::NOP_OUT => InitiatorPdu::NopOut(NopOutPdu {
                immediate: imm,
                lun: bhs.lun(),
                itt: bhs.itt(),
                ttt: bhs.u32_at(20),
                cmd_sn: bhs.u32_at(24),
                exp_stat_sn: bhs.u32_at(28),
            }),
            Opcode::SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                InitiatorPdu::ScsiCommand(ScsiCommandPdu {
                    immediate: imm,
                    final_bit: f,
                    read: b[1] & 0x40 != 0,
                    write: b[1] & 0x20 != 0,
                    attr: b[1] & 0x07,
                    lun: bhs.lun(),
                    itt: bhs.itt(),
                    expected_data_transfer_length: bhs.u32_at(20),
                    cmd_sn: bhs.u32_at(24),
                    exp_stat_sn: bhs.u32_at(28),
                    cdb,
                })
            }
            Opcode::TASK_MGMT_REQUEST => InitiatorPdu::TaskMgmt(TaskMgmtPdu {
                immediate: imm,
                function: b[1] & 0x7f,
                lun: bhs.lun(),
                itt: bhs.itt(),
                referenced_task_tag: bhs.u32_at(20),
                cmd_sn: bhs.u32_at(24),
                exp_stat_sn: bhs.u32_at(28),
                ref_cmd_sn: bhs.u32_at(32),
                exp_data_sn: bhs.u32_at(36),
            }),
            Opcode::LOGIN_REQUEST => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                InitiatorPdu::Login(LoginRequestPdu {
                    transit: b[1] & 0x80 != 0,
                    continue_bit: b[1] & 0x40 != 0,
                    csg: Stage((b[1] >> 2) & 3),
                    nsg: Stage(b[1] & 3),
                    version_max: b[2],
                    version_min: b[3],
                    isid,
                    tsih: bhs.u16_at(14),
                    itt: bhs.itt(),
                    cid: bhs.u16_at(20),
                    cmd_sn: bhs.u32_at(24),
                    exp_stat_sn: bhs.u32_at(28),
                })
            }
            Opcode::TEXT_REQUEST => InitiatorPdu::Text(TextRequestPdu {
                immediate: imm,
                final_bit: f,
                continue_bit: b[1] & 0x40 != 0,
                lun: bhs.lun(),
                itt: bhs.itt(),
                ttt: bhs.u32_at(20),
                cmd_sn: bhs.u32_at(24),
                exp_stat_sn: bhs.u32_at(28),
            }),
            Opcode::SCSI_DATA_OUT => InitiatorPdu::DataOut(DataOutPdu {
                final_bit: f,
                lun: bhs.lun(),
                itt: bhs.itt(),
                ttt: bhs.u32_at(20),
                exp_stat_sn: bhs.u32_at(28),
                data_sn: bhs.u32_at(36),
                buffer_offset: bhs.u32_at(40),
            }),
            Opcode::LOGOUT_REQUEST => InitiatorPdu::Logout(LogoutRequestPdu {
                immediate: imm,
                reason_code: b[1] & 0x7f,
                itt: bhs.itt(),
                cid: bhs.u16_at(20),
                cmd_sn: bhs.u32_at(24),
                exp_stat_sn: bhs.u32_at(28),
            }),
            Opcode::SNACK_REQUEST => InitiatorPdu::Snack(SnackPdu {
                snack_type: b[1] & 0x0f,
                itt: bhs.itt(),
            }),
            op => InitiatorPdu::Unknown(op),
        }
    }
}

/// Sequence numbers common to target responses (RFC 7143 §11.2.1 and each response).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnFields {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

fn with_sn(bhs: &mut Bhs, sn: SnFields) {
    bhs.set_u32(24, sn.stat_sn);
    bhs.set_u32(28, sn.exp_cmd_sn);
    bhs.set_u32(32, sn.max_cmd_sn);
}

/// Residual flags shared by SCSI Response and Data-In (§11.4.5.2, §11.7.5).
pub const FLAG_RESIDUAL_OVERFLOW: u8 = 0x04;
pub const FLAG_RESIDUAL_UNDERFLOW: u8 = 0x02;

/// Encodes a SCSI Response (RFC 7143 §11.4). `flags` carries the residual bits.
pub fn encode_scsi_response(
    itt: u32,
    flags: u8,
    status: u8,
    data_len: usize,
    sn: SnFields,
    exp_data_sn: u32,
    residual: u32,
) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::SCSI_RESPONSE, false);
    h.set_flags(0x80 | (flags & 0x1e));
    h.0[2] = 0; // Response: Command Completed at Target (§11.4.3)
    h.0[3] = status;
    h.set_data_segment_len(data_len);
    h.set_u32(16, itt);
    with_sn(&mut h, sn);
    h.set_u32(36, exp_data_sn);
    h.set_u32(44, residual);
    h
}

/// Fields of one SCSI Data-In PDU (RFC 7143 §11.7).
#[derive(Debug, Clone, Copy, Default)]
pub struct DataIn {
    pub final_bit: bool,
    /// S: the status is in this PDU (phase collapse, §11.7.4).
    pub status: Option<u8>,
    pub residual_flags: u8,
    pub residual: u32,
    pub lun: u64,
    pub itt: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data_len: usize,
}

pub fn encode_data_in(d: &DataIn, sn: SnFields) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::SCSI_DATA_IN, false);
    let mut flags = if d.final_bit { 0x80 } else { 0 };
    if let Some(st) = d.status {
        flags |= 0x01 | 0x80 | (d.residual_flags & 0x06);
        h.0[3] = st;
        h.set_u32(44, d.residual);
    }
    h.set_flags(flags);
    h.set_data_segment_len(d.data_len);
    h.set_u64(8, d.lun);
    h.set_u32(16, d.itt);
    h.set_u32(20, RESERVED_TAG);
    // StatSN is only meaningful with the S bit (§11.7.6); zero otherwise.
    h.set_u32(24, if d.status.is_some() { sn.stat_sn } else { 0 });
    h.set_u32(28, sn.exp_cmd_sn);
    h.set_u32(32, sn.max_cmd_sn);
    h.set_u32(36, d.data_sn);
    h.set_u32(40, d.buffer_offset);
    h
}

/// Encodes an R2T (RFC 7143 §11.8).
#[allow(clippy::too_many_arguments)]
pub fn encode_r2t(
    lun: u64,
    itt: u32,
    ttt: u32,
    sn: SnFields,
    r2t_sn: u32,
    buffer_offset: u32,
    desired_len: u32,
) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::R2T, false);
    h.set_flags(0x80);
    h.set_u64(8, lun);
    h.set_u32(16, itt);
    h.set_u32(20, ttt);
    with_sn(&mut h, sn);
    h.set_u32(36, r2t_sn);
    h.set_u32(40, buffer_offset);
    h.set_u32(44, desired_len);
    h
}

/// Encodes a NOP-In (RFC 7143 §11.19).
pub fn encode_nop_in(lun: u64, itt: u32, ttt: u32, data_len: usize, sn: SnFields) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::NOP_IN, false);
    h.set_flags(0x80);
    h.set_data_segment_len(data_len);
    h.set_u64(8, lun);
    h.set_u32(16, itt);
    h.set_u32(20, ttt);
    with_sn(&mut h, sn);
    h
}

/// Encodes a Task Management Function Response (RFC 7143 §11.6).
pub fn encode_tmf_response(itt: u32, response: u8, sn: SnFields) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::TASK_MGMT_RESPONSE, false);
    h.set_flags(0x80);
    h.0[2] = response;
    h.set_u32(16, itt);
    with_sn(&mut h, sn);
    h
}

/// Fields of a Login Response (RFC 7143 §11.13).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub status: u16,
    pub data_len: usize,
}

pub fn encode_login_response(r: &LoginResponse, sn: SnFields) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::LOGIN_RESPONSE, false);
    let mut flags = ((r.csg & 3) << 2) | (r.nsg & 3);
    if r.transit {
        flags |= 0x80;
    }
    if r.continue_bit {
        flags |= 0x40;
    }
    h.set_flags(flags);
    h.0[2] = r.version_max;
    h.0[3] = r.version_active;
    h.set_data_segment_len(r.data_len);
    h.0[8..14].copy_from_slice(&r.isid);
    h.set_u16(14, r.tsih);
    h.set_u32(16, r.itt);
    with_sn(&mut h, sn);
    h.set_u16(36, r.status);
    h
}

/// Encodes a Text Response (RFC 7143 §11.11).
pub fn encode_text_response(
    final_bit: bool,
    continue_bit: bool,
    lun: u64,
    itt: u32,
    ttt: u32,
    data_len: usize,
    sn: SnFields,
) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::TEXT_RESPONSE, false);
    h.set_flags(if final_bit { 0x80 } else { 0 } | if continue_bit { 0x40 } else { 0 });
    h.set_data_segment_len(data_len);
    h.set_u64(8, lun);
    h.set_u32(16, itt);
    h.set_u32(20, ttt);
    with_sn(&mut h, sn);
    h
}

/// Encodes a Logout Response (RFC 7143 §11.15).
pub fn encode_logout_response(
    itt: u32,
    response: u8,
    sn: SnFields,
    time2wait: u16,
    time2retain: u16,
) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::LOGOUT_RESPONSE, false);
    h.set_flags(0x80);
    h.0[2] = response;
    h.set_u32(16, itt);
    with_sn(&mut h, sn);
    h.set_u16(40, time2wait);
    h.set_u16(42, time2retain);
    h
}

/// Encodes a Reject (RFC 7143 §11.17); its data segment is the offending BHS.
pub fn encode_reject(reason: RejectReason, sn: SnFields, data_sn: u32) -> Bhs {
    let mut h = Bhs::default();
    h.set_opcode(Opcode::REJECT, false);
    h.set_flags(0x80);
    h.0[2] = reason.0;
    h.set_data_segment_len(BHS_LEN);
    h.set_u32(16, RESERVED_TAG);
    with_sn(&mut h, sn);
    h.set_u32(36, data_sn);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vectors() {
        // RFC 3720 Appendix B.4: 32 bytes of zeros -> aa 36 91 8a on the wire.
        let zeros = [0u8; 32];
        assert_eq!(digest_bytes(crc32c_of(&[&zeros])), [0xaa, 0x36, 0x91, 0x8a]);
        let ones = [0xffu8; 32];
        assert_eq!(digest_bytes(crc32c_of(&[&ones])), [0x43, 0xab, 0xa8, 0x62]);
        // Split input gives the same digest.
        let data: Vec<u8> = (0..32u8).collect();
        assert_eq!(
            crc32c_of(&[&data[..5], &data[5..]]),
            crc32c_of(&[&data[..]])
        );
        assert_eq!(digest_bytes(crc32c_of(&[&data])), [0x4e, 0x79, 0xdd, 0x46]);
    }

    #[test]
    fn opcode_debug_is_named_or_hex() {
        assert_eq!(format!("{:?}", Opcode::NOP_OUT), "NOP-Out (0x00)");
        assert_eq!(format!("{:?}", Opcode(0x1c)), "Opcode(0x1c)");
    }

    #[test]
    fn reader_is_bounded() {
        let data = [1u8, 2, 3, 4, 5];
        let mut r = Reader::new(&data);
        let mut s = r.sub(2).unwrap();
        assert_eq!(s.u16().unwrap(), 0x0102);
        assert!(s.u8().is_err());
        assert_eq!(r.u24().unwrap(), 0x030405);
        assert_eq!(r.u8(), Err(DecodeError::Truncated { needed: 1 }));
    }

    #[test]
    fn scsi_command_decode() {
        let mut h = Bhs::default();
        h.set_opcode(Opcode::SCSI_COMMAND, true);
        h.set_flags(0x80 | 0x20 | 0x01);
        h.set_data_segment_len(512);
        h.set_u64(8, 0x0001_0000_0000_0000);
        h.set_u32(16, 7);
        h.set_u32(20, 4096);
        h.set_u32(24, 99);
        h.0[32] = 0x2a;
        match InitiatorPdu::decode(&h) {
            InitiatorPdu::ScsiCommand(c) => {
                assert!(c.immediate && c.final_bit && c.write && !c.read);
                assert_eq!(c.attr, 1);
                assert_eq!(c.lun, 0x0001_0000_0000_0000);
                assert_eq!(c.itt, 7);
                assert_eq!(c.expected_data_transfer_length, 4096);
                assert_eq!(c.cmd_sn, 99);
                assert_eq!(c.cdb[0], 0x2a);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(h.data_segment_len(), 512);
    }

    #[test]
    fn login_decode_and_response_encode() {
        let mut h = Bhs::default();
        h.set_opcode(Opcode::LOGIN_REQUEST, true);
        h.set_flags(0x80 | (1 << 2) | 3);
        h.0[8..14].copy_from_slice(&[0x80, 1, 2, 3, 4, 5]);
        h.set_u16(20, 9);
        match InitiatorPdu::decode(&h) {
            InitiatorPdu::Login(l) => {
                assert!(l.transit && !l.continue_bit);
                assert_eq!(l.csg, Stage::LOGIN_OPERATIONAL_NEGOTIATION);
                assert_eq!(l.nsg, Stage::FULL_FEATURE_PHASE);
                assert_eq!(l.cid, 9);
                assert_eq!(l.isid, [0x80, 1, 2, 3, 4, 5]);
            }
            other => panic!("{other:?}"),
        }
        let r = LoginResponse {
            transit: true,
            csg: 1,
            nsg: 3,
            tsih: 5,
            itt: 3,
            status: 0x0201,
            data_len: 10,
            ..Default::default()
        };
        let b = encode_login_response(
            &r,
            SnFields {
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
            },
        );
        assert_eq!(b.opcode(), Opcode::LOGIN_RESPONSE);
        assert_eq!(b.flags(), 0x87);
        assert_eq!(b.u16_at(14), 5);
        assert_eq!(b.0[36], 2);
        assert_eq!(b.0[37], 1);
        assert_eq!(b.data_segment_len(), 10);
        assert_eq!(b.u32_at(24), 1);
    }

    #[test]
    fn ahs_extended_cdb() {
        // 32-byte CDB: AHSLength = 17 (reserved + 16 bytes), padded to 20.
        let mut ahs = vec![0u8, 17, AHS_EXTENDED_CDB, 0];
        ahs.extend((0..16u8).map(|i| i + 16));
        assert_eq!(ahs.len(), 20);
        let a = parse_command_ahs(&ahs).unwrap();
        assert_eq!(a.ext_cdb_len, 16);
        assert_eq!(a.ext_cdb[0], 16);
        // Length running past the AHS area.
        let bad = [0u8, 40, AHS_EXTENDED_CDB, 0];
        assert!(parse_command_ahs(&bad).is_err());
    }

    #[test]
    fn data_in_status_flags() {
        let d = DataIn {
            final_bit: true,
            status: Some(0),
            residual_flags: FLAG_RESIDUAL_UNDERFLOW,
            residual: 10,
            itt: 4,
            data_sn: 2,
            buffer_offset: 8192,
            data_len: 100,
            ..Default::default()
        };
        let b = encode_data_in(
            &d,
            SnFields {
                stat_sn: 7,
                exp_cmd_sn: 8,
                max_cmd_sn: 9,
            },
        );
        assert_eq!(b.flags(), 0x83);
        assert_eq!(b.u32_at(24), 7);
        assert_eq!(b.u32_at(36), 2);
        assert_eq!(b.u32_at(40), 8192);
        assert_eq!(b.u32_at(44), 10);
        assert_eq!(b.u32_at(20), RESERVED_TAG);
    }
}
