//! Initiator PDUs as they travel on the wire (RFC 7143 §11.2): the BHS
//! builders the seeds use, and framing with AHS, digests and padding.

use rtgt_iscsi::pdu::{crc32c_of, digest_bytes, pad4, Bhs, Opcode, BHS_LEN};

/// Largest DataSegmentLength the 24-bit field holds (RFC 7143 §11.2.1.4).
pub const MAX_DSL: usize = 0x00ff_ffff;

/// A field value the driver replaces before sending a structured frame (see
/// `driver`): CmdSN, ExpStatSN, a TTT or a Data-Out's BufferOffset becomes
/// the value the target expects, so a mutated sequence stays in step. (It is
/// a legal value on the wire, just an unlikely one.)
pub const NEXT: u32 = 0xffff_fffe;

/// The ISID every seed uses (RFC 7143 §11.12.5: type 10b, random).
pub const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x00, 0x01];

/// Frames a PDU: TotalAHSLength and DataSegmentLength set from `ahs` and
/// `data`, then the header digest, padding and data digest (§11.2.4, §13.1).
/// `ahs` is cut to whole 4-byte words and `data` to [`MAX_DSL`].
pub fn frame(bhs: &Bhs, ahs: &[u8], data: &[u8], hd: bool, dd: bool) -> Vec<u8> {
    let words = (ahs.len() / 4).min(255);
    let ahs = &ahs[..words * 4];
    let data = &data[..data.len().min(MAX_DSL)];
    let mut b = *bhs;
    b.0[4] = words as u8;
    b.set_data_segment_len(data.len());
    let mut out = Vec::with_capacity(BHS_LEN + ahs.len() + 8 + pad4(data.len()));
    out.extend_from_slice(&b.0);
    out.extend_from_slice(ahs);
    if hd {
        out.extend_from_slice(&digest_bytes(crc32c_of(&[&out])));
    }
    let start = out.len();
    out.extend_from_slice(data);
    out.resize(start + pad4(data.len()), 0);
    if dd && !data.is_empty() {
        // The data digest covers the padding too (§11.2.4).
        let crc = crc32c_of(&[&out[start..]]);
        out.extend_from_slice(&digest_bytes(crc));
    }
    out
}

fn bhs(op: Opcode, immediate: bool, flags: u8, itt: u32) -> Bhs {
    let mut b = Bhs::default();
    b.set_opcode(op, immediate);
    b.set_flags(flags);
    b.set_u32(16, itt);
    b
}

/// Login Request (§11.12): T, C, CSG, NSG; always immediate (§11.12: I=1).
pub fn login(csg: u8, nsg: u8, transit: bool, cont: bool, cmd_sn: u32, exp_stat_sn: u32) -> Bhs {
    let mut f = ((csg & 3) << 2) | (nsg & 3);
    if transit {
        f |= 0x80;
    }
    if cont {
        f |= 0x40;
    }
    let mut b = bhs(Opcode::LOGIN_REQUEST, true, f, 1);
    b.0[8..14].copy_from_slice(&ISID);
    b.set_u32(24, cmd_sn);
    b.set_u32(28, exp_stat_sn);
    b
}

/// Direction and data of a SCSI Command (§11.3.1).
#[derive(Clone, Copy, Debug)]
pub struct Dir {
    pub read: bool,
    pub write: bool,
    /// F: no unsolicited Data-Out follows.
    pub final_bit: bool,
}

/// SCSI Command (§11.3) to LUN `lun` (peripheral addressing), SIMPLE task.
pub fn scsi(itt: u32, lun: u8, dir: Dir, edtl: u32, cmd_sn: u32, cdb: &[u8]) -> Bhs {
    let mut f = 0x01;
    if dir.final_bit {
        f |= 0x80;
    }
    if dir.read {
        f |= 0x40;
    }
    if dir.write {
        f |= 0x20;
    }
    let mut b = bhs(Opcode::SCSI_COMMAND, false, f, itt);
    b.set_u64(8, u64::from(lun) << 48);
    b.set_u32(20, edtl);
    b.set_u32(24, cmd_sn);
    b.set_u32(28, NEXT);
    let n = cdb.len().min(16);
    b.0[32..32 + n].copy_from_slice(&cdb[..n]);
    b
}

/// SCSI Data-Out (§11.7).
pub fn data_out(itt: u32, lun: u8, ttt: u32, data_sn: u32, offset: u32, fin: bool) -> Bhs {
    let mut b = bhs(
        Opcode::SCSI_DATA_OUT,
        false,
        if fin { 0x80 } else { 0 },
        itt,
    );
    b.set_u64(8, u64::from(lun) << 48);
    b.set_u32(20, ttt);
    b.set_u32(28, NEXT);
    b.set_u32(36, data_sn);
    b.set_u32(40, offset);
    b
}

/// NOP-Out (§11.18): a ping (ITT set, TTT reserved) or an answer to ours.
pub fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, immediate: bool) -> Bhs {
    let mut b = bhs(Opcode::NOP_OUT, immediate, 0x80, itt);
    b.set_u32(20, ttt);
    b.set_u32(24, cmd_sn);
    b.set_u32(28, NEXT);
    b
}

/// Text Request (§11.10).
pub fn text(itt: u32, ttt: u32, cmd_sn: u32, fin: bool, cont: bool) -> Bhs {
    let f = if fin { 0x80 } else { 0 } | if cont { 0x40 } else { 0 };
    let mut b = bhs(Opcode::TEXT_REQUEST, false, f, itt);
    b.set_u32(20, ttt);
    b.set_u32(24, cmd_sn);
    b.set_u32(28, NEXT);
    b
}

/// Task Management Function Request (§11.5).
pub fn tmf(itt: u32, function: u8, lun: u8, referenced: u32, cmd_sn: u32) -> Bhs {
    let mut b = bhs(Opcode::TASK_MGMT_REQUEST, true, 0x80 | function, itt);
    b.set_u64(8, u64::from(lun) << 48);
    b.set_u32(20, referenced);
    b.set_u32(24, cmd_sn);
    b.set_u32(28, NEXT);
    b.set_u32(32, cmd_sn);
    b
}

/// Logout Request (§11.14).
pub fn logout(itt: u32, reason: u8, cmd_sn: u32) -> Bhs {
    let mut b = bhs(Opcode::LOGOUT_REQUEST, false, 0x80 | reason, itt);
    b.set_u32(24, cmd_sn);
    b.set_u32(28, NEXT);
    b
}

/// SNACK Request (§11.16): needs ERL > 0, which rtgt never offers.
pub fn snack(itt: u32, kind: u8) -> Bhs {
    bhs(Opcode::SNACK_REQUEST, false, 0x80 | kind, itt)
}

/// `key=value\0` pairs (§6.1).
pub fn keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        rtgt_iscsi::text::encode_pair(&mut out, k, v);
    }
    out
}
