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

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

use nix::errno::Errno;

use crate::{
    BackingError, BackingStore, CompletionSender, IoCompletion, IoError, IoOp, IoRequest,
    OpenOptions,
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
}

struct Queue {
    pending: VecDeque<Job>,
    /// Set by `close`: no new requests, workers exit once `pending` is empty.
    closed: bool,
}

/// What the workers share with the store.
struct Shared {
    /// The descriptor opened with the requested bsoflags.
    file: File,
    /// Only for `O_DIRECT` stores: the same file without `O_DIRECT`, for I/O
    /// that direct I/O cannot do (see the module comment).
    buffered: Option<File>,
    readonly: bool,
    /// `O_SYNC`: every write is durable already, FUA needs nothing more.
    sync: bool,
    /// Set once `pwritev2(RWF_DSYNC)` turns out unsupported; FUA then uses
    /// `fdatasync` after the write.
    no_rwf_dsync: AtomicBool,
    queue: Mutex<Queue>,
    work: Condvar,
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
            let Some(Job { req, done }) = job else {
                return;
            };
            done.send(self.execute(req));
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
        } = req;
        let result = match op {
            IoOp::Read => self.read(&mut buf, offset),
            IoOp::Write => self.write(&buf, offset, fua),
            IoOp::Flush => fdatasync(&self.file).map(|()| 0),
        };
        IoCompletion {
            tag,
            op,
            buf,
            result,
        }
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

        let shared = Arc::new(Shared {
            file,
            buffered,
            readonly,
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
        let mut q = self.shared.queue();
        if q.closed {
            drop(q);
            complete_closed(req, done);
            return;
        }
        q.pending.push_back(Job {
            req,
            done: done.clone(),
        });
        drop(q);
        self.shared.work.notify_one();
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
        for Job { req, done } in leftover {
            complete_closed(req, &done);
        }
        if !self.shared.readonly {
            let _ = fdatasync(&self.shared.file);
        }
    }

    fn readonly(&self) -> bool {
        self.shared.readonly
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
fn direct_io_aligned(addr: *const u8, offset: u64, len: usize) -> bool {
    (addr as usize) % DIRECT_IO_ALIGN == 0
        && offset % DIRECT_IO_ALIGN as u64 == 0
        && len % DIRECT_IO_ALIGN == 0
}

/// Offsets are `off_t`: the whole transfer must end below `i64::MAX`.
fn check_range(offset: u64, len: usize) -> Result<(), IoError> {
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
