//! CHAP (RFC 7143 §12.1.3) end to end: accounts made and bound with tgtadm
//! (ours and Debian's), logins by libiscsi's `iscsi-inq` and `iscsi-ls` with
//! the credentials in the URL (`iscsi://user%secret@host:port/...`, mutual
//! CHAP through `target_user` / `target_password`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{require, run_tool, stderr_of, stdout_of, Tgtd, TgtdOpts, ToolOutput};

const IQN: &str = "iqn.2026-11.org.rtgt:chap";
const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

const USER: &str = "alice";
const SECRET: &str = "alicesecret0123";
const TARGET_USER: &str = "rtgt";
const TARGET_SECRET: &str = "targetsecret0456";

/// `iscsi://[user%secret@]127.0.0.1:PORT/IQN/1[?args]`
fn url(d: &Tgtd, cred: Option<(&str, &str)>, args: &str) -> String {
    let auth = cred.map_or(String::new(), |(u, p)| format!("{u}%{p}@"));
    let args = if args.is_empty() {
        String::new()
    } else {
        format!("?{args}")
    };
    format!("iscsi://{auth}{}/{IQN}/1{args}", d.portal())
}

fn inq(url: &str) -> ToolOutput {
    run_tool("iscsi-inq", &[url], WAIT)
}

fn accept(d: &Tgtd, out: ToolOutput, what: &str) {
    assert!(
        out.success(),
        "{}\n--- daemon ---\n{}",
        out.describe(what),
        d.log()
    );
}

fn refuse(d: &Tgtd, out: ToolOutput, what: &str) {
    assert!(
        !out.success() && !out.timed_out,
        "{what}: expected a refused login\n{}\n--- daemon ---\n{}",
        out.describe(what),
        d.log()
    );
}

fn account(d: &Tgtd, args: &[&str]) {
    let mut full = vec!["--lld", "iscsi", "--mode", "account"];
    full.extend_from_slice(args);
    d.adm_ok(&full);
}

#[test]
fn one_way_chap_admits_only_the_right_secret() {
    require("iscsi-inq");
    let d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, 64 * MIB);
    // Before any account is bound, no authentication is asked for.
    accept(&d, inq(&url(&d, None, "")), "login without CHAP");

    account(&d, &["--op", "new", "--user", USER, "--password", SECRET]);
    account(&d, &["--op", "bind", "--tid", "1", "--user", USER]);
    accept(
        &d,
        inq(&url(&d, Some((USER, SECRET)), "")),
        "the right secret",
    );
    refuse(
        &d,
        inq(&url(&d, Some((USER, "wrongsecret0123")), "")),
        "a wrong secret",
    );
    refuse(
        &d,
        inq(&url(&d, Some(("mallory", SECRET)), "")),
        "an unknown user",
    );
    refuse(&d, inq(&url(&d, None, "")), "no credentials");

    // The failures are logged with who tried; the secret is never shown.
    let log = d.log();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(
        !log.contains(SECRET),
        "the secret leaked into the log:\n{log}"
    );
    let show = d.adm_ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    assert!(
        show.contains(&format!("    Account information:\n        {USER}\n")),
        "{show}"
    );
    assert!(!show.contains(SECRET), "{show}");

    // Guessing is slowed down: after a few failures the address must wait
    // before it may try again (a second, doubling with each failure).
    let mut slowed = false;
    for _ in 0..20 {
        refuse(
            &d,
            inq(&url(&d, Some((USER, "guess0123456")), "")),
            "a guess",
        );
        if d.log().contains("refused for") {
            slowed = true;
            break;
        }
    }
    assert!(slowed, "guessing was never slowed down:\n{}", d.log());

    // Unbound again: open to all, once the address may try again.
    account(&d, &["--op", "unbind", "--tid", "1", "--user", USER]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = inq(&url(&d, None, ""));
        if out.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            out.describe("login after unbind")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn mutual_chap_proves_the_target_too() {
    require("iscsi-inq");
    let d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, 64 * MIB);
    // Debian's tgtadm speaks the same management protocol.
    let debian = Path::new("/usr/sbin/tgtadm");
    for args in [
        vec![
            "--lld",
            "iscsi",
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            USER,
            "--password",
            SECRET,
        ],
        vec![
            "--lld",
            "iscsi",
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            TARGET_USER,
            "--password",
            TARGET_SECRET,
        ],
        vec![
            "--lld", "iscsi", "--mode", "account", "--op", "bind", "--tid", "1", "--user", USER,
        ],
        vec![
            "--lld",
            "iscsi",
            "--mode",
            "account",
            "--op",
            "bind",
            "--tid",
            "1",
            "--user",
            TARGET_USER,
            "--outgoing",
        ],
    ] {
        let out = if debian.exists() {
            d.adm_with(debian, &args)
        } else {
            d.adm(&args)
        };
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            stdout_of(&out),
            stderr_of(&out)
        );
    }
    let mutual = format!("target_user={TARGET_USER}&target_password={TARGET_SECRET}");
    accept(
        &d,
        inq(&url(&d, Some((USER, SECRET)), &mutual)),
        "mutual CHAP",
    );
    let wrong = format!("target_user={TARGET_USER}&target_password=notthetarget99");
    refuse(
        &d,
        inq(&url(&d, Some((USER, SECRET)), &wrong)),
        "a target that cannot prove itself",
    );
    // One-way still works beside the outgoing account.
    accept(&d, inq(&url(&d, Some((USER, SECRET)), "")), "one-way CHAP");
}

#[test]
fn discovery_chap_guards_send_targets() {
    require("iscsi-ls");
    let d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, 64 * MIB);
    account(&d, &["--op", "new", "--user", USER, "--password", SECRET]);
    // Without --tid: discovery sessions.
    account(&d, &["--op", "bind", "--user", USER]);
    let portal = d.portal();
    let with = format!("iscsi://{USER}%{SECRET}@{portal}");
    let out = run_tool("iscsi-ls", &[&with], WAIT);
    assert!(
        out.success(),
        "{}\n{}",
        out.describe("discovery with CHAP"),
        d.log()
    );
    assert!(out.stdout.contains(IQN), "{}", out.stdout);
    let without = format!("iscsi://{portal}");
    let out = run_tool("iscsi-ls", &[&without], WAIT);
    assert!(
        !out.success() || !out.stdout.contains(IQN),
        "discovery without CHAP listed the target:\n{}",
        out.stdout
    );
    // The target itself asks nothing: its own bindings are empty.
    accept(&d, inq(&url(&d, None, "")), "normal login without CHAP");
}
