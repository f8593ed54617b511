//! tgtd: the rtgt target daemon, with Linux tgt's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use tracing::{error, info};

use rtgt_iscsi::TargetConfig;
use rtgt_mgmt::{Mode, Op, Request, TgtadmError, NO_LUN};
use rtgt_target::limits::{Caps, LoginTimeout, Nop};
use rtgt_target::portal::parse_portal;
use rtgt_target::shutdown::Shutdown;
use rtgt_target::{Config, Daemon};

const QUICKSTART_IQN: &str = "iqn.2026-11.org.rtgt:quickstart";
const QUICKSTART_SIZE: u64 = 1 << 30;

#[derive(Parser, Debug)]
#[command(
    name = "tgtd",
    version,
    about = "rtgt target daemon: serves SCSI logical units over iSCSI (Linux tgt compatible)"
)]
struct Args {
    /// Stay in the foreground (do not daemonize).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Management control port: the socket is /var/run/tgtd/socket.N
    /// (or $TGT_IPC_SOCKET.N).
    #[arg(short = 'C', long = "control-port", default_value_t = 0)]
    control_port: u16,
    /// Worker threads per rdwr logical unit.
    #[arg(short = 't', long = "nr_iothreads", default_value_t = 16)]
    nr_iothreads: usize,
    /// Write the daemon's pid to this file.
    #[arg(short = 'p', long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Debug level (0 off, 1 on).
    #[arg(short = 'd', long = "debug", default_value_t = 0)]
    debug: u32,
    /// iSCSI driver options, comma separated: portal=ADDR:PORT (repeatable),
    /// nop_interval=SECONDS, nop_count=N, rx_coalesce=MICROSECONDS (longest a
    /// command waits to be read with the next ones while its initiator is
    /// behind on our answers; 0 reads every command at once; default 200),
    /// max_pending_logins=N (connections still logging in, at most: past it
    /// the oldest is closed; default 4,096 or half the open file limit),
    /// login_timeout=SECONDS (default 15), max_sessions=N and
    /// max_connections=N (over every target; default 0, no cap).
    #[arg(long = "iscsi", value_name = "OPTIONS")]
    iscsi: Vec<String>,
    /// Reactor threads (default: online CPUs).
    #[arg(long)]
    reactors: Option<usize>,
    /// Serve a ready-made target: iqn.2026-11.org.rtgt:quickstart, LUN 1 on a
    /// 1 GiB sparse file (created if missing), on 127.0.0.1:3260 unless
    /// --iscsi portal=... says otherwise. Implies --foreground.
    #[arg(long)]
    quickstart: bool,
    /// Backing file for --quickstart.
    #[arg(long, default_value = "/var/tmp/rtgt-quickstart.img")]
    quickstart_file: PathBuf,
}

/// A coalescing wait beyond this would be felt as a stall, not a batch.
const MAX_RX_COALESCE_US: u64 = 10_000;

/// `open_files`, the open file limit, caps the default `max_pending_logins`
/// at half of it: stalled connections must not leave no descriptors for
/// sessions and backing files.
fn iscsi_options(args: &Args, open_files: u64) -> Result<(Vec<SocketAddr>, TargetConfig, Caps)> {
    let mut portals = Vec::new();
    let mut cfg = TargetConfig::default();
    let mut caps = Caps::default();
    cfg.max_pending_logins = cfg
        .max_pending_logins
        .min(u32::try_from(open_files / 2).unwrap_or(u32::MAX).max(16));
    for opts in &args.iscsi {
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = opt
                .split_once('=')
                .with_context(|| format!("--iscsi: expected key=value, got {opt:?}"))?;
            match k {
                "portal" => portals.push(parse_portal(v)?),
                "nop_interval" => {
                    let s: u64 = v.parse().context("--iscsi nop_interval")?;
                    cfg.nop_interval = (s > 0).then(|| Duration::from_secs(s));
                }
                "nop_count" => {
                    cfg.nop_count = Nop::parse_count(v)
                        .with_context(|| format!("--iscsi nop_count: {v:?} is not at least 1"))?;
                }
                "login_timeout" => {
                    cfg.login_timeout = LoginTimeout::parse_secs(v).with_context(|| {
                        format!(
                            "--iscsi login_timeout: {v:?} is not a number of seconds within 1..={}",
                            LoginTimeout::MAX_SECS
                        )
                    })?;
                }
                "max_sessions" => caps.max_sessions = v.parse().context("--iscsi max_sessions")?,
                "max_connections" => {
                    caps.max_connections = v.parse().context("--iscsi max_connections")?
                }
                "max_pending_logins" => {
                    cfg.max_pending_logins = v.parse().context("--iscsi max_pending_logins")?;
                    if cfg.max_pending_logins == 0 {
                        bail!("--iscsi max_pending_logins: at least 1");
                    }
                }
                "rx_coalesce" => {
                    let us: u64 = v.parse().context("--iscsi rx_coalesce")?;
                    if us > MAX_RX_COALESCE_US {
                        bail!("--iscsi rx_coalesce: {us} µs is more than {MAX_RX_COALESCE_US}");
                    }
                    cfg.rx_coalesce = (us > 0).then(|| Duration::from_micros(us));
                }
                _ => bail!("--iscsi: unknown option {k:?}"),
            }
        }
    }
    if portals.is_empty() {
        portals = if args.quickstart {
            vec!["127.0.0.1:3260".parse()?]
        } else {
            vec!["0.0.0.0:3260".parse()?, "[::]:3260".parse()?]
        };
    }
    Ok((portals, cfg, caps))
}

fn request(mode: Mode, op: Op, tid: i32, lun: u64, body: String) -> Request {
    Request {
        lld: "iscsi".to_string(),
        tid,
        lun,
        body,
        ..Request::new(mode, op)
    }
}

fn quickstart(running: &rtgt_target::Running, file: &PathBuf) -> Result<()> {
    if !file.exists() {
        let f = std::fs::File::create(file)
            .with_context(|| format!("can't create {}", file.display()))?;
        f.set_len(QUICKSTART_SIZE)?;
    }
    let steps = [
        request(
            Mode::Target,
            Op::New,
            1,
            NO_LUN,
            format!("targetname={QUICKSTART_IQN}"),
        ),
        request(
            Mode::Device,
            Op::New,
            1,
            1,
            format!("path={}", file.display()),
        ),
        request(
            Mode::Target,
            Op::Bind,
            1,
            NO_LUN,
            "initiator-address=ALL".to_string(),
        ),
    ];
    for req in &steps {
        let rsp = running.request(req);
        if rsp.err != TgtadmError::Success {
            bail!(
                "quickstart: {:?} {:?}: {}",
                req.mode,
                req.op,
                rsp.err.message()
            );
        }
    }
    info!(
        "quickstart: {QUICKSTART_IQN} LUN 1 on {} ({} MiB)",
        file.display(),
        QUICKSTART_SIZE >> 20
    );
    Ok(())
}

/// Raise the soft limit on open files to the hard one, as servers do: each
/// connection and backing file is a descriptor, and the usual soft limit of
/// 1,024 would run out long before the machine does. Returns the limit.
fn raise_open_file_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("can't raise the open file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let level = if args.debug > 0 { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let (portals, iscsi, caps) = iscsi_options(&args, raise_open_file_limit())?;
    let reactors = args.reactors.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let config = Config {
        socket_path: rtgt_mgmt::socket_path(args.control_port),
        portals,
        reactors,
        io_threads: args.nr_iothreads.max(1),
        iscsi,
        caps,
    };
    let daemon = Daemon::bind(config).context("tgtd can't start")?;

    if !(args.foreground || args.quickstart) {
        // Like tgt: detach after everything that can fail on a bad
        // configuration has been checked, before any thread starts.
        nix::unistd::daemon(false, false).context("can't daemonize")?;
    }
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("can't write pid file {}", p.display()))?;
    }

    let shutdown = Arc::new(Shutdown::default());
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    info!("signal {sig}: shutting down");
                    shutdown.trigger();
                }
            })?;
    }

    let running = daemon.start(shutdown.clone())?;
    if args.quickstart {
        if let Err(e) = quickstart(&running, &args.quickstart_file) {
            error!("{e:#}");
            shutdown.trigger();
            running.wait();
            return Err(e);
        }
    }
    running.wait();
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
