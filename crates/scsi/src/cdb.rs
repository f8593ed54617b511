//! CDB decoding (SPC-4 §4.2, SBC-3 §5), usable on its own.
//!
//! [`Cdb::decode`] checks the CDB length against the opcode's group, the CONTROL byte
//! and the reserved or unsupported fields this target checks, and returns the typed
//! fields. It never panics and never allocates, whatever the input.

use crate::sense::{Asc, Sense, SenseKey};

/// Operation code (SPC-4 §4.2.5.1). Open: unknown codes round-trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opcode(pub u8);

impl Opcode {
    pub const TEST_UNIT_READY: Opcode = Opcode(0x00);
    pub const REQUEST_SENSE: Opcode = Opcode(0x03);
    pub const READ_6: Opcode = Opcode(0x08);
    pub const WRITE_6: Opcode = Opcode(0x0a);
    pub const INQUIRY: Opcode = Opcode(0x12);
    pub const MODE_SELECT_6: Opcode = Opcode(0x15);
    pub const RESERVE_6: Opcode = Opcode(0x16);
    pub const RELEASE_6: Opcode = Opcode(0x17);
    pub const MODE_SENSE_6: Opcode = Opcode(0x1a);
    pub const START_STOP_UNIT: Opcode = Opcode(0x1b);
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: Opcode = Opcode(0x1e);
    pub const READ_CAPACITY_10: Opcode = Opcode(0x25);
    pub const READ_10: Opcode = Opcode(0x28);
    pub const WRITE_10: Opcode = Opcode(0x2a);
    pub const WRITE_AND_VERIFY_10: Opcode = Opcode(0x2e);
    pub const VERIFY_10: Opcode = Opcode(0x2f);
    pub const PRE_FETCH_10: Opcode = Opcode(0x34);
    pub const SYNCHRONIZE_CACHE_10: Opcode = Opcode(0x35);
    pub const READ_DEFECT_DATA_10: Opcode = Opcode(0x37);
    pub const WRITE_SAME_10: Opcode = Opcode(0x41);
    pub const UNMAP: Opcode = Opcode(0x42);
    pub const SANITIZE: Opcode = Opcode(0x48);
    pub const MODE_SELECT_10: Opcode = Opcode(0x55);
    pub const RESERVE_10: Opcode = Opcode(0x56);
    pub const RELEASE_10: Opcode = Opcode(0x57);
    pub const MODE_SENSE_10: Opcode = Opcode(0x5a);
    pub const PERSISTENT_RESERVE_IN: Opcode = Opcode(0x5e);
    pub const PERSISTENT_RESERVE_OUT: Opcode = Opcode(0x5f);
    pub const EXTENDED_COPY: Opcode = Opcode(0x83);
    pub const RECEIVE_COPY_RESULTS: Opcode = Opcode(0x84);
    pub const READ_16: Opcode = Opcode(0x88);
    pub const COMPARE_AND_WRITE: Opcode = Opcode(0x89);
    pub const WRITE_16: Opcode = Opcode(0x8a);
    pub const ORWRITE_16: Opcode = Opcode(0x8b);
    pub const WRITE_AND_VERIFY_16: Opcode = Opcode(0x8e);
    pub const VERIFY_16: Opcode = Opcode(0x8f);
    pub const PRE_FETCH_16: Opcode = Opcode(0x90);
    pub const SYNCHRONIZE_CACHE_16: Opcode = Opcode(0x91);
    pub const WRITE_SAME_16: Opcode = Opcode(0x93);
    pub const WRITE_ATOMIC_16: Opcode = Opcode(0x9c);
    /// SERVICE ACTION IN(16); READ CAPACITY(16) is service action 0x10 (SBC-3 §5.16).
    pub const SERVICE_ACTION_IN_16: Opcode = Opcode(0x9e);
    pub const REPORT_LUNS: Opcode = Opcode(0xa0);
    pub const MAINTENANCE_IN: Opcode = Opcode(0xa3);
    pub const READ_12: Opcode = Opcode(0xa8);
    pub const WRITE_12: Opcode = Opcode(0xaa);
    pub const WRITE_AND_VERIFY_12: Opcode = Opcode(0xae);
    pub const VERIFY_12: Opcode = Opcode(0xaf);
    pub const READ_DEFECT_DATA_12: Opcode = Opcode(0xb7);
}

/// READ CAPACITY(16) service action of SERVICE ACTION IN(16) (SBC-3 §5.16).
pub const SA_READ_CAPACITY_16: u8 = 0x10;
/// GET LBA STATUS service action of SERVICE ACTION IN(16) (SBC-3 §5.5).
pub const SA_GET_LBA_STATUS: u8 = 0x12;
/// MAINTENANCE IN service actions (SPC-4 §6.36, §6.35, §6.37).
pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
pub const SA_REPORT_SUPPORTED_TMFS: u8 = 0x0d;

/// CDB length implied by the opcode's group code (SPC-4 §4.2.5.1); None for group 3
/// (reserved / variable length) and the vendor-specific groups 6 and 7.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Page control of MODE SENSE (SPC-4 §6.11.1, table 155).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageControl(pub u8);

impl PageControl {
    pub const CURRENT: PageControl = PageControl(0);
    pub const CHANGEABLE: PageControl = PageControl(1);
    pub const DEFAULT: PageControl = PageControl(2);
    pub const SAVED: PageControl = PageControl(3);
}

/// Why a CDB could not be decoded; each maps to one sense (see [`CdbError::sense`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CdbError {
    /// An empty CDB, or shorter than the opcode's group requires.
    #[error("CDB of {len} bytes is too short for opcode {opcode:#04x}")]
    TooShort { opcode: u8, len: usize },
    /// The opcode is not implemented by this device server.
    #[error("unsupported operation code {0:#04x}")]
    UnsupportedOpcode(u8),
    /// A field the device server checks has an invalid or unsupported value.
    #[error("invalid field in CDB byte {byte} bit {bit:?}")]
    InvalidField { byte: u16, bit: Option<u8> },
}

impl CdbError {
    /// The sense data that reports this error (SPC-4 §4.5.6).
    pub fn sense(&self) -> Sense {
        match *self {
            CdbError::TooShort { .. } => Sense::invalid_field_in_cdb(0, None),
            CdbError::UnsupportedOpcode(_) => Sense {
                field_pointer: Some(crate::sense::FieldPointer {
                    in_cdb: true,
                    byte: 0,
                    bit: Some(7),
                }),
                ..Sense::new(
                    SenseKey::ILLEGAL_REQUEST,
                    Asc::INVALID_COMMAND_OPERATION_CODE,
                )
            },
            CdbError::InvalidField { byte, bit } => Sense::invalid_field_in_cdb(byte, bit),
        }
    }
}

/// A decoded CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cdb {
    /// TEST UNIT READY (SPC-4 §6.47).
    TestUnitReady,
    /// INQUIRY (SPC-4 §6.6).
    Inquiry {
        evpd: bool,
        page_code: u8,
        allocation_length: u16,
    },
    /// REQUEST SENSE (SPC-4 §6.39).
    RequestSense { desc: bool, allocation_length: u8 },
    /// REPORT LUNS (SPC-4 §6.33).
    ReportLuns {
        select_report: u8,
        allocation_length: u32,
    },
    /// MODE SENSE(6) and (10) (SPC-4 §6.11, §6.12).
    ModeSense {
        /// MODE SENSE(10): 8-byte header, long LBA descriptors allowed.
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: PageControl,
        page_code: u8,
        subpage_code: u8,
        allocation_length: u16,
    },
    /// READ CAPACITY(10) (SBC-3 §5.15).
    ReadCapacity10 { lba: u32, pmi: bool },
    /// READ CAPACITY(16) (SBC-3 §5.16).
    ReadCapacity16 {
        lba: u64,
        pmi: bool,
        allocation_length: u32,
    },
    /// READ(6/10/12/16) (SBC-3 §5.7–§5.11).
    Read {
        lba: u64,
        blocks: u32,
        dpo: bool,
        fua: bool,
        rdprotect: u8,
    },
    /// WRITE(6/10/12/16) (SBC-3 §5.31–§5.35).
    Write {
        lba: u64,
        blocks: u32,
        dpo: bool,
        fua: bool,
        wrprotect: u8,
    },
    /// VERIFY(10/12/16) (SBC-3 §5.26–§5.28).
    Verify {
        lba: u64,
        blocks: u32,
        bytchk: u8,
        vrprotect: u8,
    },
    /// SYNCHRONIZE CACHE(10/16) (SBC-3 §5.22, §5.23); 0 blocks means to the end.
    SynchronizeCache { lba: u64, blocks: u32, immed: bool },
    /// START STOP UNIT (SBC-3 §5.20).
    StartStopUnit {
        immed: bool,
        power_condition: u8,
        loej: bool,
        start: bool,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.5 / SPC-4 §6.13).
    PreventAllowMediumRemoval { prevent: u8 },
    /// GET LBA STATUS (SBC-3 §5.5).
    GetLbaStatus { lba: u64, allocation_length: u32 },
    /// PRE-FETCH(10/16) (SBC-3 §5.6, §5.7).
    PreFetch { lba: u64, blocks: u32, immed: bool },
    /// READ DEFECT DATA(10/12) (SBC-3 §5.17, §5.18).
    ReadDefectData {
        twelve: bool,
        req_plist: bool,
        req_glist: bool,
        format: u8,
        allocation_length: u32,
    },
    /// WRITE SAME(10/16) (SBC-3 §5.41, §5.42). `blocks` 0 means to the last LBA.
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        anchor: bool,
        ndob: bool,
        wrprotect: u8,
    },
    /// UNMAP (SBC-3 §5.28).
    Unmap {
        anchor: bool,
        parameter_list_length: u16,
    },
    /// COMPARE AND WRITE (SBC-3 §5.2): `blocks` to compare, then write.
    CompareAndWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
        wrprotect: u8,
    },
    /// ORWRITE(16) (SBC-3 §5.9).
    OrWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
        orprotect: u8,
    },
    /// WRITE AND VERIFY(10/12/16) (SBC-3 §5.38–§5.40).
    WriteAndVerify {
        lba: u64,
        blocks: u32,
        bytchk: u8,
        wrprotect: u8,
    },
    /// WRITE ATOMIC(16) (SBC-4 §5.48).
    WriteAtomic {
        lba: u64,
        blocks: u32,
        fua: bool,
        wrprotect: u8,
    },
    /// SANITIZE (SBC-3 §5.19).
    Sanitize {
        immed: bool,
        ause: bool,
        service_action: u8,
        parameter_list_length: u16,
    },
    /// MODE SELECT(6/10) (SPC-4 §6.9, §6.10).
    ModeSelect {
        ten: bool,
        pf: bool,
        sp: bool,
        parameter_list_length: u16,
    },
    /// RESERVE(6/10) (SPC-2 §7.21, §7.22).
    Reserve,
    /// RELEASE(6/10) (SPC-2 §7.19, §7.20).
    Release,
    /// PERSISTENT RESERVE IN (SPC-4 §6.15).
    PersistentReserveIn {
        service_action: u8,
        allocation_length: u16,
    },
    /// PERSISTENT RESERVE OUT (SPC-4 §6.16); the fields are decoded by `pr`.
    PersistentReserveOut { parameter_list_length: u32 },
    /// EXTENDED COPY (SPC-4 §6.4); the parameter list is decoded by `xcopy`.
    ExtendedCopy { parameter_list_length: u32 },
    /// RECEIVE COPY RESULTS (SPC-4 §6.18); decoded by `xcopy`.
    ReceiveCopyResults,
    /// REPORT TARGET PORT GROUPS (SPC-4 §6.36).
    ReportTargetPortGroups {
        extended: bool,
        allocation_length: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35); decoded by `rsoc`.
    ReportSupportedOperationCodes,
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.37).
    ReportSupportedTmfs { repd: bool, allocation_length: u32 },
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(s) => u16::from_be_bytes([s[0], s[1]]),
        None => 0,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

fn be64(b: &[u8], at: usize) -> u64 {
    match b.get(at..at + 8) {
        Some(s) => u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]),
        None => 0,
    }
}

fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

fn invalid(byte: u16, bit: Option<u8>) -> CdbError {
    CdbError::InvalidField { byte, bit }
}

impl Cdb {
    /// Decode `cdb`. The slice may be longer than the opcode's CDB (iSCSI carries 16
    /// bytes or more); bytes past the CDB length are ignored.
    pub fn decode(cdb: &[u8]) -> Result<Cdb, CdbError> {
        let Some(&op) = cdb.first() else {
            return Err(CdbError::TooShort { opcode: 0, len: 0 });
        };
        let Some(len) = cdb_len(op) else {
            return Err(CdbError::UnsupportedOpcode(op));
        };
        if !is_supported(Opcode(op)) {
            return Err(CdbError::UnsupportedOpcode(op));
        }
        if cdb.len() < len {
            return Err(CdbError::TooShort {
                opcode: op,
                len: cdb.len(),
            });
        }
        let cdb = &cdb[..len];
        // CONTROL byte: NACA=1 needs ACA support, which this device server lacks
        // (SAM-5 §5.9, SPC-4 §4.2.5.3): ILLEGAL REQUEST / INVALID FIELD IN CDB.
        let control = len - 1;
        if cdb[control] & 0x04 != 0 {
            return Err(invalid(control as u16, Some(2)));
        }
        let b1 = byte(cdb, 1);
        let rw_flags = |b1: u8| ((b1 >> 5), b1 & 0x10 != 0, b1 & 0x08 != 0);
        Ok(match Opcode(op) {
            Opcode::TEST_UNIT_READY => Cdb::TestUnitReady,
            Opcode::REQUEST_SENSE => Cdb::RequestSense {
                desc: b1 & 0x01 != 0,
                allocation_length: byte(cdb, 4),
            },
            Opcode::INQUIRY => {
                // CMDDT (obsolete, bit 1) set: SPC-4 §6.6 says INVALID FIELD IN CDB.
                if b1 & 0x02 != 0 {
                    return Err(invalid(1, Some(1)));
                }
                let evpd = b1 & 0x01 != 0;
                let page_code = byte(cdb, 2);
                if !evpd && page_code != 0 {
                    return Err(invalid(2, Some(7)));
                }
                Cdb::Inquiry {
                    evpd,
                    page_code,
                    allocation_length: be16(cdb, 3),
                }
            }
            Opcode::REPORT_LUNS => Cdb::ReportLuns {
                select_report: byte(cdb, 2),
                allocation_length: be32(cdb, 6),
            },
            Opcode::MODE_SENSE_6 | Opcode::MODE_SENSE_10 => {
                let ten = Opcode(op) == Opcode::MODE_SENSE_10;
                let b2 = byte(cdb, 2);
                Cdb::ModeSense {
                    ten,
                    dbd: b1 & 0x08 != 0,
                    llbaa: ten && b1 & 0x10 != 0,
                    pc: PageControl(b2 >> 6),
                    page_code: b2 & 0x3f,
                    subpage_code: byte(cdb, 3),
                    allocation_length: if ten {
                        be16(cdb, 7)
                    } else {
                        u16::from(byte(cdb, 4))
                    },
                }
            }
            Opcode::READ_CAPACITY_10 => Cdb::ReadCapacity10 {
                lba: be32(cdb, 2),
                pmi: byte(cdb, 8) & 0x01 != 0,
            },
            Opcode::SERVICE_ACTION_IN_16 => match b1 & 0x1f {
                SA_READ_CAPACITY_16 => Cdb::ReadCapacity16 {
                    lba: be64(cdb, 2),
                    allocation_length: be32(cdb, 10),
                    pmi: byte(cdb, 14) & 0x01 != 0,
                },
                SA_GET_LBA_STATUS => Cdb::GetLbaStatus {
                    lba: be64(cdb, 2),
                    allocation_length: be32(cdb, 10),
                },
                _ => return Err(invalid(1, Some(4))),
            },
            Opcode::MAINTENANCE_IN => match b1 & 0x1f {
                SA_REPORT_TARGET_PORT_GROUPS => Cdb::ReportTargetPortGroups {
                    extended: b1 >> 5 == 1,
                    allocation_length: be32(cdb, 6),
                },
                SA_REPORT_SUPPORTED_OPERATION_CODES => Cdb::ReportSupportedOperationCodes,
                SA_REPORT_SUPPORTED_TMFS => Cdb::ReportSupportedTmfs {
                    repd: b1 & 0x80 != 0,
                    allocation_length: be32(cdb, 6),
                },
                _ => return Err(invalid(1, Some(4))),
            },
            Opcode::PRE_FETCH_10 | Opcode::PRE_FETCH_16 => {
                let (lba, blocks) = lba_and_length(Opcode(op), cdb);
                Cdb::PreFetch {
                    lba,
                    blocks,
                    immed: b1 & 0x02 != 0,
                }
            }
            Opcode::READ_DEFECT_DATA_10 | Opcode::READ_DEFECT_DATA_12 => {
                let twelve = Opcode(op) == Opcode::READ_DEFECT_DATA_12;
                let flags = if twelve { b1 } else { byte(cdb, 2) };
                Cdb::ReadDefectData {
                    twelve,
                    req_plist: flags & 0x10 != 0,
                    req_glist: flags & 0x08 != 0,
                    format: flags & 0x07,
                    allocation_length: if twelve {
                        be32(cdb, 6)
                    } else {
                        u32::from(be16(cdb, 7))
                    },
                }
            }
            Opcode::WRITE_SAME_10 | Opcode::WRITE_SAME_16 => {
                let (lba, blocks) = lba_and_length(Opcode(op), cdb);
                Cdb::WriteSame {
                    lba,
                    blocks,
                    unmap: b1 & 0x08 != 0,
                    anchor: b1 & 0x10 != 0,
                    // NDOB exists only in WRITE SAME(16) (SBC-3 §5.42).
                    ndob: Opcode(op) == Opcode::WRITE_SAME_16 && b1 & 0x01 != 0,
                    wrprotect: b1 >> 5,
                }
            }
            Opcode::UNMAP => Cdb::Unmap {
                anchor: b1 & 0x01 != 0,
                parameter_list_length: be16(cdb, 7),
            },
            Opcode::COMPARE_AND_WRITE => Cdb::CompareAndWrite {
                lba: be64(cdb, 2),
                blocks: u32::from(byte(cdb, 13)),
                fua: b1 & 0x08 != 0,
                wrprotect: b1 >> 5,
            },
            Opcode::ORWRITE_16 => Cdb::OrWrite {
                lba: be64(cdb, 2),
                blocks: be32(cdb, 10),
                fua: b1 & 0x08 != 0,
                orprotect: b1 >> 5,
            },
            Opcode::WRITE_AND_VERIFY_10
            | Opcode::WRITE_AND_VERIFY_12
            | Opcode::WRITE_AND_VERIFY_16 => {
                let (lba, blocks) = lba_and_length(Opcode(op), cdb);
                Cdb::WriteAndVerify {
                    lba,
                    blocks,
                    bytchk: (b1 >> 1) & 0x03,
                    wrprotect: b1 >> 5,
                }
            }
            Opcode::WRITE_ATOMIC_16 => Cdb::WriteAtomic {
                lba: be64(cdb, 2),
                blocks: u32::from(be16(cdb, 12)),
                fua: b1 & 0x08 != 0,
                wrprotect: b1 >> 5,
            },
            Opcode::SANITIZE => {
                // SBC-3 §5.19: byte 1 bit 6 and bytes 2..=6 are reserved.
                if b1 & 0x40 != 0 {
                    return Err(invalid(1, Some(6)));
                }
                if let Some(at) = (2..=6).find(|&i| byte(cdb, i) != 0) {
                    return Err(invalid(at as u16, None));
                }
                Cdb::Sanitize {
                    immed: b1 & 0x80 != 0,
                    ause: b1 & 0x20 != 0,
                    service_action: b1 & 0x1f,
                    parameter_list_length: be16(cdb, 7),
                }
            }
            Opcode::MODE_SELECT_6 | Opcode::MODE_SELECT_10 => {
                let ten = Opcode(op) == Opcode::MODE_SELECT_10;
                Cdb::ModeSelect {
                    ten,
                    pf: b1 & 0x10 != 0,
                    sp: b1 & 0x01 != 0,
                    parameter_list_length: if ten {
                        be16(cdb, 7)
                    } else {
                        u16::from(byte(cdb, 4))
                    },
                }
            }
            Opcode::RESERVE_6 | Opcode::RELEASE_6 | Opcode::RESERVE_10 | Opcode::RELEASE_10 => {
                // Third-party (3RDPTY) and extent reservations are not supported
                // (SPC-2 §7.21.1): INVALID FIELD IN CDB.
                let ten = matches!(Opcode(op), Opcode::RESERVE_10 | Opcode::RELEASE_10);
                if ten && b1 & 0x10 != 0 {
                    return Err(invalid(1, Some(4)));
                }
                if b1 & 0x01 != 0 {
                    return Err(invalid(1, Some(0)));
                }
                if matches!(Opcode(op), Opcode::RESERVE_6 | Opcode::RESERVE_10) {
                    Cdb::Reserve
                } else {
                    Cdb::Release
                }
            }
            Opcode::PERSISTENT_RESERVE_IN => Cdb::PersistentReserveIn {
                service_action: b1 & 0x1f,
                allocation_length: be16(cdb, 7),
            },
            Opcode::PERSISTENT_RESERVE_OUT => Cdb::PersistentReserveOut {
                parameter_list_length: be32(cdb, 5),
            },
            Opcode::EXTENDED_COPY => Cdb::ExtendedCopy {
                parameter_list_length: be32(cdb, 10),
            },
            Opcode::RECEIVE_COPY_RESULTS => Cdb::ReceiveCopyResults,
            Opcode::READ_6 | Opcode::WRITE_6 => {
                // SBC-3 §5.10: a TRANSFER LENGTH of 0 means 256 blocks.
                let lba = u64::from(b1 & 0x1f) << 16 | u64::from(be16(cdb, 2));
                let blocks = match byte(cdb, 4) {
                    0 => 256,
                    n => u32::from(n),
                };
                if Opcode(op) == Opcode::READ_6 {
                    Cdb::Read {
                        lba,
                        blocks,
                        dpo: false,
                        fua: false,
                        rdprotect: 0,
                    }
                } else {
                    Cdb::Write {
                        lba,
                        blocks,
                        dpo: false,
                        fua: false,
                        wrprotect: 0,
                    }
                }
            }
            Opcode::READ_10
            | Opcode::READ_12
            | Opcode::READ_16
            | Opcode::WRITE_10
            | Opcode::WRITE_12
            | Opcode::WRITE_16 => {
                let (protect, dpo, fua) = rw_flags(b1);
                let (lba, blocks) = lba_and_length(Opcode(op), cdb);
                if matches!(
                    Opcode(op),
                    Opcode::READ_10 | Opcode::READ_12 | Opcode::READ_16
                ) {
                    Cdb::Read {
                        lba,
                        blocks,
                        dpo,
                        fua,
                        rdprotect: protect,
                    }
                } else {
                    Cdb::Write {
                        lba,
                        blocks,
                        dpo,
                        fua,
                        wrprotect: protect,
                    }
                }
            }
            Opcode::VERIFY_10 | Opcode::VERIFY_12 | Opcode::VERIFY_16 => {
                let (lba, blocks) = lba_and_length(Opcode(op), cdb);
                Cdb::Verify {
                    lba,
                    blocks,
                    bytchk: (b1 >> 1) & 0x03,
                    vrprotect: b1 >> 5,
                }
            }
            Opcode::SYNCHRONIZE_CACHE_10 | Opcode::SYNCHRONIZE_CACHE_16 => {
                let (lba, blocks) = lba_and_length(Opcode(op), cdb);
                Cdb::SynchronizeCache {
                    lba,
                    blocks,
                    immed: b1 & 0x02 != 0,
                }
            }
            Opcode::START_STOP_UNIT => {
                let b4 = byte(cdb, 4);
                Cdb::StartStopUnit {
                    immed: b1 & 0x01 != 0,
                    power_condition: b4 >> 4,
                    loej: b4 & 0x02 != 0,
                    start: b4 & 0x01 != 0,
                }
            }
            Opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => Cdb::PreventAllowMediumRemoval {
                prevent: byte(cdb, 4) & 0x03,
            },
            _ => return Err(CdbError::UnsupportedOpcode(op)),
        })
    }
}

/// LBA and TRANSFER LENGTH of the 10-, 12- and 16-byte block command layouts
/// (SBC-3 §5.8, §5.9, §5.11); `cdb` is at least the opcode's length.
fn lba_and_length(op: Opcode, cdb: &[u8]) -> (u64, u32) {
    match cdb_len(op.0) {
        Some(16) => (be64(cdb, 2), be32(cdb, 10)),
        Some(12) => (u64::from(be32(cdb, 2)), be32(cdb, 6)),
        _ => (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7))),
    }
}

/// The opcodes [`Cdb::decode`] understands.
pub fn is_supported(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::TEST_UNIT_READY
            | Opcode::REQUEST_SENSE
            | Opcode::INQUIRY
            | Opcode::REPORT_LUNS
            | Opcode::MODE_SENSE_6
            | Opcode::MODE_SENSE_10
            | Opcode::READ_CAPACITY_10
            | Opcode::SERVICE_ACTION_IN_16
            | Opcode::READ_6
            | Opcode::READ_10
            | Opcode::READ_12
            | Opcode::READ_16
            | Opcode::WRITE_6
            | Opcode::WRITE_10
            | Opcode::WRITE_12
            | Opcode::WRITE_16
            | Opcode::VERIFY_10
            | Opcode::VERIFY_12
            | Opcode::VERIFY_16
            | Opcode::SYNCHRONIZE_CACHE_10
            | Opcode::SYNCHRONIZE_CACHE_16
            | Opcode::START_STOP_UNIT
            | Opcode::PREVENT_ALLOW_MEDIUM_REMOVAL
            | Opcode::MAINTENANCE_IN
            | Opcode::PRE_FETCH_10
            | Opcode::PRE_FETCH_16
            | Opcode::READ_DEFECT_DATA_10
            | Opcode::READ_DEFECT_DATA_12
            | Opcode::WRITE_SAME_10
            | Opcode::WRITE_SAME_16
            | Opcode::UNMAP
            | Opcode::COMPARE_AND_WRITE
            | Opcode::ORWRITE_16
            | Opcode::WRITE_AND_VERIFY_10
            | Opcode::WRITE_AND_VERIFY_12
            | Opcode::WRITE_AND_VERIFY_16
            | Opcode::WRITE_ATOMIC_16
            | Opcode::SANITIZE
            | Opcode::MODE_SELECT_6
            | Opcode::MODE_SELECT_10
            | Opcode::RESERVE_6
            | Opcode::RELEASE_6
            | Opcode::RESERVE_10
            | Opcode::RELEASE_10
            | Opcode::PERSISTENT_RESERVE_IN
            | Opcode::PERSISTENT_RESERVE_OUT
            | Opcode::EXTENDED_COPY
            | Opcode::RECEIVE_COPY_RESULTS
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn group_lengths() {
        assert_eq!(cdb_len(0x00), Some(6));
        assert_eq!(cdb_len(0x28), Some(10));
        assert_eq!(cdb_len(0x5a), Some(10));
        assert_eq!(cdb_len(0x7f), None);
        assert_eq!(cdb_len(0x88), Some(16));
        assert_eq!(cdb_len(0xa0), Some(12));
        assert_eq!(cdb_len(0xc0), None);
    }

    #[test]
    fn read6_zero_means_256() {
        let c = Cdb::decode(&[0x08, 0x1f, 0xff, 0xff, 0, 0]).unwrap();
        assert_eq!(
            c,
            Cdb::Read {
                lba: 0x1f_ffff,
                blocks: 256,
                dpo: false,
                fua: false,
                rdprotect: 0
            }
        );
    }

    #[test]
    fn read10_fields() {
        let c = Cdb::decode(&[0x28, 0x18, 0, 0, 1, 0, 0, 0, 8, 0]).unwrap();
        assert_eq!(
            c,
            Cdb::Read {
                lba: 256,
                blocks: 8,
                dpo: true,
                fua: true,
                rdprotect: 0
            }
        );
    }

    #[test]
    fn write16_fields() {
        let mut b = [0u8; 16];
        b[0] = 0x8a;
        b[1] = 0x28; // WRPROTECT 1, FUA
        b[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        b[10..14].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(
            Cdb::decode(&b).unwrap(),
            Cdb::Write {
                lba: 0x1_0000_0000,
                blocks: 3,
                dpo: false,
                fua: true,
                wrprotect: 1
            }
        );
    }

    #[test]
    fn read12_and_verify_and_sync() {
        let b = [0xa8, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0];
        assert!(matches!(
            Cdb::decode(&b).unwrap(),
            Cdb::Read {
                lba: 9,
                blocks: 2,
                ..
            }
        ));
        let v = [0x2f, 0x02, 0, 0, 0, 1, 0, 0, 4, 0];
        assert_eq!(
            Cdb::decode(&v).unwrap(),
            Cdb::Verify {
                lba: 1,
                blocks: 4,
                bytchk: 1,
                vrprotect: 0
            }
        );
        let s = [0x35, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            Cdb::decode(&s).unwrap(),
            Cdb::SynchronizeCache {
                lba: 0,
                blocks: 0,
                immed: true
            }
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            Cdb::decode(&[]),
            Err(CdbError::TooShort { opcode: 0, len: 0 })
        );
        assert_eq!(
            Cdb::decode(&[0x28, 0, 0]),
            Err(CdbError::TooShort {
                opcode: 0x28,
                len: 3
            })
        );
        assert_eq!(
            Cdb::decode(&[0xff; 16]),
            Err(CdbError::UnsupportedOpcode(0xff))
        );
        assert_eq!(
            Cdb::decode(&[0x04, 0, 0, 0, 0, 0]),
            Err(CdbError::UnsupportedOpcode(0x04))
        );
        // NACA
        assert_eq!(
            Cdb::decode(&[0, 0, 0, 0, 0, 0x04]),
            Err(CdbError::InvalidField {
                byte: 5,
                bit: Some(2)
            })
        );
        // EVPD=0 with a page code
        assert_eq!(
            Cdb::decode(&[0x12, 0, 0x80, 0, 0xff, 0]),
            Err(CdbError::InvalidField {
                byte: 2,
                bit: Some(7)
            })
        );
        // SERVICE ACTION IN other than READ CAPACITY(16)
        let mut sai = [0u8; 16];
        sai[0] = 0x9e;
        sai[1] = 0x13;
        assert!(matches!(
            Cdb::decode(&sai),
            Err(CdbError::InvalidField { byte: 1, .. })
        ));
        assert_eq!(
            CdbError::UnsupportedOpcode(0xff).sense().asc,
            Asc::INVALID_COMMAND_OPERATION_CODE
        );
        assert_eq!(
            CdbError::TooShort { opcode: 0, len: 0 }.sense().asc,
            Asc::INVALID_FIELD_IN_CDB
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Cdb::decode(&b);
        }
    }
}
