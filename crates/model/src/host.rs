//! Host names a virtual host answers for, written as Kubernetes writes them:
//! `""` for every host, `*.foo.com` for one label under `foo.com`, else an exact name.
//! Gateway API's wildcards cover any number of labels; the snapshot writes them
//! `**.foo.com`.

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
    /// One or more labels in front of this lower-case suffix: a Gateway API hostname
    /// `*.foo.com`, written `**.foo.com` in the snapshot. An Ingress wildcard of the same
    /// suffix is more specific.
    Suffix(String),
}

impl HostMatch {
    /// A Gateway API hostname: as an Ingress host, except that `*.` covers any number of labels.
    pub fn gateway(s: &str) -> Result<Self, InvalidHost> {
        match s.parse()? {
            HostMatch::Wildcard(suffix) => Ok(HostMatch::Suffix(suffix)),
            other => Ok(other),
        }
    }

    /// Whether a request for `name` (a lower-case DNS name) would match this host.
    pub fn covers(&self, name: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(h) => h == name,
            HostMatch::Wildcard(s) => name
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == s),
            HostMatch::Suffix(s) => name
                .strip_suffix(s.as_str())
                .and_then(|front| front.strip_suffix('.'))
                .is_some_and(|front| !front.is_empty()),
        }
    }
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

/// The snapshot's text form: what [`FromStr`] reads (an Ingress host), and `**.suffix`.
impl TryFrom<String> for HostMatch {
    type Error = InvalidHost;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.strip_prefix("**.") {
            Some(rest) => match format!("*.{rest}").parse()? {
                HostMatch::Wildcard(suffix) => Ok(HostMatch::Suffix(suffix)),
                _ => Err(InvalidHost {
                    host: s,
                    reason: "'**.' must be followed by a DNS name",
                }),
            },
            None => s.parse(),
        }
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
            HostMatch::Suffix(s) => write!(f, "**.{s}"),
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
    fn a_gateway_wildcard_covers_any_number_of_labels_and_round_trips_as_text() {
        let h = HostMatch::gateway("*.Example.com").unwrap();
        assert_eq!(h, HostMatch::Suffix("example.com".into()));
        assert_eq!(HostMatch::try_from(h.to_string()).unwrap(), h);
        assert!(
            "**.example.com".parse::<HostMatch>().is_err(),
            "not an Ingress host"
        );
        assert!(h.covers("a.example.com"));
        assert!(h.covers("a.b.example.com"));
        assert!(!h.covers("example.com"));
        assert!(!h.covers("aexample.com"));
        let ingress = "*.example.com".parse::<HostMatch>().unwrap();
        assert!(ingress.covers("a.example.com"));
        assert!(!ingress.covers("a.b.example.com"));
        assert!(HostMatch::try_from("**.".to_string()).is_err());
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
