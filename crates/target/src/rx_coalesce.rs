//! Receive coalescing: while an initiator is behind on the answers it already
//! has, let its next commands gather in the socket and read them in one batch.
//!
//! Why: a reactor turn costs the same few system calls whether it carries one
//! command or ten (epoll_wait, the read, the send that answers — and on
//! loopback the send also delivers the segment to the peer). When the
//! initiator, not the target, sets the pace, a reactor that wakes for every
//! segment spends most of its CPU on turns of one or two commands, and gains
//! the initiator nothing: the answers only join the queue it has not worked
//! through yet.
//!
//! When: the ExpStatSN of each SCSI Command acknowledges the responses the
//! initiator has taken in (RFC 7143 §4.2.2.2). Responses we have sent beyond
//! the latest one are its backlog. Only when, after a turn's answers are out,
//! that backlog is at least [`MIN_BACKLOG`], the turn brought more than one
//! command (an initiator that sends one at a time is waiting for each answer,
//! whatever its ExpStatSN says), and the connection awaits nothing (no write
//! data, no CmdSN gap, no text or ping answer; see
//! `Connection::take_initiator_pace`), does
//! the reactor ask for a batch of commands of the latest one's size: no more
//! than half the backlog, no more than fit in [`MAX_BATCH_BYTES`] (two at
//! least, or it does not wait), and no more than the connection's [`Batch`] — which
//! learns how many commands arrive within the wait: it grows by one each
//! time a batch arrives in time and halves each time the wait runs out. A
//! queue-depth-1 initiator (backlog 0) and any initiator waiting on us are
//! read as soon as their bytes arrive.
//!
//! How: SO_RCVLOWAT (socket(7)) makes epoll report the socket only once that
//! many bytes are queued, and a timerfd bounds the wait by
//! `TargetConfig::rx_coalesce` — like a NIC's interrupt moderation delay.
//! When the bound passes the connection is read whatever has arrived.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use rtgt_iscsi::InitiatorPace;

/// Answers the initiator must be behind on before its commands are batched.
/// With fewer outstanding it may be waiting for us (queue depth 1 has none).
pub const MIN_BACKLOG: u32 = 8;
/// Most commands waited for in one batch.
pub const MAX_BATCH: u32 = 16;
/// Fewest commands a batch asks for (one more than not coalescing at all).
pub const MIN_BATCH: u32 = 2;
/// Most bytes a batch may hold in the socket. Coalescing pays for small
/// commands, whose turn costs more than their data; large ones are better
/// read as they come — waiting for several would only fill the receive
/// window and stall the sender (with 128 KiB writes it cost a third of the
/// throughput).
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

/// How many commands a connection's batches ask for: additive increase while
/// they arrive within the wait, multiplicative decrease when it runs out, so
/// that it settles near what the initiator sends in one wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Batch(u32);

impl Default for Batch {
    fn default() -> Self {
        Batch(MIN_BATCH)
    }
}

impl Batch {
    pub fn arrived(&mut self) {
        self.0 = (self.0 + 1).min(MAX_BATCH);
    }

    pub fn timed_out(&mut self) {
        self.0 = (self.0 / 2).max(MIN_BATCH);
    }

    /// Receive low-water mark in bytes for a connection whose latest command
    /// showed `pace` (`None`: read at once). 1 is the socket default.
    pub fn low_water(self, pace: Option<InitiatorPace>) -> usize {
        let Some(p) = pace.filter(|p| p.backlog >= MIN_BACKLOG && p.commands > 1) else {
            return 1;
        };
        let bytes = (p.command_bytes as usize).max(1);
        let commands = ((p.backlog / 2).min(self.0) as usize).min(MAX_BATCH_BYTES / bytes);
        if commands < MIN_BATCH as usize {
            return 1;
        }
        commands * bytes
    }
}

/// SO_RCVLOWAT: epoll reports the socket readable once `bytes` are queued.
pub fn set_low_water(sock: &impl AsFd, bytes: usize) -> io::Result<()> {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is borrowed for the call, and the option value points
    // to a live c_int whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The one-shot timer that ends a reactor's earliest coalescing wait.
pub struct Deadline {
    timer: TimerFd,
    armed: Option<Instant>,
}

impl Deadline {
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        Ok(Deadline { timer, armed: None })
    }

    /// Fire at `at` (or `None`: not at all), unless already set so.
    pub fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
        if self.armed == at {
            return Ok(());
        }
        match at {
            Some(t) => {
                // A zero value would disarm the timer: fire after 1 µs instead.
                let after = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(1));
                self.timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(after)),
                    TimerSetTimeFlags::empty(),
                )?
            }
            None => self.timer.unset()?,
        }
        self.armed = at;
        Ok(())
    }

    /// The timer fired: consume its expiry so that it reads as idle again.
    pub fn fired(&mut self) {
        // With TFD_NONBLOCK this returns EAGAIN when nothing expired (a
        // stale wake-up): nothing to consume then.
        let _ = self.timer.wait();
        self.armed = None;
    }
}

impl AsRawFd for Deadline {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.timer.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(backlog: u32, command_bytes: u32) -> Option<InitiatorPace> {
        Some(InitiatorPace {
            backlog,
            command_bytes,
            commands: 3,
        })
    }

    #[test]
    fn only_an_initiator_behind_on_answers_is_batched() {
        let b = Batch(6);
        assert_eq!(b.low_water(None), 1);
        assert_eq!(b.low_water(pace(0, 4144)), 1);
        assert_eq!(b.low_water(pace(MIN_BACKLOG - 1, 4144)), 1);
        assert_eq!(b.low_water(pace(MIN_BACKLOG, 4144)), 4 * 4144);
        assert_eq!(b.low_water(pace(11, 48)), 5 * 48);
        // Never more than the batch.
        assert_eq!(b.low_water(pace(100, 48)), 6 * 48);
        // One command per turn: the initiator waits for each answer.
        let one_at_a_time = Some(InitiatorPace {
            backlog: 20,
            command_bytes: 48,
            commands: 1,
        });
        assert_eq!(b.low_water(one_at_a_time), 1);
        // Large commands: as many as fit in MAX_BATCH_BYTES, and not at all
        // if two do not.
        let b = Batch(MAX_BATCH);
        assert_eq!(b.low_water(pace(40, 16 * 1024 + 48)), 3 * (16 * 1024 + 48));
        assert_eq!(b.low_water(pace(40, 32 * 1024 + 48)), 1);
        assert_eq!(b.low_water(pace(40, 128 * 1024 + 48)), 1);
    }

    #[test]
    fn the_batch_grows_while_commands_arrive_in_time() {
        let mut b = Batch::default();
        assert_eq!(b, Batch(MIN_BATCH));
        b.timed_out();
        assert_eq!(b, Batch(MIN_BATCH), "never below the minimum");
        for _ in 0..3 {
            b.arrived();
        }
        assert_eq!(b, Batch(MIN_BATCH + 3));
        b.timed_out();
        assert_eq!(b, Batch((MIN_BATCH + 3) / 2).max(Batch(MIN_BATCH)));
        for _ in 0..100 {
            b.arrived();
        }
        assert_eq!(b, Batch(MAX_BATCH), "never above the maximum");
    }

    #[test]
    fn the_low_water_mark_holds_input_back_from_epoll() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx, _) = l.accept().unwrap();
        set_low_water(&rx, 100).unwrap();
        let readable = |s: &TcpStream| {
            let mut fds = [nix::poll::PollFd::new(
                s.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap() == 1
        };
        tx.write_all(&[0; 60]).unwrap();
        assert!(!readable(&rx), "60 bytes are below the mark");
        tx.write_all(&[0; 40]).unwrap();
        assert!(readable(&rx), "100 bytes reach it");
        // A read takes what is there, mark or not.
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0; 200];
        assert_eq!((&rx).read(&mut buf).unwrap(), 100);
    }

    #[test]
    fn the_deadline_fires_once_and_can_be_moved() {
        let mut d = Deadline::new().unwrap();
        let fd = d.as_raw_fd();
        // SAFETY: the timer outlives the borrowed fd used in this test.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let fired = |ms: u16| {
            let mut fds = [nix::poll::PollFd::new(
                borrowed,
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap() == 1
        };
        d.set(Some(Instant::now() + Duration::from_secs(60)))
            .unwrap();
        assert!(!fired(20));
        d.set(Some(Instant::now() + Duration::from_millis(5)))
            .unwrap();
        assert!(fired(1000));
        d.fired();
        assert!(!fired(20), "consumed");
        d.set(Some(Instant::now())).unwrap();
        assert!(fired(1000), "a deadline already past fires at once");
        d.fired();
        d.set(Some(Instant::now() + Duration::from_millis(5)))
            .unwrap();
        d.set(None).unwrap();
        assert!(!fired(50), "unset");
    }
}
