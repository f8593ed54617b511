//! Portals: the listening sockets, accepted in their own small event loop
//! and handed to the least-loaded reactor.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tracing::{info, warn};

use crate::reactor::{ReactorHandle, ReactorMsg};

const WAKER: Token = Token(usize::MAX);

#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("invalid portal address: {0}")]
    BadAddress(String),
    #[error("can't bind portal {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Parse `ADDR:PORT`, `[V6]:PORT` or `ADDR` (port 3260, RFC 7143 §13.8's
/// well-known port).
pub fn parse_portal(s: &str) -> Result<SocketAddr, PortalError> {
    let bad = || PortalError::BadAddress(s.to_string());
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
        return Ok(SocketAddr::new(ip, 3260));
    }
    s.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// Bind a listening socket the way a target portal needs it: SO_REUSEADDR so
/// a restart finds the port free, IPV6_V6ONLY so `[::]` and `0.0.0.0` can
/// both be bound on one port.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, PortalError> {
    use nix::sys::socket::{
        bind as nix_bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag,
        SockType, SockaddrStorage,
    };
    let err = |e: nix::Error| PortalError::Bind {
        addr,
        source: io::Error::from(e),
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(err)?;
    }
    nix_bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(err)?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN)).map_err(err)?;
    Ok(std::net::TcpListener::from(fd))
}

pub enum AcceptorMsg {
    Add(std::net::TcpListener),
    Remove(SocketAddr),
    Shutdown,
}

#[derive(Clone)]
pub struct AcceptorHandle {
    tx: mpsc::Sender<AcceptorMsg>,
    waker: Arc<Waker>,
}

impl AcceptorHandle {
    pub fn send(&self, msg: AcceptorMsg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

pub struct Acceptor {
    poll: Poll,
    rx: mpsc::Receiver<AcceptorMsg>,
    listeners: Slab<TcpListener>,
    reactors: Vec<ReactorHandle>,
}

impl Acceptor {
    pub fn new(reactors: Vec<ReactorHandle>) -> io::Result<(Acceptor, AcceptorHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        Ok((
            Acceptor {
                poll,
                rx,
                listeners: Slab::new(),
                reactors,
            },
            AcceptorHandle { tx, waker },
        ))
    }

    fn add(&mut self, l: std::net::TcpListener) {
        let mut l = TcpListener::from_std(l);
        let entry = self.listeners.vacant_entry();
        match self
            .poll
            .registry()
            .register(&mut l, Token(entry.key()), Interest::READABLE)
        {
            Ok(()) => {
                if let Ok(a) = l.local_addr() {
                    info!("portal listening on {a}");
                }
                entry.insert(l);
            }
            Err(e) => warn!("can't watch a portal: {e}"),
        }
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(64);
        let mut next = 0usize;
        // Out of file descriptors: the listeners are edge-triggered, so the
        // connections already queued would wait for the next one to arrive.
        // Retry on a timer instead, until accept works again.
        let mut starved = false;
        // Listeners with connections to accept, this turn.
        let mut ready: Vec<usize> = Vec::new();
        loop {
            let timeout = starved.then_some(ACCEPT_RETRY);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("acceptor poll: {e}");
                }
                continue;
            }
            ready.clear();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    while let Ok(msg) = self.rx.try_recv() {
                        match msg {
                            AcceptorMsg::Add(l) => self.add(l),
                            AcceptorMsg::Remove(addr) => {
                                let key = self
                                    .listeners
                                    .iter()
                                    .find(|(_, l)| l.local_addr().ok() == Some(addr))
                                    .map(|(k, _)| k);
                                if let Some(k) = key {
                                    let mut l = self.listeners.remove(k);
                                    let _ = self.poll.registry().deregister(&mut l);
                                }
                            }
                            AcceptorMsg::Shutdown => return,
                        }
                    }
                } else {
                    ready.push(ev.token().0);
                }
            }
            if starved {
                ready.clear();
                ready.extend(self.listeners.iter().map(|(k, _)| k));
            }
            let was_starved = std::mem::take(&mut starved);
            for &key in &ready {
                let Some(l) = self.listeners.get(key) else {
                    continue;
                };
                match accept_all(l, &self.reactors, &mut next) {
                    Ok(()) => {}
                    Err(e) => {
                        if !was_starved {
                            warn!("accept: {e}; retrying every {ACCEPT_RETRY:?}");
                        }
                        starved = true;
                    }
                }
            }
            if was_starved && !starved {
                info!("accepting connections again");
            }
        }
    }
}

/// How often accepting is retried once it ran out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accept everything queued on `l`, handing each connection to the least
/// loaded reactor. An error other than "nothing left" (EMFILE and friends)
/// is returned: what is still queued must be retried.
fn accept_all(l: &TcpListener, reactors: &[ReactorHandle], next: &mut usize) -> io::Result<()> {
    loop {
        match l.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                // Least-loaded reactor; ties broken round-robin.
                let n = reactors.len();
                let pick = (0..n)
                    .map(|i| (*next + i) % n)
                    .min_by_key(|&i| reactors[i].load())
                    .unwrap_or(0);
                *next = (pick + 1) % n.max(1);
                reactors[pick].send(ReactorMsg::NewConnection {
                    stream,
                    peer,
                    local,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_portals() {
        assert_eq!(
            parse_portal("127.0.0.1:3270").unwrap(),
            "127.0.0.1:3270".parse().unwrap()
        );
        assert_eq!(
            parse_portal("[::1]:3261").unwrap(),
            "[::1]:3261".parse().unwrap()
        );
        assert_eq!(
            parse_portal("10.0.0.1").unwrap(),
            "10.0.0.1:3260".parse().unwrap()
        );
        assert!(parse_portal("not an address:x").is_err());
    }

    #[test]
    fn v4_and_v6_wildcards_share_a_port() {
        let a = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = a.local_addr().unwrap().port();
        // Binding the same address twice fails with a clear error.
        let again = bind(SocketAddr::new("127.0.0.1".parse().unwrap(), port));
        assert!(matches!(again, Err(PortalError::Bind { .. })));
    }
}
