//! The soak script, `scripts/soak`, in its CI-sized version: four QEMU
//! initiators (`qemu-io`, each its own initiator name and region of one
//! LUN) write and read back verified data for 60 s, logging out and in
//! again every few hundred commands, while the script samples the daemon's
//! RSS and descriptors; then a fresh session reads every region back in
//! full. The run must see no data error and no I/O error, every initiator
//! must have done I/O, RSS must stay flat after the warm-up and the
//! descriptors must come back to their baseline once everyone logged out.
//!
//! A checker that never fails proves nothing, so a second, short run
//! corrupts data behind the initiators' backs (`--self-test-corrupt`) and
//! must report data errors and fail.
//!
//! The script starts and stops its own `tgtd` (the one cargo built, on a
//! free port and control port); the tests check that it left no daemon and
//! no management socket behind.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use common::{require, require_qemu_iscsi};

/// Seconds of I/O of the CI-sized soak (the budget).
const SOAK_SECONDS: u32 = 60;
const SOAK_INITIATORS: usize = 4;
/// Seconds of I/O of the run that proves the checker can fail.
const SELF_TEST_SECONDS: u32 = 15;
const SELF_TEST_INITIATORS: usize = 2;
/// Beyond its I/O time, what start-up, the final read-back and the
/// shutdown may take.
const SLACK: Duration = Duration::from_secs(180);
/// After SIGTERM at the deadline: how long the script may take to stop its
/// daemon and initiators before it gets SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/soak")
}

/// The script run: killed (SIGTERM, then SIGKILL) and reaped if dropped
/// early, so a failing test leaves no soak behind (its `tgtd` and `qemu-io`
/// children die with it: the script has them signalled when it dies).
struct Soak {
    child: Option<Child>,
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Option<thread::JoinHandle<String>>,
}

struct SoakRun {
    status: ExitStatus,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl SoakRun {
    fn describe(&self) -> String {
        format!(
            "scripts/soak: status {:?}{}\n--- progress (stderr) ---\n{}\n--- stdout ---\n{}",
            self.status,
            if self.timed_out {
                " (stopped at its deadline)"
            } else {
                ""
            },
            self.stderr,
            self.stdout
        )
    }

    /// The JSON summary (`--json`), or a panic that shows the whole run.
    fn summary(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("no JSON summary on stdout ({e}): {}", self.describe()))
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> Option<thread::JoinHandle<String>> {
    r.map(|mut r| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
}

impl Soak {
    fn start(seconds: u32, initiators: usize, extra: &[&str]) -> Soak {
        require("python3");
        require("qemu-io");
        require_qemu_iscsi();
        let mut cmd = Command::new("python3");
        cmd.arg(script())
            .arg("--duration")
            .arg(seconds.to_string())
            .arg("--initiators")
            .arg(initiators.to_string())
            .arg("--tgtd")
            .arg(env!("CARGO_BIN_EXE_tgtd"))
            .arg("--tgtadm")
            .arg(env!("CARGO_BIN_EXE_tgtadm"))
            .arg("--json")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start scripts/soak: {e}"));
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Soak {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    /// Waits until the script exits or `timeout` passes; then it gets
    /// SIGTERM (it stops its daemon and initiators), and SIGKILL if that
    /// does not end it.
    fn wait(mut self, timeout: Duration) -> SoakRun {
        let mut child = self.child.take().expect("waited for once");
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait().expect("wait for scripts/soak") {
                Some(st) => break st,
                None if Instant::now() >= deadline => {
                    timed_out = true;
                    break terminate(&mut child);
                }
                None => thread::sleep(Duration::from_millis(100)),
            }
        };
        let take = |h: Option<thread::JoinHandle<String>>| {
            h.and_then(|h| h.join().ok()).unwrap_or_default()
        };
        SoakRun {
            status,
            timed_out,
            stdout: take(self.stdout.take()),
            stderr: take(self.stderr.take()),
        }
    }
}

fn terminate(child: &mut Child) -> ExitStatus {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + TERM_WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().expect("reap scripts/soak")
}

impl Drop for Soak {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c);
        }
    }
}

fn u64_at(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("summary has no number at {path}: {v:#}"))
}

fn bool_at(v: &Value, path: &str) -> bool {
    v.pointer(path)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("summary has no boolean at {path}: {v:#}"))
}

/// The script's daemon is gone and took its management socket with it.
fn assert_cleaned_up(s: &Value) {
    let pid = u64_at(s, "/tgtd/pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("tgtd"),
        "the soak's tgtd (pid {pid}) is still running"
    );
    let sock = s
        .pointer("/tgtd/management_socket")
        .and_then(Value::as_str)
        .expect("summary names the management socket");
    assert!(
        !Path::new(sock).exists(),
        "the soak left its management socket {sock} behind"
    );
}

#[test]
fn soak_of_four_initiators_for_a_minute_sees_no_error_and_flat_rss() {
    let run = Soak::start(SOAK_SECONDS, SOAK_INITIATORS, &[])
        .wait(Duration::from_secs(SOAK_SECONDS.into()) + SLACK);
    println!("{}", run.stderr);
    let s = run.summary();
    assert!(
        !run.timed_out && run.status.success(),
        "the soak failed: {:#}\n{}",
        s["reasons"],
        run.describe()
    );
    assert_eq!(s["verdict"], "pass", "{}", run.describe());
    assert_eq!(u64_at(&s, "/data_errors"), 0, "{}", run.describe());
    assert_eq!(u64_at(&s, "/io_errors"), 0, "{}", run.describe());
    assert_eq!(
        u64_at(&s, "/final_check/data_errors"),
        0,
        "{}",
        run.describe()
    );
    assert_eq!(
        u64_at(&s, "/final_check/io_errors"),
        0,
        "{}",
        run.describe()
    );

    let initiators = s["initiators"].as_array().expect("initiators");
    assert_eq!(initiators.len(), SOAK_INITIATORS, "{}", run.describe());
    let mut region_bytes = 0;
    for (i, ini) in initiators.iter().enumerate() {
        let at = |k: &str| u64_at(&s, &format!("/initiators/{i}/{k}"));
        assert!(
            at("writes") > 0 && at("reads") > 0,
            "initiator {i} did not both write and read: {ini:#}"
        );
        assert_eq!(at("data_errors") + at("io_errors"), 0, "{ini:#}");
        // Logins and logouts are part of the soak.
        assert!(
            at("sessions") > 1,
            "initiator {i} never logged in again: {ini:#}"
        );
        region_bytes += at("region_bytes");
    }
    // The final read-back covered every region in full.
    assert_eq!(
        u64_at(&s, "/final_check/bytes"),
        region_bytes,
        "{}",
        run.describe()
    );

    assert!(bool_at(&s, "/rss/flat"), "RSS grew: {:#}", s["rss"]);
    assert!(
        u64_at(&s, "/rss/samples_after_warmup") >= 10,
        "too few RSS samples: {:#}",
        s["rss"]
    );
    assert!(
        bool_at(&s, "/fds/flat"),
        "descriptors not back to the baseline: {:#}",
        s["fds"]
    );
    assert_eq!(u64_at(&s, "/fds/sessions_left"), 0, "{:#}", s["fds"]);
    assert_eq!(
        s.pointer("/tgtd/exit_status").and_then(Value::as_i64),
        Some(0),
        "tgtd did not exit cleanly on SIGTERM: {:#}",
        s["tgtd"]
    );
    assert_cleaned_up(&s);
}

#[test]
fn soak_catches_data_corrupted_behind_an_initiators_back() {
    let run = Soak::start(
        SELF_TEST_SECONDS,
        SELF_TEST_INITIATORS,
        &["--self-test-corrupt", "--size", "16"],
    )
    .wait(Duration::from_secs(SELF_TEST_SECONDS.into()) + SLACK);
    println!("{}", run.stderr);
    let s = run.summary();
    assert!(!run.timed_out, "{}", run.describe());
    assert_eq!(
        run.status.code(),
        Some(1),
        "a corrupted soak must fail with status 1: {}",
        run.describe()
    );
    assert_eq!(s["verdict"], "fail", "{}", run.describe());
    // Both corrupting writes went through ...
    assert!(
        bool_at(&s, "/self_test_corrupt/live/ok") && bool_at(&s, "/self_test_corrupt/final/ok"),
        "{:#}",
        s["self_test_corrupt"]
    );
    // ... the one during the run was caught by initiator 0's next read,
    // the one before the end by the final read-back, and nothing else
    // went wrong.
    assert!(
        u64_at(&s, "/initiators/0/data_errors") > 0,
        "the corrupted block read back without a data error: {}",
        run.describe()
    );
    assert!(
        u64_at(&s, "/final_check/data_errors") > 0,
        "the final read-back missed the corrupted block: {}",
        run.describe()
    );
    assert!(u64_at(&s, "/data_errors") >= 2, "{}", run.describe());
    assert_eq!(u64_at(&s, "/io_errors"), 0, "{}", run.describe());
    let reasons = s["reasons"].to_string();
    assert!(reasons.contains("data errors"), "{reasons}");
    assert_cleaned_up(&s);
}
