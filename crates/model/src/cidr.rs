//! CIDR ranges: who may be trusted to forward client addresses, and who may reach a route.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CIDR {value:?}: {reason}")]
pub struct InvalidCidr {
    value: String,
    reason: &'static str,
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| InvalidCidr {
            value: s.to_string(),
            reason,
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or(bad("prefix length out of range"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = InvalidCidr;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                mask_eq(u32::from(n) as u128, u32::from(a) as u128, self.prefix, 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                mask_eq(u128::from(n), u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn mask_eq(n: u128, a: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (n >> shift) == (a >> shift)
}

/// Parses a comma-separated CIDR list, as `--trusted-proxies` and `allowlist-source-range` give them.
pub fn parse_list(s: &str) -> Result<Vec<Cidr>, InvalidCidr> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_v4_v6_and_mapped_addresses() {
        let list = parse_list("10.0.0.0/8, 192.168.1.7,fd00::/8").unwrap();
        let trusted = |s: &str| list.iter().any(|c| c.contains(s.parse().unwrap()));
        assert!(trusted("10.1.2.3"));
        assert!(trusted("::ffff:10.9.9.9"));
        assert!(trusted("192.168.1.7"));
        assert!(!trusted("192.168.1.8"));
        assert!(trusted("fd12::1"));
        assert!(!trusted("fe80::1"));
        assert!(!trusted("11.0.0.1"));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn rejects_garbage_with_the_value() {
        let err = parse_list("10.0.0.0/33").unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"));
        assert!(parse_list("banana").is_err());
    }
}
