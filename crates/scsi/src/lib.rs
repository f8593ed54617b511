//! rtgt-scsi: sans-IO SCSI target emulation (SPC-4, SBC-3).
//!
//! A CDB goes in through [`LogicalUnit::execute`] (or [`LunTable::execute`], which also
//! answers REPORT LUNS and commands to missing LUNs). Emulated commands (INQUIRY,
//! MODE SENSE, READ CAPACITY, ...) are answered at once with [`Outcome::Done`]; media
//! commands come back as an [`IoPlan`] that the caller runs on its backing store and
//! hands to [`LogicalUnit::complete_io`] for status and sense. No sockets, threads or
//! store calls live here; state is per LU behind its own locks.

pub mod cdb;
pub mod lu;
pub mod lun;
mod out;
pub mod pr;
pub mod rsoc;
pub mod sbc;
pub mod sense;
pub mod spc;
pub mod status;
pub mod table;
pub mod xcopy;

pub use cdb::{cdb_len, Cdb, CdbError, Opcode, PageControl};
pub use lu::{
    Command, DeviceType, IoGuard, IoKind, IoPlan, LogicalUnit, LuConfig, NexusId, Outcome,
    PlanBuffer, PlanExtra, Response,
};
pub use lun::{lun_from_wire, lun_to_wire};
pub use sense::{Asc, FieldPointer, Sense, SenseKey};
pub use status::Status;
pub use table::LunTable;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sbc3;
