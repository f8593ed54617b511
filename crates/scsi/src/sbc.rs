//! Block commands (SBC-3): READ CAPACITY and the I/O plans of READ, WRITE, VERIFY
//! and SYNCHRONIZE CACHE.

use crate::cdb::{cdb_len, Cdb, CdbError, Opcode};
use crate::lu::{IoKind, IoPlan, LuConfig, Outcome, PlanExtra, Response};
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
    // Byte 13: P_I_EXPONENT 0, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: files
    // allocate (and punch holes) in 4 KiB pages, so that is the physical block.
    b[13] = physical_block_exponent(cfg) & 0x0f;
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

/// Largest COMPARE AND WRITE, in blocks (Block Limits VPD MAXIMUM COMPARE AND WRITE
/// LENGTH, SBC-3 §6.5.3).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u32 = 255;
/// Largest UNMAP block descriptor count (Block Limits VPD).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE ATOMIC(16), in bytes (Block Limits VPD MAXIMUM ATOMIC TRANSFER
/// LENGTH = this / block size, SBC-4 §6.6.4).
pub const MAX_ATOMIC_BYTES: u32 = 1 << 20;

/// ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY, in blocks (SBC-4
/// §6.6.4): whole physical blocks (file pages), at least two logical blocks.
pub fn atomic_unit(cfg: &LuConfig) -> u32 {
    blocks_per_physical(cfg).max(2)
}

/// Logical blocks per physical block (2 ^ [`physical_block_exponent`]).
pub fn blocks_per_physical(cfg: &LuConfig) -> u32 {
    1 << physical_block_exponent(cfg).min(14)
}

/// The checks every command that writes the medium shares: no protection
/// information (xPROTECT must be 0, SBC-3 §4.22.2) and no write protection
/// (DATA PROTECT / WRITE PROTECTED, SBC-3 §4.13).
fn check_writable(cfg: &LuConfig, protect: u8) -> Result<(), Sense> {
    if protect != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    if cfg.write_protected() {
        return Err(Sense::new(SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }
    Ok(())
}

/// Decide the block commands that touch the medium: checks (protection fields,
/// write protect, range, MAXIMUM TRANSFER LENGTH; the caller checked readiness),
/// then either finishes at once or returns a plan. `data_in_cap` is the
/// transport's data-in buffer size; `data_out` the data the initiator sent.
pub(crate) fn plan(
    cfg: &LuConfig,
    cdb: &Cdb,
    op: Opcode,
    data_in_cap: usize,
    data_out: &[u8],
) -> Result<Outcome, Sense> {
    let bs = u64::from(cfg.block_len());
    let bsz = cfg.block_len() as usize;
    let good = || Ok(Outcome::Done(Response::good(0)));
    // iSCSI underflow: write only the whole blocks the initiator sent
    // (libiscsi's residual tests expect exactly this).
    let whole_blocks = |bytes: usize| {
        let len = bytes.min(data_out.len());
        len - len % bsz
    };
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
                fua,
                transfer_len: bytes,
                ..IoPlan::new(IoKind::Read, lba * bs, bytes.min(data_in_cap))
            }))
        }
        Cdb::Write {
            lba,
            blocks,
            fua,
            wrprotect,
            ..
        } => data_out_plan(
            cfg,
            op,
            IoKind::Write,
            lba,
            blocks,
            fua,
            wrprotect,
            data_out,
        ),
        Cdb::WriteAndVerify {
            lba,
            blocks,
            bytchk,
            wrprotect,
        } => {
            // BYTCHK 1x is reserved for WRITE AND VERIFY (SBC-3 §5.38).
            if bytchk > 1 {
                return Err(Sense::invalid_field_in_cdb(1, Some(2)));
            }
            // The verify reads the medium back, so the data must be on it:
            // write through. What was written is what is compared, so the
            // comparison on a file or device store always holds.
            data_out_plan(
                cfg,
                op,
                IoKind::Write,
                lba,
                blocks,
                true,
                wrprotect,
                data_out,
            )
        }
        Cdb::WriteAtomic {
            lba,
            blocks,
            fua,
            wrprotect,
        } => {
            check_writable(cfg, wrprotect)?;
            check_range(cfg, lba, blocks)?;
            // SBC-4 §5.48: longer than MAXIMUM ATOMIC TRANSFER LENGTH, or not a
            // whole number of ATOMIC TRANSFER LENGTH GRANULARITY blocks at an
            // ATOMIC ALIGNMENT boundary: INVALID FIELD IN CDB.
            let unit = u64::from(atomic_unit(cfg));
            if u64::from(blocks) * bs > u64::from(MAX_ATOMIC_BYTES) {
                return Err(Sense::invalid_field_in_cdb(12, None));
            }
            if lba % unit != 0 {
                return Err(Sense::invalid_field_in_cdb(2, None));
            }
            if u64::from(blocks) % unit != 0 {
                return Err(Sense::invalid_field_in_cdb(12, None));
            }
            data_out_plan(
                cfg,
                op,
                IoKind::WriteAtomic,
                lba,
                blocks,
                fua,
                wrprotect,
                data_out,
            )
        }
        Cdb::OrWrite {
            lba,
            blocks,
            fua,
            orprotect,
        } => data_out_plan(
            cfg,
            op,
            IoKind::OrWrite,
            lba,
            blocks,
            fua,
            orprotect,
            data_out,
        ),
        Cdb::CompareAndWrite {
            lba,
            blocks,
            fua,
            wrprotect,
        } => {
            check_writable(cfg, wrprotect)?;
            if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
                return Err(Sense::invalid_field_in_cdb(13, None));
            }
            check_range(cfg, lba, blocks)?;
            let bytes = 2 * blocks as usize * bsz;
            // SBC-3 §5.2: the Data-Out Buffer holds exactly the verify and the
            // write instances; any other length is an error, not a partial write.
            if data_out.len() != bytes {
                return Err(Sense::invalid_field_in_cdb(13, None));
            }
            if blocks == 0 {
                return good();
            }
            Ok(Outcome::Io(IoPlan {
                fua,
                span: bytes as u64 / 2,
                ..IoPlan::new(IoKind::CompareAndWrite, lba * bs, bytes)
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
            // BYTCHK 10b is reserved (SBC-3 §5.29, table 67).
            if bytchk == 2 {
                return Err(Sense::invalid_field_in_cdb(1, Some(2)));
            }
            check_range(cfg, lba, blocks)?;
            let bytes = checked_transfer(cfg, blocks, op)?;
            if bytchk == 0 || bytes == 0 {
                // Medium verification of a file or device store is a no-op
                // (SBC-3 §5.29: BYTCHK 0 checks the medium only).
                return good();
            }
            // BYTCHK 01b compares every block sent; 11b sends one block that is
            // compared with each block of the range.
            let expect = if bytchk == 1 { bytes } else { bsz };
            let len = whole_blocks(expect);
            if len < expect {
                return Err(Sense::invalid_field_in_cdb(1, Some(2)));
            }
            Ok(Outcome::Io(IoPlan {
                span: bytes as u64,
                transfer_len: expect,
                ..IoPlan::new(IoKind::Compare, lba * bs, len)
            }))
        }
        Cdb::SynchronizeCache { lba, blocks, .. } => {
            // 0 blocks means "to the last LBA" (SBC-3 §5.22); lba itself must be valid.
            check_range(cfg, lba, blocks)?;
            Ok(Outcome::Io(IoPlan {
                transfer_len: 0,
                span: 0,
                ..IoPlan::new(IoKind::Flush, lba * bs, 0)
            }))
        }
        Cdb::PreFetch { lba, blocks, .. } => {
            // The store's page cache does its own read-ahead; PRE-FETCH only
            // checks its range (SBC-3 §5.6).
            check_range(cfg, lba, blocks)?;
            good()
        }
        Cdb::WriteSame {
            lba,
            blocks,
            unmap,
            anchor,
            ndob,
            wrprotect,
        } => write_same(cfg, lba, blocks, unmap, anchor, ndob, wrprotect, data_out),
        Cdb::Unmap {
            anchor,
            parameter_list_length,
        } => unmap(cfg, anchor, parameter_list_length, data_out),
        Cdb::GetLbaStatus {
            lba,
            allocation_length,
        } => {
            // SBC-3 §5.5: the starting LBA must lie within the medium.
            if lba >= cfg.num_blocks() {
                return Err(Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
            }
            let alloc = allocation_length as usize;
            // Room for the header and at least one descriptor, whatever the
            // initiator's buffer: the response is truncated later.
            let room = alloc
                .min(data_in_cap)
                .max(GET_LBA_STATUS_HEADER + LBA_STATUS_DESCRIPTOR);
            let room = room.min(GET_LBA_STATUS_HEADER + 64 * LBA_STATUS_DESCRIPTOR);
            let records = (room - GET_LBA_STATUS_HEADER) / LBA_STATUS_DESCRIPTOR;
            Ok(Outcome::Io(IoPlan {
                span: (cfg.num_blocks() - lba) * bs,
                transfer_len: alloc,
                ..IoPlan::new(
                    IoKind::Extents,
                    lba * bs,
                    GET_LBA_STATUS_HEADER + records * LBA_STATUS_DESCRIPTOR,
                )
            }))
        }
        _ => good(),
    }
}

/// The commands that write `blocks` blocks of data-out at `lba` (WRITE, WRITE AND
/// VERIFY, WRITE ATOMIC, ORWRITE): protection and write-protect checks, range,
/// MAXIMUM TRANSFER LENGTH, then a plan for the whole blocks received.
#[allow(clippy::too_many_arguments)]
fn data_out_plan(
    cfg: &LuConfig,
    op: Opcode,
    kind: IoKind,
    lba: u64,
    blocks: u32,
    fua: bool,
    protect: u8,
    data_out: &[u8],
) -> Result<Outcome, Sense> {
    check_writable(cfg, protect)?;
    check_range(cfg, lba, blocks)?;
    let bytes = checked_transfer(cfg, blocks, op)?;
    // iSCSI underflow: write only the whole blocks the initiator sent
    // (libiscsi's residual tests expect exactly this).
    let len = bytes.min(data_out.len());
    let len = len - len % cfg.block_len() as usize;
    if len == 0 {
        return Ok(Outcome::Done(Response::good(0)));
    }
    Ok(Outcome::Io(IoPlan {
        fua,
        transfer_len: bytes,
        ..IoPlan::new(kind, lba * u64::from(cfg.block_len()), len)
    }))
}

/// GET LBA STATUS parameter data header and descriptor sizes (SBC-3 §5.5.2).
pub const GET_LBA_STATUS_HEADER: usize = 8;
pub const LBA_STATUS_DESCRIPTOR: usize = 16;

/// WRITE SAME(10/16) (SBC-3 §5.41, §5.42; thin provisioning §4.7.3.3).
#[allow(clippy::too_many_arguments)]
fn write_same(
    cfg: &LuConfig,
    lba: u64,
    blocks: u32,
    unmap: bool,
    anchor: bool,
    ndob: bool,
    wrprotect: u8,
    data_out: &[u8],
) -> Result<Outcome, Sense> {
    let bs = u64::from(cfg.block_len());
    check_writable(cfg, wrprotect)?;
    // ANCHOR with UNMAP needs ANC_SUP, which this device server does not claim
    // (Logical Block Provisioning VPD, SBC-3 §6.5.4): INVALID FIELD IN CDB.
    if anchor {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    // NUMBER OF LOGICAL BLOCKS 0 means "to the last LBA" (WSNZ=0, SBC-3 §5.42).
    let blocks = if blocks == 0 {
        if lba > cfg.num_blocks() {
            return Err(Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
        }
        cfg.num_blocks() - lba
    } else {
        check_range(cfg, lba, blocks)?;
        u64::from(blocks)
    };
    // MAXIMUM WRITE SAME LENGTH (Block Limits VPD, SBC-3 §6.5.3).
    if blocks > max_write_same_blocks(cfg) {
        return Err(Sense::invalid_field_in_cdb(10, None));
    }
    // With NDOB the block is all zeros and no data is transferred; otherwise
    // exactly one logical block must arrive (SBC-3 §5.42).
    if !ndob && data_out.len() != bs as usize {
        return Err(Sense::invalid_field_in_cdb(0, None));
    }
    if blocks == 0 {
        return Ok(Outcome::Done(Response::good(0)));
    }
    let span = blocks * bs;
    if unmap && cfg.thin_provisioning {
        // LBPWS: deallocate; unmapped blocks read as zeros (LBPRZ=1).
        return Ok(Outcome::Io(IoPlan {
            span,
            transfer_len: if ndob { 0 } else { bs as usize },
            ..IoPlan::new(IoKind::Unmap, lba * bs, 0)
        }));
    }
    let extra = if ndob {
        PlanExtra::Buffer(vec![0; bs as usize])
    } else {
        PlanExtra::None
    };
    Ok(Outcome::Io(IoPlan {
        span,
        transfer_len: if ndob { 0 } else { bs as usize },
        extra,
        ..IoPlan::new(IoKind::WriteSame, lba * bs, bs as usize)
    }))
}

/// UNMAP (SBC-3 §5.28): the parameter list is an 8-byte header and 16-byte block
/// descriptors (LBA, NUMBER OF LOGICAL BLOCKS).
fn unmap(
    cfg: &LuConfig,
    anchor: bool,
    parameter_list_length: u16,
    data_out: &[u8],
) -> Result<Outcome, Sense> {
    let bs = u64::from(cfg.block_len());
    check_writable(cfg, 0)?;
    if !cfg.thin_provisioning {
        // LBPU=0: the command is not supported on a fully provisioned LU.
        return Err(CdbError::UnsupportedOpcode(Opcode::UNMAP.0).sense());
    }
    if anchor {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    // A PARAMETER LIST LENGTH of 0 is not an error: nothing to do.
    let len = usize::from(parameter_list_length).min(data_out.len());
    if parameter_list_length == 0 {
        return Ok(Outcome::Done(Response::good(0)));
    }
    if len < 8 {
        return Err(Sense::new(
            SenseKey::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR,
        ));
    }
    let p = &data_out[..len];
    let descriptors_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let descriptors = &p[8..];
    let descriptors = &descriptors[..descriptors_len.min(descriptors.len())];
    if descriptors.len() / 16 > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_field_in_parameter_list(2, None));
    }
    let mut ranges = Vec::new();
    for (i, d) in descriptors.chunks_exact(16).enumerate() {
        let lba = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        let count = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        match lba.checked_add(u64::from(count)) {
            Some(end) if end <= cfg.num_blocks() => {}
            _ => {
                let _ = i;
                return Err(Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE));
            }
        }
        if count > 0 {
            ranges.push((lba * bs, u64::from(count) * bs));
        }
    }
    let Some(&(offset, span)) = ranges.first() else {
        return Ok(Outcome::Done(Response::good(0)));
    };
    ranges.remove(0);
    Ok(Outcome::Io(IoPlan {
        span,
        transfer_len: usize::from(parameter_list_length),
        extra: if ranges.is_empty() {
            PlanExtra::None
        } else {
            PlanExtra::Ranges(ranges)
        },
        ..IoPlan::new(IoKind::Unmap, offset, 0)
    }))
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

/// MAXIMUM WRITE SAME LENGTH in blocks: what one WRITE may transfer. A WRITE
/// SAME covering more is split by the initiator (Linux and QEMU do), and an
/// initiator that checks it with a WRITE of the same length can.
pub fn max_write_same_blocks(cfg: &LuConfig) -> u64 {
    u64::from((cfg.max_transfer / cfg.block_len()).max(1))
}

/// The page size files are allocated in: the physical block of a file store.
pub const PHYSICAL_BLOCK: u32 = 4096;

/// log2(logical blocks per physical block) for READ CAPACITY(16) (SBC-3 §5.16.2).
pub fn physical_block_exponent(cfg: &LuConfig) -> u8 {
    cfg.lbppbe.unwrap_or_else(|| {
        let per = (PHYSICAL_BLOCK / cfg.block_len()).max(1);
        per.trailing_zeros() as u8
    })
}

/// Rewrite, in place, the store's extent records (16 bytes each: length in bytes
/// and flags, little endian, the first starting at LBA `lba`) in `buf[..records]`
/// into GET LBA STATUS parameter data (SBC-3 §5.5.2): an 8-byte header and one
/// 16-byte LBA status descriptor per extent. Extents are rounded to whole blocks
/// (a partly allocated block is mapped). Returns the full parameter data length
/// truncated to `allocation_length`.
pub fn lba_status_from_extents(
    cfg: &LuConfig,
    lba: u64,
    buf: &mut [u8],
    records: usize,
    allocation_length: usize,
) -> usize {
    let bs = u64::from(cfg.block_len());
    let end_lba = cfg.num_blocks();
    // Decode first (records may be overwritten below), merging neighbours of
    // the same state once rounded to blocks.
    let mut extents: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = lba * bs;
    for r in buf[..records.min(buf.len())].chunks_exact(16) {
        let len = u64::from_le_bytes(r[0..8].try_into().unwrap_or([0; 8]));
        let mapped = r[8] & 1 != 0;
        if len == 0 {
            break;
        }
        let start_blk = pos / bs;
        pos = pos.saturating_add(len);
        // Unmapped extents cover only the blocks wholly inside them.
        let (s, e) = if mapped {
            (start_blk, pos.div_ceil(bs))
        } else {
            (pos.saturating_sub(len).div_ceil(bs), pos / bs)
        };
        let s = s.max(extents.last().map_or(lba, |x| x.0 + x.1));
        let e = e.min(end_lba);
        if e <= s {
            continue;
        }
        match extents.last_mut() {
            Some(last) if last.2 == mapped && last.0 + last.1 == s => last.1 += e - s,
            Some(last) if last.0 + last.1 < s => {
                // A gap left by rounding is partly allocated: mapped.
                let gap = (last.0 + last.1, s - (last.0 + last.1));
                if last.2 {
                    last.1 += gap.1;
                    extents.push((s, e - s, mapped));
                } else {
                    extents.push((gap.0, gap.1, true));
                    extents.push((s, e - s, mapped));
                }
            }
            _ => extents.push((s, e - s, mapped)),
        }
    }
    if extents.is_empty() {
        extents.push((lba, 1, true));
    }
    let max = (buf.len().saturating_sub(GET_LBA_STATUS_HEADER)) / LBA_STATUS_DESCRIPTOR;
    extents.truncate(max.max(1));
    let full = GET_LBA_STATUS_HEADER + extents.len() * LBA_STATUS_DESCRIPTOR;
    let mut out = Out::new(buf, allocation_length);
    out.put(&((full - 4) as u32).to_be_bytes());
    out.put(&[0; 4]);
    for (start, blocks, mapped) in extents {
        out.put(&start.to_be_bytes());
        out.put(&(blocks.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        // PROVISIONING STATUS: 0 mapped, 1 deallocated (SBC-3 table 32).
        out.put(&[u8::from(!mapped), 0, 0, 0]);
    }
    out.finish()
}

/// How fast a SANITIZE OVERWRITE writes, in bytes per second. A sanitize is a
/// background operation on the whole LU (SBC-3 §4.11: the LU stays NOT READY,
/// SANITIZE IN PROGRESS until it ends); at full speed it would take all of the
/// medium's bandwidth from every other LU sharing it.
pub const SANITIZE_OVERWRITE_RATE: u64 = 128 << 20;

/// SANITIZE service actions (SBC-3 §5.19.1, table 48).
pub mod sanitize_sa {
    pub const OVERWRITE: u8 = 0x01;
    pub const BLOCK_ERASE: u8 = 0x02;
    pub const CRYPTOGRAPHIC_ERASE: u8 = 0x03;
    pub const EXIT_FAILURE_MODE: u8 = 0x1f;
}

/// SANITIZE (SBC-3 §5.19): OVERWRITE writes the initialization pattern (SBC-3
/// §5.19.2) over every block, BLOCK ERASE deallocates every block (reads then
/// return zeros), EXIT FAILURE MODE has nothing to leave (a sanitize here never
/// ends in failure mode). CRYPTOGRAPHIC ERASE needs an encrypted medium, which a
/// plain file is not: INVALID FIELD IN CDB.
pub(crate) fn sanitize(
    cfg: &LuConfig,
    service_action: u8,
    parameter_list_length: u16,
    data_out: &[u8],
) -> Result<Outcome, Sense> {
    let bs = cfg.block_len() as usize;
    let span = cfg.num_blocks() * bs as u64;
    match service_action {
        sanitize_sa::OVERWRITE => {
            check_writable(cfg, 0)?;
            // SBC-3 §5.19.2: the list is a 4-byte header and a pattern of 1 up to
            // one logical block; other lengths are INVALID FIELD IN CDB.
            let plen = usize::from(parameter_list_length);
            if plen <= 4 || plen > bs + 4 {
                return Err(Sense::invalid_field_in_cdb(7, None));
            }
            let p = data_out.get(..plen).ok_or_else(|| {
                Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::PARAMETER_LIST_LENGTH_ERROR)
            })?;
            let count = p[0] & 0x1f;
            let test = (p[0] >> 5) & 0x03;
            let pattern_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if count == 0 {
                return Err(Sense::invalid_field_in_parameter_list(0, Some(4)));
            }
            if test != 0 {
                return Err(Sense::invalid_field_in_parameter_list(0, Some(6)));
            }
            if pattern_len == 0 || pattern_len > bs || pattern_len != plen - 4 {
                return Err(Sense::invalid_field_in_parameter_list(2, None));
            }
            let pattern = &p[4..plen];
            // The pattern repeats to fill each block (SBC-3 §5.19.2). INVERT only
            // matters between passes; the last pass writes the pattern itself.
            let block: Vec<u8> = pattern.iter().copied().cycle().take(bs).collect();
            if span == 0 {
                return Ok(Outcome::Done(Response::good(0)));
            }
            Ok(Outcome::Io(IoPlan {
                span,
                transfer_len: plen,
                // A sanitize is done when the data is on the medium.
                fua: true,
                sanitize: true,
                extra: PlanExtra::Buffer(block),
                ..IoPlan::new(IoKind::WriteSame, 0, bs)
            }))
        }
        sanitize_sa::BLOCK_ERASE => {
            check_writable(cfg, 0)?;
            if parameter_list_length != 0 {
                return Err(Sense::invalid_field_in_cdb(7, None));
            }
            if span == 0 {
                return Ok(Outcome::Done(Response::good(0)));
            }
            Ok(Outcome::Io(IoPlan {
                span,
                transfer_len: 0,
                sanitize: true,
                ..IoPlan::new(IoKind::Unmap, 0, 0)
            }))
        }
        sanitize_sa::EXIT_FAILURE_MODE => {
            if parameter_list_length != 0 {
                return Err(Sense::invalid_field_in_cdb(7, None));
            }
            Ok(Outcome::Done(Response::good(0)))
        }
        _ => Err(Sense::invalid_field_in_cdb(1, Some(4))),
    }
}
