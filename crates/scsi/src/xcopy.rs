//! Third-party copy, LID1 flavour: EXTENDED COPY (SPC-4 §6.4, operation code 83h
//! service action 00h) and RECEIVE COPY RESULTS (SPC-4 §6.18, operation code 84h:
//! COPY STATUS 00h and OPERATING PARAMETERS 03h).
//!
//! Sans-IO: [`parse_extended_copy`] validates the CDB and the parameter list against
//! the target's LUs and returns a [`CopyPlan`] — block ranges to read from one LU and
//! write to another — that the caller runs on its backing stores. Copy status for
//! RECEIVE COPY RESULTS lives in a [`CopyStatusTable`] the caller keeps per I_T nexus
//! and LU (SPC-4 §6.18.3: status is per I_T nexus and LIST IDENTIFIER).
//!
//! What this copy manager implements (reported by OPERATING PARAMETERS, SPC-4
//! §6.18.4):
//! - CSCD (target) descriptors: only the identification descriptor, type E4h
//!   (SPC-4 §6.4.5.2), naming a block device (PERIPHERAL DEVICE TYPE 0) by the NAA
//!   designator of its Device Identification VPD page; at most
//!   [`MAX_CSCD_DESCRIPTORS`].
//! - Segment descriptors: only block device to block device, type 02h (SPC-4
//!   §6.4.6.5); at most [`MAX_SEGMENT_DESCRIPTORS`].
//! - No inline or embedded data, no held data (RECEIVE COPY DATA), no failed segment
//!   details: those service actions are rejected as INVALID FIELD IN CDB.
//!
//! Error reporting follows SPC-4 §5.17.4 (errors found before any segment is
//! processed: ILLEGAL REQUEST) and LIO's copy manager for errors found on a copy
//! target (COPY ABORTED / COPY TARGET DEVICE NOT REACHABLE, which also tells
//! initiators to fall back to ordinary READ/WRITE). LBAs beyond a copy target's
//! capacity are reported that way too, with the segment pointer (SPC-4 §4.5.2.4.5)
//! at the offending LBA field: libiscsi's ExtendedCopy.ValidSegDescr accepts only
//! 00h/00h, 08h/04h and 0Dh/02h with COPY ABORTED.

use crate::lu::{DeviceType, LuConfig};
use crate::out::Out;
use crate::sense::{Asc, FieldPointer, Sense, SenseKey};
use crate::spc;

/// EXTENDED COPY operation code (SPC-4 §6.4).
pub const OPCODE_EXTENDED_COPY: u8 = 0x83;
/// RECEIVE COPY RESULTS operation code (SPC-4 §6.18).
pub const OPCODE_RECEIVE_COPY_RESULTS: u8 = 0x84;
/// EXTENDED COPY(LID1) service action (SPC-4 §6.4.1).
pub const SA_EXTENDED_COPY_LID1: u8 = 0x00;
/// RECEIVE COPY RESULTS service action COPY STATUS (SPC-4 §6.18.3).
pub const SA_COPY_STATUS: u8 = 0x00;
/// RECEIVE COPY RESULTS service action RECEIVE DATA (not supported).
pub const SA_RECEIVE_DATA: u8 = 0x01;
/// RECEIVE COPY RESULTS service action OPERATING PARAMETERS (SPC-4 §6.18.4).
pub const SA_OPERATING_PARAMETERS: u8 = 0x03;
/// RECEIVE COPY RESULTS service action FAILED SEGMENT DETAILS (not supported).
pub const SA_FAILED_SEGMENT_DETAILS: u8 = 0x04;

/// MAXIMUM CSCD DESCRIPTOR COUNT (MAXIMUM TARGET DESCRIPTOR COUNT in LID1 terms):
/// a source and a destination.
pub const MAX_CSCD_DESCRIPTORS: usize = 2;
/// MAXIMUM SEGMENT DESCRIPTOR COUNT.
pub const MAX_SEGMENT_DESCRIPTORS: usize = 1;
/// MAXIMUM DESCRIPTOR LIST LENGTH: CSCD plus segment descriptor list bytes.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// MAXIMUM SEGMENT LENGTH in bytes: 256 MiB, so any type 02h segment (at most 65535
/// blocks) on a 512- or 4096-byte-block LU fits. The caller copies a segment in
/// pieces of its own choosing (e.g. its largest I/O buffer).
pub const MAX_SEGMENT_LENGTH: u32 = 256 << 20;
/// TOTAL CONCURRENT COPIES reported; [`CopyStatusTable::begin`] allows at most
/// [`MAX_CONCURRENT_COPIES`] in progress per I_T nexus and LU.
pub const TOTAL_CONCURRENT_COPIES: u16 = 16;
/// MAXIMUM CONCURRENT COPIES reported and enforced per I_T nexus and LU.
pub const MAX_CONCURRENT_COPIES: u8 = 16;
/// Completed copy statuses held per I_T nexus and LU; the oldest goes first.
pub const MAX_HELD_STATUSES: usize = 16;
/// DATA SEGMENT GRANULARITY (log2 bytes): 512.
pub const DATA_SEGMENT_GRANULARITY_LOG2: u8 = 9;
/// Descriptor type codes implemented, ascending (SPC-4 §6.18.4): block to block
/// segment descriptor and identification CSCD descriptor.
pub const IMPLEMENTED_DESCRIPTOR_TYPE_CODES: [u8; 2] = [DESC_BLOCK_TO_BLOCK, DESC_IDENTIFICATION];

/// Segment descriptor type code: block device to block device (SPC-4 §6.4.6.5).
const DESC_BLOCK_TO_BLOCK: u8 = 0x02;
/// CSCD descriptor type code: identification descriptor (SPC-4 §6.4.5.2).
const DESC_IDENTIFICATION: u8 = 0xe4;

/// Parameter list header length (SPC-4 §6.4.3, table 109).
const HEADER_LEN: usize = 16;
/// Length of every CSCD descriptor this copy manager accepts (SPC-4 §6.4.5.1).
const CSCD_LEN: usize = 32;
/// Block to block segment descriptor length, and its DESCRIPTOR LENGTH field value.
const B2B_LEN: usize = 28;
const B2B_DESCRIPTOR_LENGTH: u16 = (B2B_LEN - 4) as u16;
/// Longest DESIGNATOR in an identification CSCD descriptor (SPC-4 §6.4.5.2).
const MAX_DESIGNATOR_LEN: usize = 20;
/// EXTENDED COPY and RECEIVE COPY RESULTS are 16-byte CDBs.
const CDB_LEN: usize = 16;

/// Why an EXTENDED COPY or RECEIVE COPY RESULTS failed; [`CopyError::sense`] maps
/// each to its sense data in one place. Byte numbers are offsets in the CDB
/// (`InvalidCdbField`) or in the parameter list (all others).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// CDB shorter than 16 bytes.
    #[error("CDB of {0} bytes is too short")]
    CdbTooShort(usize),
    #[error("invalid field in CDB byte {byte} bit {bit:?}")]
    InvalidCdbField { byte: u16, bit: Option<u8> },
    /// The parameter list is shorter than its header says, or the descriptor lists
    /// exceed [`MAX_DESCRIPTOR_LIST_LENGTH`] (SPC-4 §6.4.3).
    #[error("parameter list length error")]
    ParameterListLength,
    #[error("invalid field in parameter list byte {byte} bit {bit:?}")]
    InvalidParameterField { byte: u16, bit: Option<u8> },
    #[error("more than {MAX_CSCD_DESCRIPTORS} CSCD descriptors")]
    TooManyTargetDescriptors,
    #[error("more than {MAX_SEGMENT_DESCRIPTORS} segment descriptors")]
    TooManySegmentDescriptors,
    #[error("unsupported CSCD descriptor type code {code:#04x} at byte {byte}")]
    UnsupportedTargetDescriptorType { code: u8, byte: u16 },
    #[error("unsupported segment descriptor type code {code:#04x} at byte {byte}")]
    UnsupportedSegmentDescriptorType { code: u8, byte: u16 },
    /// A segment names a CSCD descriptor that is missing, null, or matches no LU.
    #[error("copy target at byte {byte} not reachable")]
    TargetNotReachable { byte: u16 },
    /// The CSCD descriptor is not for a block device of this LU's block length.
    #[error("incorrect copy target device type at byte {byte}")]
    IncorrectTargetDeviceType { byte: u16 },
    /// A segment's blocks lie beyond the copy target's capacity.
    #[error("LBA out of range on the copy target (byte {byte})")]
    LbaOutOfRange { byte: u16 },
    /// The destination LU is read-only.
    #[error("copy destination is write protected")]
    WriteProtected,
    /// An EXTENDED COPY with this LIST IDENTIFIER is in progress on the I_T nexus.
    #[error("list identifier {0} in use")]
    OperationInProgress(u8),
    /// More than [`MAX_CONCURRENT_COPIES`] copies in progress on the I_T nexus.
    #[error("too many concurrent copies")]
    InsufficientResources,
    /// RECEIVE COPY RESULTS COPY STATUS for a LIST IDENTIFIER with no status held.
    #[error("no copy status for list identifier {0}")]
    NoCopyStatus(u8),
}

fn pointer_in_list(byte: u16, bit: Option<u8>) -> Option<FieldPointer> {
    Some(FieldPointer {
        in_cdb: false,
        byte,
        bit,
    })
}

impl CopyError {
    /// The sense data reporting this error (SPC-4 §4.5.6, §5.17.4). COPY ABORTED
    /// errors carry a segment pointer relative to the parameter list (SD=0, SPC-4
    /// §4.5.2.4.5), which shares the layout of [`FieldPointer`] with C/D=0.
    pub fn sense(&self) -> Sense {
        let illegal = |asc, field_pointer| Sense {
            field_pointer,
            ..Sense::new(SenseKey::ILLEGAL_REQUEST, asc)
        };
        let aborted = |asc, byte| Sense {
            field_pointer: pointer_in_list(byte, None),
            ..Sense::new(SenseKey::COPY_ABORTED, asc)
        };
        match *self {
            CopyError::CdbTooShort(_) => Sense::invalid_field_in_cdb(0, None),
            CopyError::InvalidCdbField { byte, bit } => Sense::invalid_field_in_cdb(byte, bit),
            CopyError::ParameterListLength => illegal(Asc::PARAMETER_LIST_LENGTH_ERROR, None),
            CopyError::InvalidParameterField { byte, bit } => {
                Sense::invalid_field_in_parameter_list(byte, bit)
            }
            CopyError::TooManyTargetDescriptors => illegal(
                Asc::TOO_MANY_TARGET_DESCRIPTORS,
                pointer_in_list(2, Some(7)),
            ),
            CopyError::TooManySegmentDescriptors => illegal(
                Asc::TOO_MANY_SEGMENT_DESCRIPTORS,
                pointer_in_list(8, Some(7)),
            ),
            CopyError::UnsupportedTargetDescriptorType { byte, .. } => illegal(
                Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
                pointer_in_list(byte, Some(7)),
            ),
            CopyError::UnsupportedSegmentDescriptorType { byte, .. } => illegal(
                Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
                pointer_in_list(byte, Some(7)),
            ),
            CopyError::TargetNotReachable { byte } | CopyError::LbaOutOfRange { byte } => {
                aborted(Asc::COPY_TARGET_DEVICE_NOT_REACHABLE, byte)
            }
            CopyError::IncorrectTargetDeviceType { byte } => {
                aborted(Asc::INCORRECT_COPY_TARGET_DEVICE_TYPE, byte)
            }
            CopyError::WriteProtected => Sense::new(SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED),
            CopyError::OperationInProgress(_) => illegal(Asc::OPERATION_IN_PROGRESS, None),
            CopyError::InsufficientResources => illegal(Asc::INSUFFICIENT_RESOURCES, None),
            CopyError::NoCopyStatus(_) => Sense::invalid_field_in_cdb(2, Some(7)),
        }
    }
}

impl From<CopyError> for Sense {
    fn from(e: CopyError) -> Sense {
        e.sense()
    }
}

/// One LU the copy manager may read or write, as the caller sees it: only disk LUs
/// that the I_T nexus may access and that are ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LuInfo {
    pub lun: u64,
    /// The 8-byte NAA designator of the LU's Device Identification VPD page
    /// (`spc::naa_designator(scsi_id)`, big-endian).
    pub naa: [u8; 8],
    pub block_size: u32,
    pub num_blocks: u64,
    /// Writes refused with DATA PROTECT (tgtadm readonly).
    pub readonly: bool,
}

impl LuInfo {
    /// The copy target description of a disk LU; None for the controller LU and for
    /// an offline LU, which are not reachable as copy targets.
    pub fn from_config(lun: u64, cfg: &LuConfig) -> Option<LuInfo> {
        if cfg.device_type != DeviceType::Disk || !cfg.online {
            return None;
        }
        Some(LuInfo {
            lun,
            naa: spc::naa_designator(&cfg.scsi_id).to_be_bytes(),
            block_size: cfg.block_len(),
            num_blocks: cfg.num_blocks(),
            readonly: cfg.write_protected(),
        })
    }
}

/// LIST ID USAGE of the parameter list header (SPC-4 §6.4.3, table 110).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: hold the copy status for RECEIVE COPY RESULTS; LIST IDENTIFIER unique.
    Hold,
    /// 10b: no status held; LIST IDENTIFIER unique among copies in progress.
    NoHold,
    /// 11b: LIST IDENTIFIER not used (zero); nothing held or checked.
    NoList,
}

/// Part of a copy: `len` bytes from `src_lun` at `src_lba` to `dst_lun` at `dst_lba`.
/// `len` is a whole number of blocks of both LUs and at most [`MAX_SEGMENT_LENGTH`];
/// both ranges were checked against the LUs' capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopySegment {
    pub src_lun: u64,
    pub src_lba: u64,
    pub src_block_size: u32,
    pub dst_lun: u64,
    pub dst_lba: u64,
    pub dst_block_size: u32,
    /// Bytes to copy (never 0: empty segments are left out of the plan).
    pub len: u64,
}

impl CopySegment {
    /// Byte offset of the source range on the source LU's store.
    pub fn src_offset(&self) -> u64 {
        self.src_lba.saturating_mul(u64::from(self.src_block_size))
    }

    /// Byte offset of the destination range on the destination LU's store.
    pub fn dst_offset(&self) -> u64 {
        self.dst_lba.saturating_mul(u64::from(self.dst_block_size))
    }

    /// Source blocks.
    pub fn src_blocks(&self) -> u64 {
        self.len / u64::from(self.src_block_size.max(1))
    }

    /// Destination blocks.
    pub fn dst_blocks(&self) -> u64 {
        self.len / u64::from(self.dst_block_size.max(1))
    }
}

/// A validated EXTENDED COPY: run the segments in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    pub list_id: u8,
    pub list_id_usage: ListIdUsage,
    /// Segment descriptors in the parameter list, for SEGMENTS PROCESSED (SPC-4
    /// §6.18.3); empty segments count here but are not in `segments`.
    pub segment_descriptors: u16,
    pub segments: Vec<CopySegment>,
}

impl CopyPlan {
    /// PARAMETER LIST LENGTH 0: no data, not an error, nothing to do (SPC-4 §6.4.1).
    fn empty() -> CopyPlan {
        CopyPlan {
            list_id: 0,
            list_id_usage: ListIdUsage::NoList,
            segment_descriptors: 0,
            segments: Vec::new(),
        }
    }

    /// Total bytes the plan copies.
    pub fn total_bytes(&self) -> u64 {
        self.segments
            .iter()
            .fold(0u64, |acc, s| acc.saturating_add(s.len))
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at.saturating_add(2)) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

fn be24(b: &[u8], at: usize) -> u32 {
    match b.get(at..at.saturating_add(3)) {
        Some(&[x, y, z]) => u32::from_be_bytes([0, x, y, z]),
        _ => 0,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at.saturating_add(4)) {
        Some(s) => s.iter().fold(0u32, |acc, &x| acc << 8 | u32::from(x)),
        None => 0,
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    match b.get(at..at.saturating_add(8)) {
        Some(s) => s.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x)),
        None => 0,
    }
}

fn byte_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

/// A parameter list offset as a field pointer (lists are at most a few KiB, so this
/// only saturates on nonsense).
fn ptr(at: usize) -> u16 {
    u16::try_from(at).unwrap_or(u16::MAX)
}

/// Check the CDB length and the CONTROL byte (NACA unsupported, SAM-5 §5.9): the
/// first 16 bytes of `cdb`.
fn check_cdb(cdb: &[u8]) -> Result<&[u8], CopyError> {
    let cdb = cdb
        .get(..CDB_LEN)
        .ok_or(CopyError::CdbTooShort(cdb.len()))?;
    if byte_at(cdb, CDB_LEN - 1) & 0x04 != 0 {
        return Err(CopyError::InvalidCdbField {
            byte: (CDB_LEN - 1) as u16,
            bit: Some(2),
        });
    }
    Ok(cdb)
}

/// One identification CSCD descriptor (SPC-4 §6.4.5.2), as far as it was checked
/// before the segments were read.
#[derive(Clone, Copy, Debug, Default)]
struct Cscd {
    /// Offset in the parameter list.
    at: usize,
    /// NUL bit (byte 1 bit 5; obsolete in SPC-4, a null device in SPC-3): not
    /// supported, so such a descriptor is not reachable.
    null: bool,
    peripheral_type: u8,
    /// The designator, if it is a binary NAA designator of 8 bytes associated with
    /// the logical unit (code set 1, association 0, designator type 3).
    naa: Option<[u8; 8]>,
    /// DISK BLOCK LENGTH of the block device type specific parameters (SPC-4
    /// §6.4.5.4); 0 when the initiator left it unset.
    disk_block_length: u32,
}

/// One block to block segment descriptor (SPC-4 §6.4.6.5).
#[derive(Clone, Copy, Debug, Default)]
struct RawSegment {
    at: usize,
    /// DC: NUMBER OF BLOCKS counts destination (true) or source blocks.
    dc: bool,
    src_index: u16,
    dst_index: u16,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
}

/// Walk the CSCD descriptor list at `list[HEADER_LEN..HEADER_LEN + tdll]`.
fn parse_cscds(
    list: &[u8],
    tdll: usize,
) -> Result<([Cscd; MAX_CSCD_DESCRIPTORS], usize), CopyError> {
    let mut out = [Cscd::default(); MAX_CSCD_DESCRIPTORS];
    let mut n = 0;
    let mut at = HEADER_LEN;
    let end = HEADER_LEN + tdll;
    while at < end {
        if n >= MAX_CSCD_DESCRIPTORS {
            return Err(CopyError::TooManyTargetDescriptors);
        }
        let code = byte_at(list, at);
        if code != DESC_IDENTIFICATION {
            return Err(CopyError::UnsupportedTargetDescriptorType {
                code,
                byte: ptr(at),
            });
        }
        // The list length must hold whole descriptors.
        let Some(d) = list.get(at..at + CSCD_LEN).filter(|_| at + CSCD_LEN <= end) else {
            return Err(CopyError::InvalidParameterField {
                byte: 2,
                bit: Some(7),
            });
        };
        let b1 = d[1];
        // Byte 1 bits 7:6 LU ID TYPE: obsolete in SPC-4 and ignored (libiscsi
        // ValidTgtDescr expects GOOD from an SPC-4 device).
        let code_set = d[4] & 0x0f;
        let association = (d[5] >> 4) & 0x03;
        let designator_type = d[5] & 0x0f;
        let designator_len = usize::from(d[7]);
        if designator_len > MAX_DESIGNATOR_LEN {
            return Err(CopyError::InvalidParameterField {
                byte: ptr(at + 7),
                bit: Some(7),
            });
        }
        let naa =
            (code_set == 1 && association == 0 && designator_type == 3 && designator_len == 8)
                .then(|| {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&d[8..16]);
                    v
                });
        out[n] = Cscd {
            at,
            null: b1 & 0x20 != 0,
            peripheral_type: b1 & 0x1f,
            naa,
            disk_block_length: be24(d, 29),
        };
        n += 1;
        at += CSCD_LEN;
    }
    Ok((out, n))
}

/// Walk the segment descriptor list at `list[start..start + sdll]`.
fn parse_segments(
    list: &[u8],
    start: usize,
    sdll: usize,
) -> Result<([RawSegment; MAX_SEGMENT_DESCRIPTORS], usize), CopyError> {
    let mut out = [RawSegment::default(); MAX_SEGMENT_DESCRIPTORS];
    let mut n = 0;
    let mut at = start;
    let end = start + sdll;
    let short = CopyError::InvalidParameterField {
        byte: 8,
        bit: Some(7),
    };
    while at < end {
        if n >= MAX_SEGMENT_DESCRIPTORS {
            return Err(CopyError::TooManySegmentDescriptors);
        }
        let code = byte_at(list, at);
        if code != DESC_BLOCK_TO_BLOCK {
            return Err(CopyError::UnsupportedSegmentDescriptorType {
                code,
                byte: ptr(at),
            });
        }
        if at + 4 > end {
            return Err(short);
        }
        if be16(list, at + 2) != B2B_DESCRIPTOR_LENGTH {
            return Err(CopyError::InvalidParameterField {
                byte: ptr(at + 2),
                bit: Some(7),
            });
        }
        let Some(d) = list.get(at..at + B2B_LEN).filter(|_| at + B2B_LEN <= end) else {
            return Err(short);
        };
        // Byte 1 bit 0 CAT only matters for inexact segments, which are rejected.
        out[n] = RawSegment {
            at,
            dc: d[1] & 0x02 != 0,
            src_index: be16(d, 4),
            dst_index: be16(d, 6),
            blocks: be16(d, 10),
            src_lba: be64(d, 12),
            dst_lba: be64(d, 20),
        };
        n += 1;
        at += B2B_LEN;
    }
    Ok((out, n))
}

/// The LU a segment's CSCD descriptor ID names. `index_at` is the offset of the ID
/// field in the segment descriptor, for the segment pointer.
fn resolve<'a>(
    cscds: &[Cscd],
    index: u16,
    index_at: usize,
    lus: &'a [LuInfo],
) -> Result<&'a LuInfo, CopyError> {
    let d = cscds
        .get(usize::from(index))
        .ok_or(CopyError::TargetNotReachable {
            byte: ptr(index_at),
        })?;
    if d.peripheral_type != 0 {
        return Err(CopyError::IncorrectTargetDeviceType {
            byte: ptr(d.at + 1),
        });
    }
    let unreachable = CopyError::TargetNotReachable {
        byte: ptr(d.at + 4),
    };
    if d.null {
        return Err(CopyError::TargetNotReachable {
            byte: ptr(d.at + 1),
        });
    }
    let naa = d.naa.ok_or(unreachable)?;
    let lu = lus.iter().find(|lu| lu.naa == naa).ok_or(unreachable)?;
    if d.disk_block_length != 0 && d.disk_block_length != lu.block_size {
        return Err(CopyError::IncorrectTargetDeviceType {
            byte: ptr(d.at + 29),
        });
    }
    Ok(lu)
}

/// Check one segment against its LUs and turn it into a [`CopySegment`] (None when
/// it copies nothing).
fn plan_segment(
    s: &RawSegment,
    cscds: &[Cscd],
    lus: &[LuInfo],
) -> Result<Option<CopySegment>, CopyError> {
    let src = resolve(cscds, s.src_index, s.at + 4, lus)?;
    let dst = resolve(cscds, s.dst_index, s.at + 6, lus)?;
    if dst.readonly {
        return Err(CopyError::WriteProtected);
    }
    let src_bs = u64::from(src.block_size.max(1));
    let dst_bs = u64::from(dst.block_size.max(1));
    let unit = if s.dc { dst_bs } else { src_bs };
    let len = u64::from(s.blocks) * unit;
    let blocks_field = CopyError::InvalidParameterField {
        byte: ptr(s.at + 10),
        bit: Some(7),
    };
    // Inexact segments (a partial block on either side) are rejected, as SPC-4
    // §6.4.6.1 allows with PAD=0 and CAT=0.
    if len % src_bs != 0 || len % dst_bs != 0 || len > u64::from(MAX_SEGMENT_LENGTH) {
        return Err(blocks_field);
    }
    // A segment of zero blocks transfers nothing and is not an error; its LBAs are
    // not checked (SBC-3 §4.5 range checks apply to transferred blocks).
    if len == 0 {
        return Ok(None);
    }
    let in_range = |lba: u64, bs: u64, lu: &LuInfo| {
        lba.checked_add(len / bs)
            .is_some_and(|end| end <= lu.num_blocks)
    };
    if !in_range(s.src_lba, src_bs, src) {
        return Err(CopyError::LbaOutOfRange {
            byte: ptr(s.at + 12),
        });
    }
    if !in_range(s.dst_lba, dst_bs, dst) {
        return Err(CopyError::LbaOutOfRange {
            byte: ptr(s.at + 20),
        });
    }
    Ok(Some(CopySegment {
        src_lun: src.lun,
        src_lba: s.src_lba,
        src_block_size: src.block_size,
        dst_lun: dst.lun,
        dst_lba: s.dst_lba,
        dst_block_size: dst.block_size,
        len,
    }))
}

/// EXTENDED COPY(LID1) (SPC-4 §6.4): check the 16-byte CDB and the parameter list
/// (`param` is the data-out gathered; only its first PARAMETER LIST LENGTH bytes
/// count) and resolve the CSCD descriptors to `lus`, the disk LUs of the target the
/// I_T nexus may use.
///
/// Checks, in order: SERVICE ACTION 00h; PARAMETER LIST LENGTH 0 is a no-op plan;
/// header (shorter than 16 bytes, descriptor lists over
/// [`MAX_DESCRIPTOR_LIST_LENGTH`] or longer than the list: PARAMETER LIST LENGTH
/// ERROR; LIST ID USAGE 01b or 11b with a non-zero LIST IDENTIFIER, non-zero INLINE
/// DATA LENGTH: INVALID FIELD IN PARAMETER LIST; STR and PRIORITY are advisory and
/// ignored); CSCD descriptors (count, type E4h, designator length); segment
/// descriptors (count, type 02h, DESCRIPTOR LENGTH 18h); then per segment the copy
/// targets (COPY ABORTED), write protection, whole-block length and ranges.
pub fn parse_extended_copy(
    cdb: &[u8],
    param: &[u8],
    lus: &[LuInfo],
) -> Result<CopyPlan, CopyError> {
    let cdb = check_cdb(cdb)?;
    if byte_at(cdb, 1) & 0x1f != SA_EXTENDED_COPY_LID1 {
        return Err(CopyError::InvalidCdbField {
            byte: 1,
            bit: Some(4),
        });
    }
    let plen = usize::try_from(be32(cdb, 10)).unwrap_or(usize::MAX);
    if plen == 0 {
        return Ok(CopyPlan::empty());
    }
    let list = &param[..plen.min(param.len())];
    if list.len() < HEADER_LEN {
        return Err(CopyError::ParameterListLength);
    }
    let list_id = list[0];
    let list_id_usage = match (list[1] >> 3) & 0x03 {
        0b00 => ListIdUsage::Hold,
        0b10 => ListIdUsage::NoHold,
        0b11 => ListIdUsage::NoList,
        _ => {
            return Err(CopyError::InvalidParameterField {
                byte: 1,
                bit: Some(4),
            })
        }
    };
    if list_id_usage == ListIdUsage::NoList && list_id != 0 {
        return Err(CopyError::InvalidParameterField {
            byte: 0,
            bit: Some(7),
        });
    }
    let tdll = usize::from(be16(list, 2));
    let sdll = usize::try_from(be32(list, 8)).unwrap_or(usize::MAX);
    // SPC-4 §6.4.3: the descriptor lists together may not exceed MAXIMUM DESCRIPTOR
    // LIST LENGTH (checked first: libiscsi DescrLimits sends such a list whole).
    if u64::from(be16(list, 2)) + u64::from(be32(list, 8)) > u64::from(MAX_DESCRIPTOR_LIST_LENGTH) {
        return Err(CopyError::ParameterListLength);
    }
    if be32(list, 12) != 0 {
        return Err(CopyError::InvalidParameterField {
            byte: 12,
            bit: Some(7),
        });
    }
    if list.len() < HEADER_LEN + tdll + sdll {
        return Err(CopyError::ParameterListLength);
    }
    let (cscds, n_cscd) = parse_cscds(list, tdll)?;
    let (segs, n_seg) = parse_segments(list, HEADER_LEN + tdll, sdll)?;
    let cscds = &cscds[..n_cscd];
    let mut segments = Vec::with_capacity(n_seg);
    for s in &segs[..n_seg] {
        if let Some(seg) = plan_segment(s, cscds, lus)? {
            segments.push(seg);
        }
    }
    Ok(CopyPlan {
        list_id,
        list_id_usage,
        segment_descriptors: n_seg as u16,
        segments,
    })
}

/// COPY MANAGER STATUS of COPY STATUS data (SPC-4 §6.18.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyManagerStatus {
    /// 00h: operation in progress.
    InProgress,
    /// 01h: completed without errors.
    Completed,
    /// 02h: completed with errors.
    CompletedWithErrors,
}

impl CopyManagerStatus {
    fn code(self) -> u8 {
        match self {
            CopyManagerStatus::InProgress => 0x00,
            CopyManagerStatus::Completed => 0x01,
            CopyManagerStatus::CompletedWithErrors => 0x02,
        }
    }
}

/// The state of one EXTENDED COPY as RECEIVE COPY RESULTS COPY STATUS reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStatusRecord {
    pub list_id: u8,
    pub status: CopyManagerStatus,
    /// Segment descriptors processed so far.
    pub segments_processed: u16,
    /// Bytes written to the destination so far.
    pub bytes_transferred: u64,
    /// Whether status is held after completion (LIST ID USAGE 00b).
    hold: bool,
}

/// Copy statuses of one I_T nexus on one LU (SPC-4 §6.18.3): the copies in progress
/// (whose LIST IDENTIFIERs are in use) and completed ones held for RECEIVE COPY
/// RESULTS. Keep one per nexus beside its unit attentions; clear it on I_T nexus
/// loss and LU reset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStatusTable {
    /// Oldest first.
    records: Vec<CopyStatusRecord>,
}

impl CopyStatusTable {
    pub fn new() -> CopyStatusTable {
        CopyStatusTable::default()
    }

    /// Before running `plan`: claim its LIST IDENTIFIER (LIST ID USAGE 00b/10b).
    /// A copy in progress with the same identifier gives OPERATION IN PROGRESS
    /// (SPC-4 §6.4.3); more than [`MAX_CONCURRENT_COPIES`] in progress give
    /// INSUFFICIENT RESOURCES. A held status with the same identifier is discarded.
    pub fn begin(&mut self, plan: &CopyPlan) -> Result<(), CopyError> {
        if plan.list_id_usage == ListIdUsage::NoList {
            return Ok(());
        }
        let id = plan.list_id;
        let in_progress = |r: &CopyStatusRecord| r.status == CopyManagerStatus::InProgress;
        if self
            .records
            .iter()
            .any(|r| r.list_id == id && in_progress(r))
        {
            return Err(CopyError::OperationInProgress(id));
        }
        if self.records.iter().filter(|r| in_progress(r)).count()
            >= usize::from(MAX_CONCURRENT_COPIES)
        {
            return Err(CopyError::InsufficientResources);
        }
        self.records.retain(|r| r.list_id != id);
        self.records.push(CopyStatusRecord {
            list_id: id,
            status: CopyManagerStatus::InProgress,
            segments_processed: 0,
            bytes_transferred: 0,
            hold: plan.list_id_usage == ListIdUsage::Hold,
        });
        Ok(())
    }

    /// Progress of a copy in progress (optional; COPY STATUS shows it).
    pub fn progress(&mut self, plan: &CopyPlan, segments_processed: u16, bytes_transferred: u64) {
        if let Some(r) = self.in_progress_mut(plan) {
            r.segments_processed = segments_processed;
            r.bytes_transferred = bytes_transferred;
        }
    }

    /// After running `plan` (whatever the outcome): hold the final status for LIST ID
    /// USAGE 00b, release the identifier otherwise.
    pub fn complete(
        &mut self,
        plan: &CopyPlan,
        ok: bool,
        segments_processed: u16,
        bytes_transferred: u64,
    ) {
        let Some(r) = self.in_progress_mut(plan) else {
            return;
        };
        if !r.hold {
            let id = plan.list_id;
            self.records
                .retain(|r| !(r.list_id == id && r.status == CopyManagerStatus::InProgress));
            return;
        }
        r.status = if ok {
            CopyManagerStatus::Completed
        } else {
            CopyManagerStatus::CompletedWithErrors
        };
        r.segments_processed = segments_processed;
        r.bytes_transferred = bytes_transferred;
        // Keep at most MAX_HELD_STATUSES completed records, dropping the oldest.
        let mut completed = self
            .records
            .iter()
            .filter(|r| r.status != CopyManagerStatus::InProgress)
            .count();
        while completed > MAX_HELD_STATUSES {
            if let Some(i) = self
                .records
                .iter()
                .position(|r| r.status != CopyManagerStatus::InProgress)
            {
                self.records.remove(i);
            }
            completed -= 1;
        }
    }

    fn in_progress_mut(&mut self, plan: &CopyPlan) -> Option<&mut CopyStatusRecord> {
        if plan.list_id_usage == ListIdUsage::NoList {
            return None;
        }
        self.records
            .iter_mut()
            .find(|r| r.list_id == plan.list_id && r.status == CopyManagerStatus::InProgress)
    }

    /// The status for `list_id`, if any.
    pub fn get(&self, list_id: u8) -> Option<&CopyStatusRecord> {
        self.records.iter().find(|r| r.list_id == list_id)
    }

    /// Forget everything (I_T nexus loss, LU reset).
    pub fn clear(&mut self) {
        self.records.clear();
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// TRANSFER COUNT UNITS and TRANSFER COUNT for `bytes` (SPC-4 §6.18.3, table 232):
/// the finest unit (bytes, KiB, MiB, ... EiB) in which the count fits 32 bits.
fn transfer_count(bytes: u64) -> (u8, u32) {
    let mut units = 0u8;
    let mut count = bytes;
    while count > u64::from(u32::MAX) {
        count >>= 10;
        units += 1;
    }
    (units, count as u32)
}

/// RECEIVE COPY RESULTS (SPC-4 §6.18) from the 16-byte CDB: COPY STATUS for the
/// CDB's LIST IDENTIFIER from `table` (unknown: INVALID FIELD IN CDB; a completed
/// status is discarded once wholly returned), or OPERATING PARAMETERS. Other service
/// actions: INVALID FIELD IN CDB. Writes at most min(ALLOCATION LENGTH,
/// data_in.len()) bytes and returns the length truncated to ALLOCATION LENGTH.
pub fn receive_copy_results(
    cdb: &[u8],
    table: &mut CopyStatusTable,
    data_in: &mut [u8],
) -> Result<usize, CopyError> {
    let cdb = check_cdb(cdb)?;
    let list_id = byte_at(cdb, 2);
    let alloc = usize::try_from(be32(cdb, 10)).unwrap_or(usize::MAX);
    match byte_at(cdb, 1) & 0x1f {
        SA_COPY_STATUS => {
            let r = *table.get(list_id).ok_or(CopyError::NoCopyStatus(list_id))?;
            let (units, count) = transfer_count(r.bytes_transferred);
            let mut b = [0u8; 12];
            b[0..4].copy_from_slice(&8u32.to_be_bytes()); // AVAILABLE DATA (n-3)
            b[4] = r.status.code(); // HDD 0: no held data is ever discarded
            b[5..7].copy_from_slice(&r.segments_processed.to_be_bytes());
            b[7] = units;
            b[8..12].copy_from_slice(&count.to_be_bytes());
            let whole = alloc.min(data_in.len()) >= b.len();
            let mut out = Out::new(data_in, alloc);
            out.put(&b);
            if whole && r.status != CopyManagerStatus::InProgress {
                table.records.retain(|x| x.list_id != list_id);
            }
            Ok(out.finish())
        }
        SA_OPERATING_PARAMETERS => {
            let mut out = Out::new(data_in, alloc);
            out.put(&operating_parameters());
            Ok(out.finish())
        }
        _ => Err(CopyError::InvalidCdbField {
            byte: 1,
            bit: Some(4),
        }),
    }
}

/// Length of the OPERATING PARAMETERS data.
const OPERATING_PARAMETERS_LEN: usize = 44 + IMPLEMENTED_DESCRIPTOR_TYPE_CODES.len();

/// OPERATING PARAMETERS data (SPC-4 §6.18.4, table 233).
fn operating_parameters() -> [u8; OPERATING_PARAMETERS_LEN] {
    let mut b = [0u8; OPERATING_PARAMETERS_LEN];
    b[0..4].copy_from_slice(&((OPERATING_PARAMETERS_LEN - 4) as u32).to_be_bytes());
    b[4] = 0x01; // SNLID: LIST ID USAGE 11b supported
    b[8..10].copy_from_slice(&(MAX_CSCD_DESCRIPTORS as u16).to_be_bytes());
    b[10..12].copy_from_slice(&(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
    b[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    b[16..20].copy_from_slice(&MAX_SEGMENT_LENGTH.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER
    // SIZE: 0 (none of these are supported).
    b[34..36].copy_from_slice(&TOTAL_CONCURRENT_COPIES.to_be_bytes());
    b[36] = MAX_CONCURRENT_COPIES;
    b[37] = DATA_SEGMENT_GRANULARITY_LOG2;
    b[38] = DATA_SEGMENT_GRANULARITY_LOG2; // INLINE DATA GRANULARITY
    b[39] = DATA_SEGMENT_GRANULARITY_LOG2; // HELD DATA GRANULARITY
    b[43] = IMPLEMENTED_DESCRIPTOR_TYPE_CODES.len() as u8;
    b[44..].copy_from_slice(&IMPLEMENTED_DESCRIPTOR_TYPE_CODES);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAA_A: [u8; 8] = [0x50, 0, 0, 0, 0, 0, 0, 0xa1];
    const NAA_B: [u8; 8] = [0x50, 0, 0, 0, 0, 0, 0, 0xb2];
    const BLOCKS: u64 = 8192;

    fn lu(lun: u64, naa: [u8; 8], block_size: u32) -> LuInfo {
        LuInfo {
            lun,
            naa,
            block_size,
            num_blocks: BLOCKS,
            readonly: false,
        }
    }

    fn lus() -> Vec<LuInfo> {
        vec![lu(1, NAA_A, 512), lu(2, NAA_B, 512)]
    }

    /// An identification CSCD descriptor as libiscsi's populate_tgt_desc builds it.
    fn cscd(naa: [u8; 8], block_size: u32) -> [u8; 32] {
        let mut d = [0u8; 32];
        d[0] = 0xe4;
        d[4] = 0x01; // code set binary
        d[5] = 0x03; // association LU, designator type NAA
        d[7] = 8;
        d[8..16].copy_from_slice(&naa);
        d[29..32].copy_from_slice(&block_size.to_be_bytes()[1..]);
        d
    }

    fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> [u8; 28] {
        let mut d = [0u8; 28];
        d[0] = 0x02;
        d[2..4].copy_from_slice(&24u16.to_be_bytes());
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        d
    }

    fn list_raw(list_id: u8, usage: u8, cscds: &[u8], segs: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        v[0] = list_id;
        v[1] = (usage & 3) << 3;
        v[2..4].copy_from_slice(&(cscds.len() as u16).to_be_bytes());
        v[8..12].copy_from_slice(&(segs.len() as u32).to_be_bytes());
        v.extend_from_slice(cscds);
        v.extend_from_slice(segs);
        v
    }

    fn list(cscds: &[[u8; 32]], segs: &[[u8; 28]]) -> Vec<u8> {
        list_raw(1, 0, &cscds.concat(), &segs.concat())
    }

    fn cdb(len: usize) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = OPCODE_EXTENDED_COPY;
        c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        c
    }

    fn xcopy(param: &[u8]) -> Result<CopyPlan, CopyError> {
        parse_extended_copy(&cdb(param.len()), param, &lus())
    }

    fn sense_of(r: Result<CopyPlan, CopyError>) -> Sense {
        r.expect_err("should fail").sense()
    }

    fn assert_sense(r: Result<CopyPlan, CopyError>, key: SenseKey, asc: Asc) -> Sense {
        let s = sense_of(r);
        assert_eq!((s.key, s.asc), (key, asc), "{s:?}");
        s
    }

    /// libiscsi ExtendedCopy.Simple: one CSCD descriptor, copy the first 2048 blocks
    /// to the end of the same LU.
    #[test]
    fn simple_copy_within_one_lu() {
        let p = list(&[cscd(NAA_A, 512)], &[b2b(0, 0, 2048, 0, BLOCKS - 2048)]);
        let plan = xcopy(&p).unwrap();
        assert_eq!(plan.list_id, 1);
        assert_eq!(plan.list_id_usage, ListIdUsage::Hold);
        assert_eq!(plan.segment_descriptors, 1);
        let s = plan.segments[0];
        assert_eq!(
            s,
            CopySegment {
                src_lun: 1,
                src_lba: 0,
                src_block_size: 512,
                dst_lun: 1,
                dst_lba: BLOCKS - 2048,
                dst_block_size: 512,
                len: 2048 * 512,
            }
        );
        assert_eq!(s.src_offset(), 0);
        assert_eq!(s.dst_offset(), (BLOCKS - 2048) * 512);
        assert_eq!((s.src_blocks(), s.dst_blocks()), (2048, 2048));
        assert_eq!(plan.total_bytes(), 2048 * 512);
    }

    #[test]
    fn copy_between_two_lus() {
        let p = list(
            &[cscd(NAA_A, 512), cscd(NAA_B, 512)],
            &[b2b(1, 0, 16, 100, 200)],
        );
        let s = xcopy(&p).unwrap().segments[0];
        assert_eq!(
            (s.src_lun, s.src_lba, s.dst_lun, s.dst_lba),
            (2, 100, 1, 200)
        );
        assert_eq!(s.len, 16 * 512);
    }

    #[test]
    fn list_id_usage_values() {
        let seg = b2b(0, 0, 1, 0, 1).to_vec();
        let d = cscd(NAA_A, 512).to_vec();
        let plan = xcopy(&list_raw(5, 0b10, &d, &seg)).unwrap();
        assert_eq!((plan.list_id, plan.list_id_usage), (5, ListIdUsage::NoHold));
        let plan = xcopy(&list_raw(0, 0b11, &d, &seg)).unwrap();
        assert_eq!(plan.list_id_usage, ListIdUsage::NoList);
        // 01b is reserved; 11b needs LIST IDENTIFIER 0 (SPC-4 §6.4.3).
        let s = sense_of(xcopy(&list_raw(5, 0b01, &d, &seg)));
        assert_eq!(s, Sense::invalid_field_in_parameter_list(1, Some(4)));
        let s = sense_of(xcopy(&list_raw(5, 0b11, &d, &seg)));
        assert_eq!(s, Sense::invalid_field_in_parameter_list(0, Some(7)));
        // STR and PRIORITY are advisory.
        let mut p = list_raw(5, 0, &d, &seg);
        p[1] |= 0x20 | 0x07;
        assert!(xcopy(&p).is_ok());
    }

    /// libiscsi ExtendedCopy.ParamHdr.
    #[test]
    fn parameter_list_length() {
        let p = list(&[cscd(NAA_A, 512)], &[b2b(0, 0, 2048, 0, BLOCKS - 2048)]);
        for len in [16 + 32 - 1, 16 + 32 + 28 - 1, 1, 15] {
            assert_sense(
                parse_extended_copy(&cdb(len), &p[..len], &lus()),
                SenseKey::ILLEGAL_REQUEST,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            );
        }
        // PARAMETER LIST LENGTH 0: no data, not an error.
        let plan = parse_extended_copy(&cdb(0), &[], &lus()).unwrap();
        assert!(plan.segments.is_empty());
        assert_eq!(plan.list_id_usage, ListIdUsage::NoList);
        // Data-out shorter than the CDB says (underflow): truncated list.
        assert_sense(
            parse_extended_copy(&cdb(p.len()), &p[..40], &lus()),
            SenseKey::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR,
        );
        // Bytes past PARAMETER LIST LENGTH and past the descriptors are ignored.
        let mut longer = p.clone();
        longer.extend_from_slice(&[0xff; 40]);
        assert!(parse_extended_copy(&cdb(p.len()), &longer, &lus()).is_ok());
        assert!(parse_extended_copy(&cdb(longer.len()), &longer, &lus()).is_ok());
    }

    /// libiscsi ExtendedCopy.DescrLimits, with the limits OPERATING PARAMETERS
    /// reports.
    #[test]
    fn descriptor_limits() {
        let d = cscd(NAA_A, 512);
        let seg = b2b(0, 0, 2048, 0, BLOCKS - 2048);
        let s = assert_sense(
            xcopy(&list(&[d, d, d], &[seg])),
            SenseKey::ILLEGAL_REQUEST,
            Asc::TOO_MANY_TARGET_DESCRIPTORS,
        );
        assert_eq!(s.to_fixed()[15], 0x80 | 0x08 | 7); // SKSV, C/D=0, BPV
        assert_eq!(&s.to_fixed()[16..18], &[0, 2]);
        assert_sense(
            xcopy(&list(&[d], &[seg, seg])),
            SenseKey::ILLEGAL_REQUEST,
            Asc::TOO_MANY_SEGMENT_DESCRIPTORS,
        );
        // Three CSCD descriptors and enough segments to pass 1024 bytes (the test's
        // own arithmetic: 16 + 1024 + 28 bytes allocated, 34 segments).
        let segs = vec![seg; 34];
        let p = list(&[d, d, d], &segs);
        assert_eq!(p.len(), 16 + 96 + 34 * 28);
        assert_sense(
            xcopy(&p),
            SenseKey::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR,
        );
        // Exactly at the limit is fine as far as length goes.
        let mut p = list_raw(1, 0, &d, &seg);
        p[8..12].copy_from_slice(&(1024u32 - 32).to_be_bytes());
        assert_sense(
            parse_extended_copy(&cdb(p.len()), &p, &lus()),
            SenseKey::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR, // list shorter than its header says
        );
        p.resize(16 + 1024, 0);
        assert_sense(
            parse_extended_copy(&cdb(p.len()), &p, &lus()),
            SenseKey::ILLEGAL_REQUEST,
            Asc::TOO_MANY_SEGMENT_DESCRIPTORS,
        );
        // Huge list lengths do not overflow.
        let mut p = list_raw(1, 0, &d, &seg);
        p[2..4].copy_from_slice(&u16::MAX.to_be_bytes());
        p[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_sense(
            xcopy(&p),
            SenseKey::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR,
        );
    }

    /// libiscsi ExtendedCopy.DescrType.
    #[test]
    fn descriptor_types() {
        let mut fc = cscd(NAA_A, 512);
        fc[0] = 0xe0; // Fibre Channel N_Port_Name
        let s = assert_sense(
            xcopy(&list(&[fc], &[b2b(0, 0, 1, 0, 1)])),
            SenseKey::ILLEGAL_REQUEST,
            Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
        );
        assert_eq!(s.field_pointer.map(|f| f.byte), Some(16));
        // Stream-to-stream segment descriptor (type 03h, 20 bytes).
        let mut s2s = [0u8; 20];
        s2s[0] = 0x03;
        s2s[3] = 16;
        let s = assert_sense(
            xcopy(&list_raw(1, 0, &cscd(NAA_A, 512), &s2s)),
            SenseKey::ILLEGAL_REQUEST,
            Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
        );
        assert_eq!(s.field_pointer.map(|f| f.byte), Some(48));
        // A segment descriptor type code in the CSCD list.
        let mut wrong = cscd(NAA_A, 512);
        wrong[0] = 0x02;
        assert_sense(
            xcopy(&list(&[wrong], &[b2b(0, 0, 1, 0, 1)])),
            SenseKey::ILLEGAL_REQUEST,
            Asc::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE,
        );
    }

    #[test]
    fn malformed_descriptors() {
        let d = cscd(NAA_A, 512);
        let seg = b2b(0, 0, 1, 0, 1);
        // CSCD list length not a whole descriptor.
        let p = list_raw(1, 0, &d[..31], &seg);
        assert_eq!(
            xcopy(&p).unwrap_err(),
            CopyError::InvalidParameterField {
                byte: 2,
                bit: Some(7)
            }
        );
        // Segment list length not a whole descriptor.
        let p = list_raw(1, 0, &d, &seg[..27]);
        assert_eq!(
            xcopy(&p).unwrap_err(),
            CopyError::InvalidParameterField {
                byte: 8,
                bit: Some(7)
            }
        );
        let p = list_raw(1, 0, &d, &seg[..3]);
        assert!(matches!(
            xcopy(&p),
            Err(CopyError::InvalidParameterField { byte: 8, .. })
        ));
        // Wrong DESCRIPTOR LENGTH in the segment descriptor.
        let mut bad = seg;
        bad[3] = 0x14;
        assert_eq!(
            xcopy(&list(&[d], &[bad])).unwrap_err(),
            CopyError::InvalidParameterField {
                byte: 48 + 2,
                bit: Some(7)
            }
        );
        // DESIGNATOR LENGTH over 20.
        let mut long = d;
        long[7] = 21;
        assert_eq!(
            xcopy(&list(&[long], &[seg])).unwrap_err(),
            CopyError::InvalidParameterField {
                byte: 16 + 7,
                bit: Some(7)
            }
        );
        // Inline data is not supported.
        let mut p = list(&[d], &[seg]);
        p[15] = 4;
        p.extend_from_slice(&[0; 4]);
        assert_eq!(
            sense_of(xcopy(&p)),
            Sense::invalid_field_in_parameter_list(12, Some(7))
        );
    }

    /// libiscsi ExtendedCopy.ValidTgtDescr: an SPC-4 device ignores LU ID TYPE; the
    /// NUL bit (SPC-3 null device) is not supported, so that target is not reachable.
    #[test]
    fn target_descriptor_fields() {
        let seg = b2b(0, 0, 2048, 0, BLOCKS - 2048);
        let mut d = cscd(NAA_A, 512);
        d[1] = 2 << 6; // LU ID TYPE reserved value
        assert!(xcopy(&list(&[d], &[seg])).is_ok());
        let mut d = cscd(NAA_A, 512);
        d[1] = 0x20; // NUL
        let s = assert_sense(
            xcopy(&list(&[d], &[seg])),
            SenseKey::COPY_ABORTED,
            Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
        );
        assert_eq!(s.to_fixed()[2], 0x0a);
        // Not a block device.
        let mut d = cscd(NAA_A, 512);
        d[1] = 0x0c;
        assert_sense(
            xcopy(&list(&[d], &[seg])),
            SenseKey::COPY_ABORTED,
            Asc::INCORRECT_COPY_TARGET_DEVICE_TYPE,
        );
        // DISK BLOCK LENGTH must match when given; 0 means unspecified.
        assert_sense(
            xcopy(&list(&[cscd(NAA_A, 4096)], &[seg])),
            SenseKey::COPY_ABORTED,
            Asc::INCORRECT_COPY_TARGET_DEVICE_TYPE,
        );
        assert!(xcopy(&list(&[cscd(NAA_A, 0)], &[seg])).is_ok());
        // Unknown LU, or a designator other than a binary 8-byte LU NAA designator.
        let unknown = [0x50, 0, 0, 0, 0, 0, 0, 0xcc];
        for d in [
            cscd(unknown, 512),
            {
                let mut d = cscd(NAA_A, 512);
                d[5] = 0x01; // T10 vendor ID designator type
                d
            },
            {
                let mut d = cscd(NAA_A, 512);
                d[5] = 0x13; // target port association
                d
            },
            {
                let mut d = cscd(NAA_A, 512);
                d[4] = 0x02; // ASCII code set
                d
            },
            {
                let mut d = cscd(NAA_A, 512);
                d[7] = 16;
                d
            },
        ] {
            let s = assert_sense(
                xcopy(&list(&[d], &[seg])),
                SenseKey::COPY_ABORTED,
                Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
            );
            assert_eq!(s.field_pointer.map(|f| f.byte), Some(16 + 4));
        }
        // PIV and PROTOCOL IDENTIFIER bits do not matter; an unreferenced descriptor
        // is never resolved.
        let mut d = cscd(NAA_A, 512);
        d[4] |= 0x50;
        d[5] |= 0x80;
        assert!(xcopy(&list(&[d, cscd(unknown, 512)], &[seg])).is_ok());
    }

    /// libiscsi ExtendedCopy.ValidSegDescr.
    #[test]
    fn segment_descriptor_fields() {
        let d = cscd(NAA_A, 512);
        // DESTINATION CSCD DESCRIPTOR ID past the list.
        let s = assert_sense(
            xcopy(&list(&[d], &[b2b(0, 1, 2048, 0, BLOCKS - 2048)])),
            SenseKey::COPY_ABORTED,
            Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
        );
        let f = s.to_fixed();
        assert_eq!(f[15], 0x80); // SKSV, SD=0 (relative to the parameter list)
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 48 + 6);
        // Beyond the end of the destination.
        let s = assert_sense(
            xcopy(&list(&[d], &[b2b(0, 0, 2048, 0, BLOCKS - 1)])),
            SenseKey::COPY_ABORTED,
            Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
        );
        assert_eq!(s.field_pointer.map(|f| f.byte), Some(48 + 20));
        // Beyond the end of the source, and LBAs that overflow.
        let s = sense_of(xcopy(&list(&[d], &[b2b(0, 0, 2, BLOCKS - 1, 0)])));
        assert_eq!(s.field_pointer.map(|f| f.byte), Some(48 + 12));
        assert_eq!(
            xcopy(&list(&[d], &[b2b(0, 0, 2, u64::MAX, 0)])).unwrap_err(),
            CopyError::LbaOutOfRange { byte: 48 + 12 }
        );
        // The last blocks exactly.
        assert!(xcopy(&list(&[d], &[b2b(0, 0, 2, BLOCKS - 2, BLOCKS - 2)])).is_ok());
        // Zero blocks: nothing to do, LBAs not checked.
        let plan = xcopy(&list(&[d], &[b2b(0, 0, 0, u64::MAX, u64::MAX)])).unwrap();
        assert!(plan.segments.is_empty());
        assert_eq!(plan.segment_descriptors, 1);
        // No segment descriptors at all.
        let plan = xcopy(&list(&[d], &[])).unwrap();
        assert_eq!(plan.segment_descriptors, 0);
    }

    #[test]
    fn write_protected_destination() {
        let mut l = lus();
        l[1].readonly = true;
        let p = list(&[cscd(NAA_A, 512), cscd(NAA_B, 512)], &[b2b(0, 1, 1, 0, 0)]);
        let s = parse_extended_copy(&cdb(p.len()), &p, &l)
            .unwrap_err()
            .sense();
        assert_eq!(
            (s.key, s.asc),
            (SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED)
        );
        // Reading from a read-only LU is fine.
        let p = list(&[cscd(NAA_A, 512), cscd(NAA_B, 512)], &[b2b(1, 0, 1, 0, 0)]);
        assert!(parse_extended_copy(&cdb(p.len()), &p, &l).is_ok());
    }

    #[test]
    fn different_block_sizes() {
        let l = vec![lu(1, NAA_A, 512), lu(2, NAA_B, 4096)];
        let run = |seg: [u8; 28]| {
            let p = list(&[cscd(NAA_A, 512), cscd(NAA_B, 4096)], &[seg]);
            parse_extended_copy(&cdb(p.len()), &p, &l)
        };
        // DC=0: NUMBER OF BLOCKS in source blocks.
        let s = run(b2b(0, 1, 16, 0, 3)).unwrap().segments[0];
        assert_eq!((s.len, s.src_blocks(), s.dst_blocks()), (8192, 16, 2));
        assert_eq!(s.dst_offset(), 3 * 4096);
        // Not a whole destination block.
        assert_eq!(
            run(b2b(0, 1, 7, 0, 0)).unwrap_err(),
            CopyError::InvalidParameterField {
                byte: 80 + 10,
                bit: Some(7)
            }
        );
        // DC=1: NUMBER OF BLOCKS in destination blocks.
        let mut seg = b2b(0, 1, 1, 0, 0);
        seg[1] = 0x02;
        let s = run(seg).unwrap().segments[0];
        assert_eq!((s.len, s.src_blocks(), s.dst_blocks()), (4096, 8, 1));
        // Destination range counted in destination blocks.
        assert!(run(b2b(0, 1, 8, 0, BLOCKS - 1)).is_ok());
        assert!(matches!(
            run(b2b(0, 1, 16, 0, BLOCKS - 1)),
            Err(CopyError::LbaOutOfRange { byte: 100 })
        ));
    }

    #[test]
    fn segment_length_limit() {
        let mut l = lus();
        l[0].block_size = 8192;
        l[0].num_blocks = 1 << 20;
        let p = list(&[cscd(NAA_A, 8192)], &[b2b(0, 0, 32768, 0, 32768)]);
        assert!(parse_extended_copy(&cdb(p.len()), &p, &l).is_ok()); // exactly 256 MiB
        let p = list(&[cscd(NAA_A, 8192)], &[b2b(0, 0, 32769, 0, 32769)]);
        assert!(matches!(
            parse_extended_copy(&cdb(p.len()), &p, &l),
            Err(CopyError::InvalidParameterField { byte: 58, .. })
        ));
    }

    #[test]
    fn cdb_checks() {
        let p = list(&[cscd(NAA_A, 512)], &[b2b(0, 0, 1, 0, 1)]);
        let mut c = cdb(p.len());
        c[1] = 0x01; // EXTENDED COPY(LID4)
        assert_eq!(
            parse_extended_copy(&c, &p, &lus()).unwrap_err().sense(),
            Sense::invalid_field_in_cdb(1, Some(4))
        );
        let mut c = cdb(p.len());
        c[15] = 0x04; // NACA
        assert_eq!(
            parse_extended_copy(&c, &p, &lus()).unwrap_err().sense(),
            Sense::invalid_field_in_cdb(15, Some(2))
        );
        assert_eq!(
            parse_extended_copy(&cdb(p.len())[..10], &p, &lus()).unwrap_err(),
            CopyError::CdbTooShort(10)
        );
        // A longer CDB buffer (iSCSI carries 16+ bytes) is fine.
        let mut c = cdb(p.len()).to_vec();
        c.extend_from_slice(&[0xff; 16]);
        assert!(parse_extended_copy(&c, &p, &lus()).is_ok());
    }

    /// The designator an LU reports in its Device Identification VPD page is the one
    /// [`LuInfo::from_config`] matches.
    #[test]
    fn lu_info_matches_device_identification() {
        let mut cfg = LuConfig::disk_defaults(1, 3);
        cfg.size = 1 << 20;
        cfg.block_size = 4096;
        let mut page = [0u8; 255];
        let n = spc::inquiry(&cfg, true, spc::vpd::DEVICE_IDENTIFICATION, 255, &mut page).unwrap();
        let page = &page[..n];
        // Walk the designation descriptors for the binary NAA one.
        let mut at = 4;
        let mut naa = None;
        while at + 4 <= page.len() {
            let len = usize::from(page[at + 3]);
            if page[at] & 0x0f == 1 && page[at + 1] & 0x3f == 0x03 && len == 8 {
                naa = Some(page[at + 4..at + 12].to_vec());
            }
            at += 4 + len;
        }
        let info = LuInfo::from_config(3, &cfg).unwrap();
        assert_eq!(naa.as_deref(), Some(&info.naa[..]));
        assert_eq!(
            (info.lun, info.block_size, info.num_blocks, info.readonly),
            (3, 4096, 256, false)
        );
        // The descriptor libiscsi builds from that page finds the LU.
        let p = list(&[cscd(info.naa, 4096)], &[b2b(0, 0, 2, 0, 10)]);
        let plan = parse_extended_copy(&cdb(p.len()), &p, &[info]).unwrap();
        assert_eq!(plan.segments[0].dst_lun, 3);
        assert!(LuInfo::from_config(0, &LuConfig::controller_defaults(1)).is_none());
        cfg.online = false;
        assert!(LuInfo::from_config(3, &cfg).is_none());
    }

    fn plan(list_id: u8, usage: ListIdUsage) -> CopyPlan {
        CopyPlan {
            list_id,
            list_id_usage: usage,
            segment_descriptors: 1,
            segments: Vec::new(),
        }
    }

    fn rcr_cdb(sa: u8, list_id: u8, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = OPCODE_RECEIVE_COPY_RESULTS;
        c[1] = sa;
        c[2] = list_id;
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    fn copy_status(t: &mut CopyStatusTable, list_id: u8, alloc: u32) -> Result<Vec<u8>, CopyError> {
        let mut buf = [0u8; 64];
        let n = receive_copy_results(&rcr_cdb(SA_COPY_STATUS, list_id, alloc), t, &mut buf)?;
        Ok(buf[..n].to_vec())
    }

    /// libiscsi ReceiveCopyResults.CopyStatus: unknown list id first, then the
    /// status of a completed EXTENDED COPY with LIST ID USAGE 00b.
    #[test]
    fn copy_status_lifecycle() {
        let mut t = CopyStatusTable::new();
        let e = copy_status(&mut t, 1, 1024).unwrap_err();
        assert_eq!(e.sense(), Sense::invalid_field_in_cdb(2, Some(7)));
        let p = plan(1, ListIdUsage::Hold);
        t.begin(&p).unwrap();
        assert_eq!(
            t.begin(&p).unwrap_err().sense().asc,
            Asc::OPERATION_IN_PROGRESS
        );
        t.progress(&p, 0, 4096);
        // In progress: reported and kept.
        let b = copy_status(&mut t, 1, 1024).unwrap();
        assert_eq!(b, [0, 0, 0, 8, 0x00, 0, 0, 0, 0, 0, 0x10, 0]);
        assert_eq!(t.len(), 1);
        t.complete(&p, true, 1, 2048 * 512);
        // Truncated by ALLOCATION LENGTH: not discarded.
        let b = copy_status(&mut t, 1, 8).unwrap();
        assert_eq!(b, [0, 0, 0, 8, 0x01, 0, 1, 0]);
        assert_eq!(t.len(), 1);
        let b = copy_status(&mut t, 1, 1024).unwrap();
        assert_eq!(b, [0, 0, 0, 8, 0x01, 0, 1, 0, 0, 0x10, 0, 0]);
        // Returned whole: discarded.
        assert!(t.is_empty());
        assert!(copy_status(&mut t, 1, 1024).is_err());
        // A failed copy is held as completed with errors.
        t.begin(&p).unwrap();
        t.complete(&p, false, 0, 0);
        assert_eq!(copy_status(&mut t, 1, 1024).unwrap()[4], 0x02);
    }

    #[test]
    fn copy_status_usages() {
        let mut t = CopyStatusTable::new();
        // 10b: identifier claimed while running, nothing held afterwards.
        let p = plan(2, ListIdUsage::NoHold);
        t.begin(&p).unwrap();
        assert!(t.begin(&p).is_err());
        assert_eq!(
            t.get(2).map(|r| r.status),
            Some(CopyManagerStatus::InProgress)
        );
        t.complete(&p, true, 1, 512);
        assert!(t.is_empty());
        // 11b: nothing at all.
        let p = plan(0, ListIdUsage::NoList);
        t.begin(&p).unwrap();
        t.begin(&p).unwrap();
        t.complete(&p, true, 1, 512);
        assert!(t.is_empty());
        // A new copy with the id of a held status replaces it.
        let p = plan(3, ListIdUsage::Hold);
        t.begin(&p).unwrap();
        t.complete(&p, true, 1, 512);
        t.begin(&p).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.get(3).map(|r| r.status),
            Some(CopyManagerStatus::InProgress)
        );
        t.clear();
        assert!(t.is_empty());
        // complete() without begin() is harmless.
        t.complete(&p, true, 1, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn copy_status_limits() {
        let mut t = CopyStatusTable::new();
        for id in 0..MAX_CONCURRENT_COPIES {
            t.begin(&plan(id, ListIdUsage::Hold)).unwrap();
        }
        assert_eq!(
            t.begin(&plan(200, ListIdUsage::Hold))
                .unwrap_err()
                .sense()
                .asc,
            Asc::INSUFFICIENT_RESOURCES
        );
        for id in 0..MAX_CONCURRENT_COPIES {
            t.complete(&plan(id, ListIdUsage::Hold), true, 1, 1);
        }
        // Completed statuses beyond the limit push out the oldest.
        for id in 100..120u8 {
            let p = plan(id, ListIdUsage::Hold);
            t.begin(&p).unwrap();
            t.complete(&p, true, 1, 1);
        }
        assert_eq!(t.len(), MAX_HELD_STATUSES);
        assert!(t.get(0).is_none());
        assert!(t.get(119).is_some());
    }

    #[test]
    fn transfer_count_units() {
        assert_eq!(transfer_count(0), (0, 0));
        assert_eq!(transfer_count(u64::from(u32::MAX)), (0, u32::MAX));
        assert_eq!(transfer_count(1 << 32), (1, 1 << 22));
        assert_eq!(transfer_count(u64::MAX), (4, (1 << 24) - 1));
        assert_eq!(transfer_count(256 << 20), (0, 256 << 20));
    }

    /// libiscsi ReceiveCopyResults.OpParams and the unmarshalling in
    /// scsi-lowlevel.c (AVAILABLE DATA at least 40, type codes from byte 44).
    #[test]
    fn operating_parameters_layout() {
        let mut t = CopyStatusTable::new();
        let mut buf = [0u8; 1024];
        let n = receive_copy_results(&rcr_cdb(SA_OPERATING_PARAMETERS, 0, 1024), &mut t, &mut buf)
            .unwrap();
        assert_eq!(n, 46);
        let b = &buf[..n];
        assert_eq!(u32::from_be_bytes([b[0], b[1], b[2], b[3]]), 42);
        assert_eq!(b[4], 0x01); // SNLID
        assert_eq!(u16::from_be_bytes([b[8], b[9]]), 2);
        assert_eq!(u16::from_be_bytes([b[10], b[11]]), 1);
        assert_eq!(u32::from_be_bytes([b[12], b[13], b[14], b[15]]), 1024);
        assert_eq!(u32::from_be_bytes([b[16], b[17], b[18], b[19]]), 256 << 20);
        assert_eq!(&b[20..32], &[0; 12]);
        assert_eq!(u16::from_be_bytes([b[34], b[35]]), TOTAL_CONCURRENT_COPIES);
        assert_eq!(b[36], MAX_CONCURRENT_COPIES);
        assert_eq!(&b[37..40], &[9, 9, 9]);
        assert_eq!(b[43], 2);
        assert_eq!(&b[44..46], &[0x02, 0xe4]);
        // Truncation: ALLOCATION LENGTH and the caller's buffer.
        let mut small = [0u8; 64];
        let n = receive_copy_results(&rcr_cdb(SA_OPERATING_PARAMETERS, 0, 12), &mut t, &mut small)
            .unwrap();
        assert_eq!(n, 12);
        assert_eq!(&small[..12], &b[..12]);
        assert_eq!(small[12], 0);
        let mut tiny = [0u8; 4];
        let n = receive_copy_results(&rcr_cdb(SA_OPERATING_PARAMETERS, 0, 100), &mut t, &mut tiny)
            .unwrap();
        assert_eq!(n, 46);
        assert_eq!(tiny, [0, 0, 0, 42]);
    }

    #[test]
    fn receive_copy_results_errors() {
        let mut t = CopyStatusTable::new();
        let mut buf = [0u8; 64];
        for sa in [SA_RECEIVE_DATA, 0x02, SA_FAILED_SEGMENT_DETAILS, 0x05, 0x1f] {
            let e = receive_copy_results(&rcr_cdb(sa, 0, 64), &mut t, &mut buf).unwrap_err();
            assert_eq!(e.sense(), Sense::invalid_field_in_cdb(1, Some(4)));
        }
        let mut c = rcr_cdb(SA_OPERATING_PARAMETERS, 0, 64);
        c[15] = 0x04;
        assert!(receive_copy_results(&c, &mut t, &mut buf).is_err());
        assert_eq!(
            receive_copy_results(&c[..12], &mut t, &mut buf).unwrap_err(),
            CopyError::CdbTooShort(12)
        );
    }

    #[test]
    fn error_senses() {
        let cases = [
            (
                CopyError::ParameterListLength,
                SenseKey::ILLEGAL_REQUEST,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ),
            (
                CopyError::TooManySegmentDescriptors,
                SenseKey::ILLEGAL_REQUEST,
                Asc::TOO_MANY_SEGMENT_DESCRIPTORS,
            ),
            (
                CopyError::UnsupportedSegmentDescriptorType { code: 3, byte: 48 },
                SenseKey::ILLEGAL_REQUEST,
                Asc::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE,
            ),
            (
                CopyError::LbaOutOfRange { byte: 68 },
                SenseKey::COPY_ABORTED,
                Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
            ),
            (
                CopyError::IncorrectTargetDeviceType { byte: 17 },
                SenseKey::COPY_ABORTED,
                Asc::INCORRECT_COPY_TARGET_DEVICE_TYPE,
            ),
            (
                CopyError::CdbTooShort(3),
                SenseKey::ILLEGAL_REQUEST,
                Asc::INVALID_FIELD_IN_CDB,
            ),
        ];
        for (e, key, asc) in cases {
            let s = Sense::from(e);
            assert_eq!((s.key, s.asc), (key, asc), "{e}");
        }
        let f = CopyError::LbaOutOfRange { byte: 68 }.sense().to_fixed();
        assert_eq!(
            (f[2], f[12], f[13], f[15], f[17]),
            (0x0a, 0x0d, 0x02, 0x80, 68)
        );
    }

    fn arb_cscd() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(0xe4u8), any::<u8>()],
            any::<u8>(),
            prop_oneof![Just(NAA_A), Just(NAA_B), any::<[u8; 8]>()],
            prop_oneof![Just(0u8), Just(1), Just(3), any::<u8>()],
            prop_oneof![Just(0u32), Just(512), Just(4096), any::<u32>()],
        )
            .prop_map(|(code, b1, naa, desig_len, bs)| {
                let mut d = cscd(naa, bs);
                d[0] = code;
                d[1] = b1;
                if desig_len != 1 {
                    d[7] = desig_len;
                }
                d.to_vec()
            })
    }

    fn arb_segment() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(2u8), any::<u8>()],
            any::<u8>(),
            0u16..4,
            0u16..4,
            any::<u16>(),
            prop_oneof![0..BLOCKS + 10, Just(u64::MAX), any::<u64>()],
            prop_oneof![0..BLOCKS + 10, Just(u64::MAX), any::<u64>()],
        )
            .prop_map(|(code, b1, src, dst, n, sl, dl)| {
                let mut d = b2b(src, dst, n, sl, dl);
                d[0] = code;
                d[1] = b1;
                d.to_vec()
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            cdb in proptest::collection::vec(any::<u8>(), 0..24),
            param in proptest::collection::vec(any::<u8>(), 0..1200),
        ) {
            let _ = parse_extended_copy(&cdb, &param, &lus());
            let mut t = CopyStatusTable::new();
            let mut buf = [0u8; 64];
            let _ = receive_copy_results(&cdb, &mut t, &mut buf);
        }

        #[test]
        fn arbitrary_header_never_panics(
            mut param in proptest::collection::vec(any::<u8>(), 16..300),
            plen in any::<u32>(),
        ) {
            let mut c = cdb(0);
            c[10..14].copy_from_slice(&plen.to_be_bytes());
            let _ = parse_extended_copy(&c, &param, &lus());
            // Header lengths that fit the list.
            let t = (param.len() - 16) / 2;
            let s = param.len() - 16 - t;
            param[2..4].copy_from_slice(&(t as u16).to_be_bytes());
            param[8..12].copy_from_slice(&(s as u32).to_be_bytes());
            param[12..16].fill(0);
            let _ = parse_extended_copy(&cdb(param.len()), &param, &lus());
        }

        /// Near-valid lists: whatever passes has every range inside its LUs.
        #[test]
        fn plans_stay_in_range(
            cscds in proptest::collection::vec(arb_cscd(), 0..4),
            segs in proptest::collection::vec(arb_segment(), 0..3),
            usage in 0u8..4,
            cut in any::<u16>(),
        ) {
            let p = list_raw(if usage == 3 { 0 } else { 1 }, usage, &cscds.concat(), &segs.concat());
            let l = vec![lu(1, NAA_A, 512), lu(2, NAA_B, 4096)];
            if let Ok(plan) = parse_extended_copy(&cdb(p.len()), &p, &l) {
                for s in &plan.segments {
                    let src = l.iter().find(|x| x.lun == s.src_lun).unwrap();
                    let dst = l.iter().find(|x| x.lun == s.dst_lun).unwrap();
                    prop_assert!(s.len > 0 && s.len <= u64::from(MAX_SEGMENT_LENGTH));
                    prop_assert_eq!(s.len % u64::from(src.block_size), 0);
                    prop_assert_eq!(s.len % u64::from(dst.block_size), 0);
                    prop_assert!(s.src_lba + s.src_blocks() <= src.num_blocks);
                    prop_assert!(s.dst_lba + s.dst_blocks() <= dst.num_blocks);
                }
            }
            // Any truncation of it is handled too.
            let n = usize::from(cut) % (p.len() + 1);
            let _ = parse_extended_copy(&cdb(p.len()), &p[..n], &l);
        }
    }
}
