//! Host names a virtual host answers for, written as Kubernetes writes them:
//! `""` for every host, `*.foo.com` for one label under `foo.com`, else an exact name.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostMatch {
    /// Every host (an Ingress rule without `host`).
    Any,
    /// One lower-case DNS name.
    Exact(String),
    /// Exactly one label in front of this lower-case suffix (`*.foo.com` stores `foo.com`).
    Wildcard(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host {host:?}: {reason}")]
pub struct InvalidHost {
    pub host: String,
    pub reason: &'static str,
}

impl FromStr for HostMatch {
    type Err = InvalidHost;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(HostMatch::Any);
        }
        let bad = |reason| InvalidHost {
            host: s.to_string(),
            reason,
        };
        let lower = s.to_ascii_lowercase();
        if lower.parse::<std::net::IpAddr>().is_ok() {
            return Err(bad("must be a DNS name, not an IP address"));
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.len() > 253 {
            return Err(bad("longer than 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad("each label must be 1 to 63 characters"));
            }
            if label == "*" || label.contains('*') {
                return Err(bad("'*' is only allowed as the whole first label"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad("labels may contain only letters, digits and '-'"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("labels must not start or end with '-'"));
            }
        }
        Ok(if wildcard {
            HostMatch::Wildcard(name.to_string())
        } else {
            HostMatch::Exact(lower)
        })
    }
}

impl TryFrom<String> for HostMatch {
    type Error = InvalidHost;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HostMatch> for String {
    fn from(h: HostMatch) -> String {
        h.to_string()
    }
}

impl fmt::Display for HostMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostMatch::Any => Ok(()),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_lowercases() {
        assert_eq!("".parse::<HostMatch>().unwrap(), HostMatch::Any);
        assert_eq!(
            "Foo.Bar.com".parse::<HostMatch>().unwrap(),
            HostMatch::Exact("foo.bar.com".into())
        );
        assert_eq!(
            "*.foo.com".parse::<HostMatch>().unwrap(),
            HostMatch::Wildcard("foo.com".into())
        );
        assert_eq!(
            HostMatch::Wildcard("foo.com".into()).to_string(),
            "*.foo.com"
        );
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "*",
            "*.",
            "a.*.com",
            "foo*.com",
            "10.0.0.1",
            "::1",
            "a..b",
            "-a.com",
            "a_b.com",
            "foo.com:80",
        ] {
            assert!(
                bad.parse::<HostMatch>().is_err(),
                "{bad} should be rejected"
            );
        }
    }
}
