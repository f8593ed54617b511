//! rtgt-backing: the backing stores behind rtgt's logical units.
//!
//! A store is the engine behind one logical unit, modelled on tgt's backing
//! store templates (fujita/tgt `usr/bs_*.c`: open / cmd_submit / close). Every
//! engine shares one completion path: [`BackingStore::submit`] queues an
//! [`IoRequest`], and its [`IoCompletion`] always comes back through a
//! [`CompletionSender`] whose eventfd the owning reactor polls (DESIGN.md,
//! "Backing stores"). The trait knows nothing about SCSI or iSCSI, so the
//! later `aio` and `io_uring` engines fit the same shape.
//!
//! Engines:
//! * `rdwr` ([`StoreKind::Rdwr`]): tgt's default. A per-LUN pending queue
//!   served by a pool of worker threads doing `pread`/`pwrite`
//!   (`tgtd -t`, default 16), `O_SYNC`/`O_DIRECT` from `--bsoflags`.
//! * `null` ([`StoreKind::Null`]): reads zeros, discards writes, completes
//!   at once. Its size is tgt's: 1 TiB.

#![deny(unsafe_op_in_unsafe_fn)]

mod buf;
mod completion;
mod null;
mod rdwr;

#[cfg(test)]
mod suite;

use std::path::PathBuf;
use std::sync::Arc;

pub use buf::{AlignedBuf, BufPool};
pub use completion::{completion_channel, CompletionReceiver, CompletionSender};
pub use null::NULL_STORE_SIZE;
pub use rdwr::DEFAULT_WORKER_THREADS;

/// What a request asks of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Fill the buffer from the store (SBC-3 READ (6/10/12/16)).
    Read,
    /// Write the buffer to the store (SBC-3 WRITE (6/10/12/16)).
    Write,
    /// Make everything written so far durable (SBC-3 SYNCHRONIZE CACHE (10/16)).
    Flush,
}

/// One request to a store.
#[derive(Debug)]
pub struct IoRequest {
    /// Caller's token, echoed in the completion.
    pub tag: u64,
    /// What to do.
    pub op: IoOp,
    /// Byte offset into the store.
    pub offset: u64,
    /// Read: fill `buf[..buf.len()]` (a short read at end of store zero-fills
    /// the rest: stale pool data must never reach an initiator).
    /// Write: write `buf[..buf.len()]`. Flush: buf unused (may be empty).
    pub buf: AlignedBuf,
    /// Write: make the data durable before completing (SBC-3 WRITE (10) FUA bit),
    /// with `pwritev2(RWF_DSYNC)` or `fdatasync` after the write.
    pub fua: bool,
}

/// The outcome of one [`IoRequest`].
#[derive(Debug)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// The request's op.
    pub op: IoOp,
    /// The request's buffer, always handed back (also on error) so the caller
    /// can recycle it.
    pub buf: AlignedBuf,
    /// `Ok(bytes transferred)` or the errno of the failure. A read reports
    /// `buf.len()` also when part of it lay past the end of the store (that
    /// part reads as zeros); a flush reports 0.
    pub result: Result<usize, IoError>,
}

/// An OS error from a store, as errno (ENOSPC, EIO, ...), so the SCSI layer
/// can map it to sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("backing store I/O error: errno {0}")]
pub struct IoError(pub i32);

impl IoError {
    /// Input/output error: the medium failed.
    pub const EIO: IoError = IoError(libc::EIO);
    /// No space left on the device (thin provisioning exhausted).
    pub const ENOSPC: IoError = IoError(libc::ENOSPC);
    /// Write to a store opened read-only.
    pub const EROFS: IoError = IoError(libc::EROFS);
    /// Invalid argument (an offset beyond what the OS can address).
    pub const EINVAL: IoError = IoError(libc::EINVAL);
    /// The store was closed (LU deleted) before the request was taken.
    pub const ENXIO: IoError = IoError(libc::ENXIO);

    /// The errno value.
    pub fn errno(self) -> i32 {
        self.0
    }
}

impl From<nix::errno::Errno> for IoError {
    fn from(e: nix::errno::Errno) -> Self {
        IoError(e as i32)
    }
}

impl From<std::io::Error> for IoError {
    fn from(e: std::io::Error) -> Self {
        IoError(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// A backing store: the engine behind one logical unit.
pub trait BackingStore: Send + Sync {
    /// tgt's bstype name: "rdwr", "null".
    fn name(&self) -> &'static str;
    /// Size in bytes (regular file length, or BLKGETSIZE64 for a block device),
    /// taken when the store is opened.
    fn size(&self) -> u64;
    /// Queue a request. Its completion is ALWAYS delivered through `done`,
    /// also for errors and for engines that finish inline (null), so every
    /// store has one completion path.
    fn submit(&self, req: IoRequest, done: &CompletionSender);
    /// Finish queued requests, fdatasync, stop worker threads. Idempotent.
    /// Called at LUN delete and tgtd shutdown. Requests submitted afterwards
    /// still complete through `done`: with [`IoError::ENXIO`] from an engine
    /// that really stops (rdwr); null has nothing to stop and serves them.
    fn close(&self);
    /// True when the store can only be read: opened with
    /// [`OpenOptions::readonly`], or (like tgt's `bs_rdwr_open`) the file could
    /// not be opened for writing (EACCES/EROFS) and was opened read-only
    /// instead. The SCSI layer then reports the LU write protected
    /// (SBC-3 device-specific parameter of the mode parameter header, WP bit).
    fn readonly(&self) -> bool {
        false
    }
}

/// A backing store type, by tgt's `--bstype` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// "rdwr": pread/pwrite on a worker thread pool.
    Rdwr,
    /// "null": no storage at all.
    Null,
}

impl StoreKind {
    /// Every kind this crate can open, for `tgtadm --op show --mode system`.
    pub const ALL: &'static [StoreKind] = &[StoreKind::Rdwr, StoreKind::Null];

    /// tgt's bstype name.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Rdwr => "rdwr",
            StoreKind::Null => "null",
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = BackingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rdwr" => Ok(StoreKind::Rdwr),
            "null" => Ok(StoreKind::Null),
            other => Err(BackingError::UnknownType(other.to_string())),
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to open a store (tgtadm `--backing-store`, `--bsoflags`, tgtd `-t`).
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// File or block device; ignored by null.
    pub path: PathBuf,
    /// Open `O_RDONLY`; writes then fail with [`IoError::EROFS`] (the SCSI
    /// layer rejects them earlier anyway).
    pub readonly: bool,
    /// `O_SYNC` (tgt `--bsoflags sync`).
    pub sync: bool,
    /// `O_DIRECT` (tgt `--bsoflags direct`).
    pub direct: bool,
    /// rdwr pool size, tgt default 16; 0 means the default.
    pub worker_threads: usize,
}

impl OpenOptions {
    /// Options for `path` with tgt's defaults: read-write, no bsoflags,
    /// [`DEFAULT_WORKER_THREADS`] workers.
    pub fn new(path: impl Into<PathBuf>) -> OpenOptions {
        OpenOptions {
            path: path.into(),
            readonly: false,
            sync: false,
            direct: false,
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// `--bstype` names no engine this crate has.
    #[error("unknown backing store type: {0}")]
    UnknownType(String),
    /// open(2) failed.
    #[error("can't open {path}: {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The path is a directory, socket, character device, ...
    #[error("{0} is neither a regular file nor a block device")]
    NotFileOrBlockDevice(PathBuf),
    /// Any other OS failure (fstat, ioctl, starting worker threads).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Open a store of the given kind.
///
/// `null` has tgt's fixed size, [`NULL_STORE_SIZE`] = 1 TiB
/// (`NULL_BS_DEV_SIZE` in fujita/tgt `usr/bs_null.c`).
pub fn open_store(
    kind: StoreKind,
    opts: &OpenOptions,
) -> Result<Arc<dyn BackingStore>, BackingError> {
    match kind {
        StoreKind::Rdwr => Ok(Arc::new(rdwr::RdwrStore::open(opts)?)),
        StoreKind::Null => Ok(Arc::new(null::NullStore::new(opts.readonly))),
    }
}
