//! `aio` and `io_uring`: the kernel-queue engines (tgt `usr/bs_aio.c`; tgt
//! has no io_uring store). Both are one [`EngineStore`] over a [`Backend`]
//! ([`Aio`] or [`Uring`]); everything below the syscalls is shared.
//!
//! * **Where the contexts live.** Each reactor's completion channel owns one
//!   AIO context and one io_uring ring ([`Engines`], created on first use),
//!   whose completions signal the channel's eventfd. `CompletionReceiver::drain`
//!   reaps them into the same `IoCompletion` list as every other engine's,
//!   so the reactor is unchanged and there is one completion path.
//! * **In flight.** A request lives in its lane's slab, keyed by the AIO
//!   `aio_data` / io_uring `user_data`, from submission to completion: its
//!   page-aligned buffer stays alive and unmoved while the kernel uses it.
//!   At most [`Backend::MAX_IN_KERNEL`] per lane are in the kernel (AIO: 128,
//!   the context's size); the rest wait in a FIFO and go, in order, as
//!   completions are reaped.
//! * **Native ops** are Read, Write and Flush. FUA is `RWF_DSYNC` on the
//!   write (`aio_rw_flags` / the SQE's `rw_flags`; pwritev2(2)); a store
//!   opened `O_SYNC` needs nothing more. Flush is fdatasync
//!   (`IOCB_CMD_FDSYNC` / `IORING_OP_FSYNC` + `IORING_FSYNC_DATASYNC`).
//!   A short read continues and zero-fills at end of file, a short write
//!   continues, like rdwr. `O_DIRECT`: an unaligned piece, or one the kernel
//!   refuses with EINVAL, goes through the buffered descriptor, like rdwr.
//! * **What the kernel queue cannot do** is handed, as a whole request, to an
//!   inner `rdwr` store on the same file, whose workers complete it through
//!   the same channel: every other [`IoOp`], FUA where the kernel refuses
//!   `RWF_DSYNC` (EOPNOTSUPP/EINVAL; remembered), a Flush refused with EINVAL
//!   (`IOCB_CMD_FDSYNC` on a file system without `fsync` for AIO, io_submit(2)
//!   EINVAL), a lane that could not be created (io_setup(2) EAGAIN at
//!   `aio-max-nr`, a locked-memory limit), a request the kernel cancelled
//!   (ECANCELED: io_uring cancels the requests of a thread that exits), and
//!   `read_blocking`.
//! * **Atomicity** (CompareAndWrite SBC-3 §5.3, OrWrite §5.9, WriteAtomic
//!   SBC-4 §5.48). rdwr makes them atomic with its lock, which kernel-queue
//!   I/O does not take. So an exclusive op waits until none of this store's
//!   requests is in a kernel queue, then runs on rdwr; while any exclusive op
//!   is outstanding (waiting or running) this store sends its Reads, Writes
//!   and Flushes to rdwr too, where the lock orders them. No new kernel-queue
//!   I/O starts, so the wait is bounded by the I/O already in the kernel.
//!   Correct, and slower only while an exclusive op is outstanding.
//! * **Memory media** (a file on tmpfs or ramfs). Neither kernel queue can
//!   do their buffered I/O without blocking (tmpfs has no `FMODE_NOWAIT`:
//!   pwritev2(RWF_NOWAIT) gives EOPNOTSUPP), so io_uring hands every such
//!   request to an io-wq worker thread and AIO does it synchronously inside
//!   io_submit(2). Either way the I/O is a copy to or from the page cache,
//!   and the hand-off (a thread wake-up, a CQE, an eventfd signal and an
//!   epoll wake-up) costs more than the copy. So a Read, Write or Flush of
//!   up to [`INLINE_MAX`] bytes on such a file runs inline, on the reactor,
//!   and completes through the same channel (unsignalled, see
//!   `completion.rs`). Larger ones still go through the queue, so one
//!   connection's big transfers do not hold up the reactor's others.
//! * **Reads by reference.** A Read whose caller can send from the file
//!   ([`IoRequest::by_reference`]: the reactor, for large reads without a
//!   data digest) completes on a memory medium at once with a [`FileRef`]:
//!   the reactor sendfile(2)s the page cache pages to the socket, so the
//!   target copies nothing (loopback's receiver does the one copy). While an
//!   exclusive op is outstanding it goes to rdwr like any other request.
//! * **Close** waits until none of the store's requests is in a kernel queue
//!   (reaping the lanes it used itself, 1 ms apart, so it also works on the
//!   reactor thread), then closes rdwr (which runs what it has queued). Later
//!   requests complete with ENXIO.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::aio::Aio;
use crate::completion::Shared;
use crate::rdwr::{check_range, direct_io_aligned, RdwrStore};
use crate::uring::{Uring, URING_ENTRIES};
use crate::{
    BackingError, BackingStore, CompletionSender, IoCompletion, IoError, IoOp, IoRequest,
    OpenOptions,
};

/// Largest single kernel request: io_uring's length is a `u32`; a larger
/// buffer goes in pieces like a short transfer.
const MAX_PIECE: usize = 1 << 30;

/// Largest Read or Write a memory-medium store runs inline on the reactor
/// (see the module comment): at memory speed about 20 µs of copying.
pub(crate) const INLINE_MAX: usize = 256 * 1024;

/// Which kernel queue a store uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EngineKind {
    /// Linux native AIO.
    Aio,
    /// io_uring.
    Uring,
}

impl EngineKind {
    fn name(self) -> &'static str {
        match self {
            EngineKind::Aio => "aio",
            EngineKind::Uring => "io_uring",
        }
    }

    /// Can this kernel (and its sysctls) give us a context at all?
    fn probe(self) -> std::io::Result<()> {
        match self {
            EngineKind::Aio => Aio::new(-1).map(drop),
            EngineKind::Uring => io_uring::IoUring::new(8).map(drop),
        }
    }
}

/// One piece of I/O for the kernel. Buffers are raw pointers: the lane keeps
/// the owning `AlignedBuf` alive and unmoved until the piece completes.
pub(crate) enum Sub {
    /// pread of `len` bytes at `offset` into `buf`.
    Read {
        fd: RawFd,
        buf: *mut u8,
        len: usize,
        offset: u64,
    },
    /// pwrite of `len` bytes from `buf` at `offset`, `RWF_DSYNC` if `dsync`.
    Write {
        fd: RawFd,
        buf: *const u8,
        len: usize,
        offset: u64,
        dsync: bool,
    },
    /// fdatasync.
    Fdsync { fd: RawFd },
}

/// A kernel queue: submit pieces tagged with an id, reap `(id, result)`
/// where result is bytes or `-errno`.
pub(crate) trait Backend {
    /// Most pieces this queue takes at once.
    const MAX_IN_KERNEL: usize;
    /// Queue one piece. `Err(errno)` if the kernel refused it (nothing queued).
    fn submit(&mut self, id: u64, sub: &Sub) -> Result<(), i32>;
    /// Append finished pieces to `out`; with `block`, wait for at least one
    /// (briefly, teardown only).
    fn reap(&mut self, out: &mut Vec<(u64, i64)>, block: bool);
    /// Hand what `submit` queued to the kernel: one io_uring_enter(2) or
    /// io_submit(2) per reactor loop turn. What the kernel refuses then is
    /// reported by the next `reap` (the eventfd is signalled for it).
    fn flush(&mut self);
}

/// A request in a lane.
struct Entry {
    store: Arc<StoreInner>,
    req: IoRequest,
    /// Bytes transferred so far.
    done: usize,
    /// Use the buffered descriptor from now on (O_DIRECT refused).
    buffered: bool,
    /// The piece in the kernel went through the `O_DIRECT` descriptor.
    used_direct: bool,
    /// The piece in the kernel asked for `RWF_DSYNC`.
    used_dsync: bool,
}

impl Entry {
    /// The next piece of this request.
    fn piece(&mut self) -> Sub {
        let store = &self.store;
        if self.req.op == IoOp::Flush {
            self.used_direct = false;
            return Sub::Fdsync { fd: store.fd };
        }
        let len = (self.req.buf.len() - self.done).min(MAX_PIECE);
        let offset = self.req.offset + self.done as u64;
        // `done < buf.len()` here, so this stays inside the allocation.
        let buf = self.req.buf.as_mut_ptr().wrapping_add(self.done);
        let fd = match store.buffered_fd {
            Some(b) if self.buffered || !direct_io_aligned(buf, offset, len) => b,
            _ => store.fd,
        };
        self.used_direct = store.buffered_fd.is_some() && fd == store.fd;
        if self.req.op == IoOp::Read {
            Sub::Read {
                fd,
                buf,
                len,
                offset,
            }
        } else {
            self.used_dsync = self.req.fua && !store.sync;
            Sub::Write {
                fd,
                buf,
                len,
                offset,
                dsync: self.used_dsync,
            }
        }
    }

    /// What a piece's result means for the request.
    fn outcome(&mut self, res: i64) -> Next {
        let len = self.req.buf.len();
        if res < 0 {
            let errno = i32::try_from(-res).unwrap_or(libc::EIO);
            return match self.req.op {
                IoOp::Read | IoOp::Write if errno == libc::EINVAL && self.used_direct => {
                    self.buffered = true;
                    Next::Again
                }
                IoOp::Write
                    if self.used_dsync && matches!(errno, libc::EINVAL | libc::EOPNOTSUPP) =>
                {
                    self.store.no_rwf_dsync.store(true, Ordering::Relaxed);
                    Next::HandOff
                }
                IoOp::Flush if errno == libc::EINVAL => Next::HandOff,
                // io_uring cancels a task's requests when the thread that
                // submitted them exits (io_uring_setup(2), io-wq); the
                // request is redone in full by rdwr (rewriting the same data
                // is harmless).
                _ if errno == libc::ECANCELED => Next::HandOff,
                _ => Next::Done(Err(IoError(errno))),
            };
        }
        match self.req.op {
            IoOp::Flush => Next::Done(Ok(0)),
            // End of file: the rest reads as zeros (no stale pool data).
            IoOp::Read if res == 0 => {
                self.req.buf[self.done..].fill(0);
                Next::Done(Ok(len))
            }
            // A zero-byte write of a non-empty piece makes no progress.
            _ if res == 0 => Next::Done(Err(IoError::EIO)),
            _ => {
                self.done = (self.done + res as usize).min(len);
                if self.done == len {
                    Next::Done(Ok(len))
                } else {
                    Next::Again
                }
            }
        }
    }

    fn complete(self, result: Result<usize, IoError>) -> IoCompletion {
        IoCompletion {
            file: None,
            tag: self.req.tag,
            op: self.req.op,
            buf: self.req.buf,
            result,
        }
    }
}

enum Next {
    /// Submit the next piece.
    Again,
    /// Finished.
    Done(Result<usize, IoError>),
    /// Give the whole request to rdwr.
    HandOff,
}

/// One kernel queue of one reactor, with its in-flight slab and FIFO.
pub(crate) struct Lane<B: Backend> {
    backend: B,
    slab: Vec<Option<Entry>>,
    free: Vec<usize>,
    waiting: VecDeque<usize>,
    in_kernel: usize,
    events: Vec<(u64, i64)>,
}

impl<B: Backend> Lane<B> {
    fn new(backend: B) -> Lane<B> {
        Lane {
            backend,
            slab: Vec::with_capacity(B::MAX_IN_KERNEL),
            free: Vec::new(),
            waiting: VecDeque::new(),
            in_kernel: 0,
            events: Vec::with_capacity(B::MAX_IN_KERNEL),
        }
    }

    fn start(&mut self, entry: Entry, tx: Option<&CompletionSender>, out: &mut Vec<IoCompletion>) {
        let id = match self.free.pop() {
            Some(id) => {
                self.slab[id] = Some(entry);
                id
            }
            None => {
                self.slab.push(Some(entry));
                self.slab.len() - 1
            }
        };
        if self.in_kernel < B::MAX_IN_KERNEL && self.waiting.is_empty() {
            self.issue(id, tx, out);
        } else {
            self.waiting.push_back(id);
        }
    }

    /// Submit the next piece of request `id`.
    fn issue(&mut self, id: usize, tx: Option<&CompletionSender>, out: &mut Vec<IoCompletion>) {
        let Some(entry) = self.slab.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let piece = entry.piece();
        match self.backend.submit(id as u64, &piece) {
            Ok(()) => self.in_kernel += 1,
            // Out of kernel resources: retry as completions free some.
            Err(libc::EAGAIN) if self.in_kernel > 0 => self.waiting.push_front(id),
            Err(errno) => self.finish(id, -i64::from(errno), tx, out),
        }
    }

    /// A piece of request `id` ended with `res`.
    fn finish(
        &mut self,
        id: usize,
        res: i64,
        tx: Option<&CompletionSender>,
        out: &mut Vec<IoCompletion>,
    ) {
        let Some(entry) = self.slab.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        match entry.outcome(res) {
            Next::Again if self.in_kernel < B::MAX_IN_KERNEL => self.issue(id, tx, out),
            Next::Again => self.waiting.push_front(id),
            Next::Done(result) => {
                let entry = self.take(id);
                let store = Arc::clone(&entry.store);
                out.push(entry.complete(result));
                store.left_engine();
            }
            Next::HandOff => {
                let entry = self.take(id);
                let store = Arc::clone(&entry.store);
                match tx {
                    Some(tx) => store.rdwr.submit(entry.req, tx),
                    // Teardown: nobody is listening any more.
                    None => out.push(entry.complete(Err(IoError::EIO))),
                }
                store.left_engine();
            }
        }
    }

    fn take(&mut self, id: usize) -> Entry {
        self.free.push(id);
        self.slab[id].take().expect("slab entry present")
    }

    /// Reap what the kernel finished; start waiting requests in its place.
    fn reap(&mut self, tx: Option<&CompletionSender>, out: &mut Vec<IoCompletion>, block: bool) {
        let mut events = std::mem::take(&mut self.events);
        loop {
            events.clear();
            self.backend.reap(&mut events, block && self.in_kernel > 0);
            for &(id, res) in &events {
                let id = id as usize;
                if self.slab.get(id).is_some_and(Option::is_some) {
                    self.in_kernel -= 1;
                    self.finish(id, res, tx, out);
                }
            }
            self.refill(tx, out);
            if events.is_empty() || block {
                break;
            }
        }
        self.events = events;
    }

    /// Move waiting requests into the kernel while there is room.
    fn refill(&mut self, tx: Option<&CompletionSender>, out: &mut Vec<IoCompletion>) {
        while self.in_kernel < B::MAX_IN_KERNEL {
            let Some(id) = self.waiting.pop_front() else {
                break;
            };
            self.issue(id, tx, out);
            if self.waiting.front() == Some(&id) {
                break; // EAGAIN: wait for the next completion
            }
        }
    }
}

impl<B: Backend> Drop for Lane<B> {
    /// The channel is going away: wait for every request in the kernel, so no
    /// buffer is freed (or descriptor closed) under the kernel's feet.
    fn drop(&mut self) {
        let mut out = Vec::new();
        while self.in_kernel > 0 || !self.waiting.is_empty() {
            self.reap(None, &mut out, true);
            out.clear();
        }
    }
}

/// A lane, not yet created, or unavailable on this channel.
enum Slot<B: Backend> {
    Untried,
    Ready(Lane<B>),
    Failed,
}

impl<B: Backend> Slot<B> {
    /// The lane, created by `make` on first use. A failure is logged once
    /// and remembered; the stores then hand their requests to rdwr.
    fn get(
        &mut self,
        kind: EngineKind,
        make: impl FnOnce() -> std::io::Result<B>,
    ) -> Option<&mut Lane<B>> {
        if let Slot::Untried = self {
            *self = match make() {
                Ok(backend) => Slot::Ready(Lane::new(backend)),
                Err(e) => {
                    tracing::warn!(
                        "{}: cannot set up a context for this reactor ({e}); its requests go to rdwr",
                        kind.name()
                    );
                    Slot::Failed
                }
            };
        }
        match self {
            Slot::Ready(lane) => Some(lane),
            _ => None,
        }
    }

    fn reap(&mut self, tx: &CompletionSender, out: &mut Vec<IoCompletion>) {
        if let Slot::Ready(lane) = self {
            lane.reap(Some(tx), out, false);
        }
    }
}

/// A reactor's kernel queues, inside its completion channel.
pub(crate) struct Engines {
    aio: Slot<Aio>,
    uring: Slot<Uring>,
}

impl Default for Engines {
    fn default() -> Engines {
        Engines {
            aio: Slot::Untried,
            uring: Slot::Untried,
        }
    }
}

impl Engines {
    /// Submit what the queues hold (see [`Backend::flush`]).
    pub(crate) fn flush(&mut self) {
        if let Slot::Ready(lane) = &mut self.aio {
            lane.backend.flush();
        }
        if let Slot::Ready(lane) = &mut self.uring {
            lane.backend.flush();
        }
    }

    /// Reap both queues (non-blocking).
    pub(crate) fn reap(&mut self, tx: &CompletionSender, out: &mut Vec<IoCompletion>) {
        self.aio.reap(tx, out);
        self.uring.reap(tx, out);
    }

    fn start(
        &mut self,
        kind: EngineKind,
        entry: Entry,
        tx: &CompletionSender,
        out: &mut Vec<IoCompletion>,
    ) {
        let eventfd = tx.shared.eventfd.as_raw_fd();
        let started = match kind {
            EngineKind::Aio => match self.aio.get(kind, || Aio::new(eventfd)) {
                Some(lane) => {
                    lane.start(entry, Some(tx), out);
                    None
                }
                None => Some(entry),
            },
            EngineKind::Uring => {
                match self.uring.get(kind, || Uring::new(eventfd, URING_ENTRIES)) {
                    Some(lane) => {
                        lane.start(entry, Some(tx), out);
                        None
                    }
                    None => Some(entry),
                }
            }
        };
        if let Some(entry) = started {
            let store = Arc::clone(&entry.store);
            store.rdwr.submit(entry.req, tx);
            store.left_engine();
        }
    }
}

/// What the store's requests in flight share with it.
struct StoreInner {
    kind: EngineKind,
    /// Does everything the kernel queue does not; owns the descriptors.
    rdwr: RdwrStore,
    /// The descriptor with the requested bsoflags (rdwr's).
    fd: RawFd,
    /// `O_DIRECT` stores: rdwr's buffered descriptor for unaligned I/O.
    buffered_fd: Option<RawFd>,
    /// `O_SYNC`: every write is durable, FUA needs no `RWF_DSYNC`.
    sync: bool,
    /// A file on tmpfs or ramfs: small Reads, Writes and Flushes run inline.
    in_memory: bool,
    /// The kernel refused `RWF_DSYNC`: FUA writes go to rdwr.
    no_rwf_dsync: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Requests of this store in a lane (in the kernel or its FIFO).
    in_engine: usize,
    /// CompareAndWrite / OrWrite / WriteAtomic submitted and not finished.
    exclusive: usize,
    /// Exclusive ops waiting for `in_engine` to reach 0.
    held: Vec<(IoRequest, CompletionSender)>,
    /// Channels this store has put requests in (for `close`).
    channels: Vec<Weak<Shared>>,
}

impl StoreInner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Counters and lists only, each updated in one step: poisoning
        // leaves them consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of this store's requests left its lane (completed or handed to
    /// rdwr). The last one releases the exclusive ops waiting for it.
    fn left_engine(self: &Arc<Self>) {
        let held = {
            let mut st = self.state();
            st.in_engine -= 1;
            if st.in_engine == 0 {
                std::mem::take(&mut st.held)
            } else {
                Vec::new()
            }
        };
        for (req, done) in held {
            self.run_exclusive(req, &done);
        }
    }

    /// Run an exclusive op on rdwr; it stays counted until it has executed.
    fn run_exclusive(self: &Arc<Self>, req: IoRequest, done: &CompletionSender) {
        let me = Arc::downgrade(self);
        let after = Box::new(move || {
            if let Some(me) = me.upgrade() {
                me.state().exclusive -= 1;
            }
        });
        self.rdwr.submit_then(req, done, Some(after));
    }
}

/// The `aio` and `io_uring` stores.
pub(crate) struct EngineStore {
    inner: Arc<StoreInner>,
    size: u64,
    readonly: bool,
}

impl std::fmt::Debug for EngineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStore")
            .field("kind", &self.inner.kind)
            .field("fd", &self.inner.fd)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl EngineStore {
    /// Open the file like rdwr does (same bsoflags, same read-only
    /// fallback). If this kernel gives no context of `kind` (ENOSYS; EPERM
    /// from `/proc/sys/kernel/io_uring_disabled`; io_setup EAGAIN at
    /// `fs.aio-max-nr`), warn and return the plain rdwr store instead.
    pub(crate) fn open(
        kind: EngineKind,
        opts: &OpenOptions,
    ) -> Result<Arc<dyn BackingStore>, BackingError> {
        let rdwr = RdwrStore::open(opts)?;
        if let Err(e) = kind.probe() {
            tracing::warn!(
                "{}: not available on this kernel ({e}); {} uses rdwr",
                kind.name(),
                opts.path.display()
            );
            return Ok(Arc::new(rdwr));
        }
        let (fd, buffered_fd) = rdwr.raw_fds();
        let size = rdwr.size();
        let readonly = rdwr.readonly();
        let in_memory = rdwr.in_memory();
        Ok(Arc::new(EngineStore {
            inner: Arc::new(StoreInner {
                kind,
                rdwr,
                fd,
                buffered_fd,
                sync: opts.sync,
                in_memory,
                no_rwf_dsync: AtomicBool::new(false),
                state: Mutex::new(State::default()),
            }),
            size,
            readonly,
        }))
    }
}

fn complete_now(req: IoRequest, result: Result<usize, IoError>, done: &CompletionSender) {
    done.send(IoCompletion {
        file: None,
        tag: req.tag,
        op: req.op,
        buf: req.buf,
        result,
    });
}

impl BackingStore for EngineStore {
    fn name(&self) -> &'static str {
        self.inner.kind.name()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&self, mut req: IoRequest, done: &CompletionSender) {
        let inner = &self.inner;
        if self.readonly && req.op.modifies_medium() {
            return complete_now(req, Err(IoError::EROFS), done);
        }
        match req.op {
            IoOp::Read | IoOp::Write | IoOp::Flush => {}
            IoOp::CompareAndWrite | IoOp::OrWrite | IoOp::WriteAtomic => {
                let mut st = inner.state();
                if st.closed {
                    drop(st);
                    return complete_now(req, Err(IoError::ENXIO), done);
                }
                st.exclusive += 1;
                if st.in_engine > 0 {
                    st.held.push((req, done.clone()));
                    return;
                }
                drop(st);
                return inner.run_exclusive(req, done);
            }
            _ => return inner.rdwr.submit(req, done),
        }
        // Only Copy reads `source`; dropping a store reference inside the
        // lane's lock could re-enter it through that store's close.
        req.source = None;
        let mut st = inner.state();
        if st.closed {
            drop(st);
            return complete_now(req, Err(IoError::ENXIO), done);
        }
        if req.op != IoOp::Flush {
            if let Err(e) = check_range(req.offset, req.buf.len()) {
                drop(st);
                return complete_now(req, Err(e), done);
            }
            if req.buf.is_empty() {
                drop(st);
                return complete_now(req, Ok(0), done);
            }
        }
        let no_dsync = req.op == IoOp::Write
            && req.fua
            && !inner.sync
            && inner.no_rwf_dsync.load(Ordering::Relaxed);
        if st.exclusive > 0 || no_dsync {
            drop(st);
            return inner.rdwr.submit(req, done);
        }
        if inner.in_memory && req.op == IoOp::Read && req.by_reference {
            // The data is in the page cache already: the caller sends it
            // from there (sendfile(2)), nothing is copied here.
            drop(st);
            let len = req.buf.len();
            return done.send(IoCompletion {
                file: Some(inner.rdwr.file_ref(req.offset)),
                tag: req.tag,
                op: req.op,
                buf: req.buf,
                result: Ok(len),
            });
        }
        if inner.in_memory && req.buf.len() <= INLINE_MAX {
            drop(st);
            return done.send(inner.rdwr.execute(req));
        }
        st.in_engine += 1;
        let channel = Arc::as_ptr(&done.shared);
        if !st
            .channels
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), channel))
        {
            st.channels.retain(|w| w.strong_count() > 0);
            st.channels.push(Arc::downgrade(&done.shared));
        }
        drop(st);
        let entry = Entry {
            store: Arc::clone(inner),
            req,
            done: 0,
            buffered: false,
            used_direct: false,
            used_dsync: false,
        };
        let mut out = Vec::new();
        done.shared
            .engines()
            .start(inner.kind, entry, done, &mut out);
        for c in out {
            done.send(c);
        }
    }

    fn close(&self) {
        self.inner.state().closed = true;
        loop {
            let (in_engine, channels) = {
                let st = self.inner.state();
                (st.in_engine, st.channels.clone())
            };
            if in_engine == 0 {
                break;
            }
            for channel in channels.iter().filter_map(Weak::upgrade) {
                channel.reap_into_queue();
            }
            if self.inner.state().in_engine > 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.inner.rdwr.close();
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn read_blocking(&self, offset: u64, buf: &mut [u8]) -> Result<usize, IoError> {
        self.inner.rdwr.read_blocking(offset, buf)
    }
}

impl Drop for EngineStore {
    fn drop(&mut self) {
        self.close();
    }
}
