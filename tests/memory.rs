//! What idle sessions cost: a thousand logged-in, silent sessions must not
//! hold a receive buffer each (issue 4: under 200 MiB in total).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{require, spawn_command, Tgtd, TgtdOpts};

const IQN: &str = "iqn.2026-11.org.rtgt:memory";
const SESSIONS: usize = 1000;
const LIMIT: u64 = 200 << 20;

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn sessions(d: &Tgtd) -> usize {
    let out = d.adm_ok(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    out.lines().filter(|l| l.contains("I_T nexus:")).count()
}

#[test]
fn a_thousand_idle_sessions_cost_little_memory() {
    require("python3");
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, 16 << 20);
    let before = rss(d.pid());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libiscsi_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(format!("127.0.0.1:{}", d.port))
        .arg(IQN)
        .arg("1")
        .arg("iqn.2026-11.org.example:idle")
        .args(["hold-sessions", &SESSIONS.to_string(), "8"]);
    let client = spawn_command(cmd, "libiscsi_client.py hold-sessions");

    // All of them logged in (and the client's own session), then silent.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sessions(&d) < SESSIONS + 1 {
        assert!(Instant::now() < deadline, "only {} sessions", sessions(&d));
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    let held = rss(d.pid());
    println!(
        "RSS: {} KiB before, {} KiB with {SESSIONS} idle sessions ({} bytes each)",
        before >> 10,
        held >> 10,
        held.saturating_sub(before) / SESSIONS as u64
    );
    assert!(
        held < LIMIT,
        "{SESSIONS} idle sessions: RSS {} MiB",
        held >> 20
    );
    let out = client.wait(Duration::from_secs(120));
    assert!(out.success(), "{}", out.describe("hold-sessions"));
    d.assert_alive("after the idle sessions left");
    d.stop();
}
