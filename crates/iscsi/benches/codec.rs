//! Micro-benchmarks of the PDU codec and CRC32C digests (public API only).
//!
//! `cargo bench -p rtgt-iscsi --bench codec -- --quick`
//!
//! - `bhs/decode/*`: a 48-byte BHS from the receive buffer to a typed initiator
//!   PDU (`Bhs::from_prefix` + `InitiatorPdu::decode`), as `handle_input` does.
//! - `bhs/encode/*`: the target's answers, SCSI Response and Data-In headers (the
//!   crate is target side: it decodes SCSI Command and Data-Out, encodes the rest).
//! - `handle_input/*`: one receive buffer holding 64 complete PDUs back to back,
//!   fed to a logged-in `Connection` as a reactor does per wakeup. Only
//!   `handle_input` is timed; completing the commands, flushing the answers and
//!   recycling the buffers happen outside the measurement, so every iteration
//!   starts from the same warm, empty connection.
//! - `crc32c/*`: `pdu::crc32c_of` (the `crc32c` crate) over a BHS, a typical
//!   data segment and the largest default data segment.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtgt_iscsi::pdu::{
    self, Bhs, DataIn, InitiatorPdu, Opcode, SnFields, BHS_LEN, FLAG_RESIDUAL_UNDERFLOW,
};
use rtgt_iscsi::{CommandResponse, Connection, Event, LoginAccept, Residual, TargetConfig};

const LUN1: u64 = 0x0001_0000_0000_0000;
/// PDUs per receive buffer in the `handle_input` benchmarks.
const BATCH: u32 = 64;
const BLOCK_BYTES: u32 = 4096;

fn scsi_command_bhs(itt: u32, cmd_sn: u32, write: bool, data_len: usize) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::SCSI_COMMAND, false);
    // F, R or W, ATTR = SIMPLE.
    b.set_flags(0x80 | if write { 0x20 } else { 0x40 } | 0x01);
    b.set_data_segment_len(data_len);
    b.set_u64(8, LUN1);
    b.set_u32(16, itt);
    b.set_u32(20, BLOCK_BYTES);
    b.set_u32(24, cmd_sn);
    // READ(10) / WRITE(10) of 8 blocks at LBA itt * 8.
    b.0[32] = if write { 0x2a } else { 0x28 };
    b.0[34..38].copy_from_slice(&(itt * 8).to_be_bytes());
    b.0[39..41].copy_from_slice(&8u16.to_be_bytes());
    b
}

fn data_out_bhs() -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(Opcode::SCSI_DATA_OUT, false);
    b.set_flags(0x80);
    b.set_data_segment_len(8192);
    b.set_u64(8, LUN1);
    b.set_u32(16, 0x1234);
    b.set_u32(20, 0x42);
    b.set_u32(28, 17);
    b.set_u32(36, 3);
    b.set_u32(40, 3 * 8192);
    b
}

fn bhs_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("bhs");
    let cmd = scsi_command_bhs(7, 99, false, 0).0;
    g.bench_function("decode/scsi_command", |b| {
        b.iter(|| InitiatorPdu::decode(&Bhs::from_prefix(black_box(&cmd[..])).unwrap()))
    });
    let dout = data_out_bhs().0;
    g.bench_function("decode/data_out", |b| {
        b.iter(|| InitiatorPdu::decode(&Bhs::from_prefix(black_box(&dout[..])).unwrap()))
    });
    let sn = SnFields {
        stat_sn: 1000,
        exp_cmd_sn: 2000,
        max_cmd_sn: 2127,
    };
    g.bench_function("encode/scsi_response", |b| {
        b.iter(|| {
            pdu::encode_scsi_response(
                black_box(7),
                FLAG_RESIDUAL_UNDERFLOW,
                0,
                0,
                black_box(sn),
                3,
                512,
            )
        })
    });
    let d = DataIn {
        final_bit: true,
        status: Some(0),
        residual_flags: 0,
        residual: 0,
        lun: LUN1,
        itt: 7,
        data_sn: 3,
        buffer_offset: 3 * 8192,
        data_len: 8192,
    };
    g.bench_function("encode/data_in", |b| {
        b.iter(|| pdu::encode_data_in(black_box(&d), black_box(sn)))
    });
    g.finish();
}

/// A connection in full feature phase (normal session, no digests), logged in
/// through the public API in one operational-stage Login Request.
fn logged_in(now: Instant) -> Connection<Vec<u8>> {
    let mut c = Connection::new(TargetConfig::default(), now);
    let keys = b"InitiatorName=iqn.1994-05.com.example:bench\0\
        TargetName=iqn.2024-01.org.rtgt:bench\0SessionType=Normal\0\
        HeaderDigest=None\0DataDigest=None\0InitialR2T=No\0ImmediateData=Yes\0\
        MaxRecvDataSegmentLength=262144\0";
    let mut b = Bhs::default();
    b.set_opcode(Opcode::LOGIN_REQUEST, true);
    b.set_flags(0x80 | (1 << 2) | 3); // T, CSG 1, NSG 3
    b.0[8..14].copy_from_slice(&[0x80, 0x12, 0x34, 0x56, 0, 1]);
    b.set_u32(16, 1);
    b.set_u32(24, 1);
    b.set_data_segment_len(keys.len());
    let mut bytes = b.0.to_vec();
    bytes.extend_from_slice(keys);
    bytes.resize(pdu::pad4(bytes.len()), 0);
    let n = c
        .handle_input(&bytes, now, &mut |n| Some(vec![0; n]))
        .expect("login request");
    assert_eq!(n, bytes.len());
    assert!(matches!(c.poll_event(), Some(Event::Login(_))));
    c.accept_login(LoginAccept {
        tsih: 1,
        target_portal_group_tag: 1,
        target_alias: None,
        chap: None,
    });
    while c.poll_event().is_some() {}
    flush(&mut c);
    assert!(c.is_full_feature(), "login did not complete");
    c
}

fn flush(c: &mut Connection<Vec<u8>>) {
    let mut sink = std::io::sink();
    while c.wants_write() {
        c.write_to(&mut sink).expect("write to sink");
    }
}

/// `BATCH` SCSI Command PDUs back to back (writes carry 4 KiB immediate data)
/// with CmdSN from 1; returns the buffer and each command's CmdSN offset.
fn command_batch(write: bool) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut sn_at = Vec::new();
    let data = vec![0xa5u8; BLOCK_BYTES as usize];
    for itt in 0..BATCH {
        sn_at.push(buf.len() + 24);
        let len = if write { data.len() } else { 0 };
        buf.extend_from_slice(&scsi_command_bhs(itt, 1 + itt, write, len).0);
        if write {
            buf.extend_from_slice(&data);
        }
    }
    (buf, sn_at)
}

fn handle_input(c: &mut Criterion) {
    let mut g = c.benchmark_group("handle_input");
    for (name, write) in [("64x_read10", false), ("64x_write10_4k_immediate", true)] {
        let (mut buf, sn_at) = command_batch(write);
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| {
            let now = Instant::now();
            let mut conn = logged_in(now);
            let mut cmd_sn = 1u32;
            // The reactor's buffer pool, recycled through poll_free_buffer.
            let mut pool: Vec<Vec<u8>> = Vec::new();
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    for (i, &at) in sn_at.iter().enumerate() {
                        buf[at..at + 4].copy_from_slice(&(cmd_sn + i as u32).to_be_bytes());
                    }
                    cmd_sn += BATCH;
                    let mut alloc = |n: usize| Some(pool.pop().unwrap_or_else(|| vec![0; n]));
                    let start = Instant::now();
                    let n = conn
                        .handle_input(black_box(&buf), now, &mut alloc)
                        .expect("handle_input");
                    timed += start.elapsed();
                    assert_eq!(n, buf.len());
                    let mut commands = 0;
                    while let Some(ev) = conn.poll_event() {
                        let Event::Command(cmd) = ev else {
                            panic!("unexpected event {ev:?}");
                        };
                        commands += 1;
                        conn.complete_command(
                            cmd.itt,
                            CommandResponse {
                                status: 0,
                                sense: Vec::new(),
                                data: cmd.data,
                                data_len: 0,
                                residual: Residual::None,
                            },
                        );
                    }
                    assert_eq!(commands, BATCH);
                    flush(&mut conn);
                    while let Some(b) = conn.poll_free_buffer() {
                        pool.push(b);
                    }
                }
                timed
            });
        });
    }
    g.finish();
}

fn crc32c(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for len in [BHS_LEN, 8 << 10, 256 << 10] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            b.iter(|| pdu::crc32c_of(&[black_box(data)]))
        });
    }
    g.finish();
}

criterion_group!(benches, bhs_codec, handle_input, crc32c);
criterion_main!(benches);
