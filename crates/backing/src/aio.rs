//! Linux native AIO (io_setup(2), io_submit(2), io_getevents(2),
//! io_destroy(2)) as an engine [`Backend`]: one context per reactor, at most
//! [`AIO_MAX_EVENTS`] requests in the kernel, completions signalled on the
//! reactor's eventfd with `IOCB_FLAG_RESFD`.
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
        })
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
        let mut list = [&mut iocb as *mut Iocb];
        loop {
            // SAFETY: io_submit(ctx, 1, iocbpp): `list` holds one pointer to
            // a live, fully initialised iocb, which the kernel copies during
            // the call. The buffer it names is kept alive and unmoved by the
            // caller until the event is reaped (engine.rs, `Lane`).
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_submit,
                    self.ctx,
                    1 as libc::c_long,
                    list.as_mut_ptr(),
                )
            };
            match ret {
                1 => return Ok(()),
                // io_submit(2): 0 submitted is not an error code; say EAGAIN.
                0 => return Err(libc::EAGAIN),
                _ => match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(e) => return Err(e),
                    None => return Err(libc::EIO),
                },
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<(u64, i64)>, block: bool) {
        // min_nr 0 with a zero timeout returns at once (io_getevents(2));
        // blocking waits up to 100 ms for one event (teardown only).
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: if block { 100_000_000 } else { 0 },
        };
        self.getevents(usize::from(block), timeout, out);
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
