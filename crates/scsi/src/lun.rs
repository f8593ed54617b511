//! LUN addressing on the 8-byte iSCSI LUN field (SAM-5 §4.7).
//!
//! The field is handled as the big-endian `u64` of its wire bytes. Like tgt, only the
//! first level is decoded: peripheral device addressing (method 00b, SAM-5 §4.7.6.2)
//! for LUNs below 256 and flat space addressing (method 01b, SAM-5 §4.7.6.4) below
//! 16384; the remaining levels are ignored.

/// Largest LUN representable with flat space addressing (14 bits).
pub const MAX_FLAT_LUN: u64 = 0x3fff;

/// Decode the first addressing level of a wire LUN; None for unsupported address
/// methods (logical unit addressing, extended) or a non-zero peripheral bus identifier.
pub fn lun_from_wire(raw: u64) -> Option<u64> {
    let b0 = (raw >> 56) as u8;
    let b1 = (raw >> 48) as u8;
    match b0 >> 6 {
        // Peripheral device addressing: BUS IDENTIFIER must be 0 for a single level.
        0b00 if b0 & 0x3f == 0 => Some(u64::from(b1)),
        0b01 => Some((u64::from(b0 & 0x3f) << 8) | u64::from(b1)),
        _ => None,
    }
}

/// Encode a LUN as tgt does: peripheral device addressing below 256, flat space
/// addressing otherwise (SAM-5 §4.7.6). LUNs above 16383 are truncated to 14 bits.
pub fn lun_to_wire(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        let lun = lun & MAX_FLAT_LUN;
        (0x40 | (lun >> 8)) << 56 | (lun & 0xff) << 48
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn peripheral_and_flat() {
        assert_eq!(lun_to_wire(0), 0);
        assert_eq!(lun_to_wire(1), 0x0001_0000_0000_0000);
        assert_eq!(lun_to_wire(255), 0x00ff_0000_0000_0000);
        assert_eq!(lun_to_wire(256), 0x4100_0000_0000_0000);
        assert_eq!(lun_to_wire(0x3fff), 0x7fff_0000_0000_0000);
        assert_eq!(lun_from_wire(0x0001_0000_0000_0000), Some(1));
        assert_eq!(lun_from_wire(0x4001_0000_0000_0000), Some(1));
        assert_eq!(lun_from_wire(0x7fff_0000_0000_0000), Some(0x3fff));
    }

    #[test]
    fn unsupported_methods() {
        assert_eq!(lun_from_wire(0x8000_0000_0000_0000), None); // logical unit
        assert_eq!(lun_from_wire(0xc000_0000_0000_0000), None); // extended
        assert_eq!(lun_from_wire(0x0101_0000_0000_0000), None); // bus 1
    }

    proptest! {
        #[test]
        fn roundtrip(lun in 0u64..=MAX_FLAT_LUN) {
            prop_assert_eq!(lun_from_wire(lun_to_wire(lun)), Some(lun));
        }

        #[test]
        fn decode_never_exceeds_flat(raw in any::<u64>()) {
            if let Some(l) = lun_from_wire(raw) {
                prop_assert!(l <= MAX_FLAT_LUN);
            }
        }
    }
}
