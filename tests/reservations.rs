//! Reservations, COMPARE AND WRITE and EXTENDED COPY end to end, through
//! libiscsi (Debian's libiscsi7, driven by `tests/libiscsi_client.py` over
//! ctypes): persistent reservations that survive a tgtd restart when APTPL is
//! set (SPC-4 §5.9.5), COMPARE AND WRITE that never lets two initiators both
//! win (SBC-3 §5.2), and a copy the target makes without the data crossing the
//! network (SPC-4 §6.4).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{libiscsi_client, require, spawn_command, Tgtd, TgtdOpts, ToolOutput};

const IQN: &str = "iqn.2026-11.org.rtgt:reservations";
const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);
const STATUS_GOOD: &str = "status: 0";
const STATUS_CONFLICT: &str = "status: 24";

/// The libiscsi client as `initiator` on LUN 1.
fn client(d: &Tgtd, initiator: &str, commands: &[&str]) -> ToolOutput {
    libiscsi_client(d, IQN, 1, initiator, commands)
}

fn lines(out: &ToolOutput) -> Vec<&str> {
    out.stdout.lines().collect()
}

fn lun_on(d: &Tgtd, path: &Path) {
    d.new_target(1, IQN);
    d.new_lun(1, 1, path);
    d.bind_all(1);
}

fn backing_file(dir: &Path) -> PathBuf {
    let path = dir.join("pr-disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("backing file");
    path
}

#[test]
fn aptpl_reservation_survives_a_restart() {
    require("python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = backing_file(dir.path());

    let mut d = Tgtd::start(TgtdOpts::default());
    lun_on(&d, &disk);
    let out = client(
        &d,
        "iqn.2026-11.org.example:holder",
        &[
            "register", "abc", "aptpl", "--", "reserve", "abc", "1", "--", "write", "5", "11",
        ],
    );
    assert_eq!(
        lines(&out),
        [STATUS_GOOD, STATUS_GOOD, STATUS_GOOD],
        "{}",
        out.stdout
    );
    // Write Exclusive: another initiator may read but not write.
    let out = client(
        &d,
        "iqn.2026-11.org.example:other",
        &["write", "5", "22", "--", "read", "5"],
    );
    assert_eq!(
        lines(&out),
        [STATUS_CONFLICT, STATUS_GOOD, "read: 11"],
        "{}",
        out.stdout
    );
    d.stop();

    // A new daemon on the same backing file: the registration and the
    // reservation are back (SPC-4 §5.9.5: APTPL survives a power loss).
    let mut d = Tgtd::start(TgtdOpts::default());
    lun_on(&d, &disk);
    let out = client(
        &d,
        "iqn.2026-11.org.example:other",
        &[
            "read-keys",
            "--",
            "read-reservation",
            "--",
            "write",
            "5",
            "22",
        ],
    );
    assert_eq!(
        lines(&out),
        [
            STATUS_GOOD,
            "keys: abc",
            STATUS_GOOD,
            "reservation: abc 1",
            STATUS_CONFLICT
        ],
        "{}\n--- daemon ---\n{}",
        out.stdout,
        d.log()
    );
    d.stop();
}

#[test]
fn reservation_without_aptpl_is_gone_after_a_restart() {
    require("python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = backing_file(dir.path());

    let mut d = Tgtd::start(TgtdOpts::default());
    lun_on(&d, &disk);
    let out = client(
        &d,
        "iqn.2026-11.org.example:holder",
        &["register", "abc", "--", "reserve", "abc", "3"],
    );
    assert_eq!(lines(&out), [STATUS_GOOD, STATUS_GOOD], "{}", out.stdout);
    // Exclusive Access: others may not even read.
    let out = client(&d, "iqn.2026-11.org.example:other", &["read", "0"]);
    assert_eq!(lines(&out), [STATUS_CONFLICT], "{}", out.stdout);
    d.stop();

    let mut d = Tgtd::start(TgtdOpts::default());
    lun_on(&d, &disk);
    let out = client(
        &d,
        "iqn.2026-11.org.example:other",
        &[
            "read-keys",
            "--",
            "read-reservation",
            "--",
            "write",
            "0",
            "1",
        ],
    );
    assert_eq!(
        lines(&out),
        [
            STATUS_GOOD,
            "keys: ",
            STATUS_GOOD,
            "reservation: none",
            STATUS_GOOD
        ],
        "{}",
        out.stdout
    );
    d.stop();
}

/// Two initiators increment a counter in block 7 with READ + COMPARE AND WRITE
/// as fast as they can. If both could ever win with the same old value, an
/// increment would be lost and the counter would end below the number of wins.
#[test]
fn compare_and_write_never_lets_two_initiators_both_win() {
    require("python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = backing_file(dir.path());
    let mut d = Tgtd::start(TgtdOpts::default());
    lun_on(&d, &disk);

    const ROUNDS: u32 = 300;
    let rounds = ROUNDS.to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libiscsi_client.py");
    let spawn = |name: &str| {
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(format!("127.0.0.1:{}", d.port))
            .arg(IQN)
            .arg("1")
            .arg(name)
            .args(["caw-count", "7", &rounds]);
        spawn_command(cmd, "libiscsi_client.py caw-count")
    };
    let a = spawn("iqn.2026-11.org.example:a");
    let b = spawn("iqn.2026-11.org.example:b");
    let mut wins = 0u64;
    let mut misses = 0u64;
    for out in [a.wait(TIMEOUT), b.wait(TIMEOUT)] {
        assert!(out.success(), "{}", out.describe("caw-count"));
        let line = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("caw: "))
            .unwrap_or_else(|| panic!("no result:\n{}", out.stdout));
        let mut n = line.split_whitespace().map(|x| x.parse::<u64>().unwrap());
        let (w, m) = (n.next().unwrap(), n.next().unwrap());
        assert_eq!(w + m, u64::from(ROUNDS), "every round answered: {line}");
        wins += w;
        misses += m;
    }
    // The counter is the first 8 bytes of block 7, little endian.
    d.stop();
    let data = std::fs::read(&disk).expect("read backing file");
    let counter = u64::from_le_bytes(data[7 * 512..7 * 512 + 8].try_into().unwrap());
    assert_eq!(
        counter, wins,
        "{wins} COMPARE AND WRITEs won but the counter reads {counter}: an update was lost"
    );
    assert!(wins > 0, "no COMPARE AND WRITE ever won ({misses} misses)");
}

#[test]
fn extended_copy_copies_blocks_inside_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = backing_file(dir.path());
    let mut d = Tgtd::start(TgtdOpts::default());
    lun_on(&d, &disk);
    let out = client(
        &d,
        "iqn.2026-11.org.example:copier",
        &[
            "write", "100", "aa", "--", "write", "101", "bb", "--", "xcopy", "100", "200", "2",
            "--", "read", "200", "--", "read", "201", "--", "read", "202",
        ],
    );
    assert_eq!(
        lines(&out),
        [
            STATUS_GOOD,
            STATUS_GOOD,
            STATUS_GOOD,
            STATUS_GOOD,
            "read: aa",
            STATUS_GOOD,
            "read: bb",
            STATUS_GOOD,
            "read: 0"
        ],
        "{}",
        out.stdout
    );
    d.stop();
}
