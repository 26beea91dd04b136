//! The snapshot: everything the proxy needs to route traffic, as plain typed data.
//!
//! The controller builds a [`Snapshot`] from cluster objects; the proxy validates it and
//! compiles it into lookup structures. Nothing here does I/O or knows about Kubernetes.

pub mod cidr;
mod delta;
mod hash_key;
mod host;
pub mod pattern;
mod validate;

pub use cidr::Cidr;
pub use delta::{DeltaError, SnapshotDelta};
pub use hash_key::{HashKey, KeyPart};
pub use host::{HostMatch, InvalidHost};
pub use validate::ValidationError;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
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

/// A certificate chain (leaf first) and its private key, both PEM, already checked by the
/// controller to parse and to belong together.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Unique within the snapshot: the Secret's `namespace/name`.
    pub name: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsHost {
    pub host: HostMatch,
    /// The [`Certificate::name`] presented for this host.
    pub certificate: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TlsPolicy {
    /// Presented for an SNI name no [`TlsHost`] covers, or no SNI at all; when `None` the
    /// proxy presents its own self-signed certificate.
    #[serde(default)]
    pub default_certificate: Option<String>,
    /// `Strict-Transport-Security` on HTTPS responses; `None` sends none.
    #[serde(default)]
    pub hsts: Option<Hsts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hsts {
    pub max_age: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    /// The header value, e.g. `max-age=31536000; includeSubDomains`.
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualHost {
    pub host: HostMatch,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The client certificate a handshake for this host asks for, and every request to
    /// the host needs: as in ingress-nginx, a property of the host, not of one path.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
}

impl VirtualHost {
    /// A host that asks for no client certificate.
    pub fn new(host: HostMatch, routes: Vec<Route>) -> Self {
        VirtualHost {
            host,
            routes,
            client_auth: None,
        }
    }
}

/// `auth-tls-*`: client certificates, checked against a CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAuth {
    /// The CA certificates (PEM) a client certificate must chain to (`auth-tls-secret`'s `ca.crt`).
    pub ca_pem: String,
    pub verify: ClientVerify,
    /// `auth-tls-verify-depth`: how many certificates may stand between the client's and a trusted CA's.
    pub depth: u32,
    /// `auth-tls-pass-certificate-to-upstream`: the certificate, URL-encoded PEM, in `ssl-client-cert`.
    pub pass_certificate: bool,
    /// `auth-tls-error-page`: a refused request is redirected here instead of answered 400.
    pub error_page: Option<String>,
    /// `auth-tls-match-cn`: a pattern the certificate's subject (`CN=...,O=...`) must match, else 403.
    #[serde(default)]
    pub match_subject: Option<String>,
}

/// `auth-tls-verify-client` (`off` is no [`ClientAuth`] at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientVerify {
    /// A verified certificate is required.
    On,
    /// A certificate is asked for; one that is sent must verify.
    Optional,
    /// A certificate is asked for; the upstream is told whether it verified.
    OptionalNoCa,
}

/// The policies a route seldom has are boxed: a route without them is a few pointers wide
/// rather than 1.6 KiB, which at 100 000 routes is the difference between 20 and 160 MiB
/// in each of the controller and the proxy. Boxes serialize as what they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub path: PathMatch,
    /// The [`Backend::name`] this route forwards to.
    pub backend: String,
    /// Which object the route came from, `namespace/name`, for metrics and diagnostics.
    #[serde(default)]
    pub source: String,
    /// Plain-HTTP requests are answered with a 308 to the same URL over HTTPS.
    #[serde(default)]
    pub redirect_to_https: bool,
    /// The largest request body forwarded; a larger one is answered 413. `None`: no limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Cookie affinity to an endpoint of [`Route::backend`].
    #[serde(default)]
    pub affinity: Option<Box<SessionAffinity>>,
    /// A second backend that takes part of this route's traffic.
    #[serde(default)]
    pub canary: Option<Box<Canary>>,
    /// Who may use the route.
    #[serde(default)]
    pub access: Option<Box<AccessPolicy>>,
    /// How the request is changed or answered on its way (rewrites and redirects).
    #[serde(default)]
    pub rewrite: Option<Box<Rewrite>>,
    /// How many requests a client may make.
    #[serde(default)]
    pub rate_limit: Option<Box<RateLimit>>,
    /// Which browser origins may read the route's answers.
    #[serde(default)]
    pub cors: Option<Box<Cors>>,
    /// What the request must carry besides its path (`match-headers`, `-methods`,
    /// `-query`). Routes with conditions are tried before the plain route of the same path.
    #[serde(default)]
    pub conditions: Option<Box<RequestConditions>>,
    /// Headers set, added and removed on the request and on the response.
    #[serde(default)]
    pub headers: Option<Box<HeaderEdits>>,
    /// `default-backend`: the [`Backend::name`] that takes the request when `backend`
    /// has no endpoint, and that answers for `error_pages`.
    #[serde(default)]
    pub fallback_backend: Option<String>,
    /// `custom-http-errors`: upstream statuses whose answer is replaced by the error backend's.
    #[serde(default)]
    pub error_pages: Option<Box<ErrorPages>>,
    /// `preserve-trailing-slash`: the HTTPS redirect keeps a trailing slash (by default it
    /// drops one, as ingress-nginx does).
    #[serde(default)]
    pub preserve_trailing_slash: bool,
}

/// Conditions on a request beyond its path; all must hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct RequestConditions {
    /// Header names are lower case.
    #[serde(default)]
    pub headers: Vec<ValueCondition>,
    /// Any one of these methods (upper case); empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Query parameters, compared after percent-decoding; the first occurrence counts.
    #[serde(default)]
    pub query: Vec<ValueCondition>,
}

impl RequestConditions {
    /// How many things the conditions test, for ordering: more specific routes first.
    pub fn weight(&self) -> usize {
        self.headers.len() + self.query.len() + usize::from(!self.methods.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValueCondition {
    pub name: String,
    pub rule: ValueRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ValueRule {
    /// The header or parameter is there, whatever its value.
    Present,
    /// Exactly this value.
    Equals(String),
    /// A value this regular expression matches (anywhere; anchor it with `^...$`).
    Matches(String),
}

/// Header changes, applied in the order remove, set, add.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeaderEdits {
    #[serde(default)]
    pub request: HeaderChanges,
    #[serde(default)]
    pub response: HeaderChanges,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeaderChanges {
    /// Lower-case names.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Replace any value of the name.
    #[serde(default)]
    pub set: Vec<(String, String)>,
    /// Appended beside any value already there.
    #[serde(default)]
    pub add: Vec<(String, String)>,
}

impl HeaderChanges {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// `custom-http-errors`: these upstream statuses are answered by `backend` instead, with
/// ingress-nginx's `X-Code`, `X-Original-URI`... headers on the request to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPages {
    pub statuses: Vec<u16>,
    /// The [`Backend::name`] that renders the pages; `None`: the snapshot's default backend.
    #[serde(default)]
    pub backend: Option<String>,
    /// For `X-Namespace`, `X-Ingress-Name`, `X-Service-Name` and `X-Service-Port`.
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub service_port: String,
}

/// `limit-rps`, `limit-rpm` and `limit-connections`, counted per client address by each
/// proxy replica. Every route of one Ingress with the same limits shares the counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests a second; up to `per_second * burst_multiplier` more are let through at once.
    pub per_second: Option<u32>,
    /// Requests a minute, with the same burst.
    pub per_minute: Option<u32>,
    pub burst_multiplier: u32,
    /// Requests in progress at once.
    pub concurrent: Option<u32>,
    /// Clients that are never limited (`limit-allowlist`).
    pub exempt: Vec<Cidr>,
}

/// `enable-cors` and the `cors-*` annotations, with ingress-nginx's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cors {
    /// `*`, or origins such as `https://app.example.com`, `https://*.example.com`
    /// (any subdomain) or `http://localhost:3000`.
    pub allow_origins: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

/// Whether `origin` is `scheme://host[:port]`, the host possibly starting with `*.` for
/// any subdomain.
pub fn cors_origin_is_valid(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((literal, after)) => (
            literal,
            after
                .strip_prefix(':')
                .or((!after.is_empty()).then_some("x")),
        ),
        None => match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let literal = rest.starts_with('[');
    let host = host.strip_prefix("*.").filter(|_| !literal).unwrap_or(host);
    let host_char =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-') || (literal && b == b':');
    let host_ok = !host.is_empty() && host.bytes().all(host_char);
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    scheme_ok && host_ok && port_ok
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            allow_origins: vec!["*".to_string()],
            allow_methods: "GET, PUT, POST, DELETE, PATCH, OPTIONS".to_string(),
            allow_headers: "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"
                .to_string(),
            expose_headers: String::new(),
            allow_credentials: true,
            max_age_secs: 1_728_000,
        }
    }
}

/// `rewrite-target`, `app-root`, the redirects, `upstream-vhost`, `x-forwarded-prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rewrite {
    /// The path sent upstream, with `$1`..`$9` (or `${1}`) from the route's regex captures;
    /// the request's query string follows.
    pub target: Option<String>,
    /// Requests for `/` are redirected (302) here.
    pub app_root: Option<String>,
    /// Every request is answered with this redirect instead of being proxied.
    pub redirect: Option<Redirect>,
    /// The `Host` sent upstream.
    pub upstream_host: Option<String>,
    /// `X-Forwarded-Prefix` sent upstream.
    pub forwarded_prefix: Option<String>,
}

/// A redirect answered by the proxy. The target may use `$scheme`, `$host` and `$request_uri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub code: u16,
    pub target: String,
}

/// Who may use a route: source addresses, then credentials. Every part fails closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AccessPolicy {
    /// A security annotation could not be used (this says which and why): every request
    /// is answered 503 rather than served without the control it asked for.
    pub refuse: Option<String>,
    /// When not empty, only clients in these ranges (`allowlist-source-range`); others get 403.
    pub allow_sources: Vec<Cidr>,
    /// Clients in these ranges get 403 (`denylist-source-range`).
    pub deny_sources: Vec<Cidr>,
    pub basic_auth: Option<BasicAuth>,
    pub external_auth: Option<ExternalAuth>,
    /// A valid bearer token is needed as well.
    #[serde(default)]
    pub jwt: Option<JwtAuth>,
    /// `satisfy: any`: basic auth or the external check admits (the default needs both).
    pub satisfy_any: bool,
}

/// `portico.io/auth-jwt-*`: a signed JWT in `Authorization: Bearer`, checked against a
/// JSON Web Key Set (public keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtAuth {
    /// The JWKS document, as JSON (`auth-jwt-jwks-secret`); empty when `jwks_url` is set.
    pub jwks: String,
    /// Where the proxy fetches the JWKS from (`auth-jwt-jwks-url`), instead of `jwks`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// A token's `aud` must name one of these, when any are set.
    pub audiences: Vec<String>,
    /// Of `RS256`, `ES256`, `EdDSA`; a token signed otherwise is refused.
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Claims copied onto the upstream request: (claim, header), the header lower case.
    /// A claim the token lacks removes the header, so that clients cannot set it.
    pub claims_to_headers: Vec<(String, String)>,
}

/// `auth-url`: each request is first asked of an auth service; 2xx admits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExternalAuth {
    /// An absolute `http` or `https` URL.
    pub url: String,
    pub method: String,
    /// Where a 401 sends browsers, with the original URL in `signin_redirect_param`.
    pub signin: Option<String>,
    pub signin_redirect_param: String,
    /// Copied from the auth service's answer onto the upstream request, replacing what
    /// the client sent (lower case).
    pub response_headers: Vec<String>,
    /// The auth service's `Set-Cookie` also on answers that are not 2xx or 3xx.
    pub always_set_cookie: bool,
    pub cache: Option<AuthCache>,
    pub timeout_ms: u64,
}

/// `auth-cache-key` and `auth-cache-duration`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuthCache {
    /// A [`HashKey`] template.
    pub key: String,
    pub statuses: Vec<u16>,
    pub duration_ms: u64,
}

/// `auth-type: basic`: users and their password hashes (bcrypt, apr1 or `{SHA}`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    pub realm: String,
    pub users: Vec<Credential>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub user: String,
    pub hash: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm)
            .field("users", &self.users)
            .finish()
    }
}

impl std::fmt::Debug for Credential {
    /// The user only: hashes stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// A route to `backend` with nothing else set: no limit, redirect, policy or canary.
    pub fn new(path: PathMatch, backend: impl Into<String>) -> Self {
        Route {
            path,
            backend: backend.into(),
            source: String::new(),
            redirect_to_https: false,
            max_body_bytes: None,
            affinity: None,
            canary: None,
            access: None,
            rewrite: None,
            rate_limit: None,
            cors: None,
            conditions: None,
            headers: None,
            fallback_backend: None,
            error_pages: None,
            preserve_trailing_slash: false,
        }
    }
}

/// `affinity: cookie`: a client keeps reaching one endpoint through a cookie that names
/// it (by a keyed hash, never by address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionAffinity {
    pub mode: AffinityMode,
    pub cookie: SessionCookie,
    /// After a failed attempt, the cookie is re-issued for the endpoint that answered.
    pub change_on_failure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum AffinityMode {
    /// The cookie holds a random key placed on a consistent-hash ring of the endpoints, so
    /// scaling up moves a fair share of sessions to the new endpoints.
    #[default]
    Balanced,
    /// The cookie names one endpoint; sessions move only when it goes away.
    Persistent,
}

/// The affinity cookie's name and attributes (`session-cookie-*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionCookie {
    pub name: String,
    pub path: String,
    pub domain: Option<String>,
    pub max_age_secs: Option<u64>,
    pub expires_secs: Option<u64>,
    pub same_site: Option<SameSite>,
    /// `Secure` even on plain HTTP (it is always set on HTTPS).
    pub secure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// Which requests of a route go to the canary backend, in ingress-nginx's order: a
/// client pinned to either side stays there, then the header, then the cookie, then the
/// weight decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The [`Backend::name`] that takes the canary share.
    pub backend: String,
    /// The canary Ingress, `namespace/name`.
    pub source: String,
    pub header: Option<CanaryHeader>,
    /// A cookie whose value `always` or `never` decides.
    pub cookie: Option<String>,
    /// Of `weight_total` requests that nothing else decided, this many go to the canary.
    pub weight: u32,
    pub weight_total: u32,
    /// Cookie affinity within the canary backend.
    pub affinity: Option<SessionAffinity>,
    /// `affinity-canary-behavior: sticky`: a client with a canary affinity cookie stays on the canary.
    pub sticky: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryHeader {
    /// Lower case.
    pub name: String,
    pub rule: HeaderRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderRule {
    /// `always` sends to the canary, `never` to the primary; other values do not decide.
    AlwaysNever,
    /// This exact value sends to the canary; others do not decide.
    Equals(String),
    /// A value this regular expression matches (anywhere) sends to the canary.
    Matches(String),
}

/// How a route matches the request path (the query string never takes part).
/// Externally tagged (`{"Prefix": "/api"}` in JSON), which binary formats can decode too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// Element-wise on `/`-separated segments; stored without a trailing slash (`/` stays `/`).
    Prefix(String),
    /// A regular expression (`use-regex`), anchored at the start, case-insensitive. Tried
    /// after Exact and before Prefix routes, longest pattern first, as ingress-nginx orders them.
    Regex(String),
}

impl PathMatch {
    /// Builds a prefix matcher, dropping a trailing slash the way Kubernetes ignores it.
    pub fn prefix(path: &str) -> Self {
        let trimmed = path.trim_end_matches('/');
        PathMatch::Prefix(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        })
    }

    pub fn path(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Regex(p) => p,
        }
    }

    /// `Exact`, `Prefix` or `Regex`, for people to read.
    pub fn kind(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) => "Exact",
            PathMatch::Prefix(_) => "Prefix",
            PathMatch::Regex(_) => "Regex",
        }
    }
}

/// A named set of endpoints, usually one port of one Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// Unique within the snapshot, e.g. `default/web:80`.
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How the proxy talks to the endpoints.
    #[serde(default)]
    pub upstream: Upstream,
    /// How the proxy picks among them and when it gives up on one.
    #[serde(default)]
    pub policy: TrafficPolicy,
}

/// How requests are spread over a backend's endpoints, and how failures are handled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrafficPolicy {
    pub balance: Balance,
    pub connect_timeout_ms: u64,
    /// Longest wait for the next read from the endpoint (the response head or body).
    pub read_timeout_ms: u64,
    /// Longest wait for the endpoint to take the next write of the request.
    pub send_timeout_ms: u64,
    pub retry: RetryPolicy,
    /// Passive health: an endpoint that fails (cannot be connected, or times out)
    /// `max_fails` times within `fail_timeout_ms` is skipped for `fail_timeout_ms`.
    /// `max_fails` 0 turns this off.
    pub max_fails: u32,
    pub fail_timeout_ms: u64,
    /// Active health checks, opt-in.
    pub health_check: Option<HealthCheck>,
}

/// Probing each endpoint with `GET path`: a 2xx or 3xx answer is a success. An endpoint
/// is taken out after `unhealthy_threshold` failures in a row and back in after
/// `healthy_threshold` successes in a row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for TrafficPolicy {
    /// ingress-nginx's defaults.
    fn default() -> Self {
        TrafficPolicy {
            balance: Balance::RoundRobin,
            connect_timeout_ms: 5_000,
            read_timeout_ms: 60_000,
            send_timeout_ms: 60_000,
            retry: RetryPolicy::default(),
            max_fails: 3,
            fail_timeout_ms: 10_000,
            health_check: None,
        }
    }
}

/// The `load-balance` algorithms, and consistent hashing (`upstream-hash-by`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastConn,
    /// Peak-EWMA of response time, times requests in flight; the lower of two random picks.
    Ewma,
    /// The less loaded of two random picks.
    Random,
    /// Ketama over a key built from the request by this template (ingress-nginx's
    /// variable syntax: `$remote_addr`, `$host`, `$http_x_user`, ...).
    ConsistentHash(String),
}

impl Balance {
    pub fn as_str(&self) -> &str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::Ewma => "ewma",
            Balance::Random => "random",
            Balance::ConsistentHash(_) => "hash",
        }
    }
}

/// When a failed attempt is tried again on another endpoint (`proxy-next-upstream`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Connection failures, and resets before any response byte arrived.
    pub on_error: bool,
    pub on_timeout: bool,
    /// Upstream answers with these statuses (502, 503, 504) are tried again.
    pub on_status: Vec<u16>,
    /// Attempts in all, the first included (`proxy-next-upstream-tries`); 1 never retries.
    pub tries: u32,
    /// No new attempt starts this long after the first (`proxy-next-upstream-timeout`); 0: no limit.
    pub timeout_ms: u64,
}

impl Default for RetryPolicy {
    /// ingress-nginx's `proxy-next-upstream: error timeout`, 3 tries.
    fn default() -> Self {
        RetryPolicy {
            on_error: true,
            on_timeout: true,
            on_status: Vec::new(),
            tries: 3,
            timeout_ms: 0,
        }
    }
}

/// The protocol spoken to a backend's endpoints, and how TLS to them is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Upstream {
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Verify the endpoint's certificate (TLS protocols only).
    #[serde(default)]
    pub verify: bool,
    /// Trusted CAs (PEM) for verification; `None` uses the system store.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// SNI and the name verified; `None` sends no SNI.
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 in clear text.
    #[default]
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// gRPC: HTTP/2 in clear text.
    Grpc,
    /// gRPC over TLS (HTTP/2 negotiated by ALPN).
    Grpcs,
    /// HTTP/2 in clear text with prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    pub fn uses_tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::Grpcs)
    }

    pub fn is_http2(self) -> bool {
        matches!(
            self,
            UpstreamProtocol::Grpc | UpstreamProtocol::Grpcs | UpstreamProtocol::H2c
        )
    }

    /// The `backend-protocol` annotation's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http => "HTTP",
            UpstreamProtocol::Https => "HTTPS",
            UpstreamProtocol::Grpc => "GRPC",
            UpstreamProtocol::Grpcs => "GRPCS",
            UpstreamProtocol::H2c => "H2C",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    pub ready: bool,
}

impl Snapshot {
    /// Checks the invariants the proxy relies on; the first violation is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::validate(self, None)
    }

    /// As [`Snapshot::validate`], for a snapshot made by applying a delta to `base`, which
    /// was validated: the hosts shared with `base` are not checked route by route again
    /// unless they name a backend that is gone.
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
            e.url = redact_userinfo(&e.url).into_owned();
            if let Some(signin) = &mut e.signin {
                *signin = redact_userinfo(signin).into_owned();
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
    #[test]
    fn a_route_without_policies_stays_small() {
        assert!(
            std::mem::size_of::<Route>() <= 256,
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
                    source: "ns/ing".into(),
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
                        },
                        change_on_failure: true,
                    })),
                    canary: Some(Box::new(Canary {
                        backend: "ns/svc:80".into(),
                        source: "ns/canary".into(),
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
                }],
                client_auth: Some(ClientAuth {
                    ca_pem: "CA".into(),
                    verify: ClientVerify::Optional,
                    depth: 2,
                    pass_certificate: true,
                    error_page: Some("https://example.com/denied".into()),
                    match_subject: Some("CN=client".into()),
                }),
            })],
            default_backend: None,
            backends: vec![Arc::new(Backend {
                name: "ns/svc:80".into(),
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
                },
                policy: TrafficPolicy {
                    balance: Balance::ConsistentHash("$remote_addr".into()),
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
