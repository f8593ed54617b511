//! The registry: targets, logical units, ACLs, portals and sessions.
//!
//! Management requests and logins change it under one mutex; neither is on the
//! per-command path. Reactors read a target's LUN inventory through
//! [`TargetShared`]: a version counter they compare on every command (one
//! atomic load) and a snapshot they re-read only when the version moved.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rtgt_backing::BackingStore;
use rtgt_scsi::pr::NexusIdentity;
use rtgt_scsi::{LogicalUnit, LunTable, NexusId};

use crate::accounts::{Accounts, Bindings};
use crate::acl::AclEntry;
use crate::limits::{Nop, Scope};
use crate::throttle::AuthThrottle;

/// A logical unit with the store behind it, as the data path needs it.
#[derive(Clone)]
pub struct LunBacking {
    pub lu: Arc<LogicalUnit>,
    pub store: Arc<dyn BackingStore>,
}

/// What a reactor needs to run a command: the SCSI view (for routing,
/// REPORT LUNS) and the store of every LUN.
#[derive(Clone, Default)]
pub struct LunSnapshot {
    pub table: LunTable,
    pub stores: BTreeMap<u64, Arc<dyn BackingStore>>,
}

/// The part of a target that reactors read without the registry lock.
pub struct TargetShared {
    pub tid: i32,
    version: AtomicU64,
    snapshot: RwLock<Arc<LunSnapshot>>,
}

impl TargetShared {
    fn new(tid: i32) -> Self {
        TargetShared {
            tid,
            version: AtomicU64::new(0),
            snapshot: RwLock::new(Arc::new(LunSnapshot::default())),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<LunSnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, snap: LunSnapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// A LUN as management sees it (with what `--op show` prints).
pub struct LunEntry {
    pub backing: LunBacking,
    pub bstype: String,
    pub path: Option<String>,
    pub bsoflags: String,
}

pub struct TargetEntry {
    pub tid: i32,
    pub name: String,
    pub luns: BTreeMap<u64, LunEntry>,
    pub acl: Vec<AclEntry>,
    /// CHAP accounts bound to this target (`tgtadm --mode account --op bind`).
    pub accounts: Bindings,
    /// Its caps on sessions and connections, and their use.
    pub limits: Arc<Scope>,
    /// How its sessions are pinged.
    pub nop: Nop,
    pub shared: Arc<TargetShared>,
}

impl TargetEntry {
    /// Rebuild and publish the reactors' snapshot after a LUN change.
    pub fn publish(&self) {
        let mut snap = LunSnapshot::default();
        for (lun, e) in &self.luns {
            snap.table.insert(e.backing.lu.clone());
            snap.stores.insert(*lun, e.backing.store.clone());
        }
        self.shared.publish(snap);
    }

    /// May this initiator log in / see this target (tgt's `bind -I` / `-Q`)?
    /// Like tgt, a target with no ACL admits nobody.
    pub fn admits(&self, addr: IpAddr, initiator_name: &str) -> bool {
        self.acl.iter().any(|a| a.matches(addr, initiator_name))
    }
}

/// Where a session's connection lives, so another thread can ask it to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnHandle {
    pub reactor: usize,
    pub token: usize,
    pub generation: u64,
}

pub struct ConnectionEntry {
    pub cid: u16,
    pub peer: SocketAddr,
    pub handle: ConnHandle,
    /// The socket, for [`Registry::nexus_alive`]; it stays open while the
    /// entry exists (its reactor ends the session before dropping it).
    pub fd: Option<RawFd>,
}

pub struct SessionEntry {
    pub sid: u64,
    pub tid: i32,
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator: String,
    pub alias: Option<String>,
    pub nexus: NexusId,
    pub connections: Vec<ConnectionEntry>,
}

impl SessionEntry {
    /// Who this I_T nexus is, for persistent reservations (SPC-4 §5.9.3): the
    /// initiator port (name and ISID) and our one target port.
    pub fn nexus_identity(&self) -> NexusIdentity {
        NexusIdentity {
            initiator_name: self.initiator.clone(),
            isid: self.isid,
            relative_target_port: rtgt_scsi::spc::RELATIVE_TARGET_PORT,
        }
    }
}

/// A listening address (tgt's portal), with the port actually bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    pub addr: SocketAddr,
    pub tpgt: u16,
}

#[derive(Default)]
pub struct RegistryInner {
    pub targets: BTreeMap<i32, TargetEntry>,
    pub portals: Vec<Portal>,
    pub sessions: BTreeMap<u64, SessionEntry>,
    pub accounts: Accounts,
    /// Failed CHAP logins per address (slows down guessing).
    pub auth_throttle: AuthThrottle,
    /// The daemon's caps on sessions and connections (every target's and
    /// discovery's), and their use.
    pub limits: Arc<Scope>,
    next_sid: u64,
    next_tsih: u16,
}

impl RegistryInner {
    pub fn target_by_name(&self, name: &str) -> Option<&TargetEntry> {
        self.targets.values().find(|t| t.name == name)
    }

    /// A fresh session id (also used as the I_T nexus id).
    pub fn alloc_sid(&mut self) -> u64 {
        self.next_sid += 1;
        self.next_sid
    }

    /// A non-zero TSIH not used by a live session (RFC 7143 §11.12.6).
    pub fn alloc_tsih(&mut self) -> u16 {
        loop {
            self.next_tsih = self.next_tsih.wrapping_add(1);
            let t = self.next_tsih;
            if t != 0 && !self.sessions.values().any(|s| s.tsih == t) {
                return t;
            }
        }
    }

    pub fn sessions_of(&self, tid: i32) -> impl Iterator<Item = &SessionEntry> {
        self.sessions.values().filter(move |s| s.tid == tid)
    }
}

/// The shared registry.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

impl Registry {
    /// Whether I_T nexus `sid` still has a connection the initiator has not
    /// closed. A peer's close is seen by the connection's own reactor on its
    /// next turn; a command on another reactor may get here first, so the
    /// sockets are asked directly (recv with MSG_PEEK: 0 bytes means the
    /// peer's FIN has arrived).
    pub fn nexus_alive(&self, sid: u64) -> bool {
        let reg = self.lock();
        let Some(s) = reg.sessions.get(&sid) else {
            return false;
        };
        s.connections.iter().any(|c| match c.fd {
            Some(fd) => {
                let mut b = [0u8; 1];
                // SAFETY: `fd` is the open socket of this entry (see
                // `ConnectionEntry::fd`): the registry lock we hold keeps its
                // reactor from ending the session and closing it meanwhile.
                // recv(2) with MSG_PEEK | MSG_DONTWAIT reads nothing and never
                // blocks; `b` is a valid 1-byte buffer.
                let n = unsafe {
                    libc::recv(
                        fd,
                        b.as_mut_ptr().cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                n > 0
                    || (n < 0
                        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock)
            }
            None => true,
        })
    }

    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    pub fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        // A panic while holding the lock must not take management down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn new_target_shared(tid: i32) -> Arc<TargetShared> {
        Arc::new(TargetShared::new(tid))
    }
}
