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
//! * `aio` ([`StoreKind::Aio`]) and `io_uring` ([`StoreKind::IoUring`]):
//!   Read, Write and Flush through the reactor's Linux AIO context or
//!   io_uring ring, which live in its completion channel and signal its
//!   eventfd; every other op through an inner rdwr store on the same file
//!   (`engine.rs` says how atomicity is kept).
//!
//! Besides READ, WRITE and SYNCHRONIZE CACHE, [`IoOp`] has what the SBC-3
//! commands beyond them need from the medium: Unmap and Extents (thin
//! provisioning, SBC-3 §4.7, GET LBA STATUS §5.5), WriteSame (§5.42),
//! CompareAndWrite (§5.3), Compare (VERIFY with BYTCHK, §5.31), OrWrite
//! (§5.9) and Copy (EXTENDED COPY, SPC-4 §6.4), all on the same path.

#![deny(unsafe_op_in_unsafe_fn)]

mod aio;
mod buf;
mod completion;
mod engine;
mod null;
mod ops;
mod rdwr;
mod uring;

#[cfg(test)]
mod suite;

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Arc;

pub use buf::{AlignedBuf, BufPool};
pub use completion::{completion_channel, CompletionReceiver, CompletionSender};
pub use null::NULL_STORE_SIZE;
pub use rdwr::DEFAULT_WORKER_THREADS;

/// What a request asks of the store.
///
/// Every op completes through the same [`CompletionSender`], with
/// `Ok(count)` as documented per op or the errno as [`IoError`]. Ops that
/// modify the medium (everything but Read, Flush, Compare and Extents) fail
/// with [`IoError::EROFS`] on a [read-only](BackingStore::readonly) store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Fill the buffer from the store (SBC-3 READ (6/10/12/16)).
    Read,
    /// Write the buffer to the store (SBC-3 WRITE (6/10/12/16)).
    Write,
    /// Make everything written so far durable (SBC-3 SYNCHRONIZE CACHE (10/16)).
    Flush,
    /// Deallocate [`len`](IoRequest::len) bytes at `offset` (UNMAP, WRITE SAME
    /// with UNMAP, SANITIZE BLOCK ERASE; SBC-3 §4.7): afterwards they read as
    /// zeros. `buf` unused (may be empty). `Ok(len)`.
    ///
    /// rdwr: `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` on files
    /// and block devices; where the file system or device refuses
    /// (EOPNOTSUPP, EINVAL) zeros are written instead.
    Unmap,
    /// Write `buf` (exactly one logical block: `buf.len()` is the block size)
    /// repeatedly over [`len`](IoRequest::len) bytes at `offset` (WRITE SAME,
    /// SANITIZE OVERWRITE; SBC-3 §5.42). `len` must be a multiple of
    /// `buf.len()` (else EINVAL). `fua` honoured. `Ok(len)`.
    WriteSame,
    /// WRITE ATOMIC(16) (SBC-4 §5.48): write the buffer so that no other
    /// request of this store sees part of it (excluded like CompareAndWrite).
    WriteAtomic,
    /// COMPARE AND WRITE (SBC-3 §5.3): atomically with respect to every other
    /// request to this store, read `buf.len() / 2` bytes at `offset` and
    /// compare them with the first half of `buf`; if equal, write the second
    /// half at `offset` (honouring `fua`). `buf.len()` must be even (else
    /// EINVAL).
    ///
    /// `Ok(n)`, `n` = number of leading bytes that compared equal:
    /// `n == buf.len() / 2` means it matched and was written; a smaller `n`
    /// means a miscompare at byte `n` and NOTHING was written (the SCSI layer
    /// reports MISCOMPARE with `n` in the INFORMATION field, SBC-3 §5.3).
    CompareAndWrite,
    /// VERIFY / WRITE AND VERIFY with BYTCHK (SBC-3 §5.31): compare the medium
    /// over [`len`](IoRequest::len) bytes at `offset` with `buf` repeated
    /// (`buf.len()` must divide `len`, else EINVAL; BYTCHK=3 sends one block
    /// that is compared against every block). Read-only. `Ok(n)`, `n` =
    /// number of leading bytes equal (`n == len`: all equal).
    Compare,
    /// ORWRITE (SBC-3 §5.9): atomically with respect to every other request
    /// to this store, `medium[offset..offset + buf.len()] |= buf`. `fua`
    /// honoured. `Ok(buf.len())`.
    OrWrite,
    /// GET LBA STATUS (SBC-3 §5.5): describe the allocation of the store from
    /// `offset` on, covering at most [`len`](IoRequest::len) bytes and
    /// stopping at the end of the store. Fills `buf` with consecutive
    /// [`Extent`] records ([`Extent::RECORD_LEN`] = 16 bytes each, decode
    /// with [`Extent::parse`]), the first starting at `offset`, as many as fit
    /// in `buf.len() / 16`. `Ok(bytes of records written)`: 0 when `offset`
    /// is at or past the end of the store (or `buf` holds no record).
    ///
    /// rdwr uses `lseek(SEEK_DATA / SEEK_HOLE)` on regular files, so extent
    /// boundaries are where the file system puts them (its block size), not
    /// necessarily logical-block aligned: the caller rounds. Block devices and
    /// stores that cannot tell report everything mapped.
    Extents,
    /// EXTENDED COPY (SPC-4 §6.4) block-to-block segment: copy
    /// [`len`](IoRequest::len) bytes from [`source`](IoRequest::source) into
    /// this store at `offset`, in chunks (1 MiB), reading the source with
    /// [`BackingStore::read_blocking`]. Source and destination may be the same
    /// store and the ranges may overlap: the copy runs in the safe direction,
    /// like `memmove`. A range past the end of the source or of this store,
    /// or no `source`, is EINVAL. `buf` unused (may be empty). `fua` honoured.
    /// `Ok(len)`.
    ///
    /// Not atomic as a whole (nor is EXTENDED COPY): each chunk is read, then
    /// written, so a failure part way leaves the chunks before it copied.
    Copy,
}

impl IoOp {
    /// True for the ops that change the medium: Write, Unmap, WriteSame,
    /// CompareAndWrite, OrWrite and Copy. On a read-only store they fail with
    /// [`IoError::EROFS`] (the SCSI layer reports DATA PROTECT / WRITE
    /// PROTECTED before submitting them anyway).
    pub fn modifies_medium(self) -> bool {
        matches!(
            self,
            IoOp::Write
                | IoOp::WriteAtomic
                | IoOp::Unmap
                | IoOp::WriteSame
                | IoOp::CompareAndWrite
                | IoOp::OrWrite
                | IoOp::Copy
        )
    }
}

/// One request to a store. Build it with [`IoRequest::new`] and the `with_*`
/// helpers rather than spelling every field.
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
    /// Write: write `buf[..buf.len()]`. Flush, Unmap, Copy: buf unused (may be
    /// empty). The other ops: see [`IoOp`].
    pub buf: AlignedBuf,
    /// Make the written data durable before completing (SBC-3 WRITE (10) FUA
    /// bit), with `pwritev2(RWF_DSYNC)` or `fdatasync` after the write.
    /// Honoured by Write, WriteSame, CompareAndWrite, OrWrite and Copy.
    pub fua: bool,
    /// Bytes the operation covers for Unmap, WriteSame, Compare, Extents and
    /// Copy. Read, Write, CompareAndWrite and OrWrite use `buf.len()` and
    /// ignore it; Flush ignores it.
    pub len: u64,
    /// Copy only: where the data comes from. Ignored by every other op.
    pub source: Option<CopySource>,
    /// WriteSame only: write at most this many bytes per second. A SANITIZE
    /// overwrite of a whole LU runs in the background at a bounded rate so it
    /// does not starve the I/O of the other LUs on the same medium.
    pub rate: Option<u64>,
    /// Read only: the caller can send the data straight from the file
    /// (sendfile(2)), so a store whose file lives in memory may complete the
    /// read without copying anything, with [`IoCompletion::file`] set and
    /// `buf` untouched. Ignored by every other op.
    pub by_reference: bool,
}

impl IoRequest {
    /// A request with `fua = false`, `len = buf.len()` and no copy source.
    pub fn new(tag: u64, op: IoOp, offset: u64, buf: AlignedBuf) -> IoRequest {
        let len = buf.len() as u64;
        IoRequest {
            tag,
            op,
            offset,
            buf,
            fua: false,
            len,
            source: None,
            rate: None,
            by_reference: false,
        }
    }

    /// Set [`by_reference`](IoRequest::by_reference).
    pub fn with_by_reference(mut self, by_reference: bool) -> IoRequest {
        self.by_reference = by_reference;
        self
    }

    /// Set [`fua`](IoRequest::fua).
    pub fn with_fua(mut self, fua: bool) -> IoRequest {
        self.fua = fua;
        self
    }

    /// Cap a WriteSame at `bytes_per_second` (see [`rate`](IoRequest::rate)).
    pub fn with_rate(mut self, bytes_per_second: u64) -> IoRequest {
        self.rate = Some(bytes_per_second.max(1));
        self
    }

    /// Set [`len`](IoRequest::len) (Unmap, WriteSame, Compare, Extents, Copy).
    pub fn with_len(mut self, len: u64) -> IoRequest {
        self.len = len;
        self
    }

    /// Set the [`source`](IoRequest::source) of a Copy.
    pub fn with_source(mut self, store: Arc<dyn BackingStore>, offset: u64) -> IoRequest {
        self.source = Some(CopySource { store, offset });
        self
    }
}

/// Where an [`IoOp::Copy`] reads from (EXTENDED COPY source segment, SPC-4
/// §6.4): a store, possibly the destination itself, and a byte offset in it.
#[derive(Clone)]
pub struct CopySource {
    /// The store to read with [`BackingStore::read_blocking`].
    pub store: Arc<dyn BackingStore>,
    /// Byte offset into `store`.
    pub offset: u64,
}

impl std::fmt::Debug for CopySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopySource")
            .field("store", &self.store.name())
            .field("offset", &self.offset)
            .finish()
    }
}

/// One allocation extent reported by [`IoOp::Extents`] (GET LBA STATUS,
/// SBC-3 §5.5): `len` bytes that are all mapped or all deallocated.
///
/// On the wire of the completion buffer each is [`RECORD_LEN`](Extent::RECORD_LEN)
/// bytes: the length (u64 little-endian), then flags (u64 little-endian,
/// bit 0 set = mapped, clear = deallocated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// Mapped (holds data) rather than deallocated (a hole that reads zeros).
    pub mapped: bool,
}

impl Extent {
    /// Bytes of one record in an [`IoOp::Extents`] buffer.
    pub const RECORD_LEN: usize = 16;
    /// Flags bit 0: mapped.
    const FLAG_MAPPED: u64 = 1;

    /// Write the record into `out[..16]`. Panics if `out` is shorter.
    pub fn encode(self, out: &mut [u8]) {
        let flags = if self.mapped { Self::FLAG_MAPPED } else { 0 };
        out[..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&flags.to_le_bytes());
    }

    /// Read a record from `rec[..16]`. Panics if `rec` is shorter.
    pub fn decode(rec: &[u8]) -> Extent {
        let mut word = [0u8; 8];
        word.copy_from_slice(&rec[..8]);
        let len = u64::from_le_bytes(word);
        word.copy_from_slice(&rec[8..16]);
        let flags = u64::from_le_bytes(word);
        Extent {
            len,
            mapped: flags & Self::FLAG_MAPPED != 0,
        }
    }

    /// The records of a completed Extents request: pass `&buf[..n]` where
    /// `Ok(n)` was the result. A trailing partial record is ignored.
    pub fn parse(records: &[u8]) -> impl Iterator<Item = Extent> + '_ {
        records.chunks_exact(Self::RECORD_LEN).map(Extent::decode)
    }
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
    /// part reads as zeros); a flush reports 0. The other ops report what
    /// [`IoOp`] says (bytes covered, bytes compared equal, bytes of extent
    /// records).
    pub result: Result<usize, IoError>,
    /// A read asked [`by_reference`](IoRequest::by_reference) and answered
    /// that way: the data is the file's, from this offset, for the length
    /// the result says; `buf` holds nothing.
    pub file: Option<FileRef>,
}

/// Where a read's data lies when it is sent from the file (sendfile(2))
/// rather than from a buffer. Holding it keeps the descriptor open.
#[derive(Clone)]
pub struct FileRef {
    /// The store's file.
    pub file: Arc<dyn AsFd + Send + Sync>,
    /// Byte offset of the data in it.
    pub offset: u64,
}

impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRef")
            .field("fd", &self.file.as_fd().as_raw_fd())
            .field("offset", &self.offset)
            .finish()
    }
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
    /// Invalid argument: an offset beyond what the OS can address, a Copy
    /// range past the end of a store, a WriteSame / Compare length that is
    /// not a multiple of the pattern, an odd CompareAndWrite buffer.
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
    /// tgt's bstype name: "rdwr", "null", "aio", "io_uring".
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
    /// Read `buf.len()` bytes at `offset` synchronously on the calling thread
    /// (a worker of another store, or of this one, serving an
    /// [`IoOp::Copy`]). Like [`IoOp::Read`], what lies past the end of the
    /// store reads as zeros and the result is `Ok(buf.len())`; atomic with
    /// respect to CompareAndWrite and OrWrite on this store. It does not go
    /// through the completion path, so it also works after [`close`]
    /// (a Copy queued before close still finishes).
    ///
    /// [`close`]: BackingStore::close
    fn read_blocking(&self, offset: u64, buf: &mut [u8]) -> Result<usize, IoError>;
}

/// A backing store type, by tgt's `--bstype` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// "rdwr": pread/pwrite on a worker thread pool.
    Rdwr,
    /// "null": no storage at all.
    Null,
    /// "aio": Linux native AIO, one context per reactor (tgt `bs_aio.c`).
    Aio,
    /// "io_uring": one io_uring ring per reactor.
    IoUring,
}

impl StoreKind {
    /// Every kind this crate can open, for `tgtadm --op show --mode system`.
    pub const ALL: &'static [StoreKind] = &[
        StoreKind::Rdwr,
        StoreKind::Null,
        StoreKind::Aio,
        StoreKind::IoUring,
    ];

    /// tgt's bstype name.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Rdwr => "rdwr",
            StoreKind::Null => "null",
            StoreKind::Aio => "aio",
            StoreKind::IoUring => "io_uring",
        }
    }
}

impl std::str::FromStr for StoreKind {
    type Err = BackingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rdwr" => Ok(StoreKind::Rdwr),
            "null" => Ok(StoreKind::Null),
            "aio" => Ok(StoreKind::Aio),
            "io_uring" => Ok(StoreKind::IoUring),
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
/// (`NULL_BS_DEV_SIZE` in fujita/tgt `usr/bs_null.c`). `aio` and `io_uring`
/// fall back to `rdwr` (with a warning) where the kernel gives no context.
pub fn open_store(
    kind: StoreKind,
    opts: &OpenOptions,
) -> Result<Arc<dyn BackingStore>, BackingError> {
    match kind {
        StoreKind::Rdwr => Ok(Arc::new(rdwr::RdwrStore::open(opts)?)),
        StoreKind::Null => Ok(Arc::new(null::NullStore::new(opts.readonly))),
        StoreKind::Aio => engine::EngineStore::open(engine::EngineKind::Aio, opts),
        StoreKind::IoUring => engine::EngineStore::open(engine::EngineKind::Uring, opts),
    }
}
