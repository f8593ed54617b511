//! The login phase (RFC 7143 §6, §11.12, §11.13): stages, CSG/NSG and the T/C
//! bits, ISID/TSIH, version, status classes, and the key exchange of each stage.
//!
//! The state machine is pure: the connection feeds it Login Requests and the
//! target's decision and gets back what to send. Security negotiation is its own
//! step ([`Authenticator`]): AuthMethod, then CHAP ([`crate::chap`]) when the
//! target requires it.

use std::fmt;

use crate::chap::{ChapError, ChapExchange, ChapKeys, ChapPolicy};
use crate::params::{KeyOutcome, Negotiation, SessionParams, SessionType, TargetConfig};
use crate::pdu::{LoginRequestPdu, Stage};
use crate::text::{self, KeyValue, TextCollector};

/// Login Response Status-Class/Status-Detail, `(class << 8) | detail`
/// (RFC 7143 §11.13.5).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus(0x0000);
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus(0x0101);
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus(0x0102);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus(0x0200);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus(0x0201);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus(0x0202);
    pub const TARGET_NOT_FOUND: LoginStatus = LoginStatus(0x0203);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus(0x0204);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(0x0205);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus(0x0206);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus(0x0207);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus(0x0208);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus(0x0209);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus(0x020a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus(0x020b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus(0x0300);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(0x0301);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus(0x0302);

    /// Status-Class (§11.13.5): 0 success, 1 redirection, 2 initiator error, 3 target error.
    pub fn class(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn detail(self) -> u8 {
        self.0 as u8
    }
    pub fn is_success(self) -> bool {
        self.class() == 0
    }
}

impl fmt::Debug for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::SUCCESS => "SUCCESS",
            Self::TARGET_MOVED_TEMPORARILY => "TARGET_MOVED_TEMPORARILY",
            Self::TARGET_MOVED_PERMANENTLY => "TARGET_MOVED_PERMANENTLY",
            Self::INITIATOR_ERROR => "INITIATOR_ERROR",
            Self::AUTHENTICATION_FAILURE => "AUTHENTICATION_FAILURE",
            Self::AUTHORIZATION_FAILURE => "AUTHORIZATION_FAILURE",
            Self::TARGET_NOT_FOUND => "TARGET_NOT_FOUND",
            Self::TARGET_REMOVED => "TARGET_REMOVED",
            Self::UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
            Self::TOO_MANY_CONNECTIONS => "TOO_MANY_CONNECTIONS",
            Self::MISSING_PARAMETER => "MISSING_PARAMETER",
            Self::CANT_INCLUDE_IN_SESSION => "CANT_INCLUDE_IN_SESSION",
            Self::SESSION_TYPE_NOT_SUPPORTED => "SESSION_TYPE_NOT_SUPPORTED",
            Self::SESSION_DOES_NOT_EXIST => "SESSION_DOES_NOT_EXIST",
            Self::INVALID_DURING_LOGIN => "INVALID_DURING_LOGIN",
            Self::TARGET_ERROR => "TARGET_ERROR",
            Self::SERVICE_UNAVAILABLE => "SERVICE_UNAVAILABLE",
            Self::OUT_OF_RESOURCES => "OUT_OF_RESOURCES",
            _ => return write!(f, "LoginStatus({:#06x})", self.0),
        };
        write!(f, "{name} ({:#06x})", self.0)
    }
}

impl fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The initiator's identity, known once its first Login Request with
/// InitiatorName (and TargetName / SessionType) is parsed (§13.4–§13.6).
#[derive(Clone, Debug)]
pub struct LoginInfo {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// None for discovery sessions.
    pub target_name: Option<String>,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
}

/// The target's answer to `Event::Login`.
#[derive(Clone, Debug)]
pub struct LoginAccept {
    pub tsih: u16,
    pub target_portal_group_tag: u16,
    pub target_alias: Option<String>,
    /// `None`: no authentication required (AuthMethod=None is agreed to).
    /// `Some`: the initiator must authenticate with CHAP (RFC 7143 §12.1.3)
    /// as one of the policy's incoming accounts before leaving the security stage.
    pub chap: Option<ChapPolicy>,
}

/// Most text we put in one Login Response: the initiator's MaxRecvDataSegmentLength
/// is 8192 until login completes (§13.12), and we never continue login responses.
pub const MAX_LOGIN_RESPONSE_TEXT: usize = 8192;
/// The data segment limit for Login Requests (the default MaxRecvDataSegmentLength).
pub const LOGIN_DATA_SEGMENT_LIMIT: usize = 8192;

/// A login that failed authentication (status 0x0201): who tried and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// CHAP_N, when the initiator sent one.
    pub user: Option<String>,
    /// A short fixed phrase for the log; never a secret.
    pub reason: &'static str,
}

impl AuthFailure {
    fn new(user: Option<&str>, reason: &'static str) -> Self {
        AuthFailure {
            user: user.map(str::to_owned),
            reason,
        }
    }
}

/// A failed CHAP step as the login's outcome: an Authentication failure,
/// except when we could not make a challenge.
fn chap_failure(e: ChapError, keys: &ChapKeys) -> LoginStep {
    match e {
        ChapError::NoRandomness => LoginStep::Fail(LoginStatus::TARGET_ERROR),
        e => LoginStep::AuthFail(AuthFailure::new(keys.name(), e.reason())),
    }
}

/// Security negotiation (RFC 7143 §6.3.2, §12): AuthMethod, then the CHAP
/// exchange (§12.1.3) when the target requires authentication.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    /// `Some`: CHAP required with these accounts (`LoginAccept::chap`).
    policy: Option<ChapPolicy>,
    state: AuthState,
}

#[derive(Debug, Clone, Default)]
enum AuthState {
    /// No AuthMethod agreed yet.
    #[default]
    Start,
    /// AuthMethod=None agreed: the security stage may be left.
    NoneAgreed,
    /// No acceptable method: leaving the security stage fails.
    Rejected,
    /// AuthMethod=CHAP agreed.
    Chap(ChapExchange),
}

/// May the security stage be left with this request?
enum Leave {
    Now,
    /// The CHAP exchange is under way: answer T=0, "more negotiation needed"
    /// (§11.13.3), to an initiator that asks to move on early, as in the
    /// login examples of Appendix B.
    NotYet,
    Refused(&'static str),
}

impl Authenticator {
    fn new(policy: Option<ChapPolicy>) -> Self {
        Authenticator {
            policy,
            state: AuthState::Start,
        }
    }

    /// Answers AuthMethod: the first method we accept in the initiator's
    /// order (§6.2.1 list negotiation). With a policy only CHAP is acceptable.
    fn offer(&mut self, value: &str) -> Result<&'static str, AuthFailure> {
        let mut methods = value.split(',');
        if matches!(self.state, AuthState::Chap(_)) {
            // §6.2: a key is negotiated once; leaving CHAP mid-exchange would
            // also be a downgrade.
            return Err(AuthFailure::new(None, "AuthMethod renegotiated"));
        }
        if self.policy.is_some() {
            if !methods.any(|m| m == "CHAP") {
                return Err(AuthFailure::new(None, "CHAP required"));
            }
            self.state = AuthState::Chap(ChapExchange::default());
            Ok("CHAP")
        } else if methods.any(|m| m == "None") {
            self.state = AuthState::NoneAgreed;
            Ok("None")
        } else {
            self.state = AuthState::Rejected;
            Ok(crate::params::REJECT)
        }
    }

    /// Takes the CHAP keys of one security-stage request and appends our
    /// answer. `agreed_now`: this request agreed AuthMethod=CHAP, so it need
    /// not carry CHAP_A yet.
    fn exchange(
        &mut self,
        keys: &ChapKeys,
        agreed_now: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), ChapError> {
        /// Nobody can prove an account of this one.
        static NO_ACCOUNTS: ChapPolicy = ChapPolicy {
            incoming: Vec::new(),
            outgoing: None,
        };
        match &mut self.state {
            AuthState::Chap(exchange) => {
                if agreed_now && keys.is_empty() {
                    return Ok(());
                }
                // CHAP is only agreed with a policy; were it missing, fail closed.
                let policy = self.policy.as_ref().unwrap_or(&NO_ACCOUNTS);
                exchange.step(policy, keys, out)
            }
            AuthState::NoneAgreed => {
                // §6.2: keys made moot by AuthMethod=None are Irrelevant.
                for key in keys.present() {
                    text::encode_pair(out, key, crate::params::IRRELEVANT);
                }
                Ok(())
            }
            AuthState::Start | AuthState::Rejected => match keys.is_empty() {
                true => Ok(()),
                false => Err(ChapError::OutOfOrder),
            },
        }
    }

    fn may_leave(&self) -> Leave {
        match &self.state {
            AuthState::NoneAgreed => Leave::Now,
            // No AuthMethod offer: the initiator asked for no authentication.
            AuthState::Start if self.policy.is_none() => Leave::Now,
            AuthState::Start => Leave::Refused("CHAP required"),
            AuthState::Rejected => Leave::Refused("no acceptable AuthMethod"),
            AuthState::Chap(x) if x.is_authenticated() => Leave::Now,
            AuthState::Chap(_) => Leave::NotYet,
        }
    }

    /// Authentication is required and has not happened.
    fn missing(&self) -> bool {
        self.policy.is_some() && !matches!(&self.state, AuthState::Chap(x) if x.is_authenticated())
    }
}

/// Header fields of the Login Response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginReply {
    pub transit: bool,
    pub csg: Stage,
    pub nsg: Stage,
    pub tsih: u16,
    pub text: Vec<u8>,
    pub status: LoginStatus,
    /// Login complete: this is the final response; full feature phase follows.
    pub full_feature: Option<SessionParams>,
}

/// What the connection does next.
#[derive(Debug, Clone)]
pub enum LoginStep {
    /// Send this Login Response.
    Reply(LoginReply),
    /// Ask the target (Event::Login) and wait for accept/reject.
    NeedDecision(LoginInfo),
    /// Send a Login Response with this failure status, then close.
    Fail(LoginStatus),
    /// Send a Login Response with AUTHENTICATION_FAILURE (§12.1.3), tell the
    /// target who failed, then close.
    AuthFail(AuthFailure),
}

/// Login state of one connection.
#[derive(Debug)]
pub struct LoginState {
    negotiation: Negotiation,
    config: TargetConfig,
    stage: Stage,
    started: bool,
    isid: [u8; 6],
    request_tsih: u16,
    collector: TextCollector,
    info: Option<LoginInfo>,
    accept: Option<LoginAccept>,
    pending: Option<(LoginRequestPdu, Vec<KeyValue>)>,
    auth: Authenticator,
    declared_mrdsl: bool,
    first_reply_sent: bool,
}

fn parse_session_type(v: &str) -> Option<SessionType> {
    match v {
        "Discovery" => Some(SessionType::Discovery),
        "Normal" => Some(SessionType::Normal),
        _ => None,
    }
}

impl LoginState {
    pub fn new(config: &TargetConfig) -> Self {
        LoginState {
            negotiation: Negotiation::new(config),
            config: config.clone(),
            stage: Stage::SECURITY_NEGOTIATION,
            started: false,
            isid: [0; 6],
            request_tsih: 0,
            collector: TextCollector::default(),
            info: None,
            accept: None,
            pending: None,
            auth: Authenticator::default(),
            declared_mrdsl: false,
            first_reply_sent: false,
        }
    }

    /// True while the target's decision on Event::Login is awaited.
    pub fn awaiting_decision(&self) -> bool {
        self.pending.is_some()
    }

    pub fn info(&self) -> Option<&LoginInfo> {
        self.info.as_ref()
    }

    /// Processes one Login Request (header and data segment).
    pub fn handle_request(&mut self, req: &LoginRequestPdu, data: &[u8]) -> LoginStep {
        if self.pending.is_some() {
            // The initiator must wait for our response (§6.2: one outstanding request).
            return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
        }
        if !self.started {
            // §11.12.4: we support version 0 only.
            if req.version_min > 0 {
                return LoginStep::Fail(LoginStatus::UNSUPPORTED_VERSION);
            }
            if req.csg != Stage::SECURITY_NEGOTIATION
                && req.csg != Stage::LOGIN_OPERATIONAL_NEGOTIATION
            {
                return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
            }
            self.started = true;
            self.stage = req.csg;
            self.isid = req.isid;
            self.request_tsih = req.tsih;
        } else if req.isid != self.isid || req.csg != self.stage {
            // §6.2 / §11.12.3: ISID is fixed during login; CSG must be the current stage.
            return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
        }
        // §11.12.2: T and C are exclusive; NSG must move forward and not be 2.
        if req.transit
            && (req.continue_bit
                || req.nsg.0 <= req.csg.0
                || req.nsg.0 == 2
                || req.nsg.0 > Stage::FULL_FEATURE_PHASE.0)
        {
            return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
        }
        if self.collector.push(data).is_err() {
            return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
        }
        if req.continue_bit {
            // §11.13.2: acknowledge a partial text with an empty response.
            return LoginStep::Reply(self.reply(false, Stage(0), Vec::new()));
        }
        let pairs = match text::parse(&self.collector.take()) {
            Ok(p) => p,
            Err(_) => return LoginStep::Fail(LoginStatus::INITIATOR_ERROR),
        };
        if self.info.is_none() {
            match self.identify(req, &pairs) {
                Ok(info) => {
                    self.info = Some(info.clone());
                    self.pending = Some((req.clone(), pairs));
                    return LoginStep::NeedDecision(info);
                }
                Err(s) => return LoginStep::Fail(s),
            }
        }
        self.process(req, &pairs)
    }

    /// Extracts the login keys of §13.4–§13.6 from the first request.
    fn identify(
        &self,
        req: &LoginRequestPdu,
        pairs: &[KeyValue],
    ) -> Result<LoginInfo, LoginStatus> {
        let mut initiator_name = None;
        let mut initiator_alias = None;
        let mut target_name = None;
        let mut session_type = None;
        for kv in pairs {
            let slot = match kv.key.as_str() {
                "InitiatorName" => &mut initiator_name,
                "InitiatorAlias" => &mut initiator_alias,
                "TargetName" => &mut target_name,
                "SessionType" => &mut session_type,
                _ => continue,
            };
            if slot.is_some() {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            *slot = Some(kv.value.clone());
        }
        let initiator_name = match initiator_name {
            Some(n) if !n.is_empty() => n,
            _ => return Err(LoginStatus::MISSING_PARAMETER),
        };
        let session_type = match session_type {
            None => SessionType::Normal,
            Some(v) => parse_session_type(&v).ok_or(LoginStatus::SESSION_TYPE_NOT_SUPPORTED)?,
        };
        let target_name = match session_type {
            SessionType::Normal => match target_name {
                Some(t) if !t.is_empty() => Some(t),
                _ => return Err(LoginStatus::MISSING_PARAMETER),
            },
            SessionType::Discovery => None,
        };
        Ok(LoginInfo {
            session_type,
            initiator_name,
            initiator_alias,
            target_name,
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
        })
    }

    /// The target accepted the login: answer the request that was waiting.
    pub fn accept(&mut self, mut accept: LoginAccept) -> Option<LoginStep> {
        let (req, pairs) = self.pending.take()?;
        let info = self.info.clone()?;
        let p = &mut self.negotiation.params;
        p.session_type = info.session_type;
        p.initiator_name = info.initiator_name.clone();
        p.initiator_alias = info.initiator_alias.clone();
        p.target_name = info.target_name.clone();
        p.isid = info.isid;
        p.tsih = accept.tsih;
        self.auth = Authenticator::new(accept.chap.take());
        self.accept = Some(accept);
        Some(self.process(&req, &pairs))
    }

    /// The target refused the login.
    pub fn reject(&mut self) {
        self.pending = None;
    }

    fn reply(&mut self, transit: bool, nsg: Stage, text: Vec<u8>) -> LoginReply {
        LoginReply {
            transit,
            csg: self.stage,
            nsg: if transit { nsg } else { Stage(0) },
            tsih: self.request_tsih,
            text,
            status: LoginStatus::SUCCESS,
            full_feature: None,
        }
    }

    fn process(&mut self, req: &LoginRequestPdu, pairs: &[KeyValue]) -> LoginStep {
        let mut out = Vec::new();
        let info = match &self.info {
            Some(i) => i.clone(),
            None => return LoginStep::Fail(LoginStatus::TARGET_ERROR),
        };
        if self.accept.is_none() {
            // Refused by the target: nothing (least of all authentication,
            // whose policy comes with the acceptance) is negotiated.
            return LoginStep::Fail(LoginStatus::TARGET_ERROR);
        }
        if self.stage != Stage::SECURITY_NEGOTIATION && self.auth.missing() {
            // §6.3.1: an initiator may start in LoginOperationalNegotiation,
            // skipping security, which a target requiring authentication refuses.
            return LoginStep::AuthFail(AuthFailure::new(None, "CHAP required"));
        }
        if !self.first_reply_sent {
            self.first_reply_sent = true;
            // §13.9: TargetPortalGroupTag in the first Login Response of a normal
            // session; TargetAlias (§13.8) with it.
            if info.session_type == SessionType::Normal {
                if let Some(a) = &self.accept {
                    text::encode_pair(
                        &mut out,
                        "TargetPortalGroupTag",
                        &a.target_portal_group_tag.to_string(),
                    );
                    if let Some(alias) = &a.target_alias {
                        text::encode_pair(&mut out, "TargetAlias", alias);
                    }
                }
            }
        }
        let mut chap = ChapKeys::default();
        let mut auth_offered = false;
        for kv in pairs {
            match kv.key.as_str() {
                "InitiatorName" => {
                    if kv.value != info.initiator_name {
                        return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
                    }
                }
                "TargetName" => {
                    if Some(&kv.value) != info.target_name.as_ref() {
                        return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
                    }
                }
                "SessionType" => {
                    if parse_session_type(&kv.value) != Some(info.session_type) {
                        return LoginStep::Fail(LoginStatus::INITIATOR_ERROR);
                    }
                }
                "InitiatorAlias" => {}
                "AuthMethod" => {
                    if self.stage == Stage::SECURITY_NEGOTIATION {
                        auth_offered = true;
                        match self.auth.offer(&kv.value) {
                            Ok(r) => text::encode_pair(&mut out, "AuthMethod", r),
                            Err(f) => return LoginStep::AuthFail(f),
                        }
                    } else {
                        text::encode_pair(&mut out, "AuthMethod", crate::params::IRRELEVANT);
                    }
                }
                key => match chap.take(key, &kv.value) {
                    Ok(true) => {}
                    Ok(false) => match self.negotiation.negotiate(key, &kv.value) {
                        Ok(KeyOutcome::Respond(v)) => text::encode_pair(&mut out, key, &v),
                        Ok(KeyOutcome::Silent) => {}
                        Err(s) => return LoginStep::Fail(s),
                    },
                    Err(e) => return chap_failure(e, &chap),
                },
            }
        }
        if self.stage == Stage::SECURITY_NEGOTIATION {
            if let Err(e) = self.auth.exchange(&chap, auth_offered, &mut out) {
                return chap_failure(e, &chap);
            }
        } else if !chap.is_empty() {
            // §12: security keys are for the SecurityNegotiation stage only.
            return LoginStep::AuthFail(AuthFailure::new(
                chap.name(),
                "CHAP key outside the security stage",
            ));
        }
        let mut transit = req.transit;
        if transit && self.stage == Stage::SECURITY_NEGOTIATION {
            match self.auth.may_leave() {
                Leave::Now => {}
                Leave::NotYet => transit = false,
                Leave::Refused(reason) => {
                    return LoginStep::AuthFail(AuthFailure::new(None, reason))
                }
            }
        }
        let to_full = transit && req.nsg == Stage::FULL_FEATURE_PHASE;
        if !self.declared_mrdsl && (self.stage == Stage::LOGIN_OPERATIONAL_NEGOTIATION || to_full) {
            // §13.12: declarative; the initiator needs ours even if it did not ask.
            self.declared_mrdsl = true;
            text::encode_pair(
                &mut out,
                "MaxRecvDataSegmentLength",
                &self.config.max_recv_data_segment_length.to_string(),
            );
        }
        if out.len() > MAX_LOGIN_RESPONSE_TEXT {
            return LoginStep::Fail(LoginStatus::OUT_OF_RESOURCES);
        }
        if !transit {
            return LoginStep::Reply(self.reply(false, Stage(0), out));
        }
        let mut r = self.reply(true, req.nsg, out);
        if to_full {
            let tsih = self.accept.as_ref().map_or(0, |a| a.tsih);
            r.tsih = tsih;
            let mut params = self.negotiation.finish();
            params.tsih = tsih;
            r.full_feature = Some(params);
        } else {
            self.stage = req.nsg;
        }
        LoginStep::Reply(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(csg: u8, nsg: u8, transit: bool) -> LoginRequestPdu {
        LoginRequestPdu {
            transit,
            continue_bit: false,
            csg: Stage(csg),
            nsg: Stage(nsg),
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 1,
            cid: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        }
    }

    fn accept() -> LoginAccept {
        LoginAccept {
            tsih: 5,
            target_portal_group_tag: 1,
            target_alias: Some("disk".into()),
            chap: None,
        }
    }

    fn text_of(r: &LoginReply) -> Vec<KeyValue> {
        text::parse(&r.text).unwrap()
    }

    fn get<'a>(kv: &'a [KeyValue], k: &str) -> Option<&'a str> {
        kv.iter().find(|p| p.key == k).map(|p| p.value.as_str())
    }

    #[test]
    fn status_class_detail() {
        assert_eq!(LoginStatus::AUTHENTICATION_FAILURE.class(), 2);
        assert_eq!(LoginStatus::AUTHENTICATION_FAILURE.detail(), 1);
        assert!(LoginStatus::SUCCESS.is_success());
        assert_eq!(format!("{:?}", LoginStatus(0x0399)), "LoginStatus(0x0399)");
    }

    #[test]
    fn normal_login_security_then_operational() {
        let mut l = LoginState::new(&TargetConfig::default());
        let step = l.handle_request(
            &req(0, 1, true),
            b"InitiatorName=iqn.i\0TargetName=iqn.t\0SessionType=Normal\0AuthMethod=CHAP,None\0",
        );
        let info = match step {
            LoginStep::NeedDecision(i) => i,
            s => panic!("{s:?}"),
        };
        assert_eq!(info.target_name.as_deref(), Some("iqn.t"));
        let r = match l.accept(accept()).unwrap() {
            LoginStep::Reply(r) => r,
            s => panic!("{s:?}"),
        };
        assert!(r.transit);
        assert_eq!((r.csg, r.nsg), (Stage(0), Stage(1)));
        let kv = text_of(&r);
        assert_eq!(get(&kv, "AuthMethod"), Some("None"));
        assert_eq!(get(&kv, "TargetPortalGroupTag"), Some("1"));
        assert_eq!(get(&kv, "TargetAlias"), Some("disk"));
        let r = match l.handle_request(
            &req(1, 3, true),
            b"HeaderDigest=CRC32C,None\0MaxBurstLength=65536\0",
        ) {
            LoginStep::Reply(r) => r,
            s => panic!("{s:?}"),
        };
        assert_eq!(r.tsih, 5);
        let kv = text_of(&r);
        assert_eq!(get(&kv, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(get(&kv, "MaxRecvDataSegmentLength"), Some("262144"));
        let p = r.full_feature.unwrap();
        assert!(p.header_digest);
        assert_eq!(p.max_burst_length, 65536);
        assert_eq!(p.tsih, 5);
    }

    #[test]
    fn missing_names_and_bad_version() {
        let mut l = LoginState::new(&TargetConfig::default());
        assert!(matches!(
            l.handle_request(&req(1, 3, true), b"TargetName=iqn.t\0"),
            LoginStep::Fail(LoginStatus::MISSING_PARAMETER)
        ));
        let mut l = LoginState::new(&TargetConfig::default());
        assert!(matches!(
            l.handle_request(&req(1, 3, true), b"InitiatorName=iqn.i\0"),
            LoginStep::Fail(LoginStatus::MISSING_PARAMETER)
        ));
        let mut l = LoginState::new(&TargetConfig::default());
        let mut r = req(1, 3, true);
        r.version_min = 1;
        r.version_max = 2;
        assert!(matches!(
            l.handle_request(&r, b"InitiatorName=iqn.i\0"),
            LoginStep::Fail(LoginStatus::UNSUPPORTED_VERSION)
        ));
        let mut l = LoginState::new(&TargetConfig::default());
        assert!(matches!(
            l.handle_request(&req(1, 3, true), b"InitiatorName=a\0SessionType=Bogus\0"),
            LoginStep::Fail(LoginStatus::SESSION_TYPE_NOT_SUPPORTED)
        ));
        let mut l = LoginState::new(&TargetConfig::default());
        assert!(matches!(
            l.handle_request(&req(1, 3, true), b"InitiatorName=a\0InitiatorName=b\0"),
            LoginStep::Fail(LoginStatus::INITIATOR_ERROR)
        ));
    }

    #[test]
    fn discovery_no_target_name_and_stage_rules() {
        let mut l = LoginState::new(&TargetConfig::default());
        match l.handle_request(
            &req(1, 3, false),
            b"InitiatorName=iqn.i\0SessionType=Discovery\0",
        ) {
            LoginStep::NeedDecision(i) => assert_eq!(i.session_type, SessionType::Discovery),
            s => panic!("{s:?}"),
        }
        let r = match l.accept(accept()).unwrap() {
            LoginStep::Reply(r) => r,
            s => panic!("{s:?}"),
        };
        assert!(!r.transit);
        // No TPGT for discovery; MaxRecvDataSegmentLength declared in operational stage.
        let kv = text_of(&r);
        assert_eq!(get(&kv, "TargetPortalGroupTag"), None);
        assert!(get(&kv, "MaxRecvDataSegmentLength").is_some());
        // Wrong CSG.
        assert!(matches!(
            l.handle_request(&req(0, 1, true), b""),
            LoginStep::Fail(LoginStatus::INITIATOR_ERROR)
        ));
    }

    #[test]
    fn transit_rules() {
        let mut l = LoginState::new(&TargetConfig::default());
        assert!(matches!(
            l.handle_request(&req(1, 2, true), b"InitiatorName=a\0"),
            LoginStep::Fail(LoginStatus::INITIATOR_ERROR)
        ));
        let mut l = LoginState::new(&TargetConfig::default());
        assert!(matches!(
            l.handle_request(&req(1, 1, true), b"InitiatorName=a\0"),
            LoginStep::Fail(LoginStatus::INITIATOR_ERROR)
        ));
        let mut l = LoginState::new(&TargetConfig::default());
        let mut r = req(1, 3, true);
        r.continue_bit = true;
        assert!(matches!(
            l.handle_request(&r, b"InitiatorName=a\0"),
            LoginStep::Fail(_)
        ));
    }

    #[test]
    fn continuation_is_gathered() {
        let mut l = LoginState::new(&TargetConfig::default());
        let mut r = req(1, 3, false);
        r.continue_bit = true;
        match l.handle_request(&r, b"InitiatorName=iq") {
            LoginStep::Reply(rep) => assert!(rep.text.is_empty() && !rep.transit),
            s => panic!("{s:?}"),
        }
        match l.handle_request(&req(1, 3, true), b"n.i\0SessionType=Discovery\0") {
            LoginStep::NeedDecision(i) => assert_eq!(i.initiator_name, "iqn.i"),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn auth_reject_fails_transit() {
        let mut l = LoginState::new(&TargetConfig::default());
        let step = l.handle_request(
            &req(0, 1, true),
            b"InitiatorName=iqn.i\0SessionType=Discovery\0AuthMethod=CHAP\0",
        );
        assert!(matches!(step, LoginStep::NeedDecision(_)));
        assert_eq!(
            match l.accept(accept()).unwrap() {
                LoginStep::AuthFail(f) => f,
                s => panic!("{s:?}"),
            },
            AuthFailure::new(None, "no acceptable AuthMethod")
        );
    }

    #[test]
    fn changing_initiator_name_is_error() {
        let mut l = LoginState::new(&TargetConfig::default());
        let _ = l.handle_request(
            &req(0, 1, false),
            b"InitiatorName=a\0SessionType=Discovery\0",
        );
        let _ = l.accept(accept());
        assert!(matches!(
            l.handle_request(&req(0, 1, true), b"InitiatorName=b\0"),
            LoginStep::Fail(LoginStatus::INITIATOR_ERROR)
        ));
    }
}
