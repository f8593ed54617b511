//! rtgt-iscsi: the iSCSI target protocol (RFC 7143), sans-IO.
//!
//! A [`Connection`] is the state machine of one TCP connection (quinn-proto
//! style): bytes go in through [`Connection::handle_input`], time through
//! [`Connection::handle_timeout`], the target's answers through
//! `accept_login`, `complete_command` and friends; events come out of
//! [`Connection::poll_event`] and bytes out of [`Connection::transmit`]. No
//! sockets, threads or clocks live here.
//!
//! One connection per session for now (MaxConnections=1 is negotiated), so the
//! session's CmdSN window lives in the connection.

pub mod chap;
pub mod connection;
pub mod login;
pub mod params;
pub mod pdu;
pub mod text;

pub use chap::{ChapAccount, ChapPolicy};
pub use connection::{
    CommandResponse, Connection, ConnectionError, Event, FileData, InitiatorPace, LoginAccept,
    LoginInfo, Plain, Residual, ScsiCommand, SendTargetsScope, TaskManagement, Transmit,
};
pub use login::LoginStatus;
pub use params::{SessionParams, SessionType, TargetConfig};

/// A buffer for a command's data (the target gives AlignedBuf from its pool).
/// `as_ref().len()` is the usable length.
pub trait DataBuf: AsRef<[u8]> + AsMut<[u8]> {}
impl<T: AsRef<[u8]> + AsMut<[u8]>> DataBuf for T {}
