//! Primary commands (SPC-4): INQUIRY and its VPD pages, REQUEST SENSE, REPORT LUNS
//! and MODE SENSE. Each builder writes into the caller's data-in buffer, truncated to
//! the ALLOCATION LENGTH (SPC-4 §4.2.5.6), and returns the data-in length.

use crate::cdb::PageControl;
use crate::lu::{DeviceType, LuConfig};
use crate::lun::lun_to_wire;
use crate::out::Out;
use crate::sense::{Asc, Sense, SenseKey, DESCRIPTOR_SENSE_LEN, FIXED_SENSE_LEN};

/// VERSION: SPC-4 (SPC-4 §6.6.2).
pub const VERSION_SPC4: u8 = 0x06;
/// Length of the standard INQUIRY data returned (through the version descriptors
/// and the reserved bytes after them, SPC-4 §6.6.2).
pub const STANDARD_INQUIRY_LEN: usize = 96;

/// Version descriptors (SPC-4 §6.6.2, table 146): SAM-5, iSCSI, SPC-4, SBC-3.
/// libiscsi's suite keys SBC-3 features (Block Limits length 0x3C) on 0x04C0.
const VERSION_DESCRIPTORS_DISK: [u16; 4] = [0x00a0, 0x0960, 0x0460, 0x04c0];
const VERSION_DESCRIPTORS_CONTROLLER: [u16; 3] = [0x00a0, 0x0960, 0x0460];

/// Supported VPD pages (SPC-4 §7.8, SBC-3 §6.5), ascending as SPC-4 §7.8.16 requires.
pub mod vpd {
    pub const SUPPORTED_PAGES: u8 = 0x00;
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    pub const BLOCK_LIMITS: u8 = 0xb0;
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xb1;
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xb2;
}

const DISK_VPD_PAGES: [u8; 6] = [
    vpd::SUPPORTED_PAGES,
    vpd::UNIT_SERIAL_NUMBER,
    vpd::DEVICE_IDENTIFICATION,
    vpd::BLOCK_LIMITS,
    vpd::BLOCK_DEVICE_CHARACTERISTICS,
    vpd::LOGICAL_BLOCK_PROVISIONING,
];
const CONTROLLER_VPD_PAGES: [u8; 3] = [
    vpd::SUPPORTED_PAGES,
    vpd::UNIT_SERIAL_NUMBER,
    vpd::DEVICE_IDENTIFICATION,
];

/// IEEE company ID used in the NAA IEEE Registered designator. rtgt has no OUI of its
/// own; 0 keeps the designator well-formed while the vendor specific part (a hash of
/// scsi_id) makes it unique per LU.
pub const NAA_IEEE_COMPANY_ID: u64 = 0x00_0000;

/// Longest identifier string copied into VPD data; longer config strings are cut.
const MAX_ID_LEN: usize = 200;

/// Copy `s` into `dst` space padded (SPC-4 §4.4.1 ASCII fields), replacing bytes
/// outside 0x20..=0x7e by spaces.
fn put_ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = if (0x20..=0x7e).contains(&c) { c } else { b' ' };
    }
}

fn ascii_bytes(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.bytes()
        .take(MAX_ID_LEN)
        .map(|c| if (0x20..=0x7e).contains(&c) { c } else { b' ' })
}

/// Standard INQUIRY data (SPC-4 §6.6.2).
pub fn standard_inquiry(cfg: &LuConfig) -> [u8; STANDARD_INQUIRY_LEN] {
    let mut b = [0u8; STANDARD_INQUIRY_LEN];
    b[0] = cfg.device_type.peripheral_type(); // PERIPHERAL QUALIFIER 000b
    if cfg.removable {
        b[1] = 0x80; // RMB
    }
    b[2] = VERSION_SPC4;
    b[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT 2
    b[4] = (STANDARD_INQUIRY_LEN - 5) as u8; // ADDITIONAL LENGTH
    if cfg.device_type == DeviceType::Disk {
        // TPGS 01b: implicit ALUA (REPORT TARGET PORT GROUPS, SPC-4 §5.15);
        // 3PC: EXTENDED COPY (SPC-4 §6.4).
        b[5] = 0x10 | 0x08;
    }
    b[7] = 0x02; // CMDQUE
    put_ascii(&mut b[8..16], &cfg.vendor_id);
    put_ascii(&mut b[16..32], &cfg.product_id);
    put_ascii(&mut b[32..36], &cfg.product_rev);
    let descriptors: &[u16] = match cfg.device_type {
        DeviceType::Disk => &VERSION_DESCRIPTORS_DISK,
        DeviceType::Controller => &VERSION_DESCRIPTORS_CONTROLLER,
    };
    for (i, d) in descriptors.iter().enumerate() {
        let at = 58 + 2 * i;
        b[at..at + 2].copy_from_slice(&d.to_be_bytes());
    }
    b
}

/// INQUIRY (SPC-4 §6.6): standard data or a VPD page; unsupported page ->
/// INVALID FIELD IN CDB.
pub fn inquiry(
    cfg: &LuConfig,
    evpd: bool,
    page_code: u8,
    allocation_length: u16,
    data_in: &mut [u8],
) -> Result<usize, Sense> {
    let mut out = Out::new(data_in, usize::from(allocation_length));
    if !evpd {
        out.put(&standard_inquiry(cfg));
        return Ok(out.finish());
    }
    let disk = cfg.device_type == DeviceType::Disk;
    let pages: &[u8] = if disk {
        &DISK_VPD_PAGES
    } else {
        &CONTROLLER_VPD_PAGES
    };
    if !pages.contains(&page_code) {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    let pdt = cfg.device_type.peripheral_type();
    match page_code {
        vpd::SUPPORTED_PAGES => {
            out.put(&[pdt, page_code, 0, pages.len() as u8]);
            out.put(pages);
        }
        vpd::UNIT_SERIAL_NUMBER => {
            // SPC-4 §7.8.15: PRODUCT SERIAL NUMBER, ASCII.
            let n = cfg.scsi_sn.len().min(MAX_ID_LEN);
            out.put(&[pdt, page_code, 0, n as u8]);
            for c in ascii_bytes(&cfg.scsi_sn) {
                out.put(&[c]);
            }
        }
        vpd::DEVICE_IDENTIFICATION => device_identification(cfg, &mut out),
        vpd::BLOCK_LIMITS => out.put(&block_limits(cfg)),
        vpd::BLOCK_DEVICE_CHARACTERISTICS => {
            // SBC-3 §6.5.2: MEDIUM ROTATION RATE 0001h = non-rotating medium.
            let mut b = [0u8; 64];
            b[0] = pdt;
            b[1] = page_code;
            b[3] = 0x3c;
            b[5] = 0x01;
            // WABEREQ 01b (SBC-4 §6.6.2): after SANITIZE BLOCK ERASE reads
            // succeed and return zeros (the blocks are deallocated, LBPRZ=1).
            b[7] = 0x40;
            out.put(&b);
        }
        vpd::LOGICAL_BLOCK_PROVISIONING => {
            // SBC-3 §6.5.4.
            let mut b = [0u8; 8];
            b[0] = pdt;
            b[1] = page_code;
            b[3] = 4;
            if cfg.thin_provisioning {
                b[5] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ
                b[6] = 0x02; // PROVISIONING TYPE: thin provisioned
            }
            out.put(&b);
        }
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(7))),
    }
    Ok(out.finish())
}

/// The T10 vendor ID designator's vendor specific part: scsi_id without the vendor
/// prefix tgt already puts there ("IET     00010001").
fn t10_vendor_specific<'a>(cfg: &'a LuConfig, vendor: &[u8; 8]) -> &'a str {
    let id = cfg.scsi_id.as_str();
    match (id.get(..8), id.get(8..)) {
        (Some(head), Some(rest)) if head.as_bytes() == vendor => rest,
        _ => id,
    }
}

/// FNV-1a 64: a stable hash so the NAA designator survives restarts.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// NAA IEEE Registered designator value (SPC-4 §7.8.6.6.3): NAA 5, IEEE company ID,
/// 36-bit vendor specific identifier derived from scsi_id.
pub fn naa_designator(scsi_id: &str) -> u64 {
    (5u64 << 60) | (NAA_IEEE_COMPANY_ID & 0xff_ffff) << 36 | (fnv1a(scsi_id) & 0xf_ffff_ffff)
}

/// Device Identification VPD (SPC-4 §7.8.6): T10 vendor ID (§7.8.6.4) and NAA
/// (§7.8.6.6) designators, both associated with the logical unit.
fn device_identification(cfg: &LuConfig, out: &mut Out<'_>) {
    let mut vendor = [b' '; 8];
    put_ascii(&mut vendor, &cfg.vendor_id);
    let specific = t10_vendor_specific(cfg, &vendor);
    let specific_len = specific.len().min(MAX_ID_LEN);
    let t10_len = 8 + specific_len;
    let naa_len = 8;
    let port_len = 4 + 4 + 4 + 4;
    let page_len = 4 + t10_len + 4 + naa_len + port_len;
    out.put(&[
        cfg.device_type.peripheral_type(),
        vpd::DEVICE_IDENTIFICATION,
        (page_len >> 8) as u8,
        page_len as u8,
    ]);
    // CODE SET 2 (ASCII); PIV 0, ASSOCIATION 00b (LU), DESIGNATOR TYPE 1 (T10 vendor ID).
    out.put(&[0x02, 0x01, 0, t10_len as u8]);
    out.put(&vendor);
    for c in ascii_bytes(specific) {
        out.put(&[c]);
    }
    // CODE SET 1 (binary); DESIGNATOR TYPE 3 (NAA).
    out.put(&[0x01, 0x03, 0, naa_len as u8]);
    out.put(&naa_designator(&cfg.scsi_id).to_be_bytes());
    // PROTOCOL IDENTIFIER 5 (iSCSI), CODE SET 1, PIV 1, ASSOCIATION 01b (target
    // port): RELATIVE TARGET PORT (type 4, §7.8.6.7) and TARGET PORT GROUP (type 5,
    // §7.8.6.8), which ALUA initiators read with REPORT TARGET PORT GROUPS.
    out.put(&[0x51, 0x94, 0, 4, 0, 0]);
    out.put(&RELATIVE_TARGET_PORT.to_be_bytes());
    out.put(&[0x51, 0x95, 0, 4, 0, 0]);
    out.put(&TARGET_PORT_GROUP.to_be_bytes());
}

/// Block Limits VPD (SBC-3 §6.5.3), page length 0x3C.
fn block_limits(cfg: &LuConfig) -> [u8; 64] {
    let bs = cfg.block_len();
    let mut b = [0u8; 64];
    b[0] = cfg.device_type.peripheral_type();
    b[1] = vpd::BLOCK_LIMITS;
    b[3] = 0x3c;
    // OPTIMAL TRANSFER LENGTH GRANULARITY: 4 KiB worth of blocks.
    let granularity = (4096 / bs).max(1) as u16;
    b[6..8].copy_from_slice(&granularity.to_be_bytes());
    // MAXIMUM COMPARE AND WRITE LENGTH (byte 5).
    b[5] = crate::sbc::MAX_COMPARE_AND_WRITE_BLOCKS as u8;
    let max_blocks = cfg.max_transfer / bs;
    b[8..12].copy_from_slice(&max_blocks.to_be_bytes()); // MAXIMUM TRANSFER LENGTH
    b[12..16].copy_from_slice(&max_blocks.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
                                                          // MAXIMUM WRITE SAME LENGTH (bytes 36..44).
    b[36..44].copy_from_slice(&crate::sbc::max_write_same_blocks(cfg).to_be_bytes());
    if cfg.thin_provisioning {
        // MAXIMUM UNMAP LBA COUNT and MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT are
        // non-zero exactly when LBPU is set (SBC-3 §6.5.3).
        b[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        b[24..28].copy_from_slice(&crate::sbc::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        // OPTIMAL UNMAP GRANULARITY: one physical block (a file's page).
        let unmap_granularity = crate::sbc::blocks_per_physical(cfg);
        b[28..32].copy_from_slice(&unmap_granularity.to_be_bytes());
    }
    // MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT and ATOMIC TRANSFER
    // LENGTH GRANULARITY (bytes 44..56, SBC-4 §6.6.4); no atomic boundaries.
    b[44..48].copy_from_slice(&(crate::sbc::MAX_ATOMIC_BYTES / bs).max(1).to_be_bytes());
    let unit = crate::sbc::atomic_unit(cfg);
    b[48..52].copy_from_slice(&unit.to_be_bytes());
    b[52..56].copy_from_slice(&unit.to_be_bytes());
    b
}

/// REQUEST SENSE parameter data (SPC-4 §6.39): fixed format, or descriptor format
/// when DESC=1.
pub fn request_sense(
    sense: &Sense,
    desc: bool,
    allocation_length: u8,
    data_in: &mut [u8],
) -> usize {
    let mut out = Out::new(data_in, usize::from(allocation_length));
    if desc {
        let b: [u8; DESCRIPTOR_SENSE_LEN] = sense.to_descriptor();
        out.put(&b);
    } else {
        let b: [u8; FIXED_SENSE_LEN] = sense.to_fixed();
        out.put(&b);
    }
    out.finish()
}

/// REPORT LUNS parameter data (SPC-4 §6.33): every LUN for SELECT REPORT 00h/02h,
/// none for 01h (no well-known LUs); ALLOCATION LENGTH below 16 is invalid.
pub fn report_luns(
    luns: impl IntoIterator<Item = u64>,
    select_report: u8,
    allocation_length: u32,
    data_in: &mut [u8],
) -> Result<usize, Sense> {
    if allocation_length < 16 {
        return Err(Sense::invalid_field_in_cdb(6, None));
    }
    let include = match select_report {
        0x00 | 0x02 => true,
        0x01 => false,
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(7))),
    };
    let luns = luns.into_iter();
    let mut count: u32 = 0;
    // Write a provisional header, the LUNs, then patch LUN LIST LENGTH in place.
    let mut out = Out::new(data_in, allocation_length as usize);
    out.put(&[0u8; 8]);
    if include {
        for lun in luns {
            out.put(&lun_to_wire(lun).to_be_bytes());
            count = count.saturating_add(1);
        }
    }
    let list_len = count.saturating_mul(8);
    let n = out.finish();
    if let Some(h) = data_in.get_mut(..4.min(n).min(data_in.len())) {
        let bytes = list_len.to_be_bytes();
        h.copy_from_slice(&bytes[..h.len()]);
    }
    Ok(n)
}

/// Arguments of MODE SENSE(6)/(10) (SPC-4 §6.11, §6.12).
#[derive(Clone, Copy, Debug)]
pub struct ModeSenseArgs {
    pub ten: bool,
    pub dbd: bool,
    pub llbaa: bool,
    pub pc: PageControl,
    pub page_code: u8,
    pub subpage_code: u8,
    pub allocation_length: u16,
}

/// Mode page codes (SPC-4 §7.5, SBC-3 §6.4).
pub mod mode_page {
    pub const READ_WRITE_ERROR_RECOVERY: u8 = 0x01;
    pub const CACHING: u8 = 0x08;
    pub const CONTROL: u8 = 0x0a;
    pub const ALL_PAGES: u8 = 0x3f;
}

/// Append one mode page (current/default, or changeable mask) to `buf` at `at`;
/// returns the new end. MODE SELECT may change WCE (Caching) and SWP (Control);
/// every other field is fixed (SPC-4 §6.11.1).
fn put_mode_page(
    cfg: &LuConfig,
    page: u8,
    pc: PageControl,
    buf: &mut [u8; 128],
    at: usize,
) -> usize {
    let mut p = [0u8; 20];
    let len = match page {
        mode_page::READ_WRITE_ERROR_RECOVERY => {
            // SBC-3 §6.4.7: page length 0Ah; no retries or recovery options reported.
            12
        }
        mode_page::CACHING => {
            // SBC-3 §6.4.5: page length 12h; WCE per config, RCD 0.
            // WCE is changeable by MODE SELECT (SBC-3 §6.4.5).
            if pc == PageControl::CHANGEABLE || cfg.write_cache {
                p[2] = 0x04; // WCE
            }
            20
        }
        mode_page::CONTROL => {
            // SPC-4 §7.5.8: page length 0Ah; TST 000b, QUEUE ALGORITHM MODIFIER 1
            // (unrestricted reordering), TAS 1, BUSY TIMEOUT PERIOD unlimited.
            // SWP (byte 4 bit 3) is the one changeable field (SPC-4 §7.5.8).
            if pc == PageControl::CHANGEABLE {
                p[4] = 0x08;
            } else {
                p[3] = 0x10;
                p[4] = if cfg.swp { 0x08 } else { 0 };
                p[5] = 0x40;
                p[8] = 0xff;
                p[9] = 0xff;
            }
            12
        }
        _ => return at,
    };
    p[0] = page;
    p[1] = (len - 2) as u8;
    let end = at + len;
    if let (Some(dst), Some(src)) = (buf.get_mut(at..end), p.get(..len)) {
        dst.copy_from_slice(src);
        end
    } else {
        at
    }
}

/// MODE SENSE(6)/(10) (SPC-4 §6.11, §6.12): header, optional block descriptor
/// (SBC-3 §6.4.2), then the requested pages.
pub fn mode_sense(cfg: &LuConfig, a: ModeSenseArgs, data_in: &mut [u8]) -> Result<usize, Sense> {
    if a.pc == PageControl::SAVED {
        return Err(Sense::new(
            SenseKey::ILLEGAL_REQUEST,
            Asc::SAVING_PARAMETERS_NOT_SUPPORTED,
        ));
    }
    let pages: &[u8] = match a.page_code {
        mode_page::ALL_PAGES => &[
            mode_page::READ_WRITE_ERROR_RECOVERY,
            mode_page::CACHING,
            mode_page::CONTROL,
        ],
        mode_page::READ_WRITE_ERROR_RECOVERY => &[mode_page::READ_WRITE_ERROR_RECOVERY],
        mode_page::CACHING => &[mode_page::CACHING],
        mode_page::CONTROL => &[mode_page::CONTROL],
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(5))),
    };
    // No subpages: only subpage 0, or FFh with page 3Fh ("all pages and subpages").
    let subpage_ok =
        a.subpage_code == 0 || (a.subpage_code == 0xff && a.page_code == mode_page::ALL_PAGES);
    if !subpage_ok {
        return Err(Sense::invalid_field_in_cdb(3, Some(7)));
    }
    let mut body = [0u8; 128];
    let mut end = 0;
    for &p in pages {
        end = put_mode_page(cfg, p, a.pc, &mut body, end);
    }
    // Block descriptor (SBC-3 §6.4.2): short (8 bytes), or long (16) for MODE SENSE(10)
    // with LLBAA.
    let blocks = cfg.num_blocks();
    let bs = cfg.block_len();
    let mut desc = [0u8; 16];
    let desc_len = if a.dbd {
        0
    } else if a.llbaa {
        desc[0..8].copy_from_slice(&blocks.to_be_bytes());
        desc[12..16].copy_from_slice(&bs.to_be_bytes());
        16
    } else {
        let short = u32::try_from(blocks).unwrap_or(u32::MAX);
        desc[0..4].copy_from_slice(&short.to_be_bytes());
        desc[5..8].copy_from_slice(&bs.to_be_bytes()[1..4]);
        8
    };
    // DEVICE-SPECIFIC PARAMETER (SBC-3 §6.4.1): WP when read-only, DPOFUA supported.
    let mut dsp = 0x10;
    if cfg.write_protected() {
        dsp |= 0x80;
    }
    let mut out = Out::new(data_in, usize::from(a.allocation_length));
    if a.ten {
        let total = 8 + desc_len + end;
        let mdl = (total - 2) as u16;
        let mut h = [0u8; 8];
        h[0..2].copy_from_slice(&mdl.to_be_bytes());
        h[3] = dsp;
        if desc_len == 16 {
            h[4] = 0x01; // LONGLBA
        }
        h[6..8].copy_from_slice(&(desc_len as u16).to_be_bytes());
        out.put(&h);
    } else {
        let total = 4 + desc_len + end;
        out.put(&[(total - 1) as u8, 0, dsp, desc_len as u8]);
    }
    out.put(&desc[..desc_len]);
    out.put(&body[..end]);
    Ok(out.finish())
}

/// The mode parameters MODE SELECT may change (SPC-4 §6.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSelection {
    /// Caching page WCE (SBC-3 §6.4.5).
    pub write_cache: bool,
    /// Control page SWP (SPC-4 §7.5.8).
    pub swp: bool,
}

/// MODE SELECT(6)/(10) (SPC-4 §6.9, §6.10): parse the parameter list (header,
/// block descriptors, pages) against the current values. Only the Caching page's
/// WCE and the Control page's SWP are changeable; any other difference from the
/// current page is INVALID FIELD IN PARAMETER LIST (SPC-4 §6.9: a field that is
/// not changeable must hold its current value). SP=1 is refused: nothing is saved.
pub fn mode_select(
    cfg: &LuConfig,
    ten: bool,
    pf: bool,
    sp: bool,
    param: &[u8],
) -> Result<ModeSelection, Sense> {
    let mut sel = ModeSelection {
        write_cache: cfg.write_cache,
        swp: cfg.swp,
    };
    if sp {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    if param.is_empty() {
        return Ok(sel);
    }
    if !pf {
        // Vendor-specific page format is not supported.
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    let header = if ten { 8 } else { 4 };
    if param.len() < header {
        return Err(Sense::new(
            SenseKey::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR,
        ));
    }
    let bdl = if ten {
        usize::from(u16::from_be_bytes([param[6], param[7]]))
    } else {
        usize::from(param[3])
    };
    let mut at = header + bdl;
    if at > param.len() {
        return Err(Sense::new(
            SenseKey::ILLEGAL_REQUEST,
            Asc::PARAMETER_LIST_LENGTH_ERROR,
        ));
    }
    while at < param.len() {
        let code = param[at] & 0x3f;
        if param[at] & 0x40 != 0 {
            // SPF: no subpages here.
            return Err(Sense::invalid_field_in_parameter_list(at as u16, Some(6)));
        }
        let Some(&plen) = param.get(at + 1) else {
            return Err(Sense::new(
                SenseKey::ILLEGAL_REQUEST,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        };
        let end = at + 2 + usize::from(plen);
        let Some(page) = param.get(at..end) else {
            return Err(Sense::new(
                SenseKey::ILLEGAL_REQUEST,
                Asc::PARAMETER_LIST_LENGTH_ERROR,
            ));
        };
        let mut current = [0u8; 128];
        let cur_end = put_mode_page(cfg, code, PageControl::CURRENT, &mut current, 0);
        let mut mask = [0u8; 128];
        put_mode_page(cfg, code, PageControl::CHANGEABLE, &mut mask, 0);
        if cur_end == 0 {
            return Err(Sense::invalid_field_in_parameter_list(at as u16, Some(5)));
        }
        if page.len() != cur_end {
            return Err(Sense::invalid_field_in_parameter_list(
                at as u16 + 1,
                Some(7),
            ));
        }
        // Byte 0 carries PS (bit 7), which MODE SELECT ignores.
        for i in 1..page.len() {
            if (page[i] ^ current[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_field_in_parameter_list(
                    (at + i) as u16,
                    None,
                ));
            }
        }
        match code {
            mode_page::CACHING => sel.write_cache = page[2] & 0x04 != 0,
            mode_page::CONTROL => sel.swp = page[4] & 0x08 != 0,
            _ => {}
        }
        at = end;
    }
    Ok(sel)
}

/// READ DEFECT DATA(10)/(12) (SBC-3 §5.17, §5.18): a file or device store has no
/// defect list, so the header reports PLISTV/GLISTV as requested with an empty list.
pub fn read_defect_data(
    twelve: bool,
    req_plist: bool,
    req_glist: bool,
    format: u8,
    allocation_length: u32,
    data_in: &mut [u8],
) -> usize {
    let flags = (u8::from(req_plist) << 4) | (u8::from(req_glist) << 3) | format;
    let mut out = Out::new(data_in, allocation_length as usize);
    if twelve {
        out.put(&[0, flags, 0, 0, 0, 0, 0, 0]);
    } else {
        out.put(&[0, flags, 0, 0]);
    }
    out.finish()
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.37): ABORT TASK, ABORT
/// TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET and TARGET RESET (iSCSI's warm and
/// cold resets, RFC 7143 §11.5.1).
pub fn report_supported_tmfs(repd: bool, allocation_length: u32, data_in: &mut [u8]) -> usize {
    // ATS, ATSS, CACAS=0, CTSS, LURS, QTS=0, TRS, WAKES=0.
    let b0 = 0x80 | 0x40 | 0x10 | 0x08 | 0x02;
    let mut out = Out::new(data_in, allocation_length as usize);
    if repd {
        // Extended format: 16 bytes, REPORT SUPPORTED TMF ADDITIONAL DATA 0Ch.
        let mut b = [0u8; 16];
        b[0] = b0;
        b[3] = 0x0c;
        out.put(&b);
    } else {
        out.put(&[b0, 0, 0, 0]);
    }
    out.finish()
}

/// The one target port group every LU is reachable through (ALUA, SPC-4 §5.15).
pub const TARGET_PORT_GROUP: u16 = 1;
/// RELATIVE TARGET PORT IDENTIFIER of the iSCSI target port (SPC-4 §7.8.6.6).
pub const RELATIVE_TARGET_PORT: u16 = 1;

/// REPORT TARGET PORT GROUPS (SPC-4 §6.36): one group, active/optimized, with the
/// one target port; implicit ALUA (TPGS=01b in INQUIRY).
pub fn report_target_port_groups(
    extended: bool,
    allocation_length: u32,
    data_in: &mut [u8],
) -> usize {
    let mut d = [0u8; 12];
    // PREF=1, ASYMMETRIC ACCESS STATE 0 (active/optimized).
    d[0] = 0x80;
    // Supported states: AO_SUP only, the one state this target port is ever in.
    d[1] = 0x01;
    d[2..4].copy_from_slice(&TARGET_PORT_GROUP.to_be_bytes());
    d[5] = 0x01; // STATUS CODE: altered by implicit ALUA
    d[7] = 1; // TARGET PORT COUNT
    d[10..12].copy_from_slice(&RELATIVE_TARGET_PORT.to_be_bytes());
    let header = if extended { 8 } else { 4 };
    let total = header + d.len();
    let mut out = Out::new(data_in, allocation_length as usize);
    out.put(&((total - 4) as u32).to_be_bytes());
    if extended {
        // FORMAT TYPE 001b, IMPLICIT TRANSITION TIME 0.
        out.put(&[0x10, 0, 0, 0]);
    }
    out.put(&d);
    out.finish()
}
