//! `rdwr`: tgt's default backing store (fujita/tgt `usr/bs_rdwr.c` on the
//! `usr/bs.c` thread pool). Synchronous `pread`/`pwrite` on a file or block
//! device, run by a per-LUN pool of worker threads that serve a pending queue,
//! so a slow medium never blocks a reactor.
//!
//! * `--bsoflags sync` opens the file `O_SYNC`, `--bsoflags direct` `O_DIRECT`.
//! * Direct I/O needs the offset, the length and the buffer address aligned to
//!   the device's logical block size. Buffers are page aligned; an I/O whose
//!   offset or length is not a multiple of 512, or that the kernel still
//!   refuses with EINVAL (a 4096-byte-sector device, or the unaligned tail of
//!   a file whose length is not a multiple of 512), **falls back** to a second
//!   descriptor opened without `O_DIRECT` (same `O_SYNC`). It never fails for
//!   alignment. The kernel keeps the page cache coherent with direct I/O on
//!   the same range, so mixing the two is safe.
//! * FUA (SBC-3 WRITE (10) FUA bit) uses `pwritev2(RWF_DSYNC)`, or
//!   `pwrite` + `fdatasync` where the kernel lacks it; a store opened `O_SYNC`
//!   is already durable on every write.
//!
//! The SBC-3 ops beyond read/write/flush ([`IoOp`]) run on the same workers:
//!
//! * **Atomicity.** CompareAndWrite (SBC-3 §5.3), OrWrite (§5.9) and
//!   WriteAtomic (SBC-4 §5.48) must be
//!   atomic against every other request to the store, and the workers run in
//!   parallel. One `RwLock<()>` per store orders them: every data access
//!   (Read, Write, each chunk of WriteSame / Compare / Copy / the zero-writing
//!   Unmap fallback, each hole punch, [`BackingStore::read_blocking`]) holds
//!   it shared, CompareAndWrite, OrWrite and WriteAtomic hold it exclusively
//!   for their read-compare-write or write. Uncontended that is one atomic op per request.
//!   Long ops take it per 1 MiB chunk, not for their whole range, so a
//!   CompareAndWrite (VMware ATS heartbeats) never waits behind a gigabyte
//!   of WRITE SAME, and, the lock preferring writers, neither does the I/O
//!   queued behind it. No worker ever holds two stores' locks at once (a
//!   Copy reads a chunk from the source, drops that lock, then writes), so
//!   copies between stores in both directions cannot deadlock.
//! * **Unmap** punches a hole (`fallocate(PUNCH_HOLE | KEEP_SIZE)`, files and
//!   block devices alike); where that is refused (EOPNOTSUPP, EINVAL: a file
//!   system without holes, a device without zeroing discard, an unaligned
//!   range on a block device) it writes zeros instead.
//! * **WriteSame** writes the pattern from a scratch buffer of up to 1 MiB.
//!   An all-zero pattern on a block device is first tried as
//!   `fallocate(ZERO_RANGE | KEEP_SIZE)` (WRITE ZEROES on the device). Not on
//!   files: there it would leave unwritten extents, which `SEEK_DATA` reports
//!   as holes, while WRITE SAME without UNMAP leaves the blocks mapped.
//! * **Extents** walks `lseek(SEEK_DATA / SEEK_HOLE)`; a block device, or a
//!   file system that cannot tell, reports everything mapped.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
use std::thread::{self, JoinHandle};

use nix::errno::Errno;
use nix::fcntl::FallocateFlags;
use nix::unistd::Whence;

use crate::ops::{check_copy, check_pattern, len_usize, mismatch, split_compare_and_write, CHUNK};
use crate::{
    AlignedBuf, BackingError, BackingStore, CompletionSender, CopySource, Extent, FileRef,
    IoCompletion, IoError, IoOp, IoRequest, OpenOptions,
};

/// tgt's default number of rdwr worker threads per LUN (`tgtd -t`,
/// `nr_iothreads` in fujita/tgt `usr/bs.c`).
pub const DEFAULT_WORKER_THREADS: usize = 16;

/// Offsets and lengths that are multiples of this go through `O_DIRECT`; the
/// smallest logical block size of any device.
const DIRECT_IO_ALIGN: usize = 512;

/// Stack size of a worker: it only runs the syscall loop below.
const WORKER_STACK_SIZE: usize = 256 * 1024;

// BLKGETSIZE64 = _IOR(0x12, 114, size_t): the size of a block device in bytes.
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// One queued request and where its completion goes.
struct Job {
    req: IoRequest,
    done: CompletionSender,
    /// Run on the worker once the request has executed, just before its
    /// completion is sent (the `aio` / `io_uring` stores count their
    /// exclusive ops with it, see `engine.rs`).
    after: Option<AfterHook>,
}

struct Queue {
    pending: VecDeque<Job>,
    /// Set by `close`: no new requests, workers exit once `pending` is empty.
    closed: bool,
}

/// A hook run when a job has executed (see [`Job::after`]).
pub(crate) type AfterHook = Box<dyn FnOnce() + Send>;

/// What the workers share with the store.
struct Shared {
    /// The descriptor opened with the requested bsoflags.
    file: File,
    /// Only for `O_DIRECT` stores: the same file without `O_DIRECT`, for I/O
    /// that direct I/O cannot do (see the module comment).
    buffered: Option<File>,
    readonly: bool,
    /// A block device rather than a regular file.
    block_device: bool,
    /// The file lives in memory (tmpfs, ramfs).
    in_memory: bool,
    /// Store size in bytes, taken at open.
    size: u64,
    /// Shared by every data access, exclusive for CompareAndWrite and OrWrite
    /// (see the module comment).
    atomicity: RwLock<()>,
    /// `O_SYNC`: every write is durable already, FUA needs nothing more.
    sync: bool,
    /// Set once `pwritev2(RWF_DSYNC)` turns out unsupported; FUA then uses
    /// `fdatasync` after the write.
    no_rwf_dsync: AtomicBool,
    queue: Mutex<Queue>,
    work: Condvar,
}

impl AsFd for Shared {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock means a worker panicked holding it; the queue is
        // still consistent (push/pop are atomic w.r.t. panics), keep serving.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker main loop: take requests until closed and drained.
    fn serve(&self) {
        loop {
            let job = {
                let mut q = self.queue();
                loop {
                    if let Some(job) = q.pending.pop_front() {
                        break Some(job);
                    }
                    if q.closed {
                        break None;
                    }
                    q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let Some(Job { req, done, after }) = job else {
                return;
            };
            let completion = self.execute(req);
            if let Some(after) = after {
                after();
            }
            done.send(completion);
        }
    }

    /// Run one request to completion on the calling thread.
    fn execute(&self, req: IoRequest) -> IoCompletion {
        let IoRequest {
            tag,
            op,
            offset,
            mut buf,
            fua,
            len,
            source,
            rate,
            by_reference: _,
        } = req;
        let result = match op {
            _ if self.readonly && op.modifies_medium() => Err(IoError::EROFS),
            IoOp::Read => {
                let _shared = self.shared_access();
                self.read(&mut buf, offset)
            }
            IoOp::Write => {
                let _shared = self.shared_access();
                self.write(&buf, offset, fua)
            }
            IoOp::WriteAtomic => {
                let _exclusive = self.exclusive_access();
                self.write(&buf, offset, fua)
            }
            IoOp::Flush => fdatasync(&self.file).map(|()| 0),
            IoOp::Unmap => self.unmap(offset, len),
            IoOp::WriteSame => self.write_same(&buf, offset, len, fua, rate),
            IoOp::CompareAndWrite => {
                let _exclusive = self.exclusive_access();
                self.compare_and_write(&buf, offset, fua)
            }
            IoOp::Compare => self.compare(&buf, offset, len),
            IoOp::OrWrite => {
                let _exclusive = self.exclusive_access();
                self.or_write(&buf, offset, fua)
            }
            IoOp::Extents => self.extents(offset, len, &mut buf),
            IoOp::Copy => self.copy(source.as_ref(), offset, len, fua),
        };
        IoCompletion {
            file: None,
            tag,
            op,
            buf,
            result,
        }
    }

    /// Hold while touching data: excludes CompareAndWrite and OrWrite only.
    fn shared_access(&self) -> RwLockReadGuard<'_, ()> {
        // The lock guards no data, so poisoning means nothing here.
        self.atomicity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Hold for a read-modify-write that must be atomic (SBC-3 §5.3, §5.9).
    fn exclusive_access(&self) -> RwLockWriteGuard<'_, ()> {
        self.atomicity
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The descriptor for an I/O of `len` bytes at `offset` from `addr`.
    fn fd_for(&self, addr: *const u8, offset: u64, len: usize) -> &File {
        match &self.buffered {
            Some(buffered) if !direct_io_aligned(addr, offset, len) => buffered,
            _ => &self.file,
        }
    }

    /// Fill `buf` from `offset`; what lies past the end of the store reads as
    /// zeros (the buffer may hold stale pool data that must not leak).
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<usize, IoError> {
        check_range(offset, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let chunk = &mut buf[done..];
            let file = self.fd_for(chunk.as_ptr(), pos, chunk.len());
            match retry_eintr(|| nix::sys::uio::pread(file, chunk, pos as libc::off_t)) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::EINVAL) if self.buffered.is_some() => {
                    let buffered = self.buffered.as_ref().unwrap_or(&self.file);
                    match retry_eintr(|| nix::sys::uio::pread(buffered, chunk, pos as libc::off_t))
                    {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        buf[done..].fill(0);
        Ok(buf.len())
    }

    /// Write all of `buf` at `offset`, durable before returning if `fua`.
    fn write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, IoError> {
        if self.readonly {
            return Err(IoError::EROFS);
        }
        check_range(offset, buf.len())?;
        let dsync = fua && !self.sync && !self.no_rwf_dsync.load(Ordering::Relaxed);
        let mut needs_fdatasync = fua && !self.sync && !dsync;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let chunk = &buf[done..];
            let file = self.fd_for(chunk.as_ptr(), pos, chunk.len());
            let mut attempt = |file: &File| {
                if dsync && !needs_fdatasync {
                    match retry_eintr(|| pwrite_dsync(file, chunk, pos)) {
                        Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                            self.no_rwf_dsync.store(true, Ordering::Relaxed);
                            needs_fdatasync = true;
                        }
                        other => return other,
                    }
                }
                retry_eintr(|| nix::sys::uio::pwrite(file, chunk, pos as libc::off_t))
            };
            let written = match attempt(file) {
                Err(Errno::EINVAL) if self.buffered.is_some() => {
                    attempt(self.buffered.as_ref().unwrap_or(&self.file))
                }
                other => other,
            };
            match written {
                // A zero-byte write of a non-empty buffer makes no progress.
                Ok(0) => return Err(IoError::EIO),
                Ok(n) => done += n,
                Err(e) => return Err(e.into()),
            }
        }
        if needs_fdatasync {
            fdatasync(&self.file)?;
        }
        Ok(buf.len())
    }

    /// Unmap (SBC-3 §4.7): punch a hole, or write zeros where that is refused.
    fn unmap(&self, offset: u64, len: u64) -> Result<usize, IoError> {
        let total = len_usize(len)?;
        check_range(offset, total)?;
        if total == 0 {
            return Ok(0);
        }
        let punched = {
            let _shared = self.shared_access();
            self.fallocate(
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        match punched {
            Ok(()) => Ok(total),
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS) => {
                self.fill(&[0], offset, len, false, None)?;
                Ok(total)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// WriteSame (SBC-3 §5.42): `pattern` over `len` bytes at `offset`.
    fn write_same(
        &self,
        pattern: &[u8],
        offset: u64,
        len: u64,
        fua: bool,
        rate: Option<u64>,
    ) -> Result<usize, IoError> {
        check_pattern(len, pattern)?;
        let total = len_usize(len)?;
        check_range(offset, total)?;
        if total == 0 {
            return Ok(0);
        }
        if rate.is_none() && self.block_device && pattern.iter().all(|&b| b == 0) {
            let zeroed = {
                let _shared = self.shared_access();
                self.fallocate(
                    FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
            };
            match zeroed {
                Ok(()) => {
                    if fua && !self.sync {
                        fdatasync(&self.file)?;
                    }
                    return Ok(total);
                }
                // Unaligned, or no WRITE ZEROES support: write them.
                Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENOSYS) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.fill(pattern, offset, len, fua, rate)?;
        Ok(total)
    }

    /// Write `pattern` repeated over `len` bytes (a multiple of its length)
    /// at `offset`, one scratch buffer of up to [`CHUNK`] bytes at a time, no
    /// faster than `rate` bytes per second when given (sleeping between
    /// chunks, with no lock held).
    fn fill(
        &self,
        pattern: &[u8],
        offset: u64,
        len: u64,
        fua: bool,
        rate: Option<u64>,
    ) -> Result<(), IoError> {
        let start = std::time::Instant::now();
        let chunk = chunk_len(pattern.len(), len);
        // Fresh buffers are zeroed: an all-zero pattern needs no copying.
        let mut scratch = AlignedBuf::with_capacity(chunk);
        scratch.set_len(chunk);
        if pattern.iter().any(|&b| b != 0) {
            for block in scratch.chunks_exact_mut(pattern.len()) {
                block.copy_from_slice(pattern);
            }
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(chunk as u64) as usize;
            {
                let _shared = self.shared_access();
                self.write(&scratch[..n], offset + done, fua)?;
            }
            done += n as u64;
            if let Some(rate) = rate {
                let due = start + std::time::Duration::from_secs_f64(done as f64 / rate as f64);
                let now = std::time::Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
            }
        }
        Ok(())
    }

    /// CompareAndWrite (SBC-3 §5.3). The caller holds the lock exclusively.
    fn compare_and_write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, IoError> {
        let (verify, data) = split_compare_and_write(buf)?;
        let mut current = AlignedBuf::with_capacity(verify.len());
        current.set_len(verify.len());
        self.read(&mut current, offset)?;
        if let Some(at) = mismatch(&current, verify) {
            return Ok(at);
        }
        self.write(data, offset, fua)?;
        Ok(verify.len())
    }

    /// Compare (SBC-3 §5.31, BYTCHK): the medium against `pattern` repeated.
    fn compare(&self, pattern: &[u8], offset: u64, len: u64) -> Result<usize, IoError> {
        check_pattern(len, pattern)?;
        let total = len_usize(len)?;
        check_range(offset, total)?;
        if total == 0 {
            return Ok(0);
        }
        let chunk = chunk_len(pattern.len(), len);
        let mut medium = AlignedBuf::with_capacity(chunk);
        let mut done = 0;
        while done < total {
            let n = (total - done).min(chunk);
            medium.set_len(n);
            {
                let _shared = self.shared_access();
                self.read(&mut medium, offset + done as u64)?;
            }
            if let Some(at) = medium
                .chunks_exact(pattern.len())
                .zip(0..)
                .find_map(|(block, i)| mismatch(block, pattern).map(|at| i * pattern.len() + at))
            {
                return Ok(done + at);
            }
            done += n;
        }
        Ok(total)
    }

    /// OrWrite (SBC-3 §5.9). The caller holds the lock exclusively.
    fn or_write(&self, buf: &[u8], offset: u64, fua: bool) -> Result<usize, IoError> {
        let mut merged = AlignedBuf::with_capacity(buf.len());
        merged.set_len(buf.len());
        self.read(&mut merged, offset)?;
        for (m, b) in merged.iter_mut().zip(buf) {
            *m |= b;
        }
        self.write(&merged, offset, fua)
    }

    /// Extents (SBC-3 §5.5 GET LBA STATUS): records from `offset` on.
    fn extents(&self, offset: u64, len: u64, out: &mut [u8]) -> Result<usize, IoError> {
        let end = offset.saturating_add(len).min(self.size);
        let mut pos = offset;
        let mut written = 0;
        while pos < end && written + Extent::RECORD_LEN <= out.len() {
            let Some((mapped, next)) = self.extent_at(pos, end)? else {
                // The layout changed between SEEK_DATA and SEEK_HOLE
                // (a concurrent write or unmap): look again.
                continue;
            };
            Extent {
                len: next - pos,
                mapped,
            }
            .encode(&mut out[written..]);
            written += Extent::RECORD_LEN;
            pos = next;
        }
        Ok(written)
    }

    /// Whether `pos` (< `end`) is mapped, and where that extent ends (at most
    /// `end`); `None` if the file changed under the two lseeks.
    fn extent_at(&self, pos: u64, end: u64) -> Result<Option<(bool, u64)>, IoError> {
        if self.block_device {
            return Ok(Some((true, end)));
        }
        let fd = self.file.as_raw_fd();
        match nix::unistd::lseek(fd, pos as libc::off_t, Whence::SeekData) {
            Ok(data) if data as u64 > pos => Ok(Some((false, (data as u64).min(end)))),
            Ok(_) => match nix::unistd::lseek(fd, pos as libc::off_t, Whence::SeekHole) {
                Ok(hole) if hole as u64 > pos => Ok(Some((true, (hole as u64).min(end)))),
                Ok(_) => Ok(None),
                // Truncated behind our back: no data from `pos` on.
                Err(Errno::ENXIO) => Ok(Some((false, end))),
                Err(e) => Err(e.into()),
            },
            // No data at or after `pos` (in the file): a hole to the end.
            Err(Errno::ENXIO) => Ok(Some((false, end))),
            // Cannot tell: report mapped, as SBC-3 §5.5 allows.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => Ok(Some((true, end))),
            Err(e) => Err(e.into()),
        }
    }

    /// Copy (SPC-4 §6.4, block-to-block segment): `len` bytes from `source`
    /// to `offset`, chunk by chunk, in the direction `memmove` would take.
    fn copy(
        &self,
        source: Option<&CopySource>,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<usize, IoError> {
        let source = check_copy(source, offset, len, self.size)?;
        let total = len_usize(len)?;
        check_range(offset, total)?;
        if total == 0 {
            return Ok(0);
        }
        // Destination starting inside the source range (same store, or the
        // same file opened twice): go from the end, so no chunk is read
        // after it was overwritten. Harmless for unrelated stores.
        let backward = source.offset < offset && offset < source.offset + len;
        let chunk = total.min(CHUNK);
        let mut scratch = AlignedBuf::with_capacity(chunk);
        let mut done = 0;
        while done < total {
            let n = (total - done).min(chunk);
            let at = (if backward { total - done - n } else { done }) as u64;
            scratch.set_len(n);
            // Holds the source's lock (if it has one) only for the read, so
            // never two locks at once, even when source is this store.
            source
                .store
                .read_blocking(source.offset + at, &mut scratch)?;
            let _shared = self.shared_access();
            self.write(&scratch, offset + at, fua)?;
            done += n;
        }
        Ok(total)
    }

    /// fallocate(2) on the main descriptor, retried on EINTR.
    fn fallocate(&self, mode: FallocateFlags, offset: u64, len: u64) -> nix::Result<()> {
        // check_range was done by the caller: both fit off_t.
        retry_eintr(|| {
            nix::fcntl::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        })
    }
}

/// Bytes per chunk of a looping op: whole repetitions of a pattern of
/// `pattern_len` bytes, about [`CHUNK`] (at least one pattern), at most `len`.
fn chunk_len(pattern_len: usize, len: u64) -> usize {
    let per_chunk = (CHUNK / pattern_len).max(1) * pattern_len;
    usize::try_from(len).map_or(per_chunk, |len| len.min(per_chunk))
}

/// The `rdwr` engine.
pub(crate) struct RdwrStore {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    size: u64,
}

impl std::fmt::Debug for RdwrStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdwrStore")
            .field("fd", &self.shared.file.as_raw_fd())
            .field("size", &self.size)
            .field("readonly", &self.shared.readonly)
            .finish_non_exhaustive()
    }
}

impl RdwrStore {
    /// Open the file or block device and start the worker pool.
    ///
    /// Like tgt's `bs_rdwr_open`, a read-write open refused with EACCES or
    /// EROFS is retried read-only and the store then reports
    /// [`BackingStore::readonly`].
    ///
    /// The path is checked with stat(2) first, so a FIFO or character device
    /// is refused before open(2) could block on it or grab it.
    pub(crate) fn open(opts: &OpenOptions) -> Result<RdwrStore, BackingError> {
        let path = opts.path.as_path();
        let meta = std::fs::metadata(path).map_err(|source| BackingError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(BackingError::NotFileOrBlockDevice(path.to_path_buf()));
        }

        let mut readonly = opts.readonly;
        let file = match open_file(path, readonly, opts.sync, opts.direct) {
            Err(e)
                if !readonly
                    && matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS)) =>
            {
                readonly = true;
                open_file(path, true, opts.sync, opts.direct)
            }
            other => other,
        }
        .map_err(|source| BackingError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let buffered = if opts.direct {
            Some(
                open_file(path, readonly, opts.sync, false).map_err(|source| {
                    BackingError::Open {
                        path: path.to_path_buf(),
                        source,
                    }
                })?,
            )
        } else {
            None
        };

        let meta = file.metadata()?;
        let ft = meta.file_type();
        let size = if ft.is_file() {
            meta.len()
        } else if ft.is_block_device() {
            block_device_size(&file)?
        } else {
            return Err(BackingError::NotFileOrBlockDevice(path.to_path_buf()));
        };

        // ramfs(5) has no constant in nix: RAMFS_MAGIC from <linux/magic.h>.
        const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
        // Regular files only: statfs(2) of a device node describes the file
        // system the node lives on (devtmpfs says tmpfs), not the device.
        let in_memory = ft.is_file()
            && nix::sys::statfs::fstatfs(&file).is_ok_and(|fs| {
                let t = fs.filesystem_type();
                t == nix::sys::statfs::TMPFS_MAGIC || t.0 as libc::c_long == RAMFS_MAGIC
            });
        let shared = Arc::new(Shared {
            file,
            buffered,
            readonly,
            block_device: ft.is_block_device(),
            in_memory,
            size,
            atomicity: RwLock::new(()),
            sync: opts.sync,
            no_rwf_dsync: AtomicBool::new(false),
            queue: Mutex::new(Queue {
                pending: VecDeque::with_capacity(128),
                closed: false,
            }),
            work: Condvar::new(),
        });
        let store = RdwrStore {
            shared,
            workers: Mutex::new(Vec::new()),
            size,
        };
        let count = if opts.worker_threads == 0 {
            DEFAULT_WORKER_THREADS
        } else {
            opts.worker_threads
        };
        for i in 0..count {
            let shared = Arc::clone(&store.shared);
            let handle = thread::Builder::new()
                .name(format!("rdwr-{i}"))
                .stack_size(WORKER_STACK_SIZE)
                .spawn(move || shared.serve())?;
            // On error `store` is dropped here, which stops the workers started so far.
            store.workers().push(handle);
        }
        Ok(store)
    }

    /// [`BackingStore::submit`], running `after` on the worker once the
    /// request has executed (or at once, if the store is closed), before its
    /// completion is sent.
    pub(crate) fn submit_then(
        &self,
        req: IoRequest,
        done: &CompletionSender,
        after: Option<AfterHook>,
    ) {
        let mut q = self.shared.queue();
        if q.closed {
            drop(q);
            if let Some(after) = after {
                after();
            }
            complete_closed(req, done);
            return;
        }
        q.pending.push_back(Job {
            req,
            done: done.clone(),
            after,
        });
        drop(q);
        self.shared.work.notify_one();
    }

    /// Run `req` to completion on the calling thread, with the same locking
    /// as a worker (the engines' inline path for memory media).
    pub(crate) fn execute(&self, req: IoRequest) -> IoCompletion {
        self.shared.execute(req)
    }

    /// Where a read of this store's data can be sent from by reference: the
    /// descriptor with the requested bsoflags, kept open by the reference.
    pub(crate) fn file_ref(&self, offset: u64) -> FileRef {
        FileRef {
            file: Arc::clone(&self.shared) as Arc<dyn AsFd + Send + Sync>,
            offset,
        }
    }

    /// The file lives in memory (tmpfs, ramfs: statfs(2) `f_type`), so a read
    /// or write is a copy to or from the page cache that never waits for a
    /// device.
    pub(crate) fn in_memory(&self) -> bool {
        self.shared.in_memory
    }

    /// The descriptor opened with the requested bsoflags, and for `O_DIRECT`
    /// stores the buffered one beside it (see the module comment). Both stay
    /// open as long as this store exists, also after `close`.
    pub(crate) fn raw_fds(&self) -> (RawFd, Option<RawFd>) {
        (
            self.shared.file.as_raw_fd(),
            self.shared.buffered.as_ref().map(|f| f.as_raw_fd()),
        )
    }

    fn workers(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BackingStore for RdwrStore {
    fn name(&self) -> &'static str {
        "rdwr"
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&self, req: IoRequest, done: &CompletionSender) {
        self.submit_then(req, done, None);
    }

    fn close(&self) {
        self.shared.queue().closed = true;
        self.shared.work.notify_all();
        let handles = std::mem::take(&mut *self.workers());
        let me = thread::current().id();
        for handle in handles {
            if handle.thread().id() != me {
                // A worker that panicked has nothing more to give back.
                let _ = handle.join();
            }
        }
        // Workers drain the queue before exiting; only if they all died is
        // something left. Its completions must still be delivered.
        let leftover = std::mem::take(&mut self.shared.queue().pending);
        for Job { req, done, after } in leftover {
            if let Some(after) = after {
                after();
            }
            complete_closed(req, &done);
        }
        if !self.shared.readonly {
            let _ = fdatasync(&self.shared.file);
        }
    }

    fn readonly(&self) -> bool {
        self.shared.readonly
    }

    fn read_blocking(&self, offset: u64, buf: &mut [u8]) -> Result<usize, IoError> {
        let _shared = self.shared.shared_access();
        self.shared.read(buf, offset)
    }
}

impl Drop for RdwrStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Complete a request that arrived after `close` with ENXIO.
fn complete_closed(req: IoRequest, done: &CompletionSender) {
    done.send(IoCompletion {
        file: None,
        tag: req.tag,
        op: req.op,
        buf: req.buf,
        result: Err(IoError::ENXIO),
    });
}

/// open(2) with tgt's flags: `O_RDWR` or `O_RDONLY`, plus `O_SYNC`/`O_DIRECT`
/// from `--bsoflags` (std adds `O_CLOEXEC`; `O_LARGEFILE` is implied on 64-bit).
fn open_file(path: &Path, readonly: bool, sync: bool, direct: bool) -> std::io::Result<File> {
    let mut flags = 0;
    if sync {
        flags |= libc::O_SYNC;
    }
    if direct {
        flags |= libc::O_DIRECT;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(flags)
        .open(path)
}

fn block_device_size(file: &File) -> std::io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to
    // a live local; the fd is open for the duration of the call.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    Ok(size)
}

/// Whether the kernel can take this I/O with `O_DIRECT` on a 512-byte-sector device.
pub(crate) fn direct_io_aligned(addr: *const u8, offset: u64, len: usize) -> bool {
    (addr as usize) % DIRECT_IO_ALIGN == 0
        && offset % DIRECT_IO_ALIGN as u64 == 0
        && len % DIRECT_IO_ALIGN == 0
}

/// Offsets are `off_t`: the whole transfer must end below `i64::MAX`.
pub(crate) fn check_range(offset: u64, len: usize) -> Result<(), IoError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= i64::MAX as u64 => Ok(()),
        _ => Err(IoError::EINVAL),
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

fn fdatasync(file: &File) -> Result<(), IoError> {
    retry_eintr(|| nix::unistd::fdatasync(file.as_raw_fd())).map_err(IoError::from)
}

/// `pwritev2(fd, [buf], offset, RWF_DSYNC)`: one write, durable on return.
fn pwrite_dsync(file: &File, buf: &[u8], offset: u64) -> nix::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which stays borrowed (and so alive and
    // unmodified) for the call; the kernel only reads from it. The fd is open.
    let ret = unsafe {
        libc::pwritev2(
            file.as_fd().as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_DSYNC,
        )
    };
    Errno::result(ret).map(|n| n as usize)
}
