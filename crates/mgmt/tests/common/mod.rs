//! Shared helpers for the tests that drive Debian's tgt binaries.

#![allow(dead_code)]

use std::path::Path;

pub const DEBIAN_TGTADM: &str = "/usr/sbin/tgtadm";
pub const DEBIAN_TGTD: &str = "/usr/sbin/tgtd";

/// These tests compare against Debian's tgt 1.0.85; its absence is a
/// failure, never a silent skip.
pub fn require(bin: &str) {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: run the project's test command, which installs Debian's `tgt` package \
         (apt-get install tgt), then rerun these tests"
    );
}

/// Run our tgtadm in-process; (exit code, stdout, stderr).
pub fn ours(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let argv = std::iter::once("tgtadm")
        .chain(args.iter().copied())
        .map(std::ffi::OsString::from)
        .collect();
    let code = rtgt_mgmt::cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Run Debian's tgtadm; (exit code, stdout, stderr).
pub fn debian(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = std::process::Command::new(DEBIAN_TGTADM);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run Debian tgtadm");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
