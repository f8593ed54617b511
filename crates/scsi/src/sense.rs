//! Sense data (SPC-4 §4.5): sense keys, additional sense codes and the fixed and
//! descriptor formats.

/// Sense key (SPC-4 §4.5.6, table 27).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenseKey(pub u8);

impl SenseKey {
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    pub const BLANK_CHECK: SenseKey = SenseKey(0x8);
    pub const VENDOR_SPECIFIC: SenseKey = SenseKey(0x9);
    pub const COPY_ABORTED: SenseKey = SenseKey(0xa);
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xb);
    pub const VOLUME_OVERFLOW: SenseKey = SenseKey(0xd);
    pub const MISCOMPARE: SenseKey = SenseKey(0xe);
}

/// Additional sense code and qualifier, (ASC << 8) | ASCQ (SPC-4 §4.5.6, table 28).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Asc(pub u16);

impl Asc {
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x0000);
    pub const LOGICAL_UNIT_NOT_READY_CAUSE_NOT_REPORTABLE: Asc = Asc(0x0400);
    pub const LOGICAL_UNIT_IS_IN_PROCESS_OF_BECOMING_READY: Asc = Asc(0x0401);
    pub const LOGICAL_UNIT_NOT_READY_SANITIZE_IN_PROGRESS: Asc = Asc(0x041b);
    pub const WRITE_ERROR: Asc = Asc(0x0c00);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x1100);
    pub const MISCOMPARE_DURING_VERIFY_OPERATION: Asc = Asc(0x1d00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1a00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x2000);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x2100);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x2400);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc(0x2500);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x2600);
    /// INVALID RELEASE OF PERSISTENT RESERVATION (26h/04h): PERSISTENT RESERVE OUT
    /// RELEASE whose TYPE or SCOPE differs from the reservation held (SPC-4 §5.9, releasing).
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Asc = Asc(0x2604);
    pub const WRITE_PROTECTED: Asc = Asc(0x2700);
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Asc = Asc(0x2707);
    pub const POWER_ON_RESET_OR_BUS_DEVICE_RESET_OCCURRED: Asc = Asc(0x2900);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h).
    pub const POWER_ON_RESET: Asc = Asc(0x2900);
    pub const POWER_ON_OCCURRED: Asc = Asc(0x2901);
    pub const SCSI_BUS_RESET_OCCURRED: Asc = Asc(0x2902);
    /// BUS DEVICE RESET FUNCTION OCCURRED (29h/03h), posted by LOGICAL UNIT RESET.
    pub const BUS_DEVICE_RESET: Asc = Asc(0x2903);
    pub const I_T_NEXUS_LOSS_OCCURRED: Asc = Asc(0x2907);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2a01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2a03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2a04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2a05);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc(0x2a09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2f00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x3900);
    pub const SANITIZE_COMMAND_FAILED: Asc = Asc(0x3103);
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3a00);
    pub const INQUIRY_DATA_HAS_CHANGED: Asc = Asc(0x3f03);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc(0x3f0e);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x4400);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc(0x0e03);
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x5302);
    /// INSUFFICIENT REGISTRATION RESOURCES (55h/04h): no room for another persistent
    /// reservation registration (SPC-4 §5.9, registering).
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x5504);

    // Third-party copy (SPC-4 §5.17, §6.4, table 28).
    /// OPERATION IN PROGRESS (00h/16h): an EXTENDED COPY with this LIST IDENTIFIER is
    /// still being processed on the I_T nexus.
    pub const OPERATION_IN_PROGRESS: Asc = Asc(0x0016);
    /// UNREACHABLE COPY TARGET (08h/04h).
    pub const UNREACHABLE_COPY_TARGET: Asc = Asc(0x0804);
    /// COPY TARGET DEVICE NOT REACHABLE (0Dh/02h), with sense key COPY ABORTED.
    pub const COPY_TARGET_DEVICE_NOT_REACHABLE: Asc = Asc(0x0d02);
    /// INCORRECT COPY TARGET DEVICE TYPE (0Dh/03h), with sense key COPY ABORTED.
    pub const INCORRECT_COPY_TARGET_DEVICE_TYPE: Asc = Asc(0x0d03);
    /// TOO MANY TARGET DESCRIPTORS (26h/06h): more CSCD descriptors than supported.
    pub const TOO_MANY_TARGET_DESCRIPTORS: Asc = Asc(0x2606);
    /// UNSUPPORTED TARGET DESCRIPTOR TYPE CODE (26h/07h).
    pub const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x2607);
    /// TOO MANY SEGMENT DESCRIPTORS (26h/08h).
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Asc = Asc(0x2608);
    /// UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE (26h/09h).
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: Asc = Asc(0x2609);
    /// INSUFFICIENT RESOURCES (55h/03h).
    pub const INSUFFICIENT_RESOURCES: Asc = Asc(0x5503);

    /// The additional sense code byte.
    pub const fn asc(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// The additional sense code qualifier byte.
    pub const fn ascq(self) -> u8 {
        (self.0 & 0xff) as u8
    }
}

/// The sense-key specific field pointer (SPC-4 §4.5.2.4.2): which CDB or parameter
/// list byte (and bit) was wrong, for ILLEGAL REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// C/D: true when the error is in the CDB, false for the parameter list.
    pub in_cdb: bool,
    /// Byte number of the offending field.
    pub byte: u16,
    /// Bit number (0..=7) of the offending field's most significant bit, when known.
    pub bit: Option<u8>,
}

/// Sense data of one command: key, ASC/ASCQ and the optional INFORMATION and
/// field pointer (SPC-4 §4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: Asc,
    /// INFORMATION field (SPC-4 §4.5.2.1); sets VALID in the fixed format.
    pub information: Option<u32>,
    /// Sense-key specific field pointer (SPC-4 §4.5.2.4.2); sets SKSV.
    pub field_pointer: Option<FieldPointer>,
}

/// Length of fixed-format sense data with additional sense length 10 (SPC-4 §4.5.3).
pub const FIXED_SENSE_LEN: usize = 18;
/// Length of descriptor-format sense data with no descriptors (SPC-4 §4.5.2).
pub const DESCRIPTOR_SENSE_LEN: usize = 8;

impl Sense {
    pub fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense {
            key,
            asc,
            information: None,
            field_pointer: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB with the field pointer at `byte` (and `bit`).
    pub fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field_pointer: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::INVALID_FIELD_IN_CDB)
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST with the field pointer at `byte`.
    pub fn invalid_field_in_parameter_list(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            field_pointer: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Sense::new(
                SenseKey::ILLEGAL_REQUEST,
                Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            )
        }
    }

    /// Fixed-format sense data, response code 0x70 (SPC-4 §4.5.3), 18 bytes.
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        if let Some(info) = self.information {
            b[0] |= 0x80; // VALID
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[2] = self.key.0 & 0x0f;
        b[7] = (FIXED_SENSE_LEN - 8) as u8; // ADDITIONAL SENSE LENGTH
        b[12] = self.asc.asc();
        b[13] = self.asc.ascq();
        if let Some(fp) = self.field_pointer {
            b[15] = 0x80; // SKSV
            if fp.in_cdb {
                b[15] |= 0x40; // C/D
            }
            if let Some(bit) = fp.bit {
                b[15] |= 0x08 | (bit & 0x07); // BPV + BIT POINTER
            }
            b[16..18].copy_from_slice(&fp.byte.to_be_bytes());
        }
        b
    }

    /// Descriptor-format sense data, response code 0x72, without descriptors
    /// (SPC-4 §4.5.2), for REQUEST SENSE with DESC=1.
    pub fn to_descriptor(&self) -> [u8; 8] {
        [
            0x72,
            self.key.0 & 0x0f,
            self.asc.asc(),
            self.asc.ascq(),
            0,
            0,
            0,
            0,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let s = Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::LBA_OUT_OF_RANGE);
        let b = s.to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!(b[12], 0x21);
        assert_eq!(b[13], 0x00);
        assert_eq!(b[15], 0);
    }

    #[test]
    fn fixed_format_information_and_field_pointer() {
        let mut s = Sense::invalid_field_in_cdb(2, Some(5));
        s.information = Some(0x0102_0304);
        let b = s.to_fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(&b[3..7], &[1, 2, 3, 4]);
        assert_eq!(b[12], 0x24);
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 5);
        assert_eq!(&b[16..18], &[0, 2]);
        let p = Sense::invalid_field_in_parameter_list(300, None).to_fixed();
        assert_eq!(p[15], 0x80);
        assert_eq!(&p[16..18], &[1, 44]);
    }

    #[test]
    fn descriptor_format_layout() {
        let s = Sense::new(SenseKey::UNIT_ATTENTION, Asc::BUS_DEVICE_RESET);
        assert_eq!(s.to_descriptor(), [0x72, 6, 0x29, 0x03, 0, 0, 0, 0]);
    }

    #[test]
    fn asc_split() {
        assert_eq!(Asc::REPORTED_LUNS_DATA_HAS_CHANGED.asc(), 0x3f);
        assert_eq!(Asc::REPORTED_LUNS_DATA_HAS_CHANGED.ascq(), 0x0e);
    }
}
