//! Block commands (SBC-3): READ CAPACITY and the I/O plans of READ, WRITE, VERIFY
//! and SYNCHRONIZE CACHE.

use crate::cdb::{cdb_len, Cdb, Opcode};
use crate::lu::{IoKind, IoPlan, LuConfig, Outcome, Response};
use crate::out::Out;
use crate::sense::{Asc, Sense, SenseKey};

/// READ CAPACITY(10) parameter data (SBC-3 §5.15.2): last LBA (0xFFFFFFFF when it does
/// not fit, telling the initiator to use READ CAPACITY(16)) and block length.
pub fn read_capacity_10(
    cfg: &LuConfig,
    lba: u32,
    pmi: bool,
    data_in: &mut [u8],
) -> Result<usize, Sense> {
    // SBC-3 §5.15.1: with PMI=0 the LOGICAL BLOCK ADDRESS field shall be zero.
    if !pmi && lba != 0 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    let last = cfg.num_blocks().saturating_sub(1);
    let last = u32::try_from(last).unwrap_or(u32::MAX);
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&last.to_be_bytes());
    b[4..8].copy_from_slice(&cfg.block_len().to_be_bytes());
    let mut out = Out::new(data_in, b.len());
    out.put(&b);
    Ok(out.finish())
}

/// READ CAPACITY(16) parameter data (SBC-3 §5.16.2), 32 bytes: last LBA, block length,
/// LBPME/LBPRZ for thin provisioning (SBC-3 §4.7.3).
pub fn read_capacity_16(
    cfg: &LuConfig,
    lba: u64,
    pmi: bool,
    allocation_length: u32,
    data_in: &mut [u8],
) -> Result<usize, Sense> {
    if !pmi && lba != 0 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&cfg.num_blocks().saturating_sub(1).to_be_bytes());
    b[8..12].copy_from_slice(&cfg.block_len().to_be_bytes());
    // Byte 13: P_I_EXPONENT 0, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0.
    if cfg.thin_provisioning {
        b[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    let mut out = Out::new(data_in, allocation_length as usize);
    out.put(&b);
    Ok(out.finish())
}

/// Byte offset of the TRANSFER LENGTH field, for the sense field pointer.
fn transfer_length_byte(op: Opcode) -> u16 {
    match cdb_len(op.0) {
        Some(6) => 4,
        Some(12) => 6,
        Some(16) => 10,
        _ => 7,
    }
}

/// Check that `lba .. lba + blocks` lies within the medium without overflowing
/// (SBC-3 §4.5: LOGICAL BLOCK ADDRESS OUT OF RANGE).
fn check_range(cfg: &LuConfig, lba: u64, blocks: u32) -> Result<(), Sense> {
    match lba.checked_add(u64::from(blocks)) {
        Some(end) if end <= cfg.num_blocks() => Ok(()),
        _ => Err(Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE)),
    }
}

/// Decide READ / WRITE / VERIFY / SYNCHRONIZE CACHE: checks (protection fields,
/// write protect, range, MAXIMUM TRANSFER LENGTH; the caller checked readiness) then either finishes at once or
/// returns a plan. `data_in_cap` and `data_out_len` are the transport's buffer sizes.
pub(crate) fn plan(
    cfg: &LuConfig,
    cdb: &Cdb,
    op: Opcode,
    data_in_cap: usize,
    data_out_len: usize,
) -> Result<Outcome, Sense> {
    let bs = u64::from(cfg.block_len());
    let good = || Ok(Outcome::Done(Response::good(0)));
    match *cdb {
        Cdb::Read {
            lba,
            blocks,
            fua,
            rdprotect,
            ..
        } => {
            // No protection information: RDPROTECT must be 0 (SBC-3 §5.8, table 35).
            if rdprotect != 0 {
                return Err(Sense::invalid_field_in_cdb(1, Some(7)));
            }
            check_range(cfg, lba, blocks)?;
            let bytes = checked_transfer(cfg, blocks, op)?;
            if bytes == 0 {
                return good();
            }
            Ok(Outcome::Io(IoPlan {
                kind: IoKind::Read,
                offset: lba * bs,
                len: bytes.min(data_in_cap),
                fua,
                transfer_len: bytes,
            }))
        }
        Cdb::Write {
            lba,
            blocks,
            fua,
            wrprotect,
            ..
        } => {
            if wrprotect != 0 {
                return Err(Sense::invalid_field_in_cdb(1, Some(7)));
            }
            if cfg.readonly {
                return Err(Sense::new(SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED));
            }
            check_range(cfg, lba, blocks)?;
            let bytes = checked_transfer(cfg, blocks, op)?;
            // iSCSI underflow: write only the whole blocks the initiator sent
            // (libiscsi's residual tests expect exactly this).
            let len = bytes.min(data_out_len);
            let len = len - len % cfg.block_len() as usize;
            if len == 0 {
                return good();
            }
            Ok(Outcome::Io(IoPlan {
                kind: IoKind::Write,
                offset: lba * bs,
                len,
                fua,
                transfer_len: bytes,
            }))
        }
        Cdb::Verify {
            lba,
            blocks,
            bytchk,
            vrprotect,
        } => {
            if vrprotect != 0 {
                return Err(Sense::invalid_field_in_cdb(1, Some(7)));
            }
            // BYTCHK != 0 compares data-out against the medium, not implemented yet.
            if bytchk != 0 {
                return Err(Sense::invalid_field_in_cdb(1, Some(2)));
            }
            check_range(cfg, lba, blocks)?;
            // Medium verification of a file or device store is a no-op (SBC-3 §5.26).
            good()
        }
        Cdb::SynchronizeCache { lba, blocks, .. } => {
            // 0 blocks means "to the last LBA" (SBC-3 §5.22); lba itself must be valid.
            check_range(cfg, lba, blocks)?;
            Ok(Outcome::Io(IoPlan {
                kind: IoKind::Flush,
                offset: lba * bs,
                len: 0,
                fua: false,
                transfer_len: 0,
            }))
        }
        _ => good(),
    }
}

/// blocks × block size, refused above MAXIMUM TRANSFER LENGTH (SBC-3 §6.5.3, Block
/// Limits VPD) with INVALID FIELD IN CDB pointing at TRANSFER LENGTH.
fn checked_transfer(cfg: &LuConfig, blocks: u32, op: Opcode) -> Result<usize, Sense> {
    let bytes = u64::from(blocks) * u64::from(cfg.block_len());
    if bytes > u64::from(cfg.max_transfer) {
        return Err(Sense::invalid_field_in_cdb(transfer_length_byte(op), None));
    }
    // max_transfer is a u32, so this fits any usize of 32 bits or more.
    usize::try_from(bytes).map_err(|_| Sense::invalid_field_in_cdb(transfer_length_byte(op), None))
}
