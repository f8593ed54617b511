//! Management interoperability: Debian's `tgtadm` against our `tgtd`, our
//! `tgtadm` against Debian's `tgtd`, and tgt's observable behaviour (layout of
//! `--op show`, error messages, exit codes, `--mode system` shutdown,
//! `readonly=1` as seen by an initiator).

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    require, require_qemu_iscsi, run_tool, stderr_of, stdout_of, Tgtd, TgtdOpts, DEBIAN_TGTADM,
    DEBIAN_TGTD,
};

const IQN: &str = "iqn.2026-11.org.rtgt:interop";
const MIB: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

fn describe(what: &str, o: &Output) -> String {
    format!(
        "{what}: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        stdout_of(o),
        stderr_of(o)
    )
}

/// tgt's `--op show --mode target` layout for one target with LUN 1.
fn assert_show_layout(show: &str, tid: u32, iqn: &str, backing: &Path) {
    let header = format!("Target {tid}: {iqn}");
    assert!(
        show.lines().any(|l| l == header),
        "no {header:?} line in:\n{show}"
    );
    let lines: Vec<&str> = show.lines().map(str::trim).collect();
    let lun1 = lines
        .iter()
        .position(|l| *l == "LUN: 1")
        .unwrap_or_else(|| panic!("no \"LUN: 1\" in:\n{show}"));
    let want = format!("Backing store path: {}", backing.display());
    assert!(
        lines[lun1..].iter().any(|l| *l == want),
        "no {want:?} under LUN 1 in:\n{show}"
    );
    assert!(
        lines[lun1..].contains(&"Type: disk"),
        "LUN 1 is not a disk:\n{show}"
    );
    assert!(
        lines.contains(&"ACL information:"),
        "no ACL section:\n{show}"
    );
}

/// Creates target 1 with LUN 1 and binds it, through `client`.
fn provision(d: &Tgtd, client: &Path, size: u64) -> std::path::PathBuf {
    let file = d.sparse_file(size);
    let f = file.to_string_lossy().into_owned();
    for args in [
        vec![
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", IQN,
        ],
        vec![
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &f,
        ],
        vec![
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ],
    ] {
        let o = d.adm_with(client, &args);
        assert!(
            o.status.success(),
            "{}\n--- daemon ---\n{}",
            describe(&args.join(" "), &o),
            d.log()
        );
    }
    file
}

fn show(d: &Tgtd, client: &Path) -> String {
    let o = d.adm_with(
        client,
        &["--lld", "iscsi", "--op", "show", "--mode", "target"],
    );
    assert!(
        o.status.success(),
        "{}",
        describe("--op show --mode target", &o)
    );
    stdout_of(&o)
}

/// `tgtadm: can't find the target` on stderr and a non-zero exit (tgt exits
/// with the errno-like code 22 here; we only require non-zero).
fn assert_cant_find_target(o: &Output, what: &str) {
    assert!(!o.status.success(), "{}", describe(what, o));
    assert!(
        stderr_of(o).contains("tgtadm: can't find the target"),
        "{}",
        describe(what, o)
    );
}

fn error_messages(d: &Tgtd, client: &Path) {
    let o = d.adm_with(
        client,
        &[
            "--lld", "iscsi", "--op", "show", "--mode", "target", "--tid", "9",
        ],
    );
    assert_cant_find_target(&o, "show of a missing tid");
    let o = d.adm_with(
        client,
        &[
            "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "9",
        ],
    );
    assert_cant_find_target(&o, "delete of a missing target");
}

#[test]
fn debian_tgtadm_drives_our_tgtd() {
    require(DEBIAN_TGTADM);
    let client = Path::new(DEBIAN_TGTADM);
    let mut d = Tgtd::start(TgtdOpts::default());
    let file = provision(&d, client, 64 * MIB);
    assert_show_layout(&show(&d, client), 1, IQN, &file);
    error_messages(&d, client);
    d.assert_alive("after Debian tgtadm requests");
}

#[test]
fn our_tgtadm_drives_debian_tgtd() {
    require(DEBIAN_TGTD);
    let ours = common::tgtadm_path();
    let mut d = Tgtd::start(TgtdOpts {
        client: ours.clone(),
        ..TgtdOpts::debian()
    });
    let file = provision(&d, &ours, 64 * MIB);
    assert_show_layout(&show(&d, &ours), 1, IQN, &file);
    error_messages(&d, &ours);
    d.assert_alive("after our tgtadm requests");
}

#[test]
fn error_messages_match_between_clients() {
    require(DEBIAN_TGTADM);
    let d = Tgtd::start(TgtdOpts::default());
    for client in [common::tgtadm_path(), DEBIAN_TGTADM.into()] {
        error_messages(&d, &client);
    }
}

#[test]
fn show_portal_and_system() {
    let d = Tgtd::start(TgtdOpts::default());
    for client in [common::tgtadm_path(), DEBIAN_TGTADM.into()] {
        let o = d.adm_with(
            &client,
            &["--lld", "iscsi", "--op", "show", "--mode", "portal"],
        );
        assert!(o.status.success(), "{}", describe("show portal", &o));
        let want = format!("Portal: 127.0.0.1:{},1", d.port);
        assert!(
            stdout_of(&o).lines().any(|l| l.trim() == want),
            "no {want:?}:\n{}",
            describe("show portal", &o)
        );

        let o = d.adm_with(&client, &["--op", "show", "--mode", "system"]);
        assert!(o.status.success(), "{}", describe("show system", &o));
        let out = stdout_of(&o);
        assert!(
            out.lines().next() == Some("System:"),
            "{}",
            describe("show system", &o)
        );
        assert!(
            out.lines().any(|l| l.trim() == "State: ready"),
            "{}",
            describe("show system", &o)
        );
        assert!(
            out.lines().any(|l| l.trim() == "iscsi: ready"),
            "{}",
            describe("show system", &o)
        );
        assert!(
            out.lines().any(|l| l.trim().starts_with("rdwr")),
            "rdwr backing store not listed:\n{out}"
        );
    }
}

/// tgt refuses `--op delete --mode system` while a target exists (the
/// daemon keeps serving); once the targets are gone it shuts down.
#[test]
fn delete_system_shuts_the_daemon_down() {
    for client in [common::tgtadm_path(), DEBIAN_TGTADM.into()] {
        let mut d = Tgtd::start(TgtdOpts::default());
        provision(&d, &client, 16 * MIB);
        let o = d.adm_with(&client, &["--op", "delete", "--mode", "system"]);
        assert!(
            !o.status.success(),
            "delete system with a target configured must be refused:\n{}",
            describe("delete system", &o)
        );
        d.assert_alive("after a refused delete system");

        let o = d.adm_with(
            &client,
            &[
                "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1",
            ],
        );
        assert!(o.status.success(), "{}", describe("delete target", &o));
        let o = d.adm_with(&client, &["--op", "delete", "--mode", "system"]);
        assert!(o.status.success(), "{}", describe("delete system", &o));
        let st = d.wait_exit(Duration::from_secs(30));
        assert!(
            st.is_some(),
            "daemon still running 30 s after `--op delete --mode system` from {}\n{}",
            client.display(),
            d.log()
        );
    }
}

#[test]
fn readonly_update_is_seen_by_initiators() {
    require_qemu_iscsi();
    require("qemu-io");
    require("iscsi-inq");
    let d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, 16 * MIB);
    let lun = d.qemu_opts(IQN, 1, "");
    let write = ["-c", "write -P 0x5a 0 4k", "--image-opts", lun.as_str()];
    let timeout = Duration::from_secs(60);

    let o = run_tool("qemu-io", &write, timeout);
    assert!(
        o.success(),
        "write before readonly=1 must work:\n{}",
        o.describe("qemu-io write")
    );

    d.adm_ok(&[
        "--lld",
        "iscsi",
        "--op",
        "update",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
        "--params",
        "readonly=1",
    ]);
    let shown = d.adm_ok(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(
        shown.lines().any(|l| l.trim() == "Readonly: Yes"),
        "readonly=1 not shown:\n{shown}"
    );

    // QEMU reads the WP bit of the MODE SENSE header (SBC-3 §6.5.1,
    // device-specific parameter) and refuses a read-write open.
    let o = run_tool("qemu-io", &write, timeout);
    assert!(
        !o.success(),
        "write to a read-only LUN succeeded:\n{}",
        o.describe("qemu-io write")
    );
    assert!(
        o.stderr.contains("write protected") || o.stdout.contains("write protected"),
        "{}",
        o.describe("qemu-io write")
    );
    // Reads still work, and see the data written before.
    let o = run_tool(
        "qemu-io",
        &["-r", "-c", "read -P 0x5a 0 4k", "--image-opts", &lun],
        timeout,
    );
    assert!(o.success(), "{}", o.describe("qemu-io -r read"));
    assert!(
        !o.stdout.contains("Pattern verification failed"),
        "{}",
        o.describe("qemu-io -r read")
    );

    d.adm_ok(&[
        "--lld",
        "iscsi",
        "--op",
        "update",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
        "--params",
        "readonly=0",
    ]);
    let o = run_tool("qemu-io", &write, timeout);
    assert!(
        o.success(),
        "write after readonly=0 must work:\n{}",
        o.describe("qemu-io write")
    );
    let mut d = d;
    d.assert_alive("end of test");
}

/// tgt's ACLs (`--op bind --mode target -I ADDR|CIDR|ALL`, `-Q NAME`): an
/// initiator outside them can neither log in nor see the target in
/// SendTargets; one inside can.
#[test]
fn bind_by_address_and_initiator_name() {
    require("iscsi-ls");
    require("iscsi-inq");
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun(1, IQN, 16 * MIB);
    let lun = d.lun_url(IQN, 1);
    let t = ["--lld", "iscsi", "--mode", "target", "--tid", "1"];
    let acl = |op: &str, flag: &str, value: &str| {
        let mut args = t.to_vec();
        args.extend_from_slice(&["--op", op, flag, value]);
        d.adm_ok(&args);
    };
    let listed = || {
        let out = run_tool("iscsi-ls", &["-s", &d.url()], TIMEOUT);
        out.stdout.contains(&format!("Target:{IQN} "))
    };
    let inq = |name: &str| run_tool("iscsi-inq", &["-i", name, &lun], TIMEOUT).success();
    const NAME: &str = "iqn.2026-11.org.rtgt:allowed-host";

    acl("unbind", "-I", "ALL");
    acl("bind", "-I", "10.0.0.0/8");
    assert!(
        !listed(),
        "SendTargets showed a target whose ACL excludes 127.0.0.1"
    );
    assert!(!inq(NAME), "an initiator outside 10.0.0.0/8 logged in");

    acl("bind", "-I", "127.0.0.0/8");
    assert!(
        listed(),
        "127.0.0.0/8 is bound but the target is not listed"
    );
    assert!(inq(NAME), "127.0.0.0/8 is bound but the login failed");

    acl("unbind", "-I", "127.0.0.0/8");
    acl("bind", "-Q", NAME);
    assert!(inq(NAME), "{NAME} is bound by name but its login failed");
    assert!(
        !inq("iqn.2026-11.org.rtgt:someone-else"),
        "an initiator bound neither by address nor by name logged in"
    );
    let show = d.adm_ok(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.contains("10.0.0.0/8") && show.contains(NAME), "{show}");
    d.assert_alive("after the ACL changes");
}

/// `--op delete --mode target --force` under a write load ends the sessions
/// and the target, and the daemon goes on serving. (A LUN with commands at
/// its store is refused deletion, like tgt: a unit test in mgmt.rs.)
#[test]
fn forced_target_delete_under_io_is_clean() {
    require_qemu_iscsi();
    let mut d = Tgtd::start(TgtdOpts::default());
    d.new_target_with_lun_args(1, IQN, 256 * MIB, &["-E", "rdwr"]);
    let url = d.lun_url(IQN, 1);
    let load = common::spawn_tool(
        "qemu-img",
        &[
            "bench",
            "-f",
            "raw",
            "-w",
            "-d",
            "32",
            "-s",
            "4k",
            "-c",
            "100000000",
            &url,
        ],
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !d
        .adm_ok(&[
            "--lld", "iscsi", "--mode", "conn", "--op", "show", "--tid", "1",
        ])
        .contains("Session:")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-img never logged in\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = d.adm(&[
        "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1",
    ]);
    assert!(
        stderr_of(&out).contains("this target is still active"),
        "deleting a target with a session, without --force: {}",
        stderr_of(&out)
    );
    d.adm_ok(&[
        "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
    ]);
    // QEMU's driver keeps trying to log back in to the deleted target; the
    // target side is what is checked.
    let show = d.adm_ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    assert!(!show.contains(IQN), "the target survived --force:\n{show}");
    drop(load);
    d.assert_alive("after a forced delete under load");
    d.new_target_with_lun(2, "iqn.2026-11.org.rtgt:after", 16 * MIB);
    let out = run_tool(
        "iscsi-inq",
        &[&d.lun_url("iqn.2026-11.org.rtgt:after", 1)],
        TIMEOUT,
    );
    assert!(
        out.success(),
        "{}",
        out.describe("a new target after the forced delete")
    );
}
