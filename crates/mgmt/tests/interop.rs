//! Our tgtadm against Debian's tgtd 1.0.85, and our show formatters against
//! the text that tgtd prints for the same state.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rtgt_mgmt::show::{self, LunView, SystemView, TargetView};

/// Debian's tgtd on a private control port and a free loopback iSCSI port;
/// killed (by its pid) and its socket files removed on drop.
struct Tgtd {
    child: Child,
    control_port: u16,
    iscsi_port: u16,
}

impl Tgtd {
    fn start() -> Tgtd {
        require(DEBIAN_TGTD);
        require(DEBIAN_TGTADM);
        // A control port no other tgtd uses: its socket file must not exist.
        let base = 24000 + (std::process::id() % 8000) as u16;
        let control_port = (0..200u16)
            .map(|i| base + i)
            .find(|p| !rtgt_mgmt::socket_path(*p).exists())
            .expect("free control port");
        let iscsi_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(DEBIAN_TGTD)
            .args(["-f", "-C", &control_port.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{iscsi_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Debian tgtd");
        let t = Tgtd {
            child,
            control_port,
            iscsi_port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut t = t;
        loop {
            // Our child must be the one answering: if it exited (say the
            // port was taken meanwhile), stop before touching anyone's tgtd.
            assert!(
                matches!(t.child.try_wait(), Ok(None)),
                "Debian tgtd exited at start (control port {} in use?)",
                t.control_port
            );
            if t.ours(&["--mode", "sys", "--op", "show"]).0 == 0 {
                std::thread::sleep(Duration::from_millis(50));
                assert!(matches!(t.child.try_wait(), Ok(None)), "Debian tgtd exited");
                break;
            }
            assert!(Instant::now() < deadline, "Debian tgtd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }

    fn args<'a>(&'a self, port: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["-C", port];
        v.extend_from_slice(args);
        v
    }

    fn ours(&self, args: &[&str]) -> (i32, String, String) {
        let port = self.control_port.to_string();
        ours(&self.args(&port, args))
    }

    fn debian(&self, args: &[&str]) -> (i32, String, String) {
        let port = self.control_port.to_string();
        debian(&self.args(&port, args), &[])
    }

    /// Run with our client, check success, and check Debian's client prints the same.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.ours(args);
        assert_eq!(o.0, 0, "{args:?}: {}", o.2);
        o.1
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let sock: PathBuf = rtgt_mgmt::socket_path(self.control_port);
        let mut lock = sock.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(PathBuf::from(lock));
    }
}

fn controller(tid: i32) -> LunView {
    LunView {
        lun: 0,
        type_name: "controller".into(),
        scsi_id: format!("IET     {tid:04x}0000"),
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
fn our_tgtadm_drives_debian_tgtd() {
    let t = Tgtd::start();
    let dir = tempdir();
    let img = dir.join("lun1.img");
    let f = std::fs::File::create(&img).expect("create image");
    f.set_len(100 << 20).expect("sparse image");
    let img_s = img.to_string_lossy().into_owned();

    // Empty daemon.
    assert_eq!(
        t.ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]),
        ""
    );

    // Errors come back as tgtadm prints them.
    let e = t.ours(&[
        "--lld", "iscsi", "--mode", "target", "--op", "delete", "--tid", "9",
    ]);
    assert_eq!((e.0, e.2.as_str()), (22, "tgtadm: can't find the target\n"));
    assert_eq!(
        t.debian(&["--lld", "iscsi", "--mode", "target", "--op", "delete", "--tid", "9"]),
        e
    );
    let e = t.ours(&["--lld", "nosuch", "--mode", "target", "--op", "show"]);
    assert_eq!((e.0, e.2.as_str()), (22, "tgtadm: can't find the driver\n"));

    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "new",
        "--tid",
        "1",
        "-T",
        "iqn.2001-04.com.example:t1",
    ]);
    let e = t.ours(&[
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "new",
        "--tid",
        "1",
        "-T",
        "iqn.other",
    ]);
    assert_eq!(
        (e.0, e.2.as_str()),
        (22, "tgtadm: this target already exists\n")
    );
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "logicalunit",
        "--op",
        "new",
        "--tid",
        "1",
        "--lun",
        "1",
        "-b",
        &img_s,
    ]);
    let e = t.ours(&[
        "--lld", "iscsi", "--mode", "lu", "--op", "new", "--tid", "1", "--lun", "1", "-b", &img_s,
    ]);
    assert_eq!(
        (e.0, e.2.as_str()),
        (22, "tgtadm: this logical unit number already exists\n")
    );
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "lu",
        "--op",
        "new",
        "--tid",
        "1",
        "--lun",
        "2",
        "-b",
        &img_s,
        "--bsoflags",
        "sync:direct",
    ]);
    t.ok(&[
        "--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL",
    ]);
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "bind",
        "--tid",
        "1",
        "-I",
        "10.0.0.0/8",
    ]);
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "bind",
        "--tid",
        "1",
        "-Q",
        "iqn.1994-05.com.example:init",
    ]);
    let e = t.ours(&[
        "--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL",
    ]);
    assert_eq!(
        (e.0, e.2.as_str()),
        (22, "tgtadm: this access control rule already exists\n")
    );
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "account",
        "--op",
        "new",
        "--user",
        "alice",
        "--password",
        "alicesecret12",
    ]);
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "account",
        "--op",
        "new",
        "--user",
        "bob",
        "--password",
        "bobsecret1234",
    ]);
    t.ok(&[
        "--lld", "iscsi", "--mode", "account", "--op", "bind", "--tid", "1", "--user", "alice",
    ]);
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "account",
        "--op",
        "bind",
        "--tid",
        "1",
        "--user",
        "bob",
        "--outgoing",
    ]);
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "new",
        "--tid",
        "3",
        "-T",
        "iqn.2001-04.com.example:t3",
    ]);

    // Target show: Debian's client prints what ours prints, and our
    // formatter reproduces tgtd's text for the same state.
    let shown = t.ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    assert_eq!(
        t.debian(&["--lld", "iscsi", "--mode", "target", "--op", "show"])
            .1,
        shown
    );
    let disk = |lun: u64, flags: &str| LunView {
        lun,
        type_name: "disk".into(),
        scsi_id: format!("IET     0001000{lun}"),
        scsi_sn: format!("beaf1{lun}"),
        size: 100 << 20,
        block_size: 512,
        bstype: "rdwr".into(),
        path: Some(img_s.clone()),
        bsoflags: flags.into(),
        ..controller(1)
    };
    let views = vec![
        TargetView {
            tid: 1,
            name: "iqn.2001-04.com.example:t1".into(),
            driver: "iscsi".into(),
            state: "ready".into(),
            nexuses: vec![],
            luns: vec![controller(1), disk(1, ""), disk(2, "sync:direct")],
            accounts: vec!["alice".into(), show::outgoing_account("bob")],
            acl_addresses: vec!["ALL".into(), "10.0.0.0/8".into()],
            acl_names: vec!["iqn.1994-05.com.example:init".into()],
        },
        TargetView {
            tid: 3,
            name: "iqn.2001-04.com.example:t3".into(),
            driver: "iscsi".into(),
            state: "ready".into(),
            nexuses: vec![],
            luns: vec![controller(3)],
            accounts: vec![],
            acl_addresses: vec![],
            acl_names: vec![],
        },
    ];
    assert_eq!(show::format_targets(&views), shown);

    // Portal show.
    let portals = t.ok(&["--lld", "iscsi", "--mode", "portal", "--op", "show"]);
    assert_eq!(
        portals,
        show::format_portals(&[format!("127.0.0.1:{},1", t.iscsi_port)])
    );

    // Account show: newest first.
    let accounts = t.ok(&["--lld", "iscsi", "--mode", "account", "--op", "show"]);
    assert_eq!(
        accounts,
        show::format_accounts(&["bob".into(), "alice".into()])
    );

    // System show, with the lists tgtd reports.
    let sys = t.ok(&["--mode", "system", "--op", "show"]);
    let section = |name: &str| -> Vec<String> {
        sys.split(&format!("{name}:\n"))
            .nth(1)
            .unwrap_or("")
            .lines()
            .take_while(|l| l.starts_with("    "))
            .map(|l| l.trim_start().to_string())
            .collect()
    };
    let drivers = section("LLDs")
        .iter()
        .filter_map(|l| l.split_once(": "))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let view = SystemView {
        version: "1.0.85".into(),
        state: "ready".into(),
        drivers,
        bstypes: section("Backing stores"),
        device_types: section("Device types"),
        limits: vec![],
    };
    assert_eq!(show::format_system(&view), sys);

    // lld show.
    let llds = t.ok(&["--lld", "iscsi", "--mode", "lld", "--op", "show"]);
    assert!(llds.starts_with(&show::format_llds(&[(
        "iscsi".into(),
        "ready".into(),
        vec![
            (1, "iqn.2001-04.com.example:t1".into()),
            (3, "iqn.2001-04.com.example:t3".into())
        ]
    )])));

    // Target parameters (show --tid N) are key=value lines.
    let params = t.ok(&[
        "--lld", "iscsi", "--mode", "target", "--op", "show", "--tid", "1",
    ]);
    let parsed: Vec<(String, String)> = params
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert!(parsed
        .iter()
        .any(|(k, v)| k == "MaxRecvDataSegmentLength" && v == "8192"));
    assert_eq!(show::format_params(&parsed), params);

    // Updates and deletes.
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "update",
        "--tid",
        "1",
        "--name",
        "MaxRecvDataSegmentLength",
        "--value",
        "65536",
    ]);
    let params = t.ok(&[
        "--lld", "iscsi", "--mode", "target", "--op", "show", "--tid", "1",
    ]);
    assert!(params.contains("MaxRecvDataSegmentLength=65536\n"));
    t.ok(&[
        "--lld",
        "iscsi",
        "--mode",
        "target",
        "--op",
        "unbind",
        "--tid",
        "1",
        "-Q",
        "iqn.1994-05.com.example:init",
    ]);
    t.ok(&[
        "--lld", "iscsi", "--mode", "lu", "--op", "delete", "--tid", "1", "--lun", "2",
    ]);
    let e = t.ours(&[
        "--lld", "iscsi", "--mode", "lu", "--op", "delete", "--tid", "1", "--lun", "2",
    ]);
    assert_eq!(
        (e.0, e.2.as_str()),
        (22, "tgtadm: can't find the logical unit\n")
    );
    // A logged-in initiator: nexus and connection text as tgtd prints them.
    t.ok(&[
        "--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "3", "-I", "ALL",
    ]);
    let login = login(t.iscsi_port, "iqn.2001-04.com.example:t3");
    let shown = t.ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    let nexus = show::NexusView {
        nexus: 1,
        initiator: INITIATOR.into(),
        alias: Some("rtgt-test".into()),
        connections: vec![show::ConnectionView {
            cid: 0,
            address: "127.0.0.1".into(),
        }],
    };
    let t3 = TargetView {
        nexuses: vec![nexus],
        acl_addresses: vec!["ALL".into()],
        ..views[1].clone()
    };
    let own = show::format_targets(std::slice::from_ref(&t3));
    assert!(shown.ends_with(&own), "ours:\n{own}\ntgtd:\n{shown}");
    let conns = t.ok(&[
        "--lld", "iscsi", "--mode", "conn", "--op", "show", "--tid", "3",
    ]);
    assert_eq!(
        conns,
        show::format_sessions(&[show::SessionView {
            sid: 1,
            initiator: INITIATOR.into(),
            connections: t3.nexuses[0].connections.clone(),
        }])
    );
    let e = t.ours(&[
        "--lld", "iscsi", "--mode", "target", "--op", "delete", "--tid", "3",
    ]);
    assert_eq!(
        (e.0, e.2.as_str()),
        (22, "tgtadm: this target is still active\n")
    );
    drop(login);
    std::thread::sleep(Duration::from_millis(300));
    t.ok(&[
        "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "3",
    ]);
    t.ok(&[
        "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1",
    ]);
    assert_eq!(
        t.ok(&["--lld", "iscsi", "--mode", "target", "--op", "show"]),
        ""
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("rtgt-mgmt-interop-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

const INITIATOR: &str = "iqn.1994-05.com.example:rtgt-mgmt-test";

/// A minimal iSCSI login (RFC 7143 §11.12): one Login Request straight to
/// the operational stage and on to full feature phase, no authentication.
/// The session lives as long as the returned stream.
fn login(port: u16, target: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let data = format!(
        "InitiatorName={INITIATOR}\0InitiatorAlias=rtgt-test\0SessionType=Normal\0\
         TargetName={target}\0HeaderDigest=None\0DataDigest=None\0"
    );
    let mut pdu = vec![0u8; 48];
    pdu[0] = 0x43; // immediate Login Request
    pdu[1] = 0x87; // T=1, CSG=1 (operational), NSG=3 (full feature)
    let dl = data.len() as u32;
    pdu[5..8].copy_from_slice(&dl.to_be_bytes()[1..]);
    pdu[8..14].copy_from_slice(&[0x40, 0, 1, 0x37, 0, 1]); // ISID
    pdu[16..20].copy_from_slice(&1u32.to_be_bytes()); // ITT
    pdu[24..28].copy_from_slice(&1u32.to_be_bytes()); // CmdSN
    pdu.extend_from_slice(data.as_bytes());
    let padded = pdu.len().div_ceil(4) * 4;
    pdu.resize(padded, 0);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect portal");
    s.write_all(&pdu).expect("send login");
    let mut rsp = [0u8; 48];
    s.read_exact(&mut rsp).expect("login response");
    assert_eq!(
        (rsp[0] & 0x3f, rsp[36], rsp[37]),
        (0x23, 0, 0),
        "login rejected"
    );
    s
}
