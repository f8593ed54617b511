//! Who may manage the daemon: the management socket is root's with mode
//! 0600, and if it is made reachable anyway (chmod), the daemon still checks
//! the peer with SO_PEERCRED and refuses anyone but root (or the daemon's
//! own user), logging why.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use common::{socket_path_for, stderr_of, tgtadm_path, Tgtd, TgtdOpts};

const IQN: &str = "iqn.2026-11.org.rtgt:mgmt-security";

#[test]
fn only_root_manages_the_daemon() {
    let d = Tgtd::start(TgtdOpts::default());
    let sock = socket_path_for(d.control_port);
    let meta = std::fs::metadata(&sock).expect("the management socket exists");
    assert_eq!(meta.uid(), 0, "owned by root");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode 0600");

    // Open the socket to everyone; the daemon must still refuse a non-root peer.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let port = d.control_port.to_string();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tgtadm_path())
        .args([
            "-C", &port, "--lld", "iscsi", "--mode", "target", "--op", "new",
        ])
        .args(["--tid", "1", "-T", IQN])
        .output()
        .expect("run tgtadm as nobody (setpriv, util-linux)");
    assert!(
        !out.status.success(),
        "a non-root tgtadm was obeyed: {}",
        stderr_of(&out)
    );
    let show = d.adm_ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    assert!(
        !show.contains(IQN),
        "the refused request took effect:\n{show}"
    );
    let log = d.log();
    assert!(
        log.contains("only root may manage tgtd: the request came from uid 65534"),
        "the refusal is not logged:\n{log}"
    );
    // Root still manages it.
    d.new_target(1, IQN);
}
