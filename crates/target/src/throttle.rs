//! Slowing down password guessing: after a few failed CHAP logins from one
//! address, further logins from it are refused for a while, the wait
//! doubling with each failure (up to a minute). A success clears the
//! address. Bounded memory: at most [`MAX_ADDRESSES`] addresses are tracked,
//! the stalest forgotten first, and entries expire after [`FORGET_AFTER`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures allowed before any wait.
pub const FREE_FAILURES: u32 = 3;
/// The longest wait between attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Addresses tracked at most.
pub const MAX_ADDRESSES: usize = 4096;
/// A failure older than this is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    by_addr: HashMap<IpAddr, Record>,
}

impl AuthThrottle {
    /// How long `addr` must still wait before it may try again, if at all.
    pub fn must_wait(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let r = self.by_addr.get(&addr)?;
        let wait = Self::wait_after(r.failures)?;
        let until = r.last + wait;
        (now < until).then(|| until - now)
    }

    fn wait_after(failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(FREE_FAILURES)?;
        // 1 s after the first failure beyond the free ones, doubling.
        let secs = 1u64.checked_shl(over).unwrap_or(u64::MAX);
        Some(Duration::from_secs(secs).min(MAX_WAIT))
    }

    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        self.by_addr
            .retain(|_, r| now.saturating_duration_since(r.last) < FORGET_AFTER);
        if self.by_addr.len() >= MAX_ADDRESSES && !self.by_addr.contains_key(&addr) {
            if let Some(stalest) = self
                .by_addr
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(a, _)| *a)
            {
                self.by_addr.remove(&stalest);
            }
        }
        let r = self.by_addr.entry(addr).or_insert(Record {
            failures: 0,
            last: now,
        });
        r.failures = r.failures.saturating_add(1);
        r.last = now;
    }

    pub fn succeeded(&mut self, addr: IpAddr) {
        self.by_addr.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_failures_and_a_success_clears_them() {
        let mut t = AuthThrottle::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.must_wait(a, t0), None);
            t.failed(a, t0);
        }
        assert_eq!(t.must_wait(a, t0), Some(Duration::from_secs(1)));
        assert_eq!(t.must_wait(a, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.must_wait(b, t0), None, "other addresses are not affected");
        t.failed(a, t0);
        assert_eq!(t.must_wait(a, t0), Some(Duration::from_secs(2)));
        for _ in 0..40 {
            t.failed(a, t0);
        }
        assert_eq!(t.must_wait(a, t0), Some(MAX_WAIT));
        t.succeeded(a);
        assert_eq!(t.must_wait(a, t0), None);
    }

    #[test]
    fn memory_is_bounded_and_old_failures_expire() {
        let mut t = AuthThrottle::default();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            t.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(t.by_addr.len(), MAX_ADDRESSES);
        let late = t0 + FORGET_AFTER + Duration::from_secs(3600);
        t.failed("192.0.2.9".parse().unwrap(), late);
        assert_eq!(t.by_addr.len(), 1, "expired entries are dropped");
    }
}
