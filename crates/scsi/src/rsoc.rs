//! REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35; MAINTENANCE IN A3h, service action
//! 0Ch) and the table of commands this device server supports.
//!
//! [`COMMANDS`] is the single source of truth for which operation codes and service
//! actions a disk LU (and tgt's LUN 0 controller) implements, their CDB USAGE DATA
//! (SPC-4 §6.35.3) and their command timeouts (SPC-4 §6.35.4). Dispatch should ask
//! [`is_supported`] / [`is_supported_cdb`] so that what the LU reports and what it
//! executes never drift apart.
//!
//! CDB USAGE DATA: byte 0 is the operation code, the SERVICE ACTION field holds the
//! service action, and every other bit is 1 where the device server evaluates the
//! CDB bit (SPC-4 §6.35.3). The CONTROL byte mask is 04h: NACA is evaluated (and a
//! one rejected, SAM-5 §5.9), the obsolete FLAG and LINK bits are ignored. DPO and
//! FUA (byte 1 bits 4 and 3) are marked for the commands that accept them, since the
//! DEVICE-SPECIFIC PARAMETER of MODE SENSE reports DPOFUA=1 (SBC-3 §6.4.1) and
//! libiscsi's DpoFua tests cross-check the two. GROUP NUMBER fields are ignored (0).

use crate::lu::DeviceType;
use crate::out::Out;
use crate::sense::Sense;

/// MAINTENANCE IN operation code (SPC-4 §6.35, SCC-2).
pub const OPCODE_MAINTENANCE_IN: u8 = 0xa3;
/// REPORT TARGET PORT GROUPS service action of MAINTENANCE IN (SPC-4 §6.37).
pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
/// REPORT SUPPORTED OPERATION CODES service action of MAINTENANCE IN.
pub const SA_REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0c;
/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS service action of MAINTENANCE IN.
pub const SA_REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS: u8 = 0x0d;

/// REPORTING OPTIONS (SPC-4 §6.35.1, table 269).
mod reporting {
    /// All commands, command descriptor format.
    pub const ALL: u8 = 0b000;
    /// One command, by operation code only (no service actions).
    pub const OPCODE: u8 = 0b001;
    /// One command, by operation code and service action.
    pub const OPCODE_AND_SA: u8 = 0b010;
    /// One command, service action used only if the operation code has them
    /// (SPC-4 r37 and later).
    pub const OPCODE_MAYBE_SA: u8 = 0b011;
}

/// SUPPORT field of the one_command format (SPC-4 §6.35.3, table 272).
const SUPPORT_NOT_SUPPORTED: u8 = 0b001;
const SUPPORT_STANDARD: u8 = 0b011;

/// Command timeouts of a command, in seconds (SPC-4 §6.35.4); 0 = not specified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// NOMINAL COMMAND PROCESSING TIMEOUT.
    pub nominal: u32,
    /// RECOMMENDED COMMAND TIMEOUT.
    pub recommended: u32,
}

/// Commands answered from memory (INQUIRY, MODE SENSE, ...).
const T_EMULATED: Timeouts = Timeouts {
    nominal: 1,
    recommended: 10,
};
/// Reads, writes and the like: one store I/O of at most the Block Limits maximum.
const T_MEDIA: Timeouts = Timeouts {
    nominal: 1,
    recommended: 30,
};
/// Flushes and commands that may touch a large part of the medium.
const T_LONG: Timeouts = Timeouts {
    nominal: 5,
    recommended: 300,
};
/// EXTENDED COPY: up to 256 MiB read and written.
const T_COPY: Timeouts = Timeouts {
    nominal: 10,
    recommended: 300,
};
/// SANITIZE overwrites or erases the whole medium.
const T_SANITIZE: Timeouts = Timeouts {
    nominal: 600,
    recommended: 86_400,
};

/// CONTROL byte usage: NACA only.
const CTL: u8 = 0x04;

/// One supported command (an operation code, or an operation code and service
/// action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandInfo {
    pub opcode: u8,
    /// Some for operation codes with service actions (SERVACTV=1).
    pub service_action: Option<u16>,
    /// CDB USAGE DATA; its length is the CDB SIZE.
    pub usage: &'static [u8],
    pub timeouts: Timeouts,
    /// Also implemented by tgt's LUN 0 controller LU (device type 0Ch).
    pub controller: bool,
}

impl CommandInfo {
    /// A command without service actions; the operation code is `usage[0]`.
    const fn op(usage: &'static [u8], timeouts: Timeouts) -> CommandInfo {
        CommandInfo {
            opcode: usage[0],
            service_action: None,
            usage,
            timeouts,
            controller: false,
        }
    }

    /// A command with a service action in byte 1 bits 4:0 of the CDB (all of this
    /// table's), taken from `usage[1]`.
    const fn sa(usage: &'static [u8], timeouts: Timeouts) -> CommandInfo {
        CommandInfo {
            service_action: Some((usage[1] & 0x1f) as u16),
            ..CommandInfo::op(usage, timeouts)
        }
    }

    /// Implemented by the controller LU too.
    const fn ctl(self) -> CommandInfo {
        CommandInfo {
            controller: true,
            ..self
        }
    }

    /// CDB SIZE.
    pub fn cdb_size(&self) -> u16 {
        self.usage.len() as u16
    }

    /// Whether an LU of type `device` implements this command.
    pub fn supported_by(&self, device: DeviceType) -> bool {
        match device {
            DeviceType::Disk => true,
            DeviceType::Controller => self.controller,
        }
    }

    /// Command timeouts descriptor (SPC-4 §6.35.4, table 273), 12 bytes.
    fn timeouts_descriptor(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        // DESCRIPTOR LENGTH 0Ah; byte 3 COMMAND SPECIFIC 0 (none defined here).
        b[1] = 0x0a;
        b[4..8].copy_from_slice(&self.timeouts.nominal.to_be_bytes());
        b[8..12].copy_from_slice(&self.timeouts.recommended.to_be_bytes());
        b
    }

    /// Command descriptor of the all_commands format (SPC-4 §6.35.2, table 271).
    fn command_descriptor(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.opcode;
        b[2..4].copy_from_slice(&self.service_action.unwrap_or(0).to_be_bytes());
        if self.service_action.is_some() {
            b[5] = 0x01; // SERVACTV
        }
        b[6..8].copy_from_slice(&self.cdb_size().to_be_bytes());
        b
    }
}

/// Every command the device server implements, ascending by operation code and
/// service action (SPC-4 §6.35, SBC-3 §5).
pub static COMMANDS: &[CommandInfo] = &[
    // TEST UNIT READY (SPC-4 §6.47).
    CommandInfo::op(&[0x00, 0, 0, 0, 0, CTL], T_EMULATED).ctl(),
    // REQUEST SENSE (SPC-4 §6.39): DESC, ALLOCATION LENGTH.
    CommandInfo::op(&[0x03, 0x01, 0, 0, 0xff, CTL], T_EMULATED).ctl(),
    // READ(6) (SBC-3 §5.10).
    CommandInfo::op(&[0x08, 0x1f, 0xff, 0xff, 0xff, CTL], T_MEDIA),
    // WRITE(6) (SBC-3 §5.31).
    CommandInfo::op(&[0x0a, 0x1f, 0xff, 0xff, 0xff, CTL], T_MEDIA),
    // INQUIRY (SPC-4 §6.6): EVPD, PAGE CODE, ALLOCATION LENGTH.
    CommandInfo::op(&[0x12, 0x01, 0xff, 0xff, 0xff, CTL], T_EMULATED).ctl(),
    // MODE SELECT(6) (SPC-4 §6.9): PF, SP, PARAMETER LIST LENGTH.
    CommandInfo::op(&[0x15, 0x11, 0, 0, 0xff, CTL], T_EMULATED),
    // RESERVE(6) and RELEASE(6) (SPC-2 §7.21, §7.17); no third-party fields.
    CommandInfo::op(&[0x16, 0, 0, 0, 0, CTL], T_EMULATED),
    CommandInfo::op(&[0x17, 0, 0, 0, 0, CTL], T_EMULATED),
    // MODE SENSE(6) (SPC-4 §6.11): DBD, PC, PAGE CODE, SUBPAGE CODE, ALLOCATION LENGTH.
    CommandInfo::op(&[0x1a, 0x08, 0xff, 0xff, 0xff, CTL], T_EMULATED),
    // START STOP UNIT (SBC-3 §5.20): IMMED, POWER CONDITION, LOEJ, START.
    CommandInfo::op(&[0x1b, 0x01, 0, 0, 0xf3, CTL], T_EMULATED),
    // PREVENT ALLOW MEDIUM REMOVAL (SBC-3 §5.5): PREVENT.
    CommandInfo::op(&[0x1e, 0, 0, 0, 0x03, CTL], T_EMULATED),
    // READ CAPACITY(10) (SBC-3 §5.15): LOGICAL BLOCK ADDRESS, PMI.
    CommandInfo::op(
        &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, CTL],
        T_EMULATED,
    ),
    // READ(10) (SBC-3 §5.11): RDPROTECT, DPO, FUA, LBA, TRANSFER LENGTH.
    CommandInfo::op(
        &[0x28, 0xf8, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, CTL],
        T_MEDIA,
    ),
    // WRITE(10) (SBC-3 §5.32): WRPROTECT, DPO, FUA.
    CommandInfo::op(
        &[0x2a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, CTL],
        T_MEDIA,
    ),
    // WRITE AND VERIFY(10) (SBC-3 §5.35): WRPROTECT, DPO, BYTCHK.
    CommandInfo::op(
        &[0x2e, 0xf2, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, CTL],
        T_MEDIA,
    ),
    // VERIFY(10) (SBC-3 §5.27): VRPROTECT, DPO, BYTCHK.
    CommandInfo::op(
        &[0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, CTL],
        T_MEDIA,
    ),
    // PRE-FETCH(10) (SBC-3 §5.6): IMMED, LBA, PREFETCH LENGTH.
    CommandInfo::op(
        &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, CTL],
        T_MEDIA,
    ),
    // SYNCHRONIZE CACHE(10) (SBC-3 §5.22): IMMED, LBA, NUMBER OF LOGICAL BLOCKS.
    CommandInfo::op(
        &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, CTL],
        T_LONG,
    ),
    // READ DEFECT DATA(10) (SBC-3 §5.12): REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT,
    // ALLOCATION LENGTH.
    CommandInfo::op(&[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, CTL], T_EMULATED),
    // WRITE SAME(10) (SBC-3 §5.41): WRPROTECT, UNMAP, LBA, NUMBER OF LOGICAL BLOCKS.
    CommandInfo::op(
        &[0x41, 0xe8, 0xff, 0xff, 0xff, 0xff, 0, 0xff, 0xff, CTL],
        T_LONG,
    ),
    // UNMAP (SBC-3 §5.28): PARAMETER LIST LENGTH.
    CommandInfo::op(&[0x42, 0, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_LONG),
    // SANITIZE (SBC-3 §5.19): IMMED, AUSE, SERVICE ACTION, PARAMETER LIST LENGTH.
    // OVERWRITE, BLOCK ERASE and EXIT FAILURE MODE; not CRYPTOGRAPHIC ERASE.
    CommandInfo::sa(&[0x48, 0xa1, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_SANITIZE),
    CommandInfo::sa(&[0x48, 0xa2, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_SANITIZE),
    CommandInfo::sa(&[0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_SANITIZE),
    // MODE SELECT(10) (SPC-4 §6.10): PF, SP, PARAMETER LIST LENGTH.
    CommandInfo::op(&[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_EMULATED),
    // RESERVE(10) and RELEASE(10) (SPC-2 §7.22, §7.18); no third-party fields.
    CommandInfo::op(&[0x56, 0, 0, 0, 0, 0, 0, 0, 0, CTL], T_EMULATED),
    CommandInfo::op(&[0x57, 0, 0, 0, 0, 0, 0, 0, 0, CTL], T_EMULATED),
    // MODE SENSE(10) (SPC-4 §6.12): LLBAA, DBD, PC, PAGE CODE, SUBPAGE CODE,
    // ALLOCATION LENGTH.
    CommandInfo::op(
        &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    // PERSISTENT RESERVE IN (SPC-4 §6.13): READ KEYS, READ RESERVATION, REPORT
    // CAPABILITIES, READ FULL STATUS; ALLOCATION LENGTH.
    CommandInfo::sa(&[0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_EMULATED),
    CommandInfo::sa(&[0x5e, 0x01, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_EMULATED),
    CommandInfo::sa(&[0x5e, 0x02, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_EMULATED),
    CommandInfo::sa(&[0x5e, 0x03, 0, 0, 0, 0, 0, 0xff, 0xff, CTL], T_EMULATED),
    // PERSISTENT RESERVE OUT (SPC-4 §6.14): REGISTER, RESERVE, RELEASE, CLEAR,
    // PREEMPT, PREEMPT AND ABORT, REGISTER AND IGNORE EXISTING KEY, REGISTER AND
    // MOVE; SCOPE, TYPE, PARAMETER LIST LENGTH.
    CommandInfo::sa(
        &[0x5f, 0x00, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[0x5f, 0x01, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[0x5f, 0x02, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[0x5f, 0x03, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[0x5f, 0x04, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[0x5f, 0x05, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[0x5f, 0x06, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[0x5f, 0x07, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, CTL],
        T_EMULATED,
    ),
    // EXTENDED COPY(LID1) (SPC-4 §6.4): PARAMETER LIST LENGTH.
    CommandInfo::sa(
        &[
            0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_COPY,
    ),
    // RECEIVE COPY RESULTS (SPC-4 §6.18): COPY STATUS (LIST IDENTIFIER) and
    // OPERATING PARAMETERS; ALLOCATION LENGTH.
    CommandInfo::sa(
        &[
            0x84, 0x00, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[
            0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_EMULATED,
    ),
    // READ(16) (SBC-3 §5.13).
    CommandInfo::op(
        &[
            0x88, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_MEDIA,
    ),
    // COMPARE AND WRITE (SBC-3 §5.2): WRPROTECT, DPO, FUA, LBA, NUMBER OF LOGICAL
    // BLOCKS.
    CommandInfo::op(
        &[
            0x89, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0, CTL,
        ],
        T_MEDIA,
    ),
    // WRITE(16) (SBC-3 §5.34).
    CommandInfo::op(
        &[
            0x8a, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_MEDIA,
    ),
    // ORWRITE(16) (SBC-3 §5.9): ORPROTECT, DPO, FUA, LBA, TRANSFER LENGTH.
    CommandInfo::op(
        &[
            0x8b, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_MEDIA,
    ),
    // WRITE AND VERIFY(16) (SBC-3 §5.37).
    CommandInfo::op(
        &[
            0x8e, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_MEDIA,
    ),
    // VERIFY(16) (SBC-3 §5.29).
    CommandInfo::op(
        &[
            0x8f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_MEDIA,
    ),
    // PRE-FETCH(16) (SBC-3 §5.7).
    CommandInfo::op(
        &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_MEDIA,
    ),
    // SYNCHRONIZE CACHE(16) (SBC-3 §5.23).
    CommandInfo::op(
        &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_LONG,
    ),
    // WRITE SAME(16) (SBC-3 §5.42): WRPROTECT, UNMAP.
    CommandInfo::op(
        &[
            0x93, 0xe8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_LONG,
    ),
    // WRITE ATOMIC(16) (SBC-4 §5.48): WRPROTECT, DPO, FUA, LBA, ATOMIC BOUNDARY,
    // TRANSFER LENGTH.
    CommandInfo::op(
        &[
            0x9c, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_MEDIA,
    ),
    // SERVICE ACTION IN(16): READ CAPACITY(16) (SBC-3 §5.16; LBA, ALLOCATION LENGTH,
    // PMI) and GET LBA STATUS (SBC-3 §5.4; STARTING LBA, ALLOCATION LENGTH).
    CommandInfo::sa(
        &[
            0x9e, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x01, CTL,
        ],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[
            0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            CTL,
        ],
        T_EMULATED,
    ),
    // REPORT LUNS (SPC-4 §6.33): SELECT REPORT, ALLOCATION LENGTH.
    CommandInfo::op(
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL],
        T_EMULATED,
    )
    .ctl(),
    // MAINTENANCE IN: REPORT TARGET PORT GROUPS (SPC-4 §6.37; PARAMETER DATA
    // FORMAT, ALLOCATION LENGTH), REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35;
    // RCTD, REPORTING OPTIONS, REQUESTED OPERATION CODE and SERVICE ACTION,
    // ALLOCATION LENGTH), REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.36;
    // REPD, ALLOCATION LENGTH).
    CommandInfo::sa(
        &[0xa3, 0xea, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL],
        T_EMULATED,
    ),
    CommandInfo::sa(
        &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_EMULATED,
    )
    .ctl(),
    CommandInfo::sa(
        &[0xa3, 0x0d, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL],
        T_EMULATED,
    ),
    // READ(12) (SBC-3 §5.12).
    CommandInfo::op(
        &[
            0xa8, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_MEDIA,
    ),
    // WRITE(12) (SBC-3 §5.33).
    CommandInfo::op(
        &[
            0xaa, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_MEDIA,
    ),
    // WRITE AND VERIFY(12) (SBC-3 §5.36).
    CommandInfo::op(
        &[
            0xae, 0xf2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_MEDIA,
    ),
    // VERIFY(12) (SBC-3 §5.28).
    CommandInfo::op(
        &[
            0xaf, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, CTL,
        ],
        T_MEDIA,
    ),
    // READ DEFECT DATA(12) (SBC-3 §5.13): REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT,
    // ALLOCATION LENGTH.
    CommandInfo::op(
        &[0xb7, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, CTL],
        T_EMULATED,
    ),
];

/// The commands an LU of type `device` implements, in table order.
pub fn commands(device: DeviceType) -> impl Iterator<Item = &'static CommandInfo> {
    COMMANDS.iter().filter(move |c| c.supported_by(device))
}

/// Whether `opcode` has service actions among the commands `device` implements.
pub fn has_service_actions(device: DeviceType, opcode: u8) -> bool {
    commands(device).any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// The table entry for `opcode` (and `service_action`, used only for operation codes
/// with service actions), if `device` implements it.
pub fn lookup(device: DeviceType, opcode: u8, service_action: u16) -> Option<&'static CommandInfo> {
    commands(device).find(|c| {
        c.opcode == opcode
            && match c.service_action {
                None => true,
                Some(sa) => sa == service_action,
            }
    })
}

/// Whether `device` implements `opcode` (with `service_action`, which is ignored for
/// operation codes without service actions).
pub fn is_supported(device: DeviceType, opcode: u8, service_action: u16) -> bool {
    lookup(device, opcode, service_action).is_some()
}

/// Whether `device` implements the command in `cdb` (service action from byte 1 bits
/// 4:0, where every service action in [`COMMANDS`] lives). False for an empty CDB.
pub fn is_supported_cdb(device: DeviceType, cdb: &[u8]) -> bool {
    match cdb {
        [op, b1, ..] => is_supported(device, *op, u16::from(b1 & 0x1f)),
        [op] => is_supported(device, *op, 0) && !has_service_actions(device, *op),
        [] => false,
    }
}

/// INVALID FIELD IN CDB at the REPORTING OPTIONS field (byte 2, bits 2:0). Never at
/// byte 1: libiscsi reads that as "MAINTENANCE IN not implemented".
fn bad_reporting_options() -> Sense {
    Sense::invalid_field_in_cdb(2, Some(2))
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35) for an LU of type `device`, from
/// the 12-byte MAINTENANCE IN CDB. REPORTING OPTIONS 000b returns every command
/// descriptor (with a command timeouts descriptor each when RCTD=1); 001b, 010b and
/// 011b return the one_command format for the requested operation code (and service
/// action). 001b for an operation code with service actions, 010b for one without,
/// and 100b..111b are INVALID FIELD IN CDB. Writes at most min(ALLOCATION LENGTH,
/// data_in.len()) bytes and returns the length truncated to ALLOCATION LENGTH.
pub fn report_supported_operation_codes(
    device: DeviceType,
    cdb: &[u8],
    data_in: &mut [u8],
) -> Result<usize, Sense> {
    let Some(cdb) = cdb.get(..12) else {
        return Err(Sense::invalid_field_in_cdb(0, None));
    };
    // CONTROL byte: NACA unsupported (SAM-5 §5.9).
    if cdb[11] & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(11, Some(2)));
    }
    if cdb[1] & 0x1f != SA_REPORT_SUPPORTED_OPERATION_CODES {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    let rctd = cdb[2] & 0x80 != 0;
    let options = cdb[2] & 0x07;
    let opcode = cdb[3];
    let service_action = u16::from_be_bytes([cdb[4], cdb[5]]);
    let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]);
    let mut out = Out::new(data_in, usize::try_from(alloc).unwrap_or(usize::MAX));
    let one = match options {
        reporting::ALL => {
            // all_commands parameter data (SPC-4 §6.35.2, table 270).
            let each = if rctd { 20 } else { 8 };
            let len = commands(device).count() * each;
            out.put(&(len as u32).to_be_bytes()); // COMMAND DATA LENGTH
            for c in commands(device) {
                let mut d = c.command_descriptor();
                if rctd {
                    d[5] |= 0x02; // CTDP
                    out.put(&d);
                    out.put(&c.timeouts_descriptor());
                } else {
                    out.put(&d);
                }
            }
            return Ok(out.finish());
        }
        reporting::OPCODE => {
            if has_service_actions(device, opcode) {
                return Err(bad_reporting_options());
            }
            lookup(device, opcode, 0)
        }
        reporting::OPCODE_AND_SA => {
            let supported = commands(device).any(|c| c.opcode == opcode);
            if supported && !has_service_actions(device, opcode) {
                return Err(bad_reporting_options());
            }
            lookup(device, opcode, service_action)
        }
        reporting::OPCODE_MAYBE_SA => lookup(device, opcode, service_action),
        _ => return Err(bad_reporting_options()),
    };
    // one_command parameter data (SPC-4 §6.35.3, table 272).
    match one {
        Some(c) => {
            let ctdp = if rctd { 0x80 } else { 0 };
            let size = c.cdb_size().to_be_bytes();
            out.put(&[0, ctdp | SUPPORT_STANDARD, size[0], size[1]]);
            out.put(c.usage);
            if rctd {
                out.put(&c.timeouts_descriptor());
            }
        }
        None => out.put(&[0, SUPPORT_NOT_SUPPORTED, 0, 0]),
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::cdb_len;
    use crate::sense::{Asc, SenseKey};
    use proptest::prelude::*;

    const DISK: DeviceType = DeviceType::Disk;
    const CONTROLLER: DeviceType = DeviceType::Controller;

    fn rsoc_cdb(rctd: bool, options: u8, opcode: u8, sa: u16, alloc: u32) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = OPCODE_MAINTENANCE_IN;
        c[1] = SA_REPORT_SUPPORTED_OPERATION_CODES;
        c[2] = options | if rctd { 0x80 } else { 0 };
        c[3] = opcode;
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    fn run(device: DeviceType, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let mut buf = vec![0u8; 4096];
        let n = report_supported_operation_codes(device, cdb, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// A command descriptor as libiscsi's scsi_maintenancein_datain_unmarshall reads
    /// it.
    #[derive(Debug)]
    struct Descriptor {
        opcode: u8,
        sa: u16,
        ctdp: bool,
        servactv: bool,
        cdb_len: u16,
        timeout_len: Option<u16>,
        nominal: u32,
        recommended: u32,
    }

    fn unmarshall_all(b: &[u8]) -> Vec<Descriptor> {
        let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut len = be32(0) as i64;
        assert_eq!(len as usize + 4, b.len());
        let mut i = 4;
        let mut v = Vec::new();
        while len >= 8 {
            let mut d = Descriptor {
                opcode: b[i],
                sa: be16(i + 2),
                ctdp: b[i + 5] & 0x02 != 0,
                servactv: b[i + 5] & 0x01 != 0,
                cdb_len: be16(i + 6),
                timeout_len: None,
                nominal: 0,
                recommended: 0,
            };
            len -= 8;
            i += 8;
            if d.ctdp {
                let tl = be16(i);
                d.timeout_len = Some(tl);
                d.nominal = be32(i + 4);
                d.recommended = be32(i + 8);
                len -= i64::from(tl) + 2;
                i += usize::from(tl) + 2;
            }
            v.push(d);
        }
        assert_eq!(len, 0);
        v
    }

    /// The exact command set the device server supports.
    #[test]
    fn table_is_the_command_set() {
        let mut expected: Vec<(u8, Option<u16>)> = [
            0x00u8, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1e, 0x25, 0x28, 0x2a,
            0x2e, 0x2f, 0x34, 0x35, 0x37, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5a, 0x88, 0x89, 0x8a,
            0x8b, 0x8e, 0x8f, 0x90, 0x91, 0x93, 0x9c, 0xa0, 0xa8, 0xaa, 0xae, 0xaf, 0xb7,
        ]
        .iter()
        .map(|&o| (o, None))
        .collect();
        let with_sa: &[(u8, &[u16])] = &[
            (0x48, &[0x01, 0x02, 0x1f]),
            (0x5e, &[0, 1, 2, 3]),
            (0x5f, &[0, 1, 2, 3, 4, 5, 6, 7]),
            (0x83, &[0]),
            (0x84, &[0, 3]),
            (0x9e, &[0x10, 0x12]),
            (0xa3, &[0x0a, 0x0c, 0x0d]),
        ];
        for (op, sas) in with_sa {
            expected.extend(sas.iter().map(|&sa| (*op, Some(sa))));
        }
        expected.sort();
        let got: Vec<_> = COMMANDS
            .iter()
            .map(|c| (c.opcode, c.service_action))
            .collect();
        assert_eq!(got, expected);
        let controller: Vec<_> = commands(CONTROLLER)
            .map(|c| (c.opcode, c.service_action))
            .collect();
        assert_eq!(
            controller,
            [
                (0x00, None),
                (0x03, None),
                (0x12, None),
                (0xa0, None),
                (0xa3, Some(0x0c))
            ]
        );
    }

    #[test]
    fn table_is_well_formed() {
        for w in COMMANDS.windows(2) {
            assert!(
                (w[0].opcode, w[0].service_action) < (w[1].opcode, w[1].service_action),
                "not ascending: {:?} {:?}",
                w[0],
                w[1]
            );
        }
        for c in COMMANDS {
            assert_eq!(c.usage[0], c.opcode);
            assert_eq!(Some(c.usage.len()), cdb_len(c.opcode), "{c:?}");
            assert_eq!(c.usage.last(), Some(&CTL));
            if let Some(sa) = c.service_action {
                assert_eq!(u16::from(c.usage[1] & 0x1f), sa);
            }
            // Either every entry of an operation code has a service action or none.
            assert!(COMMANDS
                .iter()
                .filter(|o| o.opcode == c.opcode)
                .all(|o| o.service_action.is_some() == c.service_action.is_some()));
            assert!(c.timeouts.recommended >= c.timeouts.nominal);
        }
    }

    /// libiscsi's DpoFua tests: MODE SENSE reports DPOFUA=1, so these commands must
    /// mark DPO and FUA in CDB USAGE DATA byte 1; VERIFY and WRITE AND VERIFY have
    /// DPO only.
    #[test]
    fn dpo_fua_usage_bits() {
        for op in [0x28, 0xa8, 0x88, 0x2a, 0xaa, 0x8a, 0x89, 0x8b, 0x9c] {
            let c = lookup(DISK, op, 0).unwrap();
            assert_eq!(c.usage[1] & 0x18, 0x18, "{op:#04x}");
        }
        for op in [0x2f, 0xaf, 0x8f, 0x2e, 0xae, 0x8e] {
            let c = lookup(DISK, op, 0).unwrap();
            assert_eq!(c.usage[1] & 0x18, 0x10, "{op:#04x}");
            assert_ne!(c.usage[1] & 0x06, 0, "BYTCHK {op:#04x}");
        }
        // As the one_command format returns them (test_read10_dpofua.c).
        let b = run(DISK, &rsoc_cdb(false, 1, 0x28, 0, 65535)).unwrap();
        assert_eq!(b[4 + 1] & 0x18, 0x18);
    }

    /// libiscsi's Sanitize tests look the service actions up in the all_commands
    /// data fetched with RCTD=1.
    #[test]
    fn sanitize_service_actions() {
        let b = run(DISK, &rsoc_cdb(true, 0, 0, 0, 65535)).unwrap();
        let d = unmarshall_all(&b);
        let find = |sa| d.iter().any(|x| x.opcode == 0x48 && x.sa == sa);
        assert!(find(0x01) && find(0x02) && find(0x1f));
        assert!(!find(0x03));
        assert!(is_supported(DISK, 0x48, 0x02));
        assert!(!is_supported(DISK, 0x48, 0x03));
    }

    /// libiscsi ReportSupportedOpcodes.Simple, .RCTD and .SERVACTV.
    #[test]
    fn all_commands_format() {
        let b = run(DISK, &rsoc_cdb(false, 0, 0, 0, 1024)).unwrap();
        let d = unmarshall_all(&b);
        assert_eq!(d.len(), COMMANDS.len());
        assert_eq!(b.len(), 4 + 8 * COMMANDS.len());
        for (x, c) in d.iter().zip(COMMANDS) {
            assert!(!x.ctdp);
            assert_eq!(x.opcode, c.opcode);
            assert_eq!(x.servactv, c.service_action.is_some());
            assert!(x.servactv || x.sa == 0);
            assert_eq!(x.cdb_len, c.cdb_size());
        }
        let b = run(DISK, &rsoc_cdb(true, 0, 0, 0, 65535)).unwrap();
        let d = unmarshall_all(&b);
        assert_eq!(d.len(), COMMANDS.len());
        for (x, c) in d.iter().zip(COMMANDS) {
            assert!(x.ctdp);
            assert_eq!(x.timeout_len, Some(0x0a));
            assert_eq!(
                (x.nominal, x.recommended),
                (c.timeouts.nominal, c.timeouts.recommended)
            );
        }
        // REQUESTED OPERATION CODE / SERVICE ACTION are ignored for 000b.
        assert_eq!(run(DISK, &rsoc_cdb(true, 0, 0x28, 7, 65535)).unwrap(), b);
        // The controller reports its own, shorter list.
        let d = unmarshall_all(&run(CONTROLLER, &rsoc_cdb(false, 0, 0, 0, 1024)).unwrap());
        assert_eq!(d.len(), 5);
    }

    #[test]
    fn allocation_length_truncates() {
        let full = run(DISK, &rsoc_cdb(false, 0, 0, 0, 65535)).unwrap();
        let mut buf = [0u8; 16];
        let n = report_supported_operation_codes(DISK, &rsoc_cdb(false, 0, 0, 0, 10), &mut buf)
            .unwrap();
        assert_eq!(n, 10);
        assert_eq!(&buf[..10], &full[..10]);
        assert_eq!(&buf[10..], &[0; 6]);
        // A caller buffer smaller than ALLOCATION LENGTH: the length is still the
        // full data truncated to ALLOCATION LENGTH.
        let n = report_supported_operation_codes(DISK, &rsoc_cdb(false, 0, 0, 0, 200), &mut buf)
            .unwrap();
        assert_eq!(n, 200);
        assert_eq!(buf, full[..16]);
        let n =
            report_supported_operation_codes(DISK, &rsoc_cdb(false, 0, 0, 0, 0), &mut buf).unwrap();
        assert_eq!(n, 0);
    }

    /// libiscsi ReportSupportedOpcodes.OneCommand, for every descriptor.
    #[test]
    fn one_command_for_every_descriptor() {
        let all = unmarshall_all(&run(DISK, &rsoc_cdb(false, 0, 0, 0, 65535)).unwrap());
        for d in &all {
            let r1 = run(DISK, &rsoc_cdb(false, 1, d.opcode, d.sa, 65535));
            let r2 = run(DISK, &rsoc_cdb(false, 2, d.opcode, d.sa, 65535));
            let (good, bad) = if d.servactv { (r2, r1) } else { (r1, r2) };
            let e = bad.unwrap_err();
            assert_eq!(e, Sense::invalid_field_in_cdb(2, Some(2)), "{d:?}");
            // libiscsi would take a field pointer of 1 for "not implemented".
            assert_ne!(e.field_pointer.map(|f| f.byte), Some(1));
            let b = good.unwrap();
            assert_eq!(b[1] & 0x07, SUPPORT_STANDARD, "{d:?}");
            assert_eq!(b[1] & 0x80, 0);
            let size = u16::from_be_bytes([b[2], b[3]]);
            assert_eq!(size, d.cdb_len);
            assert_eq!(b.len(), 4 + usize::from(size));
            assert_eq!(b[4], d.opcode);
            if d.servactv {
                assert_eq!(u16::from(b[5] & 0x1f), d.sa);
            }
            // 011b finds the same command either way.
            let b3 = run(DISK, &rsoc_cdb(false, 3, d.opcode, d.sa, 65535)).unwrap();
            assert_eq!(b3, b);
        }
    }

    #[test]
    fn one_command_details() {
        // RCTD: CTDP and the timeouts descriptor after the usage data.
        let b = run(DISK, &rsoc_cdb(true, 1, 0x12, 0, 65535)).unwrap();
        assert_eq!(b[1], 0x80 | SUPPORT_STANDARD);
        assert_eq!(&b[2..4], &[0, 6]);
        assert_eq!(&b[4..10], &[0x12, 0x01, 0xff, 0xff, 0xff, 0x04]);
        assert_eq!(&b[10..14], &[0, 0x0a, 0, 0]);
        assert_eq!(b.len(), 22);
        // Unsupported operation codes and service actions: SUPPORT 001b, GOOD.
        for (opt, op, sa) in [
            (1u8, 0xc0u8, 0u16),
            (2, 0x9f, 0x11),
            (3, 0x04, 0),
            (2, 0x48, 0x03),
            (3, 0x48, 0x03),
            (2, 0x9e, 0x13),
        ] {
            let b = run(DISK, &rsoc_cdb(true, opt, op, sa, 65535)).unwrap();
            assert_eq!(b, [0, SUPPORT_NOT_SUPPORTED, 0, 0], "{opt} {op:#04x} {sa}");
        }
        // 001b ignores the REQUESTED SERVICE ACTION; 011b ignores it for commands
        // without service actions.
        assert!(run(DISK, &rsoc_cdb(false, 1, 0x28, 0xffff, 100)).is_ok());
        let b = run(DISK, &rsoc_cdb(false, 3, 0x28, 0x1234, 100)).unwrap();
        assert_eq!(b[1], SUPPORT_STANDARD);
        // Controller: disk commands are not supported there, and MAINTENANCE IN has
        // only REPORT SUPPORTED OPERATION CODES.
        let b = run(CONTROLLER, &rsoc_cdb(false, 1, 0x28, 0, 100)).unwrap();
        assert_eq!(b[1], SUPPORT_NOT_SUPPORTED);
        let b = run(CONTROLLER, &rsoc_cdb(false, 1, 0x5e, 0, 100)).unwrap();
        assert_eq!(b[1], SUPPORT_NOT_SUPPORTED);
        let b = run(CONTROLLER, &rsoc_cdb(false, 2, 0xa3, 0x0a, 100)).unwrap();
        assert_eq!(b[1], SUPPORT_NOT_SUPPORTED);
        let b = run(CONTROLLER, &rsoc_cdb(false, 2, 0xa3, 0x0c, 100)).unwrap();
        assert_eq!(b[1], SUPPORT_STANDARD);
        assert!(run(CONTROLLER, &rsoc_cdb(false, 1, 0xa3, 0x0c, 100)).is_err());
    }

    #[test]
    fn cdb_errors() {
        for opt in 4..8 {
            assert_eq!(
                run(DISK, &rsoc_cdb(false, opt, 0, 0, 100)).unwrap_err(),
                Sense::invalid_field_in_cdb(2, Some(2))
            );
        }
        let mut c = rsoc_cdb(false, 0, 0, 0, 100);
        c[11] = 0x04;
        assert_eq!(
            run(DISK, &c).unwrap_err(),
            Sense::invalid_field_in_cdb(11, Some(2))
        );
        let mut c = rsoc_cdb(false, 0, 0, 0, 100);
        c[1] = SA_REPORT_TARGET_PORT_GROUPS;
        assert_eq!(
            run(DISK, &c).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(4))
        );
        let e = run(DISK, &rsoc_cdb(false, 0, 0, 0, 100)[..11]).unwrap_err();
        assert_eq!(
            (e.key, e.asc),
            (SenseKey::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
        );
        // Reserved bits of byte 2 and a longer CDB buffer are fine.
        let mut c = rsoc_cdb(false, 0, 0, 0, 100).to_vec();
        c[2] |= 0x78;
        c.extend_from_slice(&[0xff; 4]);
        assert!(run(DISK, &c).is_ok());
    }

    #[test]
    fn supported_lookups() {
        assert!(is_supported(DISK, 0x28, 0));
        assert!(is_supported(DISK, 0x28, 0x1f)); // no service actions: ignored
        assert!(is_supported(DISK, 0x9e, 0x10));
        assert!(!is_supported(DISK, 0x9e, 0x11));
        assert!(!is_supported(DISK, 0x04, 0));
        assert!(!is_supported(CONTROLLER, 0x28, 0));
        assert!(is_supported(CONTROLLER, 0x12, 0));
        assert!(has_service_actions(DISK, 0x83));
        assert!(!has_service_actions(DISK, 0x28));
        assert!(!has_service_actions(CONTROLLER, 0x5e));
        assert!(is_supported_cdb(DISK, &[0x9e, 0x10, 0, 0]));
        assert!(is_supported_cdb(DISK, &[0x9e, 0xf2]));
        assert!(!is_supported_cdb(DISK, &[0x9e, 0x11]));
        assert!(is_supported_cdb(DISK, &[0x28, 0xff]));
        assert!(is_supported_cdb(DISK, &[0x28]));
        assert!(!is_supported_cdb(DISK, &[0x9e]));
        assert!(!is_supported_cdb(DISK, &[]));
        assert!(is_supported_cdb(CONTROLLER, &[0xa3, 0x0c]));
        assert!(!is_supported_cdb(CONTROLLER, &[0xa3, 0x0a]));
        let rc16 = lookup(DISK, 0x9e, 0x10).unwrap();
        assert_eq!(rc16.service_action, Some(0x10));
    }

    proptest! {
        #[test]
        fn arbitrary_cdbs_never_panic(
            cdb in proptest::collection::vec(any::<u8>(), 0..20),
            cap in 0usize..3000,
            controller in any::<bool>(),
        ) {
            let device = if controller { CONTROLLER } else { DISK };
            let mut buf = vec![0u8; cap];
            if let Ok(n) = report_supported_operation_codes(device, &cdb, &mut buf) {
                let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]) as usize;
                prop_assert!(n <= alloc);
            }
            let _ = is_supported_cdb(device, &cdb);
        }

        #[test]
        fn one_command_requests_never_panic(
            rctd in any::<bool>(),
            options in 0u8..8,
            opcode in any::<u8>(),
            sa in any::<u16>(),
            alloc in any::<u32>(),
        ) {
            let mut buf = [0u8; 64];
            let r = report_supported_operation_codes(DISK, &rsoc_cdb(rctd, options, opcode, sa, alloc), &mut buf);
            if options == 0 || options == 3 {
                prop_assert!(r.is_ok());
            }
        }
    }
}
