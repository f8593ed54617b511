//! The one completion path every store uses: a queue plus an eventfd that the
//! owning reactor has registered in its mio loop (DESIGN.md, "Backing stores").
//!
//! Any thread (a rdwr worker, an AIO/io_uring reaper, or the reactor itself
//! for inline engines) pushes an [`IoCompletion`] and bumps the eventfd; the
//! reactor sees the fd readable, resets the counter and drains the queue.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::IoCompletion;

struct Shared {
    queue: Mutex<Vec<IoCompletion>>,
    eventfd: EventFd,
    /// Cleared when the receiver is dropped: completions are then freed at
    /// once instead of piling up where nobody will drain them.
    receiver_alive: AtomicBool,
}

impl Shared {
    /// Lock the queue. A poisoned lock only means a thread panicked while
    /// holding it; the `Vec` itself is still consistent, so keep going.
    fn queue(&self) -> MutexGuard<'_, Vec<IoCompletion>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One completion channel per reactor. Any thread may send; the reactor
/// registers the receiver's eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`) in its mio
/// loop and drains when it is readable.
pub fn completion_channel() -> std::io::Result<(CompletionSender, CompletionReceiver)> {
    let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let shared = Arc::new(Shared {
        queue: Mutex::new(Vec::with_capacity(256)),
        eventfd,
        receiver_alive: AtomicBool::new(true),
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
    shared: Arc<Shared>,
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
    ///
    /// If the receiver is gone the completion (and its buffer) is dropped.
    pub fn send(&self, completion: IoCompletion) {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return;
        }
        let was_empty = {
            let mut q = self.shared.queue();
            q.push(completion);
            q.len() == 1
        };
        // One signal per batch, not per completion: `drain` resets the
        // eventfd before it takes the queue, so a completion pushed onto a
        // non-empty queue is taken by the drain its predecessor's signal
        // wakes, and one pushed onto an emptied queue signals itself.
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
    /// Reset the eventfd counter (ignore EAGAIN) and move every queued
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
        out.append(&mut self.shared.queue());
    }

    /// True when no completion is queued right now.
    pub fn is_empty(&self) -> bool {
        self.shared.queue().is_empty()
    }
}

impl Drop for CompletionReceiver {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
        // Free what was queued and never drained.
        let stale = std::mem::take(&mut *self.shared.queue());
        drop(stale);
    }
}
