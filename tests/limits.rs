//! Caps on sessions and connections, per target and over the daemon, and the
//! login timeout, all set with Debian's `tgtadm` against the real tgtd.
//!
//! Each refusal must be the Login Response RFC 7143 §11.13.5 names for it:
//! Out of resources (0x0302) when no session is left, Too many connections
//! (0x0206) when the connection would be one too many. The statuses are read
//! byte by byte over raw TCP (`common::raw`) and as libiscsi's `iscsi-inq`
//! and `iscsi-ls` report them. Places come back whichever way a session
//! goes, a reinstating login is never locked out by its own old session, and
//! a changed login timeout applies to the next connections. A target's
//! NOP-In pings (tgt's nop_interval / nop_count) drop an initiator that
//! stopped answering.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::raw::{self, LoginParams};
use common::{require, run_tool, stderr_of, stdout_of, Tgtd, TgtdOpts, DEBIAN_TGTADM};

const IQN: &str = "iqn.2026-11.org.rtgt:limits";
const OTHER_IQN: &str = "iqn.2026-11.org.rtgt:limits-other";
const INITIATOR: &str = "iqn.2026-11.org.rtgt:e2e-limits";
/// How long a session's place may take to come back once its connection is
/// gone: a liveness bound, not a timing assertion.
const SETTLE: Duration = Duration::from_secs(20);

fn start(extra_args: &[&str]) -> Tgtd {
    require(DEBIAN_TGTADM);
    let t = Tgtd::start(TgtdOpts {
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        ..TgtdOpts::default()
    });
    t.new_target_with_lun(1, IQN, 16 << 20);
    t
}

/// `tgtadm --op update` through Debian's client: `mode` "target" (tid 1)
/// or "sys". Returns the client's exit code and stderr.
fn update(t: &Tgtd, mode: &str, name: &str, value: &str) -> (Option<i32>, String) {
    let mut args = vec!["--lld", "iscsi", "--op", "update", "--mode", mode];
    if mode == "target" {
        args.extend_from_slice(&["--tid", "1"]);
    }
    args.extend_from_slice(&["--name", name, "--value", value]);
    let out = t.adm_with(Path::new(DEBIAN_TGTADM), &args);
    (out.status.code(), stderr_of(&out))
}

fn update_ok(t: &Tgtd, mode: &str, name: &str, value: &str) {
    let (code, err) = update(t, mode, name, value);
    assert_eq!(
        code,
        Some(0),
        "tgtadm update {mode} {name}={value}: {err}\n{}",
        t.log()
    );
}

/// A `key=value` line of `--op show` (target 1's, or the system's).
fn shown(t: &Tgtd, mode: &str, key: &str) -> u32 {
    let mut args = vec!["--lld", "iscsi", "--op", "show", "--mode", mode];
    if mode == "target" {
        args.extend_from_slice(&["--tid", "1"]);
    }
    let out = t.adm_with(Path::new(DEBIAN_TGTADM), &args);
    let text = stdout_of(&out);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in `--op show --mode {mode}`:\n{text}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}= in `--op show --mode {mode}`: {e}\n{text}"))
}

/// Waits until `--op show --mode target --tid 1` reports `sessions` in use.
fn wait_sessions(t: &Tgtd, mode: &str, sessions: u32) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = shown(t, mode, "sessions");
        if now == sessions {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: {now} sessions in use, {sessions} expected, {SETTLE:?} on\n{}",
            t.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A raw session to `target`, initiator port ISID `n`.
fn session(t: &Tgtd, target: &str, n: u8) -> Result<TcpStream, String> {
    let mut s = raw::connect(t.port)?;
    raw::login(
        &mut s,
        &LoginParams {
            initiator: INITIATOR,
            target,
            isid: [0x80, 0, 0, 0, 0x4c, n],
            operational: &[],
        },
    )?;
    Ok(s)
}

fn inq(t: &Tgtd, iqn: &str) -> common::ToolOutput {
    run_tool("iscsi-inq", &[&t.lun_url(iqn, 1)], Duration::from_secs(30))
}

/// The target has closed `s` (FIN or reset): what a reinstated session's
/// old connection sees.
fn closed_by_target(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(SETTLE)).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
            // A NOP-In or asynchronous message before the close.
            Ok(_) => continue,
        }
    }
}

#[test]
fn a_full_target_answers_out_of_resources_and_takes_logins_again_when_a_session_goes() {
    require("iscsi-inq");
    let t = start(&[]);
    t.new_target_with_lun(2, OTHER_IQN, 16 << 20);
    update_ok(&t, "target", "max_sessions", "2");
    assert_eq!(shown(&t, "target", "max_sessions"), 2);

    let mut first = session(&t, IQN, 1).expect("first session");
    let _second = session(&t, IQN, 2).expect("second session");
    wait_sessions(&t, "target", 2);

    // The third gets Out of resources: Status-Class 3, Status-Detail 2.
    let err = session(&t, IQN, 3).expect_err("a third session was let in");
    assert!(err.contains("status 0x03/0x02"), "{err}");
    let out = inq(&t, IQN);
    assert!(!out.success(), "{}", out.describe("iscsi-inq at the cap"));
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("Out of resources"),
        "{}",
        out.describe("iscsi-inq at the cap")
    );
    assert_eq!(shown(&t, "target", "sessions"), 2, "refusals take no place");

    // The cap is the target's: the other target still takes logins.
    let out = inq(&t, OTHER_IQN);
    assert!(out.success(), "{}", out.describe("iscsi-inq to target 2"));

    // An initiator coming back on the same I_T nexus (ISID 1, TSIH 0)
    // reinstates its session (RFC 7143 §6.3.5) even at the cap; its old
    // connection is closed.
    let _again = session(&t, IQN, 1).expect("reinstating session 1 at the cap");
    assert!(
        closed_by_target(&mut first),
        "the reinstated session's old connection stays open"
    );
    wait_sessions(&t, "target", 2);

    // A session that goes gives its place back.
    drop(_second);
    wait_sessions(&t, "target", 1);
    let out = inq(&t, IQN);
    assert!(out.success(), "{}", out.describe("iscsi-inq below the cap"));

    // 0 is no cap.
    update_ok(&t, "target", "max_sessions", "0");
    let more: Vec<_> = (10..14)
        .map(|n| session(&t, IQN, n).expect("session with no cap"))
        .collect();
    wait_sessions(&t, "target", 5);
    drop(more);
    drop(_again);
    wait_sessions(&t, "target", 0);
    assert_eq!(shown(&t, "target", "connections"), 0);
    t.adm_ok(&["--op", "show", "--mode", "sys"]);
}

#[test]
fn a_target_connection_cap_answers_too_many_connections() {
    require("iscsi-inq");
    let t = start(&[]);
    update_ok(&t, "target", "max_connections", "1");
    let _held = session(&t, IQN, 1).expect("first session");
    // Too many connections: Status-Class 2, Status-Detail 6.
    let err = session(&t, IQN, 2).expect_err("a second connection was let in");
    assert!(err.contains("status 0x02/0x06"), "{err}");
    let out = inq(&t, IQN);
    assert!(!out.success(), "{}", out.describe("iscsi-inq at the cap"));
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("Too many connections"),
        "{}",
        out.describe("iscsi-inq at the cap")
    );

    // Bad values are refused the way tgt refuses them, and change nothing.
    for bad in ["-1", "many", ""] {
        let (code, err) = update(&t, "target", "max_connections", bad);
        assert_ne!(code, Some(0), "max_connections={bad:?} was taken");
        assert!(
            err.contains("invalid request"),
            "max_connections={bad:?}: {err}"
        );
    }
    assert_eq!(shown(&t, "target", "max_connections"), 1);
}

#[test]
fn the_daemon_cap_counts_every_target_and_discovery() {
    require("iscsi-ls");
    let t = start(&["--iscsi", "max_sessions=1"]);
    assert_eq!(shown(&t, "sys", "max_sessions"), 1);
    let held = session(&t, IQN, 1).expect("first session");
    wait_sessions(&t, "sys", 1);

    // A discovery session is a session too.
    let ls = run_tool("iscsi-ls", &[&t.url()], Duration::from_secs(30));
    assert!(
        !ls.success(),
        "{}",
        ls.describe("iscsi-ls at the daemon's cap")
    );
    assert!(
        format!("{}{}", ls.stdout, ls.stderr).contains("Out of resources"),
        "{}",
        ls.describe("iscsi-ls at the daemon's cap")
    );

    // Raised through tgtadm at run time: discovery works again, with the
    // session still held.
    update_ok(&t, "sys", "max_sessions", "2");
    let ls = run_tool("iscsi-ls", &[&t.url()], Duration::from_secs(30));
    assert!(
        ls.success(),
        "{}",
        ls.describe("iscsi-ls under the raised cap")
    );
    assert!(ls.stdout.contains(IQN), "{}", ls.describe("iscsi-ls"));
    drop(held);
    wait_sessions(&t, "sys", 0);
    assert_eq!(shown(&t, "sys", "connections"), 0);
}

#[test]
fn the_login_timeout_is_set_with_tgtadm_and_closes_a_silent_connection() {
    let t = start(&[]);
    assert_eq!(shown(&t, "sys", "login_timeout"), 15, "the default");
    for bad in ["0", "3601", "soon"] {
        let (code, err) = update(&t, "sys", "login_timeout", bad);
        assert_ne!(code, Some(0), "login_timeout={bad} was taken");
        assert!(
            err.contains("invalid request"),
            "login_timeout={bad}: {err}"
        );
    }
    let (code, err) = update(&t, "sys", "no_such_limit", "1");
    assert_ne!(code, Some(0), "an unknown system parameter was taken");
    assert!(err.contains("invalid request"), "{err}");
    assert_eq!(shown(&t, "sys", "login_timeout"), 15);

    update_ok(&t, "sys", "login_timeout", "1");
    assert_eq!(shown(&t, "sys", "login_timeout"), 1);
    // A connection that never sends its Login Request is closed long before
    // the default 15 s would have closed it.
    let started = Instant::now();
    let mut silent = raw::connect(t.port).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(12)))
        .unwrap();
    let mut b = [0u8; 1];
    let r = silent.read(&mut b);
    assert!(
        matches!(r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a silent connection was still open after {:?} with login_timeout=1: {r:?}",
        started.elapsed()
    );
    // And an initiator that does log in is not hurried by it.
    let _s = session(&t, IQN, 1).expect("a login within the timeout");
}

#[test]
fn a_target_pings_a_silent_initiator_and_drops_it() {
    let t = start(&[]);
    // The daemon's defaults first (30 s, 3), then the target's own.
    assert_eq!(shown(&t, "target", "nop_interval"), 30);
    assert_eq!(shown(&t, "target", "nop_count"), 3);
    for (name, bad) in [
        ("nop_count", "0"),
        ("nop_interval", "3601"),
        ("nop_interval", "x"),
    ] {
        let (code, err) = update(&t, "target", name, bad);
        assert_ne!(code, Some(0), "{name}={bad} was taken");
        assert!(err.contains("invalid request"), "{name}={bad}: {err}");
    }
    update_ok(&t, "target", "nop_interval", "1");
    update_ok(&t, "target", "nop_count", "2");
    assert_eq!(shown(&t, "target", "nop_interval"), 1);
    assert_eq!(shown(&t, "target", "nop_count"), 2);

    // A session that never answers: NOP-Ins asking for an answer (ITT
    // 0xffffffff, a Target Transfer Tag: RFC 7143 §11.19), then the close.
    let mut silent = session(&t, IQN, 1).expect("login");
    wait_sessions(&t, "target", 1);
    let mut pings = 0;
    loop {
        match raw::read_pdu(&mut silent) {
            Ok(Some(p)) => {
                assert_eq!(p.opcode(), 0x20, "only NOP-Ins were expected");
                assert_eq!(p.itt(), 0xffff_ffff);
                assert_ne!(p.field(20), 0xffff_ffff, "a ping wants an answer");
                pings += 1;
            }
            Ok(None) => break,
            Err(e) => panic!("after {pings} pings: {e}\n{}", t.log()),
        }
    }
    assert_eq!(pings, 2, "dropped after nop_count unanswered pings");
    wait_sessions(&t, "target", 0);
    // Initiators that answer (libiscsi does) are not dropped.
    let out = inq(&t, IQN);
    assert!(
        out.success(),
        "{}",
        out.describe("iscsi-inq after the drop")
    );
}
