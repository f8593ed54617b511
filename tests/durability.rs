//! `kill -9` of `tgtd` under a write load that syncs, then a restart on the
//! same backing file: every write acknowledged with FUA, and every plain
//! write acknowledged before a SYNCHRONIZE CACHE that returned GOOD, is in
//! the file, block by block.
//!
//! Each block written carries its LBA, a generation (increasing per write
//! of its writer), the writer and a checksum, so the check can tell a block
//! that was never written (zeros) from a stale one (an older generation),
//! a misplaced one (another LBA) and a torn or invented one (bad checksum).
//!
//! SIGKILL ends the process only: the page cache survives it, so what this
//! proves is that the daemon wrote an acknowledged (and synced) block to
//! the file before it answered GOOD, not that the medium holds it after a
//! power cut. The backing file lives on a real filesystem (`/var/tmp`),
//! not tmpfs, so the file engine's sync path runs as in production.
//!
//! Over raw TCP (`common::raw`): two sessions write at once, one with
//! WRITE(10) FUA=1 (SBC-3 §5.40), one with plain WRITE(10)s followed now
//! and then by SYNCHRONIZE CACHE(10) (SBC-3 §5.24) over the whole medium.

mod common;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::raw::{
    self, LoginParams, R2t, CMD_FINAL, CMD_READ, CMD_WRITE, OP_R2T, OP_SCSI_DATA_IN,
    OP_SCSI_RESPONSE,
};
use common::{Tgtd, TgtdOpts, XorShift};

const IQN: &str = "iqn.2026-12.org.rtgt:durability";
const INITIATOR: &str = "iqn.2026-12.org.rtgt:e2e-durability";
const LUN_SIZE: u64 = 16 << 20;
/// The logical block length the LUN is created with (tgtadm's default).
const BLOCK: usize = 512;
const BLOCKS: u64 = LUN_SIZE / BLOCK as u64;
/// Largest write, in blocks (all of it immediate data: 2 KiB is below
/// every FirstBurstLength and MaxRecvDataSegmentLength a target may pick).
const MAX_WRITE_BLOCKS: u64 = 4;
/// Writes acknowledged (over both writers) before the daemon is killed.
const KILL_AFTER: u64 = 600;
/// Bound on the load before the kill, and on each writer's life.
const LOAD_WAIT: Duration = Duration::from_secs(60);
const WRITER_LIFE: Duration = Duration::from_secs(120);
/// Bound on the killed daemon being reaped.
const DEATH_WAIT: Duration = Duration::from_secs(10);
/// Blocks per READ(10) of the read-back.
const READ_CHUNK: u64 = 128;

/// What every session offers: write data inside the command PDU
/// (ImmediateData=Yes, RFC 7143 §13.11); a target that answers No gets it
/// through R2Ts instead.
const OPERATIONAL: &[(&str, &str)] = &[("InitialR2T", "Yes"), ("ImmediateData", "Yes")];

/// SAM-5 status codes.
const GOOD: u8 = 0x00;

/// SBC-3 operation codes.
const TEST_UNIT_READY: u8 = 0x00;
const READ_CAPACITY_10: u8 = 0x25;
const SYNCHRONIZE_CACHE_10: u8 = 0x35;
/// WRITE(10) byte 1: Force Unit Access (SBC-3 §5.40).
const FUA: u8 = 0x08;

/// The block format: magic, LBA, generation, writer, pattern, checksum.
const MAGIC: &[u8; 8] = b"RTGTDURA";
const SUM_AT: usize = BLOCK - 8;

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The block `writer` writes at `lba` in generation `gen`.
fn encode(lba: u64, gen: u64, writer: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b[16..24].copy_from_slice(&gen.to_le_bytes());
    b[24..32].copy_from_slice(&writer.to_le_bytes());
    XorShift::new(lba.rotate_left(32) ^ gen ^ (writer << 56)).fill(&mut b[32..SUM_AT]);
    let sum = fnv1a(&b[..SUM_AT]);
    b[SUM_AT..].copy_from_slice(&sum.to_le_bytes());
    b
}

/// What a block on disk holds.
#[derive(Debug, PartialEq)]
enum Block {
    /// All zeros: never written.
    Zero,
    /// A whole block of ours: its LBA, generation and writer.
    Ours { lba: u64, gen: u64, writer: u64 },
    /// Anything else: torn, invented or foreign.
    Garbage,
}

fn decode(b: &[u8]) -> Block {
    if b.iter().all(|&x| x == 0) {
        return Block::Zero;
    }
    if &b[..8] != MAGIC || fnv1a(&b[..SUM_AT]) != u64_at(b, SUM_AT) {
        return Block::Garbage;
    }
    Block::Ours {
        lba: u64_at(b, 8),
        gen: u64_at(b, 16),
        writer: u64_at(b, 24),
    }
}

/// A raw session on LUN 1 with one command outstanding at a time.
struct Conn {
    s: TcpStream,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    immediate: bool,
}

/// A command's outcome: its status and the data it returned (the sense
/// data for CHECK CONDITION).
struct Outcome {
    status: u8,
    data: Vec<u8>,
}

impl Conn {
    /// Logs in with an ISID of `tag`'s own and takes the unit attention a
    /// new I_T nexus meets first (SAM-5 §6.3.1) with TEST UNIT READYs.
    fn open(port: u16, tag: u8) -> Result<Conn, String> {
        let mut s = raw::connect(port)?;
        let session = raw::login(
            &mut s,
            &LoginParams {
                initiator: INITIATOR,
                target: IQN,
                isid: [0x80, 0xd0, 0, 0, 0, tag],
                operational: OPERATIONAL,
            },
        )?;
        let mut c = Conn {
            s,
            cmd_sn: session.cmd_sn,
            exp_stat_sn: session.exp_stat_sn,
            itt: u32::from(tag) << 24,
            immediate: session.key("ImmediateData") == Some("Yes"),
        };
        for _ in 0..3 {
            if c.command(&[TEST_UNIT_READY, 0, 0, 0, 0, 0], 0, 0, &[])?
                .status
                == GOOD
            {
                return Ok(c);
            }
        }
        Err("TEST UNIT READY did not return GOOD in three tries".into())
    }

    /// Sends one command (`flags` R or W, `edtl` bytes expected) with
    /// `out` as its write data, and waits for its status.
    fn command(&mut self, cdb: &[u8], flags: u8, edtl: u32, out: &[u8]) -> Result<Outcome, String> {
        self.itt = self.itt.wrapping_add(1);
        let itt = self.itt;
        let mut pdu = raw::scsi_command(
            itt,
            self.cmd_sn,
            self.exp_stat_sn,
            CMD_FINAL | flags,
            edtl,
            cdb,
        )
        .to_vec();
        if self.immediate && !out.is_empty() {
            pdu[5..8].copy_from_slice(&(out.len() as u32).to_be_bytes()[1..]);
            pdu.extend_from_slice(out);
            pdu.resize(pdu.len().div_ceil(4) * 4, 0);
        }
        self.s
            .write_all(&pdu)
            .map_err(|e| format!("send CDB {cdb:02x?}: {e}"))?;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let mut data = vec![0u8; edtl as usize];
        loop {
            let p = raw::read_pdu(&mut self.s)?
                .ok_or_else(|| format!("the target closed the connection (CDB {cdb:02x?})"))?;
            if p.itt() != itt {
                return Err(format!(
                    "PDU {:#04x} for ITT {:#x}, not {itt:#x}",
                    p.opcode(),
                    p.itt()
                ));
            }
            match p.opcode() {
                OP_R2T => {
                    let r2t = R2t::from_pdu(&p).expect("an R2T");
                    let (at, len) = (r2t.offset as usize, r2t.len as usize);
                    let chunk = out
                        .get(at..at + len)
                        .ok_or_else(|| format!("R2T for {len} bytes at {at}"))?;
                    let mut d = raw::data_out(&r2t, self.exp_stat_sn, 0, r2t.offset, r2t.len, true)
                        .to_vec();
                    d.extend_from_slice(chunk);
                    d.resize(d.len().div_ceil(4) * 4, 0);
                    self.s
                        .write_all(&d)
                        .map_err(|e| format!("send Data-Out: {e}"))?;
                }
                OP_SCSI_DATA_IN => {
                    let at = p.field(40) as usize;
                    data.get_mut(at..at + p.data.len())
                        .ok_or_else(|| format!("Data-In of {} bytes at {at}", p.data.len()))?
                        .copy_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        self.exp_stat_sn = p.field(24).wrapping_add(1);
                        return Ok(Outcome {
                            status: p.bhs[3],
                            data,
                        });
                    }
                }
                OP_SCSI_RESPONSE => {
                    self.exp_stat_sn = p.field(24).wrapping_add(1);
                    let status = p.bhs[3];
                    if status != GOOD {
                        // Sense data: a 2-byte SenseLength, then the sense.
                        data = p.data.get(2..).unwrap_or_default().to_vec();
                    }
                    return Ok(Outcome { status, data });
                }
                op => return Err(format!("PDU {op:#04x} for CDB {cdb:02x?}")),
            }
        }
    }

    fn expect_good(
        &mut self,
        what: &str,
        cdb: &[u8],
        flags: u8,
        edtl: u32,
        out: &[u8],
    ) -> Result<Vec<u8>, String> {
        let o = self.command(cdb, flags, edtl, out)?;
        if o.status != GOOD {
            return Err(format!(
                "{what}: status {:#04x}, sense {:02x?}",
                o.status, o.data
            ));
        }
        Ok(o.data)
    }
}

/// How a writer makes its writes durable.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Every WRITE(10) with FUA=1: durable once GOOD.
    Fua,
    /// Plain WRITE(10)s, durable once a later SYNCHRONIZE CACHE(10) is GOOD.
    PlainThenSync,
}

/// What one writer did before its connection died.
#[derive(Default)]
struct WriterLog {
    /// LBA -> generation of the newest write known durable there.
    durable: HashMap<u64, u64>,
    /// LBA -> generation of the newest write sent there (acknowledged or not).
    issued: HashMap<u64, u64>,
    acked: u64,
    syncs: u64,
    /// Why it stopped (the connection dying, after the kill).
    end: String,
}

struct Load {
    acked: AtomicU64,
    killed: AtomicBool,
}

/// Writer `id` writes LBAs in its own half of the LUN, so no two writers
/// touch one block and generations per block only grow.
fn writer(port: u16, id: u64, mode: Mode, load: &Load) -> Result<WriterLog, String> {
    let mut c = Conn::open(port, id as u8 + 1)?;
    let mut log = WriterLog::default();
    let half = BLOCKS / 2;
    let base = id * half;
    let mut rng = XorShift::new(0xd00d_0000 + id);
    let mut gen = 0u64;
    // Acknowledged plain writes not yet covered by a sync: (lba, gen).
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut until_sync = 1 + rng.next_u64() % 8;
    let deadline = Instant::now() + WRITER_LIFE;
    let result = loop {
        if Instant::now() >= deadline {
            break Err("still writing at the end of its life".to_string());
        }
        // Half the writes go to a small hot range, so blocks are
        // overwritten many times and a stale generation shows.
        let span = if rng.next_u64() % 2 == 0 { 64 } else { half };
        let blocks = 1 + rng.next_u64() % MAX_WRITE_BLOCKS;
        let first = rng.next_u64() % (span - blocks + 1);
        gen += 1;
        let mut data = Vec::with_capacity(blocks as usize * BLOCK);
        for lba in base + first..base + first + blocks {
            data.extend_from_slice(&encode(lba, gen, id));
            log.issued.insert(lba, gen);
        }
        let mut cdb = raw::write10((base + first) as u32, blocks as u16);
        if mode == Mode::Fua {
            cdb[1] |= FUA;
        }
        let len = data.len() as u32;
        if let Err(e) = c.expect_good("WRITE(10)", &cdb, CMD_WRITE, len, &data) {
            break Err(e);
        }
        log.acked += 1;
        load.acked.fetch_add(1, Ordering::Relaxed);
        let lbas = (base + first..base + first + blocks).map(|lba| (lba, gen));
        match mode {
            Mode::Fua => log.durable.extend(lbas),
            Mode::PlainThenSync => {
                pending.extend(lbas);
                until_sync -= 1;
                if until_sync == 0 {
                    let sync = [SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    if let Err(e) = c.expect_good("SYNCHRONIZE CACHE(10)", &sync, 0, 0, &[]) {
                        break Err(e);
                    }
                    log.syncs += 1;
                    log.durable.extend(pending.drain(..));
                    until_sync = 1 + rng.next_u64() % 8;
                }
            }
        }
    };
    match result {
        Err(e) if load.killed.load(Ordering::SeqCst) => {
            log.end = e;
            Ok(log)
        }
        Err(e) => Err(format!(
            "writer {id} ({mode:?}) failed before the kill: {e}"
        )),
        Ok(()) => unreachable!(),
    }
}

/// The whole LUN through READ(10)s, after READ CAPACITY(10) says its
/// geometry is what the writers assumed.
fn read_lun(port: u16) -> Result<Vec<u8>, String> {
    let mut c = Conn::open(port, 0x7f)?;
    let cap = c.expect_good(
        "READ CAPACITY(10)",
        &[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        CMD_READ,
        8,
        &[],
    )?;
    let last = u32::from_be_bytes(cap[..4].try_into().expect("4 bytes"));
    let len = u32::from_be_bytes(cap[4..8].try_into().expect("4 bytes"));
    if (u64::from(last) + 1, len as usize) != (BLOCKS, BLOCK) {
        return Err(format!(
            "READ CAPACITY(10): {} blocks of {len} bytes, not {BLOCKS} of {BLOCK}",
            u64::from(last) + 1
        ));
    }
    let mut disk = Vec::with_capacity(LUN_SIZE as usize);
    for lba in (0..BLOCKS).step_by(READ_CHUNK as usize) {
        let n = READ_CHUNK.min(BLOCKS - lba);
        let edtl = (n as usize * BLOCK) as u32;
        let data = c.expect_good(
            "READ(10)",
            &raw::read10(lba as u32, n as u16),
            CMD_READ,
            edtl,
            &[],
        )?;
        disk.extend_from_slice(&data);
    }
    Ok(disk)
}

/// Every durable write is there (whole, at its LBA, this generation or a
/// later one), no block holds a generation never sent to it, no block
/// sits at another LBA, and no block is torn.
fn check(what: &str, disk: &[u8], logs: &[WriterLog]) {
    assert_eq!(disk.len() as u64, LUN_SIZE, "{what}: size");
    let (verified, bad) = problems(disk, logs);
    let durable: usize = logs.iter().map(|l| l.durable.len()).sum();
    if !bad.is_empty() {
        panic!(
            "{what}: {verified} of {durable} durable blocks verified, {} bad blocks:\n{}",
            bad.len(),
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
    }
    assert_eq!(verified, durable, "{what}: durable blocks verified");
}

/// The durable blocks found intact, and what is wrong with the others.
fn problems(disk: &[u8], logs: &[WriterLog]) -> (usize, Vec<String>) {
    let mut bad = Vec::new();
    let mut verified = 0;
    for (lba, b) in (0u64..).zip(disk.chunks(BLOCK)) {
        let owner = (lba / (BLOCKS / 2)) as usize;
        let log = &logs[owner];
        let durable = log.durable.get(&lba).copied();
        let issued = log.issued.get(&lba).copied();
        match (decode(b), durable) {
            (
                Block::Ours {
                    lba: at,
                    gen,
                    writer,
                },
                _,
            ) if at != lba || writer != owner as u64 => {
                bad.push(format!(
                    "LBA {lba}: holds writer {writer}'s block for LBA {at} (generation {gen})"
                ));
            }
            (Block::Ours { gen, .. }, _) if Some(gen) > issued || gen == 0 => {
                bad.push(format!(
                    "LBA {lba}: generation {gen}, but the newest sent there is {issued:?}"
                ));
            }
            (Block::Ours { gen, .. }, Some(want)) if gen < want => {
                bad.push(format!(
                    "LBA {lba}: generation {gen}, older than the durable {want} (a lost acknowledged write)"
                ));
            }
            (Block::Ours { .. }, Some(_)) => verified += 1,
            (Block::Ours { .. }, None) => {}
            (Block::Zero, Some(want)) => {
                bad.push(format!(
                    "LBA {lba}: zeros, but generation {want} was durable (a lost acknowledged write)"
                ));
            }
            (Block::Zero, None) => {}
            (Block::Garbage, _) => {
                bad.push(format!(
                    "LBA {lba}: torn or foreign block (durable {durable:?}, newest sent {issued:?}), starts {:02x?}",
                    &b[..32]
                ));
            }
        }
    }
    (verified, bad)
}

/// A target with LUN 1 on `image`, bound to all initiators.
fn serve(d: &Tgtd, image: &Path) {
    d.new_target(1, IQN);
    d.new_lun(1, 1, image);
    d.bind_all(1);
}

#[test]
fn acknowledged_synced_writes_survive_kill_9() {
    // A real filesystem, not tmpfs, and outside the daemon's temp dir, so
    // the file outlives the killed daemon's harness.
    let work = tempfile::Builder::new()
        .prefix("rtgt-durability-")
        .tempdir_in("/var/tmp")
        .expect("tempdir in /var/tmp");
    let fs = nix::sys::statfs::statfs(work.path()).expect("statfs /var/tmp");
    assert_ne!(
        fs.filesystem_type(),
        nix::sys::statfs::TMPFS_MAGIC,
        "/var/tmp is tmpfs here: the backing file must be on a real filesystem"
    );
    let image = work.path().join("lun.img");
    OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&image)
        .and_then(|f| f.set_len(LUN_SIZE))
        .expect("create the backing file");

    let mut d = Tgtd::start(TgtdOpts::default());
    serve(&d, &image);
    let port = d.port;
    eprintln!(
        "ImmediateData negotiated: {}",
        Conn::open(port, 0x7e).expect("probe session").immediate
    );
    let load = Arc::new(Load {
        acked: AtomicU64::new(0),
        killed: AtomicBool::new(false),
    });
    let writers: Vec<_> = [Mode::Fua, Mode::PlainThenSync]
        .into_iter()
        .enumerate()
        .map(|(id, mode)| {
            let load = Arc::clone(&load);
            thread::spawn(move || writer(port, id as u64, mode, &load))
        })
        .collect();

    let deadline = Instant::now() + LOAD_WAIT;
    while load.acked.load(Ordering::Relaxed) < KILL_AFTER
        && Instant::now() < deadline
        && !writers.iter().any(|w| w.is_finished())
    {
        thread::sleep(Duration::from_millis(5));
    }
    d.assert_alive("under the write load");
    let acked_at_kill = load.acked.load(Ordering::Relaxed);
    load.killed.store(true, Ordering::SeqCst);
    kill(Pid::from_raw(d.pid() as i32), Signal::SIGKILL).expect("kill -9 tgtd");
    let status = d.wait_exit(DEATH_WAIT).expect("tgtd reaped after SIGKILL");
    assert_eq!(
        status.signal(),
        Some(Signal::SIGKILL as i32),
        "tgtd's end: {status:?}"
    );

    let logs: Vec<WriterLog> = writers
        .into_iter()
        .map(|w| match w.join().expect("writer thread") {
            Ok(log) => log,
            Err(e) => panic!("{e}\n--- daemon output ---\n{}", d.log()),
        })
        .collect();
    assert!(
        acked_at_kill >= KILL_AFTER,
        "only {acked_at_kill} writes acknowledged in {LOAD_WAIT:?} before the kill"
    );
    assert!(
        logs[1].syncs > 0,
        "the plain writer's SYNCHRONIZE CACHE never returned before the kill"
    );
    for (id, log) in logs.iter().enumerate() {
        eprintln!(
            "writer {id}: {} writes acknowledged, {} syncs, {} blocks durable; ended by: {}",
            log.acked,
            log.syncs,
            log.durable.len(),
            log.end
        );
    }
    d.stop();

    // The file itself: the page cache outlives a killed process.
    let on_file = std::fs::read(&image).expect("read the backing file");
    check("the backing file", &on_file, &logs);

    // A new daemon on the same file serves the same blocks.
    let d2 = Tgtd::start(TgtdOpts::default());
    serve(&d2, &image);
    let through_target = read_lun(d2.port)
        .unwrap_or_else(|e| panic!("read back: {e}\n--- daemon output ---\n{}", d2.log()));
    check("READ(10) from the restarted tgtd", &through_target, &logs);
    assert!(
        through_target == on_file,
        "the restarted tgtd reads other data than the backing file holds"
    );
}

/// The check itself catches a lost, a stale, a misplaced, a torn and an
/// invented block (no daemon involved).
#[test]
fn the_check_catches_lost_stale_misplaced_torn_and_invented_blocks() {
    // Writer 0 owns the low half of the LUN, so these LBAs.
    let mut logs = [WriterLog::default(), WriterLog::default()];
    let mut disk = vec![0u8; LUN_SIZE as usize];
    for (lba, gen) in [(3u64, 2u64), (4, 5), (5, 1), (6, 7)] {
        logs[0].issued.insert(lba, gen);
        logs[0].durable.insert(lba, gen);
        disk[lba as usize * BLOCK..][..BLOCK].copy_from_slice(&encode(lba, gen, 0));
    }
    // A write sent but never made durable may or may not be there.
    logs[0].issued.insert(9, 4);
    assert_eq!(problems(&disk, &logs), (4, Vec::new()));

    let mut lost = disk.clone();
    lost[3 * BLOCK..][..BLOCK].fill(0);
    let mut stale = disk.clone();
    stale[4 * BLOCK..][..BLOCK].copy_from_slice(&encode(4, 4, 0));
    let mut misplaced = disk.clone();
    misplaced[7 * BLOCK..][..BLOCK].copy_from_slice(&encode(5, 1, 0));
    let mut torn = disk.clone();
    torn[6 * BLOCK + 100] ^= 1;
    let mut invented = disk.clone();
    invented[9 * BLOCK..][..BLOCK].copy_from_slice(&encode(9, 5, 0));
    for (name, bad) in [
        ("lost", lost),
        ("stale", stale),
        ("misplaced", misplaced),
        ("torn", torn),
        ("invented", invented),
    ] {
        let (_, found) = problems(&bad, &logs);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
    }
}
