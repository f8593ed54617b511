//! Byte-for-byte compatibility with Debian's tgtadm 1.0.85: the request it
//! sends for a command line equals the one our cli builds, and it prints
//! every response code the way ours does.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::OnceLock;
use std::thread;

use common::*;

const PORT: u16 = 9;

/// A private socket prefix for this test binary; both clients are pointed
/// at it through TGT_IPC_SOCKET.
fn prefix() -> &'static str {
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rtgt-mgmt-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let p = dir.join("sock").to_string_lossy().into_owned();
        // Only socket_path() reads this variable; set once before any use.
        std::env::set_var(rtgt_mgmt::SOCKET_ENV, &p);
        p
    })
}

/// Serve one connection: capture the request (header + `len` bytes), answer
/// with `code` and `body`.
fn serve_once(
    listener: UnixListener,
    code: u32,
    body: &'static str,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = vec![0u8; 120];
        s.read_exact(&mut req).expect("header");
        let len = u32::from_le_bytes([req[72], req[73], req[74], req[75]]) as usize;
        let mut rest = vec![0u8; len.saturating_sub(120)];
        s.read_exact(&mut rest).expect("body");
        req.extend_from_slice(&rest);
        let mut rsp = Vec::new();
        let blen = if body.is_empty() { 0 } else { body.len() + 1 };
        rsp.extend_from_slice(&code.to_le_bytes());
        rsp.extend_from_slice(&((8 + blen) as u32).to_le_bytes());
        if blen > 0 {
            rsp.extend_from_slice(body.as_bytes());
            rsp.push(0);
        }
        let _ = s.write_all(&rsp);
        req
    })
}

fn listener(port: u16) -> UnixListener {
    let path = format!("{}.{port}", prefix());
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).expect("bind")
}

/// (exit, stdout, stderr, request bytes) for Debian's tgtadm and for ours.
fn both(args: &[&str], code: u32, body: &'static str) -> [(i32, String, String, Vec<u8>); 2] {
    require(DEBIAN_TGTADM);
    let port = PORT.to_string();
    let mut full = vec!["-C", port.as_str()];
    full.extend_from_slice(args);
    let h = serve_once(listener(PORT), code, body);
    let (dc, dout, derr) = debian(&full, &[(rtgt_mgmt::SOCKET_ENV, prefix())]);
    let dreq = h.join().expect("debian capture");
    let h = serve_once(listener(PORT), code, body);
    let (oc, oout, oerr) = ours(&full);
    let oreq = h.join().expect("our capture");
    [(dc, dout, derr, dreq), (oc, oout, oerr, oreq)]
}

// One test function: the captures share a socket path.
#[test]
fn requests_and_responses_match_debian_tgtadm() {
    let cmds: &[&[&str]] = &[
        &["--mode", "target", "--op", "show"],
        &[
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
        ],
        &[
            "--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1",
        ],
        &[
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
            "/tmp/x",
            "--bsoflags",
            "direct",
            "--bstype",
            "rdwr",
            "--blocksize",
            "4096",
            "--bsopts",
            "a=b",
        ],
        &[
            "--lld", "iscsi", "--mode", "lu", "--op", "new", "--tid", "1", "--lun", "2", "-b",
            "/tmp/t", "-Y", "tape",
        ],
        &[
            "--lld",
            "iscsi",
            "--mode",
            "lu",
            "--op",
            "update",
            "--tid",
            "1",
            "--lun",
            "2",
            "--params",
            "readonly=1,removable=1",
        ],
        &[
            "--lld", "iscsi", "--mode", "lu", "--op", "delete", "--tid", "1", "--lun", "2",
        ],
        &[
            "--lld", "iscsi", "--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL",
        ],
        &[
            "--lld", "iscsi", "--mode", "target", "--op", "unbind", "--tid", "1", "-Q", "iqn.foo",
        ],
        &[
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
        ],
        &[
            "--lld",
            "iscsi",
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            "u",
            "--password",
            "p",
        ],
        &[
            "--lld",
            "iscsi",
            "--mode",
            "account",
            "--op",
            "bind",
            "--tid",
            "1",
            "--user",
            "u",
            "--outgoing",
        ],
        &[
            "--lld", "iscsi", "--mode", "account", "--op", "unbind", "--user", "u",
        ],
        &["--lld", "iscsi", "--mode", "account", "--op", "show"],
        &[
            "--lld",
            "iscsi",
            "--mode",
            "portal",
            "--op",
            "new",
            "--param",
            "portal=10.0.0.1:3260",
        ],
        &["--lld", "iscsi", "--mode", "portal", "--op", "show"],
        &[
            "--mode", "sys", "--op", "update", "--name", "debug", "--value", "on",
        ],
        &["--mode", "system", "--op", "show"],
        &[
            "--lld", "iscsi", "--mode", "conn", "--op", "show", "--tid", "1", "--sid", "2",
            "--cid", "3",
        ],
        &[
            "--lld", "iscsi", "--mode", "sess", "--op", "show", "--tid", "1", "--sid", "0x10",
        ],
        &["--lld", "iscsi", "--mode", "lld", "--op", "start"],
        &["-L", "iser", "-m", "tgt", "-o", "stat", "-t", "3"],
        &[
            "-m", "lu", "-o", "new", "-t", "1", "-l", "1", "-b", "/dev/sdz", "-Y", "pt", "-E", "sg",
        ],
    ];
    for args in cmds {
        let [d, o] = both(args, 0, "hello\n");
        assert_eq!(o.3, d.3, "request bytes differ for {args:?}");
        assert_eq!(
            (o.0, &o.1, &o.2),
            (d.0, &d.1, &d.2),
            "output differs for {args:?}"
        );
    }
    // Every error code, including ones tgt does not define.
    for code in 0..30u32 {
        let [d, o] = both(&["--mode", "target", "--op", "show"], code, "body\n");
        assert_eq!((o.0, &o.1, &o.2), (d.0, &d.1, &d.2), "response code {code}");
        if (1..25).contains(&code) {
            assert_eq!(
                o.2,
                format!(
                    "tgtadm: {}\n",
                    rtgt_mgmt::TgtadmError::from_code(code).message()
                )
            );
        }
    }
}

/// Argument errors print the same text and exit with the same code.
#[test]
fn argument_errors_match_debian_tgtadm() {
    require(DEBIAN_TGTADM);
    let cmds: &[&[&str]] = &[
        &[],
        &["-m", "target"],
        &["-o", "show"],
        &["-m", "bogus", "-o", "show"],
        &["-m", "target", "-o", "bogus"],
        &["-m", "target", "-o", "new", "-t", "1"],
        &["-m", "target", "-o", "new", "-T", "x"],
        &["-m", "target", "-o", "new", "-t", "0", "-T", "x"],
        &["-m", "target", "-o", "new", "-t", "1", "-T", "x", "-l", "1"],
        &["-m", "target", "-o", "bind", "-t", "1"],
        &["-m", "target", "-o", "update", "-t", "1", "-n", "x"],
        &["-m", "target", "-o", "start", "-t", "1"],
        &["-m", "lu", "-o", "new", "-t", "1"],
        &["-m", "lu", "-o", "new", "-l", "1"],
        &["-m", "lu", "-o", "new", "-t", "0", "-l", "1"],
        &["-m", "lu", "-o", "new", "-t", "1", "-l", "1", "-Y", "osd"],
        &[
            "-m", "lu", "-o", "new", "-t", "1", "-l", "1", "-Y", "floppy",
        ],
        &["-m", "lu", "-o", "update", "-t", "1", "-l", "1", "-b", "x"],
        &["-m", "lu", "-o", "bind", "-t", "1", "-l", "1"],
        &["-m", "account", "-o", "new", "-u", "x"],
        &["-m", "account", "-o", "bind"],
        &["-m", "account", "-o", "update", "-u", "x"],
        &["-m", "portal", "-o", "new"],
        &["-m", "portal", "-o", "bind"],
        &["-m", "sys", "-o", "new"],
        &["-m", "sys", "-o", "update", "-t", "1"],
        &["-m", "lld", "-o", "delete"],
        &["-m", "target", "-o", "show", "stray"],
        &["--o", "show"],
        &["--bogus"],
        &["--force=1"],
        &["--tid"],
        &["-t", "-1"],
        &["-t", "99999999999"],
        &["-C", "70000"],
        &["-l", "18446744073709551615"],
        &["-s", "x"],
        &["-c", "4294967296"],
        &["-Z"],
        &["-V"],
        &["--help"],
    ];
    for args in cmds {
        let d = debian(args, &[]);
        let o = ours(args);
        // getopt prefixes its own messages with argv[0].
        let derr = d.2.replace(DEBIAN_TGTADM, "tgtadm");
        assert_eq!(
            (o.0, &o.1, &o.2),
            (d.0, &d.1, &derr),
            "differs for {args:?}"
        );
    }
}
