//! The commands beyond READ/WRITE, driven through `LogicalUnit` and `LunTable`
//! without a store: the plans they produce, their completion into status and
//! sense, and the LU state they change (SBC-3, SPC-4).

use std::sync::Arc;

use crate::lu::{PlanBuffer, PlanExtra};
use crate::pr::NexusIdentity;
use crate::*;

const A: NexusId = NexusId(1);
const B: NexusId = NexusId(2);
const BLOCKS: u64 = 2048;

fn id(n: NexusId) -> NexusIdentity {
    NexusIdentity {
        initiator_name: format!("iqn.2026-11.org.example:n{}", n.0),
        isid: [0x40, 0, 0, 0, 0, n.0 as u8],
        relative_target_port: 1,
    }
}

/// A thin-provisioned 512-byte-block LU with nexuses A and B, their POWER ON
/// unit attentions already reported.
fn thin() -> LogicalUnit {
    let mut c = LuConfig::disk_defaults(1, 1);
    c.size = BLOCKS * 512;
    c.thin_provisioning = true;
    let lu = LogicalUnit::new(1, c);
    for n in [A, B] {
        lu.add_nexus(n, id(n));
        let r = done(exec(&lu, n, &[0; 6], &[]));
        assert_eq!(r.status, Status::CHECK_CONDITION);
    }
    lu
}

fn exec(lu: &LogicalUnit, nexus: NexusId, cdb: &[u8], data_out: &[u8]) -> Outcome {
    let mut buf = vec![0u8; 4096];
    lu.execute(
        &Command {
            nexus,
            cdb,
            data_out,
        },
        &mut buf,
    )
}

fn done(o: Outcome) -> Response {
    match o {
        Outcome::Done(r) => r,
        Outcome::Io(p) => panic!("expected Done, got {p:?}"),
    }
}

fn io(o: Outcome) -> IoPlan {
    match o {
        Outcome::Io(p) => p,
        Outcome::Done(r) => panic!("expected Io, got {r:?}"),
    }
}

fn key_asc(r: &Response) -> (SenseKey, Asc) {
    let s = r
        .sense
        .as_ref()
        .unwrap_or_else(|| panic!("no sense in {r:?}"));
    (s.key, s.asc)
}

fn cdb16(op: u8, b1: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    for &(lba, n) in ranges {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    let desc = (p.len() - 8) as u16;
    p[0..2].copy_from_slice(&(desc + 6).to_be_bytes());
    p[2..4].copy_from_slice(&desc.to_be_bytes());
    p
}

fn unmap_cdb(len: usize) -> [u8; 10] {
    let l = (len as u16).to_be_bytes();
    [0x42, 0, 0, 0, 0, 0, 0, l[0], l[1], 0]
}

#[test]
fn unmap_plans_every_descriptor_and_checks_the_range() {
    let lu = thin();
    let list = unmap_list(&[(8, 16), (100, 0), (1000, 8)]);
    let p = io(exec(&lu, A, &unmap_cdb(list.len()), &list));
    assert_eq!(p.kind, IoKind::Unmap);
    assert_eq!((p.offset, p.span), (8 * 512, 16 * 512));
    assert_eq!(p.kind.buffer(), PlanBuffer::None);
    // The empty descriptor is dropped; the third becomes a further range.
    assert_eq!(p.extra, PlanExtra::Ranges(vec![(1000 * 512, 8 * 512)]));

    let list = unmap_list(&[(BLOCKS - 1, 2)]);
    let r = done(exec(&lu, A, &unmap_cdb(list.len()), &list));
    assert_eq!(
        key_asc(&r),
        (SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE)
    );
    // PARAMETER LIST LENGTH 0: nothing to do.
    assert_eq!(done(exec(&lu, A, &unmap_cdb(0), &[])).status, Status::GOOD);
    // A fully provisioned LU does not offer UNMAP (LBPU=0).
    lu.update(|c| c.thin_provisioning = false);
    let _ = exec(&lu, A, &[0; 6], &[]);
    let list = unmap_list(&[(0, 1)]);
    let r = done(exec(&lu, A, &unmap_cdb(list.len()), &list));
    assert_eq!(
        key_asc(&r),
        (
            SenseKey::ILLEGAL_REQUEST,
            Asc::INVALID_COMMAND_OPERATION_CODE
        )
    );
}

#[test]
fn write_same_unmaps_or_writes_one_block() {
    let lu = thin();
    let block = [0xa5u8; 512];
    // UNMAP bit on a thin LU: deallocate (reads return zeros, LBPRZ).
    let p = io(exec(&lu, A, &cdb16(0x93, 0x08, 10, 4), &block));
    assert_eq!(
        (p.kind, p.offset, p.span),
        (IoKind::Unmap, 10 * 512, 4 * 512)
    );
    // Without it: the block written over the range.
    let p = io(exec(&lu, A, &cdb16(0x93, 0, 10, 4), &block));
    assert_eq!((p.kind, p.len, p.span), (IoKind::WriteSame, 512, 4 * 512));
    assert_eq!(p.kind.buffer(), PlanBuffer::DataOut);
    // NDOB: no data-out, a zero block built here.
    let p = io(exec(&lu, A, &cdb16(0x93, 0x01, 10, 4), &[]));
    assert_eq!(p.extra, PlanExtra::Buffer(vec![0; 512]));
    // 0 blocks: to the end of the medium.
    let p = io(exec(&lu, A, &cdb16(0x93, 0, BLOCKS - 3, 0), &block));
    assert_eq!(p.span, 3 * 512);
    // Data-out of anything but one block is an error (SBC-3 §5.42).
    for bad in [&block[..256], &[0u8; 1024][..]] {
        let r = done(exec(&lu, A, &cdb16(0x93, 0, 0, 1), bad));
        assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
    }
    // ANCHOR without ANC_SUP.
    let r = done(exec(&lu, A, &cdb16(0x93, 0x18, 0, 1), &block));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
    // More than MAXIMUM WRITE SAME LENGTH (on a medium large enough).
    lu.update(|c| c.size = 1 << 30);
    let _ = exec(&lu, A, &[0; 6], &[]);
    let max = sbc::max_write_same_blocks(&lu.config()) as u32;
    let r = done(exec(&lu, A, &cdb16(0x93, 0x08, 0, max + 1), &block));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn compare_and_write_reports_the_miscompare_offset() {
    let lu = thin();
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&5u64.to_be_bytes());
    cdb[13] = 2;
    let data = vec![7u8; 4 * 512];
    let p = io(exec(&lu, A, &cdb, &data));
    assert_eq!(
        (p.kind, p.offset, p.len),
        (IoKind::CompareAndWrite, 5 * 512, 2048)
    );
    // The store matched 700 bytes: MISCOMPARE with that offset (SBC-3 §5.2).
    let r = lu.complete_io(&p, Ok(700), &mut []);
    assert_eq!(
        key_asc(&r),
        (
            SenseKey::MISCOMPARE,
            Asc::MISCOMPARE_DURING_VERIFY_OPERATION
        )
    );
    assert_eq!(r.sense.as_ref().unwrap().information, Some(700));
    assert_eq!(lu.complete_io(&p, Ok(1024), &mut []), Response::good(0));
    // A Data-Out that is not exactly 2 x NUMBER OF BLOCKS is refused.
    let r = done(exec(&lu, A, &cdb, &data[..3 * 512]));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
    // Above MAXIMUM COMPARE AND WRITE LENGTH (255): the byte wraps, the data
    // does not match, refused.
    cdb[13] = 0;
    let r = done(exec(&lu, A, &cdb, &vec![0u8; 2 * 256 * 512]));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn verify_bytchk_compares_and_miscompares() {
    let lu = thin();
    let v16 = |bytchk: u8, lba: u64, blocks: u32| cdb16(0x8f, bytchk << 1, lba, blocks);
    // BYTCHK 0: the medium only, nothing to compare.
    assert_eq!(done(exec(&lu, A, &v16(0, 0, 8), &[])).status, Status::GOOD);
    // BYTCHK 1: every block sent is compared.
    let p = io(exec(&lu, A, &v16(1, 4, 2), &[1u8; 1024]));
    assert_eq!((p.kind, p.len, p.span), (IoKind::Compare, 1024, 1024));
    let r = lu.complete_io(&p, Ok(3), &mut []);
    assert_eq!(key_asc(&r).0, SenseKey::MISCOMPARE);
    // BYTCHK 3: one block compared with each block of the range.
    let p = io(exec(&lu, A, &v16(3, 4, 8), &[1u8; 512]));
    assert_eq!((p.len, p.span), (512, 8 * 512));
    // BYTCHK 2 is reserved; range checked before anything else.
    let r = done(exec(&lu, A, &v16(2, 0, 1), &[0u8; 512]));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
    let r = done(exec(&lu, A, &v16(1, BLOCKS, 1), &[0u8; 512]));
    assert_eq!(key_asc(&r).1, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn get_lba_status_turns_extents_into_descriptors() {
    let lu = thin();
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x12;
    cdb[2..10].copy_from_slice(&16u64.to_be_bytes());
    cdb[10..14].copy_from_slice(&200u32.to_be_bytes());
    let p = io(exec(&lu, A, &cdb, &[]));
    assert_eq!((p.kind, p.offset), (IoKind::Extents, 16 * 512));
    assert_eq!(p.kind.buffer(), PlanBuffer::DataIn);
    // The store saw: 8 KiB of data, a 64 KiB hole, then data to the end.
    let mut buf = vec![0u8; p.len];
    let recs = [(8192u64, 1u64), (65536, 0), (1 << 20, 1)];
    for (i, (len, flags)) in recs.iter().enumerate() {
        buf[i * 16..i * 16 + 8].copy_from_slice(&len.to_le_bytes());
        buf[i * 16 + 8..i * 16 + 16].copy_from_slice(&flags.to_le_bytes());
    }
    let r = lu.complete_io(&p, Ok(48), &mut buf);
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(r.data_in_len, 8 + 3 * 16);
    let desc = |i: usize| {
        let d = &buf[8 + 16 * i..24 + 16 * i];
        (
            u64::from_be_bytes(d[0..8].try_into().unwrap()),
            u32::from_be_bytes(d[8..12].try_into().unwrap()),
            d[12],
        )
    };
    // SBC-4 §5.8.2.3: the first descriptor starts at the requested LBA.
    assert_eq!(desc(0), (16, 16, 0));
    assert_eq!(desc(1), (32, 128, 1));
    assert_eq!(desc(2).0, 160);
    assert_eq!(desc(2).2, 0);
    // Beyond the medium.
    cdb[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    let r = done(exec(&lu, A, &cdb, &[]));
    assert_eq!(key_asc(&r).1, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn sanitize_holds_the_lu_not_ready_until_it_completes() {
    let lu = thin();
    let mut param = vec![0x01, 0, 0, 4];
    param.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let cdb = [0x48, 0x01, 0, 0, 0, 0, 0, 0, param.len() as u8, 0];
    let p = io(exec(&lu, A, &cdb, &param));
    assert!(p.sanitize);
    assert_eq!((p.kind, p.span), (IoKind::WriteSame, BLOCKS * 512));
    let PlanExtra::Buffer(block) = &p.extra else {
        panic!("no pattern block: {p:?}");
    };
    assert_eq!(
        &block[..8],
        &[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]
    );
    // Meanwhile: NOT READY, SANITIZE IN PROGRESS, for every nexus; INQUIRY works.
    for n in [A, B] {
        let r = done(exec(&lu, n, &[0; 6], &[]));
        assert_eq!(
            key_asc(&r),
            (
                SenseKey::NOT_READY,
                Asc::LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS
            )
        );
    }
    assert_eq!(
        done(exec(&lu, A, &[0x12, 0, 0, 0, 36, 0], &[])).status,
        Status::GOOD
    );
    // A failure leaves the LU in failure mode until EXIT FAILURE MODE.
    assert_eq!(
        lu.complete_io(&p, Err(lu::errno::EIO), &mut []).status,
        Status::CHECK_CONDITION
    );
    let r = done(exec(&lu, B, &[0; 6], &[]));
    assert_eq!(
        key_asc(&r),
        (SenseKey::MEDIUM_ERROR, Asc::SANITIZE_COMMAND_FAILED)
    );
    let exit = [0x48, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(done(exec(&lu, A, &exit, &[])).status, Status::GOOD);
    assert_eq!(done(exec(&lu, B, &[0; 6], &[])).status, Status::GOOD);
    // Reserved CDB fields and crypto erase (no encrypted medium).
    let r = done(exec(&lu, A, &[0x48, 0x41, 0, 0, 0, 0, 0, 0, 8, 0], &param));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
    let r = done(exec(&lu, A, &[0x48, 0x03, 0, 0, 0, 0, 0, 0, 0, 0], &[]));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
}

#[test]
fn mode_select_swp_write_protects_and_tells_the_other_nexus() {
    let lu = thin();
    // MODE SELECT(6), PF: header, then the Control page with SWP set.
    let mut page = [0u8; 12];
    page[0] = 0x0a;
    page[1] = 10;
    page[3] = 0x10;
    page[4] = 0x08; // SWP
    page[5] = 0x40;
    page[8] = 0xff;
    page[9] = 0xff;
    let mut param = vec![0u8; 4];
    param.extend_from_slice(&page);
    let cdb = [0x15, 0x10, 0, 0, param.len() as u8, 0];
    assert_eq!(done(exec(&lu, A, &cdb, &param)).status, Status::GOOD);
    let r = done(exec(&lu, A, &cdb16(0x8a, 0, 0, 1), &[0u8; 512]));
    assert_eq!(key_asc(&r), (SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED));
    // SPC-4 §6.9: the other I_T nexus learns of it; the one that did it not.
    let r = done(exec(&lu, B, &[0; 6], &[]));
    assert_eq!(
        key_asc(&r),
        (SenseKey::UNIT_ATTENTION, Asc::MODE_PARAMETERS_CHANGED)
    );
    // A field that is not changeable may not change.
    param[4 + 3] = 0;
    let r = done(exec(&lu, A, &cdb, &param));
    assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_PARAMETER_LIST);
}

#[test]
fn reservations_admit_and_refuse_per_nexus() {
    let lu = thin();
    // RESERVE(6) by A: B conflicts, A writes.
    assert_eq!(
        done(exec(&lu, A, &[0x16, 0, 0, 0, 0, 0], &[])).status,
        Status::GOOD
    );
    let w = cdb16(0x8a, 0, 0, 1);
    assert_eq!(
        done(exec(&lu, B, &w, &[0u8; 512])).status,
        Status::RESERVATION_CONFLICT
    );
    assert_eq!(io(exec(&lu, A, &w, &[0u8; 512])).kind, IoKind::Write);
    // A LOGICAL UNIT RESET releases it (SPC-2 §5.5.1).
    lu.reset(Asc::BUS_DEVICE_RESET);
    for n in [A, B] {
        let _ = exec(&lu, n, &[0; 6], &[]);
    }
    assert_eq!(io(exec(&lu, B, &w, &[0u8; 512])).kind, IoKind::Write);

    // PERSISTENT RESERVE OUT REGISTER + RESERVE (Exclusive Access) by A.
    let prout = |sa: u8, ty: u8, key: u64, sa_key: u64| {
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        let cdb = [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
        done(exec(&lu, A, &cdb, &p))
    };
    assert_eq!(prout(0, 0, 0, 0xab).status, Status::GOOD);
    assert_eq!(prout(1, 3, 0xab, 0).status, Status::GOOD);
    let _ = exec(&lu, B, &[0; 6], &[]);
    let r = cdb16(0x88, 0, 0, 1);
    assert_eq!(
        done(exec(&lu, B, &r, &[])).status,
        Status::RESERVATION_CONFLICT
    );
    // Persistent reservations survive a reset.
    lu.reset(Asc::BUS_DEVICE_RESET);
    let _ = exec(&lu, B, &[0; 6], &[]);
    assert_eq!(
        done(exec(&lu, B, &r, &[])).status,
        Status::RESERVATION_CONFLICT
    );
    assert_eq!(lu.reservation_keys(), vec![0xab]);
}

#[test]
fn aptpl_state_reaches_the_persistence_hook() {
    let lu = thin();
    let saved = Arc::new(std::sync::Mutex::new(Vec::<Option<Vec<u8>>>::new()));
    let s2 = saved.clone();
    lu.set_pr_persistence(Box::new(move |st| {
        s2.lock().unwrap().push(st.map(<[u8]>::to_vec))
    }));
    let mut p = [0u8; 24];
    p[8..16].copy_from_slice(&0x77u64.to_be_bytes());
    p[20] = 0x01; // APTPL
    let cdb = [0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(done(exec(&lu, A, &cdb, &p)).status, Status::GOOD);
    let state = saved
        .lock()
        .unwrap()
        .last()
        .cloned()
        .flatten()
        .expect("state kept");
    // A new LU (a restarted daemon) restores it.
    let lu2 = thin();
    lu2.restore_reservations(&state).expect("restore");
    assert_eq!(lu2.reservation_keys(), vec![0x77]);
}

#[test]
fn extended_copy_plans_a_copy_between_lus() {
    let mut table = LunTable::new();
    let src = Arc::new(thin());
    let mut cfg = LuConfig::disk_defaults(1, 2);
    cfg.size = BLOCKS * 512;
    let dst = Arc::new(LogicalUnit::new(2, cfg));
    dst.add_nexus(A, id(A));
    let _ = exec(&dst, A, &[0; 6], &[]);
    table.insert(src.clone());
    table.insert(dst.clone());
    let naa = |lu: &LogicalUnit| spc::naa_designator(&lu.config().scsi_id).to_be_bytes();
    let tgt = |n: [u8; 8]| {
        let mut t = [0u8; 32];
        t[0] = 0xe4;
        t[4] = 0x01;
        t[5] = 0x03;
        t[7] = 8;
        t[8..16].copy_from_slice(&n);
        t[30] = 0x02; // block length 512
        t
    };
    let mut seg = [0u8; 28];
    seg[0] = 0x02;
    seg[2..4].copy_from_slice(&24u16.to_be_bytes());
    seg[6..8].copy_from_slice(&1u16.to_be_bytes()); // destination: descriptor 1
    seg[10..12].copy_from_slice(&4u16.to_be_bytes());
    seg[12..20].copy_from_slice(&10u64.to_be_bytes());
    seg[20..28].copy_from_slice(&20u64.to_be_bytes());
    let mut param = vec![0u8; 16];
    param[1] = 0x18;
    param[2..4].copy_from_slice(&64u16.to_be_bytes());
    param[8..12].copy_from_slice(&28u32.to_be_bytes());
    param.extend_from_slice(&tgt(naa(&src)));
    param.extend_from_slice(&tgt(naa(&dst)));
    param.extend_from_slice(&seg);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(param.len() as u32).to_be_bytes());
    let cmd = Command {
        nexus: A,
        cdb: &cdb,
        data_out: &param,
    };
    let p = io(table.execute(1, &cmd, &mut []));
    assert_eq!(p.kind, IoKind::Copy);
    assert_eq!(p.source, Some((1, 10 * 512)));
    assert_eq!(p.store_lun, Some(2));
    assert_eq!((p.offset, p.span), (20 * 512, 4 * 512));
    assert_eq!(src.complete_io(&p, Ok(2048), &mut []), Response::good(0));
    // A failed copy is COPY ABORTED.
    let p = io(table.execute(1, &cmd, &mut []));
    let r = src.complete_io(&p, Err(lu::errno::EIO), &mut []);
    assert_eq!(key_asc(&r).0, SenseKey::COPY_ABORTED);
}

#[test]
fn tasks_aborted_from_another_nexus_complete_with_task_aborted() {
    let lu = thin();
    let w = cdb16(0x8a, 0, 0, 1);
    let pa = io(exec(&lu, A, &w, &[0u8; 512]));
    let pb = io(exec(&lu, B, &w, &[0u8; 512]));
    // CLEAR TASK SET / PREEMPT AND ABORT of B's tasks while both are at the store.
    lu.abort_tasks_of(Some(&[B]));
    assert_eq!(lu.complete_io(&pa, Ok(512), &mut []), Response::good(0));
    // TAS=1 (SPC-4 §7.5.8): B's command ends TASK ABORTED.
    assert_eq!(
        lu.complete_io(&pb, Ok(512), &mut []).status,
        Status::TASK_ABORTED
    );
    // Commands admitted afterwards are not affected.
    let pb2 = io(exec(&lu, B, &w, &[0u8; 512]));
    assert_eq!(lu.complete_io(&pb2, Ok(512), &mut []), Response::good(0));
    // A LOGICAL UNIT RESET aborts everyone's tasks; a sanitize goes on.
    let pa = io(exec(&lu, A, &w, &[0u8; 512]));
    lu.reset(Asc::BUS_DEVICE_RESET);
    assert_eq!(
        lu.complete_io(&pa, Ok(512), &mut []).status,
        Status::TASK_ABORTED
    );
}

#[test]
fn orwrite_write_atomic_and_write_and_verify_plans() {
    let lu = thin();
    let p = io(exec(&lu, A, &cdb16(0x8b, 0x08, 3, 2), &[0u8; 1024]));
    assert_eq!(
        (p.kind, p.offset, p.len, p.fua),
        (IoKind::OrWrite, 3 * 512, 1024, true)
    );
    // WRITE ATOMIC(16): LBA and length in whole atomic units (8 blocks here).
    let atomic = |lba: u64, blocks: u16| {
        let mut c = [0u8; 16];
        c[0] = 0x9c;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[12..14].copy_from_slice(&blocks.to_be_bytes());
        c
    };
    let p = io(exec(&lu, A, &atomic(8, 8), &[0u8; 4096]));
    assert_eq!((p.kind, p.len), (IoKind::WriteAtomic, 4096));
    for (lba, blocks) in [(1, 8), (8, 3)] {
        let r = done(exec(&lu, A, &atomic(lba, blocks), &[0u8; 4096]));
        assert_eq!(key_asc(&r).1, Asc::INVALID_FIELD_IN_CDB);
    }
    let r = done(exec(&lu, A, &atomic(BLOCKS - 8, 16), &[0u8; 8192]));
    assert_eq!(key_asc(&r).1, Asc::LBA_OUT_OF_RANGE);
    // WRITE AND VERIFY(10): a write through to the medium.
    let wv = [0x2e, 0x02, 0, 0, 0, 9, 0, 0, 1, 0];
    let p = io(exec(&lu, A, &wv, &[0u8; 512]));
    assert_eq!((p.kind, p.offset, p.fua), (IoKind::Write, 9 * 512, true));
    // Every one of them is refused on a write-protected LU.
    lu.update(|c| c.readonly = true);
    let _ = exec(&lu, A, &[0; 6], &[]);
    for (cdb, data) in [
        (&cdb16(0x8b, 0, 3, 2)[..], &[0u8; 1024][..]),
        (&atomic(8, 8)[..], &[0u8; 4096][..]),
        (&wv[..], &[0u8; 512][..]),
    ] {
        let r = done(exec(&lu, A, cdb, data));
        assert_eq!(key_asc(&r), (SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED));
    }
}

#[test]
fn prefetch_checks_its_range_and_rtpg_reports_one_group() {
    let lu = thin();
    let pf = |lba: u32, blocks: u16| {
        let l = lba.to_be_bytes();
        let b = blocks.to_be_bytes();
        [0x34, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
    };
    assert_eq!(done(exec(&lu, A, &pf(0, 8), &[])).status, Status::GOOD);
    let r = done(exec(&lu, A, &pf(BLOCKS as u32 - 1, 2), &[]));
    assert_eq!(key_asc(&r).1, Asc::LBA_OUT_OF_RANGE);
    // REPORT TARGET PORT GROUPS: one group, active/optimized, one port.
    let mut buf = vec![0u8; 64];
    let cdb = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    let r = done(lu.execute(
        &Command {
            nexus: A,
            cdb: &cdb,
            data_out: &[],
        },
        &mut buf,
    ));
    assert_eq!(r.data_in_len, 16);
    assert_eq!(buf[4] & 0x0f, 0, "active/optimized");
    assert_eq!(u16::from_be_bytes([buf[6], buf[7]]), spc::TARGET_PORT_GROUP);
    assert_eq!(
        u16::from_be_bytes([buf[14], buf[15]]),
        spc::RELATIVE_TARGET_PORT
    );
}

#[test]
fn a_lost_spc2_holder_does_not_block_the_others() {
    let lu = thin();
    assert_eq!(
        done(exec(&lu, A, &[0x16, 0, 0, 0, 0, 0], &[])).status,
        Status::GOOD
    );
    let w = cdb16(0x8a, 0, 0, 1);
    // The transport still sees A: B conflicts.
    lu.set_nexus_liveness(Box::new(|_| true));
    assert_eq!(
        done(exec(&lu, B, &w, &[0u8; 512])).status,
        Status::RESERVATION_CONFLICT
    );
    // A's initiator closed its connection, not yet noticed: nexus loss
    // releases the reservation (SPC-2 §5.5.1) and B's command runs.
    lu.set_nexus_liveness(Box::new(|n| n != A));
    assert_eq!(io(exec(&lu, B, &w, &[0u8; 512])).kind, IoKind::Write);
}
