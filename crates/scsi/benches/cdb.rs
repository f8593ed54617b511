//! Micro-benchmarks of CDB decoding and of the per-command path of a logical
//! unit (public API only).
//!
//! `cargo bench -p rtgt-scsi --bench cdb -- --quick`
//!
//! - `cdb/decode/*`: `Cdb::decode` of common CDBs and of an unsupported opcode
//!   (the error path every unknown command takes). The 16-byte slice is what
//!   iSCSI hands over, whatever the CDB's own length.
//! - `lu/execute/read16_4k`: `LogicalUnit::execute` of READ(16) on a disk LU,
//!   producing an `IoPlan` (admission checks under the LU lock, range checks,
//!   plan building); the POWER ON unit attention is cleared first.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use rtgt_scsi::pr::NexusIdentity;
use rtgt_scsi::{Cdb, Command, IoKind, LogicalUnit, LuConfig, NexusId, Outcome, Status};

fn cdb16(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

fn read10(lba: u32, blocks: u16) -> [u8; 16] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    cdb16(&[0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0])
}

fn rw16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("cdb/decode");
    let cases = [
        ("read10", read10(0x1234, 8)),
        ("write16", rw16(0x8a, 0x1_0000_1234, 8)),
        // INQUIRY, standard data, allocation length 96.
        ("inquiry", cdb16(&[0x12, 0, 0, 0, 96, 0])),
        // 0x02: a 6-byte group-0 opcode no device server implements.
        ("invalid_opcode", cdb16(&[0x02, 0, 0, 0, 0, 0])),
    ];
    for (name, cdb) in cases {
        g.bench_function(name, |b| b.iter(|| Cdb::decode(black_box(&cdb[..]))));
    }
    g.finish();
}

fn execute(c: &mut Criterion) {
    const NEXUS: NexusId = NexusId(1);
    let mut cfg = LuConfig::disk_defaults(1, 1);
    cfg.size = 1 << 30;
    let lu = LogicalUnit::new(1, cfg);
    lu.add_nexus(
        NEXUS,
        NexusIdentity {
            initiator_name: "iqn.1994-05.com.example:bench".to_string(),
            isid: [0x40, 0, 0, 0, 0, 1],
            relative_target_port: 1,
        },
    );
    let mut data_in = vec![0u8; 4096];
    let run = |lu: &LogicalUnit, cdb: &[u8], data_in: &mut [u8]| {
        lu.execute(
            &Command {
                nexus: NEXUS,
                cdb,
                data_out: &[],
            },
            data_in,
        )
    };
    // The first command of a new I_T nexus reports POWER ON, RESET.
    let tur = [0u8; 6];
    match run(&lu, &tur, &mut data_in) {
        Outcome::Done(r) if r.status == Status::CHECK_CONDITION => {}
        other => panic!("expected the POWER ON unit attention, got {other:?}"),
    }
    let read16 = rw16(0x88, 0x1000, 8);
    match run(&lu, &read16, &mut data_in) {
        Outcome::Io(p) if p.kind == IoKind::Read && p.len == 4096 => {}
        other => panic!("expected a read plan, got {other:?}"),
    }
    c.bench_function("lu/execute/read16_4k", |b| {
        b.iter(|| run(&lu, black_box(&read16), &mut data_in))
    });
}

criterion_group!(benches, decode, execute);
criterion_main!(benches);
