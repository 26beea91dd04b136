//! What applies to every request, whichever host or route it reaches: the settings of
//! ingress-nginx's controller ConfigMap that are not defaults of a per-Ingress annotation.

use crate::Cidr;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalPolicy {
    /// `http-redirect-code`: the status of HTTP→HTTPS redirects.
    #[serde(default = "default_https_redirect_code")]
    pub https_redirect_code: u16,
    /// `generate-request-id`: a request without a usable `X-Request-ID` gets one.
    #[serde(default = "default_true")]
    pub generate_request_id: bool,
    /// `block-cidrs`, `block-user-agents`, `block-referers`: answered 403 before routing.
    #[serde(default)]
    pub block: Blocklist,
    /// `use-gzip`, `enable-brotli` and their companions: upstream answers compressed for
    /// clients that accept it.
    #[serde(default)]
    pub compression: Compression,
    /// `upstream-keepalive-timeout`: how long an idle upstream connection is kept for the
    /// next request.
    #[serde(default = "default_upstream_idle_ms")]
    pub upstream_idle_ms: u64,
    /// `allow-backend-server-header`: an upstream's `Server` header reaches the client
    /// instead of Portico's.
    #[serde(default)]
    pub backend_server_header: bool,
}

impl Default for GlobalPolicy {
    fn default() -> Self {
        GlobalPolicy {
            https_redirect_code: default_https_redirect_code(),
            generate_request_id: true,
            block: Blocklist::default(),
            compression: Compression::default(),
            upstream_idle_ms: default_upstream_idle_ms(),
            backend_server_header: false,
        }
    }
}

/// ingress-nginx's `upstream-keepalive-timeout` default: 60 s.
fn default_upstream_idle_ms() -> u64 {
    60_000
}

/// The encodings answers may be compressed with; none by default, as in ingress-nginx.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Compression {
    #[serde(default)]
    pub gzip: Option<Encoding>,
    #[serde(default)]
    pub brotli: Option<Encoding>,
}

impl Compression {
    pub fn is_on(&self) -> bool {
        self.gzip.is_some() || self.brotli.is_some()
    }
}

/// When an answer is compressed with one encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encoding {
    /// gzip 1–9, brotli 0–11.
    pub level: u32,
    /// Answers that declare a shorter `Content-Length` are sent as they are.
    pub min_length: u64,
    /// Media types (lower case, without parameters) compressed; `*` for any.
    pub types: Vec<String>,
}

impl Encoding {
    /// Whether an answer of `content_type` (parameters allowed) and `length` qualifies.
    pub fn takes(&self, content_type: &str, length: Option<u64>) -> bool {
        if length.is_some_and(|l| l < self.min_length) {
            return false;
        }
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.types.iter().any(|t| t == "*" || *t == media)
    }
}

fn default_https_redirect_code() -> u16 {
    308
}

fn default_true() -> bool {
    true
}

/// The statuses `http-redirect-code` may name, as ingress-nginx accepts them.
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// Clients refused everywhere, as ingress-nginx's http-level `deny` and `map`s do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Blocklist {
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
    /// Matched against the whole `User-Agent`.
    #[serde(default)]
    pub user_agents: Vec<TextMatch>,
    /// Matched against the whole `Referer`.
    #[serde(default)]
    pub referers: Vec<TextMatch>,
}

impl Blocklist {
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.user_agents.is_empty() && self.referers.is_empty()
    }
}

/// An entry of an nginx `map`: the exact text, or after `~` a regular expression searched
/// for in the value (after `~*`, regardless of case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextMatch {
    Exact(String),
    Pattern { regex: String, ignore_case: bool },
}

impl TextMatch {
    /// Reads an nginx `map` key: `~*re`, `~re`, or text.
    pub fn parse(entry: &str) -> Result<TextMatch, regex::Error> {
        let m = if let Some(re) = entry.strip_prefix("~*") {
            TextMatch::Pattern {
                regex: re.to_string(),
                ignore_case: true,
            }
        } else if let Some(re) = entry.strip_prefix('~') {
            TextMatch::Pattern {
                regex: re.to_string(),
                ignore_case: false,
            }
        } else {
            TextMatch::Exact(entry.to_string())
        };
        m.check()?;
        Ok(m)
    }

    /// Compiles the pattern, if any, with the size limit every annotation pattern has.
    pub fn check(&self) -> Result<(), regex::Error> {
        match self {
            TextMatch::Exact(_) => Ok(()),
            TextMatch::Pattern { regex, ignore_case } => {
                crate::pattern::value_regex(&crate::pattern::case_flag(regex, *ignore_case))
                    .map(drop)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_entries_read_as_nginx_writes_them() {
        assert_eq!(
            TextMatch::parse("~*curl").unwrap(),
            TextMatch::Pattern {
                regex: "curl".into(),
                ignore_case: true
            }
        );
        assert_eq!(
            TextMatch::parse("~^bot/").unwrap(),
            TextMatch::Pattern {
                regex: "^bot/".into(),
                ignore_case: false
            }
        );
        assert_eq!(
            TextMatch::parse("Mozilla/4.0").unwrap(),
            TextMatch::Exact("Mozilla/4.0".into())
        );
        assert!(TextMatch::parse("~(").is_err());
    }

    #[test]
    fn encodings_take_their_types_above_their_length() {
        let gzip = Encoding {
            level: 1,
            min_length: 256,
            types: vec!["text/html".into(), "application/json".into()],
        };
        assert!(gzip.takes("application/json; charset=utf-8", Some(1000)));
        assert!(gzip.takes("Text/HTML", None));
        assert!(!gzip.takes("text/html", Some(100)));
        assert!(!gzip.takes("image/png", Some(1000)));
        let any = Encoding {
            types: vec!["*".into()],
            ..gzip
        };
        assert!(any.takes("image/png", Some(1000)));
    }

    #[test]
    fn an_old_snapshot_without_the_section_gets_the_defaults() {
        let p: GlobalPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, GlobalPolicy::default());
        assert_eq!(p.https_redirect_code, 308);
        assert!(p.generate_request_id);
    }
}
