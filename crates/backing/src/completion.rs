//! The one completion path every store uses: a queue plus an eventfd that the
//! owning reactor has registered in its mio loop (DESIGN.md, "Backing stores").
//!
//! Any thread (a rdwr worker, or the reactor itself for inline engines)
//! pushes an [`IoCompletion`] and bumps the eventfd; the reactor sees the fd
//! readable, resets the counter and drains the queue.
//!
//! A completion sent by the reactor itself (an inline store: `null`, or a
//! memory medium under `aio`/`io_uring`) skips the eventfd: the reactor
//! claims its channel with [`CompletionReceiver::claim_current_thread`], and
//! before it sleeps asks [`CompletionReceiver::take_local`] whether to drain.
//! That saves an eventfd write, an epoll wake-up and an eventfd read per
//! command.
//!
//! The channel also owns the reactor's kernel I/O contexts (one Linux AIO
//! context, one io_uring ring, created on first use by an `aio` / `io_uring`
//! store, see `engine.rs`). Both notify through this same eventfd
//! (`IOCB_FLAG_RESFD`, `IORING_REGISTER_EVENTFD`), and [`CompletionReceiver::drain`]
//! reaps them too, so the reactor polls one fd and drains one path whatever
//! the engine.

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::engine::Engines;
use crate::IoCompletion;

thread_local! {
    /// The channel whose receiver this thread drains (its reactor's), if any.
    static DRAINED_HERE: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
}

pub(crate) struct Shared {
    /// The AIO / io_uring contexts of this reactor. Declared before `eventfd`
    /// so they are torn down (waiting for their in-flight I/O) first.
    ///
    /// Single issuer in practice: stores submit on the reactor thread that
    /// owns this channel and only its `drain` reaps, so the lock is
    /// uncontended; it is a `Mutex` because a `CompletionSender` is `Sync`
    /// and may be used from any thread (tests, a store's `close`).
    engines: Mutex<Engines>,
    /// Set once any engine context exists: until then `drain` skips the lock.
    engines_used: AtomicBool,
    queue: Mutex<Vec<IoCompletion>>,
    pub(crate) eventfd: EventFd,
    /// Cleared when the receiver is dropped: completions are then freed at
    /// once instead of piling up where nobody will drain them.
    receiver_alive: AtomicBool,
    /// The receiver's own thread queued a completion without signalling.
    local: AtomicBool,
}

impl Shared {
    /// Lock the queue. A poisoned lock only means a thread panicked while
    /// holding it; the `Vec` itself is still consistent, so keep going.
    fn queue(&self) -> MutexGuard<'_, Vec<IoCompletion>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock the engine contexts (poisoning ignored as for the queue: the
    /// slab and FIFO are updated with no panicking step in between). Marks
    /// them used, so `drain` reaps from now on.
    pub(crate) fn engines(&self) -> MutexGuard<'_, Engines> {
        self.engines_used.store(true, Ordering::Release);
        self.engines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reap finished engine I/O from any thread (a store's `close`): the
    /// completions go through the queue like any other.
    pub(crate) fn reap_into_queue(self: &Arc<Self>) {
        let tx = CompletionSender {
            shared: Arc::clone(self),
        };
        let mut out = Vec::new();
        self.engines().reap(&tx, &mut out);
        for c in out {
            tx.send(c);
        }
    }
}

/// One completion channel per reactor. Any thread may send; the reactor
/// registers the receiver's eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`) in its mio
/// loop and drains when it is readable.
pub fn completion_channel() -> std::io::Result<(CompletionSender, CompletionReceiver)> {
    let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let shared = Arc::new(Shared {
        engines: Mutex::new(Engines::default()),
        engines_used: AtomicBool::new(false),
        queue: Mutex::new(Vec::with_capacity(256)),
        eventfd,
        receiver_alive: AtomicBool::new(true),
        local: AtomicBool::new(false),
    });
    Ok((
        CompletionSender {
            shared: Arc::clone(&shared),
        },
        CompletionReceiver { shared },
    ))
}

/// The sending half: cheap to clone (one `Arc`), `Send + Sync`.
#[derive(Clone)]
pub struct CompletionSender {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for CompletionSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionSender")
            .field("eventfd", &self.shared.eventfd.as_fd().as_raw_fd())
            .finish()
    }
}

impl CompletionSender {
    /// Queue a completion and signal the eventfd (one eventfd write per send).
    /// On the thread that drains this channel, no signal: it drains before
    /// it next sleeps (see [`CompletionReceiver::take_local`]).
    ///
    /// If the receiver is gone the completion (and its buffer) is dropped.
    pub fn send(&self, completion: IoCompletion) {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return;
        }
        let here = DRAINED_HERE.with(Cell::get) == Arc::as_ptr(&self.shared);
        let was_empty = {
            let mut q = self.shared.queue();
            q.push(completion);
            q.len() == 1
        };
        if here {
            // Another thread that pushes behind this one sees a non-empty
            // queue and does not signal either: the receiver's thread takes
            // both before it sleeps, so nothing is left behind.
            self.shared.local.store(true, Ordering::Relaxed);
            return;
        }
        // One signal per batch, not per completion: `drain` resets the
        // eventfd before it takes the queue, so a completion pushed onto a
        // non-empty queue is taken by the drain its predecessor's signal
        // wakes (or by the receiver's own thread, which pushed it), and one
        // pushed onto an emptied queue signals itself.
        // The only possible write failure is EAGAIN when the counter is at
        // its maximum (2^64 - 2), in which case the fd is readable anyway.
        if was_empty {
            let _ = self.shared.eventfd.write(1);
        }
    }
}

/// The receiving half, owned by one reactor.
pub struct CompletionReceiver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CompletionReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionReceiver")
            .field("eventfd", &self.as_raw_fd())
            .finish()
    }
}

impl AsRawFd for CompletionReceiver {
    /// The eventfd to register (readable) in the reactor's poll loop.
    fn as_raw_fd(&self) -> RawFd {
        self.shared.eventfd.as_fd().as_raw_fd()
    }
}

impl AsFd for CompletionReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.eventfd.as_fd()
    }
}

impl CompletionReceiver {
    /// Reset the eventfd counter (ignore EAGAIN), reap what the reactor's AIO
    /// context and io_uring ring have finished, and move every queued
    /// completion into `out` (append).
    ///
    /// The counter is reset *before* the queue is taken: a completion pushed
    /// after the take re-arms the fd, so with edge-triggered polling nothing
    /// is ever left behind (at worst one spurious wake-up finds it empty).
    /// `out`'s and the queue's capacities are kept, so the steady state does
    /// not allocate.
    pub fn drain(&mut self, out: &mut Vec<IoCompletion>) {
        match self.shared.eventfd.read() {
            Ok(_) | Err(Errno::EAGAIN) => {}
            // Nothing else can fail for an eventfd read of 8 bytes; the queue
            // below is the truth either way.
            Err(_) => {}
        }
        // Reaped after the reset: the kernel signals the eventfd after it
        // posts each event, so one that lands after the reap re-arms the fd.
        if self.shared.engines_used.load(Ordering::Acquire) {
            let tx = CompletionSender {
                shared: Arc::clone(&self.shared),
            };
            self.shared.engines().reap(&tx, out);
        }
        out.append(&mut self.shared.queue());
    }

    /// Make the calling thread this channel's drainer: completions it sends
    /// itself are queued without an eventfd signal, and it must call
    /// [`take_local`](Self::take_local) before every wait for the eventfd.
    /// The reactor calls this once, on its own thread.
    pub fn claim_current_thread(&self) {
        DRAINED_HERE.with(|c| c.set(Arc::as_ptr(&self.shared)));
    }

    /// True (once) when this thread queued completions since the last call:
    /// drain before waiting, no signal will come for them.
    pub fn take_local(&self) -> bool {
        self.shared.local.swap(false, Ordering::Relaxed)
    }

    /// Move every queued completion into `out` without touching the eventfd
    /// or the kernel queues: for completions [`take_local`](Self::take_local)
    /// announced. A signal that raced in stays pending and finds at worst an
    /// empty queue.
    pub fn drain_queued(&mut self, out: &mut Vec<IoCompletion>) {
        out.append(&mut self.shared.queue());
    }

    /// Hand the requests the engines queued since the last call to the kernel
    /// (io_uring and AIO batch their submissions). Call it before waiting for
    /// the eventfd: the reactor does after each connection's input and right
    /// before `poll`.
    pub fn flush_submissions(&self) {
        if self.shared.engines_used.load(Ordering::Acquire) {
            self.shared.engines().flush();
        }
    }

    /// True when no completion is queued right now.
    pub fn is_empty(&self) -> bool {
        self.shared.queue().is_empty()
    }
}

impl Drop for CompletionReceiver {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
        DRAINED_HERE.with(|c| {
            if c.get() == Arc::as_ptr(&self.shared) {
                c.set(std::ptr::null());
            }
        });
        // Free what was queued and never drained.
        let stale = std::mem::take(&mut *self.shared.queue());
        drop(stale);
    }
}
