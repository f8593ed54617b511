//! The connection state machine (RFC 7143): framing with limits and digests,
//! the login phase, and full feature phase (CmdSN window, write data gathering
//! with R2Ts, Data-In splitting, NOP keep-alive, Text, Logout, Task Management).
//!
//! Errors at ErrorRecoveryLevel 0, the only level offered: a request outside
//! the CmdSN window is ignored (§4.2.2.1); a malformed request is rejected
//! (§11.17); write data out of sequence or lost to a digest error fails its
//! task with CHECK CONDITION (§7.8, §7.9); only what leaves the framing in
//! doubt (header digest, oversize segment, PDUs invalid in the phase) closes
//! the connection.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::login::{LoginAccept, LoginInfo};
use crate::login::{LoginState, LoginStatus, LoginStep, LOGIN_DATA_SEGMENT_LIMIT};
use crate::params::{SessionParams, SessionType, TargetConfig, NOT_UNDERSTOOD, REJECT};
use crate::pdu::{
    self, crc32c_of, digest_bytes, digest_from, pad4, Bhs, DataIn, DataOutPdu, InitiatorPdu,
    LoginRequestPdu, LoginResponse, NopOutPdu, Opcode, RejectReason, ScsiCommandPdu, SnFields,
    TextRequestPdu, BHS_LEN, DIGEST_LEN, MAX_AHS_LEN, RESERVED_TAG,
};
use crate::text::{self, TextCollector};
use crate::DataBuf;

/// Which targets a SendTargets request asks for (RFC 7143 §13.3, Appendix C).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendTargetsScope {
    /// `SendTargets=All`.
    All,
    /// `SendTargets=<iSCSI name>`.
    Target(String),
    /// `SendTargets=` (empty) in a normal session: the session's own target.
    Session,
}

/// A SCSI command ready to run (RFC 7143 §11.3), with all its write data.
#[derive(Debug)]
pub struct ScsiCommand<B> {
    pub itt: u32,
    /// The 8 LUN bytes as a big-endian u64 (the target decodes addressing, SAM-5 §4.7).
    pub lun: u64,
    /// CDB (zero padded); with an Extended CDB AHS the first 16 bytes, see `cdb_len`.
    pub cdb: [u8; 16],
    /// 16, or 16 + extended AHS bytes (up to 32 supported; longer -> Reject).
    pub cdb_len: usize,
    /// Bytes 16..32 when `cdb_len > 16`.
    pub ext_cdb: [u8; 16],
    /// Expected Data Transfer Length (§11.3.4).
    pub expected_len: u32,
    pub read: bool,
    pub write: bool,
    /// Task attribute (ATTR field, §11.3.1.3).
    pub attr: u8,
    pub cmd_sn: u32,
    /// Write commands: all Data-Out gathered (immediate, unsolicited and solicited
    /// via R2T), a buffer of `expected_len` bytes. None when there is no write
    /// data, or when it could not be buffered (expected_len > max_data_transfer or
    /// the alloc callback returned None): the target must then fail the command
    /// (e.g. CHECK CONDITION), and the connection discards that task's Data-Out.
    pub data: Option<B>,
}

/// Residual count of a completed command (RFC 7143 §11.4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    None,
    Underflow(u32),
    Overflow(u32),
}

/// The target's completion of a SCSI command.
#[derive(Debug)]
pub struct CommandResponse<B> {
    pub status: u8,
    /// Sense data (fixed format bytes) for CHECK CONDITION; empty otherwise. Sent in
    /// the SCSI Response data segment with its 2-byte SenseLength prefix (§11.4.7).
    pub sense: Vec<u8>,
    /// Read data: the first `data_len` bytes are sent as Data-In (split by the
    /// initiator's MaxRecvDataSegmentLength, F bit per MaxBurstLength sequence,
    /// status in the last Data-In (S bit) when there is no sense — phase
    /// collapse; otherwise a SCSI Response follows). For writes, pass the write
    /// buffer back here so it is returned through `poll_free_buffer`.
    pub data: Option<B>,
    pub data_len: usize,
    pub residual: Residual,
}

/// A Task Management Function Request (RFC 7143 §11.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskManagement {
    pub itt: u32,
    /// Function code (§11.5.1), see [`pdu::TmfFunction`].
    pub function: u8,
    pub lun: u64,
    pub referenced_itt: u32,
    pub ref_cmd_sn: u32,
}

/// What the connection tells the target.
#[derive(Debug)]
pub enum Event<B> {
    /// Needs the target's decision: reply with `accept_login` or `reject_login`.
    /// Emitted once per login, when the initiator's names are known.
    Login(LoginInfo),
    /// Full feature phase reached; the session's operational values.
    FullFeature(SessionParams),
    /// A SendTargets text request: reply with `send_targets_response`.
    SendTargets(SendTargetsScope),
    /// A SCSI command ready to run, with all its write data.
    Command(ScsiCommand<B>),
    /// Reply with `task_management_response`.
    TaskManagement(TaskManagement),
    /// The initiator logged out (the Logout Response is already queued).
    /// Every pending task was terminated (RFC 7143 §11.14): a later
    /// `complete_command` for one only hands its buffer back.
    Logout { reason: u8 },
    /// The login failed authentication (RFC 7143 §12.1.3); its Login Response
    /// with AUTHENTICATION_FAILURE is queued and the connection closes. Emitted
    /// once, for the log: who tried (`user` is the CHAP_N sent, if any) and a
    /// short fixed `reason`, never a secret.
    AuthenticationFailed {
        initiator_name: String,
        user: Option<String>,
        reason: &'static str,
    },
}

/// Errors that close the connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("first PDU is {0}, not a Login Request (RFC 7143 §6.1)")]
    LoginExpected(Opcode),
    #[error("{0} is not valid during login (RFC 7143 §6.2)")]
    InvalidDuringLogin(Opcode),
    #[error("login failed with status {0}")]
    LoginFailed(LoginStatus),
    #[error("login not completed within {0:?}")]
    LoginTimeout(Duration),
    #[error("data segment of {len} bytes exceeds the limit of {limit} (MaxRecvDataSegmentLength, RFC 7143 §13.12)")]
    DataSegmentTooLong { len: usize, limit: usize },
    #[error("header digest mismatch (RFC 7143 §7.8)")]
    HeaderDigest,
    #[error("initiator did not answer {0} NOP-In pings")]
    NopTimeout(u32),
    #[error("{0} is not allowed in a discovery session (RFC 7143 §4.3)")]
    DiscoverySession(Opcode),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("connection already closed")]
    Closed,
}

/// Free-running counters (for `tgtadm --op show`).
#[derive(Clone, Debug, Default)]
pub struct ConnectionStats {
    pub pdus_in: u64,
    pub pdus_out: u64,
    pub commands: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    FullFeature,
    /// Logout answered or login failed: closed once the queue is flushed.
    Closing,
}

/// A file whose bytes go out as Data-In straight from it (sendfile(2)); the
/// reference keeps the descriptor open until they are sent.
pub type FileData = Arc<dyn AsFd + Send + Sync>;

/// Where a connection's output goes: a byte stream that can also send a
/// file's bytes. The reactor's socket does it with writev(2) + MSG_MORE and
/// sendfile(2); [`Plain`] does it for any `Write`.
pub trait Transmit {
    /// Write some of `bufs` (gathered); `more`: file data follows at once,
    /// so the stream may hold a partial segment back (MSG_MORE).
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>], more: bool) -> io::Result<usize>;
    /// Send up to `len` bytes of `file` from `offset`; return how many were
    /// sent. Bytes past the file's end go out as zeros (a store never returns
    /// stale data, and the stream must stay framed).
    fn send_file(&mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize>;
}

/// Any writer as a [`Transmit`]: file data is read with pread(2) and written.
pub struct Plain<W>(pub W);

impl<W: Write> Transmit for Plain<W> {
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>], _more: bool) -> io::Result<usize> {
        self.0.write_vectored(bufs)
    }

    fn send_file(&mut self, file: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::from(file.try_clone_to_owned()?);
        let mut chunk = vec![0u8; len.min(64 * 1024)];
        let mut got = 0;
        while got < chunk.len() {
            match file.read_at(&mut chunk[got..], offset + got as u64) {
                Ok(0) => break, // past the end: zeros
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.0.write(&chunk)
    }
}

#[derive(Debug)]
enum OutData {
    None,
    Owned(Vec<u8>),
    /// A slice of a command buffer held in a slot (zero copy Data-In).
    Slot {
        slot: usize,
        off: usize,
        len: usize,
    },
    /// Bytes of a file (sendfile Data-In).
    File {
        file: FileRef,
        offset: u64,
        len: usize,
    },
}

/// A [`FileData`] that prints as its descriptor.
#[derive(Clone)]
struct FileRef(FileData);

impl std::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::fd::AsRawFd;
        write!(f, "fd {}", self.0.as_fd().as_raw_fd())
    }
}

/// One part of a queued PDU: bytes in memory, or bytes of a file.
enum Part<'a> {
    Bytes(&'a [u8]),
    File(BorrowedFd<'a>, u64, usize),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Bytes(b) => b.len(),
            Part::File(_, _, len) => *len,
        }
    }
}

#[derive(Debug)]
struct OutPdu {
    header: [u8; BHS_LEN + DIGEST_LEN],
    header_len: usize,
    data: OutData,
    trailer: [u8; 3 + DIGEST_LEN],
    trailer_len: usize,
    /// Slot whose buffer is done once this PDU is written.
    release: Option<usize>,
}

#[derive(Debug)]
struct R2tState {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

#[derive(Debug)]
struct Task<B> {
    itt: u32,
    lun: u64,
    cdb: [u8; 16],
    cdb_len: usize,
    ext_cdb: [u8; 16],
    edtl: u32,
    read: bool,
    write: bool,
    attr: u8,
    cmd_sn: u32,
    buffer: Option<B>,
    ordered: bool,
    data_complete: bool,
    delivered: bool,
    received: u32,
    unsol_active: bool,
    unsol_next: u32,
    unsol_end: u32,
    unsol_data_sn: u32,
    r2t_next_offset: u32,
    r2t_sn: u32,
    r2ts: Vec<R2tState>,
    /// Set when its write data went wrong: the task is answered with CHECK
    /// CONDITION once its open sequences are closed, and never delivered.
    failed: Option<DataError>,
}

/// What a SCSI Command said about the initiator that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitiatorPace {
    /// Responses we have sent that its ExpStatSN did not acknowledge: how far
    /// behind on our answers the initiator is, as far as we know.
    pub backlog: u32,
    /// Size of the command's PDU on the wire, immediate data included.
    pub command_bytes: u32,
    /// SCSI Commands received since the pace was last taken.
    pub commands: u32,
}

/// SCSI status CHECK CONDITION (SAM-5 §5.3.1).
const CHECK_CONDITION: u8 = 0x02;

/// Write data a PDU must still be missing, once its header is in, for the
/// driver to receive the rest straight into the task's buffer
/// ([`Connection::placement_buffer`]). Less is copied from the receive
/// buffer: copying a few KiB costs less than the extra read(2).
pub const PLACEMENT_MIN: usize = 16 * 1024;

/// The rest of the current PDU's write data goes straight into a task's
/// buffer (see [`Connection::placement_buffer`]).
#[derive(Debug)]
struct Placement {
    itt: u32,
    /// Where in the task's buffer the next byte goes.
    off: usize,
    /// Data bytes still to come.
    remaining: usize,
    /// Padding after the data segment (§11.2.2: padded to 4 bytes).
    pad: usize,
    /// What to do once the data is all in.
    then: Placed,
}

#[derive(Debug, Clone, Copy)]
enum Placed {
    /// Immediate data of a SCSI Command: `dsl` bytes, and its F bit.
    Command { dsl: u32, final_bit: bool },
    /// A Data-Out of `len` bytes that `closes` its sequence.
    DataOut { len: u32, closes: bool },
}

/// Write data of a PDU whose header is in and whose data is not (yet): how
/// much is missing and the padding after it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    bytes: usize,
    pad: usize,
}

/// Where a Data-Out's data goes, decided from its header.
enum DataOutFate {
    /// Nothing to store (a failed, finished or unknown task).
    Discard,
    /// At `off` in the task's buffer; `closes` its sequence.
    Store { off: usize, closes: bool },
}

/// Why a write's data failed (RFC 7143 §7.8, §7.9), each an iSCSI condition
/// reported as ABORTED COMMAND with the sense codes of §11.4.7.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataError {
    /// A Data-Out lost to a data digest error, or implied lost by a DataSN
    /// out of order (§7.9): "Protocol Service CRC error", 47h/05h.
    ProtocolServiceCrc,
    /// Unsolicited data the target did not allow (InitialR2T=Yes, or past
    /// the end of the unsolicited sequence): "Unexpected unsolicited data", 0Ch/0Ch.
    UnexpectedUnsolicited,
    /// Data at the wrong offset, beyond its sequence, or a sequence ended
    /// short (DataPDUInOrder=Yes, §13.18): "Incorrect amount of data", 0Ch/0Dh.
    IncorrectAmount,
    /// A TTT that names no outstanding R2T: INVALID TARGET PORT TRANSFER
    /// TAG RECEIVED, 4Bh/01h (SPC-4).
    InvalidTtt,
}

impl DataError {
    /// Fixed-format sense data (SPC-4 §4.5.3): ABORTED COMMAND and the ASC/ASCQ.
    fn sense(self) -> [u8; 18] {
        let (asc, ascq) = match self {
            DataError::ProtocolServiceCrc => (0x47, 0x05),
            DataError::UnexpectedUnsolicited => (0x0c, 0x0c),
            DataError::IncorrectAmount => (0x0c, 0x0d),
            DataError::InvalidTtt => (0x4b, 0x01),
        };
        fixed_sense(0x0b, asc, ascq) // ABORTED COMMAND
    }
}

/// Fixed-format sense data (SPC-4 §4.5.3): current error, `key`, ASC/ASCQ.
fn fixed_sense(key: u8, asc: u8, ascq: u8) -> [u8; 18] {
    let mut s = [0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10; // additional sense length
    s[12] = asc;
    s[13] = ascq;
    s
}

/// Where a non-immediate request's CmdSN falls (§4.2.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmdSnOrder {
    /// CmdSN == ExpCmdSN (or an immediate request).
    InOrder,
    /// Inside the window but ahead of ExpCmdSN: held until the gap is filled.
    Ahead,
    /// Outside the window or a duplicate: silently dropped (§4.2.2.1).
    Drop,
}

/// What waits in the CmdSN window for ExpCmdSN to reach it (§4.2.2.1).
#[derive(Debug)]
enum Waiting {
    /// The CmdSN is consumed and nothing is left to run (a rejected, aborted
    /// or failed command).
    Nothing,
    /// A SCSI command (by ITT), delivered once in order.
    Task(u32),
    /// A non-immediate NOP-Out, Text, Task Management or Logout request
    /// (header and data), run once in order.
    Request(Box<(Bhs, Vec<u8>)>),
}

/// The values SendTargets takes (RFC 7143 Appendix C): `All`, nothing, or an
/// iSCSI name, which starts with one of the type designators of §4.2.7.2.
fn is_send_targets_value(v: &str) -> bool {
    let name = |prefix: &str| {
        v.len() > prefix.len()
            && v.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    v == "All" || v.is_empty() || name("iqn.") || name("eui.") || name("naa.")
}

/// Serial number arithmetic (RFC 1982), as required for CmdSN (§4.2.2.1).
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// A pending SendTargets answer.
#[derive(Debug)]
struct PendingText {
    itt: u32,
    lun: u64,
    prefix: Vec<u8>,
}

/// A Text Response split over several PDUs (§11.11.2: C bit, TTT).
#[derive(Debug)]
struct TextOut {
    itt: u32,
    lun: u64,
    ttt: u32,
    bytes: Vec<u8>,
    offset: usize,
}

/// One iSCSI connection, target side.
pub struct Connection<B> {
    config: TargetConfig,
    phase: Phase,
    fatal: bool,
    login: LoginState,
    login_started: bool,
    login_req: Option<LoginRequestPdu>,
    login_deadline: Instant,
    params: SessionParams,
    digests_active: (bool, bool),

    stat_sn: u32,
    /// StatSN of the first response not yet handed to the transport: all
    /// before it have been sent.
    sent_stat_sn: u32,
    /// ExpStatSN and PDU size of the latest SCSI Command, and how many came
    /// since [`take_initiator_pace`](Self::take_initiator_pace) last read them.
    latest_command: Option<(u32, u32)>,
    commands_since_pace: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    ahead: HashMap<u32, Waiting>,
    next_ttt: u32,

    tasks: HashMap<u32, Task<B>>,
    events: VecDeque<Event<B>>,
    out: VecDeque<OutPdu>,
    out_offset: usize,
    slots: Vec<Option<B>>,
    free_slots: Vec<usize>,
    free_buffers: VecDeque<B>,

    text_in: TextCollector,
    text_in_ttt: Option<(u32, u32)>,
    pending_send_targets: Option<PendingText>,
    text_out: Option<TextOut>,

    last_rx: Instant,
    last_ping: Instant,
    pings_outstanding: u32,
    ping_ttt: Option<u32>,

    /// The PDU being received has the rest of its data placed directly.
    placement: Option<Placement>,
    /// Input bytes to discard before the next PDU (padding after placed
    /// data, data of a PDU that has no buffer to go to).
    skip: usize,

    stats: ConnectionStats,
}

impl<B> std::fmt::Debug for Connection<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("phase", &self.phase)
            .field("stat_sn", &self.stat_sn)
            .field("exp_cmd_sn", &self.exp_cmd_sn)
            .field("max_cmd_sn", &self.max_cmd_sn)
            .field("tasks", &self.tasks.len())
            .field("queued", &self.out.len())
            .finish()
    }
}

impl<B: DataBuf> Connection<B> {
    pub fn new(config: TargetConfig, now: Instant) -> Self {
        let params = SessionParams::rfc_defaults(&config);
        Connection {
            login: LoginState::new(&config),
            login_deadline: now + config.login_timeout,
            config,
            phase: Phase::Login,
            fatal: false,
            login_started: false,
            login_req: None,
            params,
            digests_active: (false, false),
            stat_sn: 0,
            sent_stat_sn: 0,
            latest_command: None,
            commands_since_pace: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            ahead: HashMap::new(),
            next_ttt: 1,
            tasks: HashMap::new(),
            events: VecDeque::new(),
            out: VecDeque::new(),
            out_offset: 0,
            slots: Vec::new(),
            free_slots: Vec::new(),
            free_buffers: VecDeque::new(),
            text_in: TextCollector::default(),
            text_in_ttt: None,
            pending_send_targets: None,
            text_out: None,
            last_rx: now,
            last_ping: now,
            pings_outstanding: 0,
            ping_ttt: None,
            placement: None,
            skip: 0,
            stats: ConnectionStats::default(),
        }
    }

    /// Operational values in force (RFC defaults until login completes).
    pub fn session_params(&self) -> &SessionParams {
        &self.params
    }

    /// True once the full feature phase is reached (and not yet closing).
    pub fn is_full_feature(&self) -> bool {
        self.phase == Phase::FullFeature
    }

    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// Number of tasks the connection knows (gathering data or running).
    pub fn outstanding_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The initiator's pace as the latest SCSI Command showed it, once per
    /// command: `None` if no command arrived since the last call, or if this
    /// connection is waiting for the peer — during login, while a task still
    /// gathers write data, a CmdSN gap waits to be filled, a text exchange or
    /// a ping waits for its answer. Then the peer's next bytes are awaited
    /// and must be read as soon as they arrive.
    pub fn take_initiator_pace(&mut self) -> Option<InitiatorPace> {
        let (exp_stat_sn, command_bytes) = self.latest_command.take()?;
        let commands = std::mem::take(&mut self.commands_since_pace);
        // ExpStatSN acknowledges our responses (§4.2.2.2): those sent since
        // are answers the initiator had not taken in when it issued its
        // latest command, or has not yet. A value outside what we sent says
        // nothing (a sequence error is not ours to judge here).
        let unacknowledged = self.sent_stat_sn.wrapping_sub(exp_stat_sn);
        let pace = InitiatorPace {
            backlog: if unacknowledged <= self.max_tasks() as u32 {
                unacknowledged
            } else {
                0
            },
            command_bytes,
            commands,
        };
        let waiting = self.phase != Phase::FullFeature
            || !self.ahead.is_empty()
            || self.placement.is_some()
            || self.skip > 0
            || self.text_in_ttt.is_some()
            || self.text_out.is_some()
            || self.pending_send_targets.is_some()
            || self.ping_ttt.is_some()
            || self.tasks.values().any(|t| !t.data_complete);
        if waiting {
            None
        } else {
            Some(pace)
        }
    }

    /// PDUs queued for sending: a driver stops reading from a peer that does
    /// not read its answers when this grows.
    pub fn queued_pdus(&self) -> usize {
        self.out.len()
    }

    /// The data segment limit in force: 8192 during login (the default
    /// MaxRecvDataSegmentLength, §13.12), our declared value afterwards.
    fn data_segment_limit(&self) -> usize {
        match self.phase {
            Phase::Login => LOGIN_DATA_SEGMENT_LIMIT,
            _ => self.config.max_recv_data_segment_length as usize,
        }
    }

    /// Largest PDU the peer may legally send in the current phase (48 + AHS +
    /// max data segment + padding + digests): the driver sizes its receive buffer with it.
    pub fn max_pdu_len(&self) -> usize {
        BHS_LEN + MAX_AHS_LEN + DIGEST_LEN + pad4(self.data_segment_limit()) + DIGEST_LEN
    }

    fn max_tasks(&self) -> usize {
        self.config.queue_depth as usize + 64
    }

    /// Parse every complete PDU at the front of `input` and return how many bytes
    /// were consumed (an incomplete PDU is left for the next call).
    pub fn handle_input(
        &mut self,
        input: &[u8],
        now: Instant,
        alloc: &mut dyn FnMut(usize) -> Option<B>,
    ) -> Result<usize, ConnectionError> {
        if self.fatal {
            return Err(ConnectionError::Closed);
        }
        let mut consumed = 0;
        while self.phase != Phase::Closing {
            let rest = &input[consumed..];
            if self.skip > 0 {
                let n = self.skip.min(rest.len());
                self.skip -= n;
                consumed += n;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            if self.placement.is_some() {
                // The driver gave us the bytes instead of receiving them into
                // `placement_buffer`: copy them there.
                if rest.is_empty() {
                    break;
                }
                if let Some(dst) = self.placement_buffer() {
                    let n = dst.len().min(rest.len());
                    dst[..n].copy_from_slice(&rest[..n]);
                    consumed += n;
                    self.placed(n, now);
                }
                continue;
            }
            let Some(bhs) = Bhs::from_prefix(rest) else {
                // Even a partial first header must look like a Login Request.
                if !self.login_started
                    && !rest.is_empty()
                    && Opcode(rest[0] & 0x3f) != Opcode::LOGIN_REQUEST
                {
                    return Err(self.fail(ConnectionError::LoginExpected(Opcode(rest[0] & 0x3f))));
                }
                break;
            };
            if !self.login_started && bhs.opcode() != Opcode::LOGIN_REQUEST {
                // §6.1: the first PDU must be a Login Request; nothing is buffered.
                return Err(self.fail(ConnectionError::LoginExpected(bhs.opcode())));
            }
            let dsl = bhs.data_segment_len();
            let limit = self.data_segment_limit();
            if dsl > limit {
                let e = ConnectionError::DataSegmentTooLong { len: dsl, limit };
                if self.phase == Phase::FullFeature {
                    self.queue_reject(&bhs, RejectReason::PROTOCOL_ERROR);
                } else if self.login_started {
                    self.queue_login_failure(LoginStatus::INITIATOR_ERROR);
                }
                return Err(self.fail(e));
            }
            let (hd, dd) = self.digests_active;
            let hd_len = if hd { DIGEST_LEN } else { 0 };
            let dd_len = if dd && dsl > 0 { DIGEST_LEN } else { 0 };
            let ahs_len = bhs.total_ahs_len();
            let total = BHS_LEN + ahs_len + hd_len + pad4(dsl) + dd_len;
            if rest.len() < total {
                let header_len = BHS_LEN + ahs_len + hd_len;
                if dd_len == 0
                    && rest.len() >= header_len
                    && total - rest.len() >= PLACEMENT_MIN
                    && self.phase == Phase::FullFeature
                    && self.params.session_type == SessionType::Normal
                    && matches!(bhs.opcode(), Opcode::SCSI_COMMAND | Opcode::SCSI_DATA_OUT)
                {
                    self.start_placement(&bhs, rest, ahs_len, hd, now, alloc)?;
                    consumed = input.len();
                    continue;
                }
                break;
            }
            let mut r = pdu::Reader::new(&rest[..total]);
            let parsed = (|| -> Result<_, pdu::DecodeError> {
                let _ = r.take(BHS_LEN)?;
                let ahs = r.take(ahs_len)?;
                let hdig = if hd { Some(r.array::<4>()?) } else { None };
                let data = r.take(dsl)?;
                let padding = r.take(pad4(dsl) - dsl)?;
                let ddig = if dd_len > 0 {
                    Some(r.array::<4>()?)
                } else {
                    None
                };
                Ok((ahs, hdig, data, padding, ddig))
            })();
            let Ok((ahs, hdig, data, padding, ddig)) = parsed else {
                return Err(self.fail(ConnectionError::Protocol("PDU framing")));
            };
            consumed += total;
            if let Some(d) = hdig {
                // §7.8: a header digest error means the framing cannot be trusted.
                if digest_from(d) != crc32c_of(&[&rest[..BHS_LEN + ahs_len]]) {
                    return Err(self.fail(ConnectionError::HeaderDigest));
                }
            }
            self.last_rx = now;
            self.pings_outstanding = 0;
            self.stats.pdus_in += 1;
            if let Some(d) = ddig {
                if digest_from(d) != crc32c_of(&[data, padding]) {
                    // §7.8 / §11.17.1: Reject with Data-Digest-Error and discard the PDU.
                    self.queue_reject(&bhs, RejectReason::DATA_DIGEST_ERROR);
                    if self.phase == Phase::FullFeature
                        && self.params.session_type == SessionType::Normal
                    {
                        if let InitiatorPdu::DataOut(d) = InitiatorPdu::decode(&bhs) {
                            // A lost data PDU fails its task (§7.8 option b).
                            self.handle_data_out(d, data, false);
                        }
                    }
                    continue;
                }
            }
            if let Err(e) = self.dispatch(&bhs, ahs, data, alloc) {
                return Err(self.fail(e));
            }
        }
        if self.phase == Phase::Closing {
            // Anything after a Logout (or a failed login) is ignored.
            consumed = input.len();
        }
        Ok(consumed)
    }

    /// A large write-data PDU whose header is all of what `rest` holds
    /// besides part of its data: handle the header now, take the data that
    /// is here, and let the rest be received into the task's buffer (the
    /// driver asks [`placement_buffer`](Self::placement_buffer)), or skipped
    /// if it has nowhere to go. Consumes all of `rest`.
    fn start_placement(
        &mut self,
        bhs: &Bhs,
        rest: &[u8],
        ahs_len: usize,
        header_digest: bool,
        now: Instant,
        alloc: &mut dyn FnMut(usize) -> Option<B>,
    ) -> Result<(), ConnectionError> {
        let digested = BHS_LEN + ahs_len;
        let header_len = digested + if header_digest { DIGEST_LEN } else { 0 };
        if header_digest {
            let mut d = [0u8; DIGEST_LEN];
            d.copy_from_slice(&rest[digested..header_len]);
            // §7.8: a header digest error means the framing cannot be trusted.
            if digest_from(d) != crc32c_of(&[&rest[..digested]]) {
                return Err(self.fail(ConnectionError::HeaderDigest));
            }
        }
        let dsl = bhs.data_segment_len();
        let here = &rest[header_len..];
        let pending = Pending {
            bytes: dsl - here.len(),
            pad: pad4(dsl) - dsl,
        };
        self.last_rx = now;
        self.pings_outstanding = 0;
        self.stats.pdus_in += 1;
        match InitiatorPdu::decode(bhs) {
            InitiatorPdu::ScsiCommand(cmd) => {
                let ahs = &rest[BHS_LEN..digested];
                if let Err(e) = self.handle_scsi_command(bhs, cmd, ahs, here, Some(pending), alloc)
                {
                    return Err(self.fail(e));
                }
            }
            InitiatorPdu::DataOut(d) => match self.accept_data_out(&d, dsl as u32, true) {
                DataOutFate::Store { off, closes } if self.store_data(d.itt, off, here, dsl) => {
                    self.placement = Some(Placement {
                        itt: d.itt,
                        off: off + here.len(),
                        remaining: pending.bytes,
                        pad: pending.pad,
                        then: Placed::DataOut {
                            len: dsl as u32,
                            closes,
                        },
                    });
                }
                _ => self.skip += pending.bytes + pending.pad,
            },
            // The caller checked the opcode.
            _ => self.skip += pending.bytes + pending.pad,
        }
        Ok(())
    }

    /// Copy `data` to `off` in task `itt`'s buffer, which must have room for
    /// `total` bytes there. False (nothing copied) if it has not.
    fn store_data(&mut self, itt: u32, off: usize, data: &[u8], total: usize) -> bool {
        let Some(buf) = self.tasks.get_mut(&itt).and_then(|t| t.buffer.as_mut()) else {
            return false;
        };
        match buf.as_mut().get_mut(off..off + total) {
            Some(dst) => {
                dst[..data.len()].copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    /// Where the driver should receive the next input bytes: the part of a
    /// task's buffer that the data of the PDU being received fills, so
    /// write data lands where the store reads it from, with no copy. `None`
    /// when the next bytes are PDU headers (or data small enough to copy):
    /// receive them into the driver's buffer and pass them to
    /// [`handle_input`](Self::handle_input). After receiving `n` bytes here,
    /// call [`placed`](Self::placed).
    pub fn placement_buffer(&mut self) -> Option<&mut [u8]> {
        let p = self.placement.as_ref()?;
        let (itt, range) = (p.itt, p.off..p.off + p.remaining);
        let has_room = self
            .tasks
            .get(&itt)
            .and_then(|t| t.buffer.as_ref())
            .is_some_and(|b| b.as_ref().len() >= range.end);
        if !has_room {
            // The task went away meanwhile (a reset, a failed connection):
            // the rest of its data is read and dropped.
            let p = self.placement.take()?;
            self.skip += p.remaining + p.pad;
            return None;
        }
        self.tasks
            .get_mut(&itt)
            .and_then(|t| t.buffer.as_mut())
            .and_then(|b| b.as_mut().get_mut(range))
    }

    /// `n` bytes were received into [`placement_buffer`](Self::placement_buffer).
    /// When the data is complete the PDU takes effect (the command may be
    /// delivered: poll events).
    pub fn placed(&mut self, n: usize, now: Instant) {
        let Some(p) = self.placement.as_mut() else {
            return;
        };
        let n = n.min(p.remaining);
        p.off += n;
        p.remaining -= n;
        self.last_rx = now;
        if p.remaining > 0 {
            return;
        }
        let Some(p) = self.placement.take() else {
            return;
        };
        self.skip += p.pad;
        match p.then {
            Placed::Command { dsl, final_bit } => {
                if self.immediate_data_received(p.itt, dsl, final_bit) {
                    self.issue_r2ts(p.itt);
                }
                self.try_deliver(p.itt);
            }
            Placed::DataOut { len, closes } => self.data_out_stored(p.itt, len, closes),
        }
    }

    /// Marks the connection dead; tasks' buffers go back to the driver.
    fn fail(&mut self, e: ConnectionError) -> ConnectionError {
        self.fatal = true;
        self.placement = None;
        for (_, mut t) in self.tasks.drain() {
            if let Some(b) = t.buffer.take() {
                self.free_buffers.push_back(b);
            }
        }
        e
    }

    fn dispatch(
        &mut self,
        bhs: &Bhs,
        ahs: &[u8],
        data: &[u8],
        alloc: &mut dyn FnMut(usize) -> Option<B>,
    ) -> Result<(), ConnectionError> {
        let pdu = InitiatorPdu::decode(bhs);
        if self.phase == Phase::Login {
            return match pdu {
                InitiatorPdu::Login(req) => self.handle_login(req, data),
                _ => {
                    self.queue_login_failure(LoginStatus::INVALID_DURING_LOGIN);
                    Err(ConnectionError::InvalidDuringLogin(bhs.opcode()))
                }
            };
        }
        let discovery = self.params.session_type == SessionType::Discovery;
        match pdu {
            InitiatorPdu::ScsiCommand(_)
            | InitiatorPdu::DataOut(_)
            | InitiatorPdu::TaskMgmt(_)
            | InitiatorPdu::Snack(_)
                if discovery =>
            {
                // §4.3 / §6.3: a discovery session only carries Text, NOP and Logout.
                self.queue_reject(bhs, RejectReason::PROTOCOL_ERROR);
                Err(ConnectionError::DiscoverySession(bhs.opcode()))
            }
            InitiatorPdu::ScsiCommand(cmd) => {
                self.handle_scsi_command(bhs, cmd, ahs, data, None, alloc)
            }
            InitiatorPdu::DataOut(d) => {
                self.handle_data_out(d, data, true);
                Ok(())
            }
            InitiatorPdu::NopOut(n) if n.itt == RESERVED_TAG => {
                // §11.18: an answer to our ping (or a ping needing no answer);
                // its CmdSN is not advanced (the I bit is set).
                if n.ttt != RESERVED_TAG && Some(n.ttt) == self.ping_ttt {
                    self.ping_ttt = None;
                }
                Ok(())
            }
            InitiatorPdu::NopOut(NopOutPdu {
                immediate, cmd_sn, ..
            })
            | InitiatorPdu::TaskMgmt(pdu::TaskMgmtPdu {
                immediate, cmd_sn, ..
            })
            | InitiatorPdu::Text(TextRequestPdu {
                immediate, cmd_sn, ..
            })
            | InitiatorPdu::Logout(pdu::LogoutRequestPdu {
                immediate, cmd_sn, ..
            }) => {
                if immediate {
                    // §4.2.2.1: immediate requests are not ordered and carry
                    // the current CmdSN without consuming it.
                    self.run_request(bhs, data);
                    return Ok(());
                }
                match self.check_cmd_sn(cmd_sn) {
                    // §4.2.2.1: outside the window or a duplicate: silently ignored.
                    CmdSnOrder::Drop => {}
                    // Held, with its data, until the gap before it is filled.
                    CmdSnOrder::Ahead => {
                        self.ahead
                            .insert(cmd_sn, Waiting::Request(Box::new((*bhs, data.to_vec()))));
                    }
                    CmdSnOrder::InOrder => {
                        self.run_request(bhs, data);
                        self.drain_ahead();
                    }
                }
                Ok(())
            }
            InitiatorPdu::Snack(_) => {
                // §7.x: SNACK needs ErrorRecoveryLevel > 0; at ERL 0 it is a protocol error.
                self.queue_reject(bhs, RejectReason::PROTOCOL_ERROR);
                Ok(())
            }
            InitiatorPdu::Login(_) => {
                // A Login Request in full feature phase (§6.1).
                self.queue_reject(bhs, RejectReason::PROTOCOL_ERROR);
                Ok(())
            }
            InitiatorPdu::Unknown(_) => {
                self.queue_reject(bhs, RejectReason::COMMAND_NOT_SUPPORTED);
                Ok(())
            }
        }
    }

    // ----- sequence numbers -------------------------------------------------

    /// StatSN/ExpCmdSN/MaxCmdSN for a response; `advance` consumes a StatSN.
    /// MaxCmdSN = ExpCmdSN - 1 + (queue_depth - outstanding), never shrinking
    /// (§4.2.2.1: the window only closes by ExpCmdSN catching up).
    fn sn_fields(&mut self, advance: bool) -> SnFields {
        let room = (self.config.queue_depth as usize).saturating_sub(self.tasks.len()) as u32;
        let candidate = self.exp_cmd_sn.wrapping_sub(1).wrapping_add(room);
        if sn_lt(self.max_cmd_sn, candidate) {
            self.max_cmd_sn = candidate;
        }
        let sn = SnFields {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn,
        };
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        sn
    }

    /// Window check and accounting of a non-immediate request's CmdSN
    /// (§4.2.2.1). A request ahead of ExpCmdSN takes its place in `ahead`
    /// (as `Waiting::Nothing` until the caller says what waits there).
    fn check_cmd_sn(&mut self, cmd_sn: u32) -> CmdSnOrder {
        // Window size: MaxCmdSN - ExpCmdSN + 1; zero when MaxCmdSN = ExpCmdSN - 1
        // (window closed). A size beyond 2**31 cannot be a real window.
        let off = cmd_sn.wrapping_sub(self.exp_cmd_sn);
        let size = self
            .max_cmd_sn
            .wrapping_sub(self.exp_cmd_sn)
            .wrapping_add(1);
        if size > 1 << 31 || off >= size {
            return CmdSnOrder::Drop;
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            CmdSnOrder::InOrder
        } else {
            match self.ahead.entry(cmd_sn) {
                std::collections::hash_map::Entry::Occupied(_) => CmdSnOrder::Drop,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Waiting::Nothing);
                    CmdSnOrder::Ahead
                }
            }
        }
    }

    /// Requests held ahead of ExpCmdSN become in order once the gap is filled:
    /// advance ExpCmdSN over them, deliver commands and run requests in CmdSN
    /// order (§4.2.2.1).
    fn drain_ahead(&mut self) {
        while let Some(waiting) = self.ahead.remove(&self.exp_cmd_sn) {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            match waiting {
                Waiting::Nothing => {}
                Waiting::Task(itt) => {
                    if let Some(t) = self.tasks.get_mut(&itt) {
                        t.ordered = true;
                    }
                    self.try_deliver(itt);
                }
                Waiting::Request(p) => {
                    if self.phase == Phase::FullFeature {
                        self.run_request(&p.0, &p.1);
                    }
                }
            }
        }
    }

    /// Runs a NOP-Out, Text, Task Management or Logout request whose turn has
    /// come (immediate, or in CmdSN order).
    fn run_request(&mut self, bhs: &Bhs, data: &[u8]) {
        match InitiatorPdu::decode(bhs) {
            InitiatorPdu::NopOut(n) => self.handle_nop_out(n, data),
            InitiatorPdu::Text(t) => self.handle_text(bhs, t, data),
            InitiatorPdu::TaskMgmt(t) => {
                self.events.push_back(Event::TaskManagement(TaskManagement {
                    itt: t.itt,
                    function: t.function,
                    lun: t.lun,
                    referenced_itt: t.referenced_task_tag,
                    ref_cmd_sn: t.ref_cmd_sn,
                }));
            }
            InitiatorPdu::Logout(l) => self.handle_logout(l.itt, l.reason_code),
            _ => {}
        }
    }

    /// Logout Request (§11.14): "the target MUST terminate all pending
    /// commands, whether acknowledged via ExpCmdSN or not" (§11.14.1 for close
    /// the session / connection; with one connection per session, all of
    /// them). Tasks still gathering data are dropped here and their buffers
    /// returned; a later `complete_command` for a task already delivered is
    /// ignored and its buffer returned. The Logout Response follows at once.
    fn handle_logout(&mut self, itt: u32, reason: u8) {
        let pending: Vec<u32> = self.tasks.keys().copied().collect();
        for t in pending {
            self.abort_task(t);
        }
        self.pending_send_targets = None;
        self.text_out = None;
        // §11.15.1: 0 success; 2 = connection recovery not supported (ERL 0).
        let response = if reason == 2 { 2 } else { 0 };
        let sn = self.sn_fields(true);
        let h = pdu::encode_logout_response(
            itt,
            response,
            sn,
            self.params.default_time2wait.min(u16::MAX as u32) as u16,
            self.params.default_time2retain.min(u16::MAX as u32) as u16,
        );
        self.queue(h, OutData::None, None);
        self.events.push_back(Event::Logout { reason });
        self.phase = Phase::Closing;
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    // ----- output -----------------------------------------------------------

    /// Queues a PDU: header digest, padding and data digest as negotiated (§11.2).
    fn queue(&mut self, bhs: Bhs, data: OutData, release: Option<usize>) {
        let (hd, dd) = self.digests_active;
        let mut header = [0u8; BHS_LEN + DIGEST_LEN];
        header[..BHS_LEN].copy_from_slice(&bhs.0);
        let mut header_len = BHS_LEN;
        if hd {
            header[BHS_LEN..].copy_from_slice(&digest_bytes(crc32c_of(&[&bhs.0])));
            header_len += DIGEST_LEN;
        }
        let data_slice: &[u8] = match &data {
            OutData::None | OutData::File { .. } => &[],
            OutData::Owned(v) => v,
            OutData::Slot { slot, off, len } => self
                .slots
                .get(*slot)
                .and_then(|s| s.as_ref())
                .and_then(|b| b.as_ref().get(*off..*off + *len))
                .unwrap_or(&[]),
        };
        let dlen = match &data {
            OutData::File { len, .. } => *len,
            _ => data_slice.len(),
        };
        let pad = pad4(dlen) - dlen;
        let mut trailer = [0u8; 3 + DIGEST_LEN];
        let mut trailer_len = pad;
        // File data is only queued without data digests (see
        // `complete_read_from_file`).
        if dd && dlen > 0 {
            let crc = crc32c_of(&[data_slice, &[0u8; 3][..pad]]);
            trailer[pad..pad + DIGEST_LEN].copy_from_slice(&digest_bytes(crc));
            trailer_len += DIGEST_LEN;
        }
        self.stats.pdus_out += 1;
        self.out.push_back(OutPdu {
            header,
            header_len,
            data,
            trailer,
            trailer_len,
            release,
        });
    }

    fn queue_reject(&mut self, bhs: &Bhs, reason: RejectReason) {
        let sn = self.sn_fields(true);
        let h = pdu::encode_reject(reason, sn, 0);
        self.queue(h, OutData::Owned(bhs.0.to_vec()), None);
    }

    fn store_slot(&mut self, b: B) -> usize {
        if let Some(i) = self.free_slots.pop() {
            self.slots[i] = Some(b);
            i
        } else {
            self.slots.push(Some(b));
            self.slots.len() - 1
        }
    }

    fn release_slot(&mut self, slot: usize) {
        if let Some(b) = self.slots.get_mut(slot).and_then(Option::take) {
            self.free_buffers.push_back(b);
            self.free_slots.push(slot);
        }
    }

    fn parts<'a>(slots: &'a [Option<B>], p: &'a OutPdu) -> [Part<'a>; 3] {
        let data = match &p.data {
            OutData::None => Part::Bytes(&[]),
            OutData::Owned(v) => Part::Bytes(v),
            OutData::Slot { slot, off, len } => Part::Bytes(
                slots
                    .get(*slot)
                    .and_then(|s| s.as_ref())
                    .and_then(|b| b.as_ref().get(*off..*off + *len))
                    .unwrap_or(&[]),
            ),
            OutData::File { file, offset, len } => Part::File(file.0.as_fd(), *offset, *len),
        };
        [
            Part::Bytes(&p.header[..p.header_len]),
            data,
            Part::Bytes(&p.trailer[..p.trailer_len]),
        ]
    }

    /// Write queued output to a plain writer (file data is read and
    /// written); see [`transmit`](Self::transmit).
    pub fn write_to(&mut self, w: &mut dyn Write) -> io::Result<usize> {
        self.transmit(&mut Plain(w))
    }

    /// Write queued output with ONE call: a `send_vectored` of up to 64
    /// slices (with `more` when file data comes right after them), or, when
    /// file data is next, a `send_file`. Advance by what was written and
    /// return that count.
    pub fn transmit(&mut self, t: &mut dyn Transmit) -> io::Result<usize> {
        const MAX_SLICES: usize = 64;
        let mut bufs = [IoSlice::new(&[]); MAX_SLICES];
        let mut n = 0;
        let mut skip = self.out_offset;
        let mut file_follows = false;
        let mut file_sent = None;
        'outer: for p in &self.out {
            for part in Self::parts(&self.slots, p) {
                let len = part.len();
                if len == 0 {
                    continue;
                }
                if skip >= len {
                    skip -= len;
                    continue;
                }
                match part {
                    Part::Bytes(bytes) => {
                        if n == MAX_SLICES {
                            break 'outer;
                        }
                        bufs[n] = IoSlice::new(&bytes[skip..]);
                        skip = 0;
                        n += 1;
                    }
                    Part::File(fd, offset, len) if n == 0 => {
                        file_sent = Some(t.send_file(fd, offset + skip as u64, len - skip)?);
                        break 'outer;
                    }
                    Part::File(..) => {
                        file_follows = true;
                        break 'outer;
                    }
                }
            }
        }
        if let Some(written) = file_sent {
            self.advance_output(written);
            return Ok(written);
        }
        if n == 0 {
            return Ok(0);
        }
        let written = t.send_vectored(&bufs[..n], file_follows)?;
        self.advance_output(written);
        Ok(written)
    }

    fn advance_output(&mut self, written: usize) {
        self.advance_output_queue(written);
        if self.out.is_empty() {
            self.sent_stat_sn = self.stat_sn;
        }
    }

    fn advance_output_queue(&mut self, mut written: usize) {
        while let Some(front) = self.out.front() {
            let total: usize = Self::parts(&self.slots, front).iter().map(Part::len).sum();
            let left = total - self.out_offset;
            if written < left {
                self.out_offset += written;
                return;
            }
            written -= left;
            self.out_offset = 0;
            if let Some(p) = self.out.pop_front() {
                if let Some(slot) = p.release {
                    self.release_slot(slot);
                }
            }
        }
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// True once the connection is finished (logout answered and flushed, login
    /// rejected and flushed, or fatal error): the driver closes the socket.
    pub fn is_closed(&self) -> bool {
        self.fatal || (self.phase == Phase::Closing && self.out.is_empty())
    }

    /// Drops all queued output and hands every buffer back through
    /// `poll_free_buffer` (the driver is tearing the connection down).
    pub fn shutdown(&mut self) {
        self.fatal = true;
        self.out.clear();
        self.out_offset = 0;
        for i in 0..self.slots.len() {
            self.release_slot(i);
        }
        for (_, mut t) in self.tasks.drain() {
            if let Some(b) = t.buffer.take() {
                self.free_buffers.push_back(b);
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<Event<B>> {
        self.events.pop_front()
    }

    /// Buffers the connection is done with: the driver recycles them.
    pub fn poll_free_buffer(&mut self) -> Option<B> {
        self.free_buffers.pop_front()
    }

    // ----- timers -----------------------------------------------------------

    /// Earliest instant `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        match self.phase {
            Phase::Login => Some(self.login_deadline),
            Phase::FullFeature => self.config.nop_interval.map(|i| {
                if self.pings_outstanding == 0 {
                    self.last_rx + i
                } else {
                    self.last_ping + i
                }
            }),
            Phase::Closing => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnectionError> {
        if self.fatal {
            return Err(ConnectionError::Closed);
        }
        match self.phase {
            Phase::Login => {
                if now >= self.login_deadline {
                    return Err(self.fail(ConnectionError::LoginTimeout(self.config.login_timeout)));
                }
            }
            Phase::FullFeature => {
                let Some(deadline) = self.poll_timeout() else {
                    return Ok(());
                };
                if now < deadline {
                    return Ok(());
                }
                if self.pings_outstanding >= self.config.nop_count {
                    return Err(self.fail(ConnectionError::NopTimeout(self.pings_outstanding)));
                }
                // §11.19: an unsolicited NOP-In (ITT reserved, a TTT) asks for a NOP-Out;
                // StatSN is not advanced.
                let ttt = self.alloc_ttt();
                self.ping_ttt = Some(ttt);
                let sn = self.sn_fields(false);
                let h = pdu::encode_nop_in(0, RESERVED_TAG, ttt, 0, sn);
                self.queue(h, OutData::None, None);
                self.pings_outstanding += 1;
                self.last_ping = now;
            }
            Phase::Closing => {}
        }
        Ok(())
    }

    // ----- login ------------------------------------------------------------

    fn handle_login(&mut self, req: LoginRequestPdu, data: &[u8]) -> Result<(), ConnectionError> {
        if !self.login_started {
            // §11.13: StatSN starts at the initiator's ExpStatSN (as tgt does);
            // CmdSN of the first Login Request is the session's initial CmdSN.
            self.login_started = true;
            self.stat_sn = req.exp_stat_sn;
            self.exp_cmd_sn = req.cmd_sn;
            self.max_cmd_sn = req
                .cmd_sn
                .wrapping_add(self.config.queue_depth.max(1))
                .wrapping_sub(1);
        }
        let step = self.login.handle_request(&req, data);
        self.login_req = Some(req);
        self.apply_login_step(step)
    }

    fn apply_login_step(&mut self, step: LoginStep) -> Result<(), ConnectionError> {
        match step {
            LoginStep::NeedDecision(info) => {
                self.events.push_back(Event::Login(info));
                Ok(())
            }
            LoginStep::Fail(status) => {
                self.queue_login_failure(status);
                Err(ConnectionError::LoginFailed(status))
            }
            LoginStep::AuthFail(f) => {
                let initiator_name = self
                    .login
                    .info()
                    .map_or_else(String::new, |i| i.initiator_name.clone());
                self.events.push_back(Event::AuthenticationFailed {
                    initiator_name,
                    user: f.user,
                    reason: f.reason,
                });
                let status = LoginStatus::AUTHENTICATION_FAILURE;
                self.queue_login_failure(status);
                Err(ConnectionError::LoginFailed(status))
            }
            LoginStep::Reply(r) => {
                let Some(req) = self.login_req.clone() else {
                    return Err(ConnectionError::Protocol("login reply without request"));
                };
                let resp = LoginResponse {
                    transit: r.transit,
                    continue_bit: false,
                    csg: r.csg.0,
                    nsg: r.nsg.0,
                    version_max: 0,
                    version_active: 0,
                    isid: req.isid,
                    tsih: r.tsih,
                    itt: req.itt,
                    status: r.status.0,
                    data_len: r.text.len(),
                };
                let sn = self.sn_fields(true);
                let h = pdu::encode_login_response(&resp, sn);
                self.queue(h, OutData::Owned(r.text), None);
                if let Some(params) = r.full_feature {
                    self.params = params.clone();
                    self.phase = Phase::FullFeature;
                    // §11.2.4 (§13.1): digests start with the first PDU after the final Login Response.
                    self.digests_active = (params.header_digest, params.data_digest);
                    self.events.push_back(Event::FullFeature(params));
                }
                Ok(())
            }
        }
    }

    /// Queues a failing Login Response; the connection closes once it is flushed.
    fn queue_login_failure(&mut self, status: LoginStatus) {
        let (isid, itt) = self
            .login_req
            .as_ref()
            .map_or(([0; 6], 0), |r| (r.isid, r.itt));
        let resp = LoginResponse {
            isid,
            itt,
            status: status.0,
            ..Default::default()
        };
        let sn = self.sn_fields(true);
        let h = pdu::encode_login_response(&resp, sn);
        self.queue(h, OutData::None, None);
        self.phase = Phase::Closing;
    }

    /// The NOP-In pings of the target this connection logs in to (tgt's
    /// per-target nop_interval / nop_count), in place of the defaults it was
    /// created with: every `interval` of silence a ping (§11.19), and the
    /// connection fails after `count` of them go unanswered.
    pub fn set_nop(&mut self, interval: Option<Duration>, count: u32) {
        self.config.nop_interval = interval;
        self.config.nop_count = count;
    }

    /// The target's acceptance of `Event::Login`.
    pub fn accept_login(&mut self, accept: LoginAccept) {
        if self.phase != Phase::Login {
            return;
        }
        if let Some(step) = self.login.accept(accept) {
            // A failure here queues its Login Response and closes after flushing.
            let _ = self.apply_login_step(step);
        }
    }

    /// Queue the failing Login Response, then closed.
    pub fn reject_login(&mut self, status: LoginStatus) {
        if self.phase != Phase::Login {
            return;
        }
        self.login.reject();
        let status = if status.is_success() {
            LoginStatus::TARGET_ERROR
        } else {
            status
        };
        self.queue_login_failure(status);
    }

    // ----- SCSI commands and data -------------------------------------------

    fn handle_scsi_command(
        &mut self,
        bhs: &Bhs,
        cmd: ScsiCommandPdu,
        ahs: &[u8],
        data: &[u8],
        pending: Option<Pending>,
        alloc: &mut dyn FnMut(usize) -> Option<B>,
    ) -> Result<(), ConnectionError> {
        // Unless the data still to come is placed into the task's buffer
        // below, it is skipped.
        if let Some(p) = pending {
            self.skip += p.bytes + p.pad;
        }
        let (hd, dd) = self.digests_active;
        let data_len = pad4(data.len() + pending.map_or(0, |p| p.bytes));
        let wire_len = BHS_LEN
            + ahs.len()
            + if hd { DIGEST_LEN } else { 0 }
            + data_len
            + if dd && data_len > 0 { DIGEST_LEN } else { 0 };
        self.latest_command = Some((cmd.exp_stat_sn, wire_len as u32));
        self.commands_since_pace = self.commands_since_pace.saturating_add(1);
        let order = if cmd.immediate {
            CmdSnOrder::InOrder
        } else {
            self.check_cmd_sn(cmd.cmd_sn)
        };
        if order == CmdSnOrder::Drop {
            // §4.2.2.1: outside the window: silently ignored.
            return Ok(());
        }
        let edtl = cmd.expected_data_transfer_length;
        let dsl = (data.len() + pending.map_or(0, |p| p.bytes)) as u32;
        let reason = match pdu::parse_command_ahs(ahs) {
            Err(_) => Some(RejectReason::INVALID_PDU_FIELD),
            Ok(a) if a.ext_cdb_len > 16 => Some(RejectReason::INVALID_PDU_FIELD),
            Ok(_) if cmd.itt == RESERVED_TAG => Some(RejectReason::INVALID_PDU_FIELD),
            Ok(_) if self.tasks.contains_key(&cmd.itt) => Some(RejectReason::TASK_IN_PROGRESS),
            // §11.3.5 / §13.11: immediate data only with W, ImmediateData=Yes,
            // and no more than FirstBurstLength and EDTL.
            Ok(_) if dsl > 0 && (!cmd.write || !self.params.immediate_data) => {
                Some(RejectReason::PROTOCOL_ERROR)
            }
            Ok(_) if dsl > edtl || dsl > self.params.first_burst_length => {
                Some(RejectReason::PROTOCOL_ERROR)
            }
            // §13.10: unsolicited Data-Out needs InitialR2T=No.
            Ok(_) if cmd.write && !cmd.final_bit && self.params.initial_r2t => {
                Some(RejectReason::PROTOCOL_ERROR)
            }
            Ok(_) if self.tasks.len() >= self.max_tasks() => Some(if cmd.immediate {
                RejectReason::IMMEDIATE_COMMAND_REJECT
            } else {
                RejectReason::PROTOCOL_ERROR
            }),
            Ok(_) => None,
        };
        if let Some(reason) = reason {
            // The CmdSN stays consumed (accounted above); the initiator sees the Reject.
            self.queue_reject(bhs, reason);
            self.drain_ahead();
            return Ok(());
        }
        let ext = pdu::parse_command_ahs(ahs).unwrap_or_default();
        self.stats.commands += 1;
        let mut task = Task {
            itt: cmd.itt,
            lun: cmd.lun,
            cdb: cmd.cdb,
            cdb_len: 16 + ext.ext_cdb_len,
            ext_cdb: ext.ext_cdb,
            edtl,
            read: cmd.read,
            write: cmd.write,
            attr: cmd.attr,
            cmd_sn: cmd.cmd_sn,
            buffer: None,
            ordered: order == CmdSnOrder::InOrder,
            data_complete: true,
            delivered: false,
            received: 0,
            unsol_active: false,
            unsol_next: 0,
            unsol_end: 0,
            unsol_data_sn: 0,
            r2t_next_offset: 0,
            r2t_sn: 0,
            r2ts: Vec::new(),
            failed: None,
        };
        let mut buffered = false;
        if cmd.write && edtl > 0 {
            let buffer = if edtl <= self.config.max_data_transfer {
                match alloc(edtl as usize) {
                    Some(b) if b.as_ref().len() >= edtl as usize => Some(b),
                    Some(b) => {
                        self.free_buffers.push_back(b);
                        None
                    }
                    None => None,
                }
            } else {
                None
            };
            if let Some(mut b) = buffer {
                if let Some(dst) = b.as_mut().get_mut(..data.len()) {
                    dst.copy_from_slice(data);
                }
                task.buffer = Some(b);
                // Not deliverable before its data is accounted below.
                task.data_complete = false;
                buffered = true;
            }
            // Not buffered: delivered at once with data None; its Data-Out
            // (and immediate data still to come) is discarded.
        }
        let itt = cmd.itt;
        self.tasks.insert(itt, task);
        if order == CmdSnOrder::Ahead {
            self.ahead.insert(cmd.cmd_sn, Waiting::Task(itt));
        }
        match pending {
            Some(p) if buffered => {
                // The rest of the immediate data goes straight into the buffer.
                self.skip -= p.bytes + p.pad;
                self.placement = Some(Placement {
                    itt,
                    off: data.len(),
                    remaining: p.bytes,
                    pad: p.pad,
                    then: Placed::Command {
                        dsl,
                        final_bit: cmd.final_bit,
                    },
                });
            }
            _ => {
                if buffered && self.immediate_data_received(itt, dsl, cmd.final_bit) {
                    self.issue_r2ts(itt);
                }
                self.try_deliver(itt);
            }
        }
        self.drain_ahead();
        Ok(())
    }

    /// A buffered write task's immediate data (`dsl` bytes) is in its buffer:
    /// account it and say whether R2Ts must ask for the rest. Otherwise the
    /// task is complete, or unsolicited Data-Out follows up to
    /// FirstBurstLength (§4.2.5.2).
    fn immediate_data_received(&mut self, itt: u32, dsl: u32, final_bit: bool) -> bool {
        let first_burst = self.params.first_burst_length;
        let Some(task) = self.tasks.get_mut(&itt) else {
            return false;
        };
        self.stats.write_bytes += u64::from(dsl);
        task.received = dsl;
        task.r2t_next_offset = dsl;
        task.data_complete = dsl == task.edtl;
        if task.data_complete {
            return false;
        }
        let unsol_end = first_burst.min(task.edtl);
        if !final_bit && dsl < unsol_end {
            task.unsol_active = true;
            task.unsol_next = dsl;
            task.unsol_end = unsol_end;
            false
        } else {
            true
        }
    }

    /// Sends R2Ts for the rest of a task's data, each at most MaxBurstLength,
    /// at most MaxOutstandingR2T at a time (§11.8, §13.13, §13.17).
    fn issue_r2ts(&mut self, itt: u32) {
        let max_out = self.params.max_outstanding_r2t.max(1) as usize;
        let burst = self.params.max_burst_length.max(1);
        loop {
            let Some(t) = self.tasks.get(&itt) else {
                return;
            };
            if t.r2ts.len() >= max_out || t.r2t_next_offset >= t.edtl {
                return;
            }
            let ttt = self.alloc_ttt();
            let sn = self.sn_fields(false);
            let Some(t) = self.tasks.get_mut(&itt) else {
                return;
            };
            let off = t.r2t_next_offset;
            let len = burst.min(t.edtl - off);
            let r2t_sn = t.r2t_sn;
            t.r2t_sn = t.r2t_sn.wrapping_add(1);
            t.r2t_next_offset += len;
            t.r2ts.push(R2tState {
                ttt,
                offset: off,
                len,
                received: 0,
                next_data_sn: 0,
            });
            let h = pdu::encode_r2t(t.lun, itt, ttt, sn, r2t_sn, off, len);
            self.queue(h, OutData::None, None);
        }
    }

    fn try_deliver(&mut self, itt: u32) {
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        if !t.ordered || !t.data_complete || t.delivered {
            return;
        }
        t.delivered = true;
        t.r2ts.clear();
        let cmd = ScsiCommand {
            itt: t.itt,
            lun: t.lun,
            cdb: t.cdb,
            cdb_len: t.cdb_len,
            ext_cdb: t.ext_cdb,
            expected_len: t.edtl,
            read: t.read,
            write: t.write,
            attr: t.attr,
            cmd_sn: t.cmd_sn,
            data: t.buffer.take(),
        };
        self.events.push_back(Event::Command(cmd));
    }

    /// A Data-Out PDU (§11.7). `digest_ok` is false when its data digest
    /// failed: the PDU was rejected and its data is not used, but its header
    /// still closes the sequence it belongs to.
    ///
    /// Nothing here closes the connection: at ERL 0 a Data-Out that is out of
    /// sequence or lost to a digest error fails its task (§7.8 option b, §7.9),
    /// and the task's status goes out once every sequence it has open has been
    /// closed with the F bit.
    fn handle_data_out(&mut self, d: DataOutPdu, data: &[u8], digest_ok: bool) {
        let len = data.len() as u32;
        if let DataOutFate::Store { off, closes } = self.accept_data_out(&d, len, digest_ok) {
            self.store_data(d.itt, off, data, data.len());
            self.data_out_stored(d.itt, len, closes);
        }
    }

    /// The checks and sequence accounting of a Data-Out of `len` bytes, from
    /// its header alone: where its data goes, if anywhere.
    fn accept_data_out(&mut self, d: &DataOutPdu, len: u32, digest_ok: bool) -> DataOutFate {
        let Some(t) = self.tasks.get_mut(&d.itt) else {
            // Aborted, completed or never instantiated: discard (§11.7).
            return DataOutFate::Discard;
        };
        if t.delivered || (t.buffer.is_none() && t.failed.is_none()) {
            // Unbufferable write (delivered without data): discard.
            return DataOutFate::Discard;
        }
        let end = u64::from(d.buffer_offset) + u64::from(len);
        let mut error = if digest_ok {
            None
        } else {
            // §7.8: a discarded data PDU fails the task (no recovery R2T at ERL 0).
            Some(DataError::ProtocolServiceCrc)
        };
        let mut closes = false;
        if d.ttt == RESERVED_TAG {
            // Unsolicited data (§4.2.5.2): in order, within FirstBurstLength.
            if !t.unsol_active {
                // InitialR2T=Yes, or after the unsolicited sequence ended.
                error.get_or_insert(DataError::UnexpectedUnsolicited);
            } else {
                closes = d.final_bit || end >= u64::from(t.unsol_end);
                if error.is_none() && t.failed.is_none() {
                    if d.data_sn != t.unsol_data_sn {
                        // §7.9: a DataSN gap means an earlier PDU was lost.
                        error = Some(DataError::ProtocolServiceCrc);
                    } else if d.buffer_offset != t.unsol_next || end > u64::from(t.unsol_end) {
                        // DataPDUInOrder=Yes (§13.18): no gaps, no overlays.
                        error = Some(DataError::IncorrectAmount);
                    }
                }
                if closes {
                    t.unsol_active = false;
                }
            }
        } else {
            // Solicited data (§11.7): the TTT of an outstanding R2T, DataSN and
            // offsets in order within its sequence (DataPDUInOrder=Yes).
            match t.r2ts.iter().position(|r| r.ttt == d.ttt) {
                None => {
                    error.get_or_insert(DataError::InvalidTtt);
                }
                Some(i) => {
                    let r = &t.r2ts[i];
                    let r_end = u64::from(r.offset) + u64::from(r.len);
                    closes = d.final_bit || end >= r_end;
                    if error.is_none() && t.failed.is_none() {
                        if d.data_sn != r.next_data_sn {
                            error = Some(DataError::ProtocolServiceCrc);
                        } else if u64::from(d.buffer_offset)
                            != u64::from(r.offset) + u64::from(r.received)
                            || end > r_end
                            || (d.final_bit && end != r_end)
                        {
                            error = Some(DataError::IncorrectAmount);
                        }
                    }
                    if closes {
                        t.r2ts.swap_remove(i);
                    }
                }
            }
        }
        if let Some(e) = error {
            t.failed.get_or_insert(e);
        }
        if t.failed.is_some() {
            // Nothing of a failed task is stored; no further R2T is sent.
            if !t.unsol_active && t.r2ts.is_empty() {
                self.fail_task(d.itt);
            }
            return DataOutFate::Discard;
        }
        // In sequence: account and store (all offsets were checked above).
        if d.ttt == RESERVED_TAG {
            t.unsol_next += len;
            t.unsol_data_sn = t.unsol_data_sn.wrapping_add(1);
            if closes {
                t.r2t_next_offset = t.unsol_next;
            }
        } else if !closes {
            if let Some(r) = t.r2ts.iter_mut().find(|r| r.ttt == d.ttt) {
                r.received += len;
                r.next_data_sn = r.next_data_sn.wrapping_add(1);
            }
        }
        DataOutFate::Store {
            off: d.buffer_offset as usize,
            closes,
        }
    }

    /// A Data-Out's `len` bytes are in task `itt`'s buffer: deliver the task
    /// if that was the last of its data, or ask for more once the sequence
    /// `closes`.
    fn data_out_stored(&mut self, itt: u32, len: u32, closes: bool) {
        let Some(t) = self.tasks.get_mut(&itt) else {
            return;
        };
        t.received += len;
        self.stats.write_bytes += u64::from(len);
        if t.received >= t.edtl {
            t.data_complete = true;
            self.try_deliver(itt);
        } else if closes {
            self.issue_r2ts(itt);
        }
    }

    /// Ends a task whose write data failed: CHECK CONDITION with the iSCSI
    /// condition's sense data (§11.4.7.2), its buffer back to the driver. The
    /// command never reaches the target.
    fn fail_task(&mut self, itt: u32) {
        let Some(t) = self.tasks.get(&itt) else {
            return;
        };
        let Some(e) = t.failed else {
            return;
        };
        if !t.ordered {
            // Keep the CmdSN accounted, but not linked to a forgotten task.
            if let Some(v) = self.ahead.get_mut(&t.cmd_sn) {
                *v = Waiting::Nothing;
            }
        }
        self.complete_command(
            itt,
            CommandResponse {
                status: CHECK_CONDITION,
                sense: e.sense().to_vec(),
                data: None,
                data_len: 0,
                residual: Residual::None,
            },
        );
    }

    /// The target's completion of a command: Data-In and/or SCSI Response.
    pub fn complete_command(&mut self, itt: u32, response: CommandResponse<B>) {
        self.complete(itt, response, None);
    }

    /// Whether Data-In may come from a file
    /// ([`complete_read_from_file`](Self::complete_read_from_file)): not with
    /// a data digest, which needs the bytes.
    pub fn can_send_files(&self) -> bool {
        !self.digests_active.1
    }

    /// Like [`complete_command`](Self::complete_command) for a read whose
    /// first `response.data_len` bytes are `file`'s from `offset`: they go
    /// out with sendfile(2) through [`transmit`](Self::transmit). Only when
    /// [`can_send_files`](Self::can_send_files); otherwise the command ends
    /// with CHECK CONDITION, HARDWARE ERROR / INTERNAL TARGET FAILURE.
    pub fn complete_read_from_file(
        &mut self,
        itt: u32,
        mut response: CommandResponse<B>,
        file: FileData,
        offset: u64,
    ) {
        if !self.can_send_files() {
            // HARDWARE ERROR, INTERNAL TARGET FAILURE.
            response.status = CHECK_CONDITION;
            response.sense = fixed_sense(0x04, 0x44, 0x00).to_vec();
            response.data_len = 0;
            return self.complete(itt, response, None);
        }
        self.complete(itt, response, Some((FileRef(file), offset)));
    }

    fn complete(&mut self, itt: u32, response: CommandResponse<B>, file: Option<(FileRef, u64)>) {
        let Some(mut task) = self.tasks.remove(&itt) else {
            if let Some(b) = response.data {
                self.free_buffers.push_back(b);
            }
            return;
        };
        if let Some(b) = task.buffer.take() {
            self.free_buffers.push_back(b);
        }
        if self.phase != Phase::FullFeature {
            if let Some(b) = response.data {
                self.free_buffers.push_back(b);
            }
            return;
        }
        let (res_flags, res_count) = match response.residual {
            Residual::None => (0, 0),
            Residual::Underflow(n) => (pdu::FLAG_RESIDUAL_UNDERFLOW, n),
            Residual::Overflow(n) => (pdu::FLAG_RESIDUAL_OVERFLOW, n),
        };
        let collapse = response.sense.is_empty();
        let mut data_sn = 0u32;
        let mut status_sent = false;
        enum Source {
            Slot(usize),
            File(FileRef, u64),
        }
        let edtl = task.edtl as usize;
        let source = match (response.data, file) {
            (Some(buf), _) if !task.read => {
                self.free_buffers.push_back(buf);
                None
            }
            (Some(buf), _) => {
                let len = response.data_len.min(buf.as_ref().len()).min(edtl);
                if len == 0 {
                    self.free_buffers.push_back(buf);
                    None
                } else {
                    Some((Source::Slot(self.store_slot(buf)), len))
                }
            }
            (None, Some((file, offset))) if task.read && response.data_len.min(edtl) > 0 => {
                Some((Source::File(file, offset), response.data_len.min(edtl)))
            }
            (None, _) => None,
        };
        if let Some((source, data_len)) = source {
            self.stats.read_bytes += data_len as u64;
            let mrdsl = (self.params.initiator_max_recv_data_segment_length as usize).max(512);
            let burst = (self.params.max_burst_length as usize).max(512);
            let mut off = 0;
            while off < data_len {
                let burst_left = burst - off % burst;
                let chunk = mrdsl.min(burst_left).min(data_len - off);
                let last = off + chunk == data_len;
                let status = if last && collapse {
                    Some(response.status)
                } else {
                    None
                };
                let sn = self.sn_fields(status.is_some());
                let di = DataIn {
                    final_bit: last || chunk == burst_left,
                    status,
                    residual_flags: res_flags,
                    residual: res_count,
                    lun: task.lun,
                    itt,
                    data_sn,
                    buffer_offset: off as u32,
                    data_len: chunk,
                };
                let h = pdu::encode_data_in(&di, sn);
                let (data, release) = match &source {
                    Source::Slot(slot) => (
                        OutData::Slot {
                            slot: *slot,
                            off,
                            len: chunk,
                        },
                        if last { Some(*slot) } else { None },
                    ),
                    Source::File(file, base) => (
                        OutData::File {
                            file: file.clone(),
                            offset: base + off as u64,
                            len: chunk,
                        },
                        None,
                    ),
                };
                self.queue(h, data, release);
                data_sn = data_sn.wrapping_add(1);
                off += chunk;
            }
            status_sent = collapse;
        }
        if !status_sent {
            let mut payload = Vec::new();
            if !response.sense.is_empty() {
                // §11.4.7: SenseLength (2 bytes) then the sense data.
                let n = response.sense.len().min(u16::MAX as usize - 2);
                payload.extend_from_slice(&(n as u16).to_be_bytes());
                payload.extend_from_slice(&response.sense[..n]);
            }
            let exp_data_sn = if task.read { data_sn } else { task.r2t_sn };
            let sn = self.sn_fields(true);
            let h = pdu::encode_scsi_response(
                itt,
                res_flags,
                response.status,
                payload.len(),
                sn,
                exp_data_sn,
                res_count,
            );
            let data = if payload.is_empty() {
                OutData::None
            } else {
                OutData::Owned(payload)
            };
            self.queue(h, data, None);
        }
    }

    /// Forget a task (ABORT TASK etc.): drop its R2T state; its buffer comes back
    /// through `poll_free_buffer`; a later `complete_command` for it is ignored.
    ///
    /// Returns whether the task was still outstanding: a task whose response
    /// was already queued (or that never arrived) does not exist any more, which
    /// ABORT TASK reports as "Task does not exist" (RFC 7143 §11.6.1).
    pub fn abort_task(&mut self, itt: u32) -> bool {
        let Some(mut t) = self.tasks.remove(&itt) else {
            return false;
        };
        if let Some(b) = t.buffer.take() {
            self.free_buffers.push_back(b);
        }
        if !t.ordered {
            // Keep the CmdSN accounted, but not linked to a forgotten task.
            if let Some(v) = self.ahead.get_mut(&t.cmd_sn) {
                *v = Waiting::Nothing;
            }
        }
        true
    }

    /// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET (SAM-5 §7): forget
    /// every outstanding task of this connection addressed to the wire LUN
    /// `lun` (every task when `None`). Their responses are never sent; their
    /// buffers come back through `poll_free_buffer`. Returns how many.
    pub fn abort_tasks(&mut self, lun: Option<u64>) -> usize {
        let itts: Vec<u32> = self
            .tasks
            .values()
            .filter(|t| lun.is_none_or(|l| t.lun == l))
            .map(|t| t.itt)
            .collect();
        itts.into_iter().filter(|&itt| self.abort_task(itt)).count()
    }

    /// Task Management Function Response (§11.6.1: 0 complete, 1 task does not
    /// exist, 2 LUN does not exist, 5 not supported, 255 rejected).
    pub fn task_management_response(&mut self, itt: u32, response: u8) {
        if self.phase != Phase::FullFeature {
            return;
        }
        let sn = self.sn_fields(true);
        let h = pdu::encode_tmf_response(itt, response, sn);
        self.queue(h, OutData::None, None);
    }

    // ----- NOP, Text ---------------------------------------------------------

    /// A NOP-Out ping (ITT not reserved) whose turn has come.
    fn handle_nop_out(&mut self, n: NopOutPdu, data: &[u8]) {
        // §11.19: echo the ping data, within the initiator's MaxRecvDataSegmentLength.
        let max = self.params.initiator_max_recv_data_segment_length as usize;
        let echo = &data[..data.len().min(max)];
        let sn = self.sn_fields(true);
        let h = pdu::encode_nop_in(n.lun, n.itt, RESERVED_TAG, echo.len(), sn);
        let d = if echo.is_empty() {
            OutData::None
        } else {
            OutData::Owned(echo.to_vec())
        };
        self.queue(h, d, None);
    }

    /// A Text Request whose turn has come.
    fn handle_text(&mut self, bhs: &Bhs, t: TextRequestPdu, data: &[u8]) {
        if t.ttt != RESERVED_TAG {
            // Continuation of our long response (§11.11.2).
            if let Some(o) = &self.text_out {
                if o.itt == t.itt && o.ttt == t.ttt {
                    self.send_text_chunk();
                    return;
                }
            }
            // Continuation of the initiator's long request.
            if self.text_in_ttt != Some((t.itt, t.ttt)) {
                self.queue_reject(bhs, RejectReason::INVALID_PDU_FIELD);
                return;
            }
        } else {
            // A new request resets any text exchange in progress (§11.10.4).
            self.text_in.clear();
            self.text_out = None;
        }
        self.text_in_ttt = None;
        if self.text_in.push(data).is_err() {
            self.text_in.clear();
            self.queue_reject(bhs, RejectReason::PROTOCOL_ERROR);
            return;
        }
        if t.continue_bit {
            // §11.10.2: acknowledge with an empty response carrying a TTT.
            let ttt = self.alloc_ttt();
            self.text_in_ttt = Some((t.itt, ttt));
            let sn = self.sn_fields(true);
            let h = pdu::encode_text_response(false, false, t.lun, t.itt, ttt, 0, sn);
            self.queue(h, OutData::None, None);
            return;
        }
        let Ok(pairs) = text::parse(&self.text_in.take()) else {
            self.queue_reject(bhs, RejectReason::PROTOCOL_ERROR);
            return;
        };
        if pairs
            .iter()
            .any(|kv| kv.key == "SendTargets" && !is_send_targets_value(&kv.value))
        {
            // A SendTargets value that is neither All, nothing, nor an iSCSI
            // name (e.g. "Alle"): the request is malformed, so it is rejected
            // whole and none of its keys takes effect (§11.17.1).
            self.queue_reject(bhs, RejectReason::INVALID_PDU_FIELD);
            return;
        }
        let mut out = Vec::new();
        let mut scope = None;
        for kv in &pairs {
            match kv.key.as_str() {
                "SendTargets" if scope.is_none() => {
                    scope = Some(match kv.value.as_str() {
                        "All" => SendTargetsScope::All,
                        "" if self.params.session_type == SessionType::Discovery => {
                            SendTargetsScope::All
                        }
                        "" => SendTargetsScope::Session,
                        name => SendTargetsScope::Target(name.to_string()),
                    });
                }
                "MaxRecvDataSegmentLength" => {
                    // §13.12: declarative, may be re-declared in full feature phase.
                    if let Some(n) = crate::params::parse_number(&kv.value) {
                        if (u64::from(crate::params::MIN_LENGTH)
                            ..=u64::from(crate::params::MAX_LENGTH))
                            .contains(&n)
                        {
                            self.params.initiator_max_recv_data_segment_length = n as u32;
                        }
                    }
                    text::encode_pair(
                        &mut out,
                        "MaxRecvDataSegmentLength",
                        &self.config.max_recv_data_segment_length.to_string(),
                    );
                }
                // Login-only keys (§13: "Use: LO/IO") cannot be renegotiated here.
                "HeaderDigest"
                | "DataDigest"
                | "MaxConnections"
                | "InitialR2T"
                | "ImmediateData"
                | "MaxBurstLength"
                | "FirstBurstLength"
                | "DefaultTime2Wait"
                | "DefaultTime2Retain"
                | "MaxOutstandingR2T"
                | "DataPDUInOrder"
                | "DataSequenceInOrder"
                | "ErrorRecoveryLevel"
                | "SessionType"
                | "InitiatorName"
                | "TargetName"
                | "AuthMethod" => text::encode_pair(&mut out, &kv.key, REJECT),
                _ => text::encode_pair(&mut out, &kv.key, NOT_UNDERSTOOD),
            }
        }
        match scope {
            Some(s) => {
                self.pending_send_targets = Some(PendingText {
                    itt: t.itt,
                    lun: t.lun,
                    prefix: out,
                });
                self.events.push_back(Event::SendTargets(s));
            }
            None => self.start_text_response(t.itt, t.lun, out),
        }
    }

    /// Targets visible to this initiator: (TargetName, ["ADDR:PORT,TPGT", ...]),
    /// encoded as TargetName=/TargetAddress= pairs (§13.3, Appendix C), continued
    /// over several Text Responses if larger than the initiator's MaxRecvDataSegmentLength.
    pub fn send_targets_response(&mut self, targets: &[(String, Vec<String>)]) {
        let Some(p) = self.pending_send_targets.take() else {
            return;
        };
        let mut out = p.prefix;
        for (name, addrs) in targets {
            text::encode_pair(&mut out, "TargetName", name);
            for a in addrs {
                text::encode_pair(&mut out, "TargetAddress", a);
            }
        }
        self.start_text_response(p.itt, p.lun, out);
    }

    fn start_text_response(&mut self, itt: u32, lun: u64, bytes: Vec<u8>) {
        let ttt = self.alloc_ttt();
        self.text_out = Some(TextOut {
            itt,
            lun,
            ttt,
            bytes,
            offset: 0,
        });
        self.send_text_chunk();
    }

    /// Sends the next piece of a Text Response: F=1 on the last piece, C=1 and
    /// a TTT on the others (§11.11.1, §11.11.2).
    fn send_text_chunk(&mut self) {
        let Some(mut o) = self.text_out.take() else {
            return;
        };
        let max = (self.params.initiator_max_recv_data_segment_length as usize).max(512);
        let end = (o.offset + max).min(o.bytes.len());
        let chunk = o.bytes.get(o.offset..end).unwrap_or(&[]).to_vec();
        let last = end >= o.bytes.len();
        let sn = self.sn_fields(true);
        let ttt = if last { RESERVED_TAG } else { o.ttt };
        let h = pdu::encode_text_response(last, !last, o.lun, o.itt, ttt, chunk.len(), sn);
        let d = if chunk.is_empty() {
            OutData::None
        } else {
            OutData::Owned(chunk)
        };
        self.queue(h, d, None);
        if !last {
            o.offset = end;
            self.text_out = Some(o);
        }
    }
}

#[cfg(test)]
mod tests;
