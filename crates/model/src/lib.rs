//! The snapshot: everything the proxy needs to route traffic, as plain typed data.
//!
//! The controller builds a [`Snapshot`] from cluster objects; the proxy validates it and
//! compiles it into lookup structures. Nothing here does I/O or knows about Kubernetes.

pub mod cidr;
mod delta;
mod host;
pub mod pattern;
mod template;
mod validate;

mod backend;
mod global;
mod policy;
mod route;
mod stream;
mod tls;

pub use cidr::Cidr;
pub use delta::{DeltaError, SnapshotDelta};
pub use host::{HostMatch, InvalidHost};
pub use template::{escape_uri_component, Template, TemplatePart};
pub use validate::ValidationError;

pub use backend::*;
pub use global::*;
pub use policy::*;
pub use route::*;
pub use stream::*;
pub use tls::*;

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What [`Snapshot::redacted`] puts where private keys were.
pub const REDACTED: &str = "<redacted>";

/// `text` with the user information of every URL in it (`https://user:password@host`)
/// replaced by [`REDACTED`], for messages and views that quote URLs from annotations.
pub fn redact_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(i) => {
                out.push_str(REDACTED);
                out.push_str(&authority[i..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// A complete, self-contained routing configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Strictly increasing across the snapshots one controller publishes, restarts included.
    pub version: u64,
    /// At most one per distinct [`HostMatch`].
    #[serde(default)]
    /// Shared, so that a translation can reuse the hosts that did not change, and comparing
    /// two snapshots skips them by pointer.
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    /// Serves requests that match no virtual host, or no route of the matched host.
    #[serde(default)]
    pub default_backend: Option<String>,
    /// Every backend a route or the default backend names, by [`Backend::name`].
    #[serde(default)]
    pub backends: Vec<Arc<Backend>>,
    /// Certificates the HTTPS listener can present, by [`Certificate::name`].
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// Which certificate a TLS handshake gets, by its SNI name. At most one per host.
    #[serde(default)]
    pub tls_hosts: Vec<TlsHost>,
    /// Listener-wide TLS behaviour.
    #[serde(default)]
    pub tls: TlsPolicy,
    /// What applies to every request (the controller ConfigMap's global keys).
    #[serde(default)]
    pub global: GlobalPolicy,
    /// TCP and UDP services, and TLS passthrough.
    #[serde(default)]
    pub streams: Streams,
    /// What the controller could not apply as written, for the proxy's dashboard; routing
    /// never reads it.
    #[serde(default)]
    pub diagnostics: Vec<Diagnostic>,
}

/// One thing the controller reported about an object: which object, why, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// `Kind namespace/name`.
    pub object: String,
    pub reason: String,
    pub message: String,
}

impl Snapshot {
    /// Checks the invariants the proxy relies on; the first violation is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::validate(self, None)
    }

    /// As [`Snapshot::validate`], for a snapshot made by applying a delta to `base`, which
    /// was validated and not changed since: the hosts shared with `base` are not checked
    /// route by route again unless they name a backend that is gone (which validation noted
    /// on each host).
    pub fn validate_from(&self, base: &Snapshot) -> Result<(), ValidationError> {
        validate::validate(self, Some(base))
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name).map(|b| &**b)
    }

    pub fn certificate(&self, name: &str) -> Option<&Certificate> {
        self.certificates.iter().find(|c| c.name == name)
    }

    /// A copy fit to show people: private keys and password hashes replaced by a placeholder.
    pub fn redacted(&self) -> Snapshot {
        let mut copy = self.clone();
        for c in &mut copy.certificates {
            c.key_pem = REDACTED.to_string();
        }
        let auth = copy
            .virtual_hosts
            .iter_mut()
            .flat_map(|v| &mut Arc::make_mut(v).routes)
            .filter_map(|r| r.access.as_mut()?.basic_auth.as_mut());
        for credential in auth.flat_map(|a| &mut a.users) {
            credential.hash = REDACTED.to_string();
        }
        let jwt = copy
            .virtual_hosts
            .iter_mut()
            .flat_map(|v| &mut Arc::make_mut(v).routes)
            .filter_map(|r| r.access.as_mut()?.jwt.as_mut());
        for jwt in jwt {
            jwt.jwks = REDACTED.to_string();
            if let Some(url) = &mut jwt.jwks_url {
                *url = redact_userinfo(url).into_owned();
            }
        }
        let external = copy
            .virtual_hosts
            .iter_mut()
            .flat_map(|v| &mut Arc::make_mut(v).routes)
            .filter_map(|r| r.access.as_mut()?.external_auth.as_mut());
        for e in external {
            e.url = e.url.redacted();
            if let Some(signin) = &mut e.signin {
                *signin = signin.redacted();
            }
        }
        for d in &mut copy.diagnostics {
            d.message = redact_userinfo(&d.message).into_owned();
        }
        copy
    }

    /// Serialises for the wire: postcard, a compact binary serde format, several times
    /// faster to decode than JSON for snapshots of 100 000 endpoints.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("snapshot serialisation cannot fail")
    }

    /// Parses what [`Snapshot::to_bytes`] produced; does not validate.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// An indented JSON rendering for people.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("snapshot serialisation cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster has 100 000 routes and most set no policy: an inline `Option` of a large
    /// policy costs every one of them, in the controller and the proxy (session 9 found
    /// routes of 1.6 KiB and a proxy of 491 MiB at 10 000 Ingresses). Box new policies.
    /// (264 since session 19: the source's kind and the boxed Gateway API split.)
    #[test]
    fn a_route_without_policies_stays_small() {
        assert!(
            std::mem::size_of::<Route>() <= 264,
            "Route is {} bytes",
            std::mem::size_of::<Route>()
        );
    }

    #[test]
    fn user_information_in_urls_is_redacted_and_nothing_else() {
        assert_eq!(
            redact_userinfo(
                r#"value "https://svc:s3cret@auth.test:8443/check?u=a@b" and http://plain.test/x"#
            ),
            r#"value "https://<redacted>@auth.test:8443/check?u=a@b" and http://plain.test/x"#
        );
        assert_eq!(
            redact_userinfo("mail admin@example.com"),
            "mail admin@example.com"
        );
        assert!(matches!(
            redact_userinfo("https://auth.test/"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn prefix_drops_trailing_slashes_but_keeps_root() {
        assert_eq!(PathMatch::prefix("/foo/"), PathMatch::Prefix("/foo".into()));
        assert_eq!(PathMatch::prefix("/"), PathMatch::Prefix("/".into()));
        assert_eq!(PathMatch::prefix("/a/b"), PathMatch::Prefix("/a/b".into()));
    }

    #[test]
    fn round_trips_through_bytes_and_renders_hosts_readably() {
        let snap = Snapshot {
            version: 7,
            virtual_hosts: vec![Arc::new(VirtualHost {
                host: "*.foo.com".parse().unwrap(),
                routes: vec![Route {
                    path: PathMatch::Exact("/x".into()),
                    backend: "ns/svc:80".into(),
                    source: SourceRef::new("ns", "ing"),
                    redirect_to_https: true,
                    max_body_bytes: Some(1 << 20),
                    affinity: Some(Box::new(SessionAffinity {
                        mode: AffinityMode::Persistent,
                        cookie: SessionCookie {
                            name: "SID".into(),
                            path: "/x".into(),
                            domain: None,
                            max_age_secs: Some(60),
                            expires_secs: None,
                            same_site: Some(SameSite::Lax),
                            secure: false,
                            partitioned: false,
                            same_site_none_if_compatible: false,
                        },
                        change_on_failure: true,
                    })),
                    canary: Some(Box::new(Canary {
                        backend: "ns/svc:80".into(),
                        source: SourceRef::new("ns", "canary"),
                        header: Some(CanaryHeader {
                            name: "x-canary".into(),
                            rule: HeaderRule::Matches("^yes".into()),
                        }),
                        cookie: None,
                        weight: 10,
                        weight_total: 100,
                        affinity: None,
                        sticky: true,
                    })),
                    access: None,
                    rewrite: None,
                    rate_limit: Some(Box::new(RateLimit {
                        per_second: Some(5),
                        per_minute: None,
                        burst_multiplier: 5,
                        concurrent: Some(10),
                        exempt: cidr::parse_list("10.0.0.0/8").unwrap(),
                    })),
                    cors: Some(Box::new(Cors {
                        allow_origins: vec!["https://*.example.com".into()],
                        ..Cors::default()
                    })),
                    conditions: Some(Box::new(RequestConditions {
                        headers: vec![ValueCondition {
                            name: "x-env".into(),
                            rule: ValueRule::Matches("^beta$".into()),
                        }],
                        methods: vec!["GET".into()],
                        query: vec![ValueCondition {
                            name: "v".into(),
                            rule: ValueRule::Present,
                        }],
                    })),
                    headers: Some(Box::new(HeaderEdits {
                        request: HeaderChanges {
                            remove: vec!["x-debug".into()],
                            ..Default::default()
                        },
                        response: HeaderChanges {
                            set: vec![("x-frame-options".into(), "DENY".into())],
                            ..Default::default()
                        },
                    })),
                    fallback_backend: Some("ns/svc:80".into()),
                    error_pages: Some(Box::new(ErrorPages {
                        statuses: vec![404, 503],
                        backend: Some("ns/svc:80".into()),
                        namespace: "ns".into(),
                        ingress: "web".into(),
                        service: "svc".into(),
                        service_port: "80".into(),
                    })),
                    preserve_trailing_slash: true,
                    no_access_log: false,
                    https_only: true,
                    response_rate: None,
                    tracing: Some(Box::new(RouteTracing {
                        enabled: true,
                        trust_incoming: false,
                        operation_name: Some(
                            Template::parse("HTTP $request_method svc $uri").unwrap(),
                        ),
                    })),
                    mirror: Some(Box::new(Mirror {
                        target: Template::parse("https://shadow.test$request_uri").unwrap(),
                        host: "shadow.test".into(),
                        body: false,
                        backend: None,
                        fraction: Some(MirrorFraction {
                            numerator: 1,
                            denominator: 4,
                        }),
                    })),
                    split: Some(Box::new(BackendSplit {
                        shares: vec![
                            BackendShare {
                                backend: "ns/svc:80".into(),
                                weight: 3,
                                unresolved: false,
                            },
                            BackendShare {
                                backend: "ns/svc:80".into(),
                                weight: 1,
                                unresolved: true,
                            },
                        ],
                    })),
                }],
                client_auth: Some(ClientAuth {
                    ca_pem: "CA".into(),
                    verify: ClientVerify::Optional,
                    depth: 2,
                    pass_certificate: true,
                    error_page: Some("https://example.com/denied".into()),
                    match_subject: Some("CN=client".into()),
                }),
                ciphers: Some("ECDHE-ECDSA-AES256-GCM-SHA384".into()),
                named: Default::default(),
            })],
            default_backend: None,
            backends: vec![Arc::new(Backend {
                name: "ns/svc:80".into(),
                service: Default::default(),
                endpoints: vec![Endpoint {
                    address: "::1".parse().unwrap(),
                    port: 8080,
                    ready: true,
                }],
                upstream: Upstream {
                    protocol: UpstreamProtocol::Grpcs,
                    verify: true,
                    ca_pem: None,
                    server_name: Some("svc.ns.svc".into()),
                    http10: false,
                    close_connections: true,
                },
                policy: TrafficPolicy {
                    balance: Balance::ConsistentHash(Template::parse("$remote_addr").unwrap()),
                    ..Default::default()
                },
            })],
            certificates: vec![Certificate {
                name: "ns/tls".into(),
                chain_pem: "CERT".into(),
                key_pem: "KEY".into(),
            }],
            tls_hosts: vec![TlsHost {
                host: "*.foo.com".parse().unwrap(),
                certificate: "ns/tls".into(),
            }],
            tls: TlsPolicy {
                default_certificate: None,
                hsts: Some(Hsts {
                    max_age: 10,
                    include_subdomains: true,
                    preload: false,
                }),
                versions: TlsVersions {
                    min: TlsVersion::Tls13,
                    max: TlsVersion::Tls13,
                },
                ciphers: Some("ECDHE-RSA-AES128-GCM-SHA256".into()),
            },
            global: GlobalPolicy {
                https_redirect_code: 301,
                generate_request_id: false,
                block: Blocklist {
                    cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                    user_agents: vec![TextMatch::parse("~*bot").unwrap()],
                    referers: vec![TextMatch::Exact("spam.test".into())],
                },
                compression: Compression {
                    gzip: Some(Encoding {
                        level: 5,
                        min_length: 256,
                        types: vec!["text/html".into()],
                    }),
                    brotli: None,
                },
                upstream_idle_ms: 5_000,
                backend_server_header: true,
            },
            streams: Streams {
                services: vec![StreamService {
                    port: 6379,
                    protocol: StreamProtocol::Tcp,
                    backend: "ns/svc:80".into(),
                    service: ServiceRef {
                        namespace: "ns".into(),
                        name: "redis".into(),
                        port: "6379".into(),
                    },
                    accept_proxy_protocol: true,
                    send_proxy_protocol: false,
                    timeouts: StreamTimeouts {
                        idle_ms: 1_000,
                        next_upstream_ms: 0,
                    },
                    udp_responses: 0,
                }],
                passthrough: vec![PassthroughHost {
                    host: "*.foo.com".parse().unwrap(),
                    backend: "ns/svc:80".into(),
                }],
            },
            diagnostics: vec![Diagnostic {
                object: "Ingress ns/bad".into(),
                reason: "ServiceNotFound".into(),
                message: "service ns/ghost does not exist".into(),
            }],
        };
        assert_eq!(Snapshot::from_bytes(&snap.to_bytes()).unwrap(), snap);
        assert!(snap.to_json_pretty().contains(r#""host": "*.foo.com""#));
        let from_json: Snapshot = serde_json::from_str(&snap.to_json_pretty()).unwrap();
        assert_eq!(from_json, snap);
        assert!(
            Snapshot::from_bytes(&snap.to_bytes()[..10]).is_err(),
            "truncated input is an error, not a panic"
        );
    }

    #[test]
    fn redaction_hides_private_keys_only() {
        let snap = Snapshot {
            version: 1,
            certificates: vec![Certificate {
                name: "ns/tls".into(),
                chain_pem: "CERT".into(),
                key_pem: "SECRET KEY".into(),
            }],
            ..Snapshot::default()
        };
        let shown = snap.redacted().to_json_pretty();
        assert!(
            !shown.contains("SECRET KEY") && shown.contains("CERT") && shown.contains(REDACTED),
            "{shown}"
        );
        assert!(
            !format!("{:?}", snap.certificates[0]).contains("SECRET"),
            "Debug must not print the key either"
        );
        assert_eq!(
            Hsts {
                max_age: 5,
                include_subdomains: true,
                preload: true
            }
            .header_value(),
            "max-age=5; includeSubDomains; preload"
        );
    }

    #[test]
    fn cors_origins_are_scheme_host_and_port() {
        for good in [
            "https://app.example.com",
            "https://*.example.com",
            "http://localhost:3000",
            "http://[::1]:8080",
            "http://10.0.0.1",
        ] {
            assert!(cors_origin_is_valid(good), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://",
            "https://a.example.com/path",
            "https://a b",
            "https://*",
            "https://x:port",
            "http://[::1",
            "*",
        ] {
            assert!(!cors_origin_is_valid(bad), "{bad}");
        }
    }
}
