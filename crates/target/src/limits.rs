//! Caps on sessions and connections, per target and over the whole daemon.
//!
//! A login takes its place when the target admits its names (the first Login
//! Request, `decide_login`), not when it completes: a refusal must travel in a
//! Login Response (RFC 7143 §11.13.5), and once the final one has said
//! "success" there is nothing left to refuse with. The place is held by an
//! [`Admission`] that the connection keeps until it closes, so it is given
//! back on every path out (logout, a dead peer, a failed authentication, a
//! forced delete) without anyone having to remember it.
//!
//! Two statuses say "no room" (§11.13.5): Out of resources (0x0302) when no
//! session is left to give, Too many connections (0x0206) when the
//! connection would be one too many. rtgt negotiates MaxConnections=1
//! (§13.2), so today every session is one connection and a connection cap
//! lower than the session cap is the one that refuses.
//!
//! Caps change under the registry lock, and admission (check, then count)
//! happens under it too, so two logins cannot both take the last place.
//! Giving a place back needs no lock: it is an atomic decrement.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtgt_iscsi::LoginStatus;

/// The caps of one scope (a target, or the whole daemon) and what is in use
/// there. A cap of 0 is no cap, as tgtadm values go.
#[derive(Default)]
pub struct Scope {
    max_sessions: AtomicU32,
    max_connections: AtomicU32,
    /// Sessions holding a place here. With MaxConnections=1 each is one
    /// connection, so this one count is held against both caps.
    in_use: AtomicU32,
}

impl Scope {
    pub fn new() -> Arc<Scope> {
        Arc::new(Scope::default())
    }

    pub fn max_sessions(&self) -> u32 {
        self.max_sessions.load(Ordering::Relaxed)
    }

    pub fn max_connections(&self) -> u32 {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// A lower cap than what is in use ends nobody's session: it refuses
    /// new logins until enough have left.
    pub fn set_max_sessions(&self, max: u32) {
        self.max_sessions.store(max, Ordering::Relaxed);
    }

    pub fn set_max_connections(&self, max: u32) {
        self.max_connections.store(max, Ordering::Relaxed);
    }

    /// Sessions holding a place here (including logins not yet complete).
    pub fn sessions(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Connections holding a place here: one per session (MaxConnections=1).
    pub fn connections(&self) -> u32 {
        self.sessions()
    }

    fn full(&self) -> Option<Full> {
        let used = self.sessions();
        let reached = |max: u32| max > 0 && used >= max;
        if reached(self.max_sessions()) {
            return Some(Full::Sessions {
                max: self.max_sessions(),
            });
        }
        if reached(self.max_connections()) {
            return Some(Full::Connections {
                max: self.max_connections(),
            });
        }
        None
    }
}

/// Which cap a login ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Sessions { max: u32 },
    Connections { max: u32 },
}

impl Full {
    /// The Login Response status that says so (RFC 7143 §11.13.5).
    pub fn status(self) -> LoginStatus {
        match self {
            Full::Sessions { .. } => LoginStatus::OUT_OF_RESOURCES,
            Full::Connections { .. } => LoginStatus::TOO_MANY_CONNECTIONS,
        }
    }
}

/// A refused admission, for the log: which scope was full and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub scope: &'static str,
    pub full: Full,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.full {
            Full::Sessions { max } => write!(f, "{} has max_sessions={max} in use", self.scope),
            Full::Connections { max } => {
                write!(f, "{} has max_connections={max} in use", self.scope)
            }
        }
    }
}

/// One session's (and its one connection's) place in every scope it counts
/// in; given back when dropped.
pub struct Admission {
    scopes: Vec<Arc<Scope>>,
}

impl Admission {
    /// Take a place in each of `scopes` (named for the log), or refuse with
    /// the first that is full. A login that reinstates a session of the same
    /// I_T nexus (`replacing`, RFC 7143 §6.3.5) is never refused for room:
    /// the old session ends as it completes, and an initiator coming back
    /// after a network failure must not be locked out by its own ghost.
    pub fn admit(
        scopes: &[(&'static str, &Arc<Scope>)],
        replacing: bool,
    ) -> Result<Admission, Refused> {
        if !replacing {
            for &(scope, s) in scopes {
                if let Some(full) = s.full() {
                    return Err(Refused { scope, full });
                }
            }
        }
        for (_, scope) in scopes {
            scope.in_use.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Admission {
            scopes: scopes.iter().map(|(_, s)| Arc::clone(s)).collect(),
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for scope in &self.scopes {
            scope.in_use.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Admission({} scopes)", self.scopes.len())
    }
}

/// Longest a login may take (`tgtadm --op update --mode sys --name
/// login_timeout --value SECONDS`): a connection not in full feature phase by
/// then is closed. Read when a connection is accepted, so a change applies to
/// connections accepted after it.
pub struct LoginTimeout(AtomicU64);

impl LoginTimeout {
    /// What tgt waits too, and what any initiator needs many times over.
    pub const DEFAULT: Duration = Duration::from_secs(15);
    /// Bounds of a tgtadm value, in seconds: 0 would close every connection
    /// at once, and an hour is already a stalled connection held forever.
    pub const MAX_SECS: u64 = 3600;

    pub fn new(t: Duration) -> Self {
        LoginTimeout(AtomicU64::new(t.as_millis() as u64))
    }

    /// A timeout as tgtadm and `--iscsi` give it: whole seconds, 1 to
    /// [`Self::MAX_SECS`].
    pub fn parse_secs(v: &str) -> Option<Duration> {
        v.parse::<u64>()
            .ok()
            .filter(|s| (1..=Self::MAX_SECS).contains(s))
            .map(Duration::from_secs)
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, t: Duration) {
        self.0.store(t.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Default for LoginTimeout {
    fn default() -> Self {
        LoginTimeout::new(Self::DEFAULT)
    }
}

/// A target's NOP-In pings (tgt's per-target `nop_interval` / `nop_count`,
/// `tgtadm --op update --mode target --name nop_interval --value S`): an
/// initiator silent for `interval` is pinged (RFC 7143 §11.19), and dropped
/// after `count` unanswered pings. New targets take the daemon's `--iscsi`
/// values; a change applies to the target's next logins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nop {
    /// `None`: no pings.
    pub interval: Option<Duration>,
    pub count: u32,
}

impl Nop {
    /// Longest interval tgtadm takes, in seconds: past it a dead initiator
    /// holds its session (and its reservations) for longer than anyone waits.
    pub const MAX_INTERVAL_SECS: u64 = 3600;

    pub fn from_config(c: &rtgt_iscsi::TargetConfig) -> Nop {
        Nop {
            interval: c.nop_interval,
            count: c.nop_count,
        }
    }

    /// `nop_interval` as tgtadm gives it: seconds, 0 for none.
    pub fn parse_interval(v: &str) -> Option<Option<Duration>> {
        let s: u64 = v.trim().parse().ok()?;
        (s <= Self::MAX_INTERVAL_SECS).then(|| (s > 0).then(|| Duration::from_secs(s)))
    }

    /// `nop_count`: at least one ping goes unanswered before a drop.
    pub fn parse_count(v: &str) -> Option<u32> {
        v.trim().parse().ok().filter(|&n| n >= 1)
    }
}

/// The daemon-wide caps a command line sets (`--iscsi
/// max_sessions=N,max_connections=N`); 0 is no cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    pub max_sessions: u32,
    pub max_connections: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_cap_admits_everyone() {
        let s = Scope::new();
        let held: Vec<_> = (0..100)
            .map(|_| Admission::admit(&[("daemon", &s)], false).unwrap())
            .collect();
        assert_eq!((s.sessions(), s.connections()), (100, 100));
        drop(held);
        assert_eq!((s.sessions(), s.connections()), (0, 0));
    }

    #[test]
    fn a_full_session_cap_is_out_of_resources_until_a_place_is_given_back() {
        let s = Scope::new();
        s.set_max_sessions(2);
        let a = Admission::admit(&[("target 1", &s)], false).unwrap();
        let _b = Admission::admit(&[("target 1", &s)], false).unwrap();
        let refused = Admission::admit(&[("target 1", &s)], false).unwrap_err();
        assert_eq!(refused.full, Full::Sessions { max: 2 });
        assert_eq!(refused.full.status(), LoginStatus::OUT_OF_RESOURCES);
        assert_eq!(refused.to_string(), "target 1 has max_sessions=2 in use");
        assert_eq!(s.sessions(), 2, "a refusal takes no place");
        drop(a);
        Admission::admit(&[("target 1", &s)], false).unwrap();
    }

    #[test]
    fn a_full_connection_cap_is_too_many_connections() {
        let s = Scope::new();
        s.set_max_sessions(5);
        s.set_max_connections(1);
        let _a = Admission::admit(&[("daemon", &s)], false).unwrap();
        let refused = Admission::admit(&[("daemon", &s)], false).unwrap_err();
        assert_eq!(refused.full.status(), LoginStatus::TOO_MANY_CONNECTIONS);
    }

    #[test]
    fn every_scope_is_checked_and_a_refusal_counts_in_none() {
        let daemon = Scope::new();
        let target = Scope::new();
        target.set_max_sessions(1);
        let _a = Admission::admit(&[("daemon", &daemon), ("target", &target)], false).unwrap();
        let refused =
            Admission::admit(&[("daemon", &daemon), ("target", &target)], false).unwrap_err();
        assert_eq!(refused.scope, "target");
        assert_eq!(daemon.sessions(), 1, "the daemon's count was not touched");
        // Another target's login only counts in the daemon.
        let _c = Admission::admit(&[("daemon", &daemon)], false).unwrap();
        assert_eq!((daemon.sessions(), target.sessions()), (2, 1));
    }

    #[test]
    fn reinstating_a_session_is_admitted_at_the_cap() {
        let s = Scope::new();
        s.set_max_sessions(1);
        let old = Admission::admit(&[("target", &s)], false).unwrap();
        let new = Admission::admit(&[("target", &s)], true).unwrap();
        assert_eq!(s.sessions(), 2, "until the old session's connection closes");
        drop(old);
        assert_eq!(s.sessions(), 1);
        drop(new);
        assert_eq!(s.sessions(), 0);
    }

    #[test]
    fn nop_values_as_tgtadm_gives_them() {
        assert_eq!(Nop::parse_interval("0"), Some(None));
        assert_eq!(Nop::parse_interval("5"), Some(Some(Duration::from_secs(5))));
        assert_eq!(Nop::parse_interval("3601"), None);
        assert_eq!(Nop::parse_interval("-1"), None);
        assert_eq!(Nop::parse_count("3"), Some(3));
        assert_eq!(Nop::parse_count("0"), None);
        assert_eq!(Nop::parse_count("x"), None);
    }

    #[test]
    fn lowering_a_cap_below_its_use_refuses_only_new_logins() {
        let s = Scope::new();
        let held: Vec<_> = (0..3)
            .map(|_| Admission::admit(&[("t", &s)], false).unwrap())
            .collect();
        s.set_max_sessions(1);
        assert!(Admission::admit(&[("t", &s)], false).is_err());
        drop(held);
        Admission::admit(&[("t", &s)], false).unwrap();
    }
}
