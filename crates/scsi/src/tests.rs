//! Command-level tests: each command and its error cases, with expected bytes
//! checked against SPC-4 / SBC-3.

use std::sync::Arc;

use proptest::prelude::*;

use crate::*;

const N: NexusId = NexusId(7);
const BLOCKS: u64 = 1024;

fn disk_cfg() -> LuConfig {
    let mut c = LuConfig::disk_defaults(1, 1);
    c.size = BLOCKS * 512;
    c
}

fn disk() -> LogicalUnit {
    LogicalUnit::new(1, disk_cfg())
}

fn exec(lu: &LogicalUnit, cdb: &[u8], data_out: &[u8], buf: &mut [u8]) -> Outcome {
    lu.execute(
        &Command {
            nexus: N,
            cdb,
            data_out,
        },
        buf,
    )
}

fn done(o: Outcome) -> Response {
    match o {
        Outcome::Done(r) => r,
        Outcome::Io(p) => panic!("expected Done, got {p:?}"),
    }
}

fn ident(n: NexusId) -> crate::pr::NexusIdentity {
    crate::pr::NexusIdentity {
        initiator_name: format!("iqn.2026-11.org.example:i{}", n.0),
        isid: [0x40, 0, 0, 0, 0, n.0 as u8],
        relative_target_port: 1,
    }
}

fn io(o: Outcome) -> IoPlan {
    match o {
        Outcome::Io(p) => p,
        Outcome::Done(r) => panic!("expected Io, got {r:?}"),
    }
}

/// Run a command that must finish at once; returns the response and data-in.
fn run(lu: &LogicalUnit, cdb: &[u8]) -> (Response, Vec<u8>) {
    let mut buf = vec![0u8; 512];
    let r = done(exec(lu, cdb, &[], &mut buf));
    let n = r.data_in_len.min(buf.len());
    buf.truncate(n);
    (r, buf)
}

fn assert_check(r: &Response, key: SenseKey, asc: Asc) {
    assert_eq!(r.status, Status::CHECK_CONDITION, "{r:?}");
    let s = r.sense.as_ref().expect("sense");
    assert_eq!((s.key, s.asc), (key, asc), "{r:?}");
}

fn assert_invalid_field(r: &Response) {
    assert_check(r, SenseKey::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
}

fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, evpd as u8, page, a[0], a[1], 0]
}

fn rw10(op: u8, flags: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let b = blocks.to_be_bytes();
    [op, flags, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

fn rw16(op: u8, flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

// ---- unit attentions -------------------------------------------------------------

#[test]
fn new_nexus_sees_power_on_reset_first_then_queue_in_order() {
    let lu = disk();
    lu.add_nexus(N, ident(N));
    lu.raise_unit_attention(Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    lu.raise_unit_attention(Asc::REPORTED_LUNS_DATA_HAS_CHANGED); // deduplicated
                                                                  // INQUIRY neither reports nor clears a unit attention (SAM-5 §5.14).
    let (r, _) = run(&lu, &inquiry(false, 0, 36));
    assert_eq!(r.status, Status::GOOD);
    let (r, _) = run(&lu, &[0, 0, 0, 0, 0, 0]);
    assert_check(&r, SenseKey::UNIT_ATTENTION, Asc::POWER_ON_RESET);
    let (r, _) = run(&lu, &[0, 0, 0, 0, 0, 0]);
    assert_check(
        &r,
        SenseKey::UNIT_ATTENTION,
        Asc::REPORTED_LUNS_DATA_HAS_CHANGED,
    );
    let (r, _) = run(&lu, &[0, 0, 0, 0, 0, 0]);
    assert_eq!(r, Response::good(0));
}

#[test]
fn request_sense_returns_and_clears_unit_attention() {
    let lu = disk();
    lu.add_nexus(N, ident(N));
    let (r, d) = run(&lu, &[0x03, 0, 0, 0, 252, 0]);
    assert_eq!(r, Response::good(18));
    assert_eq!(d[0], 0x70);
    assert_eq!(d[2], 0x06);
    assert_eq!((d[12], d[13]), (0x29, 0x00));
    let (r, d) = run(&lu, &[0x03, 0, 0, 0, 252, 0]);
    assert_eq!(r, Response::good(18));
    assert_eq!((d[2], d[12], d[13]), (0, 0, 0));
    // DESC=1: descriptor format.
    let (r, d) = run(&lu, &[0x03, 1, 0, 0, 252, 0]);
    assert_eq!(r, Response::good(8));
    assert_eq!(d[0], 0x72);
    // Allocation length truncation.
    let (r, _) = run(&lu, &[0x03, 0, 0, 0, 4, 0]);
    assert_eq!(r.data_in_len, 4);
}

#[test]
fn reset_replaces_queue_and_remove_nexus_forgets() {
    let lu = disk();
    lu.add_nexus(N, ident(N));
    lu.raise_unit_attention(Asc::INQUIRY_DATA_HAS_CHANGED);
    lu.reset(Asc::BUS_DEVICE_RESET);
    assert_eq!(lu.pending_unit_attentions(N), vec![Asc::BUS_DEVICE_RESET]);
    lu.remove_nexus(N);
    assert!(lu.pending_unit_attentions(N).is_empty());
    // An unknown nexus simply has no unit attention.
    assert_eq!(run(&lu, &[0; 6]).0, Response::good(0));
}

#[test]
fn update_raises_the_right_unit_attentions() {
    let lu = disk();
    lu.add_nexus(N, ident(N));
    lu.take_unit_attention(N);
    lu.update(|c| c.size *= 2);
    assert_eq!(
        lu.pending_unit_attentions(N),
        vec![Asc::CAPACITY_DATA_HAS_CHANGED]
    );
    lu.update(|c| c.product_id = "OTHER".into());
    lu.update(|c| c.write_cache = false);
    lu.update(|_| {});
    assert_eq!(
        lu.pending_unit_attentions(N),
        vec![
            Asc::CAPACITY_DATA_HAS_CHANGED,
            Asc::INQUIRY_DATA_HAS_CHANGED,
            Asc::MODE_PARAMETERS_CHANGED
        ]
    );
    assert_eq!(lu.config().size, BLOCKS * 1024);
}

#[test]
fn unit_attention_queue_is_bounded() {
    let lu = disk();
    lu.add_nexus(N, ident(N));
    for i in 0..100u16 {
        lu.raise_unit_attention(Asc(0x4000 + i));
    }
    assert_eq!(lu.pending_unit_attentions(N).len(), lu::UA_QUEUE_MAX);
}

// ---- INQUIRY -----------------------------------------------------------------------

#[test]
fn standard_inquiry_bytes() {
    let lu = disk();
    let (r, d) = run(&lu, &inquiry(false, 0, 260));
    assert_eq!(r, Response::good(96));
    assert_eq!(d[0], 0x00); // qualifier 0, direct access block device
    assert_eq!(d[1], 0x00); // not removable
    assert_eq!(d[2], 0x06); // SPC-4
    assert_eq!(d[3] & 0x0f, 2); // response data format
    assert_eq!(d[3] & 0xc0, 0); // no AERC / TRMTSK
    assert_eq!(usize::from(d[4]), d.len() - 5);
    assert_eq!(d[7], 0x02); // CMDQUE
    assert_eq!(&d[8..16], b"IET     ");
    assert_eq!(&d[16..32], b"VIRTUAL-DISK    ");
    assert_eq!(&d[32..36], b"0001");
    let descs: Vec<u16> = (0..8)
        .map(|i| u16::from_be_bytes([d[58 + 2 * i], d[59 + 2 * i]]))
        .collect();
    assert!(descs.contains(&0x04c0)); // SBC-3
    assert!(descs.contains(&0x0460)); // SPC-4
}

#[test]
fn inquiry_allocation_length_and_rmb() {
    let lu = disk();
    let (r, d) = run(&lu, &inquiry(false, 0, 36));
    assert_eq!(r.data_in_len, 36);
    assert_eq!(d.len(), 36);
    let (r, _) = run(&lu, &inquiry(false, 0, 0));
    assert_eq!(r, Response::good(0));
    // Caller buffer smaller than the allocation length: data_in_len is still the
    // allocation-length-capped figure, only the buffer is truncated.
    let mut small = [0u8; 10];
    let r = done(exec(&lu, &inquiry(false, 0, 96), &[], &mut small));
    assert_eq!(r.data_in_len, 96);
    assert_eq!(&small[8..10], b"IE");
    lu.update(|c| c.removable = true);
    let (_, d) = run(&lu, &inquiry(false, 0, 36));
    assert_eq!(d[1], 0x80);
}

#[test]
fn inquiry_invalid_fields() {
    let lu = disk();
    assert_invalid_field(&run(&lu, &inquiry(false, 0x80, 255)).0);
    assert_invalid_field(&run(&lu, &inquiry(true, 0x99, 255)).0);
    assert_invalid_field(&run(&lu, &[0x12, 0x02, 0, 0, 255, 0]).0); // CMDDT
    let (r, _) = run(&lu, &[0x12, 0, 0]);
    assert_invalid_field(&r); // short CDB
}

#[test]
fn vpd_supported_pages_and_serial() {
    let lu = disk();
    let (r, d) = run(&lu, &inquiry(true, 0x00, 255));
    assert_eq!(r.data_in_len, 10);
    assert_eq!(&d[..4], &[0, 0, 0, 6]);
    assert_eq!(&d[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    let (_, d) = run(&lu, &inquiry(true, 0x80, 255));
    assert_eq!(&d[..4], &[0, 0x80, 0, 6]);
    assert_eq!(&d[4..], b"beaf11");
}

#[test]
fn vpd_device_identification() {
    let lu = disk();
    let (r, d) = run(&lu, &inquiry(true, 0x83, 255));
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(d[1], 0x83);
    let page_len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    assert_eq!(page_len + 4, d.len());
    // T10 vendor ID designator: ASCII, LU association, type 1.
    assert_eq!(&d[4..7], &[0x02, 0x01, 0]);
    let l = usize::from(d[7]);
    assert_eq!(&d[8..8 + l], b"IET     00010001");
    // NAA designator: binary, type 3, NAA 5.
    let naa = &d[8 + l..];
    assert_eq!(&naa[..4], &[0x01, 0x03, 0, 8]);
    assert_eq!(naa[4] >> 4, 5);
    // Stable and distinct per LU.
    let other = spc::naa_designator("IET     00010002");
    assert_ne!(other.to_be_bytes(), naa[4..12]);
    assert_eq!(
        spc::naa_designator("IET     00010001").to_be_bytes(),
        naa[4..12]
    );
}

#[test]
fn vpd_block_pages() {
    let lu = disk();
    let (_, d) = run(&lu, &inquiry(true, 0xb0, 64));
    assert_eq!(d.len(), 64);
    assert_eq!(d[3], 0x3c);
    assert_eq!(u16::from_be_bytes([d[6], d[7]]), 8);
    assert_eq!(u32::from_be_bytes([d[8], d[9], d[10], d[11]]), 16384);
    assert_eq!(&d[20..28], &[0; 8]); // no UNMAP without thin provisioning
    let (_, d) = run(&lu, &inquiry(true, 0xb1, 64));
    assert_eq!((d[3], d[4], d[5]), (0x3c, 0, 1));
    let (_, d) = run(&lu, &inquiry(true, 0xb2, 64));
    assert_eq!(d, vec![0, 0xb2, 0, 4, 0, 0, 0, 0]);
    lu.update(|c| c.thin_provisioning = true);
    let (_, d) = run(&lu, &inquiry(true, 0xb2, 64));
    assert_eq!(d[5] & 0xe0, 0xe0);
    assert_eq!(d[6] & 0x07, 2);
    let (_, d) = run(&lu, &inquiry(true, 0xb0, 64));
    assert_ne!(&d[20..24], &[0; 4]);
    assert_ne!(&d[24..28], &[0; 4]);
}

// ---- REPORT LUNS / LunTable ------------------------------------------------------

fn table() -> LunTable {
    let mut t = LunTable::new();
    t.insert(Arc::new(LogicalUnit::new(
        0,
        LuConfig::controller_defaults(1),
    )));
    t.insert(Arc::new(disk()));
    t.insert(Arc::new(LogicalUnit::new(300, disk_cfg())));
    t
}

fn report_luns(select: u8, alloc: u32) -> [u8; 12] {
    let a = alloc.to_be_bytes();
    [0xa0, 0, select, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0]
}

fn run_table(t: &LunTable, lun: u64, cdb: &[u8]) -> (Response, Vec<u8>) {
    let mut buf = vec![0u8; 512];
    let r = done(t.execute(
        lun,
        &Command {
            nexus: N,
            cdb,
            data_out: &[],
        },
        &mut buf,
    ));
    buf.truncate(r.data_in_len.min(512));
    (r, buf)
}

#[test]
fn report_luns_lists_every_lun() {
    let t = table();
    // Answered for any LUN, even one that does not exist.
    for lun in [0, 1, 99] {
        let (r, d) = run_table(&t, lun, &report_luns(0, 4096));
        assert_eq!(r, Response::good(32));
        assert_eq!(&d[..8], &[0, 0, 0, 24, 0, 0, 0, 0]);
        assert_eq!(&d[8..16], &[0; 8]);
        assert_eq!(&d[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&d[24..32], &[0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    }
    let (r, d) = run_table(&t, 1, &report_luns(2, 16));
    assert_eq!(r.data_in_len, 16);
    assert_eq!(&d[..4], &[0, 0, 0, 24]); // list length is not truncated
    let (r, d) = run_table(&t, 1, &report_luns(1, 16));
    assert_eq!(r, Response::good(8));
    assert_eq!(d, vec![0; 8]);
    assert_invalid_field(&run_table(&t, 1, &report_luns(0, 15)).0);
    assert_invalid_field(&run_table(&t, 1, &report_luns(3, 64)).0);
}

#[test]
fn report_luns_clears_reported_luns_changed() {
    let t = table();
    let lu = t.get(1).unwrap().clone();
    lu.add_nexus(N, ident(N));
    lu.take_unit_attention(N);
    lu.raise_unit_attention(Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    assert_eq!(run_table(&t, 1, &report_luns(0, 64)).0.status, Status::GOOD);
    assert!(lu.pending_unit_attentions(N).is_empty());
}

#[test]
fn report_luns_on_lu_directly_reports_itself() {
    let lu = disk();
    let (r, d) = run(&lu, &report_luns(0, 64));
    assert_eq!(r, Response::good(16));
    assert_eq!(&d[8..10], &[0, 1]);
}

#[test]
fn missing_lun_answers() {
    let t = table();
    let (r, d) = run_table(&t, 5, &inquiry(false, 0, 255));
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(d[0], 0x7f);
    assert_eq!(usize::from(d[4]) + 5, d.len());
    let (r, d) = run_table(&t, 5, &[0x03, 0, 0, 0, 18, 0]);
    assert_eq!(r, Response::good(18));
    assert_eq!((d[2], d[12]), (0x05, 0x25));
    let (r, _) = run_table(&t, 5, &[0; 6]);
    assert_check(
        &r,
        SenseKey::ILLEGAL_REQUEST,
        Asc::LOGICAL_UNIT_NOT_SUPPORTED,
    );
    let (r, _) = run_table(&t, 5, &inquiry(true, 0x80, 255));
    assert_check(
        &r,
        SenseKey::ILLEGAL_REQUEST,
        Asc::LOGICAL_UNIT_NOT_SUPPORTED,
    );
    assert_eq!(
        t.iter().map(|l| l.lun()).collect::<Vec<_>>(),
        vec![0, 1, 300]
    );
    let mut t2 = t.clone();
    assert!(t2.remove(300).is_some());
    assert!(t2.get(300).is_none());
    assert!(t.get(300).is_some());
}

#[test]
fn controller_lu() {
    let t = table();
    let (r, d) = run_table(&t, 0, &inquiry(false, 0, 96));
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(d[0], 0x0c);
    assert_eq!(&d[16..32], b"Controller      ");
    assert_eq!(run_table(&t, 0, &[0; 6]).0, Response::good(0));
    let (r, _) = run_table(&t, 0, &rw10(0x28, 0, 0, 1));
    assert_check(
        &r,
        SenseKey::ILLEGAL_REQUEST,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    let (r, _) = run_table(&t, 0, &[0x1a, 0, 0x3f, 0, 255, 0]);
    assert_check(
        &r,
        SenseKey::ILLEGAL_REQUEST,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    assert_invalid_field(&run_table(&t, 0, &inquiry(true, 0xb0, 64)).0);
    let (_, d) = run_table(&t, 0, &inquiry(true, 0, 64));
    assert_eq!(&d[4..], &[0, 0x80, 0x83]);
}

// ---- READ CAPACITY -----------------------------------------------------------------

#[test]
fn read_capacity_10() {
    let lu = disk();
    let (r, d) = run(&lu, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(r, Response::good(8));
    assert_eq!(d, vec![0, 0, 0x03, 0xff, 0, 0, 0x02, 0]);
    // PMI=0 with a non-zero LBA is invalid.
    assert_invalid_field(&run(&lu, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]).0);
    assert_eq!(
        run(&lu, &[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]).0.status,
        Status::GOOD
    );
    lu.update(|c| c.size = (1u64 << 33) * 512);
    lu.add_nexus(N, ident(N));
    lu.take_unit_attention(N);
    let (_, d) = run(&lu, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d[..4], &[0xff; 4]);
}

#[test]
fn read_capacity_16() {
    let lu = disk();
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let (r, d) = run(&lu, &cdb);
    assert_eq!(r, Response::good(32));
    assert_eq!(&d[..8], &1023u64.to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[14], 0);
    lu.update(|c| c.thin_provisioning = true);
    let (_, d) = run(&lu, &cdb);
    assert_eq!(d[14] & 0xc0, 0xc0); // LBPME, LBPRZ
    cdb[13] = 12;
    assert_eq!(run(&lu, &cdb).0.data_in_len, 12);
    cdb[1] = 0x11; // another service action
    assert_invalid_field(&run(&lu, &cdb).0);
}

// ---- READ / WRITE ------------------------------------------------------------------

#[test]
fn read_plans() {
    let lu = disk();
    let mut buf = vec![0u8; 8192];
    let p = io(exec(&lu, &rw10(0x28, 0x08, 10, 4), &[], &mut buf));
    assert_eq!(
        p,
        IoPlan {
            kind: IoKind::Read,
            offset: 10 * 512,
            len: 2048,
            fua: true,
            transfer_len: 2048,
            span: 2048,
            nexus: N,
            ..IoPlan::new(IoKind::Read, 0, 0)
        }
    );
    assert_eq!(lu.complete_io(&p, Ok(2048), &mut []), Response::good(2048));
    // READ(6) transfer length 0 = 256 blocks.
    let p = io(exec(&lu, &[0x08, 0, 0, 0, 0, 0], &[], &mut buf));
    assert_eq!((p.len, p.transfer_len), (8192, 256 * 512));
    // READ(12) and READ(16).
    let c12 = [0xa8, 0x10, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0];
    assert_eq!(io(exec(&lu, &c12, &[], &mut buf)).offset, 512);
    let p = io(exec(&lu, &rw16(0x88, 0, 1023, 1), &[], &mut buf));
    assert_eq!((p.offset, p.len), (1023 * 512, 512));
    // A shorter iSCSI buffer caps the plan; the full length drives the residual.
    let mut small = [0u8; 100];
    let p = io(exec(&lu, &rw10(0x28, 0, 0, 1), &[], &mut small));
    assert_eq!((p.len, p.transfer_len), (100, 512));
    assert_eq!(lu.complete_io(&p, Ok(100), &mut []).data_in_len, 512);
}

#[test]
fn read_zero_blocks_and_range() {
    let lu = disk();
    let mut buf = vec![0u8; 512];
    assert_eq!(
        done(exec(&lu, &rw10(0x28, 0, 0, 0), &[], &mut buf)),
        Response::good(0)
    );
    assert_eq!(
        done(exec(&lu, &rw10(0x28, 0, 1024, 0), &[], &mut buf)),
        Response::good(0)
    );
    for cdb in [
        rw16(0x88, 0, 1025, 0),
        rw16(0x88, 0, 1024, 1),
        rw16(0x88, 0, 1023, 2),
        rw16(0x88, 0, u64::MAX, 1),
        rw16(0x88, 0, 1 << 63, 1),
        rw16(0x88, 0, u64::MAX - 1, u32::MAX),
    ] {
        let r = done(exec(&lu, &cdb, &[], &mut buf));
        assert_check(&r, SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    }
    let r = done(exec(&lu, &[0x08, 0, 0x04, 0, 1, 0], &[], &mut buf));
    assert_check(&r, SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn read_invalid_fields() {
    let lu = disk();
    lu.update(|c| c.size = 1 << 40);
    let mut buf = vec![0u8; 512];
    // RDPROTECT without protection information.
    for flags in [0x20, 0x40, 0xe0] {
        let r = done(exec(&lu, &rw10(0x28, flags, 0, 1), &[], &mut buf));
        assert_invalid_field(&r);
    }
    // Beyond MAXIMUM TRANSFER LENGTH (16384 blocks of 512 bytes).
    let r = done(exec(&lu, &rw16(0x88, 0, 0, 16385), &[], &mut buf));
    assert_invalid_field(&r);
    assert_eq!(r.sense.unwrap().field_pointer.unwrap().byte, 10);
    assert!(matches!(
        exec(&lu, &rw16(0x88, 0, 0, 16384), &[], &mut buf),
        Outcome::Io(_)
    ));
}

#[test]
fn write_plans_and_underflow() {
    let lu = disk();
    let data = vec![0xaau8; 2048];
    let mut buf = [0u8; 0];
    let p = io(exec(&lu, &rw10(0x2a, 0x18, 2, 4), &data, &mut buf));
    assert_eq!(
        p,
        IoPlan {
            kind: IoKind::Write,
            offset: 1024,
            len: 2048,
            fua: true,
            transfer_len: 2048,
            span: 2048,
            nexus: N,
            ..IoPlan::new(IoKind::Read, 0, 0)
        }
    );
    assert_eq!(lu.complete_io(&p, Ok(2048), &mut []), Response::good(0));
    // Fewer bytes than asked: only whole blocks received are written.
    let p = io(exec(&lu, &rw10(0x2a, 0, 0, 2), &data[..700], &mut buf));
    assert_eq!((p.len, p.transfer_len), (512, 1024));
    assert_eq!(
        done(exec(&lu, &rw10(0x2a, 0, 0, 1), &data[..200], &mut buf)),
        Response::good(0)
    );
    assert_eq!(
        done(exec(&lu, &rw10(0x2a, 0, 0, 1), &[], &mut buf)),
        Response::good(0)
    );
    // More bytes than asked: only the CDB's transfer length.
    let p = io(exec(&lu, &[0x0a, 0, 0, 1, 1, 0], &data, &mut buf));
    assert_eq!((p.offset, p.len), (512, 512));
    assert_eq!(lu.data_out_len(&rw10(0x2a, 0, 0, 3)), 1536);
    assert_eq!(lu.data_out_len(&rw10(0x28, 0, 0, 3)), 0);
    // WRPROTECT, range.
    assert_invalid_field(&done(exec(&lu, &rw10(0x2a, 0x20, 0, 1), &data, &mut buf)));
    let r = done(exec(&lu, &rw16(0x8a, 0, 1024, 1), &data, &mut buf));
    assert_check(&r, SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    let c12 = [0xaa, 0, 0, 0, 0x04, 0, 0, 0, 0, 1, 0, 0];
    let r = done(exec(&lu, &c12, &data, &mut buf));
    assert_check(&r, SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn readonly_lu_refuses_writes() {
    let lu = disk();
    lu.update(|c| c.readonly = true);
    let data = [0u8; 512];
    let mut buf = [0u8; 512];
    for cdb in [
        &rw10(0x2a, 0, 0, 1)[..],
        &[0x0a, 0, 0, 0, 1, 0][..],
        &rw16(0x8a, 0, 0, 1)[..],
    ] {
        let r = done(exec(&lu, cdb, &data, &mut buf));
        assert_check(&r, SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED);
    }
    assert!(matches!(
        exec(&lu, &rw10(0x28, 0, 0, 1), &[], &mut buf),
        Outcome::Io(_)
    ));
    // WP in the MODE SENSE device-specific parameter.
    let (_, d) = run(&lu, &[0x1a, 0x08, 0x3f, 0, 255, 0]);
    assert_eq!(d[2] & 0x80, 0x80);
}

#[test]
fn offline_lu_is_not_ready() {
    let lu = disk();
    lu.update(|c| c.online = false);
    let mut buf = [0u8; 512];
    let r = done(exec(&lu, &rw10(0x28, 0, 0, 1), &[], &mut buf));
    assert_check(
        &r,
        SenseKey::NOT_READY,
        Asc::LOGICAL_UNIT_NOT_READY_CAUSE_NOT_REPORTABLE,
    );
    lu.update(|c| c.removable = true);
    assert_check(
        &run(&lu, &[0; 6]).0,
        SenseKey::NOT_READY,
        Asc::MEDIUM_NOT_PRESENT,
    );
    // INQUIRY still works.
    assert_eq!(run(&lu, &inquiry(false, 0, 36)).0.status, Status::GOOD);
}

// ---- VERIFY / SYNCHRONIZE CACHE ------------------------------------------------------

#[test]
fn verify_and_sync_cache() {
    let lu = disk();
    let mut buf = [0u8; 0];
    assert_eq!(
        done(exec(&lu, &rw10(0x2f, 0, 0, 8), &[], &mut buf)),
        Response::good(0)
    );
    assert_eq!(
        done(exec(&lu, &rw16(0x8f, 0, 1000, 24), &[], &mut buf)),
        Response::good(0)
    );
    let r = done(exec(&lu, &rw10(0x2f, 0, 1020, 8), &[], &mut buf));
    assert_check(&r, SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
    assert_invalid_field(&done(exec(&lu, &rw10(0x2f, 0x02, 0, 1), &[], &mut buf)));
    assert_invalid_field(&done(exec(&lu, &rw10(0x2f, 0x20, 0, 1), &[], &mut buf)));

    let p = io(exec(&lu, &rw10(0x35, 0x02, 8, 0), &[], &mut buf));
    assert_eq!(
        p,
        IoPlan {
            kind: IoKind::Flush,
            offset: 4096,
            len: 0,
            fua: false,
            transfer_len: 0,
            span: 0,
            nexus: N,
            ..IoPlan::new(IoKind::Read, 0, 0)
        }
    );
    assert_eq!(lu.complete_io(&p, Ok(0), &mut []), Response::good(0));
    let p = io(exec(&lu, &rw16(0x91, 0, 0, 1024), &[], &mut buf));
    assert_eq!(p.kind, IoKind::Flush);
    let r = done(exec(&lu, &rw16(0x91, 0, 1025, 0), &[], &mut buf));
    assert_check(&r, SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
}

#[test]
fn start_stop_and_prevent_allow_accepted() {
    let lu = disk();
    assert_eq!(run(&lu, &[0x1b, 0, 0, 0, 1, 0]).0, Response::good(0));
    assert_eq!(run(&lu, &[0x1e, 0, 0, 0, 1, 0]).0, Response::good(0));
}

// ---- MODE SENSE --------------------------------------------------------------------

#[test]
fn mode_sense_6_all_pages() {
    let lu = disk();
    let (r, d) = run(&lu, &[0x1a, 0, 0x3f, 0, 255, 0]);
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(usize::from(d[0]) + 1, d.len());
    assert_eq!(d[1], 0); // medium type
    assert_eq!(d[2], 0x10); // DPOFUA, not WP
    assert_eq!(d[3], 8); // block descriptor length
    assert_eq!(&d[4..8], &1024u32.to_be_bytes());
    assert_eq!(&d[9..12], &[0, 2, 0]);
    let pages = &d[12..];
    // Pages in ascending order, each with its page length.
    assert_eq!(&pages[..2], &[0x01, 0x0a]);
    assert_eq!(&pages[12..14], &[0x08, 0x12]);
    assert_eq!(pages[14] & 0x04, 0x04); // WCE
    assert_eq!(&pages[32..34], &[0x0a, 0x0a]);
    assert_eq!(pages.len(), 12 + 20 + 12);
    // Subpage FFh with page 3Fh is the same set.
    assert_eq!(run(&lu, &[0x1a, 0, 0x3f, 0xff, 255, 0]).1, d);
    // Allocation length truncation keeps the full header.
    let (r, t) = run(&lu, &[0x1a, 0, 0x3f, 0, 4, 0]);
    assert_eq!(r.data_in_len, 4);
    assert_eq!(t[0], d[0]);
}

#[test]
fn mode_sense_page_control_and_dbd() {
    let lu = disk();
    lu.update(|c| c.write_cache = false);
    let (_, d) = run(&lu, &[0x1a, 0x08, 0x08, 0, 255, 0]);
    assert_eq!(d[3], 0);
    assert_eq!(&d[4..6], &[0x08, 0x12]);
    assert_eq!(d[6] & 0x04, 0);
    // Changeable: only WCE in the caching page.
    let (_, d) = run(&lu, &[0x1a, 0x08, 0x48, 0, 255, 0]);
    assert_eq!(d[6], 0x04);
    assert!(d[7..].iter().all(|&b| b == 0));
    // Default.
    let (r, _) = run(&lu, &[0x1a, 0x08, 0x8a, 0, 255, 0]);
    assert_eq!(r.status, Status::GOOD);
    // Saved values are not supported.
    let (r, _) = run(&lu, &[0x1a, 0, 0xc8, 0, 255, 0]);
    assert_check(
        &r,
        SenseKey::ILLEGAL_REQUEST,
        Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
    );
    assert_invalid_field(&run(&lu, &[0x1a, 0, 0x19, 0, 255, 0]).0);
    assert_invalid_field(&run(&lu, &[0x1a, 0, 0x08, 1, 255, 0]).0);
}

#[test]
fn mode_sense_10_long_lba() {
    let lu = disk();
    let (r, d) = run(&lu, &[0x5a, 0x10, 0x0a, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(r.status, Status::GOOD);
    assert_eq!(usize::from(u16::from_be_bytes([d[0], d[1]])) + 2, d.len());
    assert_eq!(d[4] & 1, 1); // LONGLBA
    assert_eq!(&d[6..8], &[0, 16]);
    assert_eq!(&d[8..16], &1024u64.to_be_bytes());
    assert_eq!(&d[20..24], &512u32.to_be_bytes());
    assert_eq!(&d[24..26], &[0x0a, 0x0a]);
    let (_, d) = run(&lu, &[0x5a, 0, 0x0a, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(&d[6..8], &[0, 8]);
    let (_, d) = run(&lu, &[0x5a, 0x08, 0x0a, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(&d[6..8], &[0, 0]);
    assert_eq!(d.len(), 8 + 12);
}

// ---- generic errors and completion mapping --------------------------------------------

#[test]
fn unknown_opcode_and_short_cdbs() {
    let lu = disk();
    let (r, _) = run(&lu, &[0xc5; 16]);
    assert_check(
        &r,
        SenseKey::ILLEGAL_REQUEST,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    let (r, _) = run(&lu, &[0x42; 10]); // UNMAP: not implemented
    assert_check(
        &r,
        SenseKey::ILLEGAL_REQUEST,
        Asc::INVALID_COMMAND_OPERATION_CODE,
    );
    assert_invalid_field(&run(&lu, &[]).0);
    assert_invalid_field(&run(&lu, &[0x88, 0, 0, 0]).0);
    assert_invalid_field(&run(&lu, &[0, 0, 0, 0, 0, 0x04]).0); // NACA
}

#[test]
fn complete_io_errno_mapping() {
    let lu = disk();
    let plan = |kind| IoPlan::new(kind, 0, 512);
    let check = |r: Response, k, a| assert_check(&r, k, a);
    check(
        lu.complete_io(&plan(IoKind::Read), Err(lu::errno::EIO), &mut []),
        SenseKey::MEDIUM_ERROR,
        Asc::UNRECOVERED_READ_ERROR,
    );
    check(
        lu.complete_io(&plan(IoKind::Read), Ok(100), &mut []),
        SenseKey::MEDIUM_ERROR,
        Asc::UNRECOVERED_READ_ERROR,
    );
    check(
        lu.complete_io(&plan(IoKind::Write), Err(lu::errno::EIO), &mut []),
        SenseKey::MEDIUM_ERROR,
        Asc::WRITE_ERROR,
    );
    check(
        lu.complete_io(&plan(IoKind::Write), Err(lu::errno::ENOSPC), &mut []),
        SenseKey::MEDIUM_ERROR,
        Asc::WRITE_ERROR,
    );
    check(
        lu.complete_io(&plan(IoKind::Read), Err(22), &mut []),
        SenseKey::HARDWARE_ERROR,
        Asc::INTERNAL_TARGET_FAILURE,
    );
    check(
        lu.complete_io(&plan(IoKind::Flush), Err(lu::errno::EIO), &mut []),
        SenseKey::MEDIUM_ERROR,
        Asc::WRITE_ERROR,
    );
    lu.update(|c| c.thin_provisioning = true);
    check(
        lu.complete_io(&plan(IoKind::Write), Err(lu::errno::ENOSPC), &mut []),
        SenseKey::DATA_PROTECT,
        Asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
    );
}

#[test]
fn send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogicalUnit>();
    assert_send_sync::<LunTable>();
}

// ---- property tests -----------------------------------------------------------------

fn arb_lu() -> impl Strategy<Value = LogicalUnit> {
    (
        0u64..(1 << 42),
        prop_oneof![Just(512u32), Just(4096u32)],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(DeviceType::Disk), Just(DeviceType::Controller)],
        prop_oneof![Just(1u32 << 16), Just(8u32 << 20)],
    )
        .prop_map(|(size, bs, ro, online, thin, removable, dt, max)| {
            let mut c = disk_cfg();
            c.size = size;
            c.block_size = bs;
            c.readonly = ro;
            c.online = online;
            c.thin_provisioning = thin;
            c.removable = removable;
            c.device_type = dt;
            c.max_transfer = max;
            LogicalUnit::new(1, c)
        })
}

/// CDBs biased towards opcodes this crate handles, so fields get exercised.
fn arb_cdb() -> impl Strategy<Value = Vec<u8>> {
    let known = prop::sample::select(vec![
        0x00u8, 0x03, 0x08, 0x0a, 0x12, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a, 0x2f, 0x35, 0x5a, 0x88,
        0x8a, 0x8f, 0x91, 0x9e, 0xa0, 0xa8, 0xaa, 0xaf,
    ]);
    (
        prop::option::weighted(0.8, known),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(op, mut v)| {
            if let (Some(op), Some(first)) = (op, v.first_mut()) {
                *first = op;
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_cdb_never_panics_and_plans_stay_in_range(
        lu in arb_lu(),
        cdb in arb_cdb(),
        data_out in prop::collection::vec(any::<u8>(), 0..2048),
        data_in_len in 0usize..4096,
        ua in any::<bool>(),
    ) {
        if ua {
            lu.add_nexus(N, ident(N));
        }
        let cfg = lu.config();
        let mut buf = vec![0u8; data_in_len];
        let mut t = LunTable::new();
        let lu = Arc::new(lu);
        t.insert(lu.clone());
        for target in [1u64, 2] {
            let out = t.execute(target, &Command { nexus: N, cdb: &cdb, data_out: &data_out }, &mut buf);
            match out {
                Outcome::Done(r) => {
                    prop_assert_eq!(r.status == Status::GOOD, r.sense.is_none());
                    prop_assert!(r.data_in_len <= 0x1_0000_0000);
                }
                Outcome::Io(p) => {
                    prop_assert_eq!(target, 1);
                    prop_assert!(p.offset.checked_add(p.span).is_some_and(|e| e <= cfg.size));
                    prop_assert!(p.len <= cfg.max_transfer as usize);
                    prop_assert!(p.transfer_len <= cfg.max_transfer as usize || p.kind == IoKind::Extents);
                    match p.kind.buffer() {
                        lu::PlanBuffer::DataIn if p.kind == IoKind::Read => prop_assert!(p.len <= buf.len()),
                        lu::PlanBuffer::DataIn => {}
                        lu::PlanBuffer::DataOut => {
                            if p.extra == lu::PlanExtra::None {
                                prop_assert!(p.len <= data_out.len());
                            }
                            prop_assert!(!cfg.readonly);
                        }
                        lu::PlanBuffer::None => prop_assert_eq!(p.len, 0),
                    }
                    prop_assert!(cfg.online);
                    let r = lu.complete_io(&p, Ok(p.len.max(p.span as usize)), &mut []);
                    prop_assert_eq!(r.status, Status::GOOD);
                }
            }
        }
    }

    #[test]
    fn complete_io_never_panics(len in 0usize..1 << 20, res in any::<Result<usize, i32>>(), k in 0..3u8) {
        let lu = disk();
        let kind = [IoKind::Read, IoKind::Write, IoKind::Flush][usize::from(k)];
        let r = lu.complete_io(&IoPlan::new(kind, 0, len), res, &mut []);
        prop_assert_eq!(r.status == Status::GOOD, r.sense.is_none());
    }
}

// ---- START STOP UNIT / PREVENT ALLOW MEDIUM REMOVAL --------------------------------

fn start_stop(loej: bool, start: bool, pc: u8) -> [u8; 6] {
    [0x1b, 0, 0, 0, pc << 4 | (loej as u8) << 1 | start as u8, 0]
}

#[test]
fn eject_and_load_removable_medium() {
    let lu = disk();
    lu.update(|c| c.removable = true);
    lu.add_nexus(N, ident(N));
    lu.take_unit_attention(N);
    assert_eq!(run(&lu, &start_stop(true, false, 0)).0, Response::good(0));
    assert_check(
        &run(&lu, &[0; 6]).0,
        SenseKey::NOT_READY,
        Asc::MEDIUM_NOT_PRESENT,
    );
    let mut buf = [0u8; 512];
    let r = done(exec(&lu, &rw10(0x28, 0, 0, 1), &[], &mut buf));
    assert_check(&r, SenseKey::NOT_READY, Asc::MEDIUM_NOT_PRESENT);
    assert_eq!(run(&lu, &start_stop(true, true, 0)).0, Response::good(0));
    assert_eq!(run(&lu, &[0; 6]).0, Response::good(0));
    // POWER CONDITION != 0 or LOEJ=0: no eject.
    assert_eq!(run(&lu, &start_stop(true, false, 1)).0, Response::good(0));
    assert_eq!(run(&lu, &start_stop(false, false, 0)).0, Response::good(0));
    assert_eq!(run(&lu, &[0; 6]).0, Response::good(0));
}

#[test]
fn non_removable_cannot_eject() {
    let lu = disk();
    assert_invalid_field(&run(&lu, &start_stop(true, false, 0)).0);
    assert_eq!(run(&lu, &start_stop(false, true, 0)).0, Response::good(0));
}

#[test]
fn prevent_blocks_eject_until_allow_nexus_loss_or_reset() {
    let lu = disk();
    lu.update(|c| c.removable = true);
    lu.add_nexus(N, ident(N));
    lu.take_unit_attention(N);
    let prevent = [0x1e, 0, 0, 0, 1, 0];
    let allow = [0x1e, 0, 0, 0, 0, 0];
    let blocked = |lu: &LogicalUnit| {
        assert_check(
            &run(lu, &start_stop(true, false, 0)).0,
            SenseKey::ILLEGAL_REQUEST,
            Asc::MEDIUM_REMOVAL_PREVENTED,
        )
    };
    assert_eq!(run(&lu, &prevent).0, Response::good(0));
    blocked(&lu);
    assert_eq!(run(&lu, &allow).0, Response::good(0));
    assert_eq!(run(&lu, &start_stop(true, false, 0)).0, Response::good(0));
    assert_eq!(run(&lu, &start_stop(true, true, 0)).0, Response::good(0));
    // I_T nexus loss ends prevention.
    run(&lu, &prevent);
    blocked(&lu);
    lu.remove_nexus(N);
    lu.add_nexus(N, ident(N));
    lu.take_unit_attention(N);
    assert_eq!(run(&lu, &start_stop(true, false, 0)).0, Response::good(0));
    assert_eq!(run(&lu, &start_stop(true, true, 0)).0, Response::good(0));
    // So does a reset.
    run(&lu, &prevent);
    lu.reset(Asc::BUS_DEVICE_RESET);
    lu.take_unit_attention(N);
    assert_eq!(run(&lu, &start_stop(true, false, 0)).0, Response::good(0));
}
