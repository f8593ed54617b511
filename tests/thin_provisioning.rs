//! Thin provisioning end to end (SBC-3 §4.7), driven by QEMU's iSCSI block
//! driver: `discard` becomes UNMAP, `write -z -u` WRITE SAME(16) with UNMAP,
//! `write -z` WRITE SAME(16), and `qemu-img map` asks GET LBA STATUS. The
//! backing file's real allocation (st_blocks, SEEK_HOLE) is the referee.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{require, require_qemu_iscsi, run_tool, Tgtd, TgtdOpts};

const IQN: &str = "iqn.2026-11.org.rtgt:thin";
const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);

fn allocated(path: &Path) -> u64 {
    fs::metadata(path).expect("stat backing file").blocks() * 512
}

fn qemu_io(d: &Tgtd, cmd: &str) {
    let lun = d.qemu_opts(IQN, 1, "");
    let o = run_tool("qemu-io", &["-c", cmd, "--image-opts", &lun], TIMEOUT);
    assert!(
        o.success() && !o.stdout.contains("failed") && !o.stderr.contains("failed"),
        "{}",
        o.describe(&format!("qemu-io {cmd}"))
    );
}

fn thin_lun(d: &Tgtd, size: u64) -> std::path::PathBuf {
    let path = d.new_target_with_lun(1, IQN, size);
    d.lu_params(1, 1, "thin_provisioning=1");
    path
}

/// `qemu-img map` regions as (start, length, data) from its JSON output.
fn map(d: &Tgtd) -> Vec<(u64, u64, bool)> {
    let lun = d.qemu_opts(IQN, 1, "");
    let o = run_tool(
        "qemu-img",
        &["map", "--output=json", "--image-opts", &lun],
        TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe("qemu-img map"));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("qemu-img map JSON");
    v.as_array()
        .expect("map is a list")
        .iter()
        .map(|r| {
            (
                r["start"].as_u64().unwrap_or(0),
                r["length"].as_u64().unwrap_or(0),
                r["data"].as_bool().unwrap_or(true),
            )
        })
        .collect()
}

fn data_at(regions: &[(u64, u64, bool)], at: u64) -> bool {
    regions
        .iter()
        .find(|(s, l, _)| *s <= at && at < s + l)
        .map(|r| r.2)
        .unwrap_or_else(|| panic!("offset {at} not in map {regions:?}"))
}

#[test]
fn unmap_and_write_same_deallocate_and_read_zeros() {
    require_qemu_iscsi();
    require("qemu-io");
    let mut d = Tgtd::start(TgtdOpts::default());
    let path = thin_lun(&d, 64 * MIB);

    qemu_io(&d, "write -P 0xa5 0 8M");
    let full = allocated(&path);
    assert!(
        full >= 8 * MIB,
        "8 MiB written but only {full} bytes allocated"
    );

    // UNMAP (QEMU's discard) punches a hole; the blocks read back as zeros
    // (LBPRZ=1) and the file shrinks.
    qemu_io(&d, "discard 0 4M");
    let after_unmap = allocated(&path);
    assert!(
        after_unmap <= full - 4 * MIB,
        "UNMAP of 4 MiB freed only {} bytes",
        full - after_unmap
    );
    qemu_io(&d, "read -P 0 0 4M");
    qemu_io(&d, "read -P 0xa5 4M 4M");

    // WRITE SAME(16) with UNMAP deallocates too.
    qemu_io(&d, "write -z -u 4M 2M");
    assert!(
        allocated(&path) <= after_unmap - 2 * MIB,
        "WRITE SAME with UNMAP did not deallocate"
    );
    qemu_io(&d, "read -P 0 4M 2M");
    qemu_io(&d, "read -P 0xa5 6M 2M");

    // WRITE SAME(16) without UNMAP writes zeros in place.
    qemu_io(&d, "write -z 6M 1M");
    qemu_io(&d, "read -P 0 6M 1M");
    qemu_io(&d, "read -P 0xa5 7M 1M");
    d.stop();
}

#[test]
fn get_lba_status_follows_the_file_allocation() {
    require_qemu_iscsi();
    require("qemu-img");
    require("qemu-io");
    let mut d = Tgtd::start(TgtdOpts::default());
    thin_lun(&d, 64 * MIB);

    // A fresh sparse file: nothing is mapped.
    let m = map(&d);
    assert!(!data_at(&m, 0), "empty LUN reported mapped: {m:?}");

    qemu_io(&d, "write -P 0x11 1M 1M");
    qemu_io(&d, "write -P 0x22 10M 3M");
    let m = map(&d);
    assert!(!data_at(&m, 0), "{m:?}");
    assert!(data_at(&m, MIB), "{m:?}");
    assert!(data_at(&m, 2 * MIB - 4096), "{m:?}");
    assert!(!data_at(&m, 2 * MIB), "{m:?}");
    assert!(data_at(&m, 10 * MIB), "{m:?}");
    assert!(data_at(&m, 13 * MIB - 4096), "{m:?}");
    assert!(!data_at(&m, 13 * MIB), "{m:?}");

    qemu_io(&d, "discard 10M 1M");
    let m = map(&d);
    assert!(!data_at(&m, 10 * MIB), "unmapped range still mapped: {m:?}");
    assert!(data_at(&m, 11 * MIB), "{m:?}");
    d.stop();
}

/// Logical Block Provisioning VPD (SBC-3 §6.5.4) as libiscsi's `iscsi-inq`
/// decodes it: `key:value` lines.
fn lbp_vpd(d: &Tgtd) -> String {
    let o = run_tool(
        "iscsi-inq",
        &["-e", "1", "-c", "178", &d.lun_url(IQN, 1)],
        TIMEOUT,
    );
    assert!(o.success(), "{}", o.describe("iscsi-inq -e 1 -c 178"));
    o.stdout
}

#[test]
fn provisioning_vpd_follows_thin_provisioning() {
    require("iscsi-inq");
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, 16 * MIB);
    // Fully provisioned: no UNMAP, no WRITE SAME unmapping, LBPRZ clear.
    let vpd = lbp_vpd(&d);
    for line in ["lbpu:0", "lbpws:0", "lbpws10:0", "provisioning type:0"] {
        assert!(vpd.lines().any(|l| l == line), "{line} missing:\n{vpd}");
    }
    d.lu_params(1, 1, "thin_provisioning=1");
    let vpd = lbp_vpd(&d);
    for line in [
        "lbpu:1",
        "lbpws:1",
        "lbpws10:1",
        "lbprz:1",
        "provisioning type:2",
    ] {
        assert!(vpd.lines().any(|l| l == line), "{line} missing:\n{vpd}");
    }
    d.stop();
}
