//! `cdb`: SCSI commands against a target's LUN inventory (rtgt-scsi), as
//! the reactor runs them: `LunTable::execute`, then for a media command its
//! `IoPlan` on an in-memory store and `LogicalUnit::complete_io`.
//!
//! Input: one setup byte, then commands separated by [`crate::SEP`]. A
//! command is `ctl`, two bytes `x y`, a CDB length `n` (0 means 16, at most
//! 32), `n` CDB bytes, and data-out:
//! - `ctl` bits 0-1: LUN (0 controller, 1 and 2 disks, 3 none), bit 2: the
//!   second I_T nexus, bits 3-5: what the store does (0-2 its work, 3 hold
//!   the plan until a later `manage 9` or the end, 4 a short transfer, 5 EIO,
//!   6 ENOSPC, 7 EROFS), bits 6-7 = 3: a management step `x` instead (resets,
//!   aborts, unit attentions, nexus loss, LU updates: see [`Target::manage`]);
//! - `x y`: the data-in buffer size (the initiator's Expected Data Transfer
//!   Length, big endian).
//!
//! Oracles: `Cdb::decode` ignores bytes past the CDB length (cdb.rs says
//! so) and agrees with REPORT SUPPORTED OPERATION CODES on what exists
//! (SPC-4 §6.35); CHECK CONDITION comes with sense data and nothing else
//! does; a plan never reaches past the end of its medium (SBC-3 §4.5: LBA
//! OUT OF RANGE is the device server's to report); APTPL reservation state
//! that was kept restores (SPC-4 §5.9.5).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rtgt_scsi::cdb::{cdb_len, Cdb, CdbError};
use rtgt_scsi::lu::errno;
use rtgt_scsi::pr::NexusIdentity;
use rtgt_scsi::{
    rsoc, Asc, Command, DeviceType, IoKind, IoPlan, LogicalUnit, LuConfig, LunTable, NexusId,
    Outcome, PlanBuffer, PlanExtra, Response, Status,
};

use crate::{join, split, Seed};

/// The two I_T nexuses of a run.
const NEXUS: [NexusId; 2] = [NexusId(1), NexusId(2)];
/// Blocks of LUN 1 (LUN 2 has half): small, so ranges meet the end often.
const BLOCKS: u64 = 64;
/// ENXIO: the reactor's answer when a plan's store is gone.
const ENXIO: i32 = 6;
/// EINVAL: what the backing stores answer a malformed request (backing/src/ops.rs).
const EINVAL: i32 = 22;

fn identity(n: NexusId) -> NexusIdentity {
    NexusIdentity {
        initiator_name: format!("iqn.2024-01.org.rtgt:fuzz-{}", n.0),
        isid: [0x80, 0, 0, 0, 0, n.0 as u8],
        relative_target_port: 1,
    }
}

pub fn run(data: &[u8]) {
    if let Some(t) = drive(data) {
        t.finish();
    }
}

fn drive(data: &[u8]) -> Option<Target> {
    let [setup, rest @ ..] = data else {
        return None;
    };
    let mut t = Target::new(*setup);
    for cmd in split(rest) {
        t.command(cmd);
    }
    Some(t)
}

/// A plan held at the "store".
struct Held {
    lun: u64,
    plan: IoPlan,
    data_out: Vec<u8>,
}

struct Target {
    table: LunTable,
    /// Each disk's medium.
    media: BTreeMap<u64, Vec<u8>>,
    held: Vec<Held>,
    /// What LUN 1 last asked to keep for APTPL (`None`: nothing or forget).
    kept: Arc<Mutex<Option<Vec<u8>>>>,
    /// The kinds of plans completed with the store's own result (for the tests).
    ran: Vec<IoKind>,
}

impl Target {
    /// Setup bits: 0 LUN 1 has 4096-byte blocks, 1 thin, 2 removable, 3
    /// read-only, 4 LUN 2 exists, 5 APTPL state is kept, 6 LUN 1 offline,
    /// 7 LBPPBE 3.
    fn new(setup: u8) -> Target {
        let mut table = LunTable::new();
        table.insert(Arc::new(LogicalUnit::new(
            0,
            LuConfig::controller_defaults(1),
        )));
        let mut c = LuConfig::disk_defaults(1, 1);
        c.block_size = if setup & 1 != 0 { 4096 } else { 512 };
        c.size = BLOCKS * u64::from(c.block_size);
        c.thin_provisioning = setup & 2 != 0;
        c.removable = setup & 4 != 0;
        c.readonly = setup & 8 != 0;
        c.online = setup & 0x40 == 0;
        c.lbppbe = (setup & 0x80 != 0).then_some(3);
        let mut media = BTreeMap::new();
        media.insert(1, vec![0u8; c.size as usize]);
        table.insert(Arc::new(LogicalUnit::new(1, c)));
        if setup & 0x10 != 0 {
            let mut c = LuConfig::disk_defaults(1, 2);
            c.size = BLOCKS / 2 * 512;
            media.insert(2, vec![0u8; c.size as usize]);
            table.insert(Arc::new(LogicalUnit::new(2, c)));
        }
        for lu in table.iter() {
            for n in NEXUS {
                lu.add_nexus(n, identity(n));
            }
        }
        let kept = Arc::new(Mutex::new(None));
        if setup & 0x20 != 0 {
            let k = kept.clone();
            if let Some(lu) = table.get(1) {
                lu.set_pr_persistence(Box::new(move |state: Option<&[u8]>| {
                    *k.lock().unwrap_or_else(|e| e.into_inner()) = state.map(<[u8]>::to_vec);
                }));
            }
        }
        Target {
            table,
            media,
            held: Vec::new(),
            kept,
            ran: Vec::new(),
        }
    }

    fn command(&mut self, c: &[u8]) {
        let [ctl, x, y, n, rest @ ..] = c else {
            return;
        };
        let lun = u64::from(ctl & 3);
        let nexus = NEXUS[usize::from(ctl >> 2 & 1)];
        let store = (ctl >> 3) & 7;
        if ctl >> 6 == 3 {
            return self.manage(lun, nexus, *x, *y);
        }
        let n = match usize::from(*n) % 33 {
            0 => 16,
            k => k,
        };
        let (cdb, data_out) = rest.split_at(n.min(rest.len()));
        check_decode(cdb);
        let alloc = usize::from(u16::from_be_bytes([*x, *y]));
        let mut data_in = vec![0u8; alloc];
        let cmd = Command {
            nexus,
            cdb,
            data_out,
        };
        let lu = self.table.get(lun).cloned();
        if let Some(lu) = &lu {
            let _ = lu.data_out_len(cdb);
        }
        match self.table.execute(lun, &cmd, &mut data_in) {
            Outcome::Done(r) => check_response(&r),
            Outcome::Io(plan) => {
                assert!(lu.is_some(), "a plan for missing LUN {lun}: {plan:?}");
                if plan.kind == IoKind::Read {
                    assert!(
                        plan.len <= data_in.len(),
                        "read plan past data-in: {plan:?}"
                    );
                }
                if store == 3 {
                    self.held.push(Held {
                        lun,
                        plan,
                        data_out: data_out.to_vec(),
                    });
                } else {
                    self.run_plan(lun, &plan, data_out, store, true);
                }
            }
        }
    }

    /// Runs a plan as the reactor does (store, then `complete_io`).
    /// `strict`: the plan was just made, so it must fit its medium (a held
    /// plan may meet a medium shrunk meanwhile).
    fn run_plan(&mut self, lun: u64, plan: &IoPlan, data_out: &[u8], store: u8, strict: bool) {
        let Some(lu) = self.table.get(lun).cloned() else {
            return;
        };
        let mut buf = match plan.kind.buffer() {
            PlanBuffer::DataIn => vec![0u8; plan.len],
            PlanBuffer::DataOut => match &plan.extra {
                PlanExtra::Buffer(b) => b.clone(),
                _ if data_out.len() >= plan.len => data_out[..plan.len].to_vec(),
                // The reactor answers INVALID FIELD IN CDB itself.
                _ => return,
            },
            PlanBuffer::None => Vec::new(),
        };
        let result = match store {
            4 => Ok(plan.len / 2),
            5 => Err(errno::EIO),
            6 => Err(errno::ENOSPC),
            7 => Err(errno::EROFS),
            _ => {
                self.ran.push(plan.kind);
                self.store(lun, plan, &mut buf, strict)
            }
        };
        check_response(&lu.complete_io(plan, result, &mut buf));
    }

    /// The byte range `off..off + len` of `lun`'s medium; outside it, a
    /// panic for a fresh plan, `None` for a held one.
    fn range(
        &self,
        lun: u64,
        off: u64,
        len: u64,
        plan: &IoPlan,
        strict: bool,
    ) -> Option<Range<usize>> {
        let size = self.media.get(&lun)?.len() as u64;
        match off.checked_add(len) {
            Some(end) if end <= size => Some(off as usize..end as usize),
            _ if strict => panic!("plan past the end of LUN {lun} ({size} bytes): {plan:?}"),
            _ => None,
        }
    }

    /// An in-memory store doing what rtgt-backing's engines do
    /// (backing/src/ops.rs: the same EINVAL checks).
    fn store(
        &mut self,
        lun: u64,
        plan: &IoPlan,
        buf: &mut [u8],
        strict: bool,
    ) -> Result<usize, i32> {
        let lun = plan.store_lun.unwrap_or(lun);
        if !self.media.contains_key(&lun) {
            return Err(ENXIO);
        }
        let (off, len) = (plan.offset, plan.len as u64);
        let r =
            |t: &Self, off: u64, len: u64| t.range(lun, off, len, plan, strict).ok_or(errno::EIO);
        match plan.kind {
            IoKind::Read => {
                let r = r(self, off, len)?;
                buf.copy_from_slice(&self.media[&lun][r]);
                Ok(plan.len)
            }
            IoKind::Write | IoKind::WriteAtomic => {
                let r = r(self, off, len)?;
                self.medium(lun)[r].copy_from_slice(buf);
                Ok(plan.len)
            }
            IoKind::OrWrite => {
                let r = r(self, off, len)?;
                for (m, b) in self.medium(lun)[r].iter_mut().zip(buf.iter()) {
                    *m |= b;
                }
                Ok(plan.len)
            }
            IoKind::Flush => Ok(0),
            IoKind::Unmap => {
                let mut ranges = vec![r(self, off, plan.span)?];
                if let PlanExtra::Ranges(more) = &plan.extra {
                    for &(o, l) in more {
                        ranges.push(r(self, o, l)?);
                    }
                }
                for range in ranges {
                    self.medium(lun)[range].fill(0);
                }
                Ok(0)
            }
            IoKind::WriteSame | IoKind::Compare => {
                let range = r(self, off, plan.span)?;
                if !range.is_empty() && (buf.is_empty() || range.len() % buf.len() != 0) {
                    return Err(EINVAL);
                }
                let m = self.medium(lun);
                let mut n = 0;
                for chunk in m[range].chunks_mut(buf.len().max(1)) {
                    if plan.kind == IoKind::WriteSame {
                        chunk.copy_from_slice(buf);
                    } else if let Some(at) = chunk.iter().zip(buf.iter()).position(|(a, b)| a != b)
                    {
                        return Ok(n + at);
                    }
                    n += chunk.len();
                }
                Ok(n)
            }
            IoKind::CompareAndWrite => {
                if !buf.len().is_multiple_of(2) {
                    return Err(EINVAL);
                }
                let (verify, write) = buf.split_at(buf.len() / 2);
                let range = r(self, off, verify.len() as u64)?;
                let m = self.medium(lun);
                match m[range.clone()]
                    .iter()
                    .zip(verify)
                    .position(|(a, b)| a != b)
                {
                    Some(at) => Ok(at),
                    None => {
                        m[range].copy_from_slice(write);
                        Ok(verify.len())
                    }
                }
            }
            IoKind::Extents => {
                r(self, off, plan.span)?;
                // One extent, all mapped: length and flags, little endian.
                if buf.len() < 16 {
                    return Ok(0);
                }
                buf[..8].copy_from_slice(&plan.span.to_le_bytes());
                buf[8] = 1;
                Ok(16)
            }
            IoKind::Copy => {
                let Some((src, src_off)) = plan.source else {
                    return Err(EINVAL);
                };
                if !self.media.contains_key(&src) {
                    return Err(ENXIO);
                }
                let from = self
                    .range(src, src_off, plan.span, plan, strict)
                    .ok_or(errno::EIO)?;
                let to = r(self, off, plan.span)?;
                let bytes = self.media[&src][from].to_vec();
                self.medium(lun)[to].copy_from_slice(&bytes);
                Ok(plan.span as usize)
            }
        }
    }

    fn medium(&mut self, lun: u64) -> &mut Vec<u8> {
        self.media.entry(lun).or_default()
    }

    /// What task management and tgtadm do to LUs between commands.
    fn manage(&mut self, lun: u64, nexus: NexusId, x: u8, y: u8) {
        if x % 10 == 9 {
            return self.release_held();
        }
        let Some(lu) = self.table.get(lun).cloned() else {
            return;
        };
        match x % 10 {
            0 => lu.reset(Asc::BUS_DEVICE_RESET),
            1 => lu.abort_tasks_of(Some(&[nexus])),
            2 => lu.abort_tasks_of(None),
            3 => lu.raise_unit_attention(Asc::REPORTED_LUNS_DATA_HAS_CHANGED),
            4 => lu.remove_nexus(nexus),
            5 => lu.add_nexus(nexus, identity(nexus)),
            6 => lu.update(|c| c.readonly = !c.readonly),
            7 => lu.update(|c| c.online = !c.online),
            _ if lu.config().device_type == DeviceType::Disk => {
                // tgtadm --op update of the size: the medium follows.
                let size = u64::from(y % 128 + 1) * u64::from(lu.config().block_size.max(1));
                lu.update(|c| c.size = size);
                self.medium(lun).resize(size as usize, 0);
            }
            _ => {}
        }
    }

    fn release_held(&mut self) {
        for h in std::mem::take(&mut self.held) {
            self.run_plan(h.lun, &h.plan, &h.data_out, 0, false);
        }
    }

    fn finish(mut self) {
        self.release_held();
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(state) = kept {
            let lu = LogicalUnit::new(1, LuConfig::disk_defaults(1, 1));
            lu.restore_reservations(&state)
                .expect("kept APTPL state restores");
        }
    }
}

/// `Cdb::decode` on its own (cdb.rs: it never panics, and bytes past the
/// opcode's CDB length are ignored), and against the command table.
fn check_decode(cdb: &[u8]) {
    let d = Cdb::decode(cdb);
    match cdb.first().and_then(|&op| cdb_len(op)) {
        Some(len) if cdb.len() >= len => {
            assert_eq!(Cdb::decode(&cdb[..len]), d);
            let mut longer = cdb[..len].to_vec();
            longer.extend_from_slice(&[0xff; 16]);
            assert_eq!(Cdb::decode(&longer), d, "bytes past the CDB changed it");
        }
        _ => assert!(d.is_err(), "{cdb:02x?} decoded as {d:?}"),
    }
    if let Err(e) = &d {
        let s = e.sense();
        let _ = (s.to_fixed(), s.to_descriptor(), e.to_string());
    }
    // SPC-4 §6.35: what REPORT SUPPORTED OPERATION CODES lists is implemented.
    if rsoc::is_supported_cdb(DeviceType::Disk, cdb) && cdb.len() >= 16 {
        assert!(
            !matches!(d, Err(CdbError::UnsupportedOpcode(_))),
            "listed as supported but refused: {cdb:02x?}"
        );
    }
}

/// SAM-5 §5.3: sense data travels with CHECK CONDITION only.
fn check_response(r: &Response) {
    assert_eq!(
        r.sense.is_some(),
        r.status == Status::CHECK_CONDITION,
        "{r:?}"
    );
    if let Some(s) = &r.sense {
        let _ = (s.to_fixed(), s.to_descriptor());
    }
}

// ----- seeds -----------------------------------------------------------------

/// One command: ctl, data-in size, the CDB (padded to 16 bytes unless
/// longer), data-out.
fn cmd(ctl: u8, alloc: u16, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
    let mut c = cdb.to_vec();
    if c.len() < 16 {
        c.resize(16, 0);
    }
    let mut v = vec![ctl];
    v.extend_from_slice(&alloc.to_be_bytes());
    v.push(if c.len() == 16 { 0 } else { c.len() as u8 });
    v.extend_from_slice(&c);
    v.extend_from_slice(data_out);
    v
}

fn manage(lun: u8, step: u8, y: u8) -> Vec<u8> {
    vec![0xc0 | lun, step, y, 0]
}

fn rw10(op: u8, flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![op, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

/// COMPARE AND WRITE (SBC-3 §5.2): LBA in bytes 2-9, blocks in byte 13.
fn caw(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0x89, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, blocks, 0, 0]);
    c
}

fn rw16(op: u8, flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![op, flags];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// PERSISTENT RESERVE OUT (SPC-4 §6.16): service action, type, and the
/// 24-byte basic parameter list.
fn prout(sa: u8, ty: u8, key: u64, sa_key: u64, aptpl: bool) -> (Vec<u8>, Vec<u8>) {
    let c = vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&key.to_be_bytes());
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(u8::from(aptpl));
    p.extend_from_slice(&[0; 3]);
    (c, p)
}

/// EXTENDED COPY (SPC-4 §6.4) from LUN 1 to LUN 2: two identification
/// CSCD descriptors (§6.4.5.2: the NAA designator of each LU, block length
/// 512) and one block to block segment (§6.4.6.5) of 4 blocks, LBA 0 to 8.
fn xcopy() -> (Vec<u8>, Vec<u8>) {
    let cscd = |lun: u64| {
        let cfg = LuConfig::disk_defaults(1, lun);
        let mut d = [0u8; 32];
        d[0] = 0xe4;
        d[4] = 0x01; // code set binary
        d[5] = 0x03; // associated with the LU, designator type NAA
        d[7] = 8;
        d[8..16].copy_from_slice(&rtgt_scsi::spc::naa_designator(&cfg.scsi_id).to_be_bytes());
        d[29..32].copy_from_slice(&512u32.to_be_bytes()[1..]);
        d
    };
    let mut seg = [0u8; 28];
    seg[0] = 0x02;
    seg[2..4].copy_from_slice(&24u16.to_be_bytes());
    seg[6..8].copy_from_slice(&1u16.to_be_bytes());
    seg[10..12].copy_from_slice(&4u16.to_be_bytes());
    seg[20..28].copy_from_slice(&8u64.to_be_bytes());
    // Parameter list header (§6.4.3): LIST ID 1, hold the status.
    let mut p = vec![0u8; 16];
    p[0] = 1;
    p[2..4].copy_from_slice(&64u16.to_be_bytes());
    p[8..12].copy_from_slice(&28u32.to_be_bytes());
    p.extend_from_slice(&cscd(1));
    p.extend_from_slice(&cscd(2));
    p.extend_from_slice(&seg);
    let mut c = vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c.extend_from_slice(&(p.len() as u32).to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    (c, p)
}

pub fn seeds() -> Vec<Seed> {
    let disk = 1u8;
    let tur = cmd(disk, 0, &[0; 6], &[]);
    let inquiry =
        |page: u8, evpd: bool| cmd(disk, 255, &[0x12, u8::from(evpd), page, 0, 255, 0], &[]);
    let block = vec![0xabu8; 512];
    let mut s: Vec<Seed> = vec![
        (
            "inquiry-vpd",
            join(&[
                inquiry(0, false),
                inquiry(0x00, true),
                inquiry(0x80, true),
                inquiry(0x83, true),
                inquiry(0xb0, true),
                inquiry(0xb1, true),
                inquiry(0xb2, true),
                cmd(0, 96, &[0x12, 0, 0, 0, 96, 0], &[]),
                cmd(3, 96, &[0x12, 0, 0, 0, 96, 0], &[]),
            ]),
        ),
        (
            "read-write-10-16",
            join(&[
                tur.clone(),
                tur.clone(),
                cmd(disk, 0, &rw10(0x2a, 0x08, 2, 1), &block),
                cmd(disk, 512, &rw10(0x28, 0, 2, 1), &[]),
                cmd(disk, 0, &rw16(0x8a, 0, 60, 4), &[0x11; 2048]),
                cmd(disk, 4096, &rw16(0x88, 0x10, 56, 8), &[]),
                cmd(disk, 512, &rw16(0x88, 0, 64, 1), &[]),
                cmd(disk, 512, &[0x08, 0, 0, 1, 1, 0], &[]),
                cmd(disk, 0, &[0x0a, 0, 0, 1, 1, 0], &block),
                cmd(disk | 0x20, 512, &rw10(0x28, 0, 0, 1), &[]),
                cmd(disk | 0x18, 512, &rw10(0x28, 0, 0, 1), &[]),
            ]),
        ),
        (
            "capacity-mode-sense",
            join(&[
                tur.clone(),
                cmd(disk, 8, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
                cmd(
                    disk,
                    32,
                    &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                    &[],
                ),
                cmd(disk, 255, &[0x1a, 0, 0x3f, 0, 255, 0], &[]),
                cmd(disk, 512, &[0x5a, 0x10, 0x3f, 0xff, 0, 0, 0, 2, 0, 0], &[]),
                cmd(disk, 255, &[0x1a, 0x08, 0x48, 0, 255, 0], &[]),
                cmd(disk, 255, &[0x1a, 0, 0x0a, 0, 255, 0], &[]),
                cmd(
                    disk,
                    0,
                    &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0],
                    &[
                        0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x12, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        0, 0, 0, 0, 0, 0,
                    ],
                ),
                cmd(disk, 18, &[0x03, 0, 0, 0, 18, 0], &[]),
                cmd(disk, 252, &[0x03, 1, 0, 0, 252, 0], &[]),
            ]),
        ),
        (
            "report-luns-rsoc",
            join(&[
                cmd(0, 256, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]),
                cmd(3, 256, &[0xa0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]),
                cmd(
                    disk,
                    4096,
                    &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
                    &[],
                ),
                cmd(
                    disk,
                    64,
                    &[0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 64, 0, 0],
                    &[],
                ),
                cmd(
                    disk,
                    64,
                    &[0xa3, 0x0c, 0x82, 0x9e, 0, 0x10, 0, 0, 0, 64, 0, 0],
                    &[],
                ),
                cmd(disk, 16, &[0xa3, 0x0d, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]),
                cmd(disk, 64, &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[]),
                cmd(0, 4096, &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0], &[]),
            ]),
        ),
        (
            "unmap-write-same",
            join(&[
                tur.clone(),
                cmd(
                    disk,
                    0,
                    &[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0],
                    &[
                        0, 38, 0, 32, 0, 0, 0, 0, //
                        0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0, 0, //
                        0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 2, 0, 0, 0, 0,
                    ],
                ),
                cmd(disk, 0, &[0x41, 0, 0, 0, 0, 16, 0, 0, 8, 0], &block),
                cmd(disk, 0, &rw16(0x93, 0x08, 4, 4), &block),
                cmd(disk, 0, &rw16(0x93, 0x01, 4, 4), &[]),
                cmd(disk, 0, &rw16(0x93, 0x00, 0, 0), &block),
                cmd(
                    disk,
                    1024,
                    &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0],
                    &[],
                ),
            ]),
        ),
        (
            "compare-and-write-verify",
            join(&[
                tur.clone(),
                cmd(disk, 0, &rw10(0x2a, 0, 8, 1), &block),
                cmd(
                    disk,
                    0,
                    &caw(8, 1),
                    &[&block[..], &[0xcd; 512][..]].concat(),
                ),
                cmd(disk, 0, &caw(8, 1), &[0u8; 1024]),
                cmd(disk, 0, &rw10(0x2f, 0x02, 8, 1), &[0xcd; 512]),
                cmd(disk, 0, &rw10(0x2f, 0x06, 0, 4), &[0; 512]),
                cmd(disk, 0, &rw16(0x8f, 0x00, 0, 64), &[]),
                cmd(disk, 0, &rw16(0x8b, 0, 16, 1), &block),
                cmd(disk, 0, &rw10(0x2e, 0x02, 20, 1), &block),
                cmd(disk, 0, &rw16(0x9c, 0, 0, 8), &[7; 4096]),
            ]),
        ),
        ("persistent-reservations", {
            let (c1, p1) = prout(0x00, 0, 0, 0xaaaa, true);
            let (c2, p2) = prout(0x01, 0x05, 0xaaaa, 0, true);
            let (c3, p3) = prout(0x00, 0, 0, 0xbbbb, true);
            let (c4, p4) = prout(0x04, 0x05, 0xbbbb, 0xaaaa, true);
            let (c5, p5) = prout(0x02, 0x05, 0xbbbb, 0, true);
            join(&[
                tur.clone(),
                cmd(disk | 4, 0, &[0; 6], &[]),
                cmd(disk, 0, &c1, &p1),
                cmd(disk, 0, &c2, &p2),
                cmd(disk, 8192, &[0x5e, 0x00, 0, 0, 0, 0, 0, 0x20, 0, 0], &[]),
                cmd(disk, 8192, &[0x5e, 0x01, 0, 0, 0, 0, 0, 0x20, 0, 0], &[]),
                cmd(disk, 8192, &[0x5e, 0x02, 0, 0, 0, 0, 0, 0x20, 0, 0], &[]),
                cmd(disk, 8192, &[0x5e, 0x03, 0, 0, 0, 0, 0, 0x20, 0, 0], &[]),
                cmd(disk | 4, 0, &c3, &p3),
                cmd(disk | 4, 0, &rw10(0x2a, 0, 0, 1), &block),
                cmd(disk | 4, 0, &c4, &p4),
                cmd(disk | 4, 0, &c5, &p5),
                cmd(disk, 0, &[0x16, 0, 0, 0, 0, 0], &[]),
                cmd(disk | 4, 0, &[0x17, 0, 0, 0, 0, 0], &[]),
            ])
        }),
        ("extended-copy", {
            let (c, p) = xcopy();
            join(&[
                tur.clone(),
                cmd(2, 0, &[0; 6], &[]),
                cmd(disk, 0, &c, &p),
                cmd(
                    disk,
                    1024,
                    &[0x84, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0],
                    &[],
                ),
                cmd(
                    disk,
                    1024,
                    &[0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0],
                    &[],
                ),
            ])
        }),
        (
            "sanitize-start-stop",
            join(&[
                tur.clone(),
                cmd(disk, 0, &[0x1e, 0, 0, 0, 1, 0], &[]),
                cmd(disk, 0, &[0x1b, 0, 0, 0, 0x02, 0], &[]),
                cmd(disk, 0, &[0x1e, 0, 0, 0, 0, 0], &[]),
                cmd(disk, 0, &[0x1b, 0, 0, 0, 0x03, 0], &[]),
                cmd(disk | 0x18, 0, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
                tur.clone(),
                manage(disk, 9, 0),
                cmd(
                    disk,
                    0,
                    &[0x48, 0x01, 0, 0, 0, 0, 0, 0, 8, 0],
                    &[0x01, 0, 0, 4, 1, 2, 3, 4],
                ),
                cmd(disk, 0, &[0x48, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
                cmd(disk, 64, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 64, 0], &[]),
                cmd(disk, 0, &[0x35, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
                cmd(disk, 0, &rw10(0x34, 0, 0, 8), &[]),
            ]),
        ),
        (
            "resets-and-aborts",
            join(&[
                tur.clone(),
                cmd(disk | 0x18, 512, &rw10(0x28, 0, 0, 1), &[]),
                manage(disk, 1, 0),
                cmd(disk | 0x18, 0, &rw10(0x2a, 0, 1, 1), &block),
                manage(disk, 0, 0),
                manage(disk, 9, 0),
                manage(disk, 8, 3),
                cmd(disk, 8, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
                cmd(disk, 8, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]),
                manage(disk, 4, 0),
                cmd(disk, 0, &[0; 6], &[]),
                manage(disk, 5, 0),
                manage(disk, 6, 0),
                cmd(disk, 0, &rw10(0x2a, 0, 1, 1), &block),
                manage(disk, 7, 0),
                cmd(disk, 0, &[0; 6], &[]),
                cmd(disk, 0x28, &[0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], &block),
            ]),
        ),
    ];
    // The same sessions against other LU shapes (setup byte: 4 KiB blocks,
    // thin, LUN 2, APTPL kept; read-only; removable and offline).
    let shapes: [(&str, u8); 3] = [
        ("4k-thin", 0x33),
        ("readonly", 0x18),
        ("removable-offline", 0x44),
    ];
    let mut out = Vec::new();
    for (name, body) in s.drain(..) {
        let mut v = vec![0x10 | 0x20];
        v.extend_from_slice(&body);
        out.push((name, v));
    }
    let base = out.clone();
    for (i, (shape, setup)) in shapes.iter().enumerate() {
        // Each shape with the one session it says most about.
        let (_, body) = &base[[1, 4, 8][i]];
        let mut v = vec![*setup];
        v.extend_from_slice(&body[1..]);
        out.push((*shape, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds reach the store with every kind of plan, and APTPL state.
    #[test]
    fn seeds_reach_the_store() {
        let mut ran = Vec::new();
        let mut kept = false;
        for (_, data) in seeds() {
            let t = drive(&data).expect("setup byte");
            ran.extend(t.ran.iter().copied());
            kept |= t.kept.lock().unwrap().is_some();
            t.finish();
        }
        for kind in [
            IoKind::Read,
            IoKind::Write,
            IoKind::Flush,
            IoKind::Unmap,
            IoKind::WriteSame,
            IoKind::CompareAndWrite,
            IoKind::Compare,
            IoKind::OrWrite,
            IoKind::Extents,
            IoKind::Copy,
            IoKind::WriteAtomic,
        ] {
            assert!(ran.contains(&kind), "no seed runs {kind:?}");
        }
        assert!(kept, "no seed keeps APTPL state");
    }
}
