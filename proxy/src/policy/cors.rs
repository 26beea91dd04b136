//! CORS (`enable-cors`): which origins may read a route's answers. Preflights are
//! answered here; every other answer to an allowed origin, Portico's own refusals
//! included, carries the `Access-Control-*` headers so that browsers can read it.

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use portico_model::{Cors, CorsRules};

pub struct CompiledCors {
    rules: CorsRules,
    any_origin: bool,
    origins: Vec<OriginPattern>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    allow_credentials: bool,
    max_age: HeaderValue,
}

/// `scheme://host[:port]`, lower case. A host written `*.suffix` stands for one more
/// label (any number of labels under Gateway API's rules) in front of the suffix; `host`
/// then holds `.suffix`.
struct OriginPattern {
    scheme: String,
    host: String,
    port: Option<String>,
    wildcard: bool,
    many_labels: bool,
}

impl OriginPattern {
    fn parse(origin: &str, many_labels: bool) -> Self {
        let origin = origin.to_ascii_lowercase();
        let (scheme, rest) = origin.split_once("://").unwrap_or(("", &origin));
        let (host, port) = split_port(rest);
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(suffix) => (format!(".{suffix}"), true),
            None => (host.to_string(), false),
        };
        OriginPattern {
            scheme: scheme.to_string(),
            host,
            port: port.map(str::to_string),
            wildcard,
            many_labels,
        }
    }

    fn matches(&self, origin: &str) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        let (host, port) = split_port(rest);
        if !scheme.eq_ignore_ascii_case(&self.scheme) || port != self.port.as_deref() {
            return false;
        }
        if !self.wildcard {
            return host.eq_ignore_ascii_case(&self.host);
        }
        let split = host
            .len()
            .checked_sub(self.host.len())
            .filter(|n| *n > 0)
            .and_then(|n| Some((host.get(..n)?, host.get(n..)?)));
        let Some((label, suffix)) = split else {
            return false;
        };
        let label_ok =
            |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        suffix.eq_ignore_ascii_case(&self.host)
            && if self.many_labels {
                label.split('.').all(label_ok)
            } else {
                label_ok(label)
            }
    }
}

fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    }
}

impl CompiledCors {
    pub fn compile(cors: &Cors) -> Result<Self, String> {
        let value = |v: &str| {
            HeaderValue::try_from(v).map_err(|_| format!("CORS value {v:?} cannot be sent"))
        };
        let many_labels = cors.rules == CorsRules::GatewayApi;
        Ok(CompiledCors {
            rules: cors.rules,
            any_origin: cors.allow_origins.iter().any(|o| o == "*"),
            origins: cors
                .allow_origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| OriginPattern::parse(o, many_labels))
                .collect(),
            allow_methods: value(&cors.allow_methods)?,
            allow_headers: value(&cors.allow_headers)?,
            expose_headers: (!cors.expose_headers.is_empty())
                .then(|| value(&cors.expose_headers))
                .transpose()?,
            allow_credentials: cors.allow_credentials,
            max_age: HeaderValue::from(cors.max_age_secs),
        })
    }

    /// The `Access-Control-Allow-Origin` for this request, when it comes from an
    /// allowed origin.
    pub fn allowed_origin(&self, req: &RequestHeader) -> Option<HeaderValue> {
        // As in ingress-nginx, `*` answers every request, with an `Origin` or without.
        if self.any_origin && !self.echoes_stars() {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = req.headers.get(header::ORIGIN)?;
        if self.any_origin {
            return Some(origin.clone());
        }
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|p| p.matches(text))
            .then(|| origin.clone())
    }

    /// Whether the request is a preflight: `OPTIONS` asking which method it may use.
    pub fn is_preflight(req: &RequestHeader) -> bool {
        req.method == http::Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Gateway API with credentials allowed: a `*` setting answers with what the request
    /// named, since browsers do not take a literal `*` on a request with credentials.
    fn echoes_stars(&self) -> bool {
        self.rules == CorsRules::GatewayApi && self.allow_credentials
    }

    /// A preflight's `Access-Control-Allow-Methods` or `-Headers`: the setting, or what the
    /// request asked for (`asked`) when the setting is `*` and stars are echoed.
    fn allowed_list(
        &self,
        setting: &HeaderValue,
        req: &RequestHeader,
        asked: HeaderName,
    ) -> Option<HeaderValue> {
        if setting.is_empty() {
            return None;
        }
        if setting.as_bytes() == b"*" && self.echoes_stars() {
            return req.headers.get(asked).cloned();
        }
        Some(setting.clone())
    }

    /// The headers of an answer to an allowed origin's request `req`.
    pub fn apply(
        &self,
        response: &mut ResponseHeader,
        req: &RequestHeader,
        allowed: &HeaderValue,
        preflight: bool,
    ) {
        let mut set = |name: HeaderName, value: HeaderValue| {
            let _ = response.insert_header(name, value);
        };
        set(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed.clone());
        if self.allow_credentials {
            set(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if preflight {
            let methods = self.allowed_list(
                &self.allow_methods,
                req,
                header::ACCESS_CONTROL_REQUEST_METHOD,
            );
            let headers = self.allowed_list(
                &self.allow_headers,
                req,
                header::ACCESS_CONTROL_REQUEST_HEADERS,
            );
            if let Some(methods) = methods {
                set(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
            }
            if let Some(headers) = headers {
                set(header::ACCESS_CONTROL_ALLOW_HEADERS, headers);
            }
            set(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        }
        let expose = !preflight || self.rules == CorsRules::GatewayApi;
        if let Some(headers) = self.expose_headers.as_ref().filter(|_| expose) {
            set(header::ACCESS_CONTROL_EXPOSE_HEADERS, headers.clone());
        }
        if !self.any_origin || self.echoes_stars() {
            // The answer depends on the origin: caches must keep one per origin.
            let _ = response.append_header(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, origin: Option<&str>, preflight: bool) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        if let Some(o) = origin {
            req.insert_header("origin", o).unwrap();
        }
        if preflight {
            req.insert_header("access-control-request-method", "PUT")
                .unwrap();
        }
        req
    }

    fn cors(origins: &[&str]) -> CompiledCors {
        CompiledCors::compile(&Cors {
            allow_origins: origins.iter().map(|o| o.to_string()).collect(),
            ..Cors::default()
        })
        .unwrap()
    }

    #[test]
    fn listed_and_wildcard_origins_are_reflected_others_are_not() {
        let c = cors(&[
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:3000",
        ]);
        let allowed = |o: &str| {
            c.allowed_origin(&request("GET", Some(o), false))
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            allowed("https://app.example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            allowed("HTTPS://APP.example.com").as_deref(),
            Some("HTTPS://APP.example.com")
        );
        assert_eq!(
            allowed("https://a.example.org").as_deref(),
            Some("https://a.example.org")
        );
        assert_eq!(
            allowed("http://localhost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        for refused in [
            "https://example.org",
            "https://a.b.example.org",
            "https://evilexample.org",
            "https://a.example.org.evil.com",
            "http://a.example.org",
            "https://app.example.com:8443",
            "http://localhost:3001",
            "http://localhost",
            "null",
        ] {
            assert_eq!(allowed(refused), None, "{refused}");
        }
        assert!(c.allowed_origin(&request("GET", None, false)).is_none());
    }

    #[test]
    fn star_allows_every_origin_with_a_star() {
        let c = cors(&["*"]);
        assert_eq!(
            c.allowed_origin(&request("GET", Some("https://any.where"), false))
                .unwrap(),
            "*"
        );
    }

    #[test]
    fn preflight_answers_carry_methods_headers_and_max_age() {
        let c = cors(&["https://app.example.com"]);
        assert!(CompiledCors::is_preflight(&request(
            "OPTIONS",
            Some("https://app.example.com"),
            true
        )));
        assert!(!CompiledCors::is_preflight(&request(
            "OPTIONS",
            Some("https://app.example.com"),
            false
        )));
        let mut response = ResponseHeader::build(204, None).unwrap();
        c.apply(
            &mut response,
            &request("OPTIONS", Some("https://app.example.com"), true),
            &HeaderValue::from_static("https://app.example.com"),
            true,
        );
        let h = |n: &str| {
            response
                .headers
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            h("access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            h("access-control-allow-methods").as_deref(),
            Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
        );
        assert_eq!(h("access-control-max-age").as_deref(), Some("1728000"));
        assert_eq!(
            h("access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(h("vary").as_deref(), Some("Origin"));
    }

    #[test]
    fn gateway_api_rules_cover_many_labels_and_echo_stars_when_credentials_are_allowed() {
        let gateway = |origins: &[&str], credentials: bool| {
            CompiledCors::compile(&Cors {
                allow_origins: origins.iter().map(|o| o.to_string()).collect(),
                allow_methods: "*".into(),
                allow_headers: "*".into(),
                expose_headers: "x-header-3".into(),
                allow_credentials: credentials,
                max_age_secs: 5,
                rules: CorsRules::GatewayApi,
            })
            .unwrap()
        };
        let c = gateway(&["https://*.bar.com"], true);
        let deep = request("GET", Some("https://xpto.www.bar.com"), false);
        assert!(c.allowed_origin(&deep).is_some(), "any number of labels");
        assert!(
            cors(&["https://*.bar.com"]).allowed_origin(&deep).is_none(),
            "ingress-nginx: one label"
        );
        assert!(c
            .allowed_origin(&request("GET", Some("https://bar.com"), false))
            .is_none());
        assert!(c
            .allowed_origin(&request("GET", Some("https://a..bar.com"), false))
            .is_none());

        let c = gateway(&["*"], true);
        let mut preflight = request("OPTIONS", Some("https://app.test"), true);
        preflight
            .insert_header("access-control-request-headers", "x-a, x-b")
            .unwrap();
        let origin = c.allowed_origin(&preflight).unwrap();
        assert_eq!(origin, "https://app.test", "credentials: the origin, not *");
        let mut response = ResponseHeader::build(204, None).unwrap();
        c.apply(&mut response, &preflight, &origin, true);
        let h =
            |r: &ResponseHeader, n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            h(&response, "access-control-allow-methods").as_deref(),
            Some("PUT")
        );
        assert_eq!(
            h(&response, "access-control-allow-headers").as_deref(),
            Some("x-a, x-b")
        );
        assert_eq!(
            h(&response, "access-control-expose-headers").as_deref(),
            Some("x-header-3")
        );
        assert_eq!(h(&response, "vary").as_deref(), Some("Origin"));

        let c = gateway(&["*"], false);
        let origin = c.allowed_origin(&preflight).unwrap();
        assert_eq!(origin, "*");
        let mut response = ResponseHeader::build(204, None).unwrap();
        c.apply(&mut response, &preflight, &origin, true);
        assert_eq!(
            h(&response, "access-control-allow-methods").as_deref(),
            Some("*")
        );
        assert_eq!(h(&response, "access-control-allow-credentials"), None);

        let bare = CompiledCors::compile(&Cors {
            allow_origins: vec!["*".into()],
            allow_methods: String::new(),
            allow_headers: String::new(),
            expose_headers: String::new(),
            allow_credentials: false,
            max_age_secs: 5,
            rules: CorsRules::GatewayApi,
        })
        .unwrap();
        let mut response = ResponseHeader::build(204, None).unwrap();
        bare.apply(&mut response, &preflight, &origin, true);
        assert_eq!(
            h(&response, "access-control-allow-methods"),
            None,
            "no methods listed: no empty header"
        );
        assert_eq!(h(&response, "access-control-allow-headers"), None);
    }
}
