//! `tgtadm`: tgt 1.0.85's command-line client, option for option.
//!
//! Parsing follows glibc `getopt_long` (argument permutation, `--name=value`,
//! unique-prefix abbreviations, clustered short options) with tgtadm's
//! option table; validation, error texts and exit codes follow tgtadm.c, and
//! the request bytes equal those Debian's tgtadm sends (see `tests/`).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixStream;

use crate::{message_for_code, read_response_raw, socket_path, write_request, Mode, Op, Request};

/// The tgt release whose behaviour this client reproduces (`tgtadm --version`).
pub const TGT_VERSION: &str = "1.0.85";
/// tgtadm's own name in its messages.
const PROGRAM: &str = "tgtadm";

const EINVAL: i32 = 22;
const ENOTCONN: i32 = 107;

/// SCSI peripheral device types tgtadm can ask for (SPC-4 §6.4.2, table 141).
pub mod device_type {
    pub const DISK: u32 = 0x00;
    pub const TAPE: u32 = 0x01;
    pub const MMC: u32 = 0x05;
    pub const MEDIUM_CHANGER: u32 = 0x08;
    pub const OSD: u32 = 0x11;
    /// tgt's passthrough pseudo type.
    pub const PT: u32 = 0xff;
}

/// tgt's `enum tgtadm_account_dir`.
pub const ACCOUNT_TYPE_INCOMING: u32 = 0;
pub const ACCOUNT_TYPE_OUTGOING: u32 = 1;

const SHORT_OPTIONS: &str = "dhVL:o:m:t:s:c:l:n:v:b:E:f:y:T:I:Q:u:p:H:F:P:B:Y:O:C:S:";

/// tgtadm's `long_options`: (name, takes an argument, short equivalent).
const LONG_OPTIONS: &[(&str, bool, char)] = &[
    ("debug", false, 'd'),
    ("help", false, 'h'),
    ("version", false, 'V'),
    ("lld", true, 'L'),
    ("op", true, 'o'),
    ("mode", true, 'm'),
    ("tid", true, 't'),
    ("sid", true, 's'),
    ("cid", true, 'c'),
    ("lun", true, 'l'),
    ("name", true, 'n'),
    ("value", true, 'v'),
    ("backing-store", true, 'b'),
    ("bstype", true, 'E'),
    ("bsopts", true, 'S'),
    ("bsoflags", true, 'f'),
    ("blocksize", true, 'y'),
    ("targetname", true, 'T'),
    ("initiator-address", true, 'I'),
    ("initiator-name", true, 'Q'),
    ("user", true, 'u'),
    ("password", true, 'p'),
    ("host", true, 'H'),
    ("force", false, 'F'),
    ("params", true, 'P'),
    ("bus", true, 'B'),
    ("device-type", true, 'Y'),
    ("outgoing", false, 'O'),
    ("control-port", true, 'C'),
];

const USAGE: &str = include_str!("usage.txt");

/// One option as getopt returns it: its short character and argument.
type ParsedOpt = (char, Option<String>);

/// How a run ends early: text already written, exit with this code.
struct Exit(i32);

type Res<T> = Result<T, Exit>;

fn short_takes_arg(c: char) -> Option<bool> {
    let mut it = SHORT_OPTIONS.chars().peekable();
    while let Some(ch) = it.next() {
        let takes = it.peek() == Some(&':');
        if takes {
            it.next();
        }
        if ch == c {
            return Some(takes);
        }
    }
    None
}

/// glibc `getopt_long` over `args[1..]`: the options in order, as
/// (short character, argument), and the non-option arguments. Errors are
/// printed as glibc prints them (prefixed by `argv[0]`).
fn getopt(args: &[String], err: &mut dyn Write) -> Res<(Vec<ParsedOpt>, Vec<String>)> {
    let prog = args.first().map(String::as_str).unwrap_or(PROGRAM);
    let mut opts = Vec::new();
    let mut rest = Vec::new();
    let mut i = 1;
    let fail = |err: &mut dyn Write, msg: String| -> Exit {
        let _ = writeln!(err, "{prog}: {msg}");
        usage_error(err)
    };
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            rest.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let exact = LONG_OPTIONS.iter().find(|o| o.0 == name);
            let found = match exact {
                Some(o) => *o,
                None => {
                    let cands: Vec<_> = LONG_OPTIONS
                        .iter()
                        .filter(|o| o.0.starts_with(name))
                        .collect();
                    match cands.as_slice() {
                        [] => return Err(fail(err, format!("unrecognized option '{a}'"))),
                        [o] => **o,
                        many => {
                            let first = many[0];
                            if many.iter().all(|o| o.1 == first.1 && o.2 == first.2) {
                                *first
                            } else {
                                let list: Vec<String> =
                                    many.iter().map(|o| format!("'--{}'", o.0)).collect();
                                return Err(fail(
                                    err,
                                    format!(
                                        "option '--{name}' is ambiguous; possibilities: {}",
                                        list.join(" ")
                                    ),
                                ));
                            }
                        }
                    }
                }
            };
            let (lname, takes, ch) = found;
            if takes {
                let v = match inline {
                    Some(v) => v,
                    None => match args.get(i) {
                        Some(v) => {
                            i += 1;
                            v.clone()
                        }
                        None => {
                            return Err(fail(
                                err,
                                format!("option '--{lname}' requires an argument"),
                            ))
                        }
                    },
                };
                opts.push((ch, Some(v)));
            } else {
                if inline.is_some() {
                    return Err(fail(
                        err,
                        format!("option '--{lname}' doesn't allow an argument"),
                    ));
                }
                opts.push((ch, None));
            }
            continue;
        }
        if a.len() > 1 && a.starts_with('-') {
            let chars: Vec<char> = a.chars().skip(1).collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                match short_takes_arg(c) {
                    None => return Err(fail(err, format!("invalid option -- '{c}'"))),
                    Some(false) => opts.push((c, None)),
                    Some(true) => {
                        let v = if k < chars.len() {
                            let v: String = chars[k..].iter().collect();
                            k = chars.len();
                            v
                        } else if let Some(v) = args.get(i) {
                            i += 1;
                            v.clone()
                        } else {
                            return Err(fail(err, format!("option requires an argument -- '{c}'")));
                        };
                        opts.push((c, Some(v)));
                    }
                }
            }
            continue;
        }
        rest.push(a.clone());
    }
    Ok((opts, rest))
}

fn usage_error(err: &mut dyn Write) -> Exit {
    let _ = writeln!(err, "Try `{PROGRAM} --help' for more information.");
    Exit(EINVAL)
}

fn eprint(err: &mut dyn Write, msg: impl std::fmt::Display) {
    let _ = writeln!(err, "{PROGRAM}: {msg}");
}

/// glibc `strtoull(s, &end, 0)`: the value (wrapped for a leading '-',
/// saturated at `u64::MAX` on overflow) and whether any digit was read.
pub fn strtoull(s: &str) -> (u64, bool) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        i += 1;
    }
    let mut neg = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        neg = b[i] == b'-';
        i += 1;
    }
    let mut radix = 10u32;
    if i < b.len() && b[i] == b'0' {
        if i + 2 < b.len() + 1
            && matches!(b.get(i + 1), Some(b'x') | Some(b'X'))
            && b.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit())
        {
            radix = 16;
            i += 2;
        } else {
            radix = 8;
        }
    }
    let mut val: u64 = 0;
    let mut any = false;
    let mut overflow = false;
    while let Some(d) = b.get(i).and_then(|c| (*c as char).to_digit(radix)) {
        any = true;
        match val
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(d)))
        {
            Some(v) => val = v,
            None => overflow = true,
        }
        i += 1;
    }
    if overflow {
        return (u64::MAX, true);
    }
    (if neg { val.wrapping_neg() } else { val }, any)
}

/// Outcome of tgt's `str_to_int` family.
#[derive(Debug, PartialEq, Eq)]
enum NumErr {
    Invalid,
    Range,
}

/// tgt 1.0.85 `str_to_int`: invalid when no digits or the 64-bit value is
/// `ULLONG_MAX`; out of range when the value does not survive the cast to
/// the destination type (`bits` wide, `signed` or not) and back.
fn str_to_int(s: &str, bits: u32, signed: bool) -> Result<u64, NumErr> {
    let (v, any) = strtoull(s);
    if !any || v == u64::MAX {
        return Err(NumErr::Invalid);
    }
    if bits < 64 {
        let truncated = v & ((1u64 << bits) - 1);
        let back = if signed && truncated >> (bits - 1) == 1 {
            truncated | !((1u64 << bits) - 1)
        } else {
            truncated
        };
        if back != v {
            return Err(NumErr::Range);
        }
    }
    Ok(v)
}

fn bad_optarg(e: NumErr, ch: char, arg: &str, err: &mut dyn Write) -> Exit {
    let what = match e {
        NumErr::Range => "out of range",
        NumErr::Invalid => "invalid",
    };
    let _ = writeln!(err, "-{ch} argument value '{arg}' {what}");
    usage_error(err)
}

/// A signed value `bits` wide, >= 0 (tgt's `str_to_int_ge(.., 0)`).
fn parse_signed_ge0(s: &str, bits: u32, ch: char, err: &mut dyn Write) -> Res<i64> {
    let v = str_to_int(s, bits, true).map_err(|e| bad_optarg(e, ch, s, err))?;
    let signed = v as i64;
    if signed < 0 {
        return Err(bad_optarg(NumErr::Range, ch, s, err));
    }
    Ok(signed)
}

fn parse_unsigned(s: &str, bits: u32, ch: char, err: &mut dyn Write) -> Res<u64> {
    str_to_int(s, bits, false).map_err(|e| bad_optarg(e, ch, s, err))
}

fn str_to_mode(s: &str) -> Option<Mode> {
    Some(match s {
        "system" | "sys" => Mode::System,
        "target" | "tgt" => Mode::Target,
        "logicalunit" | "lu" => Mode::Device,
        "portal" | "pt" => Mode::Portal,
        "session" | "sess" => Mode::Session,
        "connection" | "conn" => Mode::Connection,
        "account" => Mode::Account,
        "lld" => Mode::Lld,
        _ => return None,
    })
}

fn str_to_op(s: &str) -> Option<Op> {
    Some(match s {
        "new" => Op::New,
        "delete" => Op::Delete,
        "bind" => Op::Bind,
        "unbind" => Op::Unbind,
        "show" => Op::Show,
        "update" => Op::Update,
        "stat" => Op::Stats,
        "start" => Op::Start,
        "stop" => Op::Stop,
        _ => return None,
    })
}

fn str_to_device_type(s: &str) -> Option<u32> {
    Some(match s {
        "disk" => device_type::DISK,
        "tape" | "ssc" => device_type::TAPE,
        "cd" => device_type::MMC,
        "changer" => device_type::MEDIUM_CHANGER,
        "osd" => device_type::OSD,
        "pt" => device_type::PT,
        _ => return None,
    })
}

/// tgtadm's `bus_to_host`: "bus,device" -> the N of the `hostN` entry under
/// `/sys/bus/<bus>/devices/<device>`.
fn bus_to_host(bus: &str, err: &mut dyn Write) -> Res<u32> {
    let Some((b, dev)) = bus.split_once(',') else {
        return Ok((-EINVAL) as u32);
    };
    let path = format!("/sys/bus/{b}/devices/{dev}");
    let mut names: Vec<String> = match std::fs::read_dir(&path) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    let host = names
        .iter()
        .filter_map(|n| n.strip_prefix("host"))
        .map(|n| strtoull(n).0 as u32)
        .next_back();
    match host {
        Some(h) => Ok(h),
        None => {
            eprint(err, format_args!("can't find bus: {b}"));
            Err(Exit(EINVAL))
        }
    }
}

/// Everything tgtadm collects from its options.
#[derive(Default)]
struct Parsed {
    op: Option<(Op, String)>,
    mode: Option<Mode>,
    lld: String,
    tid: i64,
    sid: u64,
    cid: u32,
    lun: u64,
    host_no: u32,
    force: u32,
    dev_type: u32,
    ac_dir: u32,
    control_port: u16,
    name: Option<String>,
    value: Option<String>,
    path: Option<String>,
    targetname: Option<String>,
    address: Option<String>,
    iqnname: Option<String>,
    user: Option<String>,
    password: Option<String>,
    target_ops: Option<String>,
    portal_ops: Option<String>,
    bstype: Option<String>,
    bsopts: Option<String>,
    bsoflags: Option<String>,
    blocksize: Option<String>,
    debug: bool,
}

/// What the command line asks for: a request to send (and where), or an
/// exit already decided (help, version, or an error already printed).
pub struct Command {
    pub request: Request,
    pub control_port: u16,
    pub debug: bool,
}

/// tgtadm's option handling and validation: the request Debian's tgtadm
/// would send for these arguments, or the exit code after printing what
/// tgtadm prints.
pub fn parse_args(
    args: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Command, i32> {
    parse(args, out, err).map_err(|Exit(c)| c)
}

fn parse(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> Res<Command> {
    let (opts, rest) = getopt(args, err)?;
    let mut p = Parsed {
        tid: -1,
        lun: u64::MAX,
        ..Parsed::default()
    };
    for (ch, arg) in &opts {
        let a = arg.clone().unwrap_or_default();
        match ch {
            'L' => {
                // strncpy into char lld[64]
                let mut s = a;
                while s.len() > crate::LLD_NAME_LEN {
                    s.pop();
                }
                p.lld = s;
            }
            'o' => match str_to_op(&a) {
                Some(op) => p.op = Some((op, a)),
                None => {
                    eprint(err, format_args!("unknown operation: {a}"));
                    return Err(Exit(1));
                }
            },
            'm' => match str_to_mode(&a) {
                Some(m) => p.mode = Some(m),
                None => {
                    eprint(err, format_args!("unknown mode: {a}"));
                    return Err(Exit(1));
                }
            },
            't' => p.tid = parse_signed_ge0(&a, 32, 't', err)?,
            's' => p.sid = parse_unsigned(&a, 64, 's', err)?,
            'c' => p.cid = parse_unsigned(&a, 32, 'c', err)? as u32,
            'l' => p.lun = parse_unsigned(&a, 64, 'l', err)?,
            'P' => {
                if p.mode == Some(Mode::Portal) {
                    p.portal_ops = Some(a);
                } else {
                    p.target_ops = Some(a);
                }
            }
            'n' => p.name = Some(a),
            'v' => p.value = Some(a),
            'b' => p.path = Some(a),
            'T' => p.targetname = Some(a),
            'I' => p.address = Some(a),
            'Q' => p.iqnname = Some(a),
            'u' => p.user = Some(a),
            'p' => p.password = Some(a),
            'B' => p.host_no = bus_to_host(&a, err)?,
            'H' => p.host_no = parse_signed_ge0(&a, 32, 'H', err)? as u32,
            'F' => p.force = 1,
            'f' => p.bsoflags = Some(a),
            'y' => p.blocksize = Some(a),
            'E' => p.bstype = Some(a),
            'S' => p.bsopts = Some(a),
            'Y' => match str_to_device_type(&a) {
                Some(t) => p.dev_type = t,
                None => {
                    eprint(err, format_args!("unknown target type: {a}"));
                    return Err(Exit(EINVAL));
                }
            },
            'O' => p.ac_dir = ACCOUNT_TYPE_OUTGOING,
            'C' => p.control_port = parse_signed_ge0(&a, 16, 'C', err)? as u16,
            'V' => {
                let _ = writeln!(out, "{TGT_VERSION}");
                return Err(Exit(0));
            }
            'd' => p.debug = true,
            'h' => {
                let _ = out.write_all(USAGE.as_bytes());
                return Err(Exit(0));
            }
            _ => return Err(usage_error(err)),
        }
    }
    if let Some(first) = rest.first() {
        eprint(err, format_args!("unrecognized option '{first}'"));
        return Err(usage_error(err));
    }
    let Some((op, op_name)) = p.op.clone() else {
        eprint(err, "specify the operation type");
        return Err(Exit(EINVAL));
    };
    let Some(mode) = p.mode else {
        eprint(err, "specify the mode");
        return Err(Exit(EINVAL));
    };
    // tgtadm's verify_mode_params: the first option outside `allowed` (and 'd').
    let verify = |allowed: &str| -> Option<char> {
        opts.iter()
            .map(|(c, _)| *c)
            .find(|c| !allowed.contains(*c) && *c != 'd')
    };
    let fail = |err: &mut dyn Write, msg: String| -> Exit {
        eprint(err, msg);
        Exit(EINVAL)
    };
    let not_allowed =
        |m: &str, c: char| format!("{m} mode: option '-{c}' is not allowed/supported");
    match mode {
        Mode::System => match op {
            Op::Update => {
                if let Some(c) = verify("LmonvC") {
                    return Err(fail(err, not_allowed("system", c)));
                }
                if p.name.is_none() || p.value.is_none() {
                    return Err(fail(
                        err,
                        "update operation requires 'name' and 'value' options".into(),
                    ));
                }
            }
            Op::Show | Op::Delete | Op::Stats => {}
            _ => {
                return Err(fail(
                    err,
                    format!("operation {op_name} not supported in system mode"),
                ))
            }
        },
        Mode::Target => {
            if p.tid <= 0 && op != Op::Show {
                let msg = if p.tid == 0 {
                    "'tid' cannot be 0"
                } else {
                    "'tid' option is necessary"
                };
                return Err(fail(err, msg.into()));
            }
            let allowed = match op {
                Op::New => "LmotTC",
                Op::Delete => "LmotCF",
                Op::Show | Op::Stats => "LmotC",
                Op::Bind | Op::Unbind => "LmotIQBHC",
                Op::Update => "LmotnvC",
                _ => {
                    return Err(fail(
                        err,
                        format!("operation {op_name} not supported in target mode"),
                    ))
                }
            };
            if let Some(c) = verify(allowed) {
                return Err(fail(err, not_allowed("target", c)));
            }
            match op {
                Op::New if p.targetname.is_none() => {
                    return Err(fail(
                        err,
                        "creating new target requires a name, use --targetname".into(),
                    ))
                }
                Op::Bind | Op::Unbind
                    if p.address.is_none() && p.iqnname.is_none() && p.host_no == 0 =>
                {
                    return Err(fail(
                        err,
                        format!(
                            "{op_name} operation requires initiator-address, initiator-nameor bus"
                        ),
                    ))
                }
                Op::Update if p.name.is_none() || p.value.is_none() => {
                    return Err(fail(
                        err,
                        "update operation requires 'name' and 'value' options".into(),
                    ))
                }
                _ => {}
            }
        }
        Mode::Account => {
            let allowed = match op {
                Op::New => "LmoupfC",
                Op::Show => "LmoC",
                Op::Delete => "LmouC",
                Op::Bind | Op::Unbind => "LmotuOC",
                _ => {
                    return Err(fail(
                        err,
                        format!("operation {op_name} not supported in account mode"),
                    ))
                }
            };
            if let Some(c) = verify(allowed) {
                return Err(fail(err, not_allowed("account", c)));
            }
            match op {
                Op::New if p.user.is_none() || p.password.is_none() => {
                    return Err(fail(
                        err,
                        "'user' and 'password' options are required".into(),
                    ))
                }
                // tid stays -1, which is GLOBAL_TID.
                Op::Bind | Op::Unbind if p.user.is_none() => {
                    return Err(fail(err, "'user' option is necessary".into()));
                }
                _ => {}
            }
        }
        Mode::Device => {
            if p.tid <= 0 {
                let msg = if p.tid == 0 {
                    "'tid' must not be 0"
                } else {
                    "'tid' option is necessary"
                };
                return Err(fail(err, msg.into()));
            }
            if p.lun == u64::MAX {
                return Err(fail(err, "'lun' option is necessary".into()));
            }
            match op {
                Op::New => {
                    if let Some(c) = verify("LmofytlbEYCS") {
                        return Err(fail(err, not_allowed("logicalunit", c)));
                    }
                    if p.path.is_none()
                        && ![device_type::MMC, device_type::TAPE, device_type::DISK]
                            .contains(&p.dev_type)
                    {
                        return Err(fail(err, "'backing-store' option is necessary".into()));
                    }
                }
                Op::Delete | Op::Stats => {
                    if let Some(c) = verify("LmotlC") {
                        return Err(fail(err, not_allowed("logicalunit", c)));
                    }
                }
                Op::Update => {
                    if let Some(c) = verify("LmofytlPC") {
                        return Err(fail(
                            err,
                            format!("option '-{c}' not supported in logicalunit mode"),
                        ));
                    }
                }
                _ => {
                    return Err(fail(
                        err,
                        format!("operation {op_name} not supported in logicalunit mode"),
                    ))
                }
            }
        }
        Mode::Portal => match op {
            Op::New | Op::Delete => {
                if let Some(c) = verify("LmoCP") {
                    return Err(fail(err, not_allowed("portal", c)));
                }
                if p.portal_ops.is_none() {
                    return Err(fail(err, "you must specify --param portal=<portal>".into()));
                }
            }
            Op::Show => {
                if let Some(c) = verify("LmoC") {
                    return Err(fail(
                        err,
                        format!("option '-{c}' not supported in portal mode"),
                    ));
                }
            }
            _ => {
                return Err(fail(
                    err,
                    format!("operation {op_name} not supported in portal mode"),
                ))
            }
        },
        Mode::Lld => match op {
            Op::Start | Op::Stop | Op::Show => {
                if let Some(c) = verify("LmoC") {
                    return Err(fail(err, not_allowed("lld", c)));
                }
            }
            _ => {
                return Err(fail(
                    err,
                    format!("option {} not supported in lld mode", op.code()),
                ))
            }
        },
        Mode::Session | Mode::Connection => {}
    }

    Ok(Command {
        request: build_request(&p, mode, op),
        control_port: p.control_port,
        debug: p.debug,
    })
}

/// The request struct and body, in tgtadm's field order (`concat_printf`
/// with `concat_delim(",")` between items).
fn build_request(p: &Parsed, mode: Mode, op: Op) -> Request {
    let mut body = String::new();
    let mut item = |s: String| {
        if !body.is_empty() {
            body.push(',');
        }
        body.push_str(&s);
    };
    if let Some(n) = &p.name {
        // printf("%s", NULL) prints "(null)" in glibc.
        item(format!("{n}={}", p.value.as_deref().unwrap_or("(null)")));
    }
    if let Some(v) = &p.path {
        item(format!("path={v}"));
    }
    if p.dev_type == device_type::TAPE {
        item("bstype=ssc".into());
    } else if let Some(v) = &p.bstype {
        item(format!("bstype={v}"));
    }
    let pairs: [(&str, &Option<String>); 8] = [
        ("bsopts", &p.bsopts),
        ("bsoflags", &p.bsoflags),
        ("blocksize", &p.blocksize),
        ("targetname", &p.targetname),
        ("initiator-address", &p.address),
        ("initiator-name", &p.iqnname),
        ("user", &p.user),
        ("password", &p.password),
    ];
    for (k, v) in pairs {
        if let Some(v) = v {
            item(format!("{k}={v}"));
        }
    }
    // tgtadm: "Trailing ',' makes parsing params in modules easier.."
    if let Some(v) = &p.target_ops {
        item(format!("targetOps {v},"));
    }
    if let Some(v) = &p.portal_ops {
        item(format!("portalOps {v},"));
    }
    Request {
        mode,
        op,
        lld: p.lld.clone(),
        tid: p.tid as i32,
        sid: p.sid,
        lun: p.lun,
        cid: p.cid,
        host_no: p.host_no,
        device_type: p.dev_type,
        ac_dir: p.ac_dir,
        pack: 0,
        force: p.force,
        body,
    }
}

/// strerror text of an I/O error (Rust appends " (os error N)").
fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// tgtadm: parse tgt's options, validate them as tgtadm 1.0.85 does (same
/// messages, same exit codes), send the same request bytes, print the
/// response body to `out`, and on error print "tgtadm: <message>" to `err`
/// and return tgt's exit code (22 for a daemon-side error, 107 when no
/// daemon listens, as tgtadm's failed header write reports).
pub fn run(args: Vec<OsString>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cmd = match parse(&args, out, err) {
        Ok(c) => c,
        Err(Exit(c)) => return c,
    };
    let path = socket_path(cmd.control_port);
    if path.as_os_str().len() >= 108 {
        eprint(
            err,
            format_args!("management path too long: {}", path.display()),
        );
    }
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => {
            // tgtadm ignores the connect error and reports the write that follows.
            eprint(
                err,
                "failed to send request hdr to tgt daemon, Transport endpoint is not connected",
            );
            return ENOTCONN;
        }
    };
    if let Err(e) = write_request(&mut stream, &cmd.request) {
        eprint(
            err,
            format_args!("failed to send request hdr to tgt daemon, {}", strerror(&e)),
        );
        return e.raw_os_error().unwrap_or(EINVAL);
    }
    if cmd.debug {
        let _ = writeln!(
            err,
            "ipc_mgmt_req: sent to tgtd {}",
            crate::encode_request(&cmd.request).len()
        );
    }
    let (code, body) = match read_response_raw(&mut stream) {
        Ok(r) => r,
        Err(crate::WireError::Truncated) => {
            eprint(err, "tgtd closed the socket");
            return 0;
        }
        Err(crate::WireError::Io(e)) => {
            eprint(
                err,
                format_args!("can't get the response, {}", strerror(&e)),
            );
            return e.raw_os_error().unwrap_or(EINVAL);
        }
        Err(e) => {
            eprint(err, e);
            return EINVAL;
        }
    };
    if code != 0 {
        eprint(err, message_for_code(code));
        return EINVAL;
    }
    if cmd.request.mode == Mode::System && cmd.request.op == Op::Delete {
        // tgtadm waits until the daemon is gone.
        for _ in 0..600 {
            match UnixStream::connect(&path) {
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                Err(_) => break,
            }
        }
    }
    let _ = out.write_all(body.as_bytes());
    let _ = out.flush();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        std::iter::once("tgtadm")
            .chain(s.iter().copied())
            .map(String::from)
            .collect()
    }

    fn parse_ok(s: &[&str]) -> Request {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        match parse_args(&args(s), &mut o, &mut e) {
            Ok(c) => c.request,
            Err(code) => panic!("exit {code}: {}", String::from_utf8_lossy(&e)),
        }
    }

    fn parse_err(s: &[&str]) -> (i32, String) {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        match parse_args(&args(s), &mut o, &mut e) {
            Ok(_) => panic!("expected failure"),
            Err(code) => (code, String::from_utf8_lossy(&e).into_owned()),
        }
    }

    #[test]
    fn strtoull_like_glibc() {
        assert_eq!(strtoull("10"), (10, true));
        assert_eq!(strtoull("0x10"), (16, true));
        assert_eq!(strtoull("010"), (8, true));
        assert_eq!(strtoull("0x"), (0, true));
        assert_eq!(strtoull(" +5z"), (5, true));
        assert_eq!(strtoull("-1"), (u64::MAX, true));
        assert_eq!(strtoull("x"), (0, false));
        assert_eq!(strtoull("99999999999999999999999"), (u64::MAX, true));
    }

    #[test]
    fn numbers_like_tgtadm() {
        // Observed with Debian's tgtadm 1.0.85.
        assert_eq!(
            parse_ok(&["-m", "target", "-o", "delete", "-t", "1x"]).tid,
            1
        );
        assert_eq!(
            parse_ok(&["-m", "target", "-o", "delete", "-t", "010"]).tid,
            8
        );
        assert_eq!(
            parse_err(&["-m", "target", "-o", "delete", "-t", "-1"]),
            (
                22,
                "-t argument value '-1' invalid\nTry `tgtadm --help' for more information.\n"
                    .into()
            )
        );
        assert!(
            parse_err(&["-m", "target", "-o", "delete", "-t", "2147483648"])
                .1
                .contains("out of range")
        );
        assert!(parse_err(&["-C", "40000", "-m", "target", "-o", "show"])
            .1
            .contains("'40000' out of range"));
        assert_eq!(
            parse_err(&["-m", "target", "-o", "delete", "-t", "0x"]).1,
            "tgtadm: 'tid' cannot be 0\n"
        );
        assert!(
            parse_err(&["-m", "lu", "-o", "delete", "-t", "1", "-l", "-1"])
                .1
                .contains("invalid")
        );
        assert_eq!(
            parse_ok(&["-m", "lu", "-o", "delete", "-t", "1", "-l", "-5"]).lun,
            u64::MAX - 4
        );
    }

    #[test]
    fn getopt_errors() {
        assert_eq!(
            parse_err(&["--o", "show"]).1,
            "tgtadm: option '--o' is ambiguous; possibilities: '--op' '--outgoing'\n\
             Try `tgtadm --help' for more information.\n"
        );
        assert!(parse_err(&["--foo=1"])
            .1
            .starts_with("tgtadm: unrecognized option '--foo=1'\n"));
        assert!(parse_err(&["--force=1"])
            .1
            .starts_with("tgtadm: option '--force' doesn't allow an argument\n"));
        assert!(parse_err(&["-m"])
            .1
            .starts_with("tgtadm: option requires an argument -- 'm'\n"));
        assert!(parse_err(&["-x"])
            .1
            .starts_with("tgtadm: invalid option -- 'x'\n"));
        assert_eq!(
            parse_err(&["-m", "target", "-o", "show", "extra"]).1,
            "tgtadm: unrecognized option 'extra'\nTry `tgtadm --help' for more information.\n"
        );
        assert_eq!(parse_err(&["-m", "target", "-o", "bogus"]).0, 1);
        assert_eq!(
            parse_err(&["-m", "target"]).1,
            "tgtadm: specify the operation type\n"
        );
        assert_eq!(parse_err(&["-o", "show"]).1, "tgtadm: specify the mode\n");
        assert_eq!(
            parse_err(&["-m", "lld", "-o", "new"]).1,
            "tgtadm: option 0 not supported in lld mode\n"
        );
        assert_eq!(
            parse_err(&["-m", "pt", "-o", "show", "-t", "1"]).1,
            "tgtadm: option '-t' not supported in portal mode\n"
        );
    }

    #[test]
    fn long_forms_and_abbreviations() {
        let r = parse_ok(&[
            "--mode=target",
            "--op",
            "new",
            "--ti",
            "2",
            "--targetname",
            "iqn.x",
        ]);
        assert_eq!((r.mode, r.op, r.tid), (Mode::Target, Op::New, 2));
        assert_eq!(r.body, "targetname=iqn.x");
        let r = parse_ok(&["-mlu", "-onew", "-t1", "-l", "1", "-b", "/x", "-Y", "tape"]);
        assert_eq!(r.body, "path=/x,bstype=ssc");
        assert_eq!(r.device_type, 1);
    }

    #[test]
    fn body_order() {
        let r = parse_ok(&[
            "-P",
            "readonly=1",
            "-m",
            "lu",
            "-o",
            "update",
            "-t",
            "1",
            "-l",
            "2",
            "-f",
            "sync",
        ]);
        assert_eq!(r.body, "bsoflags=sync,targetOps readonly=1,");
        let r = parse_ok(&["-m", "portal", "-o", "new", "-P", "portal=1.2.3.4:3260"]);
        assert_eq!(r.body, "portalOps portal=1.2.3.4:3260,");
        let r = parse_ok(&["-m", "account", "-o", "bind", "--user", "u", "--outgoing"]);
        assert_eq!((r.tid, r.ac_dir, r.body.as_str()), (-1, 1, "user=u"));
        let r = parse_ok(&[
            "-m", "target", "-o", "update", "-t", "1", "-n", "k", "-v", "v",
        ]);
        assert_eq!(r.body, "k=v");
    }
}
