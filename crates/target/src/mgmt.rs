//! Management: the unix-socket server speaking tgt's wire protocol, and the
//! request handler that changes the registry (tgt's usr/mgmt.c).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use rtgt_backing::{open_store, OpenOptions, StoreKind};
use rtgt_mgmt::show::{ConnectionView, LunView, NexusView, SessionView, SystemView, TargetView};
use rtgt_mgmt::{Mode, Op, Request, Response, TgtadmError, WireError, NO_LUN};
use rtgt_scsi::{Asc, DeviceType, LogicalUnit, LuConfig};

use crate::accounts::Accounts;
use crate::acl::AclEntry;
use crate::limits::{LoginTimeout, Nop, Scope};
use crate::portal::{self, AcceptorHandle, AcceptorMsg};
use crate::reactor::{end_session, Shared};
use crate::registry::{LunBacking, LunEntry, Portal, Registry, TargetEntry};
use crate::shutdown::Shutdown;

/// What a management request can reach.
#[derive(Clone)]
pub struct MgmtCtx {
    pub shared: Shared,
    pub acceptor: Option<AcceptorHandle>,
    pub shutdown: Arc<Shutdown>,
    /// tgtd -t: rdwr worker threads per LUN.
    pub io_threads: usize,
}

impl MgmtCtx {
    fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }
}

type MgmtResult = Result<String, TgtadmError>;

fn ok() -> MgmtResult {
    Ok(String::new())
}

/// Handle one request, as tgtd's management thread does.
pub fn handle(ctx: &MgmtCtx, req: &Request) -> Response {
    let result = dispatch(ctx, req);
    match result {
        Ok(body) => Response {
            err: TgtadmError::Success,
            body,
        },
        Err(err) => {
            debug!(
                "management request {:?} {:?} failed: {}",
                req.mode,
                req.op,
                err.message()
            );
            Response {
                err,
                body: String::new(),
            }
        }
    }
}

fn dispatch(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    if req.mode != Mode::System && !req.lld.is_empty() && req.lld != "iscsi" {
        return Err(TgtadmError::NoDriver);
    }
    match (req.mode, req.op) {
        (Mode::System, Op::Show) => Ok(system_show(ctx)),
        (Mode::System, Op::Delete) => {
            // tgt stops only once every target is gone (tgt 1.0.85 answers
            // "invalid request" otherwise), so a stray command cannot take
            // live disks away.
            if !ctx.registry().lock().targets.is_empty() {
                return Err(TgtadmError::InvalidRequest);
            }
            info!("shutdown requested through management");
            ctx.shutdown.trigger();
            ok()
        }
        (Mode::System, Op::Update) => system_update(ctx, req),
        (Mode::Lld, Op::Start | Op::Stop | Op::Show) => ok(),
        (Mode::Target, Op::New) => target_new(ctx, req),
        (Mode::Target, Op::Delete) => target_delete(ctx, req),
        (Mode::Target, Op::Show) => target_show(ctx, req),
        (Mode::Target, Op::Bind) => target_bind(ctx, req, true),
        (Mode::Target, Op::Unbind) => target_bind(ctx, req, false),
        (Mode::Target, Op::Update) => target_update(ctx, req),
        (Mode::Device, Op::New) => lu_new(ctx, req),
        (Mode::Device, Op::Delete) => lu_delete(ctx, req),
        (Mode::Device, Op::Update) => lu_update(ctx, req),
        (Mode::Portal, Op::New) => portal_new(ctx, req),
        (Mode::Portal, Op::Delete) => portal_delete(ctx, req),
        (Mode::Portal, Op::Show) => Ok(portal_show(ctx)),
        // tgt answers session show with "invalid request" too.
        (Mode::Session, _) => Err(TgtadmError::InvalidRequest),
        (Mode::Connection, Op::Show) => connection_show(ctx, req),
        (Mode::Account, Op::New) => account_new(ctx, req),
        (Mode::Account, Op::Delete) => account_delete(ctx, req),
        (Mode::Account, Op::Bind) => account_bind(ctx, req, true),
        (Mode::Account, Op::Unbind) => account_bind(ctx, req, false),
        (Mode::Account, Op::Show) => Ok(rtgt_mgmt::show::format_accounts(
            &ctx.registry().lock().accounts.users(),
        )),
        _ => Err(TgtadmError::UnsupportedOperation),
    }
}

fn account_user(req: &Request) -> Result<String, TgtadmError> {
    req.param("user")
        .filter(|u| !u.is_empty())
        .ok_or(TgtadmError::InvalidRequest)
}

fn account_new(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let user = account_user(req)?;
    let password = req
        .param("password")
        .filter(|p| !p.is_empty())
        .ok_or(TgtadmError::InvalidRequest)?;
    if password.len() < 12 {
        // RFC 7143 §12.1.3 asks for secrets of at least 96 bits; tgt takes
        // shorter ones, and so do we, with a warning.
        warn!("account {user}: a CHAP secret shorter than 12 bytes is weak (RFC 7143 §12.1.3)");
    }
    ctx.registry().lock().accounts.add(&user, &password)?;
    info!("account {user} created");
    ok()
}

fn account_delete(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let user = account_user(req)?;
    let mut reg = ctx.registry().lock();
    let reg = &mut *reg;
    reg.accounts
        .delete(&user, reg.targets.values_mut().map(|t| &mut t.accounts))?;
    info!("account {user} deleted");
    ok()
}

/// Bind or unbind: to a target with `--tid`, to discovery sessions without.
fn account_bind(ctx: &MgmtCtx, req: &Request, bind: bool) -> MgmtResult {
    let user = account_user(req)?;
    let outgoing = req.ac_dir == rtgt_mgmt::cli::ACCOUNT_TYPE_OUTGOING;
    let mut reg = ctx.registry().lock();
    let mut b = if req.tid == -1 {
        reg.accounts.discovery.clone()
    } else {
        reg.targets
            .get(&req.tid)
            .ok_or(TgtadmError::NoTarget)?
            .accounts
            .clone()
    };
    if bind {
        reg.accounts.bind(&mut b, &user, outgoing)?;
    } else {
        Accounts::unbind(&mut b, &user, outgoing)?;
    }
    match reg.targets.get_mut(&req.tid) {
        Some(t) => t.accounts = b,
        None => reg.accounts.discovery = b,
    }
    ok()
}

fn system_show(ctx: &MgmtCtx) -> String {
    let reg = ctx.registry().lock();
    let mut limits = vec![(
        "login_timeout".to_string(),
        ctx.shared.login_timeout.get().as_secs().to_string(),
    )];
    limits.extend(scope_params(&reg.limits));
    rtgt_mgmt::show::format_system(&SystemView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        state: "ready".to_string(),
        drivers: vec![("iscsi".to_string(), "ready".to_string())],
        bstypes: StoreKind::ALL.iter().map(|k| k.to_string()).collect(),
        device_types: vec!["disk".to_string()],
        limits,
    })
}

/// A scope's caps and use, as `show` prints them.
fn scope_params(scope: &Scope) -> Vec<(String, String)> {
    [
        ("max_sessions", scope.max_sessions()),
        ("max_connections", scope.max_connections()),
        ("sessions", scope.sessions()),
        ("connections", scope.connections()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A cap as tgtadm gives it: a count, 0 for none.
fn cap_value(v: &str) -> Result<u32, TgtadmError> {
    v.trim().parse().map_err(|_| TgtadmError::InvalidRequest)
}

/// What `--op update` may change, parsed from one of tgtadm's name=value
/// pairs.
enum Setting {
    /// Accepted with nothing to change: tgt's `debug` (rtgt's log level is
    /// tgtd's -d, or RUST_LOG, at start) and a target's `state`.
    Noop,
    LoginTimeout(Duration),
    MaxSessions(u32),
    MaxConnections(u32),
    NopInterval(Option<Duration>),
    NopCount(u32),
}

impl Setting {
    /// `Ok(None)`: `name` is no setting of `mode` (system or target).
    fn parse(mode: Mode, name: &str, v: &str) -> Result<Option<Setting>, TgtadmError> {
        let bad = TgtadmError::InvalidRequest;
        let setting = match (mode, name) {
            (Mode::System, "debug") if v == "on" || v == "off" => Setting::Noop,
            (Mode::System, "debug") => return Err(bad),
            (Mode::System, "login_timeout") => {
                Setting::LoginTimeout(LoginTimeout::parse_secs(v).ok_or(bad)?)
            }
            (Mode::Target, "state" | "State") => Setting::Noop,
            (Mode::Target, "nop_interval") => {
                Setting::NopInterval(Nop::parse_interval(v).ok_or(bad)?)
            }
            (Mode::Target, "nop_count") => Setting::NopCount(Nop::parse_count(v).ok_or(bad)?),
            (_, "max_sessions") => Setting::MaxSessions(cap_value(v)?),
            (_, "max_connections") => Setting::MaxConnections(cap_value(v)?),
            _ => return Ok(None),
        };
        Ok(Some(setting))
    }
}

/// Every pair of an update request, parsed before any is applied; a name
/// the mode does not know is `unknown`.
fn settings(
    req: &Request,
    unknown: TgtadmError,
) -> Result<Vec<(String, String, Setting)>, TgtadmError> {
    req.params()
        .into_iter()
        .map(|(k, v)| match Setting::parse(req.mode, &k, &v)? {
            Some(s) => Ok((k, v, s)),
            None => Err(unknown),
        })
        .collect()
}

/// `--op update --mode sys --name N --value V`: tgt's `debug`, and rtgt's
/// daemon-wide limits.
fn system_update(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let settings = settings(req, TgtadmError::InvalidRequest)?;
    if settings.is_empty() {
        return Err(TgtadmError::InvalidRequest);
    }
    let reg = ctx.registry().lock();
    for (k, v, setting) in settings {
        match setting {
            Setting::LoginTimeout(t) => ctx.shared.login_timeout.set(t),
            Setting::MaxSessions(n) => reg.limits.set_max_sessions(n),
            Setting::MaxConnections(n) => reg.limits.set_max_connections(n),
            Setting::Noop | Setting::NopInterval(_) | Setting::NopCount(_) => {}
        }
        info!("system: {k} set to {v}");
    }
    ok()
}

fn target_new(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let name = req
        .param("targetname")
        .filter(|n| !n.is_empty())
        .ok_or(TgtadmError::InvalidRequest)?;
    if req.tid <= 0 {
        return Err(TgtadmError::InvalidRequest);
    }
    let mut reg = ctx.registry().lock();
    if reg.targets.contains_key(&req.tid) || reg.target_by_name(&name).is_some() {
        return Err(TgtadmError::TargetExist);
    }
    // tgt gives every target LUN 0, a controller LU (SPC-4 peripheral type
    // 0x0c), so REPORT LUNS and INQUIRY work before any disk is added.
    let controller = LuConfig::controller_defaults(req.tid as u32);
    let store = open_store(
        StoreKind::Null,
        &OpenOptions {
            path: PathBuf::new(),
            readonly: false,
            sync: false,
            direct: false,
            worker_threads: 1,
        },
    )
    .map_err(|_| TgtadmError::NoMem)?;
    let mut t = TargetEntry {
        tid: req.tid,
        name: name.clone(),
        luns: Default::default(),
        acl: Vec::new(),
        accounts: Default::default(),
        limits: Default::default(),
        nop: Nop::from_config(&ctx.shared.iscsi),
        shared: Registry::new_target_shared(req.tid),
    };
    t.luns.insert(
        0,
        LunEntry {
            backing: LunBacking {
                lu: Arc::new(LogicalUnit::new(0, controller)),
                store,
            },
            bstype: "null".to_string(),
            path: None,
            bsoflags: String::new(),
        },
    );
    t.publish();
    reg.targets.insert(req.tid, t);
    info!("target {}: {name} created", req.tid);
    ok()
}

fn target_delete(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let mut reg = ctx.registry().lock();
    if !reg.targets.contains_key(&req.tid) {
        return Err(TgtadmError::NoTarget);
    }
    let sids: Vec<u64> = reg.sessions_of(req.tid).map(|s| s.sid).collect();
    if !sids.is_empty() && req.force == 0 {
        return Err(TgtadmError::TargetActive);
    }
    for sid in sids {
        if let Some(s) = end_session(&mut reg, sid) {
            for c in &s.connections {
                ctx.shared.close_connection(c.handle);
            }
        }
    }
    if let Some(t) = reg.targets.remove(&req.tid) {
        info!("target {}: {} deleted", t.tid, t.name);
    }
    ok()
}

fn target_bind(ctx: &MgmtCtx, req: &Request, bind: bool) -> MgmtResult {
    let entry = if let Some(a) = req.param("initiator-address") {
        AclEntry::parse_address(&a).map_err(|_| TgtadmError::InvalidRequest)?
    } else if let Some(n) = req.param("initiator-name") {
        AclEntry::Name(n)
    } else {
        return Err(TgtadmError::InvalidRequest);
    };
    let mut reg = ctx.registry().lock();
    let t = reg.targets.get_mut(&req.tid).ok_or(TgtadmError::NoTarget)?;
    let pos = t.acl.iter().position(|a| *a == entry);
    match (bind, pos) {
        (true, Some(_)) => Err(TgtadmError::AclExist),
        (true, None) => {
            t.acl.push(entry);
            ok()
        }
        (false, Some(i)) => {
            t.acl.remove(i);
            ok()
        }
        (false, None) => Err(TgtadmError::AclNoExist),
    }
}

fn target_update(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let mut reg = ctx.registry().lock();
    let target = reg.targets.get_mut(&req.tid).ok_or(TgtadmError::NoTarget)?;
    // tgt's target parameters (state, iSCSI keys) arrive as name=value; the
    // values rtgt negotiates are daemon-wide for now, so accept known names:
    // the state, the target's caps and its pings.
    for (k, v, setting) in settings(req, TgtadmError::UnknownParam)? {
        match setting {
            Setting::MaxSessions(n) => target.limits.set_max_sessions(n),
            Setting::MaxConnections(n) => target.limits.set_max_connections(n),
            Setting::NopInterval(i) => target.nop.interval = i,
            Setting::NopCount(n) => target.nop.count = n,
            Setting::Noop | Setting::LoginTimeout(_) => continue,
        }
        info!("target {}: {k} set to {v}", req.tid);
    }
    ok()
}

/// `--op show --mode target --tid N`: like tgt, the target's iSCSI
/// parameters as key=value lines (the values login offers), then its caps
/// and their use.
fn target_params(ctx: &MgmtCtx, target: &TargetEntry) -> String {
    let c = &ctx.shared.iscsi;
    let yes_no = |b: bool| if b { "Yes" } else { "No" }.to_string();
    let digest = |b: bool| if b { "CRC32C,None" } else { "None" }.to_string();
    let params: Vec<(String, String)> = [
        (
            "MaxRecvDataSegmentLength",
            c.max_recv_data_segment_length.to_string(),
        ),
        ("HeaderDigest", digest(c.header_digest_crc32c)),
        ("DataDigest", digest(c.data_digest_crc32c)),
        ("InitialR2T", yes_no(c.initial_r2t)),
        ("MaxOutstandingR2T", c.max_outstanding_r2t.to_string()),
        ("ImmediateData", yes_no(c.immediate_data)),
        ("FirstBurstLength", c.first_burst_length.to_string()),
        ("MaxBurstLength", c.max_burst_length.to_string()),
        ("DataPDUInOrder", yes_no(c.data_pdu_in_order)),
        ("DataSequenceInOrder", yes_no(c.data_sequence_in_order)),
        ("ErrorRecoveryLevel", c.error_recovery_level.to_string()),
        ("DefaultTime2Wait", c.default_time2wait.to_string()),
        ("DefaultTime2Retain", c.default_time2retain.to_string()),
        ("MaxConnections", c.max_connections.to_string()),
        ("MaxQueueCmd", c.queue_depth.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain([
        (
            "nop_interval".to_string(),
            target.nop.interval.map_or(0, |d| d.as_secs()).to_string(),
        ),
        ("nop_count".to_string(), target.nop.count.to_string()),
    ])
    .chain(scope_params(&target.limits))
    .collect();
    rtgt_mgmt::show::format_params(&params)
}

fn target_show(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let reg = ctx.registry().lock();
    if req.tid > 0 {
        let target = reg.targets.get(&req.tid).ok_or(TgtadmError::NoTarget)?;
        return Ok(target_params(ctx, target));
    }
    let views: Vec<TargetView> = reg
        .targets
        .values()
        .map(|t| TargetView {
            tid: t.tid,
            name: t.name.clone(),
            driver: "iscsi".to_string(),
            state: "ready".to_string(),
            nexuses: reg
                .sessions_of(t.tid)
                .map(|s| NexusView {
                    nexus: s.sid,
                    initiator: s.initiator.clone(),
                    alias: s.alias.clone(),
                    connections: s
                        .connections
                        .iter()
                        .map(|c| ConnectionView {
                            cid: u32::from(c.cid),
                            address: c.peer.ip().to_string(),
                        })
                        .collect(),
                })
                .collect(),
            luns: t
                .luns
                .iter()
                .map(|(lun, e)| {
                    let c = e.backing.lu.config();
                    LunView {
                        lun: *lun,
                        type_name: match c.device_type {
                            DeviceType::Controller => "controller",
                            DeviceType::Disk => "disk",
                        }
                        .to_string(),
                        scsi_id: c.scsi_id.clone(),
                        scsi_sn: c.scsi_sn.clone(),
                        size: c.size,
                        block_size: if c.device_type == DeviceType::Controller {
                            1
                        } else {
                            c.block_size
                        },
                        online: c.online,
                        removable: c.removable,
                        prevent_removal: false,
                        readonly: c.readonly,
                        swp: false,
                        thin_provisioning: c.thin_provisioning,
                        bstype: e.bstype.clone(),
                        path: e.path.clone(),
                        bsoflags: e.bsoflags.clone(),
                    }
                })
                .collect(),
            accounts: t.accounts.show_lines(),
            acl_addresses: t
                .acl
                .iter()
                .filter(|a| !a.is_name())
                .map(|a| a.to_string())
                .collect(),
            acl_names: t
                .acl
                .iter()
                .filter(|a| a.is_name())
                .map(|a| a.to_string())
                .collect(),
        })
        .collect();
    Ok(rtgt_mgmt::show::format_targets(&views))
}

fn parse_bool(v: &str) -> Result<bool, TgtadmError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Ok(true),
        "0" | "no" | "off" | "false" => Ok(false),
        _ => Err(TgtadmError::InvalidRequest),
    }
}

/// `--bsoflags sync:direct` (tgt's separator is ':').
fn parse_bsoflags(v: &str) -> Result<(bool, bool), TgtadmError> {
    let (mut sync, mut direct) = (false, false);
    for f in v.split([':', ',', '|']).filter(|f| !f.is_empty()) {
        match f {
            "sync" => sync = true,
            "direct" => direct = true,
            _ => return Err(TgtadmError::InvalidRequest),
        }
    }
    Ok((sync, direct))
}

/// Apply tgt's `--params` LU settings (tgt's spc.c lu_config keys).
fn apply_lu_params(lu: &LogicalUnit, params: &[(String, String)]) -> Result<(), TgtadmError> {
    let mut cfg = lu.config();
    for (k, v) in params {
        match k.as_str() {
            "readonly" => cfg.readonly = parse_bool(v)?,
            "removable" => cfg.removable = parse_bool(v)?,
            "online" => cfg.online = parse_bool(v)?,
            "thin_provisioning" => cfg.thin_provisioning = parse_bool(v)?,
            "scsi_id" => cfg.scsi_id = v.clone(),
            "scsi_sn" => cfg.scsi_sn = v.clone(),
            "vendor_id" => cfg.vendor_id = v.clone(),
            "product_id" => cfg.product_id = v.clone(),
            "product_rev" => cfg.product_rev = v.clone(),
            // tgt's LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY(16)).
            "lbppbe" => match v.parse::<u8>() {
                Ok(e) if e <= 14 => cfg.lbppbe = Some(e),
                _ => return Err(TgtadmError::InvalidRequest),
            },
            // Keys the creation request itself carries.
            "path" | "bstype" | "bsopts" | "bsoflags" | "blocksize" | "device-type" => {}
            _ => return Err(TgtadmError::UnknownParam),
        }
    }
    lu.update(|c| *c = cfg);
    Ok(())
}

fn lu_new(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    if req.lun == NO_LUN {
        return Err(TgtadmError::InvalidRequest);
    }
    // Without -E a new LU gets the fastest engine (io_uring, which falls back
    // to rdwr where the kernel refuses it); tgt's default is rdwr.
    let kind: StoreKind = match req.param("bstype") {
        Some(b) => b.parse().map_err(|_| TgtadmError::InvalidRequest)?,
        None => StoreKind::IoUring,
    };
    let path = req.param("path").filter(|p| !p.is_empty());
    if path.is_none() && kind != StoreKind::Null {
        return Err(TgtadmError::InvalidRequest);
    }
    let bsoflags = req.param("bsoflags").unwrap_or_default();
    let (sync, direct) = parse_bsoflags(&bsoflags)?;
    let block_size = match req.param("blocksize") {
        None => 512,
        Some(b) => match b.parse::<u32>() {
            Ok(v @ (512 | 1024 | 2048 | 4096)) => v,
            _ => return Err(TgtadmError::InvalidRequest),
        },
    };
    {
        let reg = ctx.registry().lock();
        let t = reg.targets.get(&req.tid).ok_or(TgtadmError::NoTarget)?;
        if t.luns.contains_key(&req.lun) {
            return Err(TgtadmError::LunExist);
        }
    }
    // Open outside the registry lock: opening a file may block.
    let store = open_store(
        kind,
        &OpenOptions {
            path: path.clone().map(PathBuf::from).unwrap_or_default(),
            readonly: false,
            sync,
            direct,
            worker_threads: ctx.io_threads,
        },
    )
    .map_err(|e| {
        warn!("logical unit {}:{}: {e}", req.tid, req.lun);
        TgtadmError::InvalidRequest
    })?;
    let mut cfg = LuConfig::disk_defaults(req.tid as u32, req.lun);
    cfg.size = store.size();
    cfg.block_size = block_size;
    cfg.max_transfer = ctx.shared.iscsi.max_data_transfer;
    let lu = Arc::new(LogicalUnit::new(req.lun, cfg));
    apply_lu_params(&lu, &req.params())?;
    if let Some(p) = &path {
        crate::pr_state::attach(&lu, crate::pr_state::state_path(Path::new(p)));
    }
    let registry = Arc::clone(ctx.registry());
    lu.set_nexus_liveness(Box::new(move |n| registry.nexus_alive(n.0)));

    let mut reg = ctx.registry().lock();
    let nexuses: Vec<_> = reg
        .sessions_of(req.tid)
        .map(|s| (s.nexus, s.nexus_identity()))
        .collect();
    let t = reg.targets.get_mut(&req.tid).ok_or(TgtadmError::NoTarget)?;
    if t.luns.contains_key(&req.lun) {
        return Err(TgtadmError::LunExist);
    }
    // SPC-4 §6.33: the LUN inventory changed for every I_T nexus.
    for e in t.luns.values() {
        e.backing
            .lu
            .raise_unit_attention(Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    }
    for (n, id) in nexuses {
        lu.add_nexus(n, id);
    }
    let oflags = rtgt_mgmt::show::bsoflags_text(sync, direct);
    // What runs, after any fallback (io_uring refused → rdwr).
    let bstype = store.name().to_string();
    t.luns.insert(
        req.lun,
        LunEntry {
            backing: LunBacking { lu, store },
            bstype,
            path,
            bsoflags: oflags,
        },
    );
    t.publish();
    info!("target {}: LUN {} created ({kind})", req.tid, req.lun);
    ok()
}

fn lu_delete(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let mut reg = ctx.registry().lock();
    let t = reg.targets.get_mut(&req.tid).ok_or(TgtadmError::NoTarget)?;
    let e = t.luns.get(&req.lun).ok_or(TgtadmError::NoLun)?;
    if e.backing.lu.in_flight() > 0 {
        // Like tgt: not under commands at the store (tgtadm has no --force
        // for a LUN; `--op delete --mode target --force` ends the sessions).
        return Err(TgtadmError::LunActive);
    }
    let removed = t.luns.remove(&req.lun).ok_or(TgtadmError::NoLun)?;
    for e in t.luns.values() {
        e.backing
            .lu
            .raise_unit_attention(Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
    }
    t.publish();
    // The store closes when the last in-flight command and session snapshot
    // drop their reference; flush what was written now.
    drop(removed);
    info!("target {}: LUN {} deleted", req.tid, req.lun);
    ok()
}

fn lu_update(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let reg = ctx.registry().lock();
    let t = reg.targets.get(&req.tid).ok_or(TgtadmError::NoTarget)?;
    let e = t.luns.get(&req.lun).ok_or(TgtadmError::NoLun)?;
    apply_lu_params(&e.backing.lu, &req.params())?;
    ok()
}

fn portal_new(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let spec = req.param("portal").ok_or(TgtadmError::InvalidRequest)?;
    let addr = portal::parse_portal(&spec).map_err(|_| TgtadmError::InvalidRequest)?;
    let mut reg = ctx.registry().lock();
    if reg.portals.iter().any(|p| p.addr == addr) {
        return Err(TgtadmError::InvalidRequest);
    }
    let listener = portal::bind(addr).map_err(|e| {
        warn!("{e}");
        TgtadmError::InvalidRequest
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    if let Some(a) = &ctx.acceptor {
        a.send(AcceptorMsg::Add(listener));
    }
    reg.portals.push(Portal {
        addr: bound,
        tpgt: 1,
    });
    ok()
}

fn portal_delete(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let spec = req.param("portal").ok_or(TgtadmError::InvalidRequest)?;
    let addr = portal::parse_portal(&spec).map_err(|_| TgtadmError::InvalidRequest)?;
    let mut reg = ctx.registry().lock();
    let i = reg
        .portals
        .iter()
        .position(|p| p.addr == addr)
        .ok_or(TgtadmError::InvalidRequest)?;
    reg.portals.remove(i);
    if let Some(a) = &ctx.acceptor {
        a.send(AcceptorMsg::Remove(addr));
    }
    ok()
}

fn portal_show(ctx: &MgmtCtx) -> String {
    let reg = ctx.registry().lock();
    let list: Vec<String> = reg
        .portals
        .iter()
        .map(|p| format!("{},{}", p.addr, p.tpgt))
        .collect();
    rtgt_mgmt::show::format_portals(&list)
}

fn session_views(ctx: &MgmtCtx, tid: i32) -> Result<Vec<SessionView>, TgtadmError> {
    let reg = ctx.registry().lock();
    if !reg.targets.contains_key(&tid) {
        return Err(TgtadmError::NoTarget);
    }
    Ok(reg
        .sessions_of(tid)
        .map(|s| SessionView {
            sid: s.sid,
            initiator: s.initiator.clone(),
            connections: s
                .connections
                .iter()
                .map(|c| ConnectionView {
                    cid: u32::from(c.cid),
                    address: c.peer.ip().to_string(),
                })
                .collect(),
        })
        .collect())
}

/// tgt 1.0.85 lists a target's sessions and connections under
/// `--mode conn --op show --tid T` (ignoring --sid).
fn connection_show(ctx: &MgmtCtx, req: &Request) -> MgmtResult {
    let views = session_views(ctx, req.tid)?;
    Ok(rtgt_mgmt::show::format_sessions(&views))
}

/// Why a management peer may not manage this daemon, if it may not. The
/// socket's mode already keeps others out; SO_PEERCRED (unix(7)) checks
/// again, in case the socket was made reachable: only root, or the user
/// the daemon runs as, may manage it.
fn peer_refusal(stream: &UnixStream) -> Option<String> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let me = nix::unistd::geteuid().as_raw();
    match getsockopt(stream, PeerCredentials) {
        Ok(c) if c.uid() == 0 || c.uid() == me => None,
        Ok(c) => Some(format!(
            "only root may manage tgtd: the request came from uid {} (pid {})",
            c.uid(),
            c.pid()
        )),
        Err(e) => Some(format!(
            "cannot tell who sent the request (SO_PEERCRED: {e})"
        )),
    }
}

/// The management socket (tgt's `/var/run/tgtd/socket.N`), owned by root with
/// mode 0600: only root may manage the target.
pub struct MgmtServer {
    listener: UnixListener,
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl MgmtServer {
    pub fn bind(path: &Path) -> std::io::Result<MgmtServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A stale socket from a crashed daemon: refuse if something answers.
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running tgtd", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(MgmtServer {
            listener,
            path: path.to_path_buf(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Ask a running `serve` to return (it wakes on a connection).
    pub fn stopper(&self) -> impl Fn() + Send + 'static {
        let stop = self.stop.clone();
        let path = self.path.clone();
        move || {
            stop.store(true, Ordering::SeqCst);
            let _ = UnixStream::connect(&path);
        }
    }

    /// Serve requests one at a time, like tgtd's management loop.
    pub fn serve(self, ctx: MgmtCtx) {
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut stream) = stream else { continue };
            // A client that connects and says nothing must not wedge management.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let refusal = peer_refusal(&stream);
            match rtgt_mgmt::read_request(&mut stream) {
                Ok(req) => {
                    let rsp = match refusal {
                        None => handle(&ctx, &req),
                        Some(why) => {
                            // tgt's protocol carries no text with an error:
                            // the reason goes to the log, the peer gets the
                            // bare code.
                            warn!("management request refused: {why}");
                            Response {
                                err: TgtadmError::UnknownErr,
                                body: String::new(),
                            }
                        }
                    };
                    if let Err(e) = rtgt_mgmt::write_response(&mut stream, &rsp) {
                        debug!("management response: {e}");
                    }
                    let _ = stream.flush();
                }
                Err(e @ (WireError::BadMode(_) | WireError::BadOp(_))) => {
                    // The whole message was read: answer like tgt does.
                    debug!("bad management request: {e}");
                    let rsp = Response {
                        err: TgtadmError::InvalidRequest,
                        body: String::new(),
                    };
                    let _ = rtgt_mgmt::write_response(&mut stream, &rsp);
                }
                Err(e) => debug!("bad management request: {e}"),
            }
        }
        // The socket file stays, like tgt's: tgtadm's `--op delete --mode
        // system` waits for connect() to fail with ECONNREFUSED (a file
        // nobody listens on), and would wait forever on ENOENT. The next
        // tgtd on this control port replaces the stale file.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtgt_iscsi::TargetConfig;

    fn ctx() -> MgmtCtx {
        MgmtCtx {
            shared: Shared {
                registry: Registry::new(),
                reactors: Arc::new(std::sync::OnceLock::new()),
                iscsi: TargetConfig::default(),
                login_timeout: Default::default(),
            },
            acceptor: None,
            shutdown: Arc::new(Shutdown::default()),
            io_threads: 1,
        }
    }

    fn request(mode: Mode, op: Op, body: &str) -> Request {
        let mut r = Request::new(mode, op);
        r.lld = "iscsi".into();
        r.tid = 1;
        r.lun = 1;
        r.body = body.into();
        r
    }

    /// Like tgt's `tgt_device_destroy`: not while commands are at the store.
    #[test]
    fn a_lun_with_commands_at_its_store_is_not_deleted() {
        let ctx = ctx();
        let new_target = request(Mode::Target, Op::New, "targetname=iqn.2026-11.org.rtgt:m");
        assert_eq!(handle(&ctx, &new_target).err, TgtadmError::Success);
        let new_lun = request(Mode::Device, Op::New, "path=/dev/null,bstype=null");
        assert_eq!(handle(&ctx, &new_lun).err, TgtadmError::Success);
        let lu = ctx.registry().lock().targets[&1].luns[&1]
            .backing
            .lu
            .clone();
        let delete = request(Mode::Device, Op::Delete, "");
        let guard = lu.begin_io();
        assert_eq!(handle(&ctx, &delete).err, TgtadmError::LunActive);
        drop(guard);
        assert_eq!(handle(&ctx, &delete).err, TgtadmError::Success);
        assert_eq!(handle(&ctx, &delete).err, TgtadmError::NoLun);
    }
}
