//! The canary split of a route: which requests go to the canary backend. Affinity is
//! decided by the caller first (a pinned client stays on its side); then the header, the
//! cookie and the weight decide, in ingress-nginx's order.

use crate::config::compile::BackendPool;
use crate::routing::request_key::cookie;
use http::header::HeaderName;
use pingora::http::RequestHeader;
use portico_model::{Canary, HeaderRule, SessionAffinity};
use std::sync::Arc;

pub struct CompiledCanary {
    pub pool: Arc<BackendPool>,
    pub affinity: Option<SessionAffinity>,
    /// `affinity-canary-behavior: sticky`.
    pub sticky: bool,
    header: Option<(HeaderName, Rule)>,
    cookie: Option<Box<str>>,
    weight: u32,
    weight_total: u32,
}

enum Rule {
    AlwaysNever,
    Primary,
    Equals(Box<str>),
    Matches(regex::Regex),
}

impl CompiledCanary {
    pub fn compile(canary: &Canary, pool: Arc<BackendPool>) -> Result<Self, String> {
        let header = match &canary.header {
            None => None,
            Some(h) => {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("canary header name {:?}", h.name))?;
                let rule = match &h.rule {
                    HeaderRule::AlwaysNever => Rule::AlwaysNever,
                    HeaderRule::Primary => Rule::Primary,
                    HeaderRule::Equals(v) => Rule::Equals(v.as_str().into()),
                    HeaderRule::Matches(p) => Rule::Matches(
                        portico_model::pattern::value_regex(p)
                            .map_err(|e| format!("canary header pattern: {e}"))?,
                    ),
                };
                Some((name, rule))
            }
        };
        Ok(CompiledCanary {
            pool,
            affinity: canary.affinity.clone(),
            sticky: canary.sticky,
            header,
            cookie: canary.cookie.as_deref().map(Into::into),
            weight: canary.weight,
            weight_total: canary.weight_total.max(1),
        })
    }

    /// Whether a request nobody is pinned for goes to the canary: the header, then the
    /// cookie, then the weight.
    pub fn takes(&self, req: &RequestHeader) -> bool {
        if let Some((name, rule)) = &self.header {
            if let Some(value) = req.headers.get(name).and_then(|v| v.to_str().ok()) {
                match rule {
                    Rule::Equals(wanted) if value == &**wanted => return true,
                    Rule::Matches(pattern) if pattern.is_match(value) => return true,
                    Rule::AlwaysNever if value == "always" => return true,
                    Rule::AlwaysNever if value == "never" => return false,
                    Rule::Primary => return false,
                    _ => {}
                }
            }
        }
        if let Some(name) = &self.cookie {
            match cookie(req, name) {
                Some("always") => return true,
                Some("never") => return false,
                _ => {}
            }
        }
        self.weight > 0 && fastrand::u32(1..=self.weight_total) <= self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::compile::BackendPool;
    use portico_model::{Backend, CanaryHeader};

    fn canary(header: Option<HeaderRule>, cookie: bool, weight: u32) -> CompiledCanary {
        let spec = Canary {
            backend: "b".into(),
            source: portico_model::SourceRef::new("ns", "canary"),
            header: header.map(|rule| CanaryHeader {
                name: "x-canary".into(),
                rule,
            }),
            cookie: cookie.then(|| "canary".into()),
            weight,
            weight_total: 100,
            affinity: None,
            sticky: true,
        };
        let backend = Backend {
            name: "b".into(),
            service: Default::default(),
            endpoints: vec![],
            upstream: Default::default(),
            policy: Default::default(),
        };
        CompiledCanary::compile(&spec, Arc::new(BackendPool::new(&backend).unwrap())).unwrap()
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn header_then_cookie_then_weight() {
        let c = canary(Some(HeaderRule::AlwaysNever), true, 100);
        assert!(
            !c.takes(&request(&[
                ("x-canary", "never"),
                ("cookie", "canary=always")
            ])),
            "the header outranks the cookie"
        );
        assert!(c.takes(&request(&[
            ("x-canary", "always"),
            ("cookie", "canary=never")
        ])));
        assert!(
            !c.takes(&request(&[
                ("x-canary", "maybe"),
                ("cookie", "canary=never")
            ])),
            "other header values leave it to the cookie"
        );
        assert!(
            c.takes(&request(&[("x-canary", "maybe")])),
            "then to the weight (100 of 100)"
        );
        let none = canary(Some(HeaderRule::AlwaysNever), true, 0);
        assert!(
            !none.takes(&request(&[("cookie", "canary=maybe")])),
            "weight 0 sends nothing"
        );

        let exact = canary(Some(HeaderRule::Equals("beta".into())), false, 0);
        assert!(exact.takes(&request(&[("x-canary", "beta")])));
        assert!(
            !exact.takes(&request(&[("x-canary", "always")])),
            "with a value, always is just another value"
        );
        let pattern = canary(
            Some(HeaderRule::Matches("^(qa|beta)-\\d+$".into())),
            false,
            0,
        );
        assert!(pattern.takes(&request(&[("x-canary", "qa-7")])));
        assert!(!pattern.takes(&request(&[("x-canary", "prod-7")])));

        let broken = canary(Some(HeaderRule::Primary), true, 100);
        assert!(
            !broken.takes(&request(&[
                ("x-canary", "always"),
                ("cookie", "canary=always")
            ])),
            "a pattern that did not compile keeps requests with the header on the primary"
        );
        assert!(
            broken.takes(&request(&[("cookie", "canary=always")])),
            "without the header, the cookie and weight decide"
        );
    }

    #[test]
    fn the_weight_is_a_share_of_requests() {
        let c = canary(None, false, 30);
        let n = 20_000;
        let taken = (0..n).filter(|_| c.takes(&request(&[]))).count();
        let share = taken as f64 / n as f64;
        assert!((0.27..0.33).contains(&share), "{share}");
    }
}
