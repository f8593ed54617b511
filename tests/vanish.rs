//! An initiator that vanishes in the middle of its writes (R2Ts
//! outstanding, a Data-Out cut off halfway) leaves nothing behind in the
//! target: `tgtadm` lists no session, connection or I_T nexus of it, the
//! daemon holds no descriptor for it, its task buffers go back (the
//! daemon's resident memory levels off over hundreds of such initiators),
//! and the next initiator is served as before.
//!
//! Over raw TCP (`common::raw`), because no initiator tool dies this way on
//! purpose.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::RangeInclusive;
use std::thread;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};

use common::raw::{
    self, LoginParams, R2t, Session, BHS_LEN, CMD_FINAL, CMD_READ, CMD_WRITE, OP_R2T,
    OP_SCSI_DATA_IN, OP_SCSI_RESPONSE,
};
use common::{require, require_qemu_iscsi, run_tool, Tgtd, TgtdOpts, XorShift};

const IQN: &str = "iqn.2026-11.org.rtgt:vanish";
const INITIATOR: &str = "iqn.2026-11.org.rtgt:e2e-vanish";
const LUN_SIZE: u64 = 64 << 20;
const BLOCK: u32 = 512;
/// Length of every write: one 1 MiB task buffer at the target.
const WRITE_LEN: u32 = 1 << 20;
/// The MaxBurstLength offered: a write takes four R2Ts.
const BURST: u32 = 256 << 10;
/// Writes each vanishing initiator sends.
const COMMANDS: u32 = 4;
/// What every session here offers: write data only when solicited by an
/// R2T (InitialR2T=Yes, ImmediateData=No; RFC 7143 §13.10, §13.11), all
/// four R2Ts of a write outstanding at once (MaxOutstandingR2T, §13.17),
/// and room for a burst in every Data-In (MaxRecvDataSegmentLength, §13.12).
const OPERATIONAL: &[(&str, &str)] = &[
    ("InitialR2T", "Yes"),
    ("ImmediateData", "No"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("MaxOutstandingR2T", "4"),
    ("MaxRecvDataSegmentLength", "262144"),
];
/// Vanishing initiators at a time.
const WORKERS: u32 = 4;
const WARM_UP_ROUNDS: u32 = 50;
const ROUNDS: u32 = 200;
/// Bound on how long the dead connections may take to disappear: a
/// liveness bound, not a timing assertion.
const CLEAN_WAIT: Duration = Duration::from_secs(30);
/// RSS the daemon may gain over the 200 rounds after the warm-up.
///
/// What it may keep legitimately was already reached in the warm-up, which
/// ran the same rounds: its reactors' buffer pools (at most 8 MiB of idle
/// buffers per size class each, crates/backing/src/buf.rs) and allocator
/// slack; 16 MiB is room for noise. A leak does not fit in it. RSS counts
/// only pages written, and each of the 160 rounds that send data leaves
/// the second write's buffer with at least 256 KiB written, so leaking
/// just that buffer would add at least 40 MiB; leaking the first write's
/// (all 1 MiB written, its write at the store or done when the initiator
/// goes) 160 MiB.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 << 10;

/// Where in its writes an initiator stops.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cut {
    /// Right after the commands, before reading any R2T.
    BeforeData,
    /// A Data-Out header promising a burst, then half of it: the target
    /// receives the rest straight into the task's buffer, and waits.
    HalfPdu,
    /// A Data-Out short of its last 4 KiB (less than the target places
    /// directly: it waits in the receive buffer).
    AllButTheEnd,
    /// Half of a Data-Out header.
    HalfHeader,
}

/// How an initiator goes away.
#[derive(Clone, Copy, Debug)]
enum Vanish {
    /// close(2): a FIN.
    Close,
    /// shutdown(SHUT_WR), then the target must close its side.
    HalfClose,
    /// SO_LINGER 0, then close(2): a RST.
    Reset,
}

impl Vanish {
    /// Goes away from `s` (closed when dropped at the end).
    fn apply(self, mut s: TcpStream) -> Result<(), String> {
        match self {
            Vanish::Close => Ok(()),
            Vanish::Reset => setsockopt(
                &s,
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .map_err(|e| format!("SO_LINGER: {e}")),
            Vanish::HalfClose => {
                s.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                // The target may still answer the first write; then it
                // must close.
                s.set_read_timeout(Some(Duration::from_secs(1)))
                    .map_err(|e| format!("set a read timeout: {e}"))?;
                let deadline = Instant::now() + CLEAN_WAIT;
                let mut sink = [0u8; 4096];
                loop {
                    match s.read(&mut sink) {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                            ) =>
                        {
                            return Ok(())
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => return Err(format!("read after shutdown: {e}")),
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "the target still holds a half-closed connection {CLEAN_WAIT:?} later"
                        ));
                    }
                }
            }
        }
    }
}

/// Round `round`'s cut and way out: the three ways out with each of the
/// three cuts in nine rounds, and every fifth initiator gone before data.
fn plan(round: u32) -> (Cut, Vanish) {
    let vanish = [Vanish::Close, Vanish::HalfClose, Vanish::Reset][(round % 3) as usize];
    let cut = if round % 5 == 4 {
        Cut::BeforeData
    } else {
        [Cut::HalfPdu, Cut::AllButTheEnd, Cut::HalfHeader][(round / 3 % 3) as usize]
    };
    (cut, vanish)
}

/// The login of round `round`: an ISID of its own, or the target would
/// reinstate (end) an earlier session instead (RFC 7143 §6.3.5).
fn login_params(round: u32) -> LoginParams<'static> {
    let r = round.to_be_bytes();
    LoginParams {
        initiator: INITIATOR,
        target: IQN,
        isid: [0x80, 0x76, r[0], r[1], r[2], r[3]],
        operational: OPERATIONAL,
    }
}

/// The target agreed to what [`OPERATIONAL`] offers (the target's own
/// MaxRecvDataSegmentLength takes a burst in one Data-Out).
fn check_negotiated(session: &Session) -> Result<(), String> {
    for (key, want) in [
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxBurstLength", "262144"),
        ("MaxOutstandingR2T", "4"),
    ] {
        if session.key(key) != Some(want) {
            return Err(format!(
                "login: {key}={:?}, not {want}; the target answered {:?}",
                session.key(key),
                session.keys
            ));
        }
    }
    let mrdsl = session
        .key("MaxRecvDataSegmentLength")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(8192);
    if mrdsl < BURST {
        return Err(format!(
            "the target takes Data-Out segments of {mrdsl} bytes only"
        ));
    }
    Ok(())
}

fn itt(command: u32) -> u32 {
    0x100 + command
}

/// A raw session as [`OPERATIONAL`] negotiates it, for round `round`,
/// that has taken its unit attention: a new I_T nexus's first command
/// meets POWER ON (SAM-5 §6.3.1), so a TEST UNIT READY goes first and
/// writes reach the store. Returns the next CmdSN and ExpStatSN.
fn log_in(port: u16, round: u32) -> Result<(TcpStream, u32, u32), String> {
    let mut s = raw::connect(port)?;
    let session = raw::login(&mut s, &login_params(round))?;
    check_negotiated(&session)?;
    let (cmd_sn, exp) = (session.cmd_sn, session.exp_stat_sn);
    s.write_all(&raw::scsi_command(1, cmd_sn, exp, CMD_FINAL, 0, &[0; 6]))
        .map_err(|e| format!("send TEST UNIT READY: {e}"))?;
    let p = next_pdu(&mut s)?;
    status_of(&p, 1)?.ok_or("TEST UNIT READY: no status")?;
    Ok((s, cmd_sn.wrapping_add(1), p.field(24).wrapping_add(1)))
}

fn next_pdu(s: &mut TcpStream) -> Result<raw::Pdu, String> {
    raw::read_pdu(s)?.ok_or_else(|| "the target closed the connection".to_string())
}

/// Reads the R2Ts of the writes `itts`: each must be asked for whole, in
/// bursts, all at once. Sorted by task and offset.
fn read_r2ts(s: &mut TcpStream, itts: &[u32]) -> Result<Vec<R2t>, String> {
    let per_write = WRITE_LEN / BURST;
    let mut r2ts = Vec::new();
    while r2ts.len() < itts.len() * per_write as usize {
        let p = raw::read_pdu(s)?.ok_or("the target closed instead of sending R2Ts")?;
        if p.opcode() != OP_R2T {
            return Err(format!(
                "PDU {:#04x} (ITT {:#x}) while waiting for R2Ts",
                p.opcode(),
                p.itt()
            ));
        }
        r2ts.extend(R2t::from_pdu(&p));
    }
    r2ts.sort_by_key(|r| (r.itt, r.offset));
    let asked: Vec<(u32, u32, u32)> = r2ts.iter().map(|r| (r.itt, r.offset, r.len)).collect();
    let expected: Vec<(u32, u32, u32)> = itts
        .iter()
        .flat_map(|&itt| (0..per_write).map(move |i| (itt, i * BURST, BURST)))
        .collect();
    if asked != expected {
        return Err(format!("R2Ts (ITT, offset, length) {asked:x?}"));
    }
    Ok(r2ts)
}

/// The whole burst `r2t` asks for, in one Data-Out.
fn send_burst(s: &mut TcpStream, r2t: &R2t, exp_stat_sn: u32, data: &[u8]) -> Result<(), String> {
    let header = raw::data_out(r2t, exp_stat_sn, 0, r2t.offset, r2t.len, true);
    s.write_all(&header)
        .and_then(|_| s.write_all(&data[..r2t.len as usize]))
        .map_err(|e| format!("send a Data-Out: {e}"))
}

/// One initiator that vanishes mid-write. It logs in ([`log_in`]), sends
/// [`COMMANDS`] writes of 1 MiB (WRITE(10) and WRITE(16) in turn) and reads their R2Ts;
/// sends all of the first write's data (its write goes to the store and
/// may still be there when the connection dies) and the first burst of
/// the second; cuts the second's next Data-Out as [`plan`] says; leaves
/// the R2Ts of the other two outstanding; runs `before_vanishing`; goes.
fn vanishing_initiator(
    port: u16,
    round: u32,
    before_vanishing: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let (cut, vanish) = plan(round);
    let (mut s, cmd_sn, exp) = log_in(port, round)?;
    let blocks = WRITE_LEN / BLOCK;
    let slots = (LUN_SIZE / u64::from(WRITE_LEN)) as u32;
    let mut commands = Vec::new();
    for i in 0..COMMANDS {
        let lba = (round * COMMANDS + i) % slots * blocks;
        let cdb = if i % 2 == 0 {
            raw::write10(lba, blocks as u16).to_vec()
        } else {
            raw::write16(lba.into(), blocks).to_vec()
        };
        let flags = CMD_FINAL | CMD_WRITE;
        let bhs = raw::scsi_command(itt(i), cmd_sn + i, exp, flags, WRITE_LEN, &cdb);
        commands.extend_from_slice(&bhs);
    }
    s.write_all(&commands)
        .map_err(|e| format!("send the writes: {e}"))?;

    if cut != Cut::BeforeData {
        let itts: Vec<u32> = (0..COMMANDS).map(itt).collect();
        let r2ts = read_r2ts(&mut s, &itts)?;
        let data = vec![round as u8; BURST as usize];
        for r2t in r2ts.iter().filter(|r| r.itt == itt(0)) {
            send_burst(&mut s, r2t, exp, &data)?;
        }
        let second: Vec<&R2t> = r2ts.iter().filter(|r| r.itt == itt(1)).collect();
        send_burst(&mut s, second[0], exp, &data)?;
        let r2t = second[1];
        let header = raw::data_out(r2t, exp, 0, r2t.offset, r2t.len, true);
        let len = r2t.len as usize;
        let partial = match cut {
            Cut::HalfPdu => [&header[..], &data[..len / 2]].concat(),
            Cut::AllButTheEnd => [&header[..], &data[..len - 4096]].concat(),
            _ => header[..BHS_LEN / 2].to_vec(),
        };
        s.write_all(&partial)
            .map_err(|e| format!("send part of a Data-Out: {e}"))?;
    }
    before_vanishing()?;
    vanish.apply(s)
}

/// Runs the vanishing initiators of `rounds`, [`WORKERS`] at a time.
fn run_rounds(d: &Tgtd, rounds: RangeInclusive<u32>) {
    let port = d.port;
    let failures: Vec<String> = thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let mine = rounds.clone().filter(move |r| r % WORKERS == w);
                scope.spawn(move || {
                    for round in mine {
                        vanishing_initiator(port, round, || Ok(()))
                            .map_err(|e| format!("round {round} {:?}: {e}", plan(round)))?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("a worker panicked".to_string()),
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "vanishing initiators failed:\n{}\n--- daemon ---\n{}",
        failures.join("\n"),
        d.log()
    );
}

fn conn_show(d: &Tgtd) -> String {
    d.adm_ok(&[
        "--lld", "iscsi", "--mode", "conn", "--op", "show", "--tid", "1",
    ])
}

fn target_show(d: &Tgtd) -> String {
    d.adm_ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"])
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Waits, at most [`CLEAN_WAIT`], until `tgtadm` lists no connection of
/// target 1 and no I_T nexus, and the daemon holds at most `fds` open
/// descriptors when given; panics with what is left otherwise.
fn wait_until_clean(d: &mut Tgtd, fds: Option<usize>, when: &str) {
    let deadline = Instant::now() + CLEAN_WAIT;
    loop {
        d.assert_alive(when);
        let conns = conn_show(d);
        let targets = target_show(d);
        let open = open_fds(d.pid());
        let sessions = conns.lines().filter(|l| l.starts_with("Session:")).count();
        let nexuses = targets
            .lines()
            .filter(|l| l.trim_start().starts_with("I_T nexus:"))
            .count();
        let fds_closed = match fds {
            Some(fds) => open <= fds,
            None => true,
        };
        if sessions == 0 && nexuses == 0 && fds_closed {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{when}: {CLEAN_WAIT:?} later the target still has {sessions} connections, \
                 {nexuses} I_T nexuses and {open} descriptors (expected at most {fds:?})\n\
                 --- conn show ---\n{conns}\n--- target show ---\n{targets}\n--- daemon ---\n{}",
                d.log()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A SCSI Response or a Data-In carrying status, for task `itt`: its status.
fn status_of(p: &raw::Pdu, itt: u32) -> Result<Option<u8>, String> {
    if p.itt() != itt {
        return Err(format!("a PDU for ITT {:#x}, not {itt:#x}", p.itt()));
    }
    Ok(match p.opcode() {
        OP_SCSI_RESPONSE => Some(p.bhs[3]),
        OP_SCSI_DATA_IN if p.bhs[1] & 0x01 != 0 => Some(p.bhs[3]),
        OP_SCSI_DATA_IN => None,
        op => return Err(format!("PDU {op:#04x} for ITT {itt:#x}")),
    })
}

/// A whole 1 MiB write through R2Ts and its read back, over a session
/// negotiated like the vanished ones: the path they abandoned still works
/// and the data is right.
fn write_and_read_back(port: u16) -> Result<(), String> {
    const GOOD: u8 = 0;
    let (mut s, cmd_sn, exp) = log_in(port, u32::MAX)?;
    let blocks = WRITE_LEN / BLOCK;
    let lba = 7 * blocks;
    let mut data = vec![0u8; WRITE_LEN as usize];
    XorShift::new(0x7a_4e15).fill(&mut data);
    let flags = CMD_FINAL | CMD_WRITE;
    let cdb = raw::write16(lba.into(), blocks);
    s.write_all(&raw::scsi_command(2, cmd_sn, exp, flags, WRITE_LEN, &cdb))
        .map_err(|e| format!("send WRITE(16): {e}"))?;
    for r2t in read_r2ts(&mut s, &[2])? {
        send_burst(&mut s, &r2t, exp, &data[r2t.offset as usize..])?;
    }
    let p = next_pdu(&mut s)?;
    match status_of(&p, 2)? {
        Some(GOOD) => {}
        status => {
            return Err(format!(
                "WRITE(16): status {status:?}, sense {:02x?}",
                p.data
            ))
        }
    }
    let exp = p.field(24).wrapping_add(1);

    let flags = CMD_FINAL | CMD_READ;
    let cdb = raw::read10(lba, blocks as u16);
    let bhs = raw::scsi_command(3, cmd_sn + 1, exp, flags, WRITE_LEN, &cdb);
    s.write_all(&bhs)
        .map_err(|e| format!("send READ(10): {e}"))?;
    let mut back = vec![0u8; WRITE_LEN as usize];
    loop {
        let p = next_pdu(&mut s)?;
        if p.opcode() == OP_SCSI_DATA_IN {
            let at = p.field(40) as usize;
            back.get_mut(at..at + p.data.len())
                .ok_or_else(|| format!("Data-In of {} bytes at {at}", p.data.len()))?
                .copy_from_slice(&p.data);
        }
        match status_of(&p, 3)? {
            None => {}
            Some(GOOD) => break,
            Some(status) => return Err(format!("READ(10): status {status:#04x}")),
        }
    }
    if back != data {
        return Err("READ(10) returned other data than WRITE(16) wrote".into());
    }
    Ok(())
}

#[test]
fn initiators_that_vanish_mid_write_leave_nothing_behind() {
    require("qemu-io");
    require_qemu_iscsi();
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, LUN_SIZE);
    let pid = d.pid();
    let rss_start = raw::rss_kib(pid);

    // While a vanishing initiator lives, tgtadm lists it: the empty
    // listings below mean something.
    vanishing_initiator(d.port, 0, || {
        let (conns, targets) = (conn_show(&d), target_show(&d));
        if !conns.contains(&format!("Initiator: {INITIATOR}")) {
            return Err(format!("conn show does not list a live session:\n{conns}"));
        }
        if !targets.contains("I_T nexus:") {
            return Err(format!("target show lists no I_T nexus:\n{targets}"));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the first initiator: {e}\n--- daemon ---\n{}", d.log()));
    wait_until_clean(&mut d, None, "after the first initiator");

    run_rounds(&d, 1..=WARM_UP_ROUNDS);
    wait_until_clean(&mut d, None, "after the warm-up");
    let fds_warm = open_fds(pid);
    let rss_warm = raw::rss_kib(pid);

    run_rounds(&d, WARM_UP_ROUNDS + 1..=WARM_UP_ROUNDS + ROUNDS);
    wait_until_clean(&mut d, Some(fds_warm), "after the rounds");
    let rss_after = raw::rss_kib(pid);
    println!(
        "tgtd RSS: {rss_start} KiB at start, {rss_warm} KiB after {WARM_UP_ROUNDS} vanished \
         initiators, {rss_after} KiB after {ROUNDS} more; {fds_warm} descriptors"
    );
    assert!(
        rss_after <= rss_warm + RSS_GROWTH_LIMIT_KIB,
        "tgtd grew from {rss_warm} KiB to {rss_after} KiB over {ROUNDS} vanished initiators"
    );

    // The next initiators are served: ours over the same R2T path, then
    // QEMU's.
    write_and_read_back(d.port)
        .unwrap_or_else(|e| panic!("after the rounds: {e}\n--- daemon ---\n{}", d.log()));
    let lun = d.qemu_opts(IQN, 1, "");
    let out = run_tool(
        "qemu-io",
        &[
            "--image-opts",
            &lun,
            "-c",
            "write -P 0x5a 8M 1M",
            "-c",
            "read -P 0x5a 8M 1M",
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.success() && !out.stdout.contains("verification failed"),
        "{}\n--- daemon ---\n{}",
        out.describe("qemu-io after the rounds"),
        d.log()
    );
    wait_until_clean(&mut d, Some(fds_warm), "at the end");
}
