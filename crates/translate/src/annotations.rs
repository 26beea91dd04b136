//! Annotations, read under both prefixes and parsed into typed values. `portico.io/`
//! wins over `nginx.ingress.kubernetes.io/` when both set a name; a value that does not
//! parse is reported with the annotation and the value, and the default applies.
//!
//! Every annotation's value grammar lives here, one reader per kind of value, so that the
//! groups in `ingress/` share them and a value means the same wherever it is read; that
//! is why this file is longer than most (about 650 lines before its tests).

use crate::diagnostic::{Problem, Reason};
use portico_model::{
    AffinityMode, Balance, SameSite, Template, TemplatePart, UpstreamProtocol, ValueCondition,
    ValueRule,
};
use std::collections::BTreeMap;

pub(crate) const PORTICO_PREFIX: &str = "portico.io/";
pub(crate) const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// Whether `v` is an absolute `http` or `https` URL with a host.
fn is_absolute_url(v: &str) -> bool {
    let Ok(uri) = v.parse::<http::Uri>() else {
        return false;
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http") | Some("https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty());
    scheme_ok && host_ok && !v.bytes().any(|b| b <= b' ')
}

/// One Ingress's annotations, and the defaults the controller ConfigMap gives the ones
/// it does not set; or, read the same way, the controller ConfigMap's own keys.
pub(crate) struct Annotations<'a> {
    map: Option<&'a BTreeMap<String, String>>,
    /// Where a name is looked for in `map`, in order.
    prefixes: &'static [&'static str],
    /// By bare name, each already checked to parse.
    defaults: Option<&'a BTreeMap<String, String>>,
}

/// A value that did not parse: the full annotation key, the value, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidAnnotation {
    pub key: String,
    pub value: String,
    pub expected: &'static str,
}

impl InvalidAnnotation {
    pub fn reason(&self) -> Reason {
        Reason::InvalidAnnotation
    }

    pub fn message(&self) -> String {
        format!(
            "annotation {}: value {:?} is not {}",
            self.key, self.value, self.expected
        )
    }
}

impl From<InvalidAnnotation> for Problem {
    fn from(e: InvalidAnnotation) -> Self {
        Problem::new(e.reason(), e.message())
    }
}

impl<'a> Annotations<'a> {
    pub fn new(map: Option<&'a BTreeMap<String, String>>) -> Self {
        Annotations {
            map,
            prefixes: &[PORTICO_PREFIX, NGINX_PREFIX],
            defaults: None,
        }
    }

    /// An Ingress's annotations over the controller ConfigMap's defaults for them.
    pub fn with_defaults(
        map: Option<&'a BTreeMap<String, String>>,
        defaults: &'a BTreeMap<String, String>,
    ) -> Self {
        Annotations {
            defaults: Some(defaults),
            ..Annotations::new(map)
        }
    }

    /// Keys without a prefix: the controller ConfigMap's, read with the same grammar.
    pub fn settings(map: &'a BTreeMap<String, String>) -> Self {
        Annotations {
            map: Some(map),
            prefixes: &[""],
            defaults: None,
        }
    }

    /// The controller ConfigMap's `global-auth-*` keys, read as the `auth-*` annotations.
    pub fn global_auth(map: &'a BTreeMap<String, String>) -> Self {
        Annotations {
            map: Some(map),
            prefixes: &["global-"],
            defaults: None,
        }
    }

    /// The value of `name` and the key it was found under (a ConfigMap default is found
    /// under its bare name).
    pub fn get(&self, name: &str) -> Option<(String, &'a str)> {
        if let Some(map) = self.map {
            for prefix in self.prefixes {
                let key = format!("{prefix}{name}");
                if let Some(v) = map.get(&key) {
                    return Some((key, v.as_str()));
                }
            }
        }
        let (key, v) = self.defaults?.get_key_value(name)?;
        Some((key.clone(), v.as_str()))
    }

    fn parse<T>(
        &self,
        name: &str,
        expected: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, InvalidAnnotation> {
        match self.get(name) {
            None => Ok(None),
            Some((key, value)) => parse(value.trim())
                .map(Some)
                .ok_or_else(|| InvalidAnnotation {
                    key,
                    value: value.to_string(),
                    expected,
                }),
        }
    }

    /// `"true"`/`"false"` as Kubernetes writes booleans in annotations.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, InvalidAnnotation> {
        self.parse(name, "\"true\" or \"false\"", |v| {
            match v.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            }
        })
    }

    /// ingress-nginx's `"on"`/`"off"` switches.
    pub fn on_off(&self, name: &str) -> Result<Option<bool>, InvalidAnnotation> {
        self.parse(name, "\"on\" or \"off\"", |v| {
            match v.to_ascii_lowercase().as_str() {
                "on" | "true" => Some(true),
                "off" | "false" => Some(false),
                _ => None,
            }
        })
    }

    pub fn backend_protocol(&self) -> Result<Option<UpstreamProtocol>, InvalidAnnotation> {
        self.parse(
            "backend-protocol",
            "one of HTTP, HTTPS, GRPC, GRPCS, H2C",
            |v| match v.to_ascii_uppercase().as_str() {
                "HTTP" => Some(UpstreamProtocol::Http),
                "HTTPS" => Some(UpstreamProtocol::Https),
                "GRPC" => Some(UpstreamProtocol::Grpc),
                "GRPCS" => Some(UpstreamProtocol::Grpcs),
                "H2C" => Some(UpstreamProtocol::H2c),
                _ => None,
            },
        )
    }

    /// A DNS name (for SNI and verification).
    pub fn server_name(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "a DNS name", |v| {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            ok.then(|| v.to_ascii_lowercase())
        })
    }

    /// `load-balance`: ingress-nginx's `round_robin` and `ewma`, and `least_conn`, `random`.
    pub fn load_balance(&self) -> Result<Option<Balance>, InvalidAnnotation> {
        self.parse(
            "load-balance",
            "one of round_robin, least_conn, ewma, random",
            |v| match v.to_ascii_lowercase().as_str() {
                "round_robin" => Some(Balance::RoundRobin),
                "least_conn" => Some(Balance::LeastConn),
                "ewma" => Some(Balance::Ewma),
                "random" => Some(Balance::Random),
                _ => None,
            },
        )
    }

    /// `upstream-hash-by`: a key template of literal text and known variables.
    pub fn hash_key(&self) -> Result<Option<portico_model::Template>, InvalidAnnotation> {
        self.hash_key_named("upstream-hash-by")
    }

    /// A key template of literal text and known variables.
    pub fn hash_key_named(
        &self,
        name: &str,
    ) -> Result<Option<portico_model::Template>, InvalidAnnotation> {
        self.parse(name, "a key of text and $remote_addr, $host, $uri, $request_uri, $http_NAME, $cookie_NAME or $arg_NAME", |v| {
            portico_model::Template::parse(v).ok().filter(|_| !v.is_empty())
        })
    }

    /// A duration as ingress-nginx's timeout annotations give it: whole seconds (`"5"`),
    /// or with a unit (`"5s"`, `"500ms"`, `"2m"`). `allow_zero` for "no limit".
    pub fn duration_ms(
        &self,
        name: &str,
        allow_zero: bool,
    ) -> Result<Option<u64>, InvalidAnnotation> {
        let expected = if allow_zero {
            "a duration such as 5, 5s or 500ms"
        } else {
            "a positive duration such as 5, 5s or 500ms"
        };
        self.parse(name, expected, |v| {
            duration_ms(v).filter(|ms| allow_zero || *ms > 0)
        })
    }

    /// An nginx size: bytes, or with `k`, `m` or `g` (powers of 1024).
    pub fn size_bytes(&self, name: &str) -> Result<Option<u64>, InvalidAnnotation> {
        self.parse(name, "a size such as 1m, 512k or 1048576", |v| {
            let v = v.to_ascii_lowercase();
            let (number, scale) = match v.as_bytes().last()? {
                b'k' => (&v[..v.len() - 1], 1u64 << 10),
                b'm' => (&v[..v.len() - 1], 1 << 20),
                b'g' => (&v[..v.len() - 1], 1 << 30),
                _ => (v.as_str(), 1),
            };
            number.parse::<u64>().ok()?.checked_mul(scale)
        })
    }

    /// A whole number.
    pub fn count(&self, name: &str) -> Result<Option<u32>, InvalidAnnotation> {
        self.parse(name, "a whole number", |v| v.parse::<u32>().ok())
    }

    /// `proxy-next-upstream`: space-separated conditions, or `off`.
    pub fn next_upstream(&self) -> Result<Option<NextUpstream>, InvalidAnnotation> {
        self.parse(
            "proxy-next-upstream",
            "conditions among error, timeout, http_502, http_503, http_504, or off",
            |v| {
                let mut when = NextUpstream::default();
                for word in v.split_whitespace() {
                    match word {
                        "error" => when.error = true,
                        "timeout" => when.timeout = true,
                        "http_502" => when.statuses.push(502),
                        "http_503" => when.statuses.push(503),
                        "http_504" => when.statuses.push(504),
                        "off" => when.off = true,
                        _ => return None,
                    }
                }
                (!when.off || (!when.error && !when.timeout && when.statuses.is_empty()))
                    .then_some(when)
            },
        )
    }

    /// An HTTP token, as cookie and header names are; header names are lower-cased.
    pub fn token(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(
            name,
            "a cookie or header name (letters, digits and !#$%&'*+-.^_`|~)",
            |v| {
                let ok = !v.is_empty()
                    && v.len() <= 256
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                ok.then(|| v.to_string())
            },
        )
    }

    /// Text that can sit in a cookie attribute or header value: printable, no `;` or `,`.
    pub fn attribute(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "printable text without spaces, ';' or ','", |v| {
            let ok = !v.is_empty()
                && v.len() <= 1024
                && v.bytes()
                    .all(|b| b > b' ' && b != b';' && b != b',' && b != 0x7f);
            ok.then(|| v.to_string())
        })
    }

    /// An absolute URL path without spaces, `;` or `,`.
    pub fn abs_path(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "an absolute path such as /app", |v| {
            let ok = v.starts_with('/')
                && v.len() <= 1024
                && v.bytes()
                    .all(|b| b > b' ' && b != b';' && b != b',' && b != 0x7f);
            ok.then(|| v.to_string())
        })
    }

    /// A header value to compare with (`canary-by-header-value`).
    pub fn header_value(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "a non-empty header value", |v| {
            (!v.is_empty() && v.len() <= 1024 && v.bytes().all(|b| b >= b' ' && b != 0x7f))
                .then(|| v.to_string())
        })
    }

    /// A regular expression of bounded size (`canary-by-header-pattern`).
    pub fn regex(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "a regular expression that compiles", |v| {
            portico_model::pattern::value_regex(v)
                .ok()
                .map(|_| v.to_string())
        })
    }

    /// `affinity`: only `cookie` exists.
    pub fn affinity(&self) -> Result<Option<()>, InvalidAnnotation> {
        self.parse("affinity", "\"cookie\"", |v| {
            v.eq_ignore_ascii_case("cookie").then_some(())
        })
    }

    pub fn affinity_mode(&self) -> Result<Option<AffinityMode>, InvalidAnnotation> {
        self.parse(
            "affinity-mode",
            "\"balanced\" or \"persistent\"",
            |v| match v.to_ascii_lowercase().as_str() {
                "balanced" => Some(AffinityMode::Balanced),
                "persistent" => Some(AffinityMode::Persistent),
                _ => None,
            },
        )
    }

    /// `affinity-canary-behavior`: `sticky` (true) or `legacy` (false).
    pub fn canary_sticky(&self) -> Result<Option<bool>, InvalidAnnotation> {
        self.parse(
            "affinity-canary-behavior",
            "\"sticky\" or \"legacy\"",
            |v| match v.to_ascii_lowercase().as_str() {
                "sticky" => Some(true),
                "legacy" => Some(false),
                _ => None,
            },
        )
    }

    pub fn same_site(&self) -> Result<Option<SameSite>, InvalidAnnotation> {
        self.parse(
            "session-cookie-samesite",
            "one of None, Lax, Strict",
            |v| match v.to_ascii_lowercase().as_str() {
                "none" => Some(SameSite::None),
                "lax" => Some(SameSite::Lax),
                "strict" => Some(SameSite::Strict),
                _ => None,
            },
        )
    }

    /// A comma-separated list of CIDRs (or single addresses).
    pub fn cidr_list(
        &self,
        name: &str,
    ) -> Result<Option<Vec<portico_model::Cidr>>, InvalidAnnotation> {
        self.parse(
            name,
            "a comma-separated list of CIDRs such as 10.0.0.0/8,2001:db8::/32",
            |v| portico_model::cidr::parse_list(v).ok(),
        )
    }

    /// `rewrite-target`: a path, with `$1`..`$9` capture references allowed.
    pub fn rewrite_target(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "a path such as /$2", |v| {
            let ok = (v.starts_with('/') || v.starts_with('$'))
                && v.len() <= 1024
                && v.bytes().all(|b| b > b' ' && b != 0x7f);
            ok.then(|| v.to_string())
        })
    }

    /// A redirect target: an absolute http(s) URL or a path, with `$scheme`, `$host` and
    /// `$request_uri` allowed.
    pub fn redirect_target(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(
            name,
            "an absolute http(s) URL or a path ($scheme, $host and $request_uri allowed)",
            |v| {
                if v.bytes().any(|b| b <= b' ' || b == 0x7f) || v.len() > 2048 {
                    return None;
                }
                let sample = v
                    .replace("$scheme", "http")
                    .replace("$host", "example.com")
                    .replace("$request_uri", "/");
                if sample.contains('$') {
                    return None;
                }
                let absolute = sample.parse::<http::Uri>().ok().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                });
                let path = sample.starts_with('/') && !sample.starts_with("//");
                (absolute || path).then(|| v.to_string())
            },
        )
    }

    /// A redirect status, 300 to 308.
    pub fn redirect_code(&self, name: &str) -> Result<Option<u16>, InvalidAnnotation> {
        self.parse(name, "a redirect status from 300 to 308", |v| {
            v.parse::<u16>().ok().filter(|c| (300..=308).contains(c))
        })
    }

    /// An absolute `http` or `https` URL.
    pub fn url(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "an absolute http or https URL", |v| {
            is_absolute_url(v).then(|| v.to_string())
        })
    }

    /// An absolute `http` or `https` URL that may hold ingress-nginx's variables
    /// (`https://$host/oauth2/auth`), checked with a sample value in place of each.
    pub fn url_template(&self, name: &str) -> Result<Option<Template>, Problem> {
        let Some((key, value)) = self.get(name) else {
            return Ok(None);
        };
        let template = Template::parse(value.trim()).map_err(|why| {
            Problem::invalid(format!("annotation {key}: value {value:?} has {why}"))
        })?;
        let sample = template.render_with(|part| {
            match part {
                TemplatePart::Host | TemplatePart::HttpHost => "example.com",
                TemplatePart::Scheme => "http",
                TemplatePart::ServerPort => "80",
                TemplatePart::RemoteAddr => "192.0.2.1",
                _ => "x",
            }
            .to_string()
        });
        if !is_absolute_url(&sample) {
            return Err(InvalidAnnotation {
                key,
                value: value.to_string(),
                expected: "an absolute http or https URL",
            }
            .into());
        }
        Ok(Some(template))
    }

    /// A comma-separated list of header names, lower-cased.
    pub fn header_names(&self, name: &str) -> Result<Option<Vec<String>>, InvalidAnnotation> {
        self.parse(name, "a comma-separated list of header names", |v| {
            v.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .ok()
                        .map(|n| n.as_str().to_string())
                })
                .collect()
        })
    }

    /// `cors-allow-origin`: `*`, or a comma-separated list of `scheme://host[:port]`,
    /// where a host may start with `*.` for any subdomain.
    pub fn origin_list(&self, name: &str) -> Result<Option<Vec<String>>, InvalidAnnotation> {
        self.parse(
            name,
            "* or a comma-separated list of origins such as https://*.example.com",
            |v| {
                let origins: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect();
                let valid = !origins.is_empty()
                    && origins
                        .iter()
                        .all(|o| o == "*" || portico_model::cors_origin_is_valid(o));
                valid.then_some(origins)
            },
        )
    }

    /// A comma-separated list of tokens (methods or header names), as `A, B`.
    pub fn token_list(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "a comma-separated list of names", |v| {
            let names: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .collect();
            let token = |n: &&str| {
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*'))
            };
            (names.iter().all(token) && v.len() <= 4096).then(|| names.join(", "))
        })
    }

    /// An HTTP method such as `GET`.
    pub fn method(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "an HTTP method such as GET", |v| {
            (!v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_uppercase()))
                .then(|| v.to_string())
        })
    }

    /// `auth-cache-duration`: statuses, then a duration (`200 202 401 5m`).
    pub fn cache_duration(&self, name: &str) -> Result<Option<(Vec<u16>, u64)>, InvalidAnnotation> {
        self.parse(
            name,
            "status codes and a duration, such as 200 202 401 5m",
            |v| {
                let words: Vec<&str> = v.split_whitespace().collect();
                let (last, statuses) = words.split_last()?;
                let statuses: Option<Vec<u16>> = statuses
                    .iter()
                    .map(|s| s.parse::<u16>().ok().filter(|c| (100..600).contains(c)))
                    .collect();
                let ms = duration_ms(last).filter(|ms| *ms > 0)?;
                let statuses = statuses
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| vec![200, 202, 401]);
                Some((statuses, ms))
            },
        )
    }

    /// The realm of `WWW-Authenticate`: printable, no quotes or backslashes.
    pub fn realm(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "printable text without quotes or backslashes", |v| {
            (v.len() <= 256
                && v.bytes()
                    .all(|b| (b' '..0x7f).contains(&b) && b != b'"' && b != b'\\'))
            .then(|| v.to_string())
        })
    }

    /// `match-headers` and `match-query`: `name=value`, `name~=regex` or `name` alone (present).
    /// Header names are lower-cased.
    pub fn value_conditions(
        &self,
        name: &str,
        of_headers: bool,
    ) -> Result<Option<Vec<ValueCondition>>, InvalidAnnotation> {
        self.parse(
            name,
            "conditions such as x-env=beta, x-user~=^a, x-debug (one per line or comma-separated)",
            |v| {
                let conditions: Option<Vec<ValueCondition>> = entries(v)
                    .map(|entry| {
                        let (name, rule) = if let Some((n, re)) = entry.split_once("~=") {
                            portico_model::pattern::value_regex(re).ok()?;
                            (n, ValueRule::Matches(re.to_string()))
                        } else if let Some((n, value)) = entry.split_once('=') {
                            (n, ValueRule::Equals(value.trim().to_string()))
                        } else {
                            (entry, ValueRule::Present)
                        };
                        let name = name.trim();
                        let name = if of_headers {
                            http::HeaderName::from_bytes(name.as_bytes())
                                .ok()?
                                .as_str()
                                .to_string()
                        } else {
                            (!name.is_empty()
                                && name.bytes().all(|b| b > b' ' && b != 0x7f && b != b'&'))
                            .then(|| name.to_string())?
                        };
                        let printable = |t: &str| t.bytes().all(|b| b >= b' ' && b != 0x7f);
                        match &rule {
                            ValueRule::Equals(t) | ValueRule::Matches(t) if !printable(t) => None,
                            _ => Some(ValueCondition { name, rule }),
                        }
                    })
                    .collect();
                conditions.filter(|c| !c.is_empty() && v.len() <= 4096)
            },
        )
    }

    /// `match-methods`: a comma-separated list of methods, upper-cased.
    pub fn methods(&self, name: &str) -> Result<Option<Vec<String>>, InvalidAnnotation> {
        self.parse(
            name,
            "a comma-separated list of HTTP methods such as GET, POST",
            |v| {
                let methods: Option<Vec<String>> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(|m| {
                        (m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()))
                            .then(|| m.to_ascii_uppercase())
                    })
                    .collect();
                methods.filter(|m| !m.is_empty())
            },
        )
    }

    /// `request-headers-set` and the like: `Name: value`, one per line (or comma-separated
    /// on one line). Names are lower-cased.
    pub fn header_lines(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(String, String)>>, InvalidAnnotation> {
        self.parse(name, "headers as Name: value, one per line", |v| {
            let lines: Option<Vec<(String, String)>> = entries(v)
                .map(|line| {
                    let (n, value) = line.split_once(':')?;
                    let n = http::HeaderName::from_bytes(n.trim().as_bytes()).ok()?;
                    let value = value.trim();
                    http::HeaderValue::from_str(value).ok()?;
                    Some((n.as_str().to_string(), value.to_string()))
                })
                .collect();
            lines.filter(|l| !l.is_empty() && v.len() <= 8192)
        })
    }

    /// `custom-http-errors`: a comma-separated list of statuses from 400 to 599.
    pub fn error_statuses(&self, name: &str) -> Result<Option<Vec<u16>>, InvalidAnnotation> {
        self.parse(
            name,
            "a comma-separated list of statuses from 400 to 599",
            |v| {
                let statuses: Option<Vec<u16>> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u16>().ok().filter(|c| (400..600).contains(c)))
                    .collect();
                let mut statuses = statuses.filter(|s| !s.is_empty())?;
                statuses.sort_unstable();
                statuses.dedup();
                Some(statuses)
            },
        )
    }

    /// A Service of the Ingress's namespace, `name` or `name:port` (a number or a port name).
    pub fn service_ref(
        &self,
        name: &str,
    ) -> Result<Option<(String, Option<String>)>, InvalidAnnotation> {
        self.parse(
            name,
            "a Service of the Ingress's namespace, name or name:port",
            |v| {
                let (service, port) = match v.split_once(':') {
                    Some((s, p)) => (s, Some(p)),
                    None => (v, None),
                };
                let dns_label = |t: &str| {
                    !t.is_empty()
                        && t.len() <= 63
                        && t.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                };
                (dns_label(service) && port.is_none_or(dns_label))
                    .then(|| (service.to_string(), port.map(str::to_string)))
            },
        )
    }

    /// A Secret or ConfigMap reference, `namespace/name` or just `name` (the Ingress's namespace).
    pub fn object_ref(
        &self,
        name: &str,
        own_namespace: &str,
    ) -> Result<Option<(String, String)>, InvalidAnnotation> {
        self.parse(name, "a reference, namespace/name or name", |v| {
            let (ns, n) = v.split_once('/').unwrap_or((own_namespace, v));
            (!ns.is_empty() && !n.is_empty() && !n.contains('/'))
                .then(|| (ns.to_string(), n.to_string()))
        })
    }
}

/// The entries of a list annotation: its lines when it has several, else its
/// comma-separated parts; trimmed, empty ones skipped.
fn entries(v: &str) -> impl Iterator<Item = &str> {
    let separator = if v.trim().contains('\n') { '\n' } else { ',' };
    v.split(separator).map(str::trim).filter(|e| !e.is_empty())
}

/// Whole seconds (`"5"`), or with a unit (`"5s"`, `"500ms"`, `"2m"`), in milliseconds.
fn duration_ms(v: &str) -> Option<u64> {
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000)
    } else {
        (v, 1_000)
    };
    number.trim().parse::<u64>().ok()?.checked_mul(scale)
}

/// The conditions of `proxy-next-upstream`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NextUpstream {
    pub error: bool,
    pub timeout: bool,
    pub statuses: Vec<u16>,
    pub off: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn portico_prefix_wins_and_nginx_prefix_is_read() {
        let m = map(&[
            ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
            ("portico.io/ssl-redirect", "true"),
        ]);
        assert_eq!(
            Annotations::new(Some(&m)).bool("ssl-redirect"),
            Ok(Some(true))
        );
        let m = map(&[("nginx.ingress.kubernetes.io/backend-protocol", "grpcs")]);
        assert_eq!(
            Annotations::new(Some(&m)).backend_protocol(),
            Ok(Some(UpstreamProtocol::Grpcs))
        );
        assert_eq!(Annotations::new(None).bool("ssl-redirect"), Ok(None));
    }

    #[test]
    fn bad_values_name_the_key_and_value() {
        let m = map(&[
            ("portico.io/backend-protocol", "FTP"),
            ("portico.io/force-ssl-redirect", "yes"),
        ]);
        let a = Annotations::new(Some(&m));
        let err = a.backend_protocol().unwrap_err();
        assert_eq!(err.message(), "annotation portico.io/backend-protocol: value \"FTP\" is not one of HTTP, HTTPS, GRPC, GRPCS, H2C");
        assert!(a
            .bool("force-ssl-redirect")
            .unwrap_err()
            .message()
            .contains("\"yes\""));
        let m = map(&[
            ("portico.io/proxy-ssl-name", "bad name"),
            ("portico.io/proxy-ssl-secret", "other/ca"),
        ]);
        let a = Annotations::new(Some(&m));
        assert!(a.server_name("proxy-ssl-name").is_err());
        assert_eq!(
            a.object_ref("proxy-ssl-secret", "ns"),
            Ok(Some(("other".into(), "ca".into())))
        );
    }

    #[test]
    fn traffic_values_parse_as_ingress_nginx_writes_them() {
        let m = map(&[
            ("portico.io/proxy-read-timeout", "120"),
            ("portico.io/proxy-send-timeout", "500ms"),
            ("portico.io/proxy-connect-timeout", "0"),
            ("portico.io/proxy-body-size", "8m"),
            ("portico.io/client-body-size", "0"),
            ("portico.io/proxy-next-upstream", "error timeout http_503"),
            ("portico.io/load-balance", "EWMA"),
            ("portico.io/upstream-hash-by", "$remote_addr$http_x_user"),
        ]);
        let a = Annotations::new(Some(&m));
        assert_eq!(
            a.duration_ms("proxy-read-timeout", false),
            Ok(Some(120_000))
        );
        assert_eq!(a.duration_ms("proxy-send-timeout", false), Ok(Some(500)));
        assert!(
            a.duration_ms("proxy-connect-timeout", false).is_err(),
            "a zero connect timeout is refused"
        );
        assert_eq!(a.size_bytes("proxy-body-size"), Ok(Some(8 << 20)));
        assert_eq!(a.size_bytes("client-body-size"), Ok(Some(0)));
        let n = a.next_upstream().unwrap().unwrap();
        assert!(n.error && n.timeout && n.statuses == [503]);
        assert_eq!(a.load_balance(), Ok(Some(Balance::Ewma)));
        assert_eq!(
            a.hash_key(),
            Ok(Some(
                portico_model::Template::parse("$remote_addr$http_x_user").unwrap()
            ))
        );

        let m = map(&[
            (
                "portico.io/match-headers",
                "X-Env=beta, x-user~=^a[0-9]+$, x-debug",
            ),
            ("portico.io/match-query", "v=2\ntoken~=^(a,b)$"),
            ("portico.io/match-methods", "get, Post"),
            (
                "portico.io/response-headers-set",
                "X-Frame-Options: DENY\nCache-Control: no-store, private",
            ),
            ("portico.io/custom-http-errors", "503,404, 404"),
            ("portico.io/default-backend", "errors:http"),
        ]);
        let a = Annotations::new(Some(&m));
        let headers = a.value_conditions("match-headers", true).unwrap().unwrap();
        assert_eq!(
            headers[0],
            ValueCondition {
                name: "x-env".into(),
                rule: ValueRule::Equals("beta".into())
            }
        );
        assert_eq!(headers[1].rule, ValueRule::Matches("^a[0-9]+$".into()));
        assert_eq!(headers[2].rule, ValueRule::Present);
        let query = a.value_conditions("match-query", false).unwrap().unwrap();
        assert_eq!(
            query[1].rule,
            ValueRule::Matches("^(a,b)$".into()),
            "one condition per line keeps commas"
        );
        assert_eq!(
            a.methods("match-methods"),
            Ok(Some(vec!["GET".into(), "POST".into()]))
        );
        let set = a.header_lines("response-headers-set").unwrap().unwrap();
        assert_eq!(set[1], ("cache-control".into(), "no-store, private".into()));
        assert_eq!(
            a.error_statuses("custom-http-errors"),
            Ok(Some(vec![404, 503]))
        );
        assert_eq!(
            a.service_ref("default-backend"),
            Ok(Some(("errors".into(), Some("http".into()))))
        );
        let m = map(&[
            ("portico.io/match-headers", "bad header=1"),
            ("portico.io/match-query", "a~=(unclosed"),
            ("portico.io/response-headers-set", "no colon"),
            ("portico.io/custom-http-errors", "200"),
        ]);
        let a = Annotations::new(Some(&m));
        assert!(a.value_conditions("match-headers", true).is_err());
        assert!(a.value_conditions("match-query", false).is_err());
        assert!(a.header_lines("response-headers-set").is_err());
        assert!(a.error_statuses("custom-http-errors").is_err());

        let m = map(&[
            ("portico.io/proxy-next-upstream", "error http_418"),
            ("portico.io/upstream-hash-by", "$nope"),
        ]);
        let a = Annotations::new(Some(&m));
        assert!(a.next_upstream().is_err());
        assert!(a.hash_key().unwrap_err().message().contains("$nope"));
    }
}
