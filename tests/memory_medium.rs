//! The data path on a memory medium: a LUN whose file lives on tmpfs, as in
//! the benchmark (`benches/ab-bench.py`). There the default engine runs small
//! reads and writes inline on the reactor, receives large write data straight
//! into the task's buffer, and sends large reads from the page cache with
//! sendfile(2). QEMU's iSCSI driver writes and reads every size class back,
//! and a file truncated behind the daemon's back reads as zeros past its new
//! end without breaking the stream.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{random_file, require, require_qemu_iscsi, run_tool, Tgtd, TgtdOpts};

const IQN: &str = "iqn.2026-11.org.rtgt:memory-medium";
const MIB: u64 = 1 << 20;
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// A directory on tmpfs, or `None` (test skipped) where /dev/shm is missing.
fn shm_dir() -> Option<tempfile::TempDir> {
    match tempfile::Builder::new()
        .prefix("rtgt-shm-")
        .tempdir_in("/dev/shm")
    {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipping: no temp dir under /dev/shm: {e}");
            None
        }
    }
}

/// A daemon with LUN 1 on a sparse tmpfs file of `size` bytes.
fn target_on_shm(dir: &Path, size: u64) -> (Tgtd, PathBuf) {
    let d = Tgtd::start(TgtdOpts::default());
    let path = dir.join("lun.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(size))
        .expect("create LUN file");
    d.new_target(1, IQN);
    d.new_lun(1, 1, &path);
    d.bind_all(1);
    (d, path)
}

fn qemu_io(d: &Tgtd, lun: &str, commands: &[String]) -> String {
    let mut args = vec!["--image-opts", lun];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    let out = run_tool("qemu-io", &args, TOOL_TIMEOUT);
    assert!(
        out.success() && !out.stdout.contains("failed") && !out.stderr.contains("failed"),
        "{}\n--- daemon ---\n{}",
        out.describe("qemu-io"),
        d.log()
    );
    out.stdout
}

/// Every size class through QEMU: 4 KiB and 32 KiB (copied, inline), 64 KiB
/// and 128 KiB (reads by sendfile), 300 KiB and 1 MiB (writes through the
/// kernel queue, write data placed in the task's buffer), at unaligned
/// offsets next to each other so that a byte out of place shows.
#[test]
fn every_size_class_reads_back_what_was_written() {
    require_qemu_iscsi();
    require("qemu-io");
    let Some(dir) = shm_dir() else { return };
    let (mut d, _) = target_on_shm(dir.path(), 16 * MIB);
    let lun = d.qemu_opts(IQN, 1, "");
    let sizes = [4096u64, 32768, 65536, 131072, 307200, MIB];
    let mut offset = 512u64;
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for (i, len) in sizes.iter().enumerate() {
        let pattern = 0x11 * (i as u64 + 1);
        writes.push(format!("write -P {pattern:#x} {offset} {len}"));
        reads.push(format!("read -P {pattern:#x} {offset} {len}"));
        offset += len;
    }
    // One process writes, another reads: nothing is served from QEMU.
    qemu_io(&d, &lun, &writes);
    let out = qemu_io(&d, &lun, &reads);
    assert_eq!(out.matches("read ").count(), sizes.len(), "{out}");
    d.assert_alive("after the reads");
}

/// 48 MiB of random data copied in and compared back by QEMU (its large
/// requests: placed writes, sendfile reads), with header digests on one run
/// (the placement checks the header digest before it trusts the header).
#[test]
fn qemu_convert_and_compare_on_tmpfs() {
    require_qemu_iscsi();
    let Some(dir) = shm_dir() else { return };
    let (mut d, _) = target_on_shm(dir.path(), 48 * MIB);
    let src = random_file(d.dir.path(), "src.img", (48 * MIB) as usize, 0x5eed_0101);
    let src = src.to_string_lossy().into_owned();
    let src_opts = format!("driver=file,filename={src}");
    for extra in ["", "header-digest=crc32c"] {
        let lun = d.qemu_opts(IQN, 1, extra);
        let out = run_tool(
            "qemu-img",
            &[
                "convert",
                "-n",
                "-f",
                "raw",
                &src,
                "--target-image-opts",
                &lun,
            ],
            TOOL_TIMEOUT,
        );
        assert!(out.success(), "{}\n{}", out.describe("convert"), d.log());
        let out = run_tool(
            "qemu-img",
            &["compare", "--image-opts", &src_opts, &lun],
            TOOL_TIMEOUT,
        );
        assert_eq!(
            out.code(),
            Some(0),
            "{} ({extra})\n{}",
            out.describe("compare"),
            d.log()
        );
    }
    d.assert_alive("after convert and compare");
}

/// The LUN's file shrinks under the daemon (an administrator's mistake):
/// what lies past the new end reads as zeros, through sendfile too, and the
/// connection stays framed.
#[test]
fn a_truncated_file_reads_zeros_past_its_end() {
    require_qemu_iscsi();
    require("qemu-io");
    let Some(dir) = shm_dir() else { return };
    let (mut d, path) = target_on_shm(dir.path(), 4 * MIB);
    let lun = d.qemu_opts(IQN, 1, "");
    qemu_io(&d, &lun, &["write -P 0x77 0 2M".to_string()]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(MIB / 2))
        .expect("truncate the LUN file");
    let out = qemu_io(
        &d,
        &lun,
        &[
            "read -P 0x77 0 512k".to_string(),
            // Entirely past the end, and straddling it, with sendfile.
            "read -P 0 1M 256k".to_string(),
            "read -P 0x77 384k 128k".to_string(),
            "read -P 0 512k 128k".to_string(),
            // Small, copied reads past the end.
            "read -P 0 600k 4k".to_string(),
        ],
    );
    assert_eq!(out.matches("read ").count(), 5, "{out}");
    // A read that straddles the end: both halves in one command.
    let img = d.dir.path().join("out.img");
    let img_s = img.to_string_lossy().into_owned();
    let out = run_tool(
        "qemu-img",
        &["convert", "-O", "raw", "--image-opts", &lun, &img_s],
        TOOL_TIMEOUT,
    );
    assert!(
        out.success(),
        "{}\n{}",
        out.describe("convert out"),
        d.log()
    );
    let data = std::fs::read(&img).expect("read the copy");
    assert_eq!(data.len() as u64, 4 * MIB);
    let half = (MIB / 2) as usize;
    assert!(
        data[..half].iter().all(|&b| b == 0x77),
        "data before the end"
    );
    assert!(data[half..].iter().all(|&b| b == 0), "zeros after the end");
    d.assert_alive("after reading past the end");
}
