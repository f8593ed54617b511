//! Media faults end to end: what an initiator hears when the store under a
//! logical unit fails. libiscsi (through `tests/libiscsi_client.py`) writes
//! and reads over loopback while the kernel makes the store fail for real:
//!
//! * a backing file on a full file system (a small tmpfs): ENOSPC;
//! * a file system shut down under the daemon (FS_IOC_SHUTDOWN on ext4): EIO
//!   for every read, write and flush of a file on it, or of a loop device
//!   on such a file;
//!
//! Each failure must end the command with CHECK CONDITION and the sense SBC-3
//! and SPC-4 give it (never a hang: every client run is bounded; never a
//! crash), data written before must read back, and the daemon must go on
//! serving its other LUNs.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use common::{libiscsi_client, require, run_tool, Tgtd, TgtdOpts};

const MIB: u64 = 1 << 20;
/// The client's block size.
const BLOCK: u64 = 512;
/// Bound on one run of a system tool (mount, losetup, mkfs).
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The target whose LUN 1 sits on the failing store.
const IQN: &str = "iqn.2026-11.org.rtgt:fault-media";
/// A target on a healthy file in the same daemon.
const HEALTHY_IQN: &str = "iqn.2026-11.org.rtgt:fault-healthy";
const INITIATOR: &str = "iqn.2026-11.org.example:fault-media";

const GOOD: &str = "status: 0";
const CHECK_CONDITION: &str = "status: 2";
/// DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h): a thin
/// provisioned LU that cannot map the LBAs a write needs (SBC-3 §4.7.3.6).
const SPACE_ALLOCATION_FAILED: &str = "sense: 07 27 07";
/// MEDIUM ERROR / WRITE ERROR (0Ch/00h, SPC-4 §4.5.6).
const WRITE_ERROR: &str = "sense: 03 0c 00";
/// MEDIUM ERROR / UNRECOVERED READ ERROR (11h/00h, SPC-4 §4.5.6).
const UNRECOVERED_READ_ERROR: &str = "sense: 03 11 00";

/// Runs the libiscsi client on LUN 1 of `iqn` with `script`, its commands
/// separated by ` -- ` (see `tests/libiscsi_client.py`); its output lines.
fn client(d: &Tgtd, iqn: &str, script: &str) -> Vec<String> {
    let commands: Vec<&str> = script.split_whitespace().collect();
    let out = libiscsi_client(d, iqn, 1, INITIATOR, &commands);
    out.stdout.lines().map(str::to_owned).collect()
}

/// Runs a system tool, panicking with its output unless it succeeds.
fn sh(cmd: &str, args: &[&str]) -> String {
    let out = run_tool(cmd, args, TOOL_TIMEOUT);
    assert!(
        out.success(),
        "{}",
        out.describe(&format!("{cmd} {}", args.join(" ")))
    );
    out.stdout
}

fn sparse_file(path: &Path, size: u64) {
    File::create(path)
        .and_then(|f| f.set_len(size))
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// A second target on a healthy file, for [`assert_still_serving`].
fn healthy_target(d: &Tgtd) {
    d.new_target_with_lun(2, HEALTHY_IQN, 16 * MIB);
}

/// The daemon is alive and the healthy target still reads and writes.
fn assert_still_serving(d: &mut Tgtd) {
    d.assert_alive("after the media fault");
    let out = client(d, HEALTHY_IQN, "write 9 77 -- read 9");
    assert_eq!(out, [GOOD, GOOD, "read: 77"], "healthy LUN");
    d.assert_alive("after serving the healthy LUN");
}

/// A file system mounted on a temporary directory, unmounted on drop (also
/// when the test panics). Declare it before the `Tgtd` whose LUN lives on
/// it: locals drop in reverse order, so the daemon, which holds the file
/// open, is gone before the unmount.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// `mount ARGS... DIR`.
    fn new(args: &[&str]) -> Mount {
        require("mount");
        require("umount");
        let dir = tempfile::Builder::new()
            .prefix("rtgt-fault-mnt-")
            .tempdir()
            .expect("mount point");
        let target = dir.path().to_string_lossy().into_owned();
        let mut full = args.to_vec();
        full.push(&target);
        sh("mount", &full);
        Mount { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = self.dir.path().to_string_lossy().into_owned();
        if !run_tool("umount", &[&target], TOOL_TIMEOUT).success() {
            // Still busy: detach it now, the kernel frees it when unused.
            let _ = run_tool("umount", &["-l", &target], TOOL_TIMEOUT);
        }
    }
}

/// A loop device on a file, detached on drop.
struct LoopDevice {
    dev: String,
}

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        require("losetup");
        let dev = sh("losetup", &["--find", "--show", &file.to_string_lossy()]);
        LoopDevice {
            dev: dev.trim().to_owned(),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run_tool("losetup", &["-d", &self.dev], TOOL_TIMEOUT);
    }
}

/// FS_IOC_SHUTDOWN (linux/fs.h, `_IOR('X', 125, __u32)`) with
/// FS_SHUTDOWN_FLAGS_NOLOGFLUSH: the file system stops at once, as after a
/// fatal error of its device, and every later read, write and fsync of its
/// files fails with EIO.
fn shut_down(fs: &Path) {
    const FS_IOC_SHUTDOWN: u32 = 0x8004_587D;
    const FS_SHUTDOWN_FLAGS_NOLOGFLUSH: u32 = 2;
    let dir = File::open(fs).expect("open the mount point");
    let flags = FS_SHUTDOWN_FLAGS_NOLOGFLUSH;
    // SAFETY: FS_IOC_SHUTDOWN reads one u32 through the pointer, which points
    // to a live local; the descriptor is open for the call.
    let r =
        unsafe { nix::libc::ioctl(dir.as_raw_fd(), FS_IOC_SHUTDOWN as _, &flags as *const u32) };
    assert_eq!(r, 0, "FS_IOC_SHUTDOWN: {}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------
// A full file system (ENOSPC)
// ---------------------------------------------------------------------------

/// LUN 1 is a 64 MiB sparse file on a 2 MiB tmpfs, beside a 256 KiB ballast
/// file. Writes fill the file system until one fails with `expected_sense`,
/// and later writes fail the same way; what was written before reads back,
/// and once the ballast is deleted the same LU takes writes again.
fn write_to_a_full_file_system(lu_args: &[&str], thin: bool, expected_sense: &str) {
    const FS_SIZE: u64 = 2 * MIB;
    const LUN_SIZE: u64 = 64 * MIB;
    /// The filling writes: 64 KiB each, from 1 MiB on.
    const FILL_LBA: u64 = 2048;
    const FILL_BLOCKS: u64 = 128;
    /// Writes elsewhere once there is no room: 4 KiB, and 1 MiB (which the
    /// default engine hands to the kernel's queue rather than writing it
    /// inline, DESIGN.md "Memory media").
    const PROBE_LBA: u64 = 120_000;
    const LARGE_PROBE_LBA: u64 = 100_000;

    require("python3");
    let fs = Mount::new(&["-t", "tmpfs", "-o", "size=2m", "rtgt-fault-enospc"]);
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![0xEE; 256 * 1024]).expect("write ballast");
    let backing = fs.path().join("disk.img");
    sparse_file(&backing, LUN_SIZE);

    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun_on(1, IQN, &backing, lu_args);
    if thin {
        d.lu_params(1, 1, "thin_provisioning=1");
    }
    healthy_target(&d);

    let fills = (LUN_SIZE / BLOCK - FILL_LBA) / FILL_BLOCKS;
    let out = client(
        &d,
        IQN,
        &format!(
            "write 0 a5 8 -- fill {FILL_LBA} 5a {FILL_BLOCKS} {fills} -- sense \
             -- write {PROBE_LBA} c3 8 -- sense -- write {LARGE_PROBE_LBA} 3c 2048 -- sense"
        ),
    );
    let filled: u64 = out
        .get(2)
        .and_then(|l| l.strip_prefix("filled: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fill count: {out:?}\n{}", d.log()));
    assert_eq!(
        out,
        [
            GOOD,
            CHECK_CONDITION,
            &format!("filled: {filled}"),
            expected_sense,
            CHECK_CONDITION,
            expected_sense,
            CHECK_CONDITION,
            expected_sense,
        ],
        "writes to a full file system\n--- daemon ---\n{}",
        d.log()
    );
    assert!(
        filled > 0 && filled * BLOCK < FS_SIZE,
        "{filled} blocks written on a {FS_SIZE}-byte file system"
    );
    d.assert_alive("after ENOSPC");

    // What was written before the file system filled up reads back (reads of
    // 64 KiB and more from tmpfs are sent from the page cache).
    let out = client(&d, IQN, &format!("read 0 8 -- read {FILL_LBA} {filled}"));
    assert_eq!(
        out,
        [GOOD, "read: a5", GOOD, "read: 5a"],
        "data before ENOSPC"
    );

    // The failure was the file system's, not a state the LU is stuck in.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let out = client(
        &d,
        IQN,
        &format!("write {PROBE_LBA} c3 8 -- read {PROBE_LBA} 8"),
    );
    assert_eq!(out, [GOOD, GOOD, "read: c3"], "write after room was made");

    assert_still_serving(&mut d);
    d.stop();
}

/// SBC-3 §4.7.3.6: a thin provisioned LU out of resources answers a write
/// with DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT.
#[test]
fn full_file_system_thin_lu_reports_space_allocation_failed() {
    write_to_a_full_file_system(&[], true, SPACE_ALLOCATION_FAILED);
}

#[test]
fn full_file_system_thin_lu_rdwr_reports_space_allocation_failed() {
    write_to_a_full_file_system(&["-E", "rdwr"], true, SPACE_ALLOCATION_FAILED);
}

#[test]
fn full_file_system_thin_lu_aio_reports_space_allocation_failed() {
    write_to_a_full_file_system(&["-E", "aio"], true, SPACE_ALLOCATION_FAILED);
}

/// A fully provisioned LU (LBPME 0, SBC-3 §4.7.2) allocates nothing as far as
/// the initiator knows, so a store that cannot take the data is a failed
/// write: MEDIUM ERROR / WRITE ERROR.
#[test]
fn full_file_system_fully_provisioned_lu_reports_write_error() {
    write_to_a_full_file_system(&[], false, WRITE_ERROR);
}

// ---------------------------------------------------------------------------
// A file system that fails every I/O (EIO)
// ---------------------------------------------------------------------------

/// LUN 1 is a file on ext4 (on a loop device); data is written, then the file
/// system is shut down. Every READ is then MEDIUM ERROR / UNRECOVERED READ
/// ERROR and every WRITE and SYNCHRONIZE CACHE MEDIUM ERROR / WRITE ERROR.
fn io_on_a_shut_down_file_system(lu_args: &[&str]) {
    require("python3");
    require("mkfs.ext4");
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("ext4.img");
    sparse_file(&image, 32 * MIB);
    sh("mkfs.ext4", &["-q", "-F", &image.to_string_lossy()]);
    let fs = Mount::new(&["-t", "ext4", "-o", "loop", &image.to_string_lossy()]);
    let backing = fs.path().join("disk.img");
    sparse_file(&backing, 8 * MIB);

    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun_on(1, IQN, &backing, lu_args);
    healthy_target(&d);

    let out = client(&d, IQN, "write 0 a5 16 -- sync -- read 0 16");
    assert_eq!(out, [GOOD, GOOD, GOOD, "read: a5"], "before the shutdown");

    shut_down(fs.path());
    let out = client(
        &d,
        IQN,
        "read 0 16 -- sense -- read 0 2048 -- sense -- write 100 c3 8 -- sense \
         -- write 200 c3 1 fua -- sense -- sync -- sense",
    );
    assert_eq!(
        out,
        [
            CHECK_CONDITION,
            UNRECOVERED_READ_ERROR,
            CHECK_CONDITION,
            UNRECOVERED_READ_ERROR,
            CHECK_CONDITION,
            WRITE_ERROR,
            CHECK_CONDITION,
            WRITE_ERROR,
            CHECK_CONDITION,
            WRITE_ERROR,
        ],
        "I/O on a shut-down file system\n--- daemon ---\n{}",
        d.log()
    );
    assert_still_serving(&mut d);
    d.stop();
}

#[test]
fn shut_down_file_system_is_medium_error() {
    io_on_a_shut_down_file_system(&[]);
}

#[test]
fn shut_down_file_system_rdwr_is_medium_error() {
    io_on_a_shut_down_file_system(&["-E", "rdwr"]);
}

#[test]
fn shut_down_file_system_aio_is_medium_error() {
    io_on_a_shut_down_file_system(&["-E", "aio"]);
}

// ---------------------------------------------------------------------------
// A block device that fails every I/O (EIO through a loop device)
// ---------------------------------------------------------------------------

/// LUN 1 is a loop device on a file of an ext4, which is shut down after a
/// first write. The daemon opens block devices without O_DIRECT, so what the
/// page cache holds still reads; everything that must reach the device
/// fails: a READ of blocks never read is MEDIUM ERROR / UNRECOVERED READ
/// ERROR, a WRITE of part of a page (the kernel reads the page first) is
/// MEDIUM ERROR / WRITE ERROR, and a whole-page WRITE the cache accepted
/// (the LU reports WCE, SBC-3 §6.4.5) fails at the SYNCHRONIZE CACHE that
/// must write it, as MEDIUM ERROR / WRITE ERROR.
fn io_on_a_failing_block_device(lu_args: &[&str]) {
    require("python3");
    require("mkfs.ext4");
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("ext4.img");
    sparse_file(&image, 32 * MIB);
    sh("mkfs.ext4", &["-q", "-F", &image.to_string_lossy()]);
    let fs = Mount::new(&["-t", "ext4", "-o", "loop", &image.to_string_lossy()]);
    let disk = fs.path().join("disk.img");
    std::fs::write(&disk, vec![0; 4 * MIB as usize]).expect("write the device's file");
    let lo = LoopDevice::attach(&disk);

    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun_on(1, IQN, Path::new(&lo.dev), lu_args);
    healthy_target(&d);

    let out = client(&d, IQN, "write 0 a5 8 fua");
    assert_eq!(out, [GOOD], "before the shutdown");

    shut_down(fs.path());
    let out = client(
        &d,
        IQN,
        "read 2048 8 -- sense -- write 3000 c3 1 -- sense -- write 4000 c3 8 -- sync -- sense \
         -- read 0 8",
    );
    assert_eq!(
        out,
        [
            CHECK_CONDITION,
            UNRECOVERED_READ_ERROR,
            CHECK_CONDITION,
            WRITE_ERROR,
            GOOD,
            CHECK_CONDITION,
            WRITE_ERROR,
            GOOD,
            "read: a5",
        ],
        "I/O on a failing block device\n--- daemon ---\n{}",
        d.log()
    );
    assert_still_serving(&mut d);
    d.stop();
}

#[test]
fn failing_block_device_is_medium_error() {
    io_on_a_failing_block_device(&[]);
}

#[test]
fn failing_block_device_rdwr_is_medium_error() {
    io_on_a_failing_block_device(&["-E", "rdwr"]);
}
