//! rtgt-target: the target core. Reactors own connections and drive the
//! sans-IO protocol (`rtgt-iscsi`) and SCSI (`rtgt-scsi`) layers over the
//! backing stores (`rtgt-backing`); portals accept connections; the
//! management thread serves tgt's wire protocol (`rtgt-mgmt`) against the
//! registry. See DESIGN.md for the map.

pub mod accounts;
pub mod acl;
pub mod limits;
pub mod mgmt;
pub mod portal;
pub mod pr_state;
pub mod reactor;
pub mod registry;
mod rx_coalesce;
pub mod shutdown;
mod throttle;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use tracing::info;

use rtgt_iscsi::TargetConfig;
use rtgt_mgmt::{Request, Response};

use crate::limits::{Caps, LoginTimeout};
use crate::mgmt::{MgmtCtx, MgmtServer};
use crate::portal::{AcceptorHandle, AcceptorMsg, PortalError};
use crate::reactor::{Reactor, ReactorMsg, Shared};
use crate::registry::{Portal, Registry};
use crate::shutdown::Shutdown;

/// tgtd's configuration (its command line).
#[derive(Clone, Debug)]
pub struct Config {
    /// The management socket path (tgt: /var/run/tgtd/socket.N).
    pub socket_path: PathBuf,
    /// iSCSI portals to listen on (tgt default: 0.0.0.0:3260 and [::]:3260).
    pub portals: Vec<SocketAddr>,
    /// Reactor threads (default: online CPUs).
    pub reactors: usize,
    /// rdwr worker threads per LUN (tgtd -t, default 16).
    pub io_threads: usize,
    /// What iSCSI login offers and enforces.
    pub iscsi: TargetConfig,
    /// Caps on sessions and connections over every target.
    pub caps: Caps,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Portal(#[from] PortalError),
    #[error("can't create the management socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("can't start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("can't set up a reactor: {0}")]
    Reactor(#[source] std::io::Error),
}

/// A daemon whose sockets are bound but whose threads have not started:
/// everything that can fail on bad configuration fails here, before tgtd
/// daemonizes.
pub struct Daemon {
    config: Config,
    listeners: Vec<std::net::TcpListener>,
    mgmt: MgmtServer,
    registry: Arc<Registry>,
}

impl Daemon {
    pub fn bind(config: Config) -> Result<Daemon, DaemonError> {
        let registry = Registry::new();
        let mut listeners = Vec::new();
        {
            let mut reg = registry.lock();
            reg.limits.set_max_sessions(config.caps.max_sessions);
            reg.limits.set_max_connections(config.caps.max_connections);
            for &addr in &config.portals {
                let l = portal::bind(addr)?;
                let bound = l.local_addr().unwrap_or(addr);
                reg.portals.push(Portal {
                    addr: bound,
                    tpgt: 1,
                });
                listeners.push(l);
            }
        }
        let mgmt = MgmtServer::bind(&config.socket_path).map_err(|source| DaemonError::Socket {
            path: config.socket_path.clone(),
            source,
        })?;
        Ok(Daemon {
            config,
            listeners,
            mgmt,
            registry,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.registry
            .lock()
            .portals
            .iter()
            .map(|p| p.addr)
            .collect()
    }

    /// Start reactors, the acceptor and the management thread.
    pub fn start(self, shutdown: Arc<Shutdown>) -> Result<Running, DaemonError> {
        let shared = Shared {
            registry: self.registry.clone(),
            reactors: Arc::new(OnceLock::new()),
            iscsi: self.config.iscsi.clone(),
            login_timeout: Arc::new(LoginTimeout::new(self.config.iscsi.login_timeout)),
        };
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for id in 0..self.config.reactors.max(1) {
            let (r, h) = Reactor::new(id, shared.clone()).map_err(DaemonError::Reactor)?;
            handles.push(h);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("reactor-{id}"))
                    .spawn(move || r.run())
                    .map_err(DaemonError::Thread)?,
            );
        }
        let _ = shared.reactors.set(handles.clone());

        let (acceptor, acceptor_handle) =
            portal::Acceptor::new(handles.clone()).map_err(DaemonError::Reactor)?;
        for l in self.listeners {
            acceptor_handle.send(AcceptorMsg::Add(l));
        }
        let acceptor_thread = std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || acceptor.run())
            .map_err(DaemonError::Thread)?;

        let ctx = MgmtCtx {
            shared,
            acceptor: Some(acceptor_handle.clone()),
            shutdown,
            io_threads: self.config.io_threads,
        };
        let stop_mgmt = self.mgmt.stopper();
        let mgmt = self.mgmt;
        let mgmt_ctx = ctx.clone();
        let mgmt_thread = std::thread::Builder::new()
            .name("mgmt".into())
            .spawn(move || mgmt.serve(mgmt_ctx))
            .map_err(DaemonError::Thread)?;
        info!(
            "tgtd ready: {} reactors, {} rdwr threads per LUN",
            handles.len(),
            self.config.io_threads
        );
        Ok(Running {
            ctx,
            reactors: handles,
            reactor_threads: threads,
            acceptor: acceptor_handle,
            acceptor_thread,
            mgmt_thread,
            stop_mgmt: Box::new(stop_mgmt),
        })
    }
}

/// A serving daemon.
pub struct Running {
    ctx: MgmtCtx,
    reactors: Vec<reactor::ReactorHandle>,
    reactor_threads: Vec<JoinHandle<()>>,
    acceptor: AcceptorHandle,
    acceptor_thread: JoinHandle<()>,
    mgmt_thread: JoinHandle<()>,
    stop_mgmt: Box<dyn Fn() + Send>,
}

impl Running {
    /// Apply a management request in-process, exactly as if tgtadm sent it
    /// (used for tgtd's built-in quickstart configuration).
    pub fn request(&self, req: &Request) -> Response {
        mgmt::handle(&self.ctx, req)
    }

    /// Wait for the shutdown signal, then stop: no new connections, every
    /// connection closed, every store flushed and closed.
    pub fn wait(self) {
        self.ctx.shutdown.wait();
        info!("shutting down");
        self.acceptor.send(AcceptorMsg::Shutdown);
        let _ = self.acceptor_thread.join();
        for r in &self.reactors {
            r.send(ReactorMsg::Shutdown);
        }
        for t in self.reactor_threads {
            let _ = t.join();
        }
        (self.stop_mgmt)();
        let _ = self.mgmt_thread.join();
        let reg = self.ctx.shared.registry.lock();
        for t in reg.targets.values() {
            for e in t.luns.values() {
                e.backing.store.close();
            }
        }
        info!("tgtd stopped");
    }
}
