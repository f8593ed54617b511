//! Logical units: configuration, unit attentions and command dispatch (SAM-5 §4.6,
//! SPC-4 §5.14).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use crate::cdb::{Cdb, CdbError, Opcode};
use crate::pr::{NexusIdentity, PrStateError, ProutError, Reservations};
use crate::sense::{Asc, Sense, SenseKey};
use crate::status::Status;
use crate::xcopy::{self, CopyPlan, CopyStatusTable, LuInfo};
use crate::{rsoc, sbc, spc};

/// Peripheral device type of an LU (SPC-4 §6.6.2, table 141).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceType {
    /// Direct access block device, type 0x00 (SBC-3).
    Disk,
    /// Storage array controller, type 0x0c: tgt's LUN 0 "controller" LU (SCC-2).
    Controller,
}

impl DeviceType {
    /// PERIPHERAL DEVICE TYPE field value.
    pub fn peripheral_type(self) -> u8 {
        match self {
            DeviceType::Disk => 0x00,
            DeviceType::Controller => 0x0c,
        }
    }
}

/// Parameters of one LU as tgtadm sets them (`--op new/update --mode logicalunit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuConfig {
    pub device_type: DeviceType,
    /// Bytes (from the store; 0 for the controller).
    pub size: u64,
    /// 512 or 4096 (tgtadm -y).
    pub block_size: u32,
    /// tgt: "IET" (space padded to 8).
    pub vendor_id: String,
    /// tgt: "VIRTUAL-DISK" for disks, "Controller" for LUN 0 (padded to 16).
    pub product_id: String,
    /// tgt: "0001".
    pub product_rev: String,
    /// tgt: "IET     " + format!("{:04x}{:04x}", tid, lun).
    pub scsi_id: String,
    /// tgt: "beaf" + tid + lun digits, e.g. "beaf11".
    pub scsi_sn: String,
    pub readonly: bool,
    /// Software write protect, set by MODE SELECT in the Control mode page
    /// (SPC-4 §7.5.8 SWP): the medium is write protected while it is set.
    pub swp: bool,
    pub removable: bool,
    pub online: bool,
    pub thin_provisioning: bool,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT set with tgt's `lbppbe`
    /// parameter; None: one 4 KiB page (what a file store allocates).
    pub lbppbe: Option<u8>,
    /// WCE in the caching mode page (SBC-3 §6.4.5); default true.
    pub write_cache: bool,
    /// Largest transfer accepted, in bytes (Block Limits VPD MAXIMUM TRANSFER LENGTH =
    /// this / block_size).
    pub max_transfer: u32,
}

/// Default largest transfer: 8 MiB.
pub const DEFAULT_MAX_TRANSFER: u32 = 8 << 20;

impl LuConfig {
    /// tgt's defaults for a disk LU `lun` in target `tid` (size 0 until a store is attached).
    pub fn disk_defaults(tid: u32, lun: u64) -> LuConfig {
        LuConfig {
            device_type: DeviceType::Disk,
            size: 0,
            block_size: 512,
            vendor_id: "IET".to_string(),
            product_id: "VIRTUAL-DISK".to_string(),
            product_rev: "0001".to_string(),
            scsi_id: format!("IET     {:04x}{:04x}", tid, lun),
            scsi_sn: format!("beaf{}{}", tid, lun),
            readonly: false,
            swp: false,
            removable: false,
            online: true,
            thin_provisioning: false,
            lbppbe: None,
            write_cache: true,
            max_transfer: DEFAULT_MAX_TRANSFER,
        }
    }

    /// tgt's LUN 0 controller LU of target `tid`.
    pub fn controller_defaults(tid: u32) -> LuConfig {
        LuConfig {
            device_type: DeviceType::Controller,
            product_id: "Controller".to_string(),
            ..LuConfig::disk_defaults(tid, 0)
        }
    }

    /// Block size actually used for arithmetic: never 0, so a bad config cannot divide by zero.
    pub(crate) fn block_len(&self) -> u32 {
        self.block_size.max(1)
    }

    /// Write protected: read-only LU or software write protect (SBC-3 §4.13).
    pub fn write_protected(&self) -> bool {
        self.readonly || self.swp
    }

    /// Number of logical blocks (SBC-3 §4.5).
    pub fn num_blocks(&self) -> u64 {
        self.size / u64::from(self.block_len())
    }
}

/// An I_T nexus (one iSCSI session) as the LU sees it, for unit attentions and
/// (later) reservations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusId(pub u64);

/// Most unit attentions queued per I_T nexus; further ones are dropped (SAM-5 §5.14
/// lets a logical unit limit the queue).
pub const UA_QUEUE_MAX: usize = 16;

/// One logical unit: its configuration and per-nexus unit-attention queues, each
/// behind this LU's own lock (never a global one).
pub struct LogicalUnit {
    lun: u64,
    config: RwLock<LuConfig>,
    state: Mutex<LuState>,
    pr_persistence: Mutex<Option<PrPersistence>>,
    nexus_liveness: Mutex<Option<NexusLiveness>>,
    /// Bumped whenever tasks of some I_T nexus are aborted from outside it
    /// (CLEAR TASK SET, LOGICAL UNIT RESET, target reset, PREEMPT AND ABORT). A
    /// plan remembers the value it was admitted at; its completion only takes
    /// the lock to look closer when the value moved.
    abort_generation: AtomicU64,
    /// Media commands at the store, counted by [`IoGuard`]s: a LUN is not
    /// deleted under them (tgt answers "this logical unit is still active").
    in_flight: AtomicUsize,
}

/// Counts one media command at the store against its LU while it lives;
/// derefs to the LU.
#[derive(Debug)]
pub struct IoGuard(Arc<LogicalUnit>);

impl std::ops::Deref for IoGuard {
    type Target = LogicalUnit;
    fn deref(&self) -> &LogicalUnit {
        &self.0
    }
}

impl Drop for IoGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Mutable per-LU state that commands change.
struct LuState {
    nexuses: BTreeMap<NexusId, NexusState>,
    /// False after START STOP UNIT with LOEJ=1, START=0 on a removable LU (SBC-3 §5.20).
    medium_loaded: bool,
    /// SPC-2 and persistent reservations (SPC-4 §5.9).
    reservations: Reservations,
    /// A SANITIZE is running or failed (SBC-3 §4.11).
    sanitize: SanitizeState,
}

/// Where the LU stands with SANITIZE (SBC-3 §4.11, §5.19).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SanitizeState {
    Idle,
    /// Media access is NOT READY, SANITIZE IN PROGRESS until it completes; it
    /// continues through task management and I_T nexus loss.
    Running,
    /// The last sanitize failed: MEDIUM ERROR, SANITIZE COMMAND FAILED until a
    /// SANITIZE EXIT FAILURE MODE (or a successful sanitize).
    Failed,
}

/// Where the LU's persistent reservation state goes when APTPL is set (SPC-4
/// §5.9.5): `Some(bytes)` to keep (beside the LUN, so a restart finds it), `None` to
/// forget. The target crate does the I/O; this crate stays free of it.
pub type PrPersistence = Box<dyn Fn(Option<&[u8]>) + Send + Sync>;

/// Whether an I_T nexus is still there (the transport asks its sockets). A
/// reservation is released at I_T nexus loss (SPC-2 §5.5.1); the transport
/// may learn of the loss only after another nexus's next command, so before
/// refusing that command for an SPC-2 reservation the LU asks.
pub type NexusLiveness = Box<dyn Fn(NexusId) -> bool + Send + Sync>;

/// What the LU remembers about one I_T nexus.
#[derive(Default)]
struct NexusState {
    /// Pending unit attentions, oldest first (SAM-5 §5.14).
    unit_attentions: VecDeque<Asc>,
    /// PREVENT ALLOW MEDIUM REMOVAL with PREVENT=1 is in effect (SBC-3 §5.5).
    prevent_removal: bool,
    /// EXTENDED COPY operations of this nexus, for RECEIVE COPY RESULTS (SPC-4 §6.18).
    copies: CopyStatusTable,
    /// The abort generation at which this nexus's tasks were last aborted.
    aborted_at: u64,
}

impl std::fmt::Debug for LogicalUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalUnit")
            .field("lun", &self.lun)
            .field("config", &*self.cfg())
            .finish()
    }
}

/// One SCSI command as the transport delivers it.
pub struct Command<'a> {
    pub nexus: NexusId,
    /// 6..=32 bytes; anything shorter than the opcode's CDB length gives ILLEGAL
    /// REQUEST / INVALID FIELD IN CDB (never a panic).
    pub cdb: &'a [u8],
    /// Write data gathered from the initiator (parameter lists for MODE SELECT, data
    /// for WRITE). May be shorter than the CDB asks (iSCSI underflow).
    pub data_out: &'a [u8],
}

/// What [`LogicalUnit::execute`] decided.
#[derive(Debug)]
pub enum Outcome {
    /// Finished: data-in (if any) is in the caller's buffer.
    Done(Response),
    /// Run this on the backing store, then call [`LogicalUnit::complete_io`].
    Io(IoPlan),
}

/// Final status of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub sense: Option<Sense>,
    /// Bytes of data-in produced (the full amount the command would return, before
    /// truncation to data_in.len(); the caller sends min(this, data_in.len()) and
    /// computes the iSCSI residual from this figure).
    pub data_in_len: usize,
}

impl Response {
    /// GOOD with `data_in_len` bytes of data-in.
    pub fn good(data_in_len: usize) -> Response {
        Response {
            status: Status::GOOD,
            sense: None,
            data_in_len,
        }
    }

    /// CHECK CONDITION with `sense`, no data-in.
    pub fn check_condition(sense: Sense) -> Response {
        Response {
            status: Status::CHECK_CONDITION,
            sense: Some(sense),
            data_in_len: 0,
        }
    }

    /// RESERVATION CONFLICT, no sense data (SAM-5 §5.3.1, SPC-4 §5.9.1).
    pub fn reservation_conflict() -> Response {
        Response {
            status: Status::RESERVATION_CONFLICT,
            sense: None,
            data_in_len: 0,
        }
    }

    /// CHECK CONDITION with a key and ASC/ASCQ.
    pub fn check(key: SenseKey, asc: Asc) -> Response {
        Response::check_condition(Sense::new(key, asc))
    }
}

/// What a plan asks the backing store to do (one store operation each; see
/// rtgt-backing's `IoOp` for the exact contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Fill data-in from the medium (READ, SBC-3 §5.11).
    Read,
    /// Write data-out to the medium (WRITE, WRITE AND VERIFY, SBC-3 §5.35).
    Write,
    /// Flush the store's cache (SYNCHRONIZE CACHE, SBC-3 §5.22).
    Flush,
    /// Deallocate `span` bytes at `offset`, and each of `extra`'s ranges (UNMAP,
    /// WRITE SAME with UNMAP, SANITIZE BLOCK ERASE; SBC-3 §4.7.3).
    Unmap,
    /// Write one block of data-out (or of `extra`'s buffer) over `span` bytes
    /// (WRITE SAME, SANITIZE OVERWRITE; SBC-3 §5.42).
    WriteSame,
    /// Compare the first half of data-out with the medium, write the second half
    /// when equal, atomically (COMPARE AND WRITE, SBC-3 §5.2).
    CompareAndWrite,
    /// Compare data-out (repeated) with `span` bytes of the medium (VERIFY with
    /// BYTCHK 01b/11b, SBC-3 §5.29).
    Compare,
    /// OR data-out into the medium, atomically (ORWRITE, SBC-3 §5.9).
    OrWrite,
    /// Report the allocation of `span` bytes into data-in (GET LBA STATUS, SBC-3 §5.5).
    Extents,
    /// Copy `span` bytes from LUN `source`'s store into this one (EXTENDED COPY,
    /// SPC-4 §6.4).
    Copy,
    /// Write data-out so that no reader sees part of it (WRITE ATOMIC(16), SBC-4 §5.48).
    WriteAtomic,
}

/// Which of the command's buffers a plan hands to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanBuffer {
    /// No buffer (Flush, Unmap, Copy).
    None,
    /// The data-in buffer, `len` bytes (the store fills it).
    DataIn,
    /// The first `len` bytes of data-out (or of [`PlanExtra::Buffer`]).
    DataOut,
}

impl IoKind {
    /// The buffer this kind of operation uses.
    pub fn buffer(self) -> PlanBuffer {
        match self {
            IoKind::Read | IoKind::Extents => PlanBuffer::DataIn,
            IoKind::Write
            | IoKind::WriteSame
            | IoKind::CompareAndWrite
            | IoKind::Compare
            | IoKind::OrWrite
            | IoKind::WriteAtomic => PlanBuffer::DataOut,
            IoKind::Flush | IoKind::Unmap | IoKind::Copy => PlanBuffer::None,
        }
    }
}

/// Plan data that does not fit the fixed fields.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum PlanExtra {
    #[default]
    None,
    /// Unmap: further (byte offset, bytes) ranges after the first.
    Ranges(Vec<(u64, u64)>),
    /// WriteSame: the block to write, built by the device server (SANITIZE
    /// OVERWRITE's initialization pattern), used instead of data-out.
    Buffer(Vec<u8>),
    /// Copy: the EXTENDED COPY being run for this I_T nexus, whose status the
    /// completion records (SPC-4 §6.18.3).
    Copy(Box<CopyPlan>, NexusId),
}

/// I/O for the caller to run on the backing store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoPlan {
    pub kind: IoKind,
    /// Byte offset on the store.
    pub offset: u64,
    /// Bytes of the buffer the store uses ([`IoKind::buffer`]): reads and extents
    /// put data at data_in[0..len]; data-out kinds take data_out[0..len].
    pub len: usize,
    /// Force unit access (SBC-3 §5.11): write through / read from the medium.
    pub fua: bool,
    /// Bytes the CDB's TRANSFER LENGTH asks for (data-in or data-out). `len` is less
    /// when the iSCSI buffer is shorter; the difference is the iSCSI residual
    /// (RFC 7143 §11.4.5.2). 0 for Flush.
    pub transfer_len: usize,
    /// Bytes of the medium covered by Unmap, WriteSame, Compare, Extents and Copy.
    pub span: u64,
    /// Copy: the LUN whose store is read, and the byte offset there.
    pub source: Option<(u64, u64)>,
    /// The LUN whose store runs the plan when it is not the command's own (the
    /// destination of an EXTENDED COPY addressed to another LU).
    pub store_lun: Option<u64>,
    /// A SANITIZE: its completion ends the LU's sanitize state (SBC-3 §4.11).
    pub sanitize: bool,
    /// The I_T nexus of the command, and the LU's abort generation when it was
    /// admitted: see [`LogicalUnit::abort_tasks_of`].
    pub nexus: NexusId,
    pub generation: u64,
    pub extra: PlanExtra,
}

impl IoPlan {
    /// A plan of `kind` at `offset` using `len` bytes of buffer, covering as many
    /// bytes of the medium, with the transfer length equal to `len`.
    pub fn new(kind: IoKind, offset: u64, len: usize) -> IoPlan {
        IoPlan {
            kind,
            offset,
            len,
            fua: false,
            transfer_len: len,
            span: len as u64,
            source: None,
            store_lun: None,
            sanitize: false,
            nexus: NexusId(0),
            generation: 0,
            extra: PlanExtra::None,
        }
    }
}

/// Linux errno values the store may return (asm-generic/errno-base.h).
pub mod errno {
    pub const EIO: i32 = 5;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EDQUOT: i32 = 122;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the queues consistent (every
    // update is a single push/pop), so poisoning is ignored rather than propagated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogicalUnit {
    pub fn new(lun: u64, config: LuConfig) -> LogicalUnit {
        LogicalUnit {
            lun,
            config: RwLock::new(config),
            state: Mutex::new(LuState {
                nexuses: BTreeMap::new(),
                medium_loaded: true,
                reservations: Reservations::new(),
                sanitize: SanitizeState::Idle,
            }),
            pr_persistence: Mutex::new(None),
            nexus_liveness: Mutex::new(None),
            abort_generation: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// A media command goes to the store: counted until the guard drops.
    pub fn begin_io(self: &Arc<Self>) -> IoGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        IoGuard(self.clone())
    }

    /// Media commands at the store now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Abort the tasks of `nexuses` (all when None) from outside them (SAM-5
    /// §5.6: CLEAR TASK SET, LOGICAL UNIT RESET, target reset; SPC-4 §5.9.11.5:
    /// PREEMPT AND ABORT): plans already at the store complete with TASK ABORTED
    /// (TAS=1 in the Control mode page, SPC-4 §7.5.8) instead of their status.
    pub fn abort_tasks_of(&self, nexuses: Option<&[NexusId]>) {
        let mut st = lock(&self.state);
        self.abort_locked(&mut st, nexuses);
    }

    fn abort_locked(&self, st: &mut LuState, nexuses: Option<&[NexusId]>) {
        let generation = self.abort_generation.fetch_add(1, Ordering::AcqRel) + 1;
        for (id, n) in st.nexuses.iter_mut() {
            if nexuses.is_none_or(|list| list.contains(id)) {
                n.aborted_at = generation;
            }
        }
    }

    /// Whether the plan's task was aborted after it was admitted.
    fn aborted(&self, plan: &IoPlan) -> bool {
        if self.abort_generation.load(Ordering::Acquire) == plan.generation {
            return false;
        }
        lock(&self.state)
            .nexuses
            .get(&plan.nexus)
            .is_some_and(|n| n.aborted_at > plan.generation)
    }

    /// Ask `f` whether an SPC-2 reservation holder is still there before
    /// refusing another nexus for it.
    pub fn set_nexus_liveness(&self, f: NexusLiveness) {
        *lock(&self.nexus_liveness) = Some(f);
    }

    /// Keep APTPL reservation state through `f` from now on.
    pub fn set_pr_persistence(&self, f: PrPersistence) {
        *lock(&self.pr_persistence) = Some(f);
    }

    /// Restore persistent reservations kept with APTPL by an earlier daemon (SPC-4
    /// §5.9.5): a tgtd restart is a power loss to the initiators.
    pub fn restore_reservations(&self, bytes: &[u8]) -> Result<(), PrStateError> {
        lock(&self.state).reservations.restore_aptpl(bytes)
    }

    /// The persistent reservation state, for management and tests.
    pub fn reservation_keys(&self) -> Vec<u64> {
        lock(&self.state).reservations.keys()
    }

    pub fn lun(&self) -> u64 {
        self.lun
    }

    /// A clone of the current configuration.
    pub fn config(&self) -> LuConfig {
        self.cfg().clone()
    }

    pub(crate) fn cfg(&self) -> RwLockReadGuard<'_, LuConfig> {
        self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    /// tgtadm --op update: change params; raises the unit attentions SPC-4 requires on
    /// every nexus: CAPACITY DATA HAS CHANGED (SBC-3 §4.6) for size/block size,
    /// INQUIRY DATA HAS CHANGED (SPC-4 §6.6.1) for identification, MODE PARAMETERS
    /// CHANGED (SPC-4 §6.11) for WCE or write protection.
    pub fn update(&self, f: impl FnOnce(&mut LuConfig)) {
        self.update_except(None, f)
    }

    /// [`LogicalUnit::update`], sparing `except` the unit attentions (the I_T nexus
    /// whose MODE SELECT made the change, SPC-4 §6.9).
    pub fn update_except(&self, except: Option<NexusId>, f: impl FnOnce(&mut LuConfig)) {
        let mut raised = Vec::new();
        {
            let mut cfg = self.config.write().unwrap_or_else(|e| e.into_inner());
            let old = cfg.clone();
            f(&mut cfg);
            if old.size != cfg.size || old.block_size != cfg.block_size || old.lbppbe != cfg.lbppbe
            {
                raised.push(Asc::CAPACITY_DATA_HAS_CHANGED);
            }
            if old.vendor_id != cfg.vendor_id
                || old.product_id != cfg.product_id
                || old.product_rev != cfg.product_rev
                || old.scsi_id != cfg.scsi_id
                || old.scsi_sn != cfg.scsi_sn
                || old.removable != cfg.removable
                || old.device_type != cfg.device_type
                || old.thin_provisioning != cfg.thin_provisioning
                || old.max_transfer != cfg.max_transfer
            {
                raised.push(Asc::INQUIRY_DATA_HAS_CHANGED);
            }
            if old.write_cache != cfg.write_cache
                || old.readonly != cfg.readonly
                || old.swp != cfg.swp
            {
                raised.push(Asc::MODE_PARAMETERS_CHANGED);
            }
        }
        for asc in raised {
            self.raise_unit_attention_except(asc, except);
        }
    }

    /// A new I_T nexus sees a POWER ON, RESET unit attention first (as tgt does,
    /// SAM-5 §6.3.1).
    pub fn add_nexus(&self, nexus: NexusId, identity: NexusIdentity) {
        let mut unit_attentions = VecDeque::with_capacity(UA_QUEUE_MAX);
        unit_attentions.push_back(Asc::POWER_ON_RESET);
        let mut st = lock(&self.state);
        st.reservations.add_nexus(nexus, identity);
        st.nexuses.insert(
            nexus,
            NexusState {
                unit_attentions,
                prevent_removal: false,
                copies: CopyStatusTable::new(),
                aborted_at: 0,
            },
        );
    }

    /// I_T nexus loss: forget its unit attentions and its medium removal prevention
    /// (SBC-3 §5.5).
    pub fn remove_nexus(&self, nexus: NexusId) {
        let mut st = lock(&self.state);
        st.nexuses.remove(&nexus);
        // Releases an SPC-2 reservation; registrations survive (SPC-4 §5.9.1).
        st.reservations.remove_nexus(nexus);
    }

    /// Queue a unit attention for every nexus (e.g. REPORTED LUNS DATA HAS CHANGED
    /// when the target's LUN set changes). A condition already queued is not repeated.
    pub fn raise_unit_attention(&self, asc: Asc) {
        self.raise_unit_attention_except(asc, None)
    }

    /// [`LogicalUnit::raise_unit_attention`] for every nexus but `except`.
    pub fn raise_unit_attention_except(&self, asc: Asc, except: Option<NexusId>) {
        for (id, n) in lock(&self.state).nexuses.iter_mut() {
            if Some(*id) == except {
                continue;
            }
            let q = &mut n.unit_attentions;
            if !q.contains(&asc) && q.len() < UA_QUEUE_MAX {
                q.push_back(asc);
            }
        }
    }

    /// LOGICAL UNIT RESET / target reset effect (SAM-5 §6.3): clears queued UAs and
    /// posts `asc` (BUS DEVICE RESET / POWER ON RESET) to all nexuses; also ends
    /// medium removal prevention (SBC-3 §5.5) and an SPC-2 reservation.
    pub fn reset(&self, asc: Asc) {
        let mut st = lock(&self.state);
        // Resets release an SPC-2 reservation, not persistent ones (SPC-2 §5.5.1,
        // SPC-4 §5.9.1).
        st.reservations.reset();
        self.abort_locked(&mut st, None);
        for n in st.nexuses.values_mut() {
            n.unit_attentions.clear();
            n.unit_attentions.push_back(asc);
            n.prevent_removal = false;
            n.copies.clear();
        }
    }

    /// Dequeue the oldest unit attention pending for `nexus`.
    pub(crate) fn take_unit_attention(&self, nexus: NexusId) -> Option<Asc> {
        lock(&self.state)
            .nexuses
            .get_mut(&nexus)
            .and_then(|n| n.unit_attentions.pop_front())
    }

    /// Drop a specific pending unit attention (REPORT LUNS clears REPORTED LUNS DATA
    /// HAS CHANGED, SPC-4 §6.33).
    pub(crate) fn clear_unit_attention(&self, nexus: NexusId, asc: Asc) {
        if let Some(n) = lock(&self.state).nexuses.get_mut(&nexus) {
            n.unit_attentions.retain(|a| *a != asc);
        }
    }

    /// Unit attentions pending for `nexus`, oldest first (for tests and management).
    pub fn pending_unit_attentions(&self, nexus: NexusId) -> Vec<Asc> {
        lock(&self.state)
            .nexuses
            .get(&nexus)
            .map(|n| n.unit_attentions.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Data-out bytes the CDB asks for (TRANSFER LENGTH × block size for WRITE), for
    /// the transport's residual computation (RFC 7143 §11.4.5.2); 0 when none.
    pub fn data_out_len(&self, cdb: &[u8]) -> usize {
        let bs = u64::from(self.cfg().block_len());
        let bytes = match Cdb::decode(cdb) {
            Ok(
                Cdb::Write { blocks, .. }
                | Cdb::WriteAndVerify { blocks, .. }
                | Cdb::OrWrite { blocks, .. }
                | Cdb::WriteAtomic { blocks, .. },
            ) => u64::from(blocks) * bs,
            Ok(Cdb::CompareAndWrite { blocks, .. }) => 2 * u64::from(blocks) * bs,
            Ok(Cdb::Verify { blocks, bytchk, .. }) => match bytchk {
                1 => u64::from(blocks) * bs,
                3 => bs,
                _ => 0,
            },
            Ok(Cdb::WriteSame { ndob: false, .. }) => bs,
            Ok(
                Cdb::Unmap {
                    parameter_list_length,
                    ..
                }
                | Cdb::ModeSelect {
                    parameter_list_length,
                    ..
                }
                | Cdb::Sanitize {
                    parameter_list_length,
                    ..
                },
            ) => u64::from(parameter_list_length),
            Ok(
                Cdb::PersistentReserveOut {
                    parameter_list_length,
                }
                | Cdb::ExtendedCopy {
                    parameter_list_length,
                },
            ) => u64::from(parameter_list_length),
            _ => 0,
        };
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// Execute a command. Emulated commands write their data-in into `data_in` (a
    /// caller buffer of `data_in.len()` bytes = the initiator's expected transfer
    /// length, capped by the caller) and return Done. Data commands return Io with a
    /// plan. Unit attention, readonly, offline and range checks happen here.
    pub fn execute(&self, cmd: &Command<'_>, data_in: &mut [u8]) -> Outcome {
        let generation = self.abort_generation.load(Ordering::Acquire);
        let mut outcome = Outcome::from(self.execute_inner(cmd, data_in));
        if let Outcome::Io(plan) = &mut outcome {
            plan.nexus = cmd.nexus;
            plan.generation = generation;
        }
        outcome
    }

    /// The checks before any command runs, under one lock: a pending unit attention
    /// terminates any command but INQUIRY, REPORT LUNS and REQUEST SENSE and is
    /// cleared by being reported (SAM-5 §5.14, SPC-4 §5.14); a command the
    /// reservations do not allow this I_T nexus ends in RESERVATION CONFLICT
    /// (SPC-4 §5.9.1, SPC-2 §5.5.1).
    fn admit(&self, cmd: &Command<'_>, op: Opcode) -> Result<Option<Outcome>, Sense> {
        let mut st = lock(&self.state);
        if !matches!(
            op,
            Opcode::INQUIRY | Opcode::REPORT_LUNS | Opcode::REQUEST_SENSE
        ) {
            if let Some(asc) = st
                .nexuses
                .get_mut(&cmd.nexus)
                .and_then(|n| n.unit_attentions.pop_front())
            {
                return Err(Sense::new(SenseKey::UNIT_ATTENTION, asc));
            }
        }
        if st.reservations.check(cmd.nexus, cmd.cdb).is_err() {
            let holder = st.reservations.spc2_holder().filter(|h| *h != cmd.nexus);
            drop(st);
            // The SPC-2 holder may be gone already, its loss not yet seen.
            if let Some(h) = holder {
                let gone = lock(&self.nexus_liveness)
                    .as_ref()
                    .is_some_and(|alive| !alive(h));
                if gone {
                    self.remove_nexus(h);
                    return self.admit(cmd, op);
                }
            }
            return Ok(Some(Outcome::Done(Response::reservation_conflict())));
        }
        // SBC-3 §4.11.3: while a sanitize runs, only commands that do not touch
        // the medium or its state are processed; after one failed, media access
        // reports the failure until EXIT FAILURE MODE.
        let harmless = matches!(
            op,
            Opcode::INQUIRY | Opcode::REPORT_LUNS | Opcode::REQUEST_SENSE | Opcode::MAINTENANCE_IN
        );
        match st.sanitize {
            SanitizeState::Running if !harmless => Err(Sense::new(
                SenseKey::NOT_READY,
                Asc::LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS,
            )),
            SanitizeState::Failed if !harmless && op != Opcode::SANITIZE => Err(Sense::new(
                SenseKey::MEDIUM_ERROR,
                Asc::SANITIZE_COMMAND_FAILED,
            )),
            _ => Ok(None),
        }
    }

    fn execute_inner(&self, cmd: &Command<'_>, data_in: &mut [u8]) -> Result<Outcome, Sense> {
        let Some(&op) = cmd.cdb.first() else {
            return Err(CdbError::TooShort { opcode: 0, len: 0 }.sense());
        };
        let op = Opcode(op);
        // SAM-5 §5.14 / SPC-4 §5.14: a pending unit attention terminates any command
        // but INQUIRY, REPORT LUNS and REQUEST SENSE, and is cleared by being reported.
        if let Some(refused) = self.admit(cmd, op)? {
            return Ok(refused);
        }
        let cfg = self.cfg();
        // tgt's LUN 0 controller implements only the SPC basics; the table of
        // REPORT SUPPORTED OPERATION CODES says which.
        if cfg.device_type == DeviceType::Controller
            && !rsoc::is_supported_cdb(DeviceType::Controller, cmd.cdb)
        {
            return Err(CdbError::UnsupportedOpcode(op.0).sense());
        }
        let cdb = Cdb::decode(cmd.cdb).map_err(|e| e.sense())?;
        let done = |n: usize| Ok(Outcome::Done(Response::good(n)));
        // NOT READY: offline LU or ejected medium.
        let ready = |cfg: &LuConfig| {
            check_ready(cfg)?;
            if lock(&self.state).medium_loaded {
                Ok(())
            } else {
                Err(Sense::new(SenseKey::NOT_READY, Asc::MEDIUM_NOT_PRESENT))
            }
        };
        match cdb {
            Cdb::TestUnitReady => {
                ready(&cfg)?;
                done(0)
            }
            Cdb::Inquiry {
                evpd,
                page_code,
                allocation_length,
            } => done(spc::inquiry(
                &cfg,
                evpd,
                page_code,
                allocation_length,
                data_in,
            )?),
            Cdb::RequestSense {
                desc,
                allocation_length,
            } => {
                let sense = match self.take_unit_attention(cmd.nexus) {
                    Some(asc) => Sense::new(SenseKey::UNIT_ATTENTION, asc),
                    None => Sense::new(SenseKey::NO_SENSE, Asc::NO_ADDITIONAL_SENSE),
                };
                done(spc::request_sense(&sense, desc, allocation_length, data_in))
            }
            Cdb::ReportLuns {
                select_report,
                allocation_length,
            } => done(spc::report_luns(
                [self.lun],
                select_report,
                allocation_length,
                data_in,
            )?),
            Cdb::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page_code,
                subpage_code,
                allocation_length,
            } => done(spc::mode_sense(
                &cfg,
                spc::ModeSenseArgs {
                    ten,
                    dbd,
                    llbaa,
                    pc,
                    page_code,
                    subpage_code,
                    allocation_length,
                },
                data_in,
            )?),
            Cdb::ReadCapacity10 { lba, pmi } => {
                ready(&cfg)?;
                done(sbc::read_capacity_10(&cfg, lba, pmi, data_in)?)
            }
            Cdb::ReadCapacity16 {
                lba,
                pmi,
                allocation_length,
            } => {
                ready(&cfg)?;
                done(sbc::read_capacity_16(
                    &cfg,
                    lba,
                    pmi,
                    allocation_length,
                    data_in,
                )?)
            }
            Cdb::Read { .. }
            | Cdb::Write { .. }
            | Cdb::Verify { .. }
            | Cdb::SynchronizeCache { .. }
            | Cdb::PreFetch { .. }
            | Cdb::WriteSame { .. }
            | Cdb::Unmap { .. }
            | Cdb::CompareAndWrite { .. }
            | Cdb::OrWrite { .. }
            | Cdb::WriteAndVerify { .. }
            | Cdb::WriteAtomic { .. }
            | Cdb::GetLbaStatus { .. } => {
                ready(&cfg)?;
                sbc::plan(&cfg, &cdb, op, data_in.len(), cmd.data_out)
            }
            Cdb::ReadDefectData {
                twelve,
                req_plist,
                req_glist,
                format,
                allocation_length,
            } => {
                ready(&cfg)?;
                done(spc::read_defect_data(
                    twelve,
                    req_plist,
                    req_glist,
                    format,
                    allocation_length,
                    data_in,
                ))
            }
            Cdb::ModeSelect {
                ten,
                pf,
                sp,
                parameter_list_length,
            } => {
                let n = usize::from(parameter_list_length).min(cmd.data_out.len());
                let sel = spc::mode_select(&cfg, ten, pf, sp, &cmd.data_out[..n])?;
                drop(cfg);
                // SPC-4 §6.9: MODE PARAMETERS CHANGED for every other I_T nexus.
                self.update_except(Some(cmd.nexus), |c| {
                    c.write_cache = sel.write_cache;
                    c.swp = sel.swp;
                });
                done(0)
            }
            Cdb::ReportTargetPortGroups {
                extended,
                allocation_length,
            } => done(spc::report_target_port_groups(
                extended,
                allocation_length,
                data_in,
            )),
            Cdb::ReportSupportedTmfs {
                repd,
                allocation_length,
            } => done(spc::report_supported_tmfs(repd, allocation_length, data_in)),
            Cdb::Sanitize {
                service_action,
                parameter_list_length,
                ..
            } => {
                ready(&cfg)?;
                let outcome =
                    sbc::sanitize(&cfg, service_action, parameter_list_length, cmd.data_out)?;
                let mut st = lock(&self.state);
                st.sanitize = match outcome {
                    Outcome::Io(_) => SanitizeState::Running,
                    // EXIT FAILURE MODE, or nothing to sanitize.
                    Outcome::Done(_) => SanitizeState::Idle,
                };
                Ok(outcome)
            }
            Cdb::ReportSupportedOperationCodes => done(rsoc::report_supported_operation_codes(
                cfg.device_type,
                cmd.cdb,
                data_in,
            )?),
            Cdb::ReceiveCopyResults => {
                let mut st = lock(&self.state);
                let Some(n) = st.nexuses.get_mut(&cmd.nexus) else {
                    return Err(Sense::new(
                        SenseKey::ILLEGAL_REQUEST,
                        Asc::INVALID_FIELD_IN_CDB,
                    ));
                };
                done(xcopy::receive_copy_results(
                    cmd.cdb,
                    &mut n.copies,
                    data_in,
                )?)
            }
            Cdb::ExtendedCopy { .. } => {
                // The target's LU inventory is needed: LunTable::execute routes
                // EXTENDED COPY to extended_copy with it.
                Err(Sense::new(
                    SenseKey::COPY_ABORTED,
                    Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
                ))
            }
            Cdb::Reserve => match lock(&self.state).reservations.reserve(cmd.nexus) {
                Ok(()) => done(0),
                Err(_) => Ok(Outcome::Done(Response::reservation_conflict())),
            },
            Cdb::Release => {
                lock(&self.state).reservations.release(cmd.nexus);
                done(0)
            }
            Cdb::PersistentReserveIn {
                service_action,
                allocation_length,
            } => done(lock(&self.state).reservations.persistent_reserve_in(
                cmd.nexus,
                service_action,
                allocation_length,
                data_in,
            )?),
            Cdb::PersistentReserveOut {
                parameter_list_length,
            } => {
                drop(cfg);
                let n = (parameter_list_length as usize).min(cmd.data_out.len());
                self.persistent_reserve_out(cmd, &cmd.data_out[..n])
            }
            Cdb::StartStopUnit {
                power_condition,
                loej,
                start,
                ..
            } => {
                self.start_stop_unit(&cfg, power_condition, loej, start)?;
                done(0)
            }
            Cdb::PreventAllowMediumRemoval { prevent } => {
                if let Some(n) = lock(&self.state).nexuses.get_mut(&cmd.nexus) {
                    n.prevent_removal = prevent & 0x01 != 0;
                }
                done(0)
            }
        }
    }

    /// EXTENDED COPY (SPC-4 §6.4) with this LU as the copy manager; `lus` are the
    /// target's LUs that may be copy sources or destinations. The one segment the
    /// parameter list may hold (`xcopy::MAX_SEGMENT_DESCRIPTORS`) becomes a Copy plan
    /// run by the destination's store, reading the source's.
    pub fn extended_copy(&self, cmd: &Command<'_>, lus: &[LuInfo]) -> Outcome {
        Outcome::from(self.extended_copy_inner(cmd, lus))
    }

    fn extended_copy_inner(&self, cmd: &Command<'_>, lus: &[LuInfo]) -> Result<Outcome, Sense> {
        if let Some(refused) = self.admit(cmd, Opcode::EXTENDED_COPY)? {
            return Ok(refused);
        }
        check_ready(&self.cfg())?;
        let len = match Cdb::decode(cmd.cdb).map_err(|e| e.sense())? {
            Cdb::ExtendedCopy {
                parameter_list_length,
            } => parameter_list_length as usize,
            _ => return Err(Sense::invalid_field_in_cdb(0, None)),
        };
        let param = &cmd.data_out[..len.min(cmd.data_out.len())];
        let plan = xcopy::parse_extended_copy(cmd.cdb, param, lus)?;
        let mut st = lock(&self.state);
        let Some(n) = st.nexuses.get_mut(&cmd.nexus) else {
            return Err(Sense::new(
                SenseKey::COPY_ABORTED,
                Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
            ));
        };
        n.copies.begin(&plan)?;
        let Some(seg) = plan.segments.first().copied() else {
            let segments = plan.segment_descriptors;
            n.copies.complete(&plan, true, segments, 0);
            return Ok(Outcome::Done(Response::good(0)));
        };
        Ok(Outcome::Io(IoPlan {
            span: seg.len,
            transfer_len: len,
            source: Some((seg.src_lun, seg.src_offset())),
            store_lun: Some(seg.dst_lun),
            extra: PlanExtra::Copy(Box::new(plan), cmd.nexus),
            ..IoPlan::new(IoKind::Copy, seg.dst_offset(), 0)
        }))
    }

    /// PERSISTENT RESERVE OUT (SPC-4 §6.16): run it, post the unit attentions it
    /// raised, and keep the APTPL state where the target crate stores it.
    fn persistent_reserve_out(&self, cmd: &Command<'_>, param: &[u8]) -> Result<Outcome, Sense> {
        let state = {
            let mut st = lock(&self.state);
            let effects = match st
                .reservations
                .persistent_reserve_out(cmd.nexus, cmd.cdb, param)
            {
                Ok(e) => e,
                Err(ProutError::Conflict) => {
                    return Ok(Outcome::Done(Response::reservation_conflict()))
                }
                Err(ProutError::Sense(s)) => return Err(s),
            };
            for &(nexus, asc) in &effects.unit_attentions {
                if let Some(n) = st.nexuses.get_mut(&nexus) {
                    if !n.unit_attentions.contains(&asc) && n.unit_attentions.len() < UA_QUEUE_MAX {
                        n.unit_attentions.push_back(asc);
                    }
                }
            }
            let state = effects.persist.then(|| st.reservations.aptpl_state());
            if !effects.abort_nexuses.is_empty() {
                // PREEMPT AND ABORT (SPC-4 §5.9.11.5): the preempted nexuses'
                // tasks are aborted; what they still send meets the conflict.
                self.abort_locked(&mut st, Some(&effects.abort_nexuses));
            }
            state
        };
        if let Some(state) = state {
            if let Some(persist) = lock(&self.pr_persistence).as_ref() {
                persist(state.as_deref());
            }
        }
        Ok(Outcome::Done(Response::good(0)))
    }

    /// Online with its medium loaded: media access commands may run.
    pub fn medium_ready(&self) -> bool {
        self.cfg().online && lock(&self.state).medium_loaded
    }

    /// START STOP UNIT (SBC-3 §5.20): with POWER CONDITION 0 and LOEJ=1, load
    /// (START=1) or eject (START=0) the medium of a removable LU; a non-removable LU
    /// has nothing to eject (INVALID FIELD IN CDB), and an eject while any nexus
    /// prevents removal fails with MEDIUM REMOVAL PREVENTED.
    fn start_stop_unit(
        &self,
        cfg: &LuConfig,
        power_condition: u8,
        loej: bool,
        start: bool,
    ) -> Result<(), Sense> {
        if power_condition != 0 || !loej {
            return Ok(());
        }
        if !cfg.removable {
            return Err(Sense::invalid_field_in_cdb(4, Some(1)));
        }
        let mut st = lock(&self.state);
        // SBC-3 §5.20: while medium removal is prevented, neither eject nor load
        // may move the medium (libiscsi's PreventAllow.Eject checks both).
        if st.nexuses.values().any(|n| n.prevent_removal) {
            return Err(Sense::new(
                SenseKey::ILLEGAL_REQUEST,
                Asc::MEDIUM_REMOVAL_PREVENTED,
            ));
        }
        st.medium_loaded = start;
        Ok(())
    }

    /// Turn the store's result for a plan into the final response. `buf` is the
    /// buffer the store used (GET LBA STATUS turns its extent records into
    /// parameter data in place).
    ///
    /// Compare kinds report the bytes that matched: fewer than compared is a
    /// MISCOMPARE with that offset in INFORMATION (SBC-3 §5.2, §5.29). Errno mapping:
    /// ENOSPC -> SPACE ALLOCATION FAILED on a thin LU (SBC-3 §4.7.3.6) or WRITE ERROR,
    /// EIO on read -> MEDIUM ERROR / UNRECOVERED READ ERROR, EIO on write -> MEDIUM
    /// ERROR / WRITE ERROR, EROFS -> WRITE PROTECTED, others -> HARDWARE ERROR /
    /// INTERNAL TARGET FAILURE. A short transfer is reported like EIO.
    pub fn complete_io(
        &self,
        plan: &IoPlan,
        result: Result<usize, i32>,
        buf: &mut [u8],
    ) -> Response {
        // A sanitize goes on through task management (SBC-3 §4.11.2); other
        // tasks aborted meanwhile report TASK ABORTED.
        if !plan.sanitize && self.aborted(plan) {
            return Response {
                status: Status::TASK_ABORTED,
                sense: None,
                data_in_len: 0,
            };
        }
        if plan.sanitize {
            lock(&self.state).sanitize = if result.is_ok() {
                SanitizeState::Idle
            } else {
                SanitizeState::Failed
            };
        }
        let err = match (plan.kind, result) {
            (IoKind::Extents, Ok(n)) => {
                let cfg = self.cfg();
                let lba = plan.offset / u64::from(cfg.block_len());
                let len = sbc::lba_status_from_extents(&cfg, lba, buf, n, plan.transfer_len);
                return Response::good(len);
            }
            (IoKind::CompareAndWrite | IoKind::Compare, Ok(n)) => {
                let compared = if plan.kind == IoKind::Compare {
                    plan.span
                } else {
                    plan.len as u64 / 2
                };
                if n as u64 >= compared {
                    return Response::good(0);
                }
                let mut sense = Sense::new(
                    SenseKey::MISCOMPARE,
                    Asc::MISCOMPARE_DURING_VERIFY_OPERATION,
                );
                sense.information = Some(u32::try_from(n).unwrap_or(u32::MAX));
                return Response::check_condition(sense);
            }
            (IoKind::Copy, result) => {
                // SPC-4 §6.4.1: a copy that could not finish is COPY ABORTED; the
                // status RECEIVE COPY RESULTS reports is recorded either way.
                let ok = result.is_ok();
                if let PlanExtra::Copy(copy, nexus) = &plan.extra {
                    if let Some(n) = lock(&self.state).nexuses.get_mut(nexus) {
                        let (segments, bytes) = if ok {
                            (copy.segment_descriptors, copy.total_bytes())
                        } else {
                            (0, 0)
                        };
                        n.copies.complete(copy, ok, segments, bytes);
                    }
                }
                return if ok {
                    Response::good(0)
                } else {
                    Response::check(
                        SenseKey::COPY_ABORTED,
                        Asc::COPY_TARGET_DEVICE_NOT_REACHABLE,
                    )
                };
            }
            (IoKind::Flush | IoKind::Unmap | IoKind::WriteSame, Ok(_)) => {
                return Response::good(0);
            }
            (IoKind::Read, Ok(n)) if n >= plan.len => return Response::good(plan.transfer_len),
            (_, Ok(n)) if n >= plan.len => return Response::good(0),
            (_, Ok(_)) => errno::EIO,
            (_, Err(e)) => e,
        };
        let writes = !matches!(plan.kind, IoKind::Read | IoKind::Extents | IoKind::Compare);
        let thin = self.cfg().thin_provisioning;
        let (key, asc) = match err {
            errno::EIO if !writes => (SenseKey::MEDIUM_ERROR, Asc::UNRECOVERED_READ_ERROR),
            errno::ENOSPC | errno::EDQUOT if writes && thin => (
                SenseKey::DATA_PROTECT,
                Asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
            ),
            errno::EIO | errno::ENOSPC | errno::EDQUOT if writes => {
                (SenseKey::MEDIUM_ERROR, Asc::WRITE_ERROR)
            }
            errno::EROFS if writes => (SenseKey::DATA_PROTECT, Asc::WRITE_PROTECTED),
            _ => (SenseKey::HARDWARE_ERROR, Asc::INTERNAL_TARGET_FAILURE),
        };
        Response::check(key, asc)
    }
}

impl From<Result<Outcome, Sense>> for Outcome {
    fn from(r: Result<Outcome, Sense>) -> Outcome {
        match r {
            Ok(o) => o,
            Err(sense) => Outcome::Done(Response::check_condition(sense)),
        }
    }
}

/// NOT READY for media access on an offline LU: MEDIUM NOT PRESENT when removable
/// (as tgt), else LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE (SPC-4 §6.47).
pub(crate) fn check_ready(cfg: &LuConfig) -> Result<(), Sense> {
    if cfg.online {
        Ok(())
    } else if cfg.removable {
        Err(Sense::new(SenseKey::NOT_READY, Asc::MEDIUM_NOT_PRESENT))
    } else {
        Err(Sense::new(
            SenseKey::NOT_READY,
            Asc::LOGICAL_UNIT_NOT_READY_CAUSE_NOT_REPORTABLE,
        ))
    }
}
