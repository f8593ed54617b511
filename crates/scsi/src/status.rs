//! SCSI status codes (SAM-5 §5.3).

/// A SCSI status byte as sent in the iSCSI SCSI Response PDU (SAM-5 §5.3.1, RFC 7143 §11.4.2).
///
/// Open: values come from (and go to) the wire, so unknown codes round-trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    /// The command completed without error (SAM-5 §5.3.1).
    pub const GOOD: Status = Status(0x00);
    /// Sense data describes an error or an exception (SAM-5 §5.3.1).
    pub const CHECK_CONDITION: Status = Status(0x02);
    /// Requested operation satisfied (PRE-FETCH, SBC-3 §5.8).
    pub const CONDITION_MET: Status = Status(0x04);
    /// The logical unit is temporarily unable to accept a command.
    pub const BUSY: Status = Status(0x08);
    /// Access conflicts with a reservation (SPC-4 §5.9).
    pub const RESERVATION_CONFLICT: Status = Status(0x18);
    /// The task set is full (SAM-5 §5.3.1).
    pub const TASK_SET_FULL: Status = Status(0x28);
    /// An ACA condition exists (SAM-5 §5.9).
    pub const ACA_ACTIVE: Status = Status(0x30);
    /// The command was aborted by another I_T nexus (TAS=1, SAM-5 §5.3.1).
    pub const TASK_ABORTED: Status = Status(0x40);
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let name = match *self {
            Status::GOOD => "GOOD",
            Status::CHECK_CONDITION => "CHECK CONDITION",
            Status::CONDITION_MET => "CONDITION MET",
            Status::BUSY => "BUSY",
            Status::RESERVATION_CONFLICT => "RESERVATION CONFLICT",
            Status::TASK_SET_FULL => "TASK SET FULL",
            Status::ACA_ACTIVE => "ACA ACTIVE",
            Status::TASK_ABORTED => "TASK ABORTED",
            Status(v) => return write!(f, "status {v:#04x}"),
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_sam5() {
        assert_eq!(Status::GOOD.0, 0);
        assert_eq!(Status::CHECK_CONDITION.0, 2);
        assert_eq!(Status::RESERVATION_CONFLICT.0, 0x18);
        assert_eq!(Status::TASK_ABORTED.0, 0x40);
        assert_eq!(Status(0x77).to_string(), "status 0x77");
        assert_eq!(Status::BUSY.to_string(), "BUSY");
    }
}
