//! Linux native AIO (io_setup(2), io_submit(2), io_getevents(2),
//! io_destroy(2)) as an engine [`Backend`]: one context per reactor, at most
//! [`AIO_MAX_EVENTS`] requests in the kernel, completions signalled on the
//! reactor's eventfd with `IOCB_FLAG_RESFD`. The iocbs of one reactor loop
//! turn go to the kernel together, with one io_submit(2) (`flush`).
//!
//! There is no well-kept crate for it, so the ABI of `linux/aio_abi.h` is
//! spelled out here and the syscalls go through `libc::syscall`.

use std::os::fd::RawFd;

use crate::engine::{Backend, Sub};

/// Events per context: tgt's `bs_aio.c` uses 128 (`AIO_MAX_IODEPTH`).
pub(crate) const AIO_MAX_EVENTS: usize = 128;

/// `aio_context_t` (linux/aio_abi.h).
type AioContext = libc::c_ulong;

// linux/aio_abi.h: enum { IOCB_CMD_PREAD = 0, IOCB_CMD_PWRITE = 1,
// IOCB_CMD_FSYNC = 2, IOCB_CMD_FDSYNC = 3, ... }.
const IOCB_CMD_PREAD: u16 = 0;
const IOCB_CMD_PWRITE: u16 = 1;
const IOCB_CMD_FDSYNC: u16 = 3;
/// linux/aio_abi.h: "aio_resfd is valid": signal this eventfd on completion.
const IOCB_FLAG_RESFD: u32 = 1 << 0;

/// `struct iocb` (linux/aio_abi.h). `aio_key` and `aio_rw_flags` share one
/// 64-bit word whose halves are ordered by endianness (`PADDED` macro).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    aio_data: u64,
    #[cfg(target_endian = "little")]
    aio_key: u32,
    /// RWF_* flags, as for pwritev2(2) (kernel 4.13+).
    aio_rw_flags: i32,
    #[cfg(target_endian = "big")]
    aio_key: u32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event` (linux/aio_abi.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// One AIO context whose completions signal `resfd`.
pub(crate) struct Aio {
    ctx: AioContext,
    resfd: RawFd,
    events: Vec<IoEvent>,
    /// Queued by `submit`, handed to the kernel by `flush`.
    queued: Vec<Iocb>,
    /// Pieces the kernel refused at `flush`, with `-errno`: the next `reap`
    /// reports them like finished ones.
    refused: Vec<(u64, i64)>,
    /// Submitted and not yet reaped.
    in_kernel: usize,
}

impl Aio {
    /// io_setup(2) for [`AIO_MAX_EVENTS`] requests; completions will signal
    /// `resfd` (an eventfd that outlives the context).
    pub(crate) fn new(resfd: RawFd) -> std::io::Result<Aio> {
        let mut ctx: AioContext = 0;
        // SAFETY: io_setup(nr_events, ctx_idp) writes one aio_context_t
        // through the pointer, which points to a live local initialised to 0
        // as io_setup(2) requires.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_setup,
                AIO_MAX_EVENTS as libc::c_long,
                &mut ctx as *mut AioContext,
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Aio {
            ctx,
            resfd,
            events: vec![IoEvent::default(); AIO_MAX_EVENTS],
            queued: Vec::with_capacity(AIO_MAX_EVENTS),
            refused: Vec::new(),
            in_kernel: 0,
        })
    }

    /// Signal the eventfd, so the reactor's next drain calls `reap`.
    fn signal(&self) {
        // SAFETY: eventfd_write(3) on the channel's eventfd, which outlives
        // the context; it only adds to an 8-byte counter.
        unsafe { libc::eventfd_write(self.resfd, 1) };
    }

    /// io_getevents(2) for between `min` and [`AIO_MAX_EVENTS`] events,
    /// waiting at most `timeout`.
    fn getevents(&mut self, min: usize, timeout: libc::timespec, out: &mut Vec<(u64, i64)>) {
        let ret = loop {
            // SAFETY: `events` has room for AIO_MAX_EVENTS io_event records,
            // the kernel writes at most `nr` = that many; `timeout` is a live
            // local; `ctx` is a context from io_setup not yet destroyed.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    min as libc::c_long,
                    AIO_MAX_EVENTS as libc::c_long,
                    self.events.as_mut_ptr(),
                    &timeout as *const libc::timespec,
                )
            };
            if ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break ret;
        };
        // Other failures (EFAULT, EINVAL) cannot happen with these arguments;
        // treat them as "nothing finished".
        let n = usize::try_from(ret).unwrap_or(0).min(AIO_MAX_EVENTS);
        self.in_kernel = self.in_kernel.saturating_sub(n);
        out.extend(self.events[..n].iter().map(|e| (e.data, e.res)));
    }
}

impl Backend for Aio {
    const MAX_IN_KERNEL: usize = AIO_MAX_EVENTS;

    fn submit(&mut self, id: u64, sub: &Sub) -> Result<(), i32> {
        let mut iocb = Iocb {
            aio_data: id,
            aio_flags: IOCB_FLAG_RESFD,
            aio_resfd: self.resfd as u32,
            ..Iocb::default()
        };
        match *sub {
            Sub::Read {
                fd,
                buf,
                len,
                offset,
            } => {
                iocb.aio_lio_opcode = IOCB_CMD_PREAD;
                iocb.aio_fildes = fd as u32;
                iocb.aio_buf = buf as u64;
                iocb.aio_nbytes = len as u64;
                iocb.aio_offset = offset as i64;
            }
            Sub::Write {
                fd,
                buf,
                len,
                offset,
                dsync,
            } => {
                iocb.aio_lio_opcode = IOCB_CMD_PWRITE;
                iocb.aio_fildes = fd as u32;
                iocb.aio_buf = buf as u64;
                iocb.aio_nbytes = len as u64;
                iocb.aio_offset = offset as i64;
                if dsync {
                    iocb.aio_rw_flags = libc::RWF_DSYNC;
                }
            }
            Sub::Fdsync { fd } => {
                iocb.aio_lio_opcode = IOCB_CMD_FDSYNC;
                iocb.aio_fildes = fd as u32;
            }
        }
        // Not submitted yet: the reactor calls `flush` once per loop turn,
        // so every request of that turn goes in with one io_submit(2).
        self.queued.push(iocb);
        Ok(())
    }

    fn flush(&mut self) {
        let mut done = 0;
        let mut pointers = [std::ptr::null_mut::<Iocb>(); AIO_MAX_EVENTS];
        while done < self.queued.len() {
            let mut nr = 0;
            for (p, iocb) in pointers.iter_mut().zip(&mut self.queued[done..]) {
                *p = iocb;
                nr += 1;
            }
            // SAFETY: io_submit(ctx, nr, iocbpp): the first `nr` entries of
            // `pointers` point to live, fully initialised iocbs in `queued`,
            // which is not touched until the call returns; the kernel copies
            // them during the call. The buffers they name are kept alive and
            // unmoved by the caller until their events are reaped
            // (engine.rs, `Lane`).
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx,
                    nr as libc::c_long,
                    pointers.as_mut_ptr(),
                )
            };
            if ret > 0 {
                let n = ret as usize;
                done += n;
                self.in_kernel += n;
                continue;
            }
            // io_submit(2) fails only if it took none: the error is the
            // first iocb's (0 taken is not an error code: say EAGAIN).
            let errno = if ret == 0 {
                libc::EAGAIN
            } else {
                std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO)
            };
            match errno {
                libc::EINTR => continue,
                // Out of kernel resources while some are in use: the rest
                // waits for the next flush (reap retries).
                libc::EAGAIN if self.in_kernel > 0 => break,
                e => {
                    self.refused
                        .push((self.queued[done].aio_data, -i64::from(e)));
                    done += 1;
                }
            }
        }
        self.queued.drain(..done);
        // Refusals are reported by `reap`: make the reactor call it. Iocbs
        // left queued go with the next flush, at the latest when an event
        // of those in the kernel signals.
        if !self.refused.is_empty() {
            self.signal();
        }
    }

    fn reap(&mut self, out: &mut Vec<(u64, i64)>, block: bool) {
        // min_nr 0 with a zero timeout returns at once (io_getevents(2));
        // blocking waits up to 100 ms for one event (teardown only).
        self.flush();
        out.append(&mut self.refused);
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: if block { 100_000_000 } else { 0 },
        };
        let wait = block && self.in_kernel > 0;
        self.getevents(usize::from(wait), timeout, out);
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from io_setup and is destroyed exactly once.
        // io_destroy(2) waits for I/O it cannot cancel; the engine's lane
        // has already reaped everything it submitted before this runs.
        unsafe {
            libc::syscall(libc::SYS_io_destroy, self.ctx);
        }
    }
}
