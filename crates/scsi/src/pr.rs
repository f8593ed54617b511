//! Reservations of one logical unit: SPC-2 RESERVE/RELEASE(6/10) and SPC-4 persistent
//! reservations (SPC-4 §5.9, PERSISTENT RESERVE IN §6.15, PERSISTENT RESERVE OUT §6.16).
//!
//! [`Reservations`] is pure state, one per LU (the LU keeps it behind its own lock).
//! The LU asks [`Reservations::check`] before running any command and answers
//! RESERVATION CONFLICT (status 18h) on `Err`; RESERVE, RELEASE, PERSISTENT RESERVE IN
//! and OUT are then carried out here. A PERSISTENT RESERVE OUT returns the unit
//! attentions to post, the I_T nexuses whose task sets to abort and whether the APTPL
//! state (SPC-4 §5.9, "Preserving persistent reservations") must be saved again.
//!
//! Registrations belong to I_T nexuses, named here by [`NexusIdentity`] (iSCSI
//! initiator port = initiator name + ISID, and relative target port), so they survive
//! a logout and apply again when the same initiator port logs in. A registration made
//! through a TransportID of format 00b (name only, SPC-4 §7.6.4.6) covers every
//! initiator port of that iSCSI name.
//!
//! Nothing here panics or allocates in proportion to a length field: every CDB and
//! parameter list byte is read through bounds-checked accessors.

use std::collections::BTreeMap;

use crate::lu::NexusId;
use crate::out::Out;
use crate::sense::{Asc, Sense, SenseKey};

/// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1).
pub mod prin_sa {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2).
pub mod prout_sa {
    pub const REGISTER: u8 = 0x00;
    pub const RESERVE: u8 = 0x01;
    pub const RELEASE: u8 = 0x02;
    pub const CLEAR: u8 = 0x03;
    pub const PREEMPT: u8 = 0x04;
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// Operation codes this module handles or classifies.
mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const INQUIRY: u8 = 0x12;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const RECEIVE_DIAGNOSTIC_RESULTS: u8 = 0x1c;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const READ_BUFFER: u8 = 0x3c;
    pub const LOG_SENSE: u8 = 0x4d;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    pub const VARIABLE_LENGTH: u8 = 0x7f;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const ACCESS_CONTROL_IN: u8 = 0x86;
    pub const ACCESS_CONTROL_OUT: u8 = 0x87;
    pub const READ_16: u8 = 0x88;
    pub const READ_ATTRIBUTE: u8 = 0x8c;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const SECURITY_PROTOCOL_IN: u8 = 0xa2;
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const SERVICE_ACTION_IN_12: u8 = 0xab;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
}

/// SCSI transport protocol identifier of iSCSI (SPC-4 §7.6.1).
pub const PROTOCOL_ID_ISCSI: u8 = 0x5;

/// Longest iSCSI name (RFC 7143 §4.2.7.1): 223 bytes.
pub const ISCSI_NAME_MAX: usize = 223;

/// Default bound on the number of registrations of one LU; more gives INSUFFICIENT
/// REGISTRATION RESOURCES (SPC-4 §5.9, registering).
pub const DEFAULT_MAX_REGISTRATIONS: usize = 1024;

/// Persistent reservation type (SPC-4 §6.15.3, the TYPE field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    /// The TYPE field value, or None for a reserved code.
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// Write Exclusive – All Registrants or Exclusive Access – All Registrants: every
    /// registered I_T nexus is a reservation holder (SPC-4 §5.9, "Persistent
    /// reservation holder").
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Write Exclusive – Registrants Only or Exclusive Access – Registrants Only.
    pub fn registrants_only(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        )
    }

    /// A Write Exclusive flavour: reads are shared.
    pub fn write_exclusive(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// Who an I_T nexus is, for registrations (SPC-4 §5.9, iSCSI TransportID SPC-4 §7.6.4.6).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NexusIdentity {
    /// iSCSI initiator name, e.g. "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test".
    pub initiator_name: String,
    /// The initiator port is name + ",i,0x" + 12 hex digits of this ISID.
    pub isid: [u8; 6],
    /// Relative target port identifier of the target port (1 while rtgt has one).
    pub relative_target_port: u16,
}

impl NexusIdentity {
    /// The iSCSI initiator port name: `name,i,0x<isid>` (RFC 7143 §4.2.7, SPC-4 §7.6.4.6).
    pub fn initiator_port_name(&self) -> String {
        format!("{},i,0x{}", self.initiator_name, isid_hex(&self.isid))
    }
}

fn isid_hex(isid: &[u8; 6]) -> String {
    isid.iter().map(|b| format!("{b:02x}")).collect()
}

/// An iSCSI TransportID (SPC-4 §7.6.4.6): format 00b names an iSCSI initiator device
/// (`isid` None), format 01b one initiator port (`isid` Some).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TransportId {
    pub name: String,
    pub isid: Option<[u8; 6]>,
}

/// Why a TransportID could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportIdError {
    /// The buffer ends before the TransportID does.
    #[error("TransportID truncated")]
    Truncated,
    /// Not iSCSI: other SCSI transports are not served by rtgt.
    #[error("TransportID protocol identifier {0:#x} is not iSCSI")]
    UnsupportedProtocol(u8),
    /// FORMAT CODE other than 00b or 01b.
    #[error("iSCSI TransportID format code {0} is reserved")]
    UnsupportedFormat(u8),
    /// ADDITIONAL LENGTH not a non-zero multiple of 4.
    #[error("iSCSI TransportID additional length {0} is not a multiple of 4")]
    BadLength(u16),
    /// Empty, too long or non-printable iSCSI name.
    #[error("bad iSCSI name in TransportID")]
    BadName,
    /// Format 01b without ",i,0x" or with an ISID that is not 12 hex digits.
    #[error("bad initiator session identifier in TransportID")]
    BadIsid,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ISCSI_NAME_MAX
        && s.bytes().all(|c| c.is_ascii_graphic() && c != b',')
}

fn parse_isid(hex: &str) -> Option<[u8; 6]> {
    let b = hex.as_bytes();
    if b.len() != 12 {
        return None;
    }
    let mut isid = [0u8; 6];
    for (i, pair) in b.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        isid[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(isid)
}

impl TransportId {
    /// The TransportID of the initiator port of `id` (format 01b).
    pub fn of_port(id: &NexusIdentity) -> TransportId {
        TransportId {
            name: id.initiator_name.clone(),
            isid: Some(id.isid),
        }
    }

    /// Parse the TransportID at the start of `b`; returns it and the bytes it occupies
    /// (4 + ADDITIONAL LENGTH).
    pub fn parse(b: &[u8]) -> Result<(TransportId, usize), TransportIdError> {
        let Some(hdr) = b.get(..4) else {
            return Err(TransportIdError::Truncated);
        };
        let protocol = hdr[0] & 0x0f;
        if protocol != PROTOCOL_ID_ISCSI {
            return Err(TransportIdError::UnsupportedProtocol(protocol));
        }
        let format = hdr[0] >> 6;
        let additional = u16::from_be_bytes([hdr[2], hdr[3]]);
        if additional == 0 || additional & 3 != 0 {
            return Err(TransportIdError::BadLength(additional));
        }
        let total = 4 + usize::from(additional);
        let Some(body) = b.get(4..total) else {
            return Err(TransportIdError::Truncated);
        };
        // The text is null-terminated and null-padded; a text filling the field is
        // accepted without a terminator.
        let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
        let text = std::str::from_utf8(&body[..end]).map_err(|_| TransportIdError::BadName)?;
        let id = match format {
            0 => {
                if !valid_name(text) {
                    return Err(TransportIdError::BadName);
                }
                TransportId {
                    name: text.to_string(),
                    isid: None,
                }
            }
            1 => {
                let lower = text.to_ascii_lowercase();
                let Some(sep) = lower.find(",i,0x") else {
                    return Err(TransportIdError::BadIsid);
                };
                let (name, isid) = (&text[..sep], &text[sep + 5..]);
                if !valid_name(name) {
                    return Err(TransportIdError::BadName);
                }
                TransportId {
                    name: name.to_string(),
                    isid: Some(parse_isid(isid).ok_or(TransportIdError::BadIsid)?),
                }
            }
            f => return Err(TransportIdError::UnsupportedFormat(f)),
        };
        Ok((id, total))
    }

    /// The wire form: format 01b when an ISID is known, else 00b; the text is
    /// null-terminated and padded with nulls to a multiple of 4 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut text: Vec<u8> = self.name.bytes().take(ISCSI_NAME_MAX).collect();
        let format = match self.isid {
            Some(isid) => {
                text.extend_from_slice(b",i,0x");
                text.extend_from_slice(isid_hex(&isid).as_bytes());
                1u8
            }
            None => 0u8,
        };
        text.push(0);
        while text.len() & 3 != 0 {
            text.push(0);
        }
        // At most 223 + 17 + 4 bytes: always fits ADDITIONAL LENGTH.
        let additional = u16::try_from(text.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(4 + text.len());
        out.push(format << 6 | PROTOCOL_ID_ISCSI);
        out.push(0);
        out.extend_from_slice(&additional.to_be_bytes());
        out.extend_from_slice(&text);
        out
    }
}

/// The command conflicts with a reservation: answer RESERVATION CONFLICT status
/// (SAM-5 §5.3.1, SPC-4 §5.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("reservation conflict")]
pub struct Conflict;

/// Why a PERSISTENT RESERVE OUT failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProutError {
    /// CHECK CONDITION with this sense.
    #[error("check condition: {0:?}")]
    Sense(Sense),
    /// RESERVATION CONFLICT status.
    #[error("reservation conflict")]
    Conflict,
}

impl From<Sense> for ProutError {
    fn from(s: Sense) -> ProutError {
        ProutError::Sense(s)
    }
}

impl From<Conflict> for ProutError {
    fn from(_: Conflict) -> ProutError {
        ProutError::Conflict
    }
}

/// Why saved APTPL state could not be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrStateError {
    #[error("not rtgt persistent reservation state (bad magic or version)")]
    BadMagic,
    #[error("persistent reservation state truncated")]
    Truncated,
    #[error("{0} bytes after the persistent reservation state")]
    TrailingBytes(usize),
    #[error("too many registrations: {0}")]
    TooMany(u32),
    #[error("invalid reservation type {0:#x}")]
    BadType(u8),
    #[error("registration {0}: {1}")]
    BadRegistration(usize, &'static str),
    #[error("reservation holder inconsistent with reservation type")]
    BadHolder,
}

/// What a PERSISTENT RESERVE OUT did that the LU must act on.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct ProutEffects {
    /// Unit attentions to queue: (nexus, asc). REGISTRATIONS PREEMPTED on preempted
    /// nexuses, RESERVATIONS RELEASED to registrants when a registrants-only or
    /// all-registrants reservation is released (or its holder unregisters, or PREEMPT
    /// changes its type), RESERVATIONS PREEMPTED to the other registrants on CLEAR
    /// (SPC-4 §5.9). Each pair appears once.
    pub unit_attentions: Vec<(NexusId, Asc)>,
    /// PREEMPT AND ABORT: abort the task sets of these nexuses (SPC-4 §5.9, "Preempting
    /// and aborting"), except the PERSISTENT RESERVE OUT command itself; may include the
    /// issuing nexus when it preempted its own reservation key.
    pub abort_nexuses: Vec<NexusId>,
    /// Save [`Reservations::aptpl_state`] again (None = remove the file): APTPL is or
    /// was active and the registrations or the reservation changed.
    pub persist: bool,
}

impl ProutEffects {
    fn ua(&mut self, nexus: NexusId, asc: Asc) {
        if !self.unit_attentions.contains(&(nexus, asc)) {
            self.unit_attentions.push((nexus, asc));
        }
    }
}

/// One registration (SPC-4 §5.9, "Registering"): a reservation key and the I_T nexus
/// (or, with `isid` None, every initiator port of the name) it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Registration {
    key: u64,
    name: String,
    /// None: registered through a TransportID of format 00b (the whole initiator device).
    isid: Option<[u8; 6]>,
    relative_target_port: u16,
    /// ALL_TG_PT was set: the registration holds on every target port.
    all_tg_pt: bool,
    /// Holder of a non all-registrants reservation (exactly one when such exists).
    holder: bool,
}

impl Registration {
    fn of_nexus(id: &NexusIdentity, key: u64, all_tg_pt: bool) -> Registration {
        Registration {
            key,
            name: id.initiator_name.clone(),
            isid: Some(id.isid),
            relative_target_port: id.relative_target_port,
            all_tg_pt,
            holder: false,
        }
    }

    fn matches(&self, id: &NexusIdentity) -> bool {
        self.name.eq_ignore_ascii_case(&id.initiator_name)
            && (self.isid.is_none() || self.isid == Some(id.isid))
            && (self.all_tg_pt || self.relative_target_port == id.relative_target_port)
    }

    /// Some I_T nexus would match both registrations.
    fn overlaps(&self, other: &Registration) -> bool {
        self.name.eq_ignore_ascii_case(&other.name)
            && (self.isid.is_none() || other.isid.is_none() || self.isid == other.isid)
            && (self.all_tg_pt
                || other.all_tg_pt
                || self.relative_target_port == other.relative_target_port)
    }

    fn transport_id(&self) -> TransportId {
        TransportId {
            name: self.name.clone(),
            isid: self.isid,
        }
    }
}

/// A connected I_T nexus.
#[derive(Clone, Debug)]
struct Nexus {
    id: NexusIdentity,
    /// Index of its registration, kept current by `relink`.
    reg: Option<usize>,
}

/// How a command fares under a persistent reservation held by another I_T nexus
/// (SPC-4 §5.9.1 table "SPC commands that are allowed in the presence of various
/// reservations", SBC-3 §4.17 table "SBC commands that are allowed in the presence of
/// various reservations").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Allowed under every type.
    Allowed,
    /// Reads the medium or state: allowed under Write Exclusive types and from
    /// registered I_T nexuses under registrants-only / all-registrants types.
    Read,
    /// Changes the medium or state: allowed only from registered I_T nexuses under
    /// registrants-only / all-registrants types. Also the default for opcodes not listed.
    Write,
    /// PERSISTENT RESERVE OUT with this service action.
    Prout(u8),
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([byte(b, at), byte(b, at + 1)])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        byte(b, at),
        byte(b, at + 1),
        byte(b, at + 2),
        byte(b, at + 3),
    ])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Classify `cdb` for [`Reservations::check`].
fn access(cdb: &[u8]) -> Access {
    let sa = byte(cdb, 1) & 0x1f;
    match byte(cdb, 0) {
        op::TEST_UNIT_READY
        | op::REQUEST_SENSE
        | op::INQUIRY
        | op::REPORT_LUNS
        | op::PERSISTENT_RESERVE_IN
        | op::READ_CAPACITY_10
        | op::LOG_SENSE
        | op::ACCESS_CONTROL_IN
        | op::ACCESS_CONTROL_OUT
        | op::RESERVE_6
        | op::RELEASE_6
        | op::RESERVE_10
        | op::RELEASE_10 => Access::Allowed,
        // READ CAPACITY(16) is allowed; GET LBA STATUS and REPORT REFERRALS read.
        op::SERVICE_ACTION_IN_16 => match sa {
            0x10 => Access::Allowed,
            0x12 | 0x13 => Access::Read,
            _ => Access::Write,
        },
        // READ MEDIA SERIAL NUMBER.
        op::SERVICE_ACTION_IN_12 if sa == 0x01 => Access::Allowed,
        op::MAINTENANCE_IN => match sa {
            // REPORT IDENTIFYING INFORMATION, REPORT TARGET PORT GROUPS, REPORT
            // ALIASES, REPORT PRIORITY, REPORT TIMESTAMP.
            0x05 | 0x0a | 0x0b | 0x0e | 0x0f => Access::Allowed,
            // REPORT SUPPORTED OPERATION CODES, REPORT SUPPORTED TASK MANAGEMENT
            // FUNCTIONS, MANAGEMENT PROTOCOL IN.
            0x0c | 0x0d | 0x10 => Access::Read,
            _ => Access::Write,
        },
        // SBC-3 §4.17: START STOP UNIT with START=1 and POWER CONDITION 0h, and
        // PREVENT ALLOW MEDIUM REMOVAL with PREVENT=00b, are allowed; others conflict.
        op::START_STOP_UNIT => {
            let b4 = byte(cdb, 4);
            if b4 & 0x01 != 0 && b4 >> 4 == 0 {
                Access::Allowed
            } else {
                Access::Write
            }
        }
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
            if byte(cdb, 4) & 0x03 == 0 {
                Access::Allowed
            } else {
                Access::Write
            }
        }
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12
        | op::RECEIVE_COPY_RESULTS
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::READ_BUFFER
        | op::RECEIVE_DIAGNOSTIC_RESULTS
        | op::READ_ATTRIBUTE
        | op::SECURITY_PROTOCOL_IN => Access::Read,
        // READ(32) and VERIFY(32) (SBC-3 §5.12, §5.29); the other 32-byte CDBs write.
        op::VARIABLE_LENGTH => match be16(cdb, 8) {
            0x0009 | 0x000a => Access::Read,
            _ => Access::Write,
        },
        op::PERSISTENT_RESERVE_OUT => Access::Prout(sa),
        _ => Access::Write,
    }
}

/// Commands another I_T nexus may still send to a logical unit reserved with
/// RESERVE(6)/(10) (SPC-2 §5.5.1: INQUIRY, REPORT LUNS and REQUEST SENSE are not
/// affected by reservations; RELEASE from a non-holder is a no-op; the REPORT ...
/// service actions of MAINTENANCE IN only describe the device server).
fn allowed_under_spc2_reservation(cdb: &[u8]) -> bool {
    match byte(cdb, 0) {
        op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE | op::RELEASE_6 | op::RELEASE_10 => true,
        op::MAINTENANCE_IN => matches!(
            byte(cdb, 1) & 0x1f,
            0x05 | 0x0a | 0x0b | 0x0c | 0x0d | 0x0e | 0x0f
        ),
        _ => false,
    }
}

fn is_reserve_or_release(op: u8) -> bool {
    matches!(
        op,
        op::RESERVE_6 | op::RELEASE_6 | op::RESERVE_10 | op::RELEASE_10
    )
}

/// Check the CDB of RESERVE(6)/(10) or RELEASE(6)/(10): third-party reservations
/// (3RDPTY, LONGID) and extents (SCSI-2) are not supported -> ILLEGAL REQUEST / INVALID
/// FIELD IN CDB (SPC-2 RESERVE §7.21, §7.22 and RELEASE). Other opcodes pass.
pub fn check_reserve_release_cdb(cdb: &[u8]) -> Result<(), Sense> {
    let b1 = byte(cdb, 1);
    match byte(cdb, 0) {
        // RESERVE(6)/RELEASE(6): SCSI-2 3RDPTY (bit 4), third party ID (bits 3..1)
        // and EXTENT (bit 0) are obsolete; refuse them rather than ignore them.
        op::RESERVE_6 | op::RELEASE_6 if b1 & 0x1f != 0 => {
            Err(Sense::invalid_field_in_cdb(1, Some(4)))
        }
        // RESERVE(10)/RELEASE(10): 3RDPTY (bit 4), LONGID (bit 1), obsolete EXTENT (bit 0).
        op::RESERVE_10 | op::RELEASE_10 if b1 & 0x13 != 0 => {
            Err(Sense::invalid_field_in_cdb(1, Some(4)))
        }
        _ => Ok(()),
    }
}

/// PERSISTENT RESERVE IN CDB (SPC-4 §6.15.1): SERVICE ACTION and ALLOCATION LENGTH.
/// A CDB shorter than 10 bytes gives INVALID FIELD IN CDB.
pub fn decode_prin(cdb: &[u8]) -> Result<(u8, u16), Sense> {
    if cdb.len() < 10 {
        return Err(Sense::invalid_field_in_cdb(0, None));
    }
    Ok((cdb[1] & 0x1f, be16(cdb, 7)))
}

/// Data-out bytes a PERSISTENT RESERVE OUT CDB announces (PARAMETER LIST LENGTH,
/// SPC-4 §6.16.1), for the transport's residual computation; 0 for other opcodes.
pub fn data_out_len(cdb: &[u8]) -> usize {
    if byte(cdb, 0) == op::PERSISTENT_RESERVE_OUT && cdb.len() >= 10 {
        usize::try_from(be32(cdb, 5)).unwrap_or(usize::MAX)
    } else {
        0
    }
}

fn length_error() -> ProutError {
    ProutError::Sense(Sense::new(
        SenseKey::ILLEGAL_REQUEST,
        Asc::PARAMETER_LIST_LENGTH_ERROR,
    ))
}

fn invalid_param(byte: u16, bit: Option<u8>) -> ProutError {
    ProutError::Sense(Sense::invalid_field_in_parameter_list(byte, bit))
}

fn invalid_cdb(byte: u16, bit: Option<u8>) -> ProutError {
    ProutError::Sense(Sense::invalid_field_in_cdb(byte, bit))
}

/// The basic PERSISTENT RESERVE OUT parameter list (SPC-4 §6.16.3).
#[derive(Clone, Copy, Debug)]
struct Basic {
    key: u64,
    sa_key: u64,
    spec_i_pt: bool,
    all_tg_pt: bool,
    aptpl: bool,
}

const APTPL_MAGIC: &[u8; 8] = b"RTGTPR\x00\x01";

/// Reservation state of one logical unit: the SPC-2 reservation, the registrations and
/// the persistent reservation (SPC-4 §5.9), and the I_T nexuses that are connected.
#[derive(Clone, Debug)]
pub struct Reservations {
    nexuses: BTreeMap<NexusId, Nexus>,
    /// In registration order (READ KEYS and READ FULL STATUS list them so).
    registrations: Vec<Registration>,
    /// The persistent reservation. For all-registrants types every registration holds
    /// it; otherwise the registration with `holder` set.
    reservation: Option<PrType>,
    /// PRgeneration (SPC-4 §6.15.2): 0 at power on, wrapping.
    generation: u32,
    /// Last valid APTPL bit received (SPC-4 §5.9, "Preserving ... power loss").
    aptpl: bool,
    /// Holder of a RESERVE(6)/(10) reservation (SPC-2 §5.5.1).
    spc2_holder: Option<NexusId>,
    max_registrations: usize,
}

impl Default for Reservations {
    fn default() -> Self {
        Reservations::new()
    }
}

impl Reservations {
    pub fn new() -> Self {
        Reservations {
            nexuses: BTreeMap::new(),
            registrations: Vec::new(),
            reservation: None,
            generation: 0,
            aptpl: false,
            spc2_holder: None,
            max_registrations: DEFAULT_MAX_REGISTRATIONS,
        }
    }

    /// Bound the number of registrations (default [`DEFAULT_MAX_REGISTRATIONS`]).
    pub fn with_max_registrations(mut self, max: usize) -> Self {
        self.max_registrations = max;
        self
    }

    /// A nexus appeared (login). Registrations made earlier for its initiator port
    /// apply to it again.
    pub fn add_nexus(&mut self, nexus: NexusId, id: NexusIdentity) {
        let reg = self.registrations.iter().position(|r| r.matches(&id));
        self.nexuses.insert(nexus, Nexus { id, reg });
    }

    /// A nexus went away (logout, I_T nexus loss): its SPC-2 reservation is released
    /// (SPC-2 §5.5.1); its registrations and persistent reservation are kept (SPC-4 §5.9).
    pub fn remove_nexus(&mut self, nexus: NexusId) {
        self.nexuses.remove(&nexus);
        if self.spc2_holder == Some(nexus) {
            self.spc2_holder = None;
        }
    }

    /// LOGICAL UNIT RESET / target reset / hard reset: releases the SPC-2 reservation
    /// only (SPC-2 §5.5.1); persistent reservations survive resets (SPC-4 §5.9.1).
    pub fn reset(&mut self) {
        self.spc2_holder = None;
    }

    /// PRgeneration (SPC-4 §6.15.2).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The persistent reservation's type, if one exists.
    pub fn reservation_type(&self) -> Option<PrType> {
        self.reservation
    }

    /// The I_T nexus holding the RESERVE(6)/(10) reservation.
    pub fn spc2_holder(&self) -> Option<NexusId> {
        self.spc2_holder
    }

    /// Whether `nexus` is registered.
    pub fn is_registered(&self, nexus: NexusId) -> bool {
        self.reg_of(nexus).is_some()
    }

    /// Whether `nexus` holds the persistent reservation (for all-registrants types,
    /// every registered nexus does).
    pub fn is_holder(&self, nexus: NexusId) -> bool {
        self.reg_of(nexus).is_some_and(|i| self.reg_holds(i))
    }

    /// Reservation keys in registration order.
    pub fn keys(&self) -> Vec<u64> {
        self.registrations.iter().map(|r| r.key).collect()
    }

    fn reg_of(&self, nexus: NexusId) -> Option<usize> {
        self.nexuses.get(&nexus).and_then(|n| n.reg)
    }

    fn reg_holds(&self, i: usize) -> bool {
        match self.reservation {
            Some(t) if t.all_registrants() => true,
            Some(_) => self.registrations.get(i).is_some_and(|r| r.holder),
            None => false,
        }
    }

    fn holder_index(&self) -> Option<usize> {
        self.registrations.iter().position(|r| r.holder)
    }

    /// Restore the invariants after a change: no reservation without registrations, a
    /// non all-registrants reservation has exactly one holder, and every connected
    /// nexus points at its registration.
    fn normalize(&mut self) {
        if self.registrations.is_empty() {
            self.reservation = None;
        }
        match self.reservation {
            Some(t) if !t.all_registrants() => {
                let mut seen = false;
                for r in &mut self.registrations {
                    if r.holder && seen {
                        r.holder = false;
                    }
                    seen |= r.holder;
                }
                if !seen {
                    self.reservation = None;
                }
            }
            _ => self.registrations.iter_mut().for_each(|r| r.holder = false),
        }
        let regs = &self.registrations;
        for n in self.nexuses.values_mut() {
            n.reg = regs.iter().position(|r| r.matches(&n.id));
        }
    }

    /// Connected nexuses of registration `i`.
    fn nexuses_of(&self, i: usize) -> Vec<NexusId> {
        self.nexuses
            .iter()
            .filter(|(_, n)| n.reg == Some(i))
            .map(|(&id, _)| id)
            .collect()
    }

    /// Connected registered nexuses other than `except`.
    fn registered_nexuses_except(&self, except: NexusId) -> Vec<NexusId> {
        self.nexuses
            .iter()
            .filter(|(&id, n)| id != except && n.reg.is_some())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Remove the registrations for which `remove` is true; returns the connected
    /// nexuses that lost their registration. Does not normalize.
    fn remove_registrations(
        &mut self,
        remove: impl Fn(usize, &Registration) -> bool,
    ) -> Vec<NexusId> {
        let doomed: Vec<bool> = self
            .registrations
            .iter()
            .enumerate()
            .map(|(i, r)| remove(i, r))
            .collect();
        let lost: Vec<NexusId> = self
            .nexuses
            .iter()
            .filter(|(_, n)| {
                n.reg
                    .is_some_and(|i| doomed.get(i).copied().unwrap_or(false))
            })
            .map(|(&id, _)| id)
            .collect();
        let mut i = 0;
        self.registrations.retain(|_| {
            let keep = !doomed.get(i).copied().unwrap_or(false);
            i += 1;
            keep
        });
        // Indices shifted: relink now so callers can keep using reg_of.
        let regs = &self.registrations;
        for n in self.nexuses.values_mut() {
            n.reg = regs.iter().position(|r| r.matches(&n.id));
        }
        lost
    }

    fn bump_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Is the command in `cdb` from `nexus` in conflict with the SPC-2 reservation or
    /// the persistent reservation? `Err` means: answer RESERVATION CONFLICT.
    ///
    /// - RESERVE/RELEASE(6/10) while registrations exist conflict, except from a
    ///   persistent reservation holder or, under a registrants-only or all-registrants
    ///   reservation, from a registered nexus; those complete with GOOD and no effect
    ///   (SPC-4 §5.9, "Exceptions to SPC-2 RESERVE and RELEASE behavior").
    /// - While a RESERVE(6)/(10) reservation exists, PERSISTENT RESERVE IN and OUT
    ///   conflict from every nexus, and other nexuses may send only INQUIRY, REPORT
    ///   LUNS, REQUEST SENSE, RELEASE and MAINTENANCE IN reports (SPC-2 §5.5.1).
    /// - Under a persistent reservation, the holder may do anything; others follow
    ///   SPC-4 §5.9.1 / SBC-3 §4.17 (see the private `access` classification).
    pub fn check(&self, nexus: NexusId, cdb: &[u8]) -> Result<(), Conflict> {
        let Some(&opcode) = cdb.first() else {
            return Ok(());
        };
        if is_reserve_or_release(opcode) {
            return self.check_reserve_release(nexus, opcode);
        }
        if let Some(holder) = self.spc2_holder {
            if matches!(
                opcode,
                op::PERSISTENT_RESERVE_IN | op::PERSISTENT_RESERVE_OUT
            ) {
                return Err(Conflict);
            }
            if holder != nexus && !allowed_under_spc2_reservation(cdb) {
                return Err(Conflict);
            }
        }
        let Some(t) = self.reservation else {
            return Ok(());
        };
        let reg = self.reg_of(nexus);
        if reg.is_some_and(|i| self.reg_holds(i)) {
            return Ok(());
        }
        let registered = reg.is_some();
        let shared = t.registrants_only() || t.all_registrants();
        let allowed = match access(cdb) {
            Access::Allowed => true,
            Access::Read => t.write_exclusive() || (shared && registered),
            Access::Write => shared && registered,
            // SPC-4 §5.9.1, table "PERSISTENT RESERVE OUT service actions that are
            // allowed in the presence of various reservations".
            Access::Prout(sa) => match sa {
                prout_sa::REGISTER | prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY => true,
                prout_sa::CLEAR
                | prout_sa::PREEMPT
                | prout_sa::PREEMPT_AND_ABORT
                | prout_sa::RELEASE => registered,
                prout_sa::RESERVE | prout_sa::REGISTER_AND_MOVE => false,
                // Invalid service action: let PERSISTENT RESERVE OUT report it.
                _ => true,
            },
        };
        if allowed {
            Ok(())
        } else {
            Err(Conflict)
        }
    }

    /// The SPC-4 exception (a) or (b) to SPC-2 RESERVE/RELEASE: GOOD, no effect.
    fn spc2_exempt(&self, nexus: NexusId) -> bool {
        match self.reg_of(nexus) {
            Some(i) => {
                self.reg_holds(i)
                    || self
                        .reservation
                        .is_some_and(|t| t.registrants_only() || t.all_registrants())
            }
            None => false,
        }
    }

    fn check_reserve_release(&self, nexus: NexusId, opcode: u8) -> Result<(), Conflict> {
        if !self.registrations.is_empty() {
            return if self.spc2_exempt(nexus) {
                Ok(())
            } else {
                Err(Conflict)
            };
        }
        match (opcode, self.spc2_holder) {
            (op::RESERVE_6 | op::RESERVE_10, Some(h)) if h != nexus => Err(Conflict),
            _ => Ok(()),
        }
    }

    /// RESERVE(6)/(10) (SPC-2 §7.21, §7.22) of the whole logical unit; check the CDB
    /// with [`check_reserve_release_cdb`] first. Err when another nexus holds it or
    /// when persistent reservation registrations exist (GOOD with no effect for the
    /// SPC-4 exceptions, see [`Reservations::check`]).
    pub fn reserve(&mut self, nexus: NexusId) -> Result<(), Conflict> {
        if !self.registrations.is_empty() {
            return if self.spc2_exempt(nexus) {
                Ok(())
            } else {
                Err(Conflict)
            };
        }
        match self.spc2_holder {
            Some(h) if h != nexus => Err(Conflict),
            _ => {
                self.spc2_holder = Some(nexus);
                Ok(())
            }
        }
    }

    /// RELEASE(6)/(10) (SPC-2 §5.5.1): releases only if held by this nexus;
    /// otherwise GOOD with no effect. While registrations exist nothing is released
    /// ([`Reservations::check`] has already answered the conflict cases).
    pub fn release(&mut self, nexus: NexusId) {
        if self.registrations.is_empty() && self.spc2_holder == Some(nexus) {
            self.spc2_holder = None;
        }
    }

    /// PERSISTENT RESERVE IN (SPC-4 §6.15): READ KEYS (0), READ RESERVATION (1),
    /// REPORT CAPABILITIES (2) or READ FULL STATUS (3). Writes at most
    /// min(allocation_length, data_in.len()) bytes and returns the length of the full
    /// response truncated to `allocation_length` (SPC-4 §4.2.5.6). Another service
    /// action -> ILLEGAL REQUEST / INVALID FIELD IN CDB (byte 1). [`Reservations::check`]
    /// answers the SPC-2 conflict before this is called.
    pub fn persistent_reserve_in(
        &self,
        _nexus: NexusId,
        service_action: u8,
        allocation_length: u16,
        data_in: &mut [u8],
    ) -> Result<usize, Sense> {
        let mut out = Out::new(data_in, usize::from(allocation_length));
        match service_action {
            prin_sa::READ_KEYS => {
                // SPC-4 §6.15.2: ADDITIONAL LENGTH counts every key, whatever the
                // allocation length.
                out.put(&self.generation.to_be_bytes());
                let len = self.registrations.len().saturating_mul(8);
                out.put(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
                for r in &self.registrations {
                    out.put(&r.key.to_be_bytes());
                }
            }
            prin_sa::READ_RESERVATION => {
                // SPC-4 §6.15.3.
                out.put(&self.generation.to_be_bytes());
                match self.reservation {
                    Some(t) => {
                        out.put(&16u32.to_be_bytes());
                        // All-registrants: RESERVATION KEY is zero (SPC-4 §5.9,
                        // "Persistent reservation holder").
                        let key = match self.holder_index() {
                            Some(i) if !t.all_registrants() => self.registrations[i].key,
                            _ => 0,
                        };
                        out.put(&key.to_be_bytes());
                        out.put(&[0; 4]); // obsolete
                        out.put(&[0, t.code()]); // reserved, SCOPE (LU_SCOPE) | TYPE
                        out.put(&[0; 2]); // obsolete
                    }
                    None => out.put(&0u32.to_be_bytes()),
                }
            }
            prin_sa::REPORT_CAPABILITIES => out.put(&self.report_capabilities()),
            prin_sa::READ_FULL_STATUS => {
                // SPC-4 §6.15.5: one full status descriptor per registration.
                let mut body = Vec::new();
                for (i, r) in self.registrations.iter().enumerate() {
                    let holds = self.reg_holds(i);
                    let tid = r.transport_id().encode();
                    body.extend_from_slice(&r.key.to_be_bytes());
                    body.extend_from_slice(&[0; 4]);
                    body.push(u8::from(r.all_tg_pt) << 1 | u8::from(holds));
                    body.push(match self.reservation {
                        Some(t) if holds => t.code(), // SCOPE LU_SCOPE (0h) | TYPE
                        _ => 0,
                    });
                    body.extend_from_slice(&[0; 4]);
                    body.extend_from_slice(&r.relative_target_port.to_be_bytes());
                    let tid_len = u32::try_from(tid.len()).unwrap_or(u32::MAX);
                    body.extend_from_slice(&tid_len.to_be_bytes());
                    body.extend_from_slice(&tid);
                }
                out.put(&self.generation.to_be_bytes());
                out.put(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.put(&body);
            }
            _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
        }
        Ok(out.finish())
    }

    /// REPORT CAPABILITIES parameter data (SPC-4 §6.15.4).
    fn report_capabilities(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        // LENGTH.
        b[1] = 8;
        // CRH (SPC-4 exceptions to RESERVE/RELEASE), SIP_C, ATP_C, PTPL_C.
        b[2] = 0x10 | 0x08 | 0x04 | 0x01;
        // TMV; ALLOW COMMANDS 011b: TEST UNIT READY allowed through Write Exclusive
        // and Exclusive Access, and MODE SENSE, READ BUFFER, REPORT SUPPORTED
        // OPERATION CODES, ... allowed through Write Exclusive; PTPL_A.
        b[3] = 0x80 | 0x30 | u8::from(self.aptpl);
        // PERSISTENT RESERVATION TYPE MASK: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC,
        // WR_EX; EX_AC_AR.
        b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
        b[5] = 0x01;
        b
    }

    /// PERSISTENT RESERVE OUT (SPC-4 §6.16). `cdb` is the 10-byte CDB (SERVICE ACTION,
    /// SCOPE, TYPE, PARAMETER LIST LENGTH), `param` the data-out. Errors are CHECK
    /// CONDITION sense or RESERVATION CONFLICT; on error nothing changed.
    pub fn persistent_reserve_out(
        &mut self,
        nexus: NexusId,
        cdb: &[u8],
        param: &[u8],
    ) -> Result<ProutEffects, ProutError> {
        if cdb.len() < 10 {
            return Err(invalid_cdb(0, None));
        }
        let sa = cdb[1] & 0x1f;
        if sa > prout_sa::REGISTER_AND_MOVE {
            return Err(invalid_cdb(1, Some(4)));
        }
        // SPC-2 §5.5.1: under a RESERVE(6)/(10) reservation every PERSISTENT RESERVE
        // command conflicts ([`Reservations::check`] says so first).
        if self.spc2_holder.is_some() {
            return Err(ProutError::Conflict);
        }
        let scope = cdb[2] >> 4;
        let type_code = cdb[2] & 0x0f;
        let plen = usize::try_from(be32(cdb, 5)).unwrap_or(usize::MAX);
        // The parameter list is the first PARAMETER LIST LENGTH bytes of data-out; a
        // shorter data-out cannot hold it.
        let Some(p) = param.get(..plen) else {
            return Err(length_error());
        };
        // SPC-4 §6.16.3: the basic parameter list is 24 bytes, longer only with
        // SPEC_I_PT (then at least 28 with the TRANSPORTID PARAMETER DATA LENGTH);
        // REGISTER AND MOVE has its own layout (§6.16.4), at least 24 bytes.
        if plen < 24 {
            return Err(length_error());
        }
        let basic = Basic {
            key: be64(p, 0),
            sa_key: be64(p, 8),
            spec_i_pt: p[20] & 0x08 != 0,
            all_tg_pt: p[20] & 0x04 != 0,
            aptpl: p[20] & 0x01 != 0,
        };
        if sa != prout_sa::REGISTER_AND_MOVE {
            if !basic.spec_i_pt && plen != 24 {
                return Err(length_error());
            }
            if basic.spec_i_pt && sa != prout_sa::REGISTER {
                // SPEC_I_PT is valid only with REGISTER.
                return Err(invalid_param(20, Some(3)));
            }
            if basic.spec_i_pt && plen < 28 {
                return Err(length_error());
            }
        }
        // SCOPE must be LU_SCOPE and TYPE valid where the service action uses them
        // (SPC-4 §6.16.2, table "PERSISTENT RESERVE OUT service actions and valid
        // parameters"). RELEASE compares TYPE with the reservation instead.
        let prtype = match sa {
            prout_sa::RESERVE
            | prout_sa::PREEMPT
            | prout_sa::PREEMPT_AND_ABORT
            | prout_sa::REGISTER_AND_MOVE
            | prout_sa::RELEASE => {
                if scope != 0 {
                    return Err(invalid_cdb(2, Some(7)));
                }
                let t = PrType::from_code(type_code);
                if t.is_none() && sa != prout_sa::RELEASE {
                    return Err(invalid_cdb(2, Some(3)));
                }
                t
            }
            _ => None,
        };
        let aptpl_before = self.aptpl;
        let mut fx = ProutEffects::default();
        let changed = match (sa, prtype) {
            (prout_sa::REGISTER, _) => self.register(nexus, basic, false, p, &mut fx)?,
            (prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY, _) => {
                self.register(nexus, basic, true, p, &mut fx)?
            }
            (prout_sa::RESERVE, Some(t)) => self.pr_reserve(nexus, basic.key, t)?,
            (prout_sa::RELEASE, _) => self.pr_release(nexus, basic.key, type_code, &mut fx)?,
            (prout_sa::CLEAR, _) => self.pr_clear(nexus, basic.key, &mut fx)?,
            (prout_sa::PREEMPT, Some(t)) => self.pr_preempt(nexus, basic, t, false, &mut fx)?,
            (prout_sa::PREEMPT_AND_ABORT, Some(t)) => {
                self.pr_preempt(nexus, basic, t, true, &mut fx)?
            }
            (prout_sa::REGISTER_AND_MOVE, Some(_)) => self.register_and_move(nexus, p)?,
            // Unreachable: the service action and type were checked above.
            _ => return Err(invalid_cdb(1, Some(4))),
        };
        if changed {
            self.normalize();
            fx.persist = aptpl_before || self.aptpl;
        }
        Ok(fx)
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.9, "Registering",
    /// table "Register behaviors"). Returns whether anything changed.
    fn register(
        &mut self,
        nexus: NexusId,
        b: Basic,
        ignore_existing: bool,
        p: &[u8],
        fx: &mut ProutEffects,
    ) -> Result<bool, ProutError> {
        match self.reg_of(nexus) {
            None => {
                if !ignore_existing && b.key != 0 {
                    return Err(ProutError::Conflict);
                }
                if b.sa_key == 0 {
                    // Unregistered, zero SERVICE ACTION RESERVATION KEY: GOOD, no change.
                    return Ok(false);
                }
                let Some(id) = self.nexuses.get(&nexus).map(|n| n.id.clone()) else {
                    // The LU never told us who this nexus is.
                    return Err(ProutError::Sense(Sense::new(
                        SenseKey::HARDWARE_ERROR,
                        Asc::INTERNAL_TARGET_FAILURE,
                    )));
                };
                let mut new = vec![Registration::of_nexus(&id, b.sa_key, b.all_tg_pt)];
                if b.spec_i_pt {
                    self.spec_i_pt_registrations(&id, b, p, &mut new)?;
                }
                if new
                    .iter()
                    .any(|n| self.registrations.iter().any(|r| r.overlaps(n)))
                {
                    return Err(invalid_param(if b.spec_i_pt { 28 } else { 20 }, None));
                }
                if self.registrations.len().saturating_add(new.len()) > self.max_registrations {
                    return Err(ProutError::Sense(Sense::new(
                        SenseKey::ILLEGAL_REQUEST,
                        Asc::INSUFFICIENT_REGISTRATION_RESOURCES,
                    )));
                }
                self.registrations.extend(new);
            }
            Some(i) => {
                if !ignore_existing && b.key != self.registrations[i].key {
                    return Err(ProutError::Conflict);
                }
                if b.spec_i_pt {
                    // SPEC_I_PT from a registered I_T nexus (SPC-4 §6.16.3).
                    return Err(invalid_param(20, Some(3)));
                }
                if b.sa_key != 0 {
                    self.registrations[i].key = b.sa_key;
                } else {
                    self.unregister(nexus, i, fx);
                }
            }
        }
        self.aptpl = b.aptpl;
        self.bump_generation();
        Ok(true)
    }

    /// The TransportIDs of a REGISTER with SPEC_I_PT=1 (SPC-4 §6.16.3): each names an
    /// initiator port (or device) to register with the same key, on the target port the
    /// command came in on. The issuing port itself is skipped; a port already
    /// registered, or listed twice, is INVALID FIELD IN PARAMETER LIST.
    fn spec_i_pt_registrations(
        &self,
        issuer: &NexusIdentity,
        b: Basic,
        p: &[u8],
        new: &mut Vec<Registration>,
    ) -> Result<(), ProutError> {
        let tpdl = usize::try_from(be32(p, 24)).unwrap_or(usize::MAX);
        if tpdl.checked_add(28) != Some(p.len()) {
            return Err(length_error());
        }
        let mut at = 28;
        while at < p.len() {
            let (tid, len) = TransportId::parse(&p[at..]).map_err(|e| match e {
                TransportIdError::Truncated => length_error(),
                _ => invalid_param(u16::try_from(at).unwrap_or(u16::MAX), None),
            })?;
            let reg = Registration {
                key: b.sa_key,
                name: tid.name,
                isid: tid.isid,
                relative_target_port: issuer.relative_target_port,
                all_tg_pt: b.all_tg_pt,
                holder: false,
            };
            if !reg.matches(issuer) {
                if new.iter().any(|n| n.overlaps(&reg)) {
                    return Err(invalid_param(u16::try_from(at).unwrap_or(u16::MAX), None));
                }
                new.push(reg);
            }
            at += len;
        }
        Ok(())
    }

    /// Remove registration `i` of `nexus` (SPC-4 §5.9, "Unregistering"). A holder
    /// releases its (non all-registrants) reservation, with RESERVATIONS RELEASED to
    /// the other registered nexuses when it was registrants-only; an all-registrants
    /// reservation ends with its last registrant (by `normalize`).
    fn unregister(&mut self, nexus: NexusId, i: usize, fx: &mut ProutEffects) {
        let t = self.reservation;
        let released = self.registrations.get(i).is_some_and(|r| r.holder);
        self.remove_registrations(|j, _| j == i);
        if released {
            self.reservation = None;
            if t.is_some_and(PrType::registrants_only) {
                for n in self.registered_nexuses_except(nexus) {
                    fx.ua(n, Asc::RESERVATIONS_RELEASED);
                }
            }
        }
    }

    /// RESERVE (SPC-4 §5.9, "Reserving").
    fn pr_reserve(&mut self, nexus: NexusId, key: u64, t: PrType) -> Result<bool, ProutError> {
        let i = self.reg_of(nexus).ok_or(ProutError::Conflict)?;
        if key != self.registrations[i].key {
            return Err(ProutError::Conflict);
        }
        match self.reservation {
            // The holder asking for the same type and scope: GOOD, no change; any
            // other RESERVE while a reservation exists conflicts.
            Some(cur) if cur == t && self.reg_holds(i) => Ok(false),
            Some(_) => Err(ProutError::Conflict),
            None => {
                self.reservation = Some(t);
                if !t.all_registrants() {
                    self.registrations[i].holder = true;
                }
                Ok(true)
            }
        }
    }

    /// RELEASE (SPC-4 §5.9, "Releasing").
    fn pr_release(
        &mut self,
        nexus: NexusId,
        key: u64,
        type_code: u8,
        fx: &mut ProutEffects,
    ) -> Result<bool, ProutError> {
        let i = self.reg_of(nexus).ok_or(ProutError::Conflict)?;
        if key != self.registrations[i].key {
            return Err(ProutError::Conflict);
        }
        let Some(t) = self.reservation else {
            return Ok(false);
        };
        if !self.reg_holds(i) {
            // A registered non-holder: GOOD, the reservation stays.
            return Ok(false);
        }
        if type_code != t.code() {
            return Err(ProutError::Sense(Sense::new(
                SenseKey::ILLEGAL_REQUEST,
                Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
            )));
        }
        self.reservation = None;
        self.registrations.iter_mut().for_each(|r| r.holder = false);
        if t.registrants_only() || t.all_registrants() {
            for n in self.registered_nexuses_except(nexus) {
                fx.ua(n, Asc::RESERVATIONS_RELEASED);
            }
        }
        Ok(true)
    }

    /// CLEAR (SPC-4 §5.9, "Clearing"): release the reservation, remove every
    /// registration; RESERVATIONS PREEMPTED to every other registered nexus.
    fn pr_clear(
        &mut self,
        nexus: NexusId,
        key: u64,
        fx: &mut ProutEffects,
    ) -> Result<bool, ProutError> {
        let i = self.reg_of(nexus).ok_or(ProutError::Conflict)?;
        if key != self.registrations[i].key {
            return Err(ProutError::Conflict);
        }
        for n in self.registered_nexuses_except(nexus) {
            fx.ua(n, Asc::RESERVATIONS_PREEMPTED);
        }
        self.remove_registrations(|_, _| true);
        self.reservation = None;
        self.bump_generation();
        Ok(true)
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.9, "Preempting").
    fn pr_preempt(
        &mut self,
        nexus: NexusId,
        b: Basic,
        t: PrType,
        abort: bool,
        fx: &mut ProutEffects,
    ) -> Result<bool, ProutError> {
        let me = self.reg_of(nexus).ok_or(ProutError::Conflict)?;
        if b.key != self.registrations[me].key {
            return Err(ProutError::Conflict);
        }
        let sa_key = b.sa_key;
        // The registrations (by index) the command removes, and whether the preempting
        // nexus takes the reservation with the CDB's TYPE.
        let (doomed, take): (Vec<usize>, bool) = match self.reservation {
            Some(cur) if cur.all_registrants() && sa_key == 0 => {
                // All-registrants, key zero: every other registration goes and the
                // preempting nexus reserves with the new type.
                (
                    (0..self.registrations.len()).filter(|&j| j != me).collect(),
                    true,
                )
            }
            Some(cur)
                if !cur.all_registrants()
                    && self
                        .holder_index()
                        .is_some_and(|h| self.registrations[h].key == sa_key) =>
            {
                // The key of the holder: release it, remove that key's registrations
                // except the preempting nexus's own, reserve for the preempting nexus.
                (
                    self.matching_key(sa_key)
                        .into_iter()
                        .filter(|&j| j != me)
                        .collect(),
                    true,
                )
            }
            _ => {
                // No reservation, or a key that does not hold it: only registrations
                // go (the preempting nexus's too if its key matches); zero is invalid.
                if sa_key == 0 {
                    return Err(invalid_param(8, None));
                }
                let doomed = self.matching_key(sa_key);
                if doomed.is_empty() {
                    return Err(ProutError::Conflict);
                }
                (doomed, false)
            }
        };
        let before = self.reservation;
        // Abort and announce to the nexuses that lose their registration (PREEMPT AND
        // ABORT also aborts the preempting nexus's tasks when its own key matched).
        if abort {
            let mut victims: Vec<NexusId> = Vec::new();
            for &j in &doomed {
                victims.extend(self.nexuses_of(j));
            }
            if self.registrations[me].key == sa_key {
                victims.extend(self.nexuses_of(me));
            }
            victims.sort();
            victims.dedup();
            fx.abort_nexuses = victims;
        }
        let lost = self.remove_registrations(|j, _| doomed.contains(&j));
        for n in lost {
            if n != nexus {
                fx.ua(n, Asc::REGISTRATIONS_PREEMPTED);
            }
        }
        if take {
            // The preempting registration survived (it was excluded above).
            if let Some(me) = self.reg_of(nexus) {
                self.registrations.iter_mut().for_each(|r| r.holder = false);
                self.reservation = Some(t);
                if !t.all_registrants() {
                    self.registrations[me].holder = true;
                }
                // A changed type is a release for the registrants that remain.
                if before != Some(t) {
                    for n in self.registered_nexuses_except(nexus) {
                        fx.ua(n, Asc::RESERVATIONS_RELEASED);
                    }
                }
            }
        }
        self.bump_generation();
        Ok(true)
    }

    fn matching_key(&self, key: u64) -> Vec<usize> {
        self.registrations
            .iter()
            .enumerate()
            .filter(|(_, r)| r.key == key)
            .map(|(j, _)| j)
            .collect()
    }

    /// REGISTER AND MOVE (SPC-4 §5.9, "Registering and moving the reservation";
    /// parameter list §6.16.4).
    fn register_and_move(&mut self, nexus: NexusId, p: &[u8]) -> Result<bool, ProutError> {
        let key = be64(p, 0);
        let sa_key = be64(p, 8);
        let unreg = p.get(17).is_some_and(|b| b & 0x02 != 0);
        let aptpl = p.get(17).is_some_and(|b| b & 0x01 != 0);
        let rtp = be16(p, 18);
        let me = self.reg_of(nexus).ok_or(ProutError::Conflict)?;
        if key != self.registrations[me].key {
            return Err(ProutError::Conflict);
        }
        if sa_key == 0 {
            return Err(invalid_param(8, None));
        }
        let tid_len = usize::try_from(be32(p, 20)).unwrap_or(usize::MAX);
        if tid_len.checked_add(24) != Some(p.len()) {
            return Err(length_error());
        }
        let (tid, used) = TransportId::parse(&p[24..]).map_err(|e| match e {
            TransportIdError::Truncated => length_error(),
            _ => invalid_param(24, None),
        })?;
        if used != tid_len {
            return Err(length_error());
        }
        // The RELATIVE TARGET PORT IDENTIFIER must name one of our target ports.
        let known_port = self
            .nexuses
            .values()
            .any(|n| n.id.relative_target_port == rtp);
        if !known_port {
            return Err(invalid_param(18, None));
        }
        let dest = Registration {
            key: sa_key,
            name: tid.name,
            isid: tid.isid,
            relative_target_port: rtp,
            all_tg_pt: false,
            holder: false,
        };
        let me_id = self.nexuses.get(&nexus).map(|n| n.id.clone());
        if me_id.is_some_and(|id| dest.matches(&id)) {
            // The TransportID names the issuing I_T nexus.
            return Err(invalid_param(24, None));
        }
        let Some(cur) = self.reservation else {
            return Err(invalid_cdb(1, Some(4)));
        };
        if !self.reg_holds(me) || cur.all_registrants() {
            return Err(ProutError::Conflict);
        }
        let existing: Vec<usize> = self
            .registrations
            .iter()
            .enumerate()
            .filter(|(_, r)| r.overlaps(&dest))
            .map(|(j, _)| j)
            .collect();
        let d = match existing.as_slice() {
            [] => {
                if self.registrations.len() >= self.max_registrations {
                    return Err(ProutError::Sense(Sense::new(
                        SenseKey::ILLEGAL_REQUEST,
                        Asc::INSUFFICIENT_REGISTRATION_RESOURCES,
                    )));
                }
                self.registrations.push(dest);
                self.registrations.len() - 1
            }
            [j] if *j != me => *j,
            _ => return Err(invalid_param(24, None)),
        };
        self.registrations[me].holder = false;
        self.registrations[d].key = sa_key;
        self.registrations[d].holder = true;
        if unreg {
            self.remove_registrations(|j, _| j == me);
        }
        self.aptpl = aptpl;
        self.bump_generation();
        Ok(true)
    }

    /// APTPL (SPC-4 §5.9, "Preserving persistent reservations and registrations
    /// through power loss"): Some(bytes) to store beside the LUN when APTPL is active,
    /// None when it is not (delete the file).
    pub fn aptpl_state(&self) -> Option<Vec<u8>> {
        if !self.aptpl {
            return None;
        }
        let mut b = Vec::with_capacity(16 + self.registrations.len() * 64);
        b.extend_from_slice(APTPL_MAGIC);
        b.push(self.reservation.map_or(0, PrType::code));
        let count = u32::try_from(self.registrations.len()).unwrap_or(u32::MAX);
        b.extend_from_slice(&count.to_be_bytes());
        for r in &self.registrations {
            b.extend_from_slice(&r.key.to_be_bytes());
            b.push(
                u8::from(r.isid.is_some()) | u8::from(r.all_tg_pt) << 1 | u8::from(r.holder) << 2,
            );
            b.extend_from_slice(&r.isid.unwrap_or_default());
            b.extend_from_slice(&r.relative_target_port.to_be_bytes());
            let name = &r.name.as_bytes()[..r.name.len().min(ISCSI_NAME_MAX)];
            b.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
            b.extend_from_slice(name);
        }
        Some(b)
    }

    /// Restore registrations and the reservation saved by [`Reservations::aptpl_state`]
    /// (a tgtd restart = power on: PRgeneration restarts at 0, APTPL stays active).
    /// Malformed input gives an error and leaves the state unchanged.
    pub fn restore_aptpl(&mut self, bytes: &[u8]) -> Result<(), PrStateError> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(8)? != APTPL_MAGIC {
            return Err(PrStateError::BadMagic);
        }
        let type_code = r.u8()?;
        let reservation = match type_code {
            0 => None,
            c => Some(PrType::from_code(c).ok_or(PrStateError::BadType(c))?),
        };
        let count = r.u32()?;
        let n = usize::try_from(count).unwrap_or(usize::MAX);
        if n > self.max_registrations {
            return Err(PrStateError::TooMany(count));
        }
        let mut registrations: Vec<Registration> = Vec::new();
        for i in 0..n {
            let key = r.u64()?;
            let flags = r.u8()?;
            let isid: [u8; 6] = r.take(6)?.try_into().map_err(|_| PrStateError::Truncated)?;
            let relative_target_port = r.u16()?;
            let name_len = usize::from(r.u16()?);
            let name = r.take(name_len)?;
            if flags & !0x07 != 0 {
                return Err(PrStateError::BadRegistration(i, "unknown flags"));
            }
            if key == 0 {
                return Err(PrStateError::BadRegistration(i, "zero reservation key"));
            }
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| valid_name(n))
                .ok_or(PrStateError::BadRegistration(i, "bad initiator name"))?;
            let reg = Registration {
                key,
                name: name.to_string(),
                isid: (flags & 0x01 != 0).then_some(isid),
                relative_target_port,
                all_tg_pt: flags & 0x02 != 0,
                holder: flags & 0x04 != 0,
            };
            if registrations.iter().any(|o| o.overlaps(&reg)) {
                return Err(PrStateError::BadRegistration(i, "duplicate initiator port"));
            }
            registrations.push(reg);
        }
        if r.at != bytes.len() {
            return Err(PrStateError::TrailingBytes(bytes.len() - r.at));
        }
        let holders = registrations.iter().filter(|r| r.holder).count();
        let consistent = match reservation {
            Some(t) if !t.all_registrants() => holders == 1,
            Some(_) => holders == 0 && !registrations.is_empty(),
            None => holders == 0,
        };
        if !consistent {
            return Err(PrStateError::BadHolder);
        }
        self.registrations = registrations;
        self.reservation = reservation;
        self.generation = 0;
        self.aptpl = true;
        self.normalize();
        Ok(())
    }
}

/// Bounds-checked reader for [`Reservations::restore_aptpl`].
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PrStateError> {
        let end = self.at.checked_add(n).ok_or(PrStateError::Truncated)?;
        let s = self.b.get(self.at..end).ok_or(PrStateError::Truncated)?;
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PrStateError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PrStateError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, PrStateError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, PrStateError> {
        let s = self.take(8)?;
        Ok(be64(s, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: NexusId = NexusId(1);
    const B: NexusId = NexusId(2);
    const C: NexusId = NexusId(3);

    const KA: u64 = 0xaaaa;
    const KB: u64 = 0xbbbb;
    const KC: u64 = 0xcccc;

    const ALL_TYPES: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const TUR: [u8; 6] = [0; 6];
    const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
    const MODE_SENSE6: [u8; 6] = [0x1a, 0, 0x3f, 0, 192, 0];
    const READ_CAPACITY10: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const RESERVE6: [u8; 6] = [0x16, 0, 0, 0, 0, 0];
    const RELEASE6: [u8; 6] = [0x17, 0, 0, 0, 0, 0];

    fn ident(name: &str, isid_low: u8) -> NexusIdentity {
        NexusIdentity {
            initiator_name: name.to_string(),
            isid: [0x40, 0, 0x01, 0x37, 0, isid_low],
            relative_target_port: 1,
        }
    }

    /// Three nexuses from three initiators.
    fn lu() -> Reservations {
        let mut r = Reservations::new();
        r.add_nexus(A, ident("iqn.2024-01.test:a", 1));
        r.add_nexus(B, ident("iqn.2024-01.test:b", 2));
        r.add_nexus(C, ident("iqn.2024-01.test:c", 3));
        r
    }

    fn prout_cdb(sa: u8, scope_type: u8, plen: u32) -> [u8; 10] {
        let l = plen.to_be_bytes();
        [0x5f, sa, scope_type, 0, 0, l[0], l[1], l[2], l[3], 0]
    }

    fn basic(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        p
    }

    fn prout(
        r: &mut Reservations,
        n: NexusId,
        sa: u8,
        t: u8,
        key: u64,
        sa_key: u64,
    ) -> Result<ProutEffects, ProutError> {
        r.persistent_reserve_out(n, &prout_cdb(sa, t, 24), &basic(key, sa_key, 0))
    }

    fn register(r: &mut Reservations, n: NexusId, key: u64) -> ProutEffects {
        prout(r, n, prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0, key).unwrap()
    }

    fn unregister(r: &mut Reservations, n: NexusId, key: u64) -> ProutEffects {
        prout(r, n, prout_sa::REGISTER, 0, key, 0).unwrap()
    }

    fn reserve(r: &mut Reservations, n: NexusId, key: u64, t: PrType) -> ProutEffects {
        prout(r, n, prout_sa::RESERVE, t.code(), key, 0).unwrap()
    }

    fn release(r: &mut Reservations, n: NexusId, key: u64, t: PrType) -> ProutEffects {
        prout(r, n, prout_sa::RELEASE, t.code(), key, 0).unwrap()
    }

    fn prin(r: &Reservations, sa: u8, alloc: u16) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = r.persistent_reserve_in(A, sa, alloc, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn read_keys(r: &Reservations) -> (u32, Vec<u64>) {
        let b = prin(r, prin_sa::READ_KEYS, 4096);
        assert_eq!(be32(&b, 4) as usize, b.len() - 8);
        let keys = b[8..].chunks(8).map(|c| be64(c, 0)).collect();
        (be32(&b, 0), keys)
    }

    /// (key, type) of the reservation, from READ RESERVATION.
    fn read_reservation(r: &Reservations) -> Option<(u64, u8)> {
        let b = prin(r, prin_sa::READ_RESERVATION, 4096);
        match be32(&b, 4) {
            0 => {
                assert_eq!(b.len(), 8);
                None
            }
            16 => {
                assert_eq!(b.len(), 24);
                assert_eq!(b[21] >> 4, 0, "LU_SCOPE");
                Some((be64(&b, 8), b[21] & 0x0f))
            }
            l => panic!("additional length {l}"),
        }
    }

    fn sense_of(e: ProutError) -> (SenseKey, Asc) {
        match e {
            ProutError::Sense(s) => (s.key, s.asc),
            ProutError::Conflict => panic!("conflict, expected sense"),
        }
    }

    fn field_pointer(e: &ProutError) -> (bool, u16) {
        match e {
            ProutError::Sense(s) => {
                let fp = s.field_pointer.expect("field pointer");
                (fp.in_cdb, fp.byte)
            }
            ProutError::Conflict => panic!("conflict"),
        }
    }

    fn invalid_cdb_at(e: ProutError, byte: u16) {
        assert_eq!(field_pointer(&e), (true, byte), "{e:?}");
        assert_eq!(
            sense_of(e),
            (SenseKey::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
        );
    }

    fn invalid_param(e: ProutError) {
        assert_eq!(
            sense_of(e),
            (
                SenseKey::ILLEGAL_REQUEST,
                Asc::INVALID_FIELD_IN_PARAMETER_LIST
            )
        );
    }

    fn length_error(e: ProutError) {
        assert_eq!(
            sense_of(e),
            (SenseKey::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR)
        );
    }

    fn uas(fx: &ProutEffects) -> Vec<(NexusId, Asc)> {
        let mut v = fx.unit_attentions.clone();
        v.sort_by_key(|(n, a)| (*n, a.0));
        v
    }

    impl Reservations {
        /// The invariants every operation keeps.
        fn assert_invariants(&self) {
            let holders = self.registrations.iter().filter(|r| r.holder).count();
            match self.reservation {
                Some(t) if !t.all_registrants() => assert_eq!(holders, 1),
                Some(_) => {
                    assert_eq!(holders, 0);
                    assert!(!self.registrations.is_empty());
                }
                None => assert_eq!(holders, 0),
            }
            for (i, a) in self.registrations.iter().enumerate() {
                assert_ne!(a.key, 0);
                for b in &self.registrations[i + 1..] {
                    assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
                }
            }
            for n in self.nexuses.values() {
                assert_eq!(
                    n.reg,
                    self.registrations.iter().position(|r| r.matches(&n.id))
                );
            }
        }
    }

    // --- REGISTER, REGISTER AND IGNORE EXISTING KEY -------------------------------

    /// libiscsi ProutRegisterSimple.
    #[test]
    fn register_simple() {
        let mut r = lu();
        register(&mut r, A, KA);
        assert_eq!(read_keys(&r).1, vec![KA]);
        assert!(r.is_registered(A));
        // Re-registering with a wrong RESERVATION KEY conflicts.
        assert_eq!(
            prout(&mut r, A, prout_sa::REGISTER, 0, 0, KA + 1),
            Err(ProutError::Conflict)
        );
        unregister(&mut r, A, KA);
        assert_eq!(read_keys(&r).1, Vec::<u64>::new());
        assert!(!r.is_registered(A));
        r.assert_invariants();
    }

    /// SPC-4 §5.9 table "Register behaviors for a REGISTER service action".
    #[test]
    fn register_behaviors() {
        let mut r = lu();
        // Unregistered, RESERVATION KEY non-zero: conflict.
        assert_eq!(
            prout(&mut r, A, prout_sa::REGISTER, 0, 5, KA),
            Err(ProutError::Conflict)
        );
        // Unregistered, both zero: GOOD, nothing changes (not even PRgeneration).
        let fx = prout(&mut r, A, prout_sa::REGISTER, 0, 0, 0).unwrap();
        assert_eq!(fx, ProutEffects::default());
        assert_eq!(r.generation(), 0);
        // Unregistered, key zero, new key: registered.
        prout(&mut r, A, prout_sa::REGISTER, 0, 0, KA).unwrap();
        assert_eq!(r.generation(), 1);
        // Registered, right key: the key changes.
        prout(&mut r, A, prout_sa::REGISTER, 0, KA, KB).unwrap();
        assert_eq!(read_keys(&r), (2, vec![KB]));
        // Registered, wrong key: conflict; REGISTER AND IGNORE EXISTING KEY ignores it.
        assert_eq!(
            prout(&mut r, A, prout_sa::REGISTER, 0, KA, KC),
            Err(ProutError::Conflict)
        );
        prout(
            &mut r,
            A,
            prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY,
            0,
            12345,
            KC,
        )
        .unwrap();
        assert_eq!(read_keys(&r), (3, vec![KC]));
        // REGISTER AND IGNORE EXISTING KEY with a zero key unregisters.
        prout(
            &mut r,
            A,
            prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY,
            0,
            9,
            0,
        )
        .unwrap();
        assert_eq!(read_keys(&r), (4, vec![]));
        // Unregistered, REGISTER AND IGNORE EXISTING KEY with zero: no change.
        prout(
            &mut r,
            A,
            prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY,
            0,
            9,
            0,
        )
        .unwrap();
        assert_eq!(r.generation(), 4);
        r.assert_invariants();
    }

    /// libiscsi ProutClearSimple and SPC-4 §6.15.2: RESERVE and RELEASE do not bump
    /// PRgeneration; REGISTER, CLEAR, PREEMPT do, once each.
    #[test]
    fn generation_counting() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        assert_eq!(r.generation(), 2);
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        release(&mut r, A, KA, PrType::ExclusiveAccess);
        assert_eq!(r.generation(), 2);
        prout(
            &mut r,
            A,
            prout_sa::PREEMPT,
            PrType::ExclusiveAccess.code(),
            KA,
            KB,
        )
        .unwrap();
        assert_eq!(r.generation(), 3);
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        assert_eq!(read_reservation(&r), Some((KA, 3)));
        prout(&mut r, A, prout_sa::CLEAR, 0, KA, 0).unwrap();
        assert_eq!(read_reservation(&r), None);
        assert_eq!(read_keys(&r), (4, vec![]));
    }

    #[test]
    fn generation_wraps() {
        let mut r = lu();
        r.generation = u32::MAX;
        register(&mut r, A, KA);
        assert_eq!(r.generation(), 0);
    }

    // --- RESERVE and the access rules ----------------------------------------------

    /// libiscsi ProutReserveAccess{EA,WE,EARO,WERO,EAAR,WEAR}: which of READ and WRITE
    /// a registered and an unregistered non-holder may send.
    #[test]
    fn access_matrix_per_type() {
        // (type, registered read, registered write, unregistered read, unregistered write)
        let table = [
            (PrType::ExclusiveAccess, false, false, false, false),
            (PrType::WriteExclusive, true, false, true, false),
            (
                PrType::ExclusiveAccessRegistrantsOnly,
                true,
                true,
                false,
                false,
            ),
            (
                PrType::WriteExclusiveRegistrantsOnly,
                true,
                true,
                true,
                false,
            ),
            (
                PrType::ExclusiveAccessAllRegistrants,
                true,
                true,
                false,
                false,
            ),
            (
                PrType::WriteExclusiveAllRegistrants,
                true,
                true,
                true,
                false,
            ),
        ];
        for (t, reg_read, reg_write, unreg_read, unreg_write) in table {
            let mut r = lu();
            register(&mut r, A, KA);
            register(&mut r, B, KB);
            reserve(&mut r, A, KA, t);
            let expect_key = if t.all_registrants() { 0 } else { KA };
            assert_eq!(read_reservation(&r), Some((expect_key, t.code())), "{t:?}");
            assert!(r.check(A, &READ10).is_ok(), "{t:?}");
            assert!(r.check(A, &WRITE10).is_ok(), "{t:?}");
            assert_eq!(r.check(B, &READ10).is_ok(), reg_read, "{t:?} reg read");
            assert_eq!(r.check(B, &WRITE10).is_ok(), reg_write, "{t:?} reg write");
            unregister(&mut r, B, KB);
            assert_eq!(r.check(B, &READ10).is_ok(), unreg_read, "{t:?} unreg read");
            assert_eq!(
                r.check(B, &WRITE10).is_ok(),
                unreg_write,
                "{t:?} unreg write"
            );
            // Always allowed: TEST UNIT READY, INQUIRY, READ CAPACITY, REPORT LUNS,
            // REQUEST SENSE, PERSISTENT RESERVE IN, READ CAPACITY(16).
            let mut rc16 = [0u8; 16];
            rc16[0] = 0x9e;
            rc16[1] = 0x10;
            for cdb in [
                &TUR[..],
                &INQUIRY[..],
                &READ_CAPACITY10[..],
                &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0][..],
                &[0x03, 0, 0, 0, 18, 0][..],
                &[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0][..],
                &rc16[..],
            ] {
                assert!(r.check(B, cdb).is_ok(), "{t:?} {cdb:02x?}");
                assert!(r.check(NexusId(77), cdb).is_ok(), "{t:?} {cdb:02x?}");
            }
            // MODE SENSE reads: allowed through Write Exclusive types only.
            assert_eq!(
                r.check(B, &MODE_SENSE6).is_ok(),
                t.write_exclusive(),
                "{t:?}"
            );
            release(&mut r, A, KA, t);
            unregister(&mut r, A, KA);
            assert!(r.check(B, &WRITE10).is_ok());
            r.assert_invariants();
        }
    }

    /// libiscsi ProutReserveOwnership*: after the holder unregisters, an
    /// all-registrants reservation stays (and another registrant may release it);
    /// any other type is released, registrants-only with RESERVATIONS RELEASED.
    #[test]
    fn ownership_when_holder_unregisters() {
        for t in ALL_TYPES {
            let mut r = lu();
            register(&mut r, A, KA);
            register(&mut r, B, KB);
            reserve(&mut r, A, KA, t);
            let fx = unregister(&mut r, A, KA);
            if t.all_registrants() {
                assert_eq!(read_reservation(&r), Some((0, t.code())), "{t:?}");
                assert!(fx.unit_attentions.is_empty());
                assert!(r.is_holder(B));
                release(&mut r, B, KB, t);
            } else {
                assert_eq!(read_reservation(&r), None, "{t:?}");
                if t.registrants_only() {
                    assert_eq!(uas(&fx), vec![(B, Asc::RESERVATIONS_RELEASED)], "{t:?}");
                } else {
                    assert!(fx.unit_attentions.is_empty(), "{t:?}");
                }
            }
            assert_eq!(read_reservation(&r), None);
            unregister(&mut r, B, KB);
            r.assert_invariants();
        }
    }

    #[test]
    fn all_registrants_reservation_ends_with_last_registrant() {
        let mut r = lu();
        register(&mut r, A, KA);
        reserve(&mut r, A, KA, PrType::ExclusiveAccessAllRegistrants);
        register(&mut r, B, KB);
        assert!(r.is_holder(B));
        unregister(&mut r, A, KA);
        assert_eq!(
            r.reservation_type(),
            Some(PrType::ExclusiveAccessAllRegistrants)
        );
        unregister(&mut r, B, KB);
        assert_eq!(r.reservation_type(), None);
        r.assert_invariants();
    }

    #[test]
    fn reserve_rules() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        // Unregistered or wrong key: conflict.
        assert_eq!(
            prout(&mut r, C, prout_sa::RESERVE, 1, 0, 0),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            prout(&mut r, A, prout_sa::RESERVE, 1, KB, 0),
            Err(ProutError::Conflict)
        );
        reserve(&mut r, A, KA, PrType::WriteExclusive);
        // The holder again with the same type: GOOD, nothing changes.
        assert_eq!(
            reserve(&mut r, A, KA, PrType::WriteExclusive),
            ProutEffects::default()
        );
        // The holder with another type, or another registrant: conflict.
        assert_eq!(
            prout(&mut r, A, prout_sa::RESERVE, 3, KA, 0),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            prout(&mut r, B, prout_sa::RESERVE, 1, KB, 0),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            r.check(B, &prout_cdb(prout_sa::RESERVE, 1, 24)),
            Err(Conflict)
        );
        release(&mut r, A, KA, PrType::WriteExclusive);
        // All registrants: any registrant is a holder, so RESERVE of the same type is
        // GOOD for B too.
        reserve(&mut r, A, KA, PrType::WriteExclusiveAllRegistrants);
        reserve(&mut r, B, KB, PrType::WriteExclusiveAllRegistrants);
        assert_eq!(
            prout(&mut r, B, prout_sa::RESERVE, 8, KB, 0),
            Err(ProutError::Conflict)
        );
        r.assert_invariants();
    }

    // --- RELEASE ----------------------------------------------------------------------

    #[test]
    fn release_rules() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        register(&mut r, C, KC);
        // No reservation: GOOD.
        assert_eq!(
            release(&mut r, A, KA, PrType::WriteExclusive),
            ProutEffects::default()
        );
        reserve(&mut r, A, KA, PrType::ExclusiveAccessRegistrantsOnly);
        // Wrong type from the holder: INVALID RELEASE OF PERSISTENT RESERVATION.
        let e = prout(&mut r, A, prout_sa::RELEASE, 5, KA, 0).unwrap_err();
        assert_eq!(
            sense_of(e),
            (
                SenseKey::ILLEGAL_REQUEST,
                Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
            )
        );
        let e = prout(&mut r, A, prout_sa::RELEASE, 0, KA, 0).unwrap_err();
        assert_eq!(
            sense_of(e).1,
            Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION
        );
        // A registered non-holder: GOOD, the reservation stays.
        release(&mut r, B, KB, PrType::ExclusiveAccessRegistrantsOnly);
        assert!(r.is_holder(A));
        // Wrong key or unregistered: conflict.
        assert_eq!(
            prout(&mut r, A, prout_sa::RELEASE, 6, KB, 0),
            Err(ProutError::Conflict)
        );
        unregister(&mut r, C, KC);
        assert_eq!(
            prout(&mut r, C, prout_sa::RELEASE, 6, 0, 0),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            r.check(C, &prout_cdb(prout_sa::RELEASE, 6, 24)),
            Err(Conflict)
        );
        assert_eq!(r.check(B, &prout_cdb(prout_sa::RELEASE, 6, 24)), Ok(()));
        // Scope other than LU_SCOPE.
        let e = prout(&mut r, A, prout_sa::RELEASE, 0x16, KA, 0).unwrap_err();
        invalid_cdb_at(e, 2);
        // Registrants only: RESERVATIONS RELEASED to the other registrants.
        let fx = release(&mut r, A, KA, PrType::ExclusiveAccessRegistrantsOnly);
        assert_eq!(uas(&fx), vec![(B, Asc::RESERVATIONS_RELEASED)]);
        assert_eq!(r.generation(), 4);
        // Write Exclusive: no unit attention.
        reserve(&mut r, A, KA, PrType::WriteExclusive);
        let fx = release(&mut r, A, KA, PrType::WriteExclusive);
        assert!(fx.unit_attentions.is_empty());
        // All registrants: any registrant releases it for all.
        register(&mut r, C, KC);
        reserve(&mut r, A, KA, PrType::WriteExclusiveAllRegistrants);
        let fx = release(&mut r, C, KC, PrType::WriteExclusiveAllRegistrants);
        assert_eq!(
            uas(&fx),
            vec![
                (A, Asc::RESERVATIONS_RELEASED),
                (B, Asc::RESERVATIONS_RELEASED)
            ]
        );
        assert_eq!(read_reservation(&r), None);
        r.assert_invariants();
    }

    // --- CLEAR ------------------------------------------------------------------------

    #[test]
    fn clear_removes_everything_and_preempts_the_others() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        register(&mut r, C, KC);
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        // Unregistered nexus or wrong key: conflict.
        r.add_nexus(NexusId(9), ident("iqn.2024-01.test:d", 9));
        assert_eq!(
            r.check(NexusId(9), &prout_cdb(prout_sa::CLEAR, 0, 24)),
            Err(Conflict)
        );
        assert_eq!(
            prout(&mut r, NexusId(9), prout_sa::CLEAR, 0, 0, 0),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            prout(&mut r, B, prout_sa::CLEAR, 0, KA, 0),
            Err(ProutError::Conflict)
        );
        // A registered non-holder may clear.
        assert_eq!(r.check(B, &prout_cdb(prout_sa::CLEAR, 0, 24)), Ok(()));
        let gen = r.generation();
        let fx = prout(&mut r, B, prout_sa::CLEAR, 0, KB, 0).unwrap();
        assert_eq!(
            uas(&fx),
            vec![
                (A, Asc::RESERVATIONS_PREEMPTED),
                (C, Asc::RESERVATIONS_PREEMPTED)
            ]
        );
        assert_eq!(read_keys(&r), (gen + 1, vec![]));
        assert_eq!(read_reservation(&r), None);
        assert!(r.check(C, &WRITE10).is_ok());
        r.assert_invariants();
    }

    // --- PREEMPT, PREEMPT AND ABORT ---------------------------------------------------

    /// libiscsi ProutPreempt RemoveRegistration: no reservation, preempting a key
    /// removes its registrations only.
    #[test]
    fn preempt_without_reservation_removes_registrations() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        let gen = r.generation();
        let fx = prout(
            &mut r,
            B,
            prout_sa::PREEMPT,
            PrType::ExclusiveAccess.code(),
            KB,
            KA,
        )
        .unwrap();
        assert_eq!(uas(&fx), vec![(A, Asc::REGISTRATIONS_PREEMPTED)]);
        assert!(fx.abort_nexuses.is_empty());
        assert_eq!(read_keys(&r), (gen + 1, vec![KB]));
        assert_eq!(read_reservation(&r), None);
        r.assert_invariants();
    }

    #[test]
    fn preempt_holder_takes_over() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        register(&mut r, C, KC);
        reserve(&mut r, A, KA, PrType::WriteExclusive);
        // A registered non-holder may preempt.
        assert_eq!(r.check(B, &prout_cdb(prout_sa::PREEMPT, 3, 24)), Ok(()));
        let fx = prout(
            &mut r,
            B,
            prout_sa::PREEMPT,
            PrType::ExclusiveAccess.code(),
            KB,
            KA,
        )
        .unwrap();
        // A lost its registration; C keeps its own but the type changed.
        assert_eq!(
            uas(&fx),
            vec![
                (A, Asc::REGISTRATIONS_PREEMPTED),
                (C, Asc::RESERVATIONS_RELEASED)
            ]
        );
        assert_eq!(read_reservation(&r), Some((KB, 3)));
        assert!(r.is_holder(B));
        assert_eq!(read_keys(&r).1, vec![KB, KC]);
        assert_eq!(r.check(A, &READ10), Err(Conflict));
        r.assert_invariants();
    }

    #[test]
    fn preempt_and_abort_names_the_preempted_nexuses() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        // A second session of A's initiator port (same identity): both are preempted.
        r.add_nexus(NexusId(11), ident("iqn.2024-01.test:a", 1));
        let fx = prout(
            &mut r,
            B,
            prout_sa::PREEMPT_AND_ABORT,
            PrType::ExclusiveAccess.code(),
            KB,
            KA,
        )
        .unwrap();
        assert_eq!(fx.abort_nexuses, vec![A, NexusId(11)]);
        assert_eq!(
            uas(&fx),
            vec![
                (A, Asc::REGISTRATIONS_PREEMPTED),
                (NexusId(11), Asc::REGISTRATIONS_PREEMPTED)
            ]
        );
        assert!(r.is_holder(B));
        r.assert_invariants();
    }

    #[test]
    fn preempt_own_key_changes_the_type() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        register(&mut r, C, KA); // shares A's key
        reserve(&mut r, A, KA, PrType::WriteExclusiveRegistrantsOnly);
        let fx = prout(
            &mut r,
            A,
            prout_sa::PREEMPT,
            PrType::ExclusiveAccessRegistrantsOnly.code(),
            KA,
            KA,
        )
        .unwrap();
        // C (same key) is preempted, A kept; B is told the reservation changed.
        assert_eq!(
            uas(&fx),
            vec![
                (B, Asc::RESERVATIONS_RELEASED),
                (C, Asc::REGISTRATIONS_PREEMPTED)
            ]
        );
        assert_eq!(read_reservation(&r), Some((KA, 6)));
        assert!(r.is_registered(A) && !r.is_registered(C));
        // Same type again: nothing to announce.
        let fx = prout(&mut r, A, prout_sa::PREEMPT, 6, KA, KA).unwrap();
        assert!(fx.unit_attentions.is_empty());
        // With abort, the preempting nexus's own tasks are aborted too.
        let fx = prout(&mut r, A, prout_sa::PREEMPT_AND_ABORT, 6, KA, KA).unwrap();
        assert_eq!(fx.abort_nexuses, vec![A]);
        r.assert_invariants();
    }

    #[test]
    fn preempt_all_registrants() {
        // Zero key: everyone else goes, the preempting nexus reserves.
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        register(&mut r, C, KC);
        reserve(&mut r, A, KA, PrType::WriteExclusiveAllRegistrants);
        let fx = prout(
            &mut r,
            B,
            prout_sa::PREEMPT,
            PrType::ExclusiveAccess.code(),
            KB,
            0,
        )
        .unwrap();
        assert_eq!(
            uas(&fx),
            vec![
                (A, Asc::REGISTRATIONS_PREEMPTED),
                (C, Asc::REGISTRATIONS_PREEMPTED)
            ]
        );
        assert_eq!(read_keys(&r).1, vec![KB]);
        assert_eq!(read_reservation(&r), Some((KB, 3)));
        r.assert_invariants();

        // Non-zero key: only those registrations go; the reservation stays.
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        register(&mut r, C, KC);
        reserve(&mut r, A, KA, PrType::ExclusiveAccessAllRegistrants);
        let fx = prout(
            &mut r,
            B,
            prout_sa::PREEMPT,
            PrType::ExclusiveAccessAllRegistrants.code(),
            KB,
            KC,
        )
        .unwrap();
        assert_eq!(uas(&fx), vec![(C, Asc::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(read_reservation(&r), Some((0, 8)));
        assert_eq!(r.check(C, &READ10), Err(Conflict));
        assert_eq!(r.check(A, &WRITE10), Ok(()));
        r.assert_invariants();
    }

    #[test]
    fn preempt_errors() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        // No reservation and a zero key: INVALID FIELD IN PARAMETER LIST.
        let e = prout(&mut r, A, prout_sa::PREEMPT, 1, KA, 0).unwrap_err();
        assert_eq!(field_pointer(&e), (false, 8));
        invalid_param(e);
        // A key nobody has: conflict.
        assert_eq!(
            prout(&mut r, A, prout_sa::PREEMPT, 1, KA, 0x999),
            Err(ProutError::Conflict)
        );
        // Unregistered or wrong key: conflict.
        assert_eq!(
            prout(&mut r, C, prout_sa::PREEMPT, 1, 0, KA),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            prout(&mut r, A, prout_sa::PREEMPT, 1, KB, KB),
            Err(ProutError::Conflict)
        );
        // Bad TYPE or SCOPE.
        for t in [0u8, 2, 4, 9, 15] {
            invalid_cdb_at(
                prout(&mut r, A, prout_sa::PREEMPT, t, KA, KB).unwrap_err(),
                2,
            );
        }
        invalid_cdb_at(
            prout(&mut r, A, prout_sa::PREEMPT_AND_ABORT, 0x21, KA, KB).unwrap_err(),
            2,
        );
        // A reservation held by another key; zero key is invalid there too.
        reserve(&mut r, A, KA, PrType::WriteExclusive);
        invalid_param(prout(&mut r, B, prout_sa::PREEMPT, 1, KB, 0).unwrap_err());
        // Unregistered nexuses may not preempt (check) either.
        assert_eq!(
            r.check(C, &prout_cdb(prout_sa::PREEMPT, 1, 24)),
            Err(Conflict)
        );
        assert_eq!(r.generation(), 2);
        r.assert_invariants();
    }

    // --- PERSISTENT RESERVE OUT CDB and parameter list checks ---------------------

    #[test]
    fn prout_cdb_and_length_checks() {
        let mut r = lu();
        // Invalid service actions.
        for sa in 8..0x20u8 {
            invalid_cdb_at(
                r.persistent_reserve_out(A, &prout_cdb(sa, 0, 24), &basic(0, 1, 0))
                    .unwrap_err(),
                1,
            );
        }
        // Short CDB.
        invalid_cdb_at(
            r.persistent_reserve_out(A, &[0x5f, 0, 0], &basic(0, 1, 0))
                .unwrap_err(),
            0,
        );
        // PARAMETER LIST LENGTH not 24.
        for plen in [0u32, 8, 23, 25, 28, 100] {
            let mut p = basic(0, KA, 0);
            p.resize(plen as usize, 0);
            length_error(
                r.persistent_reserve_out(A, &prout_cdb(prout_sa::REGISTER, 0, plen), &p)
                    .unwrap_err(),
            );
        }
        // Data-out shorter than the parameter list length.
        length_error(
            r.persistent_reserve_out(A, &prout_cdb(prout_sa::REGISTER, 0, 24), &[0; 10])
                .unwrap_err(),
        );
        // Longer data-out is cut to the parameter list length.
        let mut p = basic(0, KA, 0);
        p.extend_from_slice(&[0xff; 8]);
        r.persistent_reserve_out(A, &prout_cdb(prout_sa::REGISTER, 0, 24), &p)
            .unwrap();
        // SPEC_I_PT with anything but REGISTER.
        for sa in [
            prout_sa::RESERVE,
            prout_sa::RELEASE,
            prout_sa::CLEAR,
            prout_sa::PREEMPT,
            prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY,
        ] {
            let e = r
                .persistent_reserve_out(A, &prout_cdb(sa, 1, 24), &basic(KA, KB, 0x08))
                .unwrap_err();
            assert_eq!(field_pointer(&e), (false, 20));
            invalid_param(e);
        }
        // RESERVE with a bad scope or type.
        invalid_cdb_at(
            prout(&mut r, A, prout_sa::RESERVE, 0x11, KA, 0).unwrap_err(),
            2,
        );
        invalid_cdb_at(
            prout(&mut r, A, prout_sa::RESERVE, 0x02, KA, 0).unwrap_err(),
            2,
        );
        // Scope and type are ignored by REGISTER and CLEAR.
        prout(&mut r, A, prout_sa::REGISTER, 0xff, KA, KB).unwrap();
        prout(&mut r, A, prout_sa::CLEAR, 0xff, KB, 0).unwrap();
        r.assert_invariants();
    }

    #[test]
    fn insufficient_registration_resources() {
        let mut r = lu().with_max_registrations(2);
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        let e = prout(&mut r, C, prout_sa::REGISTER, 0, 0, KC).unwrap_err();
        assert_eq!(
            sense_of(e),
            (
                SenseKey::ILLEGAL_REQUEST,
                Asc::INSUFFICIENT_REGISTRATION_RESOURCES
            )
        );
        // Changing a key needs no new room.
        prout(&mut r, A, prout_sa::REGISTER, 0, KA, KC).unwrap();
        assert_eq!(read_keys(&r).1, vec![KC, KB]);
    }

    // --- SPEC_I_PT and TransportIDs -------------------------------------------------

    fn spec_i_pt_param(key: u64, sa_key: u64, tids: &[Vec<u8>]) -> Vec<u8> {
        let mut p = basic(key, sa_key, 0x08);
        let data: Vec<u8> = tids.concat();
        p.extend_from_slice(&(data.len() as u32).to_be_bytes());
        p.extend_from_slice(&data);
        p
    }

    fn spec_i_pt(r: &mut Reservations, n: NexusId, p: &[u8]) -> Result<ProutEffects, ProutError> {
        r.persistent_reserve_out(n, &prout_cdb(prout_sa::REGISTER, 0, p.len() as u32), p)
    }

    #[test]
    fn spec_i_pt_registers_listed_ports() {
        let mut r = lu();
        let tids = [
            TransportId::of_port(&ident("iqn.2024-01.test:b", 2)).encode(),
            TransportId {
                name: "iqn.2024-01.test:c".into(),
                isid: None,
            }
            .encode(),
            // The issuing port itself is skipped.
            TransportId::of_port(&ident("iqn.2024-01.test:a", 1)).encode(),
        ];
        spec_i_pt(&mut r, A, &spec_i_pt_param(0, KA, &tids)).unwrap();
        assert_eq!(read_keys(&r), (1, vec![KA, KA, KA]));
        assert!(r.is_registered(A) && r.is_registered(B) && r.is_registered(C));
        // The 00b registration covers every port of that initiator name.
        r.add_nexus(NexusId(12), ident("iqn.2024-01.test:c", 0x7f));
        assert!(r.is_registered(NexusId(12)));
        // B's registration is its own: B may change its key.
        prout(&mut r, B, prout_sa::REGISTER, 0, KA, KB).unwrap();
        assert_eq!(read_keys(&r).1, vec![KA, KB, KA]);
        // SPEC_I_PT from a registered nexus.
        invalid_param(spec_i_pt(&mut r, A, &spec_i_pt_param(KA, KA, &[])).unwrap_err());
        r.assert_invariants();
    }

    #[test]
    fn spec_i_pt_errors() {
        let mut r = lu();
        let b = TransportId::of_port(&ident("iqn.2024-01.test:b", 2)).encode();
        // Listed twice.
        invalid_param(
            spec_i_pt(&mut r, A, &spec_i_pt_param(0, KA, &[b.clone(), b.clone()])).unwrap_err(),
        );
        // Already registered.
        register(&mut r, B, KB);
        invalid_param(
            spec_i_pt(&mut r, A, &spec_i_pt_param(0, KA, std::slice::from_ref(&b))).unwrap_err(),
        );
        // A 00b TransportID overlapping B's registration.
        let b_dev = TransportId {
            name: "iqn.2024-01.test:b".into(),
            isid: None,
        }
        .encode();
        invalid_param(spec_i_pt(&mut r, A, &spec_i_pt_param(0, KA, &[b_dev])).unwrap_err());
        // Not iSCSI (Fibre Channel, 24 bytes).
        let mut fc = vec![0u8; 24];
        fc[0] = 0x00;
        invalid_param(spec_i_pt(&mut r, A, &spec_i_pt_param(0, KA, &[fc])).unwrap_err());
        // TRANSPORTID PARAMETER DATA LENGTH disagreeing with the parameter list.
        let c = TransportId::of_port(&ident("iqn.2024-01.test:c", 3)).encode();
        let mut p = spec_i_pt_param(0, KA, std::slice::from_ref(&c));
        p[27] += 4;
        length_error(spec_i_pt(&mut r, A, &p).unwrap_err());
        // A TransportID running past the data.
        let mut short = c.clone();
        short[3] += 8;
        length_error(spec_i_pt(&mut r, A, &spec_i_pt_param(0, KA, &[short])).unwrap_err());
        // Parameter list of SPEC_I_PT shorter than 28 bytes.
        let p = basic(0, KA, 0x08);
        length_error(spec_i_pt(&mut r, A, &p).unwrap_err());
        // Nothing was registered by the failures.
        assert_eq!(read_keys(&r).1, vec![KB]);
        // Resources: 1 + 2 new registrations on a limit of 3 with B registered.
        let mut r2 = lu().with_max_registrations(3);
        register(&mut r2, B, KB);
        let d = TransportId::of_port(&ident("iqn.2024-01.test:d", 4)).encode();
        let e = spec_i_pt(&mut r2, A, &spec_i_pt_param(0, KA, &[c, d])).unwrap_err();
        assert_eq!(sense_of(e).1, Asc::INSUFFICIENT_REGISTRATION_RESOURCES);
        r.assert_invariants();
        r2.assert_invariants();
    }

    #[test]
    fn transport_id_encoding() {
        let port = TransportId::of_port(&ident("iqn.2024-01.test:a", 1));
        let b = port.encode();
        assert_eq!(b[0], 0x45); // FORMAT CODE 01b, iSCSI
        assert_eq!(b.len() % 4, 0);
        assert_eq!(usize::from(be16(&b, 2)), b.len() - 4);
        let text = b"iqn.2024-01.test:a,i,0x400001370001\0";
        assert_eq!(&b[4..4 + text.len()], text);
        assert!(b[4 + text.len()..].iter().all(|&c| c == 0));
        assert_eq!(TransportId::parse(&b), Ok((port.clone(), b.len())));
        let dev = TransportId {
            name: "iqn.x".into(),
            isid: None,
        };
        let d = dev.encode();
        assert_eq!(d, [0x05, 0, 0, 8, b'i', b'q', b'n', b'.', b'x', 0, 0, 0]);
        assert_eq!(TransportId::parse(&d), Ok((dev, 12)));
        // Trailing bytes after the TransportID are not its business.
        let mut longer = b.clone();
        longer.extend_from_slice(&[1, 2, 3]);
        assert_eq!(TransportId::parse(&longer).unwrap().1, b.len());
        // Upper case separator and ISID, no terminator.
        let mut up = vec![0x45, 0, 0, 24];
        up.extend_from_slice(b"iqn.yyy,I,0X0A0B0C0D0E0F");
        assert_eq!(up.len(), 4 + 24);
        assert_eq!(
            TransportId::parse(&up).unwrap().0,
            TransportId {
                name: "iqn.yyy".into(),
                isid: Some([0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f])
            }
        );
    }

    #[test]
    fn transport_id_errors() {
        use TransportIdError as E;
        assert_eq!(TransportId::parse(&[0x05, 0, 0]), Err(E::Truncated));
        assert_eq!(
            TransportId::parse(&[0x05, 0, 0, 8, b'a']),
            Err(E::Truncated)
        );
        assert_eq!(
            TransportId::parse(&[0x00, 0, 0, 4, b'a', 0, 0, 0]),
            Err(E::UnsupportedProtocol(0))
        );
        assert_eq!(
            TransportId::parse(&[0x85, 0, 0, 4, b'a', 0, 0, 0]),
            Err(E::UnsupportedFormat(2))
        );
        assert_eq!(
            TransportId::parse(&[0x05, 0, 0, 5, b'a', 0, 0, 0, 0]),
            Err(E::BadLength(5))
        );
        assert_eq!(TransportId::parse(&[0x05, 0, 0, 0]), Err(E::BadLength(0)));
        assert_eq!(
            TransportId::parse(&[0x05, 0, 0, 4, 0, 0, 0, 0]),
            Err(E::BadName)
        );
        assert_eq!(
            TransportId::parse(&[0x05, 0, 0, 4, b'a', b' ', b'b', 0]),
            Err(E::BadName)
        );
        assert_eq!(
            TransportId::parse(&[0x05, 0, 0, 4, 0xc3, 0x28, 0, 0]),
            Err(E::BadName)
        );
        let tid = |s: &[u8]| {
            let mut v = vec![0x45, 0, 0, 0];
            v.extend_from_slice(s);
            v.push(0);
            while v.len() % 4 != 0 {
                v.push(0);
            }
            v[3] = (v.len() - 4) as u8;
            TransportId::parse(&v)
        };
        assert_eq!(tid(b"iqn.a"), Err(E::BadIsid));
        assert_eq!(tid(b"iqn.a,i,0x12345"), Err(E::BadIsid));
        assert_eq!(tid(b"iqn.a,i,0x1234567890abcd"), Err(E::BadIsid));
        assert_eq!(tid(b"iqn.a,i,0x12345678zz00"), Err(E::BadIsid));
        assert_eq!(tid(b",i,0x123456789012"), Err(E::BadName));
        assert!(tid(b"iqn.a,i,0x123456789012").is_ok());
    }

    // --- REGISTER AND MOVE ------------------------------------------------------------

    fn move_param(key: u64, sa_key: u64, flags: u8, rtp: u16, tid: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[17] = flags;
        p[18..20].copy_from_slice(&rtp.to_be_bytes());
        p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        p.extend_from_slice(tid);
        p
    }

    fn register_and_move(
        r: &mut Reservations,
        n: NexusId,
        t: u8,
        p: &[u8],
    ) -> Result<ProutEffects, ProutError> {
        r.persistent_reserve_out(
            n,
            &prout_cdb(prout_sa::REGISTER_AND_MOVE, t, p.len() as u32),
            p,
        )
    }

    #[test]
    fn register_and_move_moves_the_reservation() {
        let mut r = lu();
        register(&mut r, A, KA);
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        let b_tid = TransportId::of_port(&ident("iqn.2024-01.test:b", 2)).encode();
        let gen = r.generation();
        // The CDB's TYPE is ignored (same type as the released reservation).
        let fx = register_and_move(&mut r, A, 1, &move_param(KA, KB, 0, 1, &b_tid)).unwrap();
        assert!(fx.unit_attentions.is_empty());
        assert_eq!(read_reservation(&r), Some((KB, 3)));
        assert!(r.is_holder(B) && r.is_registered(A) && !r.is_holder(A));
        assert_eq!(read_keys(&r), (gen + 1, vec![KA, KB]));
        assert_eq!(r.check(A, &READ10), Err(Conflict));
        // Back to A (already registered: its key becomes the new one), unregistering B.
        let a_tid = TransportId::of_port(&ident("iqn.2024-01.test:a", 1)).encode();
        register_and_move(&mut r, B, 3, &move_param(KB, KC, 0x02, 1, &a_tid)).unwrap();
        assert_eq!(read_reservation(&r), Some((KC, 3)));
        assert_eq!(read_keys(&r).1, vec![KC]);
        assert!(!r.is_registered(B));
        r.assert_invariants();
    }

    #[test]
    fn register_and_move_errors() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, C, KC);
        let b_tid = TransportId::of_port(&ident("iqn.2024-01.test:b", 2)).encode();
        let a_tid = TransportId::of_port(&ident("iqn.2024-01.test:a", 1)).encode();
        // No reservation: INVALID FIELD IN CDB.
        invalid_cdb_at(
            register_and_move(&mut r, A, 3, &move_param(KA, KB, 0, 1, &b_tid)).unwrap_err(),
            1,
        );
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        // Unregistered, wrong key, not the holder: conflict.
        assert_eq!(
            register_and_move(&mut r, B, 3, &move_param(0, KB, 0, 1, &a_tid)),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            register_and_move(&mut r, A, 3, &move_param(KC, KB, 0, 1, &b_tid)),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            register_and_move(&mut r, C, 3, &move_param(KC, KB, 0, 1, &b_tid)),
            Err(ProutError::Conflict)
        );
        assert_eq!(
            r.check(C, &prout_cdb(prout_sa::REGISTER_AND_MOVE, 3, 64)),
            Err(Conflict)
        );
        // Zero SERVICE ACTION RESERVATION KEY.
        invalid_param(
            register_and_move(&mut r, A, 3, &move_param(KA, 0, 0, 1, &b_tid)).unwrap_err(),
        );
        // The TransportID names the issuing nexus.
        invalid_param(
            register_and_move(&mut r, A, 3, &move_param(KA, KB, 0, 1, &a_tid)).unwrap_err(),
        );
        // An unknown relative target port.
        let e = register_and_move(&mut r, A, 3, &move_param(KA, KB, 0, 7, &b_tid)).unwrap_err();
        assert_eq!(field_pointer(&e), (false, 18));
        // TRANSPORTID PARAMETER DATA LENGTH not matching.
        let mut p = move_param(KA, KB, 0, 1, &b_tid);
        p[23] += 4;
        length_error(register_and_move(&mut r, A, 3, &p).unwrap_err());
        let mut p = move_param(KA, KB, 0, 1, &b_tid);
        p.extend_from_slice(&[0; 4]);
        p[23] += 4;
        length_error(register_and_move(&mut r, A, 3, &p).unwrap_err());
        // Parameter list shorter than its header.
        length_error(register_and_move(&mut r, A, 3, &[0; 20]).unwrap_err());
        // A TransportID that is not iSCSI.
        invalid_param(
            register_and_move(&mut r, A, 3, &move_param(KA, KB, 0, 1, &[0u8; 24])).unwrap_err(),
        );
        // Invalid TYPE or SCOPE in the CDB.
        invalid_cdb_at(
            register_and_move(&mut r, A, 0x13, &move_param(KA, KB, 0, 1, &b_tid)).unwrap_err(),
            2,
        );
        invalid_cdb_at(
            register_and_move(&mut r, A, 0x02, &move_param(KA, KB, 0, 1, &b_tid)).unwrap_err(),
            2,
        );
        // All-registrants reservations cannot move.
        release(&mut r, A, KA, PrType::ExclusiveAccess);
        reserve(&mut r, A, KA, PrType::WriteExclusiveAllRegistrants);
        assert_eq!(
            register_and_move(&mut r, A, 7, &move_param(KA, KB, 0, 1, &b_tid)),
            Err(ProutError::Conflict)
        );
        assert!(!r.is_registered(B));
        r.assert_invariants();
    }

    // --- PERSISTENT RESERVE IN ---------------------------------------------------------

    /// libiscsi PrinReadKeys Truncate: ADDITIONAL LENGTH is not cut by the allocation
    /// length, the key list is.
    #[test]
    fn read_keys_truncated() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        let mut buf = [0xeeu8; 64];
        let n = r
            .persistent_reserve_in(A, prin_sa::READ_KEYS, 8, &mut buf)
            .unwrap();
        assert_eq!(n, 8);
        assert_eq!(&buf[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
        assert_eq!(buf[8], 0xee);
        let n = r
            .persistent_reserve_in(A, prin_sa::READ_KEYS, 12, &mut buf)
            .unwrap();
        assert_eq!(n, 12);
        assert_eq!(&buf[8..12], &KA.to_be_bytes()[..4]);
        // The caller's buffer is shorter than the allocation length.
        let mut small = [0u8; 10];
        let n = r
            .persistent_reserve_in(A, prin_sa::READ_KEYS, 100, &mut small)
            .unwrap();
        assert_eq!(n, 24);
        assert_eq!(&small[8..10], &KA.to_be_bytes()[..2]);
        assert_eq!(
            r.persistent_reserve_in(A, prin_sa::READ_KEYS, 0, &mut buf),
            Ok(0)
        );
    }

    /// libiscsi PrinReportCapabilities.
    #[test]
    fn report_capabilities() {
        let r = lu();
        let b = prin(&r, prin_sa::REPORT_CAPABILITIES, 100);
        assert_eq!(b, [0, 8, 0x1d, 0xb0, 0xea, 0x01, 0, 0]);
        let allow_commands = (b[3] >> 4) & 0x07;
        assert!(allow_commands <= 5);
        // Every advertised type can be reserved and released.
        let mut r = lu();
        register(&mut r, A, KA);
        for t in ALL_TYPES {
            let bit = match t.code() {
                8 => b[5] & 0x01,
                c => b[4] & (1 << c),
            };
            assert_ne!(bit, 0, "{t:?}");
            reserve(&mut r, A, KA, t);
            release(&mut r, A, KA, t);
        }
    }

    /// libiscsi PrinServiceactionRange.
    #[test]
    fn prin_service_action_range() {
        let r = lu();
        let mut buf = [0u8; 64];
        for sa in 0..4 {
            assert!(r.persistent_reserve_in(A, sa, 64, &mut buf).is_ok());
        }
        for sa in 4..=0xff {
            let e = r.persistent_reserve_in(A, sa, 64, &mut buf).unwrap_err();
            assert_eq!(e, Sense::invalid_field_in_cdb(1, Some(4)));
        }
        assert_eq!(
            decode_prin(&[0x5e, 0xe3, 0, 0, 0, 0, 0, 0x12, 0x34, 0]),
            Ok((3, 0x1234))
        );
        assert!(decode_prin(&[0x5e, 0]).is_err());
    }

    #[test]
    fn read_full_status() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        reserve(&mut r, A, KA, PrType::ExclusiveAccessRegistrantsOnly);
        let b = prin(&r, prin_sa::READ_FULL_STATUS, 4096);
        assert_eq!(be32(&b, 0), 2);
        assert_eq!(be32(&b, 4) as usize, b.len() - 8);
        let d = &b[8..];
        assert_eq!(be64(d, 0), KA);
        assert_eq!(d[12], 0x01); // R_HOLDER
        assert_eq!(d[13], 0x06); // LU_SCOPE, EA-RO
        assert_eq!(be16(d, 18), 1);
        let tid_len = be32(d, 20) as usize;
        assert_eq!(tid_len % 4, 0);
        assert_eq!(
            TransportId::parse(&d[24..24 + tid_len]).unwrap(),
            (
                TransportId::of_port(&ident("iqn.2024-01.test:a", 1)),
                tid_len
            )
        );
        let d = &d[24 + tid_len..];
        assert_eq!(be64(d, 0), KB);
        assert_eq!((d[12], d[13]), (0, 0));
        let tid_len = be32(d, 20) as usize;
        assert_eq!(d.len(), 24 + tid_len);
        assert_eq!(
            TransportId::parse(&d[24..]).unwrap().0.name,
            "iqn.2024-01.test:b"
        );
        // All registrants: every descriptor is a holder.
        release(&mut r, A, KA, PrType::ExclusiveAccessRegistrantsOnly);
        reserve(&mut r, B, KB, PrType::WriteExclusiveAllRegistrants);
        let b = prin(&r, prin_sa::READ_FULL_STATUS, 4096);
        let d = &b[8..];
        assert_eq!((d[12], d[13]), (1, 7));
        let next = &d[24 + be32(d, 20) as usize..];
        assert_eq!((next[12], next[13]), (1, 7));
        // Truncated: header only, ADDITIONAL LENGTH intact.
        let t = prin(&r, prin_sa::READ_FULL_STATUS, 8);
        assert_eq!(t, b[..8]);
    }

    // --- APTPL -----------------------------------------------------------------------

    #[test]
    fn aptpl_round_trip() {
        let mut r = lu();
        assert_eq!(r.aptpl_state(), None);
        let fx = r
            .persistent_reserve_out(
                A,
                &prout_cdb(prout_sa::REGISTER, 0, 24),
                &basic(0, KA, 0x01),
            )
            .unwrap();
        assert!(fx.persist);
        assert_eq!(prin(&r, prin_sa::REPORT_CAPABILITIES, 8)[3] & 0x01, 1);
        // Registered via SPEC_I_PT as a whole device, with ALL_TG_PT.
        let c_dev = TransportId {
            name: "iqn.2024-01.test:c".into(),
            isid: None,
        }
        .encode();
        let mut p = spec_i_pt_param(0, KB, &[c_dev]);
        p[20] |= 0x04 | 0x01;
        let fx = spec_i_pt(&mut r, B, &p).unwrap();
        assert!(fx.persist);
        let fx = reserve(&mut r, A, KA, PrType::WriteExclusiveRegistrantsOnly);
        assert!(
            fx.persist,
            "a reservation change is saved while APTPL is on"
        );
        let saved = r.aptpl_state().expect("APTPL active");

        // tgtd restarts: new nexus ids, same initiator ports.
        let mut s = Reservations::new();
        s.restore_aptpl(&saved).unwrap();
        s.add_nexus(NexusId(21), ident("iqn.2024-01.test:a", 1));
        s.add_nexus(NexusId(22), ident("iqn.2024-01.test:c", 9));
        assert_eq!(s.generation(), 0);
        assert_eq!(s.keys(), vec![KA, KB, KB]);
        assert_eq!(
            s.reservation_type(),
            Some(PrType::WriteExclusiveRegistrantsOnly)
        );
        assert!(s.is_holder(NexusId(21)));
        assert!(s.is_registered(NexusId(22)));
        assert_eq!(s.aptpl_state(), Some(saved.clone()));
        assert_eq!(
            prin(&s, prin_sa::READ_FULL_STATUS, 4096)[8..],
            prin(&r, prin_sa::READ_FULL_STATUS, 4096)[8..]
        );
        s.assert_invariants();

        // APTPL=0 in a later REGISTER: deactivated, the file goes.
        let fx = prout(&mut r, A, prout_sa::REGISTER, 0, KA, KA).unwrap();
        assert!(fx.persist);
        assert_eq!(r.aptpl_state(), None);
        assert_eq!(prin(&r, prin_sa::REPORT_CAPABILITIES, 8)[3] & 0x01, 0);
        // Without APTPL nothing asks to be saved.
        let fx = prout(&mut r, B, prout_sa::REGISTER, 0, KB, KC).unwrap();
        assert!(!fx.persist);
    }

    #[test]
    fn aptpl_restore_rejects_malformed_state() {
        let mut r = lu();
        r.persistent_reserve_out(
            A,
            &prout_cdb(prout_sa::REGISTER, 0, 24),
            &basic(0, KA, 0x01),
        )
        .unwrap();
        // Every REGISTER carries the APTPL bit that counts from then on.
        r.persistent_reserve_out(
            B,
            &prout_cdb(prout_sa::REGISTER, 0, 24),
            &basic(0, KB, 0x01),
        )
        .unwrap();
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        let good = r.aptpl_state().unwrap();
        let mut s = lu();
        register(&mut s, C, KC);
        let before = s.keys();
        // Every strict prefix is truncated.
        for n in 0..good.len() {
            assert!(s.restore_aptpl(&good[..n]).is_err(), "prefix {n}");
        }
        let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let cases: Vec<(Vec<u8>, PrStateError)> = vec![
            (mutate(&|b| b[0] = b'X'), PrStateError::BadMagic),
            (mutate(&|b| b[7] = 2), PrStateError::BadMagic),
            (mutate(&|b| b.push(0)), PrStateError::TrailingBytes(1)),
            (mutate(&|b| b[8] = 2), PrStateError::BadType(2)),
            (mutate(&|b| b[9] = 0x02), PrStateError::TooMany(0x0200_0002)),
            // First registration: key at 13..21, flags at 21.
            (
                mutate(&|b| b[13..21].fill(0)),
                PrStateError::BadRegistration(0, "zero reservation key"),
            ),
            (
                mutate(&|b| b[21] |= 0x80),
                PrStateError::BadRegistration(0, "unknown flags"),
            ),
            // Holder flag moved off A: no holder for an Exclusive Access reservation.
            (mutate(&|b| b[21] &= !0x04), PrStateError::BadHolder),
            // Reservation type removed but a holder flag left.
            (mutate(&|b| b[8] = 0), PrStateError::BadHolder),
            // All registrants must not carry holder flags.
            (mutate(&|b| b[8] = 8), PrStateError::BadHolder),
            // A space in the name.
            (
                mutate(&|b| b[32] = b' '),
                PrStateError::BadRegistration(0, "bad initiator name"),
            ),
        ];
        for (bytes, err) in cases {
            assert_eq!(s.restore_aptpl(&bytes), Err(err));
        }
        // Both registrations for the same port.
        let mut dup = good.clone();
        let first_len = 8 + 1 + 6 + 2 + 2 + "iqn.2024-01.test:a".len();
        let second = 13 + first_len;
        dup.truncate(second);
        dup.extend_from_slice(&good[13..second]);
        dup[second..second + 8].copy_from_slice(&KC.to_be_bytes());
        dup[second + 8] &= !0x04;
        assert_eq!(
            s.restore_aptpl(&dup),
            Err(PrStateError::BadRegistration(1, "duplicate initiator port"))
        );
        // Nothing changed by the failures.
        assert_eq!(s.keys(), before);
        assert_eq!(s.aptpl_state(), None);
        s.restore_aptpl(&good).unwrap();
        assert_eq!(s.keys(), vec![KA, KB]);
        // The nexus of A's port (still connected in `s`) is the holder again.
        assert!(s.is_holder(A));
        assert!(!s.is_registered(C));
        s.assert_invariants();
    }

    // --- SPC-2 RESERVE / RELEASE ---------------------------------------------------

    /// libiscsi Reserve6 2Initiators.
    #[test]
    fn spc2_reserve_two_initiators() {
        let mut r = lu();
        assert!(r.check(A, &RESERVE6).is_ok());
        r.reserve(A).unwrap();
        r.reserve(A).unwrap();
        assert_eq!(r.check(B, &RESERVE6), Err(Conflict));
        assert_eq!(r.reserve(B), Err(Conflict));
        // RELEASE from the other nexus: GOOD, no effect.
        assert!(r.check(B, &RELEASE6).is_ok());
        r.release(B);
        assert_eq!(r.spc2_holder(), Some(A));
        assert!(r.check(A, &MODE_SENSE6).is_ok());
        assert_eq!(r.check(B, &MODE_SENSE6), Err(Conflict));
        for cdb in [&READ10[..], &WRITE10[..], &TUR[..], &READ_CAPACITY10[..]] {
            assert!(r.check(A, cdb).is_ok());
            assert_eq!(r.check(B, cdb), Err(Conflict));
        }
        // Never affected: INQUIRY, REPORT LUNS, REQUEST SENSE, REPORT SUPPORTED OPCODES.
        for cdb in [
            &INQUIRY[..],
            &[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0][..],
            &[0x03, 0, 0, 0, 18, 0][..],
            &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0][..],
        ] {
            assert!(r.check(B, cdb).is_ok(), "{cdb:02x?}");
        }
        r.release(A);
        assert_eq!(r.spc2_holder(), None);
        r.reserve(B).unwrap();
        r.release(B);
        assert_eq!(r.spc2_holder(), None);
    }

    /// libiscsi Reserve6 Logout / ITNexusLoss / LUNReset / Target*Reset.
    #[test]
    fn spc2_reservation_ends_with_nexus_loss_and_reset() {
        let mut r = lu();
        r.reserve(A).unwrap();
        r.remove_nexus(B);
        assert_eq!(r.spc2_holder(), Some(A));
        r.remove_nexus(A);
        assert_eq!(r.spc2_holder(), None);
        r.reserve(B).unwrap();
        r.reset();
        assert_eq!(r.spc2_holder(), None);
        assert!(r.check(C, &WRITE10).is_ok());
    }

    #[test]
    fn spc2_reservation_blocks_persistent_reserve_commands() {
        let mut r = lu();
        r.reserve(A).unwrap();
        let prin_cdb = [0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
        let prout = prout_cdb(prout_sa::REGISTER, 0, 24);
        for n in [A, B] {
            assert_eq!(r.check(n, &prin_cdb), Err(Conflict));
            assert_eq!(r.check(n, &prout), Err(Conflict));
        }
        assert_eq!(
            r.persistent_reserve_out(A, &prout, &basic(0, KA, 0)),
            Err(ProutError::Conflict)
        );
        assert!(!r.is_registered(A));
    }

    /// SPC-4 §5.9, "Exceptions to SPC-2 RESERVE and RELEASE behavior".
    #[test]
    fn reserve_release_under_persistent_reservations() {
        let mut r = lu();
        register(&mut r, A, KA);
        register(&mut r, B, KB);
        // Registrations but no reservation: RESERVE and RELEASE conflict for all.
        for n in [A, B, C] {
            assert_eq!(r.check(n, &RESERVE6), Err(Conflict));
            assert_eq!(r.check(n, &RELEASE6), Err(Conflict));
            assert_eq!(
                r.check(n, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                Err(Conflict)
            );
            assert_eq!(r.reserve(n), Err(Conflict));
        }
        // Exclusive Access: the holder gets GOOD without effect; others conflict.
        reserve(&mut r, A, KA, PrType::ExclusiveAccess);
        assert_eq!(r.check(A, &RESERVE6), Ok(()));
        assert_eq!(r.reserve(A), Ok(()));
        assert_eq!(r.spc2_holder(), None);
        assert_eq!(r.check(B, &RESERVE6), Err(Conflict));
        assert_eq!(r.check(B, &RELEASE6), Err(Conflict));
        release(&mut r, A, KA, PrType::ExclusiveAccess);
        // Registrants only: any registered nexus gets GOOD without effect.
        reserve(&mut r, A, KA, PrType::WriteExclusiveRegistrantsOnly);
        assert_eq!(r.check(B, &RESERVE6), Ok(()));
        assert_eq!(r.reserve(B), Ok(()));
        r.release(B);
        assert_eq!(r.spc2_holder(), None);
        assert_eq!(r.check(C, &RELEASE6), Err(Conflict));
        assert_eq!(
            r.reservation_type(),
            Some(PrType::WriteExclusiveRegistrantsOnly)
        );
    }

    #[test]
    fn reserve_release_cdb_fields() {
        assert_eq!(check_reserve_release_cdb(&RESERVE6), Ok(()));
        assert_eq!(check_reserve_release_cdb(&RELEASE6), Ok(()));
        assert_eq!(
            check_reserve_release_cdb(&[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ok(())
        );
        for cdb in [
            &[0x16, 0x10, 0, 0, 0, 0][..], // 3RDPTY
            &[0x16, 0x01, 0, 0, 0, 0][..], // EXTENT
            &[0x17, 0x06, 0, 0, 0, 0][..], // third party device ID
            &[0x56, 0x10, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[0x57, 0x02, 0, 0, 0, 0, 0, 0, 0, 0][..], // LONGID
        ] {
            assert_eq!(
                check_reserve_release_cdb(cdb),
                Err(Sense::invalid_field_in_cdb(1, Some(4))),
                "{cdb:02x?}"
            );
        }
        assert_eq!(check_reserve_release_cdb(&[0x16]), Ok(()));
        assert_eq!(check_reserve_release_cdb(&[]), Ok(()));
    }

    // --- Command classification ----------------------------------------------------

    #[test]
    fn command_classes_under_exclusive_access_and_write_exclusive() {
        let reads: Vec<Vec<u8>> = vec![
            vec![0x08, 0, 0, 0, 1, 0],
            READ10.to_vec(),
            vec![0xa8; 12],
            vec![0x88; 16],
            vec![0x2f; 10],
            vec![0xaf; 12],
            vec![0x8f; 16],
            vec![0x34; 10],
            vec![0x90; 16],
            vec![0x37; 10],
            vec![0xb7; 12],
            vec![0x84; 16],
            vec![0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            MODE_SENSE6.to_vec(),
            vec![0x5a; 10],
            vec![0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0x7f, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x09],
        ];
        let writes: Vec<Vec<u8>> = vec![
            vec![0x0a, 0, 0, 0, 1, 0],
            WRITE10.to_vec(),
            vec![0xaa; 12],
            vec![0x8a; 16],
            vec![0x2e; 10],
            vec![0xae; 12],
            vec![0x8e; 16],
            vec![0x41; 10],
            vec![0x93; 16],
            vec![0x42; 10],
            vec![0x89; 16],
            vec![0x8b; 16],
            vec![0x9c; 16],
            vec![0x48; 10],
            vec![0x83; 16],
            vec![0x35; 10],
            vec![0x91; 16],
            vec![0x15, 0, 0, 0, 0, 0],
            vec![0x55; 10],
            vec![0x04, 0, 0, 0, 0, 0],
            vec![0x1b, 0, 0, 0, 0x00, 0], // STOP
            vec![0x1b, 0, 0, 0, 0x31, 0], // START with a power condition
            vec![0x1e, 0, 0, 0, 0x01, 0], // PREVENT
            vec![0x7f, 0, 0, 0, 0, 0, 0, 0x18, 0x00, 0x0b],
            vec![0xc0; 16], // vendor specific: conflicts by default
        ];
        let allowed: Vec<Vec<u8>> = vec![
            TUR.to_vec(),
            INQUIRY.to_vec(),
            READ_CAPACITY10.to_vec(),
            vec![0x1b, 0, 0, 0, 0x01, 0], // START
            vec![0x1e, 0, 0, 0, 0x00, 0], // ALLOW
            vec![0x4d; 10],               // LOG SENSE
            vec![0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0xab, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ];
        for t in [PrType::ExclusiveAccess, PrType::WriteExclusive] {
            let mut r = lu();
            register(&mut r, A, KA);
            register(&mut r, B, KB);
            reserve(&mut r, A, KA, t);
            for n in [B, C] {
                for cdb in &reads {
                    assert_eq!(
                        r.check(n, cdb).is_ok(),
                        t == PrType::WriteExclusive,
                        "{t:?} {cdb:02x?}"
                    );
                }
                for cdb in &writes {
                    assert_eq!(r.check(n, cdb), Err(Conflict), "{t:?} {cdb:02x?}");
                    assert_eq!(r.check(A, cdb), Ok(()));
                }
                for cdb in &allowed {
                    assert_eq!(r.check(n, cdb), Ok(()), "{t:?} {cdb:02x?}");
                }
            }
        }
        // No reservation: nothing conflicts.
        let r = lu();
        for cdb in reads.iter().chain(&writes).chain(&allowed) {
            assert_eq!(r.check(A, cdb), Ok(()));
        }
        assert_eq!(r.check(A, &[]), Ok(()));
    }

    #[test]
    fn nexuses_come_and_go() {
        let mut r = lu();
        register(&mut r, A, KA);
        reserve(&mut r, A, KA, PrType::ExclusiveAccessRegistrantsOnly);
        // Logout keeps the registration and the reservation; a new session of the same
        // initiator port is the holder again.
        r.remove_nexus(A);
        assert_eq!(r.keys(), vec![KA]);
        assert_eq!(r.check(A, &READ10), Err(Conflict));
        r.add_nexus(NexusId(31), ident("iqn.2024-01.test:a", 1));
        assert!(r.is_holder(NexusId(31)));
        // Another ISID of the same name is another initiator port.
        r.add_nexus(NexusId(32), ident("iqn.2024-01.test:a", 2));
        assert!(!r.is_registered(NexusId(32)));
        assert_eq!(r.check(NexusId(32), &READ10), Err(Conflict));
        // Initiator names compare without regard to case.
        r.add_nexus(NexusId(33), ident("IQN.2024-01.TEST:A", 1));
        assert!(r.is_holder(NexusId(33)));
        // A nexus the LU never announced cannot register.
        let e = prout(&mut r, NexusId(99), prout_sa::REGISTER, 0, 0, KB).unwrap_err();
        assert_eq!(sense_of(e).1, Asc::INTERNAL_TARGET_FAILURE);
        r.assert_invariants();
    }

    #[test]
    fn data_out_length() {
        assert_eq!(data_out_len(&prout_cdb(0, 0, 24)), 24);
        assert_eq!(data_out_len(&prout_cdb(0, 0, 0x0102_0304)), 0x0102_0304);
        assert_eq!(data_out_len(&WRITE10), 0);
        assert_eq!(data_out_len(&[0x5f, 0, 0]), 0);
    }

    // --- Robustness ----------------------------------------------------------------------

    fn any_op() -> impl Strategy<Value = (usize, u8, u8, u8, u8, u8)> {
        (0usize..4, 0u8..9, 0u8..10, 0u8..4, 0u8..4, any::<u8>())
    }

    proptest! {
        #[test]
        fn prout_never_panics(
            cdb in proptest::collection::vec(any::<u8>(), 0..16),
            param in proptest::collection::vec(any::<u8>(), 0..300),
            who in 0u64..5,
        ) {
            let mut r = lu();
            register(&mut r, A, KA);
            reserve(&mut r, A, KA, PrType::WriteExclusive);
            let mut cdb = cdb;
            if let Some(b) = cdb.first_mut() {
                *b = 0x5f;
            }
            let _ = r.check(NexusId(who), &cdb);
            let _ = r.persistent_reserve_out(NexusId(who), &cdb, &param);
            r.assert_invariants();
        }

        #[test]
        fn prout_with_valid_header_never_panics(
            sa in 0u8..8,
            scope_type in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut r = lu();
            register(&mut r, A, KA);
            let mut p = KA.to_be_bytes().to_vec();
            p.extend_from_slice(&body);
            let cdb = prout_cdb(sa, scope_type, p.len() as u32);
            let _ = r.persistent_reserve_out(A, &cdb, &p);
            r.assert_invariants();
        }

        #[test]
        fn check_and_prin_never_panic(
            cdb in proptest::collection::vec(any::<u8>(), 0..40),
            sa in any::<u8>(),
            alloc in any::<u16>(),
            buf_len in 0usize..200,
        ) {
            let mut r = lu();
            register(&mut r, A, KA);
            register(&mut r, B, KB);
            reserve(&mut r, A, KA, PrType::ExclusiveAccessRegistrantsOnly);
            for n in [A, B, C, NexusId(50)] {
                let _ = r.check(n, &cdb);
            }
            let mut buf = vec![0u8; buf_len];
            if let Ok(n) = r.persistent_reserve_in(A, sa, alloc, &mut buf) {
                prop_assert!(n <= usize::from(alloc));
            }
            let _ = check_reserve_release_cdb(&cdb);
            let _ = decode_prin(&cdb);
            let _ = data_out_len(&cdb);
        }

        #[test]
        fn restore_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = lu();
            let mut with_magic = APTPL_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            for b in [&bytes, &with_magic] {
                if r.restore_aptpl(b).is_ok() {
                    r.assert_invariants();
                    // What was restored saves to the same bytes.
                    let saved = r.aptpl_state();
                    prop_assert_eq!(saved.as_ref(), Some(b));
                }
            }
        }

        #[test]
        fn transport_id_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok((tid, len)) = TransportId::parse(&bytes) {
                prop_assert!(len <= bytes.len());
                prop_assert_eq!(TransportId::parse(&tid.encode()).map(|(t, _)| t), Ok(tid));
            }
        }

        /// Random sequences of service actions keep the invariants, READ KEYS and
        /// READ RESERVATION stay well-formed, and APTPL state always restores.
        #[test]
        fn random_sequences_keep_invariants(ops in proptest::collection::vec(any_op(), 1..40)) {
            let mut r = lu();
            let keys = [0u64, KA, KB, KC];
            let nexuses = [A, B, C, NexusId(40)];
            r.add_nexus(NexusId(40), ident("iqn.2024-01.test:a", 2));
            for (who, sa, t, k, sk, flags) in ops {
                let n = nexuses[who];
                let mut p = basic(keys[usize::from(k)], keys[usize::from(sk)], flags & 0x05);
                if sa == prout_sa::REGISTER_AND_MOVE {
                    let dest = nexuses[usize::from(flags) % 4];
                    let tid = TransportId::of_port(&r.nexuses[&dest].id).encode();
                    p = move_param(
                        keys[usize::from(k)],
                        keys[usize::from(sk)],
                        flags & 0x03,
                        1,
                        &tid,
                    );
                }
                let gen = r.generation();
                let cdb = prout_cdb(sa, t, p.len() as u32);
                let allowed = r.check(n, &cdb);
                let res = r.persistent_reserve_out(n, &cdb, &p);
                if res.is_err() {
                    prop_assert_eq!(r.generation(), gen);
                }
                if allowed.is_err() {
                    prop_assert!(res.is_err(), "check said conflict, PROUT succeeded");
                }
                r.assert_invariants();
                let (_, ks) = read_keys(&r);
                prop_assert_eq!(ks, r.keys());
                let _ = read_reservation(&r);
                if let Some(saved) = r.aptpl_state() {
                    let mut s = Reservations::new();
                    prop_assert_eq!(s.restore_aptpl(&saved), Ok(()));
                }
            }
        }
    }
}
