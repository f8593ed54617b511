//! io_uring (io_uring_setup(2), io_uring_enter(2), io_uring_register(2)) as
//! an engine [`Backend`], through the `io-uring` crate: one ring per
//! reactor, single issuer, the reactor's eventfd registered with
//! `IORING_REGISTER_EVENTFD` so every CQE signals it.

use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use crate::engine::{Backend, Sub};

/// Submission queue entries; the kernel sizes the completion queue at twice
/// this, and the lane keeps at most this many requests in the kernel, so the
/// CQ never overflows.
pub(crate) const URING_ENTRIES: u32 = 256;

/// One ring whose completions signal an eventfd.
pub(crate) struct Uring {
    ring: IoUring,
    eventfd: RawFd,
}

impl Uring {
    /// Set up a ring and register `eventfd` (which outlives the ring) for
    /// its completions. Fails with ENOSYS on kernels without io_uring, EPERM
    /// when `/proc/sys/kernel/io_uring_disabled` forbids it, ENOMEM when the
    /// locked-memory limit is too low.
    pub(crate) fn new(eventfd: RawFd, entries: u32) -> std::io::Result<Uring> {
        let ring = IoUring::new(entries)?;
        ring.submitter().register_eventfd(eventfd)?;
        Ok(Uring { ring, eventfd })
    }

    /// Hand queued SQEs to the kernel. An SQE the kernel did not take stays
    /// in the queue and goes with the next call (every `reap` calls this).
    fn submit_queued(&mut self) -> Result<(), i32> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
    }
}

impl Backend for Uring {
    const MAX_IN_KERNEL: usize = URING_ENTRIES as usize;

    fn submit(&mut self, id: u64, sub: &Sub) -> Result<(), i32> {
        let entry = match *sub {
            Sub::Read {
                fd,
                buf,
                len,
                offset,
            } => opcode::Read::new(types::Fd(fd), buf, len as u32)
                .offset(offset)
                .build(),
            Sub::Write {
                fd,
                buf,
                len,
                offset,
                dsync,
            } => opcode::Write::new(types::Fd(fd), buf, len as u32)
                .offset(offset)
                .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                .build(),
            // IORING_OP_FSYNC with IORING_FSYNC_DATASYNC: fdatasync(2).
            Sub::Fdsync { fd } => opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(id);
        // SAFETY: the entry names a buffer (Read/Write) that the caller keeps
        // alive and unmoved until its CQE is reaped (engine.rs, `Lane`), and
        // a descriptor that stays open as long as the request's store does
        // (the lane holds the store).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            // Full: hand the queue to the kernel first.
            self.submit_queued()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }.map_err(|_| libc::EAGAIN)?;
        }
        // Not submitted yet: the reactor calls `flush` once per loop turn, so
        // every request of that turn goes in with one io_uring_enter(2).
        Ok(())
    }

    fn flush(&mut self) {
        // If the kernel refuses now (EAGAIN, EBUSY) the SQEs stay queued:
        // signal the eventfd so the reactor's `drain` calls `reap`, which
        // retries.
        if self.submit_queued().is_err() {
            // SAFETY: eventfd_write(3) on the channel's eventfd, which
            // outlives the ring; it only writes an 8-byte counter increment.
            unsafe { libc::eventfd_write(self.eventfd, 1) };
        }
    }

    fn reap(&mut self, out: &mut Vec<(u64, i64)>, block: bool) {
        let _ = self.submit_queued();
        if block {
            loop {
                match self.ring.submit_and_wait(1) {
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    _ => break,
                }
            }
        }
        let mut cq = self.ring.completion();
        cq.sync();
        out.extend(cq.map(|cqe| (cqe.user_data(), i64::from(cqe.result()))));
    }
}
