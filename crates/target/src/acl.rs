//! Initiator ACLs, as tgt's `--op bind --mode target -I ADDR|CIDR|ALL` and
//! `-Q INITIATOR-NAME`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AclEntry {
    /// `-I ALL`: any address.
    All,
    /// `-I 10.0.0.0/8`, `-I 192.168.1.5`, `-I fe80::/10`.
    Address { net: IpAddr, prefix: u8 },
    /// `-Q iqn.1994-05.com.example:host`.
    Name(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid initiator address: {0}")]
pub struct AclParseError(pub String);

impl AclEntry {
    /// Parse an `initiator-address` value.
    pub fn parse_address(s: &str) -> Result<AclEntry, AclParseError> {
        if s.eq_ignore_ascii_case("ALL") {
            return Ok(AclEntry::All);
        }
        let bad = || AclParseError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net = IpAddr::from_str(addr.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(AclEntry::Address { net, prefix })
    }

    pub fn matches(&self, addr: IpAddr, initiator_name: &str) -> bool {
        match self {
            AclEntry::All => true,
            AclEntry::Name(n) => n == initiator_name,
            AclEntry::Address { net, prefix } => in_prefix(*net, *prefix, canonical(addr)),
        }
    }

    pub fn is_name(&self) -> bool {
        matches!(self, AclEntry::Name(_))
    }
}

/// An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn in_prefix(net: IpAddr, prefix: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl fmt::Display for AclEntry {
    /// The text tgt prints under "ACL information:".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclEntry::All => f.write_str("ALL"),
            AclEntry::Name(n) => f.write_str(n),
            AclEntry::Address { net, prefix } => {
                let max = if net.is_ipv4() { 32 } else { 128 };
                if *prefix == max {
                    write!(f, "{net}")
                } else {
                    write!(f, "{net}/{prefix}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn all_matches_everything() {
        let a = AclEntry::parse_address("ALL").unwrap();
        assert!(a.matches(ip("10.1.2.3"), "x"));
        assert!(a.matches(ip("::1"), "x"));
    }

    #[test]
    fn cidr_v4_and_mapped() {
        let a = AclEntry::parse_address("192.168.0.0/16").unwrap();
        assert!(a.matches(ip("192.168.7.9"), ""));
        assert!(a.matches(ip("::ffff:192.168.7.9"), ""));
        assert!(!a.matches(ip("192.169.0.1"), ""));
        assert_eq!(a.to_string(), "192.168.0.0/16");
    }

    #[test]
    fn single_address_and_v6() {
        let a = AclEntry::parse_address("127.0.0.1").unwrap();
        assert!(a.matches(ip("127.0.0.1"), ""));
        assert!(!a.matches(ip("127.0.0.2"), ""));
        let b = AclEntry::parse_address("fe80::/10").unwrap();
        assert!(b.matches(ip("fe80::1"), ""));
        assert!(!b.matches(ip("2001::1"), ""));
        let z = AclEntry::parse_address("0.0.0.0/0").unwrap();
        assert!(z.matches(ip("8.8.8.8"), ""));
    }

    #[test]
    fn rejects_garbage() {
        assert!(AclEntry::parse_address("300.1.1.1").is_err());
        assert!(AclEntry::parse_address("10.0.0.0/33").is_err());
        assert!(AclEntry::parse_address("").is_err());
    }

    #[test]
    fn names() {
        let n = AclEntry::Name("iqn.a".into());
        assert!(n.matches(ip("1.2.3.4"), "iqn.a"));
        assert!(!n.matches(ip("1.2.3.4"), "iqn.b"));
    }
}
