//! Text layouts of tgt's `--op show`, byte for byte (indentation, labels, "Yes"/"No", sizes in MB, trailing newlines),
//! so scripts that parse tgt's output keep working. Plain data in, String out.
//!
//! Layouts follow tgt 1.0.85 (`usr/target.c` `tgt_target_show_all`,
//! `system_show`, `account_show`, `lld_show`; `usr/iscsi/iscsid.c`
//! `iscsi_target_show`, `isns_show`; `usr/iscsi/session.c` nexus info) and
//! were compared with Debian's `tgtd` output (see `tests/interop.rs`).
//! tgt indents with four spaces per level (`_TAB1` .. `_TAB4`).

use std::fmt::Write;

const TAB1: &str = "    ";
const TAB2: &str = "        ";
const TAB3: &str = "            ";
const TAB4: &str = "                ";

/// One iSCSI connection of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    pub cid: u32,
    /// The initiator's IP address, as tgt's `iscsi_tcp_show` prints it.
    pub address: String,
}

/// One I_T nexus (an iSCSI session; `nexus` is its TSIH).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NexusView {
    pub nexus: u64,
    pub initiator: String,
    /// InitiatorAlias; `None` prints as "none".
    pub alias: Option<String>,
    pub connections: Vec<ConnectionView>,
}

/// One logical unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LunView {
    pub lun: u64,
    /// tgt's device type name, e.g. "controller" or "disk".
    pub type_name: String,
    pub scsi_id: String,
    pub scsi_sn: String,
    /// Bytes.
    pub size: u64,
    pub block_size: u32,
    pub online: bool,
    pub removable: bool,
    pub prevent_removal: bool,
    pub readonly: bool,
    pub swp: bool,
    pub thin_provisioning: bool,
    /// "null", "rdwr", ...
    pub bstype: String,
    /// `None` prints as "None".
    pub path: Option<String>,
    /// As tgt prints them: "", "sync", "direct" or "sync:direct" (see [`bsoflags_text`]).
    pub bsoflags: String,
}

/// One target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetView {
    pub tid: i32,
    pub name: String,
    /// "iscsi".
    pub driver: String,
    /// "ready" or "offline".
    pub state: String,
    pub nexuses: Vec<NexusView>,
    pub luns: Vec<LunView>,
    /// Account lines under "Account information:": incoming user names, then
    /// the outgoing one as `"name (outgoing)"` (see [`outgoing_account`]).
    pub accounts: Vec<String>,
    /// Address ACLs ("ALL", "10.0.0.0/8", ...), printed before the names.
    pub acl_addresses: Vec<String>,
    /// Initiator-name ACLs.
    pub acl_names: Vec<String>,
}

/// tgt's text for an outgoing account line: `"user (outgoing)"`.
pub fn outgoing_account(user: &str) -> String {
    format!("{user} (outgoing)")
}

/// tgt's `print_disksize`: a size in bytes as the "MB" number tgt prints.
///
/// tgt computes `((s/512) - (((s/512)/625) - 974)) / 1950` in unsigned
/// 64-bit arithmetic (an approximation of bytes/10^6, rounded); we keep its
/// wrap-around so every size prints the same number.
pub fn disk_size_mb(size: u64) -> u64 {
    let sectors = size / 512;
    sectors.wrapping_sub((sectors / 625).wrapping_sub(974)) / 1950
}

/// tgt's `open_flags_to_str` for the two flags tgt knows: "sync", "direct", "sync:direct" or "".
pub fn bsoflags_text(sync: bool, direct: bool) -> String {
    match (sync, direct) {
        (true, true) => "sync:direct".into(),
        (true, false) => "sync".into(),
        (false, true) => "direct".into(),
        (false, false) => String::new(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn push_nexus(s: &mut String, n: &NexusView) {
    let _ = writeln!(s, "{TAB2}I_T nexus: {}", n.nexus);
    // tgt stores the info text when the session is created, from its first
    // connection only (iscsi/session.c `session_create`).
    let _ = writeln!(
        s,
        "{TAB3}Initiator: {} alias: {}",
        n.initiator,
        n.alias.as_deref().unwrap_or("none")
    );
    if let Some(c) = n.connections.first() {
        let _ = writeln!(s, "{TAB3}Connection: {}", c.cid);
        let _ = writeln!(s, "{TAB4}IP Address: {}", c.address);
    }
}

fn push_lun(s: &mut String, l: &LunView) {
    let _ = writeln!(s, "{TAB2}LUN: {}", l.lun);
    let _ = writeln!(s, "{TAB3}Type: {}", l.type_name);
    let _ = writeln!(s, "{TAB3}SCSI ID: {}", l.scsi_id);
    let _ = writeln!(s, "{TAB3}SCSI SN: {}", l.scsi_sn);
    let _ = writeln!(
        s,
        "{TAB3}Size: {} MB, Block size: {}",
        disk_size_mb(l.size),
        l.block_size
    );
    let _ = writeln!(s, "{TAB3}Online: {}", yes_no(l.online));
    let _ = writeln!(s, "{TAB3}Removable media: {}", yes_no(l.removable));
    let _ = writeln!(s, "{TAB3}Prevent removal: {}", yes_no(l.prevent_removal));
    let _ = writeln!(s, "{TAB3}Readonly: {}", yes_no(l.readonly));
    let _ = writeln!(s, "{TAB3}SWP: {}", yes_no(l.swp));
    let _ = writeln!(
        s,
        "{TAB3}Thin-provisioning: {}",
        yes_no(l.thin_provisioning)
    );
    let _ = writeln!(s, "{TAB3}Backing store type: {}", l.bstype);
    let _ = writeln!(
        s,
        "{TAB3}Backing store path: {}",
        l.path.as_deref().unwrap_or("None")
    );
    let _ = writeln!(s, "{TAB3}Backing store flags: {}", l.bsoflags);
}

/// `--op show --mode target` (all, or one target when the vec has one).
///
/// Note: tgtd answers `--mode target --op show --tid N` with the target's
/// iSCSI parameters, not this layout (mgmt.c sends a tid >= 0 to the
/// driver); use [`format_params`] for that.
pub fn format_targets(targets: &[TargetView]) -> String {
    let mut s = String::new();
    for t in targets {
        let _ = writeln!(s, "Target {}: {}", t.tid, t.name);
        let _ = writeln!(s, "{TAB1}System information:");
        let _ = writeln!(s, "{TAB2}Driver: {}", t.driver);
        let _ = writeln!(s, "{TAB2}State: {}", t.state);
        let _ = writeln!(s, "{TAB1}I_T nexus information:");
        for n in &t.nexuses {
            push_nexus(&mut s, n);
        }
        let _ = writeln!(s, "{TAB1}LUN information:");
        for l in &t.luns {
            push_lun(&mut s, l);
        }
        if t.driver == "iscsi" || t.driver == "iser" {
            let _ = writeln!(s, "{TAB1}Account information:");
            for a in &t.accounts {
                let _ = writeln!(s, "{TAB2}{a}");
            }
        }
        let _ = writeln!(s, "{TAB1}ACL information:");
        for a in t.acl_addresses.iter().chain(&t.acl_names) {
            let _ = writeln!(s, "{TAB2}{a}");
        }
    }
    s
}

/// What `--op show --mode system` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemView {
    /// Not printed by tgt 1.0.85 (it is `tgtadm --version`); kept for callers.
    pub version: String,
    /// "ready" or "offline".
    pub state: String,
    /// ("iscsi", "ready"), ("iser", "error"), ...
    pub drivers: Vec<(String, String)>,
    /// Backing store lines as tgt prints them, e.g. "rdwr (bsoflags sync:direct)" or "null".
    pub bstypes: Vec<String>,
    /// Device type names: "disk", "cd/dvd", "controller", ...
    pub device_types: Vec<String>,
    /// rtgt's daemon-wide limits and their use, as `key=value` lines of a
    /// last `Limits:` block (tgt has none; empty prints nothing).
    pub limits: Vec<(String, String)>,
}

/// `--op show --mode system`, tgt's layout: System, LLDs, Backing stores,
/// Device types, then the iscsi driver's iSNS block (iSNS is never
/// configured in rtgt, so tgt's defaults are printed when an "iscsi" driver
/// is listed). `debug` is always "off".
pub fn format_system(sys: &SystemView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "System:");
    let _ = writeln!(s, "{TAB1}State: {}", sys.state);
    let _ = writeln!(s, "{TAB1}debug: off");
    let _ = writeln!(s, "LLDs:");
    for (name, state) in &sys.drivers {
        let _ = writeln!(s, "{TAB1}{name}: {state}");
    }
    let _ = writeln!(s, "Backing stores:");
    for b in &sys.bstypes {
        let _ = writeln!(s, "{TAB1}{b}");
    }
    let _ = writeln!(s, "Device types:");
    for d in &sys.device_types {
        let _ = writeln!(s, "{TAB1}{d}");
    }
    if sys.drivers.iter().any(|(n, _)| n == "iscsi") {
        s.push_str(&format_isns(false, "", 3205, false));
    }
    if !sys.limits.is_empty() {
        let _ = writeln!(s, "Limits:");
        for (k, v) in &sys.limits {
            let _ = writeln!(s, "{TAB1}{k}={v}");
        }
    }
    s
}

/// The iscsi driver's iSNS block of `--mode system --op show` (iscsi/isns.c `isns_show`).
pub fn format_isns(
    enabled: bool,
    server_ip: &str,
    server_port: u16,
    access_control: bool,
) -> String {
    let on_off = |b: bool| if b { "On" } else { "Off" };
    let mut s = String::new();
    let _ = writeln!(s, "iSNS:");
    let _ = writeln!(s, "{TAB1}iSNS={}", on_off(enabled));
    let _ = writeln!(s, "{TAB1}iSNSServerIP={server_ip}");
    let _ = writeln!(s, "{TAB1}iSNSServerPort={server_port}");
    let _ = writeln!(s, "{TAB1}iSNSAccessControl={}", on_off(access_control));
    s
}

/// `--op show --mode portal`: one `"Portal: ADDR:PORT,TPGT"` line each.
///
/// Entries are printed as given; tgt puts IPv6 addresses in brackets, so
/// pass `"[::1]:3260,1"` for those (see [`portal_text`]).
pub fn format_portals(portals: &[String]) -> String {
    let mut s = String::new();
    for p in portals {
        let _ = writeln!(s, "Portal: {p}");
    }
    s
}

/// tgt's portal text: `addr:port,tpgt`, with IPv6 addresses in brackets.
pub fn portal_text(addr: &str, port: u16, tpgt: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port},{tpgt}")
    } else {
        format!("{addr}:{port},{tpgt}")
    }
}

/// One iSCSI session of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// The TSIH, which tgt calls the session id.
    pub sid: u64,
    pub initiator: String,
    pub connections: Vec<ConnectionView>,
}

/// The session/connection listing tgt prints for `--mode conn --op show --tid T`
/// (iscsid.c `iscsi_target_show_connections`): every connection of every
/// given session. (tgt 1.0.85 answers `--mode session --op show` with
/// "invalid request"; a session's parameters print with [`format_params`].)
pub fn format_sessions(sessions: &[SessionView]) -> String {
    let mut s = String::new();
    for sess in sessions {
        for c in &sess.connections {
            s.push_str(&format_connection(sess.sid, &sess.initiator, c));
        }
    }
    s
}

/// One block of [`format_sessions`]: session `sid`'s connection `conn`.
pub fn format_connection(sid: u64, initiator: &str, conn: &ConnectionView) -> String {
    format!(
        "Session: {sid}\n{TAB1}Connection: {}\n{TAB2}Initiator: {initiator}\n{TAB2}IP Address: {}\n",
        conn.cid, conn.address
    )
}

/// `key=value` lines, as tgt prints a target's or a session's iSCSI
/// parameters (`--mode target --op show --tid N`: iscsid.c `show_iscsi_param`).
pub fn format_params(params: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in params {
        let _ = writeln!(s, "{k}={v}");
    }
    s
}

/// `--mode account --op show` (target.c `account_show`): nothing at all
/// when there are no accounts. tgt lists the newest account first.
pub fn format_accounts(users: &[String]) -> String {
    let mut s = String::new();
    if !users.is_empty() {
        let _ = writeln!(s, "Account list:");
        for u in users {
            let _ = writeln!(s, "{TAB1}{u}");
        }
    }
    s
}

/// One driver for [`format_llds`]: (name, state, [(tid, target name)]).
pub type LldView = (String, String, Vec<(i32, String)>);

/// `--mode lld --op show` (target.c `lld_show`): each driver with its state
/// and the targets it serves, as `(tid, name)`.
pub fn format_llds(drivers: &[LldView]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "LLDs:");
    for (name, state, targets) in drivers {
        let _ = writeln!(s, "{TAB1}{name}: {state}");
        for (tid, tname) in targets {
            let _ = writeln!(s, "{TAB2}Target {tid}: {tname}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(tid: i32) -> LunView {
        LunView {
            lun: 0,
            type_name: "controller".into(),
            scsi_id: format!("IET     {:04x}0000", tid),
            scsi_sn: format!("beaf{tid}0"),
            size: 0,
            block_size: 1,
            online: true,
            removable: false,
            prevent_removal: false,
            readonly: false,
            swp: false,
            thin_provisioning: false,
            bstype: "null".into(),
            path: None,
            bsoflags: String::new(),
        }
    }

    #[test]
    fn disk_sizes_match_tgt() {
        // Observed from Debian tgtd 1.0.85.
        assert_eq!(disk_size_mb(0), 0);
        assert_eq!(disk_size_mb(100 << 20), 105);
        assert_eq!(disk_size_mb(1 << 30), 1074);
        assert_eq!(disk_size_mb(u64::MAX), disk_size_mb(u64::MAX));
    }

    #[test]
    fn target_layout_matches_tgtd() {
        // Captured from Debian tgtd 1.0.85 with one initiator logged in.
        let expected = "Target 3: iqn.x:t3
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 1
            Initiator: iqn.1994-05.com.example:mgmt-init alias: myalias
            Connection: 0
                IP Address: 127.0.0.1
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00030000
            SCSI SN: beaf30
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
    Account information:
        u1
        u2 (outgoing)
    ACL information:
        ALL
        10.0.0.0/8
        iqn.foo
";
        let t = TargetView {
            tid: 3,
            name: "iqn.x:t3".into(),
            driver: "iscsi".into(),
            state: "ready".into(),
            nexuses: vec![NexusView {
                nexus: 1,
                initiator: "iqn.1994-05.com.example:mgmt-init".into(),
                alias: Some("myalias".into()),
                connections: vec![ConnectionView {
                    cid: 0,
                    address: "127.0.0.1".into(),
                }],
            }],
            luns: vec![controller(3)],
            accounts: vec!["u1".into(), outgoing_account("u2")],
            acl_addresses: vec!["ALL".into(), "10.0.0.0/8".into()],
            acl_names: vec!["iqn.foo".into()],
        };
        assert_eq!(format_targets(&[t]), expected);
        assert_eq!(format_targets(&[]), "");
    }

    #[test]
    fn system_layout() {
        let sys = SystemView {
            version: "1.0.85".into(),
            state: "ready".into(),
            drivers: vec![("iscsi".into(), "ready".into())],
            bstypes: vec!["null".into(), "rdwr (bsoflags sync:direct)".into()],
            device_types: vec!["disk".into()],
            limits: vec![],
        };
        let tgt = "System:\n    State: ready\n    debug: off\nLLDs:\n    iscsi: ready\n\
             Backing stores:\n    null\n    rdwr (bsoflags sync:direct)\nDevice types:\n    disk\n\
             iSNS:\n    iSNS=Off\n    iSNSServerIP=\n    iSNSServerPort=3205\n    iSNSAccessControl=Off\n";
        assert_eq!(format_system(&sys), tgt);
        let with_limits = SystemView {
            limits: vec![("login_timeout".into(), "15".into())],
            ..sys
        };
        assert_eq!(
            format_system(&with_limits),
            format!("{tgt}Limits:\n    login_timeout=15\n")
        );
    }

    #[test]
    fn portals_sessions_accounts() {
        assert_eq!(
            format_portals(&["127.0.0.1:3260,1".into()]),
            "Portal: 127.0.0.1:3260,1\n"
        );
        assert_eq!(portal_text("::1", 3260, 1), "[::1]:3260,1");
        let s = SessionView {
            sid: 1,
            initiator: "iqn.i".into(),
            connections: vec![ConnectionView {
                cid: 0,
                address: "127.0.0.1".into(),
            }],
        };
        assert_eq!(
            format_sessions(&[s]),
            "Session: 1\n    Connection: 0\n        Initiator: iqn.i\n        IP Address: 127.0.0.1\n"
        );
        assert_eq!(format_accounts(&[]), "");
        assert_eq!(
            format_accounts(&["u2".into(), "u1".into()]),
            "Account list:\n    u2\n    u1\n"
        );
        assert_eq!(
            format_params(&[("nop_interval".into(), "0".into())]),
            "nop_interval=0\n"
        );
        assert_eq!(bsoflags_text(true, true), "sync:direct");
    }
}
