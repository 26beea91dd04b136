//! Clients refused everywhere (the controller ConfigMap's `block-cidrs`,
//! `block-user-agents`, `block-referers`), checked before routing as ingress-nginx's
//! http-level `deny` and `map`s are: 403, whatever host or path was asked for.

use http::header::{self, HeaderValue};
use pingora::http::RequestHeader;
use portico_model::{Blocklist, Cidr, TextMatch};
use regex::{RegexSet, RegexSetBuilder};
use std::collections::HashSet;
use std::net::IpAddr;

/// A [`Blocklist`] compiled once per snapshot.
#[derive(Debug, Default)]
pub struct CompiledBlocklist {
    cidrs: Vec<Cidr>,
    user_agents: TextMatcher,
    referers: TextMatcher,
}

impl CompiledBlocklist {
    /// `None` when nothing is blocked, so that requests pay nothing.
    pub fn new(block: &Blocklist) -> Result<Option<Self>, regex::Error> {
        if block.is_empty() {
            return Ok(None);
        }
        Ok(Some(CompiledBlocklist {
            cidrs: block.cidrs.clone(),
            user_agents: TextMatcher::new(&block.user_agents)?,
            referers: TextMatcher::new(&block.referers)?,
        }))
    }

    /// Whether the request is refused: its client (as the trusted proxies tell it; an
    /// address that cannot be told is not blocked by address), `User-Agent` or `Referer`.
    pub fn refuses(&self, client: Option<IpAddr>, req: &RequestHeader) -> bool {
        client.is_some_and(|ip| self.cidrs.iter().any(|c| c.contains(ip)))
            || self
                .user_agents
                .matches(req.headers.get(header::USER_AGENT))
            || self.referers.matches(req.headers.get(header::REFERER))
    }
}

/// nginx `map` keys: exact texts in a set, patterns in one regex set.
#[derive(Debug, Default)]
struct TextMatcher {
    exact: HashSet<Vec<u8>>,
    patterns: Option<RegexSet>,
}

impl TextMatcher {
    fn new(entries: &[TextMatch]) -> Result<Self, regex::Error> {
        let mut exact = HashSet::new();
        let mut patterns = Vec::new();
        for e in entries {
            match e {
                TextMatch::Exact(text) => {
                    exact.insert(text.as_bytes().to_vec());
                }
                TextMatch::Pattern { regex, ignore_case } => patterns
                    .push(portico_model::pattern::case_flag(regex, *ignore_case).into_owned()),
            }
        }
        let patterns = if patterns.is_empty() {
            None
        } else {
            // Each compiled alone first, with the limit every annotation pattern has.
            for p in &patterns {
                portico_model::pattern::value_regex(p)?;
            }
            Some(
                RegexSetBuilder::new(&patterns)
                    .size_limit(portico_model::pattern::SIZE_LIMIT * 4)
                    .build()?,
            )
        };
        Ok(TextMatcher { exact, patterns })
    }

    fn matches(&self, value: Option<&HeaderValue>) -> bool {
        let Some(value) = value else {
            return false;
        };
        if self.exact.contains(value.as_bytes()) {
            return true;
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        self.patterns
            .as_ref()
            .is_some_and(|set| set.is_match(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in headers {
            req.insert_header(n.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn clients_are_refused_by_address_agent_or_referer() {
        let block = CompiledBlocklist::new(&Blocklist {
            cidrs: vec!["192.0.2.0/24".parse().unwrap()],
            user_agents: vec![
                TextMatch::parse("~*curl").unwrap(),
                TextMatch::Exact("Wget/1.0".into()),
            ],
            referers: vec![TextMatch::parse("~^https://spam\\.").unwrap()],
        })
        .unwrap()
        .unwrap();
        let nobody = request(&[]);
        assert!(block.refuses(Some("192.0.2.7".parse().unwrap()), &nobody));
        assert!(!block.refuses(Some("198.51.100.7".parse().unwrap()), &nobody));
        assert!(!block.refuses(None, &nobody));
        assert!(block.refuses(None, &request(&[("user-agent", "CURL/8.0")])));
        assert!(block.refuses(None, &request(&[("user-agent", "Wget/1.0")])));
        assert!(!block.refuses(None, &request(&[("user-agent", "Wget/1.0 extra")])));
        assert!(block.refuses(None, &request(&[("referer", "https://spam.test/")])));
        assert!(!block.refuses(
            None,
            &request(&[("referer", "https://ok.test/?https://spam.")])
        ));
    }

    #[test]
    fn nothing_blocked_compiles_to_nothing() {
        assert!(CompiledBlocklist::new(&Blocklist::default())
            .unwrap()
            .is_none());
    }
}
