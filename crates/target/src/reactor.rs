//! Reactors: one thread and one mio event loop each, owning their
//! connections, a buffer pool and the completion channel every backing store
//! answers on (DESIGN.md, "The data path").
//!
//! A reactor never blocks and takes no global lock per command: it reads
//! whole batches of PDUs, hands them to the sans-IO [`Connection`], executes
//! SCSI commands against the session's LUN snapshot, submits I/O to the
//! store, and writes responses when completions arrive on its eventfd.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::errno::Errno;
use nix::sys::sendfile::sendfile64;
use nix::sys::socket::{sendmsg, MsgFlags};
use slab::Slab;
use tracing::{debug, info, warn};

use rtgt_backing::{
    completion_channel, AlignedBuf, BufPool, CompletionReceiver, CompletionSender, CopySource,
    FileRef, IoCompletion, IoOp, IoRequest,
};
use rtgt_iscsi::{
    CommandResponse, Connection, Event, LoginAccept, LoginInfo, LoginStatus, Residual, ScsiCommand,
    SendTargetsScope, SessionType, TargetConfig, TaskManagement, Transmit,
};
use rtgt_scsi::{
    lun_from_wire, pr::NexusIdentity, spc::RELATIVE_TARGET_PORT, Asc, Command, IoGuard, IoKind,
    IoPlan, NexusId, Outcome, PlanBuffer, PlanExtra, Response, SenseKey,
};

use crate::limits::{Admission, LoginTimeout, Nop};
use crate::registry::{
    ConnHandle, ConnectionEntry, LunSnapshot, Registry, RegistryInner, SessionEntry, TargetShared,
};
use crate::rx_coalesce::{self, Deadline};

const WAKER: Token = Token(usize::MAX);
const COMPLETIONS: Token = Token(usize::MAX - 1);
const COALESCE_DEADLINE: Token = Token(usize::MAX - 2);

/// Reads per connection per wakeup before others get their turn: one busy
/// connection must not starve the rest of its reactor.
const READ_BUDGET: usize = 16;
/// Reads at least this long are asked of the store by reference, so that a
/// store on a memory medium lets the data go from the page cache to the
/// socket (sendfile(2)) instead of being copied twice. Smaller ones are
/// copied: their responses share one writev(2) per loop turn, where each
/// sendfile would be a system call of its own.
const SENDFILE_MIN: usize = 64 * 1024;
/// How often connection timers (login timeout, NOP-In pings) are checked.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Extra receive-buffer room beyond one maximal PDU, so a read can pull in
/// several small PDUs at once.
const RECV_SLACK: usize = 64 * 1024;
/// Receive buffers a reactor keeps for reuse. Only connections with a partial
/// PDU hold one, so a few serve any number of idle connections.
const RECV_POOL_MAX: usize = 64;
/// Output PDUs queued for a peer before we stop reading its input: a peer
/// that sends (NOP-Out pings, say) but never reads must not grow our memory.
/// Reading resumes once the queue drains below half.
const MAX_QUEUED_PDUS: usize = 1024;
/// Lingering close: after the last PDU to a failed or finished connection
/// (a Reject, a refused login, a Logout Response) we shut our side down and
/// discard input for at most this long before closing. Closing with unread
/// input would reset the connection (RFC 1122 §4.2.2.13), and initiators
/// still writing Data-Out would get EPIPE instead of reading our answer.
const LINGER: Duration = Duration::from_secs(2);

/// Messages other threads send a reactor.
pub enum ReactorMsg {
    NewConnection {
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
    },
    /// Close a connection (session reinstatement, forced target delete).
    Close(ConnHandle),
    Shutdown,
}

/// How other threads reach a reactor.
#[derive(Clone)]
pub struct ReactorHandle {
    tx: mpsc::Sender<ReactorMsg>,
    waker: Arc<Waker>,
    load: Arc<AtomicUsize>,
}

impl ReactorHandle {
    pub fn send(&self, msg: ReactorMsg) {
        if self.tx.send(msg).is_ok() {
            if let Err(e) = self.waker.wake() {
                warn!("can't wake reactor: {e}");
            }
        }
    }

    /// Live connections, for spreading new ones.
    pub fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }
}

/// Everything a reactor shares with the rest of the daemon.
#[derive(Clone)]
pub struct Shared {
    pub registry: Arc<Registry>,
    pub reactors: Arc<std::sync::OnceLock<Vec<ReactorHandle>>>,
    pub iscsi: TargetConfig,
    /// `iscsi.login_timeout` as tgtadm last set it.
    pub login_timeout: Arc<LoginTimeout>,
}

impl Shared {
    /// Ask the owner of `handle` to close it.
    pub fn close_connection(&self, handle: ConnHandle) {
        if let Some(r) = self.reactors.get().and_then(|v| v.get(handle.reactor)) {
            r.send(ReactorMsg::Close(handle));
        }
    }
}

/// The session a connection carries once its login was accepted.
struct SessionCtx {
    sid: u64,
    nexus: NexusId,
    initiator: String,
    /// None for a discovery session.
    target: Option<Arc<TargetShared>>,
    snap: Arc<LunSnapshot>,
    snap_version: u64,
    /// Whether this connection is registered in the registry's session table.
    registered: bool,
}

impl SessionCtx {
    /// Pick up LUN changes: one atomic load per command, a lock only on change.
    fn refresh(&mut self) {
        if let Some(t) = &self.target {
            let v = t.version();
            if v != self.snap_version {
                self.snap = t.snapshot();
                self.snap_version = v;
            }
        }
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    generation: u64,
    proto: Connection<AlignedBuf>,
    /// Receive buffer, held only while it holds unparsed input: a connection
    /// with nothing pending gives it back to the reactor's pool, so idle
    /// sessions cost no receive buffer at all.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    session: Option<SessionCtx>,
    /// Admitted, not yet logged in (see [`PendingLogin`]).
    pending_login: Option<PendingLogin>,
    /// The session's place under the caps, once logged in; given back when
    /// the connection goes.
    admission: Option<Admission>,
    /// Not yet in full feature phase (counted in `Reactor::logging_in`).
    logging_in: bool,
    /// Fatal: close without flushing.
    dead: bool,
    /// Protocol error: flush what is queued (a Reject, a Login Response), then close.
    closing: bool,
    /// Input is not read while the peer leaves our output unread.
    paused: bool,
    /// epoll reported the peer's FIN (EPOLLRDHUP): a short read no longer
    /// means the socket is empty, since the end of the stream raises no
    /// further edge; reads go on until read(2) says 0.
    read_closed: bool,
    /// Set once our side is shut down: input is discarded until the peer
    /// closes or this instant passes.
    linger_until: Option<Instant>,
    /// Already on this batch's list of connections to flush.
    flush_queued: bool,
    /// SO_RCVLOWAT in force (1, the default, unless coalescing).
    low_water: usize,
    /// Coalescing: the socket is read by then whatever has arrived.
    coalesce_until: Option<Instant>,
    batch: rx_coalesce::Batch,
    /// On the reactor's `read_in_turn` list.
    read_in_turn: bool,
}

/// A command whose I/O is at a backing store.
struct InFlight {
    conn: usize,
    generation: u64,
    itt: u32,
    /// The LU, counting this command as in flight until it is answered.
    lu: IoGuard,
    plan: IoPlan,
    expected_len: u32,
    /// Store requests still out (UNMAP submits one per block descriptor).
    pending: usize,
    /// The first failure among them, else the last success.
    result: Result<usize, i32>,
}

/// The store operation that runs a SCSI plan.
fn store_op(kind: IoKind) -> IoOp {
    match kind {
        IoKind::Read => IoOp::Read,
        IoKind::Write => IoOp::Write,
        IoKind::Flush => IoOp::Flush,
        IoKind::Unmap => IoOp::Unmap,
        IoKind::WriteSame => IoOp::WriteSame,
        IoKind::CompareAndWrite => IoOp::CompareAndWrite,
        IoKind::Compare => IoOp::Compare,
        IoKind::OrWrite => IoOp::OrWrite,
        IoKind::Extents => IoOp::Extents,
        IoKind::Copy => IoOp::Copy,
        IoKind::WriteAtomic => IoOp::WriteAtomic,
    }
}

pub struct Reactor {
    id: usize,
    poll: Poll,
    rx: mpsc::Receiver<ReactorMsg>,
    shared: Shared,
    load: Arc<AtomicUsize>,
    conns: Slab<Conn>,
    pool: BufPool,
    /// Receive buffers not held by any connection (see `Conn::rbuf`).
    recv_pool: Vec<Vec<u8>>,
    inflight: Slab<InFlight>,
    done_tx: CompletionSender,
    done_rx: CompletionReceiver,
    done: Vec<IoCompletion>,
    /// Connections with input left unread after their budget ran out.
    again: Vec<usize>,
    /// Connections that got completions in this batch (reused, no allocation).
    touched: Vec<usize>,
    next_generation: u64,
    next_timer_check: Instant,
    /// Receive coalescing (see `rx_coalesce`): the timer bounding the waits,
    /// absent when coalescing is off.
    coalesce_deadline: Option<Deadline>,
    /// Connections that may be coalescing (stale entries are dropped when the
    /// timer is set).
    coalescing: Vec<usize>,
    /// Connections read in this loop turn (coalescing is decided for them
    /// before the reactor sleeps).
    read_in_turn: Vec<usize>,
    /// Connections still logging in, oldest first (entries of connections
    /// gone or logged in since are skipped), and how many there are.
    logins: VecDeque<(usize, u64)>,
    logging_in: usize,
}

/// Largest buffer a command may use (Block Limits MAXIMUM TRANSFER LENGTH is
/// derived from the same figure by the SCSI layer).
fn max_io(cfg: &TargetConfig) -> usize {
    cfg.max_data_transfer as usize
}

impl Reactor {
    pub fn new(id: usize, shared: Shared) -> io::Result<(Reactor, ReactorHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (done_tx, done_rx) = completion_channel()?;
        poll.registry().register(
            &mut SourceFd(&done_rx.as_raw_fd()),
            COMPLETIONS,
            Interest::READABLE,
        )?;
        let coalesce_deadline = match shared.iscsi.rx_coalesce {
            Some(_) => match Deadline::new() {
                Ok(d) => {
                    poll.registry().register(
                        &mut SourceFd(&d.as_raw_fd()),
                        COALESCE_DEADLINE,
                        Interest::READABLE,
                    )?;
                    Some(d)
                }
                Err(e) => {
                    warn!("reactor {id}: receive coalescing off (no timerfd: {e})");
                    None
                }
            },
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        let load = Arc::new(AtomicUsize::new(0));
        let handle = ReactorHandle {
            tx,
            waker,
            load: load.clone(),
        };
        Ok((
            Reactor {
                id,
                poll,
                rx,
                shared,
                load,
                conns: Slab::new(),
                pool: BufPool::new(),
                recv_pool: Vec::new(),
                inflight: Slab::new(),
                done_tx,
                done_rx,
                done: Vec::new(),
                again: Vec::new(),
                touched: Vec::new(),
                next_generation: 1,
                next_timer_check: Instant::now() + TIMER_TICK,
                coalesce_deadline,
                coalescing: Vec::new(),
                read_in_turn: Vec::new(),
                logins: VecDeque::new(),
                logging_in: 0,
            },
            handle,
        ))
    }

    /// The event loop; returns on Shutdown.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        self.done_rx.claim_current_thread();
        loop {
            // Completions this thread produced itself (inline stores) carry
            // no eventfd signal: answer them before sleeping.
            while self.done_rx.take_local() {
                self.drain_completions(false);
            }
            // Whatever this turn still queued for the kernel (io_uring, AIO)
            // goes in with one system call, before we sleep.
            self.done_rx.flush_submissions();
            self.set_coalesce_deadline();
            let timeout = if self.again.is_empty() {
                self.next_timer_check
                    .saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("reactor {}: poll failed: {e}", self.id);
                }
                continue;
            }
            let again = std::mem::take(&mut self.again);
            for idx in again {
                if self.conns.contains(idx) {
                    self.service(idx, true);
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {
                        if self.drain_messages() {
                            self.shutdown();
                            return;
                        }
                    }
                    COMPLETIONS => self.drain_completions(true),
                    COALESCE_DEADLINE => self.coalesce_deadline_passed(),
                    Token(idx) => {
                        if self.conns.contains(idx) {
                            if ev.is_error() {
                                self.conns[idx].dead = true;
                            }
                            if ev.is_read_closed() {
                                self.conns[idx].read_closed = true;
                            }
                            self.service(idx, ev.is_readable() || ev.is_read_closed());
                        }
                    }
                }
            }
            let now = Instant::now();
            if now >= self.next_timer_check {
                self.next_timer_check = now + TIMER_TICK;
                self.check_timers(now);
            }
        }
    }

    /// Returns true on Shutdown.
    fn drain_messages(&mut self) -> bool {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                ReactorMsg::NewConnection {
                    stream,
                    peer,
                    local,
                } => self.add_connection(stream, peer, local),
                ReactorMsg::Close(h) => {
                    if self
                        .conns
                        .get(h.token)
                        .is_some_and(|c| c.generation == h.generation)
                    {
                        self.close(h.token);
                    }
                }
                ReactorMsg::Shutdown => return true,
            }
        }
        false
    }

    fn add_connection(&mut self, mut stream: TcpStream, peer: SocketAddr, local: SocketAddr) {
        let entry = self.conns.vacant_entry();
        let idx = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("can't register connection from {peer}: {e}");
            return;
        }
        let config = TargetConfig {
            login_timeout: self.shared.login_timeout.get(),
            ..self.shared.iscsi.clone()
        };
        let proto = Connection::new(config, Instant::now());
        let generation = self.next_generation;
        self.next_generation += 1;
        entry.insert(Conn {
            stream,
            peer,
            local,
            generation,
            proto,
            rbuf: Vec::new(),
            rstart: 0,
            rend: 0,
            session: None,
            pending_login: None,
            admission: None,
            logging_in: true,
            dead: false,
            closing: false,
            paused: false,
            read_closed: false,
            linger_until: None,
            flush_queued: false,
            low_water: 1,
            coalesce_until: None,
            batch: rx_coalesce::Batch::default(),
            read_in_turn: false,
        });
        self.load.fetch_add(1, Ordering::Relaxed);
        debug!("reactor {}: connection from {peer}", self.id);
        self.logins.push_back((idx, generation));
        self.logging_in += 1;
        self.make_room_for_logins();
    }

    /// Read what the socket has (within the budget), run the protocol, and
    /// write what it produced.
    fn service(&mut self, idx: usize, readable: bool) {
        if readable {
            self.read_input(idx);
            // The connection's commands go to the kernel queues now, not at
            // the end of the loop turn: the disk starts on them while this
            // turn still sends other connections' (and this one's) data.
            self.done_rx.flush_submissions();
        }
        self.flush(idx);
        if !readable || self.coalesce_deadline.is_none() {
            return;
        }
        // flush() closes a dead connection: its slot may be gone.
        if let Some(conn) = self.conns.get_mut(idx) {
            if !conn.read_in_turn {
                conn.read_in_turn = true;
                self.read_in_turn.push(idx);
            }
        }
    }

    /// After reading a connection: batch its next commands if its initiator
    /// is behind on our answers, read them as they come otherwise.
    fn coalesce(&mut self, idx: usize) {
        let Some(wait) = self.shared.iscsi.rx_coalesce else {
            return;
        };
        if self.coalesce_deadline.is_none() {
            return;
        }
        let Some(conn) = self.conns.get_mut(idx) else {
            return;
        };
        if conn.coalesce_until.is_some() {
            // Woken by the low-water mark, before the deadline.
            conn.batch.arrived();
        }
        let want = if conn.dead || conn.closing || conn.linger_until.is_some() {
            1
        } else {
            conn.batch.low_water(conn.proto.take_initiator_pace())
        };

        if want != conn.low_water {
            if let Err(e) = rx_coalesce::set_low_water(&conn.stream, want) {
                debug!("SO_RCVLOWAT on {}: {e}", conn.peer);
                return;
            }
            conn.low_water = want;
        }
        if want > 1 {
            if conn.coalesce_until.is_none() {
                self.coalescing.push(idx);
            }
            conn.coalesce_until = Some(Instant::now() + wait);
        } else {
            conn.coalesce_until = None;
        }
    }

    /// Before sleeping, once this turn's answers are out: how each
    /// connection read in this turn is to be read next, and when the timer
    /// fires (the earliest coalescing deadline).
    fn set_coalesce_deadline(&mut self) {
        let mut read = std::mem::take(&mut self.read_in_turn);
        for idx in read.drain(..) {
            if let Some(conn) = self.conns.get_mut(idx) {
                conn.read_in_turn = false;
                self.coalesce(idx);
            }
        }
        self.read_in_turn = read;
        let Some(deadline) = self.coalesce_deadline.as_mut() else {
            return;
        };
        let conns = &self.conns;
        self.coalescing
            .retain(|&idx| conns.get(idx).is_some_and(|c| c.coalesce_until.is_some()));
        self.coalescing.sort_unstable();
        self.coalescing.dedup();
        let earliest = self
            .coalescing
            .iter()
            .filter_map(|&idx| conns[idx].coalesce_until)
            .min();
        if let Err(e) = deadline.set(earliest) {
            warn!("reactor {}: coalescing timer: {e}", self.id);
        }
    }

    /// The coalescing timer fired: read every connection whose wait is over,
    /// whatever it has.
    fn coalesce_deadline_passed(&mut self) {
        if let Some(d) = self.coalesce_deadline.as_mut() {
            d.fired();
        }
        let now = Instant::now();
        // Only coalesce() adds to the list, and not from service(): it is
        // handed back whole (stale entries go in set_coalesce_deadline).
        let list = std::mem::take(&mut self.coalescing);
        for &idx in &list {
            let Some(conn) = self.conns.get_mut(idx) else {
                continue;
            };
            if conn.coalesce_until.is_none_or(|t| t > now) {
                continue;
            }
            conn.coalesce_until = None;
            conn.batch.timed_out();
            if let Err(e) = rx_coalesce::set_low_water(&conn.stream, 1) {
                debug!("SO_RCVLOWAT on {}: {e}", conn.peer);
            }
            conn.low_water = 1;
            self.service(idx, true);
        }
        self.coalescing = list;
    }

    fn read_input(&mut self, idx: usize) {
        for _ in 0..READ_BUDGET {
            let conn = &mut self.conns[idx];
            if conn.linger_until.is_some() {
                if discard_input(conn) {
                    continue;
                }
                return;
            }
            if conn.dead || conn.closing {
                return;
            }
            if conn.proto.queued_pdus() >= MAX_QUEUED_PDUS {
                // Back-pressure: flush() resumes reading once the peer reads.
                conn.paused = true;
                return;
            }
            if let Some(dst) = conn.proto.placement_buffer() {
                // Write data straight into the buffer the store writes from.
                let room = dst.len();
                match conn.stream.read(dst) {
                    Ok(0) => {
                        conn.dead = true;
                        return;
                    }
                    Ok(n) => {
                        conn.proto.placed(n, Instant::now());
                        self.process_events(idx);
                        if n < room && !self.conns[idx].read_closed {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!("read from {}: {e}", conn.peer);
                        conn.dead = true;
                        return;
                    }
                }
                continue;
            }
            // Keep room for one maximal PDU: take a buffer from the pool,
            // compact, then grow to the negotiated limit (never beyond it: the
            // limit is ours).
            let want = recv_capacity(&conn.proto);
            if conn.rbuf.is_empty() {
                conn.rbuf = self.recv_pool.pop().unwrap_or_default();
            }
            if conn.rbuf.len() < want {
                conn.rbuf.resize(want, 0);
            }
            if conn.rend == conn.rbuf.len() && conn.rstart > 0 {
                conn.rbuf.copy_within(conn.rstart..conn.rend, 0);
                conn.rend -= conn.rstart;
                conn.rstart = 0;
            }
            let room = conn.rbuf.len() - conn.rend;
            let drained = match conn.stream.read(&mut conn.rbuf[conn.rend..]) {
                Ok(0) => {
                    conn.dead = true;
                    return;
                }
                Ok(n) => {
                    conn.rend += n;
                    // A short read emptied the socket: whatever arrives later
                    // raises a new edge (every segment wakes epoll), so the
                    // read that would only say EAGAIN is skipped. Not after
                    // the peer's FIN: the EOF behind the data raises none.
                    n < room && !conn.read_closed
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if conn.rstart == conn.rend {
                        release_recv_buffer(&mut self.recv_pool, conn);
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("read from {}: {e}", conn.peer);
                    conn.dead = true;
                    return;
                }
            };
            let pool = &mut self.pool;
            let result = conn.proto.handle_input(
                &conn.rbuf[conn.rstart..conn.rend],
                Instant::now(),
                &mut |len| Some(pool.get(len)),
            );
            match result {
                Ok(used) => {
                    conn.rstart += used;
                    if conn.rstart == conn.rend {
                        conn.rstart = 0;
                        conn.rend = 0;
                        release_recv_buffer(&mut self.recv_pool, conn);
                    }
                }
                Err(e) => {
                    info!("connection from {} closed: {e}", conn.peer);
                    conn.closing = true;
                }
            }
            self.process_events(idx);
            if drained {
                return;
            }
        }
        // Budget spent with input possibly pending: come back next turn
        // (edge-triggered readiness will not tell us again).
        self.again.push(idx);
    }

    fn process_events(&mut self, idx: usize) {
        while let Some(ev) = self.conns[idx].proto.poll_event() {
            match ev {
                Event::Login(info) => self.on_login(idx, info),
                Event::FullFeature(p) => {
                    self.on_full_feature(idx);
                    debug!(
                    "{} ({}) in full feature phase: {:?} session, HeaderDigest={} DataDigest={} \
                     MaxRecvDataSegmentLength={}/{} MaxBurstLength={} FirstBurstLength={} \
                     InitialR2T={} ImmediateData={}",
                    p.initiator_name,
                    self.conns[idx].peer,
                    p.session_type,
                    digest_name(p.header_digest),
                    digest_name(p.data_digest),
                    p.max_recv_data_segment_length,
                    p.initiator_max_recv_data_segment_length,
                    p.max_burst_length,
                    p.first_burst_length,
                    p.initial_r2t,
                    p.immediate_data
                    )
                }
                Event::SendTargets(scope) => self.on_send_targets(idx, scope),
                Event::Command(cmd) => self.on_command(idx, cmd),
                Event::TaskManagement(tm) => self.on_task_management(idx, tm),
                Event::Logout { reason } => {
                    debug!("{} logged out (reason {reason})", self.conns[idx].peer)
                }
                Event::AuthenticationFailed {
                    initiator_name,
                    user,
                    reason,
                } => self.on_authentication_failed(idx, &initiator_name, user, reason),
            }
        }
        let conn = &mut self.conns[idx];
        while let Some(b) = conn.proto.poll_free_buffer() {
            self.pool.put(b);
        }
    }

    fn handle(&self, idx: usize) -> ConnHandle {
        ConnHandle {
            reactor: self.id,
            token: idx,
            generation: self.conns[idx].generation,
        }
    }

    /// RFC 7143 §6.3: decide a login once the initiator named itself.
    fn on_login(&mut self, idx: usize, info: LoginInfo) {
        let peer = self.conns[idx].peer;
        let decision = decide_login(
            &mut self.shared.registry.lock(),
            &info,
            peer,
            Instant::now(),
        );
        let conn = &mut self.conns[idx];
        match decision {
            Ok((accept, pending)) => {
                info!(
                    "login: {} from {peer} to {}{}",
                    info.initiator_name,
                    info.target_name.as_deref().unwrap_or("discovery"),
                    if pending.authenticated { " (CHAP)" } else { "" }
                );
                if let Some(nop) = pending.nop {
                    conn.proto.set_nop(nop.interval, nop.count);
                }
                conn.pending_login = Some(pending);
                conn.proto.accept_login(accept);
            }
            Err(status) => {
                info!(
                    "login refused ({:#06x}): {} from {peer} to {}",
                    status.0,
                    info.initiator_name,
                    info.target_name.as_deref().unwrap_or("discovery")
                );
                conn.proto.reject_login(status);
            }
        }
    }

    /// Past this reactor's share of `max_pending_logins`, close the oldest
    /// connections still logging in (see `TargetConfig::max_pending_logins`).
    fn make_room_for_logins(&mut self) {
        let reactors = self.shared.reactors.get().map_or(1, |r| r.len().max(1));
        let cap = (self.shared.iscsi.max_pending_logins as usize / reactors).max(1);
        let live = |conns: &Slab<Conn>, (idx, generation): (usize, u64)| {
            conns
                .get(idx)
                .is_some_and(|c| c.generation == generation && c.logging_in)
        };
        while let Some(&front) = self.logins.front() {
            if live(&self.conns, front) && self.logging_in <= cap {
                break;
            }
            self.logins.pop_front();
            if live(&self.conns, front) {
                debug!(
                    "reactor {}: {} connections logging in: closing the oldest, from {}",
                    self.id, self.logging_in, self.conns[front.0].peer
                );
                self.close(front.0);
            }
        }
    }

    /// Login complete: register the session (see [`PendingLogin`]).
    fn on_full_feature(&mut self, idx: usize) {
        let handle = self.handle(idx);
        let conn = &mut self.conns[idx];
        if std::mem::take(&mut conn.logging_in) {
            self.logging_in -= 1;
        }
        let Some(pending) = conn.pending_login.take() else {
            return;
        };
        let fd = conn.stream.as_raw_fd();
        let peer = conn.peer;
        let result = register_session(
            &mut self.shared.registry.lock(),
            &pending,
            peer,
            handle,
            fd,
            &self.shared,
        );
        let conn = &mut self.conns[idx];
        conn.admission = Some(pending.admission);
        match result {
            Ok(session) => conn.session = Some(session),
            Err(_) => {
                // The target went away during the login.
                info!(
                    "{} from {peer}: target removed during login",
                    pending.info.initiator_name
                );
                conn.dead = true;
            }
        }
    }

    fn on_authentication_failed(
        &mut self,
        idx: usize,
        initiator_name: &str,
        user: Option<String>,
        reason: &str,
    ) {
        let conn = &mut self.conns[idx];
        conn.pending_login = None;
        let peer = conn.peer;
        warn!(
            "{initiator_name} ({peer}): authentication failed: {reason}{}",
            user.map(|u| format!(", CHAP_N {u:?}")).unwrap_or_default()
        );
        self.shared
            .registry
            .lock()
            .auth_throttle
            .failed(peer.ip(), Instant::now());
    }

    /// RFC 7143 §13.3 and Appendix C: the targets this initiator may see, with
    /// every portal that reaches them.
    fn on_send_targets(&mut self, idx: usize, scope: SendTargetsScope) {
        let conn = &self.conns[idx];
        let (initiator, own_tid) = match &conn.session {
            Some(s) => (s.initiator.clone(), s.target.as_ref().map(|t| t.tid)),
            None => (String::new(), None),
        };
        let list = {
            let reg = self.shared.registry.lock();
            let addresses: Vec<String> = portal_addresses(&reg, conn.local);
            reg.targets
                .values()
                .filter(|t| match &scope {
                    SendTargetsScope::All => true,
                    SendTargetsScope::Target(name) => &t.name == name,
                    SendTargetsScope::Session => Some(t.tid) == own_tid,
                })
                .filter(|t| t.admits(conn.peer.ip(), &initiator))
                .map(|t| (t.name.clone(), addresses.clone()))
                .collect::<Vec<_>>()
        };
        self.conns[idx].proto.send_targets_response(&list);
    }

    fn on_command(&mut self, idx: usize, mut cmd: ScsiCommand<AlignedBuf>) {
        let max = max_io(&self.shared.iscsi);
        let conn = &mut self.conns[idx];
        let Some(sess) = conn.session.as_mut() else {
            // The protocol layer only delivers commands in full feature phase
            // of a normal session, which always has a session context.
            conn.closing = true;
            return;
        };
        sess.refresh();
        let nexus = sess.nexus;
        let snap = sess.snap.clone();

        if cmd.write && cmd.expected_len > 0 && cmd.data.is_none() {
            // The write was too large to buffer (RFC 7143 leaves the SCSI
            // outcome to the target): SBC-3 §4.3 MAXIMUM TRANSFER LENGTH.
            let resp = Response::check(SenseKey::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB);
            finish(&mut conn.proto, cmd.itt, &resp, None, cmd.expected_len, 0);
            return;
        }

        let mut cdb_bytes = [0u8; 32];
        cdb_bytes[..16].copy_from_slice(&cmd.cdb);
        cdb_bytes[16..].copy_from_slice(&cmd.ext_cdb);
        let cdb = &cdb_bytes[..cmd.cdb_len.min(32)];
        let lun = lun_from_wire(cmd.lun).unwrap_or(u64::MAX);

        let mut data_in = (cmd.read && cmd.expected_len > 0)
            .then(|| self.pool.get((cmd.expected_len as usize).min(max)));
        let outcome = {
            let data_out: &[u8] = cmd.data.as_deref().unwrap_or(&[]);
            let scsi_cmd = Command {
                nexus,
                cdb,
                data_out,
            };
            let mut empty: [u8; 0] = [];
            let din: &mut [u8] = match data_in.as_mut() {
                Some(b) => &mut b[..],
                None => &mut empty,
            };
            snap.table.execute(lun, &scsi_cmd, din)
        };

        match outcome {
            Outcome::Done(resp) => {
                if let Some(b) = cmd.data.take() {
                    self.pool.put(b);
                }
                // RFC 7143 §11.4.5.2: a write finished without I/O (no or
                // too little data) still reports what the CDB asked for.
                let needed = match snap.table.get(lun) {
                    Some(lu) if resp.data_in_len == 0 => lu.data_out_len(cdb),
                    _ => resp.data_in_len,
                };
                finish(
                    &mut conn.proto,
                    cmd.itt,
                    &resp,
                    data_in,
                    cmd.expected_len,
                    needed,
                );
            }
            Outcome::Io(plan) => {
                let store = snap.stores.get(&plan.store_lun.unwrap_or(lun));
                let source = match plan.source {
                    Some((src_lun, offset)) => snap.stores.get(&src_lun).map(|s| {
                        Some(CopySource {
                            store: s.clone(),
                            offset,
                        })
                    }),
                    None => Some(None),
                };
                let (Some(lu), Some(store), Some(source)) = (snap.table.get(lun), store, source)
                else {
                    // The store went away under the plan (an LU deleted by
                    // tgtadm at this instant): the plan still ends on the one
                    // completion path, so copy and sanitize state is settled.
                    let resp = match snap.table.get(lun) {
                        Some(lu) => lu.complete_io(&plan, Err(libc::ENXIO), &mut []),
                        None => {
                            Response::check(SenseKey::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE)
                        }
                    };
                    finish(
                        &mut conn.proto,
                        cmd.itt,
                        &resp,
                        data_in,
                        cmd.expected_len,
                        0,
                    );
                    return;
                };
                let buf = match plan.kind.buffer() {
                    PlanBuffer::DataIn => {
                        let mut b = match data_in.take() {
                            Some(b) if b.capacity() >= plan.len => b,
                            other => {
                                if let Some(b) = other {
                                    self.pool.put(b);
                                }
                                self.pool.get(plan.len)
                            }
                        };
                        b.set_len(plan.len);
                        b
                    }
                    PlanBuffer::DataOut => match (&plan.extra, cmd.data.take()) {
                        (PlanExtra::Buffer(block), other) => {
                            if let Some(b) = other {
                                self.pool.put(b);
                            }
                            let mut b = self.pool.get(block.len());
                            b.set_len(block.len());
                            b.copy_from_slice(block);
                            b
                        }
                        (_, Some(mut b)) if b.len() >= plan.len => {
                            b.set_len(plan.len);
                            b
                        }
                        (_, other) => {
                            // Less data than the CDB transfers: SBC-3 cannot
                            // write what it was not given.
                            if let Some(b) = other {
                                self.pool.put(b);
                            }
                            let resp = Response::check(
                                SenseKey::ILLEGAL_REQUEST,
                                Asc::INVALID_FIELD_IN_CDB,
                            );
                            finish(
                                &mut conn.proto,
                                cmd.itt,
                                &resp,
                                None,
                                cmd.expected_len,
                                plan.transfer_len,
                            );
                            return;
                        }
                    },
                    PlanBuffer::None => {
                        let mut b = self.pool.get(0);
                        b.set_len(0);
                        b
                    }
                };
                if let Some(b) = data_in.take() {
                    self.pool.put(b);
                }
                if let Some(b) = cmd.data.take() {
                    self.pool.put(b);
                }
                let extra_ranges = match &plan.extra {
                    PlanExtra::Ranges(r) => r.clone(),
                    _ => Vec::new(),
                };
                let request = IoRequest {
                    tag: 0,
                    op: store_op(plan.kind),
                    offset: plan.offset,
                    buf,
                    fua: plan.fua,
                    len: plan.span,
                    source,
                    rate: (plan.sanitize && plan.kind == IoKind::WriteSame)
                        .then_some(rtgt_scsi::sbc::SANITIZE_OVERWRITE_RATE),
                    // Large reads may go from the page cache to the socket
                    // (sendfile) where the store allows it.
                    by_reference: plan.kind == IoKind::Read
                        && plan.len >= SENDFILE_MIN
                        && conn.proto.can_send_files(),
                };
                let tag = self.inflight.insert(InFlight {
                    conn: idx,
                    generation: conn.generation,
                    itt: cmd.itt,
                    lu: lu.begin_io(),
                    plan,
                    expected_len: cmd.expected_len,
                    pending: 1 + extra_ranges.len(),
                    result: Ok(0),
                }) as u64;
                store.submit(IoRequest { tag, ..request }, &self.done_tx);
                // UNMAP with several block descriptors: one store request
                // each, completed together.
                for (offset, len) in extra_ranges {
                    let mut b = self.pool.get(0);
                    b.set_len(0);
                    let mut r = IoRequest::new(tag, IoOp::Unmap, offset, b);
                    r.len = len;
                    store.submit(r, &self.done_tx);
                }
            }
        }
    }

    /// RFC 7143 §11.5, SAM-5 §7: task management.
    fn on_task_management(&mut self, idx: usize, tm: TaskManagement) {
        const ABORT_TASK: u8 = 1;
        const ABORT_TASK_SET: u8 = 2;
        const CLEAR_TASK_SET: u8 = 4;
        const LOGICAL_UNIT_RESET: u8 = 5;
        const TARGET_WARM_RESET: u8 = 6;
        const TARGET_COLD_RESET: u8 = 7;
        const FUNCTION_COMPLETE: u8 = 0;
        const LUN_DOES_NOT_EXIST: u8 = 2;
        const NOT_SUPPORTED: u8 = 5;

        let conn = &mut self.conns[idx];
        let Some(sess) = conn.session.as_mut() else {
            return;
        };
        sess.refresh();
        let lun = lun_from_wire(tm.lun).unwrap_or(u64::MAX);
        const TASK_DOES_NOT_EXIST: u8 = 1;
        let nexus = sess.nexus;
        let response = match tm.function & 0x7f {
            ABORT_TASK => {
                // RFC 7143 §11.6.1: a task already answered (or never received)
                // does not exist; one still outstanding is aborted, its response
                // never sent.
                if conn.proto.abort_task(tm.referenced_itt) {
                    FUNCTION_COMPLETE
                } else {
                    TASK_DOES_NOT_EXIST
                }
            }
            ABORT_TASK_SET | CLEAR_TASK_SET => match sess.snap.table.get(lun) {
                Some(lu) => {
                    conn.proto.abort_tasks(Some(tm.lun));
                    if tm.function & 0x7f == CLEAR_TASK_SET {
                        // SAM-5 §7.4: with one task set for all I_T nexuses
                        // (TST 000b) every nexus's tasks go; the others get
                        // TASK ABORTED (TAS=1) and learn why.
                        lu.abort_tasks_of(None);
                        lu.raise_unit_attention_except(
                            Asc::COMMANDS_CLEARED_BY_ANOTHER_INITIATOR,
                            Some(nexus),
                        );
                    }
                    FUNCTION_COMPLETE
                }
                None => LUN_DOES_NOT_EXIST,
            },
            LOGICAL_UNIT_RESET => match sess.snap.table.get(lun) {
                Some(lu) => {
                    conn.proto.abort_tasks(Some(tm.lun));
                    lu.reset(Asc::BUS_DEVICE_RESET);
                    FUNCTION_COMPLETE
                }
                None => LUN_DOES_NOT_EXIST,
            },
            TARGET_WARM_RESET | TARGET_COLD_RESET => {
                conn.proto.abort_tasks(None);
                for lu in sess.snap.table.iter() {
                    lu.reset(Asc::POWER_ON_RESET);
                }
                FUNCTION_COMPLETE
            }
            _ => NOT_SUPPORTED,
        };
        if tm.function & 0x7f == TARGET_COLD_RESET && response == FUNCTION_COMPLETE {
            // RFC 7143 §11.5.1: after a cold reset the target closes all of its
            // TCP connections to all initiators: this one once the response is
            // out, the target's other sessions at once.
            conn.closing = true;
            let own = sess.sid;
            if let Some(tid) = sess.target.as_ref().map(|t| t.tid) {
                let handles: Vec<ConnHandle> = {
                    let reg = self.shared.registry.lock();
                    reg.sessions_of(tid)
                        .filter(|s| s.sid != own)
                        .flat_map(|s| s.connections.iter().map(|c| c.handle))
                        .collect()
                };
                for h in handles {
                    self.shared.close_connection(h);
                }
            }
        }
        conn.proto.task_management_response(tm.itt, response);
    }

    /// Answer finished I/O. `signalled`: the eventfd woke us (reset it and
    /// reap the kernel queues); otherwise only what this thread queued.
    fn drain_completions(&mut self, signalled: bool) {
        let mut done = std::mem::take(&mut self.done);
        let mut touched = std::mem::take(&mut self.touched);
        if signalled {
            self.done_rx.drain(&mut done);
        } else {
            self.done_rx.drain_queued(&mut done);
        }
        for mut c in done.drain(..) {
            let Some(inf) = self.inflight.get_mut(c.tag as usize) else {
                self.pool.put(c.buf);
                continue;
            };
            inf.pending = inf.pending.saturating_sub(1);
            match (&inf.result, c.result) {
                (Ok(_), r) => inf.result = r.map_err(|e| e.0),
                (Err(_), _) => {}
            }
            if inf.pending > 0 {
                self.pool.put(c.buf);
                continue;
            }
            let inf = self.inflight.remove(c.tag as usize);
            let file = c.file.take();
            let resp = inf.lu.complete_io(&inf.plan, inf.result, &mut c.buf[..]);
            let live = self
                .conns
                .get(inf.conn)
                .is_some_and(|conn| conn.generation == inf.generation);
            if !live {
                // The connection went away while its I/O was at the store.
                self.pool.put(c.buf);
                continue;
            }
            let conn = &mut self.conns[inf.conn];
            let data_in = inf.plan.kind.buffer() == PlanBuffer::DataIn;
            let data = match file {
                Some(file) if data_in => {
                    // Sent from the store's file: the buffer was not used.
                    self.pool.put(c.buf);
                    DataIn::File(file)
                }
                _ if data_in => DataIn::Buffer(c.buf),
                _ => {
                    self.pool.put(c.buf);
                    DataIn::None
                }
            };
            let needed = match inf.plan.kind {
                IoKind::Flush => 0,
                IoKind::Extents => resp.data_in_len,
                _ => inf.plan.transfer_len,
            };
            respond(
                &mut conn.proto,
                inf.itt,
                &resp,
                data,
                inf.expected_len,
                needed,
            );
            if !conn.flush_queued {
                conn.flush_queued = true;
                touched.push(inf.conn);
            }
        }
        self.done = done;
        // One flush per connection for the whole batch of completions.
        for idx in touched.drain(..) {
            if let Some(conn) = self.conns.get_mut(idx) {
                conn.flush_queued = false;
                self.flush(idx);
            }
        }
        self.touched = touched;
    }

    fn flush(&mut self, idx: usize) {
        let conn = &mut self.conns[idx];
        while !conn.dead && conn.proto.wants_write() {
            match conn.proto.transmit(&mut Socket(&mut conn.stream)) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("write to {}: {e}", conn.peer);
                    conn.dead = true;
                }
            }
        }
        while let Some(b) = conn.proto.poll_free_buffer() {
            self.pool.put(b);
        }
        if conn.paused && conn.proto.queued_pdus() < MAX_QUEUED_PDUS / 2 {
            // Input may have arrived while paused, and edge-triggered
            // readiness will not report it again.
            conn.paused = false;
            self.again.push(idx);
        }
        let finished = conn.proto.is_closed() || conn.closing;
        if conn.dead {
            self.close(idx);
        } else if finished && !conn.proto.wants_write() && conn.linger_until.is_none() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
            conn.linger_until = Some(Instant::now() + LINGER);
            // Whatever arrived meanwhile is discarded on the next turn.
            self.again.push(idx);
        }
    }

    fn check_timers(&mut self, now: Instant) {
        let lingered: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.linger_until.is_some_and(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        for idx in lingered {
            self.close(idx);
        }
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.linger_until.is_none())
            .filter(|(_, c)| c.proto.poll_timeout().is_some_and(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        for idx in due {
            if let Err(e) = self.conns[idx].proto.handle_timeout(now) {
                info!("connection from {}: {e}", self.conns[idx].peer);
                self.conns[idx].closing = true;
            }
            self.flush(idx);
        }
    }

    fn close(&mut self, idx: usize) {
        let mut conn = self.conns.remove(idx);
        if conn.logging_in {
            self.logging_in -= 1;
        }
        self.load.fetch_sub(1, Ordering::Relaxed);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        // Buffers of tasks still gathering data and of unsent Data-In go back
        // to the pool rather than being dropped with the connection.
        conn.proto.shutdown();
        while let Some(b) = conn.proto.poll_free_buffer() {
            self.pool.put(b);
        }
        if let Some(sess) = conn.session.take() {
            if sess.registered {
                let mut reg = self.shared.registry.lock();
                let owned = reg.sessions.get(&sess.sid).is_some_and(|s| {
                    s.connections.iter().any(|c| {
                        c.handle.token == idx
                            && c.handle.generation == conn.generation
                            && c.handle.reactor == self.id
                    })
                });
                if owned {
                    end_session(&mut reg, sess.sid);
                }
            }
        }
        debug!("reactor {}: connection from {} closed", self.id, conn.peer);
    }

    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for idx in keys {
            self.close(idx);
        }
    }
}

/// Receive-buffer size: one maximal PDU, plus room to batch several small
/// ones once in full feature phase. Before login the largest legal PDU is
/// about 9 KiB, so a crowd of silent connections costs little.
fn recv_capacity(proto: &Connection<AlignedBuf>) -> usize {
    proto.max_pdu_len()
        + if proto.is_full_feature() {
            RECV_SLACK
        } else {
            0
        }
}

/// A connection's socket as the protocol's output: gathered writes, with
/// MSG_MORE when file data follows (the header then shares a segment with
/// it), and sendfile(2) for file data.
struct Socket<'a>(&'a mut TcpStream);

impl Transmit for Socket<'_> {
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>], more: bool) -> io::Result<usize> {
        if !more {
            return self.0.write_vectored(bufs);
        }
        // nix has no MSG_MORE constant (tcp(7): "more data to send").
        let flags = MsgFlags::from_bits_retain(libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL;
        loop {
            match sendmsg::<()>(self.0.as_raw_fd(), bufs, &[], flags, None) {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    fn send_file(&mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize> {
        let mut off = offset as libc::off_t;
        loop {
            match sendfile64(self.0.as_fd(), file, Some(&mut off), len) {
                Err(Errno::EINTR) => continue,
                // The file is shorter than the store was when it opened
                // (truncated behind our back): zeros keep the stream framed,
                // as a short read zero-fills.
                Ok(0) => return self.0.write(&ZEROS[..len.min(ZEROS.len())]),
                other => return other.map_err(io::Error::from),
            }
        }
    }
}

/// Zeros for data past the end of a shrunken file.
static ZEROS: [u8; 4096] = [0; 4096];

/// Nothing is pending in `conn`'s receive buffer: give it back to the pool
/// (or free it when the pool is full).
fn release_recv_buffer(pool: &mut Vec<Vec<u8>>, conn: &mut Conn) {
    conn.rstart = 0;
    conn.rend = 0;
    let buf = std::mem::take(&mut conn.rbuf);
    if pool.len() < RECV_POOL_MAX && !buf.is_empty() {
        pool.push(buf);
    }
}

/// Read and drop what a lingering connection still sends. Returns true when
/// there may be more to read; sets `dead` on EOF or error.
fn discard_input(conn: &mut Conn) -> bool {
    let mut scratch = [0u8; 4096];
    match conn.stream.read(&mut scratch) {
        Ok(0) => {
            conn.dead = true;
            false
        }
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => {
            conn.dead = true;
            false
        }
    }
}

/// Remove a session from the registry and its I_T nexus from every LU.
pub fn end_session(reg: &mut RegistryInner, sid: u64) -> Option<SessionEntry> {
    let s = reg.sessions.remove(&sid)?;
    if let Some(t) = reg.targets.get(&s.tid) {
        for e in t.luns.values() {
            e.backing.lu.remove_nexus(s.nexus);
        }
    }
    Some(s)
}

/// A login the target admitted, registered as a session only once it
/// completes: an initiator that fails authentication must not reinstate
/// (end) a session it could not prove is its own (RFC 7143 §6.3.5).
#[derive(Debug)]
struct PendingLogin {
    info: LoginInfo,
    /// None for a discovery session.
    tid: Option<i32>,
    tsih: u16,
    /// CHAP was required (a success clears the address's failures).
    authenticated: bool,
    /// Its place under the daemon's and the target's caps, taken now so that
    /// a refusal can still be a Login Response (see `limits`).
    admission: Admission,
    /// The target's pings (None for discovery: the daemon's).
    nop: Option<Nop>,
}

/// The target's answer to a login's names (Event::Login): whether this
/// initiator may log in here and what it must prove.
fn decide_login(
    reg: &mut RegistryInner,
    info: &LoginInfo,
    peer: SocketAddr,
    now: Instant,
) -> Result<(LoginAccept, PendingLogin), LoginStatus> {
    const TPGT: u16 = 1;
    if let Some(wait) = reg.auth_throttle.must_wait(peer.ip(), now) {
        info!(
            "login from {peer} refused for {:.1} s more: repeated authentication failures",
            wait.as_secs_f64()
        );
        return Err(LoginStatus::AUTHENTICATION_FAILURE);
    }
    let (tid, chap, nop) = if info.session_type == SessionType::Discovery {
        (None, reg.accounts.policy(&reg.accounts.discovery), None)
    } else {
        let name = info
            .target_name
            .as_deref()
            .ok_or(LoginStatus::MISSING_PARAMETER)?;
        let target = reg
            .target_by_name(name)
            .ok_or(LoginStatus::TARGET_NOT_FOUND)?;
        if !target.admits(peer.ip(), &info.initiator_name) {
            return Err(LoginStatus::AUTHORIZATION_FAILURE);
        }
        let tid = target.tid;
        if info.tsih != 0 {
            // Adding a connection to a session: we negotiate MaxConnections=1.
            return Err(
                if reg
                    .sessions
                    .values()
                    .any(|s| s.tsih == info.tsih && s.tid == tid)
                {
                    LoginStatus::TOO_MANY_CONNECTIONS
                } else {
                    LoginStatus::SESSION_DOES_NOT_EXIST
                },
            );
        }
        (
            Some(tid),
            reg.accounts.policy(&target.accounts),
            Some(target.nop),
        )
    };
    let admission = admit(reg, info, tid)?;
    let tsih = reg.alloc_tsih();
    let authenticated = chap.is_some();
    Ok((
        LoginAccept {
            tsih,
            target_portal_group_tag: TPGT,
            target_alias: None,
            chap,
        },
        PendingLogin {
            info: info.clone(),
            tid,
            tsih,
            authenticated,
            admission,
            nop,
        },
    ))
}

/// A place for the login under the daemon's caps and its target's (see
/// `limits`); a discovery session counts in the daemon's only.
fn admit(
    reg: &RegistryInner,
    info: &LoginInfo,
    tid: Option<i32>,
) -> Result<Admission, LoginStatus> {
    let daemon = ("the daemon", &reg.limits);
    let admitted = match tid.and_then(|tid| reg.targets.get(&tid)) {
        Some(t) => {
            // RFC 7143 §6.3.5: same initiator port (name and ISID), TSIH 0.
            let replacing = reg
                .sessions_of(t.tid)
                .any(|s| s.initiator == info.initiator_name && s.isid == info.isid);
            Admission::admit(&[daemon, ("the target", &t.limits)], replacing)
        }
        None => Admission::admit(&[daemon], false),
    };
    admitted.map_err(|refused| {
        info!(
            "no room for {} at {}: {refused}",
            info.initiator_name,
            info.target_name.as_deref().unwrap_or("discovery")
        );
        refused.full.status()
    })
}

/// The login completed (full feature phase): the session exists from now on.
fn register_session(
    reg: &mut RegistryInner,
    login: &PendingLogin,
    peer: SocketAddr,
    handle: ConnHandle,
    fd: RawFd,
    shared: &Shared,
) -> Result<SessionCtx, LoginStatus> {
    let info = &login.info;
    if login.authenticated {
        reg.auth_throttle.succeeded(peer.ip());
    }
    let Some(tid) = login.tid else {
        let sid = reg.alloc_sid();
        return Ok(SessionCtx {
            sid,
            nexus: NexusId(sid),
            initiator: info.initiator_name.clone(),
            target: None,
            snap: Arc::new(LunSnapshot::default()),
            snap_version: 0,
            registered: false,
        });
    };
    // RFC 7143 §6.3.5: a leading login with TSIH 0 and the ISID of an
    // existing session of this initiator reinstates it: the old one goes.
    let old: Vec<u64> = reg
        .sessions_of(tid)
        .filter(|s| s.initiator == info.initiator_name && s.isid == info.isid)
        .map(|s| s.sid)
        .collect();
    for sid in old {
        if let Some(s) = end_session(reg, sid) {
            info!("reinstating session {sid} of {}", s.initiator);
            for c in &s.connections {
                shared.close_connection(c.handle);
            }
        }
    }
    let sid = reg.alloc_sid();
    let nexus = NexusId(sid);
    let target = reg.targets.get(&tid).ok_or(LoginStatus::TARGET_REMOVED)?;
    let identity = NexusIdentity {
        initiator_name: info.initiator_name.clone(),
        isid: info.isid,
        relative_target_port: RELATIVE_TARGET_PORT,
    };
    for e in target.luns.values() {
        e.backing.lu.add_nexus(nexus, identity.clone());
    }
    let shared_t = target.shared.clone();
    reg.sessions.insert(
        sid,
        SessionEntry {
            sid,
            tid,
            tsih: login.tsih,
            isid: info.isid,
            initiator: info.initiator_name.clone(),
            alias: info.initiator_alias.clone(),
            nexus,
            connections: vec![ConnectionEntry {
                cid: info.cid,
                peer,
                handle,
                fd: Some(fd),
            }],
        },
    );
    Ok(SessionCtx {
        sid,
        nexus,
        initiator: info.initiator_name.clone(),
        snap: shared_t.snapshot(),
        snap_version: shared_t.version(),
        target: Some(shared_t),
        registered: true,
    })
}

/// TargetAddress values (RFC 7143 §13.8): every portal, with a wildcard
/// portal shown as the address this connection reached us on.
fn portal_addresses(reg: &RegistryInner, local: SocketAddr) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in &reg.portals {
        let addr = if p.addr.ip().is_unspecified() {
            SocketAddr::new(crate::acl::canonical(local.ip()), p.addr.port())
        } else {
            p.addr
        };
        let s = format!("{addr},{}", p.tpgt);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn digest_name(on: bool) -> &'static str {
    if on {
        "CRC32C"
    } else {
        "None"
    }
}

/// RFC 7143 §11.4.5.2: what the command would transfer (`needed`) against
/// the initiator's Expected Data Transfer Length.
fn residual(needed: usize, expected_len: u32) -> Residual {
    let expected = expected_len as usize;
    match needed.cmp(&expected) {
        std::cmp::Ordering::Equal => Residual::None,
        std::cmp::Ordering::Less => Residual::Underflow((expected - needed) as u32),
        std::cmp::Ordering::Greater => {
            Residual::Overflow(u32::try_from(needed - expected).unwrap_or(u32::MAX))
        }
    }
}

/// Hand a finished command to the protocol layer, with the residual RFC 7143
/// §11.4.5 asks for: the SCSI layer's transfer size against the initiator's
/// Expected Data Transfer Length.
fn finish(
    proto: &mut Connection<AlignedBuf>,
    itt: u32,
    resp: &Response,
    data: Option<AlignedBuf>,
    expected_len: u32,
    needed: usize,
) {
    let data = data.map_or(DataIn::None, DataIn::Buffer);
    respond(proto, itt, resp, data, expected_len, needed);
}

/// Where a command's Data-In comes from.
enum DataIn {
    None,
    /// The command's buffer (its first `data_in_len` bytes).
    Buffer(AlignedBuf),
    /// The store's file (a read answered by reference): sent with sendfile(2).
    File(FileRef),
}

/// [`finish`] for any [`DataIn`].
fn respond(
    proto: &mut Connection<AlignedBuf>,
    itt: u32,
    resp: &Response,
    data: DataIn,
    expected_len: u32,
    needed: usize,
) {
    let expected = expected_len as usize;
    let data_len = match &data {
        DataIn::None => 0,
        DataIn::Buffer(b) => resp.data_in_len.min(expected).min(b.len()),
        DataIn::File(_) => resp.data_in_len.min(expected),
    };
    let (data, file) = match data {
        DataIn::None => (None, None),
        DataIn::Buffer(b) => (Some(b), None),
        DataIn::File(f) => (None, Some(f)),
    };
    let response = CommandResponse {
        status: resp.status.0,
        sense: resp
            .sense
            .as_ref()
            .map(|s| s.to_fixed().to_vec())
            .unwrap_or_default(),
        data,
        data_len,
        residual: residual(needed, expected_len),
    };
    match file {
        Some(f) if data_len > 0 => proto.complete_read_from_file(itt, response, f.file, f.offset),
        _ => proto.complete_command(itt, response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::AclEntry;
    use crate::registry::TargetEntry;

    const IQN: &str = "iqn.2026-11.org.rtgt:t";
    const INITIATOR: &str = "iqn.2026-11.org.example:host";

    fn shared_with_target(acl: Vec<AclEntry>) -> Shared {
        let registry = Registry::new();
        registry.lock().targets.insert(
            1,
            TargetEntry {
                tid: 1,
                name: IQN.to_string(),
                luns: Default::default(),
                acl,
                accounts: Default::default(),
                limits: Default::default(),
                nop: crate::limits::Nop::from_config(&TargetConfig::default()),
                shared: Registry::new_target_shared(1),
            },
        );
        Shared {
            registry,
            reactors: Arc::new(std::sync::OnceLock::new()),
            iscsi: TargetConfig::default(),
            login_timeout: Default::default(),
        }
    }

    fn login(isid: [u8; 6], tsih: u16, target: Option<&str>) -> LoginInfo {
        LoginInfo {
            session_type: if target.is_some() {
                SessionType::Normal
            } else {
                SessionType::Discovery
            },
            initiator_name: INITIATOR.to_string(),
            initiator_alias: None,
            target_name: target.map(str::to_string),
            isid,
            tsih,
            cid: 0,
        }
    }

    fn handle(token: usize) -> ConnHandle {
        ConnHandle {
            reactor: 0,
            token,
            generation: token as u64,
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    /// decide_login, then — the login having completed — register_session.
    fn log_in(
        reg: &mut RegistryInner,
        info: &LoginInfo,
        token: usize,
        shared: &Shared,
    ) -> Result<(LoginAccept, SessionCtx), LoginStatus> {
        let (accept, pending) = decide_login(reg, info, peer(), Instant::now())?;
        let s = register_session(reg, &pending, peer(), handle(token), -1, shared)?;
        Ok((accept, s))
    }

    #[test]
    fn same_isid_reinstates_the_session() {
        let shared = shared_with_target(vec![AclEntry::All]);
        let mut reg = shared.registry.lock();
        let isid = [0x80, 0, 0, 0, 0, 1];
        let (a, first) = log_in(&mut reg, &login(isid, 0, Some(IQN)), 1, &shared).unwrap();
        assert_ne!(a.tsih, 0);
        assert_eq!(reg.sessions.len(), 1);
        // Only admitted (its login not complete, e.g. still proving a CHAP
        // secret): the old session stays.
        decide_login(&mut reg, &login(isid, 0, Some(IQN)), peer(), Instant::now()).unwrap();
        assert!(reg.sessions.contains_key(&first.sid));
        // RFC 7143 §6.3.5: a new leading login with the same ISID replaces it.
        let (b, second) = log_in(&mut reg, &login(isid, 0, Some(IQN)), 2, &shared).unwrap();
        assert_eq!(reg.sessions.len(), 1);
        assert!(!reg.sessions.contains_key(&first.sid));
        let s = &reg.sessions[&second.sid];
        assert_eq!(s.connections[0].handle, handle(2));
        assert_ne!(a.tsih, b.tsih);
        // A different ISID is a second session, not a reinstatement.
        log_in(
            &mut reg,
            &login([0x80, 0, 0, 0, 0, 2], 0, Some(IQN)),
            3,
            &shared,
        )
        .unwrap();
        assert_eq!(reg.sessions.len(), 2);
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let shared = shared_with_target(vec![AclEntry::parse_address("10.0.0.0/8").unwrap()]);
        let mut reg = shared.registry.lock();
        let isid = [0x80, 0, 0, 0, 0, 1];
        let err = |r: Result<(LoginAccept, SessionCtx), LoginStatus>| r.err().unwrap();
        assert_eq!(
            err(log_in(
                &mut reg,
                &login(isid, 0, Some("iqn.nope")),
                1,
                &shared
            )),
            LoginStatus::TARGET_NOT_FOUND
        );
        assert_eq!(
            err(log_in(&mut reg, &login(isid, 0, Some(IQN)), 1, &shared)),
            LoginStatus::AUTHORIZATION_FAILURE
        );
        reg.targets.get_mut(&1).unwrap().acl.push(AclEntry::All);
        // Adding a connection (TSIH != 0) to a session we never made.
        assert_eq!(
            err(log_in(&mut reg, &login(isid, 77, Some(IQN)), 1, &shared)),
            LoginStatus::SESSION_DOES_NOT_EXIST
        );
        // Discovery sessions need no target and are not in the session table.
        assert!(log_in(&mut reg, &login(isid, 0, None), 1, &shared).is_ok());
        assert!(reg.sessions.is_empty());
        // CHAP: an account bound to the target puts it in the policy.
        reg.accounts.add("u", "secretsecret12").unwrap();
        let mut b = reg.targets[&1].accounts.clone();
        reg.accounts.bind(&mut b, "u", false).unwrap();
        reg.targets.get_mut(&1).unwrap().accounts = b;
        let (accept, pending) =
            decide_login(&mut reg, &login(isid, 0, Some(IQN)), peer(), Instant::now()).unwrap();
        let chap = accept.chap.expect("CHAP required");
        assert_eq!(chap.incoming[0].user, "u");
        assert!(pending.authenticated);
        // Repeated authentication failures from one address: refused for a while.
        for _ in 0..=crate::throttle::FREE_FAILURES {
            reg.auth_throttle.failed(peer().ip(), Instant::now());
        }
        assert_eq!(
            err(log_in(&mut reg, &login(isid, 0, Some(IQN)), 1, &shared)),
            LoginStatus::AUTHENTICATION_FAILURE
        );
    }

    #[test]
    fn full_caps_refuse_with_the_status_rfc7143_names() {
        let shared = shared_with_target(vec![AclEntry::All]);
        let mut reg = shared.registry.lock();
        let now = Instant::now();
        let isid = |n| [0x80, 0, 0, 0, 0, n];
        let decide = |reg: &mut RegistryInner, info: &LoginInfo| {
            decide_login(reg, info, peer(), now).map(|(_, pending)| pending)
        };
        reg.targets[&1].limits.set_max_sessions(1);
        // A login holds its place from admission, before it completes.
        let held = decide(&mut reg, &login(isid(1), 0, Some(IQN))).unwrap();
        assert_eq!(
            decide(&mut reg, &login(isid(2), 0, Some(IQN))).unwrap_err(),
            LoginStatus::OUT_OF_RESOURCES
        );
        // Discovery counts in the daemon's scope only.
        let discovery = decide(&mut reg, &login(isid(3), 0, None)).unwrap();
        assert_eq!(
            (reg.limits.sessions(), reg.targets[&1].limits.sessions()),
            (2, 1)
        );
        reg.limits.set_max_connections(2);
        assert_eq!(
            decide(&mut reg, &login(isid(4), 0, None)).unwrap_err(),
            LoginStatus::TOO_MANY_CONNECTIONS
        );
        // A login that goes (here: refused later, e.g. by CHAP) gives both back.
        drop((held, discovery));
        assert_eq!(reg.limits.connections(), 0);
        assert!(decide(&mut reg, &login(isid(2), 0, Some(IQN))).is_ok());
    }

    #[test]
    fn residuals_follow_rfc7143() {
        assert_eq!(residual(0, 0), Residual::None);
        assert_eq!(residual(4096, 4096), Residual::None);
        // WRITE(10) of one block with no data: overflow by a block.
        assert_eq!(residual(512, 0), Residual::Overflow(512));
        assert_eq!(residual(512, 200), Residual::Overflow(312));
        // INQUIRY answering 36 bytes into a 255-byte allocation: underflow.
        assert_eq!(residual(36, 255), Residual::Underflow(219));
        assert_eq!(residual(usize::MAX, 1), Residual::Overflow(u32::MAX));
    }
}
