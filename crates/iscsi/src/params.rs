//! Operational parameter negotiation (RFC 7143 §6.2, §13): what the target
//! declares, the rules for each key, and the values in force afterwards.

use std::time::Duration;

use crate::login::LoginStatus;

/// Default bound on receive coalescing ([`TargetConfig::rx_coalesce`]): a
/// command waits at most this long in the socket, like a NIC's interrupt
/// moderation delay.
pub const DEFAULT_RX_COALESCE: Duration = Duration::from_micros(200);

/// What the target declares and enforces.
#[derive(Clone, Debug)]
pub struct TargetConfig {
    /// MaxRecvDataSegmentLength we declare (§13.12); longer data segments are a protocol error.
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength (§13.13), result = minimum.
    pub max_burst_length: u32,
    /// FirstBurstLength (§13.14), result = minimum.
    pub first_burst_length: u32,
    /// MaxOutstandingR2T (§13.17), result = minimum.
    pub max_outstanding_r2t: u32,
    /// InitialR2T (§13.10), result = OR.
    pub initial_r2t: bool,
    /// ImmediateData (§13.11), result = AND.
    pub immediate_data: bool,
    /// DataPDUInOrder (§13.18), result = OR.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder (§13.19), result = OR.
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait (§13.15), result = maximum.
    pub default_time2wait: u32,
    /// DefaultTime2Retain (§13.16), result = minimum.
    pub default_time2retain: u32,
    /// MaxConnections (§13.2), result = minimum.
    pub max_connections: u32,
    /// ErrorRecoveryLevel (§13.20), result = minimum. Only 0 is implemented.
    pub error_recovery_level: u32,
    /// Accept HeaderDigest=CRC32C when offered (§13.1).
    pub header_digest_crc32c: bool,
    /// Accept DataDigest=CRC32C when offered (§13.1).
    pub data_digest_crc32c: bool,
    /// Commands per session: MaxCmdSN = ExpCmdSN + queue_depth - 1 - outstanding (§4.2.2.1).
    pub queue_depth: u32,
    /// Largest write Expected Data Transfer Length that is buffered.
    pub max_data_transfer: u32,
    /// A connection not in full feature phase by then is closed.
    pub login_timeout: Duration,
    /// Ping an idle initiator with NOP-In after this long without receiving (§11.19).
    pub nop_interval: Option<Duration>,
    /// Unanswered pings before the connection is dropped.
    pub nop_count: u32,
    /// Receive coalescing: how long the driver may leave a connection's
    /// commands in the socket, to read them in one batch, while the initiator
    /// is still behind on answers it already has (`None`: never).
    pub rx_coalesce: Option<Duration>,
    /// Connections still logging in, at most, over all reactors: past it the
    /// oldest is closed to make room, so that connections which open and
    /// stall cannot keep a real initiator out (its login takes milliseconds).
    pub max_pending_logins: u32,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 16,
            initial_r2t: false,
            immediate_data: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            max_connections: 1,
            error_recovery_level: 0,
            header_digest_crc32c: true,
            data_digest_crc32c: true,
            queue_depth: 128,
            max_data_transfer: 8 * 1024 * 1024,
            login_timeout: Duration::from_secs(15),
            nop_interval: Some(Duration::from_secs(30)),
            rx_coalesce: Some(DEFAULT_RX_COALESCE),
            max_pending_logins: 4096,
            nop_count: 3,
        }
    }
}

/// SessionType (RFC 7143 §13.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Discovery,
    Normal,
}

/// Operational values in force after login (what the target uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Ours: what the initiator may send us.
    pub max_recv_data_segment_length: u32,
    /// Theirs: caps our Data-In and Text Response data segments.
    pub initiator_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u32,
    pub max_connections: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
}

impl SessionParams {
    /// The RFC 7143 §13 defaults, which hold for every key not negotiated; our
    /// MaxRecvDataSegmentLength is always declared, so it is ours from the start.
    pub fn rfc_defaults(config: &TargetConfig) -> Self {
        SessionParams {
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            initiator_alias: None,
            target_name: None,
            isid: [0; 6],
            tsih: 0,
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: config.max_recv_data_segment_length,
            initiator_max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            max_outstanding_r2t: 1,
            initial_r2t: true,
            immediate_data: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            max_connections: 1,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// Smallest and largest legal length values (§13.12–§13.14: 512 to 2**24-1).
pub const MIN_LENGTH: u32 = 512;
pub const MAX_LENGTH: u32 = 16_777_215;

/// Special response values (§6.2.1, §6.2.2).
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const IRRELEVANT: &str = "Irrelevant";
pub const REJECT: &str = "Reject";

/// Parses a numerical value: decimal or `0x` hexadecimal (§6.1 numerical-value).
pub fn parse_number(v: &str) -> Option<u64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // §6.1 hex-constant: "0x" then hex digits only (from_str_radix
        // would also take a sign).
        if h.is_empty() || h.len() > 16 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(h, 16).ok();
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parses a boolean value (§6.1: Yes or No).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Keys tracked for duplicate detection (§6.2: a key negotiated twice is an error).
const TRACKED_KEYS: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "OFMarker",
    "IFMarker",
    "OFMarkInt",
    "IFMarkInt",
    "TaskReporting",
    "iSCSIProtocolLevel",
    "AuthMethod",
];

/// What to answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Send `key=value` back.
    Respond(String),
    /// Nothing to send (a declaration that needs no answer, or an answer to us).
    Silent,
}

/// The target side of the operational negotiation of one login (§6.2, §13).
#[derive(Debug, Clone)]
pub struct Negotiation {
    config: TargetConfig,
    /// Values in force once login completes.
    pub params: SessionParams,
    seen: u32,
}

impl Negotiation {
    pub fn new(config: &TargetConfig) -> Self {
        Negotiation {
            config: config.clone(),
            params: SessionParams::rfc_defaults(config),
            seen: 0,
        }
    }

    /// Marks a key as negotiated; a second offer is an initiator error (§6.2).
    fn mark_seen(&mut self, key: &str) -> Result<(), LoginStatus> {
        if let Some(i) = TRACKED_KEYS.iter().position(|k| *k == key) {
            let bit = 1u32 << i;
            if self.seen & bit != 0 {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            self.seen |= bit;
        }
        Ok(())
    }

    fn discovery(&self) -> bool {
        self.params.session_type == SessionType::Discovery
    }

    /// Answers one operational key offered by the initiator during login.
    /// Login keys (InitiatorName, TargetName, SessionType, InitiatorAlias) and
    /// AuthMethod are handled by the login state machine, not here.
    pub fn negotiate(&mut self, key: &str, value: &str) -> Result<KeyOutcome, LoginStatus> {
        use KeyOutcome::*;
        // An answer to something we sent (we only declare), not an offer.
        if matches!(value, NOT_UNDERSTOOD | IRRELEVANT | REJECT) {
            return Ok(Silent);
        }
        self.mark_seen(key)?;
        let cfg = &self.config;
        let disc = self.discovery();
        let p = &mut self.params;
        let out = match key {
            // §13.1: list, pick the first value we support in the initiator's order.
            "HeaderDigest" | "DataDigest" => {
                let crc_ok = if key == "HeaderDigest" {
                    cfg.header_digest_crc32c
                } else {
                    cfg.data_digest_crc32c
                };
                let pick = value.split(',').find_map(|v| match v {
                    "CRC32C" if crc_ok => Some(true),
                    "None" => Some(false),
                    _ => None,
                });
                match pick {
                    Some(crc) => {
                        if key == "HeaderDigest" {
                            p.header_digest = crc;
                        } else {
                            p.data_digest = crc;
                        }
                        Respond(if crc { "CRC32C" } else { "None" }.into())
                    }
                    None => Respond(REJECT.into()),
                }
            }
            // §13.12: declarative, each direction separately.
            "MaxRecvDataSegmentLength" => match parse_number(value) {
                Some(n) if (MIN_LENGTH as u64..=MAX_LENGTH as u64).contains(&n) => {
                    p.initiator_max_recv_data_segment_length = n as u32;
                    Silent
                }
                _ => Respond(REJECT.into()),
            },
            "MaxBurstLength" | "FirstBurstLength" if disc => Respond(IRRELEVANT.into()),
            "MaxBurstLength" => match parse_number(value) {
                Some(n) if (MIN_LENGTH as u64..=MAX_LENGTH as u64).contains(&n) => {
                    let r = (n as u32).min(cfg.max_burst_length);
                    p.max_burst_length = r;
                    Respond(r.to_string())
                }
                _ => Respond(REJECT.into()),
            },
            "FirstBurstLength" => match parse_number(value) {
                Some(n) if (MIN_LENGTH as u64..=MAX_LENGTH as u64).contains(&n) => {
                    let r = (n as u32).min(cfg.first_burst_length);
                    p.first_burst_length = r;
                    Respond(r.to_string())
                }
                _ => Respond(REJECT.into()),
            },
            "MaxOutstandingR2T"
            | "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
                if disc =>
            {
                Respond(IRRELEVANT.into())
            }
            "MaxOutstandingR2T" => match parse_number(value) {
                Some(n) if (1..=65535).contains(&n) => {
                    let r = (n as u32).min(cfg.max_outstanding_r2t.max(1));
                    p.max_outstanding_r2t = r;
                    Respond(r.to_string())
                }
                _ => Respond(REJECT.into()),
            },
            "MaxConnections" => match parse_number(value) {
                Some(n) if (1..=65535).contains(&n) => {
                    let r = (n as u32).min(cfg.max_connections.max(1));
                    p.max_connections = r;
                    Respond(r.to_string())
                }
                _ => Respond(REJECT.into()),
            },
            "InitialR2T" => match parse_bool(value) {
                Some(b) => {
                    p.initial_r2t = b || cfg.initial_r2t;
                    Respond(yes_no(p.initial_r2t))
                }
                None => Respond(REJECT.into()),
            },
            "ImmediateData" => match parse_bool(value) {
                Some(b) => {
                    p.immediate_data = b && cfg.immediate_data;
                    Respond(yes_no(p.immediate_data))
                }
                None => Respond(REJECT.into()),
            },
            "DataPDUInOrder" => match parse_bool(value) {
                Some(b) => {
                    p.data_pdu_in_order = b || cfg.data_pdu_in_order;
                    Respond(yes_no(p.data_pdu_in_order))
                }
                None => Respond(REJECT.into()),
            },
            "DataSequenceInOrder" => match parse_bool(value) {
                Some(b) => {
                    p.data_sequence_in_order = b || cfg.data_sequence_in_order;
                    Respond(yes_no(p.data_sequence_in_order))
                }
                None => Respond(REJECT.into()),
            },
            "ErrorRecoveryLevel" => match parse_number(value) {
                Some(n) if n <= 2 => {
                    let r = (n as u32).min(cfg.error_recovery_level);
                    p.error_recovery_level = r;
                    Respond(r.to_string())
                }
                _ => Respond(REJECT.into()),
            },
            "DefaultTime2Wait" => match parse_number(value) {
                Some(n) if n <= 3600 => {
                    let r = (n as u32).max(cfg.default_time2wait);
                    p.default_time2wait = r;
                    Respond(r.to_string())
                }
                _ => Respond(REJECT.into()),
            },
            "DefaultTime2Retain" => match parse_number(value) {
                Some(n) if n <= 3600 => {
                    let r = (n as u32).min(cfg.default_time2retain);
                    p.default_time2retain = r;
                    Respond(r.to_string())
                }
                _ => Respond(REJECT.into()),
            },
            // §13.25 (obsoleted markers): "No" is allowed for the booleans,
            // the intervals MUST be rejected.
            "OFMarker" | "IFMarker" => Respond("No".into()),
            "OFMarkInt" | "IFMarkInt" => Respond(REJECT.into()),
            // §13.23: we only know the RFC 3720 behaviour.
            "TaskReporting" => {
                if value.split(',').any(|v| v == "RFC3720") {
                    Respond("RFC3720".into())
                } else {
                    Respond(REJECT.into())
                }
            }
            // §13.24: minimum; we implement level 1 (RFC 7143).
            "iSCSIProtocolLevel" => match parse_number(value) {
                Some(n) if n <= 31 => Respond(n.min(1).to_string()),
                _ => Respond(REJECT.into()),
            },
            // Keys only a target declares, or only valid in full feature phase.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => {
                Respond(REJECT.into())
            }
            // §6.2.1 and §13.5: unknown and private (X-, X#) keys.
            _ => Respond(NOT_UNDERSTOOD.into()),
        };
        Ok(out)
    }

    /// Applies the cross-key rules once negotiation is over: FirstBurstLength
    /// never exceeds MaxBurstLength (§13.14).
    pub fn finish(&mut self) -> SessionParams {
        let p = &mut self.params;
        if p.first_burst_length > p.max_burst_length {
            p.first_burst_length = p.max_burst_length;
        }
        p.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg() -> Negotiation {
        Negotiation::new(&TargetConfig::default())
    }

    fn respond(n: &mut Negotiation, k: &str, v: &str) -> String {
        match n.negotiate(k, v).unwrap() {
            KeyOutcome::Respond(s) => s,
            KeyOutcome::Silent => "<silent>".into(),
        }
    }

    #[test]
    fn digests_pick_first_supported() {
        let mut n = neg();
        assert_eq!(respond(&mut n, "HeaderDigest", "CRC32C,None"), "CRC32C");
        assert_eq!(respond(&mut n, "DataDigest", "None,CRC32C"), "None");
        assert!(n.params.header_digest && !n.params.data_digest);
        let mut n2 = Negotiation::new(&TargetConfig {
            header_digest_crc32c: false,
            ..Default::default()
        });
        assert_eq!(respond(&mut n2, "HeaderDigest", "CRC32C,None"), "None");
        let mut n3 = Negotiation::new(&TargetConfig {
            data_digest_crc32c: false,
            ..Default::default()
        });
        assert_eq!(respond(&mut n3, "DataDigest", "CRC32C"), "Reject");
        assert_eq!(respond(&mut n3, "HeaderDigest", "MD5"), "Reject");
    }

    #[test]
    fn numeric_min_max_rules() {
        let mut n = neg();
        assert_eq!(respond(&mut n, "MaxBurstLength", "16776192"), "1048576");
        assert_eq!(respond(&mut n, "FirstBurstLength", "65536"), "65536");
        assert_eq!(respond(&mut n, "MaxOutstandingR2T", "1"), "1");
        assert_eq!(respond(&mut n, "MaxConnections", "8"), "1");
        assert_eq!(respond(&mut n, "ErrorRecoveryLevel", "2"), "0");
        assert_eq!(respond(&mut n, "DefaultTime2Wait", "0"), "2");
        assert_eq!(respond(&mut n, "DefaultTime2Retain", "0"), "0");
        let p = n.finish();
        assert_eq!(p.max_burst_length, 1_048_576);
        assert_eq!(p.first_burst_length, 65536);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert_eq!(p.default_time2retain, 0);
    }

    #[test]
    fn numeric_range_and_syntax() {
        let mut n = neg();
        assert_eq!(respond(&mut n, "MaxBurstLength", "511"), "Reject");
        let mut n = neg();
        assert_eq!(respond(&mut n, "MaxBurstLength", "16777216"), "Reject");
        let mut n = neg();
        assert_eq!(respond(&mut n, "MaxBurstLength", "0x1000"), "4096");
        assert_eq!(respond(&mut n, "FirstBurstLength", "abc"), "Reject");
        assert_eq!(respond(&mut n, "DefaultTime2Wait", "3601"), "Reject");
        assert_eq!(respond(&mut n, "ErrorRecoveryLevel", "3"), "Reject");
        assert_eq!(respond(&mut n, "MaxOutstandingR2T", "0"), "Reject");
        assert_eq!(respond(&mut n, "MaxRecvDataSegmentLength", "100"), "Reject");
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
        // Found by the text_keys fuzz target: a sign is no hex digit.
        assert_eq!(parse_number("0x+ff"), None);
        assert_eq!(parse_number("+5"), None);
        assert_eq!(parse_number("0xfF"), Some(255));
    }

    #[test]
    fn first_burst_clamped_to_max_burst() {
        let mut n = neg();
        assert_eq!(respond(&mut n, "MaxBurstLength", "16384"), "16384");
        // FirstBurstLength not offered: default 65536 > 16384.
        assert_eq!(n.finish().first_burst_length, 16384);
    }

    #[test]
    fn boolean_rules() {
        let mut n = neg();
        assert_eq!(respond(&mut n, "InitialR2T", "No"), "No");
        assert_eq!(respond(&mut n, "ImmediateData", "Yes"), "Yes");
        assert_eq!(respond(&mut n, "DataPDUInOrder", "No"), "Yes");
        assert_eq!(respond(&mut n, "DataSequenceInOrder", "No"), "Yes");
        let cfg = TargetConfig {
            initial_r2t: true,
            immediate_data: false,
            ..Default::default()
        };
        let mut n = Negotiation::new(&cfg);
        assert_eq!(respond(&mut n, "InitialR2T", "No"), "Yes");
        assert_eq!(respond(&mut n, "ImmediateData", "Yes"), "No");
        assert_eq!(respond(&mut n, "DataPDUInOrder", "maybe"), "Reject");
    }

    #[test]
    fn declarative_and_special_keys() {
        let mut n = neg();
        assert_eq!(
            respond(&mut n, "MaxRecvDataSegmentLength", "65536"),
            "<silent>"
        );
        assert_eq!(n.params.initiator_max_recv_data_segment_length, 65536);
        assert_eq!(respond(&mut n, "X-com.example.key", "1"), "NotUnderstood");
        assert_eq!(respond(&mut n, "X#foo", "1"), "NotUnderstood");
        assert_eq!(respond(&mut n, "Bogus", "1"), "NotUnderstood");
        assert_eq!(respond(&mut n, "IFMarker", "No"), "No");
        assert_eq!(respond(&mut n, "OFMarkInt", "2048~8192"), "Reject");
        assert_eq!(respond(&mut n, "TargetPortalGroupTag", "1"), "Reject");
        assert_eq!(respond(&mut n, "iSCSIProtocolLevel", "2"), "1");
        assert_eq!(
            respond(&mut n, "TaskReporting", "RFC3720,ResponseFence"),
            "RFC3720"
        );
        assert_eq!(respond(&mut n, "HeaderDigest", "NotUnderstood"), "<silent>");
    }

    #[test]
    fn discovery_irrelevant_keys() {
        let mut n = neg();
        n.params.session_type = SessionType::Discovery;
        assert_eq!(respond(&mut n, "MaxBurstLength", "65536"), "Irrelevant");
        assert_eq!(respond(&mut n, "InitialR2T", "Yes"), "Irrelevant");
        assert_eq!(respond(&mut n, "HeaderDigest", "None"), "None");
    }

    #[test]
    fn duplicate_key_is_initiator_error() {
        let mut n = neg();
        respond(&mut n, "MaxBurstLength", "65536");
        assert_eq!(
            n.negotiate("MaxBurstLength", "65536"),
            Err(LoginStatus::INITIATOR_ERROR)
        );
        // Unknown keys are not tracked.
        respond(&mut n, "X-a", "1");
        assert!(n.negotiate("X-a", "1").is_ok());
    }
}
