//! End-to-end test harness: starts a real `tgtd` on loopback and drives it with
//! real clients (Debian's `tgtadm`, libiscsi's tools, QEMU's iSCSI driver).
//!
//! Nothing here mocks a component. Every process a test starts is owned by a
//! value whose `Drop` stops it, every port is picked free at run time and every
//! file lives in a temporary directory. A missing tool is a test failure that
//! says how to install it (`scripts/test`), never a skip.
//!
//! The daemon under test is the root package's `tgtd` unless `RTGT_TEST_TGTD`
//! names another binary (e.g. Debian's `/usr/sbin/tgtd`); our management client
//! is the root package's `tgtadm` unless `RTGT_TEST_TGTADM` names another.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Debian's reference daemon and management client (package `tgt`).
pub const DEBIAN_TGTD: &str = "/usr/sbin/tgtd";
pub const DEBIAN_TGTADM: &str = "/usr/sbin/tgtadm";

/// Where tgt (and rtgt, as a drop-in) put the management socket by default:
/// `<dir>/socket.<control port>`.
pub const TGT_IPC_DIR: &str = "/var/run/tgtd";

/// How long a daemon may take to accept on both its sockets.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
/// (Debian's tgtd ignores SIGTERM, so against it every stop takes this long.)
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one run of a management client.
const TGTADM_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "run scripts/test, which installs the test packages";

/// The `tgtd` under test.
pub fn tgtd_path() -> PathBuf {
    match std::env::var_os("RTGT_TEST_TGTD") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_tgtd")),
    }
}

/// Our `tgtadm` (or the one `RTGT_TEST_TGTADM` names).
pub fn tgtadm_path() -> PathBuf {
    match std::env::var_os("RTGT_TEST_TGTADM") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_tgtadm")),
    }
}

/// Is this tool runnable? An absolute or relative path must be an executable
/// file; a bare name is looked up in `PATH`.
fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| executable(p))
}

/// Fails the test (never skips) when `tool` is not installed.
pub fn require(tool: &str) {
    if find_tool(tool).is_none() {
        panic!("{tool} is missing: {INSTALL_HINT}");
    }
}

/// Fails the test unless `qemu-img` is installed with its iSCSI block driver
/// (Debian ships the driver separately, in `qemu-block-extra`).
pub fn require_qemu_iscsi() {
    require("qemu-img");
    let out = run_tool("qemu-img", &["--help"], Duration::from_secs(30));
    let has_driver = out
        .stdout
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
        .any(|w| w == "iscsi");
    if !has_driver {
        panic!("qemu-img's iscsi block driver (qemu-block-extra) is missing: {INSTALL_HINT}");
    }
}

/// What a finished (or killed) tool run produced.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The run hit its deadline and was killed.
    pub timed_out: bool,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// One string to put in an assertion message.
    pub fn describe(&self, what: &str) -> String {
        format!(
            "{what}: status {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            if self.timed_out {
                " (killed at its deadline)"
            } else {
                ""
            },
            self.stdout,
            self.stderr
        )
    }

    pub fn into_output(self) -> Output {
        Output {
            status: self.status,
            stdout: self.stdout.into_bytes(),
            stderr: self.stderr.into_bytes(),
        }
    }
}

/// A child process that is killed and reaped if its owner is dropped early
/// (a panicking test must not leave initiators behind).
pub struct Running {
    child: Option<Child>,
    what: String,
    stdout: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> Option<thread::JoinHandle<Vec<u8>>> {
    r.map(|mut r| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    })
}

/// Starts `cmd args` with stdout/stderr captured; see [`Running::wait`].
pub fn spawn_tool(cmd: &str, args: &[&str]) -> Running {
    let mut command = Command::new(cmd);
    command.args(args);
    spawn_command(command, &format!("{cmd} {}", args.join(" ")))
}

pub fn spawn_command(mut command: Command, what: &str) -> Running {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{what}: {e}; the tool is missing: {INSTALL_HINT}")
        }
        Err(e) => panic!("cannot start {what}: {e}"),
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    Running {
        child: Some(child),
        what: what.to_string(),
        stdout,
        stderr,
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits up to `timeout`; on expiry the process is killed and the result
    /// says `timed_out`.
    pub fn wait(mut self, timeout: Duration) -> ToolOutput {
        let mut child = match self.child.take() {
            Some(c) => c,
            None => panic!("{}: already waited for", self.what),
        };
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    let _ = child.kill();
                    break child
                        .wait()
                        .unwrap_or_else(|e| panic!("{}: wait after kill: {e}", self.what));
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("{}: wait: {e}", self.what),
            }
        };
        let take = |h: Option<thread::JoinHandle<Vec<u8>>>| {
            h.and_then(|h| h.join().ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        ToolOutput {
            status,
            stdout: take(self.stdout.take()),
            stderr: take(self.stderr.take()),
            timed_out,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd args` to completion or until `timeout`, whichever comes first
/// (the process is killed at the deadline).
pub fn run_tool(cmd: &str, args: &[&str], timeout: Duration) -> ToolOutput {
    spawn_tool(cmd, args).wait(timeout)
}

fn run_client(client: &Path, args: &[&str]) -> Output {
    let c = client.to_string_lossy().into_owned();
    let out = run_tool(&c, args, TGTADM_TIMEOUT);
    if out.timed_out {
        panic!("{}", out.describe(&format!("{c} {}", args.join(" "))));
    }
    out.into_output()
}

/// Runs our `tgtadm` (args include `-C N`).
pub fn tgtadm(args: &[&str]) -> Output {
    run_client(&tgtadm_path(), args)
}

/// Runs Debian's `/usr/sbin/tgtadm` (args include `-C N`).
pub fn debian_tgtadm(args: &[&str]) -> Output {
    require(DEBIAN_TGTADM);
    run_client(Path::new(DEBIAN_TGTADM), args)
}

pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A TCP port nobody listens on right now (bound once on 127.0.0.1:0).
pub fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A control port whose management socket and lock file do not exist, so the
/// daemon under test does not collide with another one on this machine.
pub fn free_control_port() -> u16 {
    // tgt keeps the control port in a `short`: 1..=32767.
    const FIRST: u32 = 1_000;
    const SPAN: u32 = 31_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 1_000) * 31;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (base + n) % SPAN) as u16;
        let sock = socket_path_for(port);
        if !sock.exists() && !lock_path_for(port).exists() {
            return port;
        }
    }
    panic!("no free tgtd control port: {TGT_IPC_DIR} is full of sockets");
}

/// tgt's lock file beside the management socket.
pub fn lock_path_for(n: u16) -> PathBuf {
    PathBuf::from(format!("{}.lock", socket_path_for(n).display()))
}

/// The management socket of control port `n` (tgt's layout, honouring
/// `TGT_IPC_SOCKET` like tgt does).
pub fn socket_path_for(n: u16) -> PathBuf {
    let base = std::env::var("TGT_IPC_SOCKET").unwrap_or_else(|_| format!("{TGT_IPC_DIR}/socket"));
    PathBuf::from(format!("{base}.{n}"))
}

/// How to start a daemon.
#[derive(Clone, Debug)]
pub struct TgtdOpts {
    /// The daemon binary (default: [`tgtd_path`]).
    pub binary: PathBuf,
    /// The management client used by the helpers (default: [`tgtadm_path`]).
    pub client: PathBuf,
    /// `-t N` worker threads.
    pub threads: Option<u32>,
    /// `--reactors N` (rtgt only: Debian's tgtd does not know the flag).
    pub reactors: Option<u32>,
    /// `-d 1`.
    pub debug: bool,
    pub extra_args: Vec<String>,
}

impl Default for TgtdOpts {
    fn default() -> Self {
        TgtdOpts {
            binary: tgtd_path(),
            client: tgtadm_path(),
            threads: None,
            reactors: None,
            debug: false,
            extra_args: Vec::new(),
        }
    }
}

impl TgtdOpts {
    /// Debian's tgtd, configured with Debian's tgtadm.
    pub fn debian() -> Self {
        TgtdOpts {
            binary: PathBuf::from(DEBIAN_TGTD),
            client: PathBuf::from(DEBIAN_TGTADM),
            ..TgtdOpts::default()
        }
    }
}

/// A running daemon on 127.0.0.1:`port`, control port `control_port`.
/// Dropping it sends SIGTERM, waits, then SIGKILLs.
pub struct Tgtd {
    child: Option<Child>,
    pub port: u16,
    pub control_port: u16,
    pub opts: TgtdOpts,
    /// Temporary directory for backing files and the daemon's log.
    pub dir: tempfile::TempDir,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    files: AtomicU32,
}

impl Tgtd {
    /// Starts the daemon in the foreground and returns once both the
    /// management socket and the iSCSI portal accept connections.
    pub fn start(opts: TgtdOpts) -> Tgtd {
        let binary = opts.binary.to_string_lossy().into_owned();
        require(&binary);
        let mut dir = tempfile::Builder::new()
            .prefix("rtgt-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut last_log = String::new();
        // A port picked free can be taken before the daemon binds it; retry.
        for attempt in 0..3 {
            let port = free_tcp_port();
            let control_port = free_control_port();
            let log_path = dir.path().join(format!("tgtd-{attempt}.log"));
            let log = File::create(&log_path).expect("create daemon log");
            let log2 = log.try_clone().expect("clone log fd");
            let mut cmd = Command::new(&opts.binary);
            cmd.arg("-f")
                .arg("-C")
                .arg(control_port.to_string())
                .arg("--iscsi")
                .arg(format!("portal=127.0.0.1:{port}"));
            if let Some(t) = opts.threads {
                cmd.arg("-t").arg(t.to_string());
            }
            if let Some(r) = opts.reactors {
                cmd.arg("--reactors").arg(r.to_string());
            }
            if opts.debug {
                cmd.arg("-d").arg("1");
            }
            cmd.args(&opts.extra_args);
            cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
            let mut d = Tgtd {
                child: Some(child),
                port,
                control_port,
                opts: opts.clone(),
                dir,
                log_path,
                exit: None,
                files: AtomicU32::new(0),
            };
            match d.wait_ready() {
                Ok(()) => return d,
                Err(why) => {
                    last_log = format!("{why}\n--- daemon output ---\n{}", d.log());
                    let exited = d.exit.is_some();
                    d.stop();
                    dir = std::mem::replace(
                        &mut d.dir,
                        tempfile::Builder::new()
                            .prefix("rtgt-e2e-")
                            .tempdir()
                            .expect("tempdir"),
                    );
                    // Only a daemon that died (e.g. on EADDRINUSE) is worth a
                    // second try; one that hangs will hang again.
                    if !exited {
                        break;
                    }
                }
            }
        }
        panic!("{binary} did not come up: {last_log}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let sock = socket_path_for(self.control_port);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut sock_ok = false;
        let mut tcp_ok = false;
        loop {
            if let Some(st) = self.try_exit() {
                return Err(format!("daemon exited during start-up with {st:?}"));
            }
            if !sock_ok {
                sock_ok = sock
                    .metadata()
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false)
                    && UnixStream::connect(&sock).is_ok();
            }
            if !tcp_ok {
                tcp_ok = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            }
            if sock_ok && tcp_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {START_TIMEOUT:?}: management socket {} {}, portal {addr} {}",
                    sock.display(),
                    if sock_ok {
                        "accepts"
                    } else {
                        "does not accept"
                    },
                    if tcp_ok { "accepts" } else { "does not accept" },
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `127.0.0.1:PORT`
    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `iscsi://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/", self.port)
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`
    pub fn lun_url(&self, iqn: &str, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{iqn}/{lun}", self.port)
    }

    /// QEMU `--image-opts` string for a LUN, with extra `key=value`s appended.
    pub fn qemu_opts(&self, iqn: &str, lun: u32, extra: &str) -> String {
        let mut s = format!(
            "driver=iscsi,transport=tcp,portal=127.0.0.1:{},target={iqn},lun={lun}",
            self.port
        );
        if !extra.is_empty() {
            s.push(',');
            s.push_str(extra);
        }
        s
    }

    /// The daemon's stdout+stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the daemon has exited (reaps it), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(st)) => {
                self.exit = Some(st);
                self.exit
            }
            _ => None,
        }
    }

    /// Still running (a `waitpid(WNOHANG)` finds nothing).
    pub fn is_alive(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Panics with the daemon's log unless it is still running.
    pub fn assert_alive(&mut self, when: &str) {
        if let Some(st) = self.try_exit() {
            panic!(
                "tgtd died ({when}): {st:?} (signal {:?})\n--- daemon output ---\n{}",
                st.signal(),
                self.log()
            );
        }
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait, SIGKILL fallback. Idempotent. A killed daemon cannot
    /// remove its management socket, so the harness does.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            if let Some(child) = self.child.as_mut() {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = kill(pid, Signal::SIGTERM);
                if self.wait_exit(STOP_TIMEOUT).is_none() {
                    if let Some(child) = self.child.as_mut() {
                        let _ = child.kill();
                        self.exit = child.wait().ok();
                    }
                }
            }
        }
        if self.child.is_some() {
            let _ = std::fs::remove_file(socket_path_for(self.control_port));
            let _ = std::fs::remove_file(lock_path_for(self.control_port));
        }
        self.exit
    }

    /// Runs the configured management client with `-C N` prepended.
    pub fn adm(&self, args: &[&str]) -> Output {
        self.adm_with(&self.opts.client, args)
    }

    /// Runs `client -C N args`.
    pub fn adm_with(&self, client: &Path, args: &[&str]) -> Output {
        let n = self.control_port.to_string();
        let mut full = vec!["-C", n.as_str()];
        full.extend_from_slice(args);
        run_client(client, &full)
    }

    /// Like [`Tgtd::adm`], panicking with everything useful if it fails.
    pub fn adm_ok(&self, args: &[&str]) -> String {
        let out = self.adm(args);
        if !out.status.success() {
            panic!(
                "{} -C {} {} failed: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- daemon output ---\n{}",
                self.opts.client.display(),
                self.control_port,
                args.join(" "),
                out.status,
                stdout_of(&out),
                stderr_of(&out),
                self.log()
            );
        }
        stdout_of(&out)
    }

    /// A sparse file of `size` bytes in the daemon's temp dir.
    pub fn sparse_file(&self, size: u64) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("lun-{n}.img"));
        let f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .expect("create backing file");
        f.set_len(size).expect("size backing file");
        path
    }

    /// `tgtadm --op new --mode target`.
    pub fn new_target(&self, tid: u32, iqn: &str) {
        let tid = tid.to_string();
        self.adm_ok(&[
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", &tid, "-T", iqn,
        ]);
    }

    /// `tgtadm --op new --mode logicalunit` on the file `path`.
    pub fn new_lun(&self, tid: u32, lun: u32, path: &Path) {
        self.new_lun_args(tid, lun, path, &[]);
    }

    /// Same, with extra logical-unit arguments (e.g. `["-E", "rdwr"]`).
    pub fn new_lun_args(&self, tid: u32, lun: u32, path: &Path, extra: &[&str]) {
        let (tid, lun) = (tid.to_string(), lun.to_string());
        let path = path.to_string_lossy();
        let mut args = vec![
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &tid,
            "--lun",
            &lun,
            "-b",
            &path,
        ];
        args.extend_from_slice(extra);
        self.adm_ok(&args);
    }

    /// `tgtadm --op update --mode logicalunit --params PARAMS`.
    pub fn lu_params(&self, tid: u32, lun: u32, params: &str) {
        let (tid, lun) = (tid.to_string(), lun.to_string());
        self.adm_ok(&[
            "--lld",
            "iscsi",
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            &tid,
            "--lun",
            &lun,
            "--params",
            params,
        ]);
    }

    /// `tgtadm --op bind --mode target -I ALL`.
    pub fn bind_all(&self, tid: u32) {
        let tid = tid.to_string();
        self.adm_ok(&[
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", &tid, "-I", "ALL",
        ]);
    }

    /// Creates target `tid` named `iqn`, LUN 1 on a new sparse file of
    /// `size` bytes, and binds it to all initiators. Returns the file.
    pub fn new_target_with_lun(&self, tid: u32, iqn: &str, size: u64) -> PathBuf {
        self.new_target_with_lun_args(tid, iqn, size, &[])
    }

    /// Same, with extra logical-unit arguments (e.g. `["-y", "4096"]`).
    pub fn new_target_with_lun_args(
        &self,
        tid: u32,
        iqn: &str,
        size: u64,
        extra: &[&str],
    ) -> PathBuf {
        let path = self.sparse_file(size);
        self.new_target_with_lun_on(tid, iqn, &path, extra);
        path
    }

    /// Creates target `tid` named `iqn` with LUN 1 on `path` (a file or a
    /// block device; `extra` goes to the logical unit) and binds it to all
    /// initiators.
    pub fn new_target_with_lun_on(&self, tid: u32, iqn: &str, path: &Path, extra: &[&str]) {
        self.new_target(tid, iqn);
        self.new_lun_args(tid, 1, path, extra);
        self.bind_all(tid);
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file of `size` pseudo-random bytes (deterministic from `seed`).
pub fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).expect("create random file");
    let mut rng = XorShift::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write random file");
        left -= n;
    }
    f.sync_all().expect("sync random file");
    path
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Run `tests/libiscsi_client.py` (libiscsi through ctypes, for the commands
/// libiscsi's tools do not send) as `initiator` against LUN `lun` of `iqn`,
/// with commands separated by `--`. Panics if the client fails to log in.
pub fn libiscsi_client(
    d: &Tgtd,
    iqn: &str,
    lun: u32,
    initiator: &str,
    commands: &[&str],
) -> ToolOutput {
    require("python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libiscsi_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(format!("127.0.0.1:{}", d.port))
        .arg(iqn)
        .arg(lun.to_string())
        .arg(initiator)
        .args(commands);
    let out = spawn_command(cmd, "libiscsi_client.py").wait(Duration::from_secs(120));
    assert!(
        out.success(),
        "{}",
        out.describe(&format!("libiscsi_client {initiator} {commands:?}"))
    );
    out
}

pub mod raw;
