//! Who may use a route and how much: source ranges, basic, external and JWT auth, rate
//! limits and CORS. Every part fails closed (`docs/design/0005-fail-closed-policies.md`).

use crate::{Cidr, Template};
use serde::{Deserialize, Serialize};

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
    /// Whose reading of these settings the proxy follows.
    #[serde(default)]
    pub rules: CorsRules,
}

/// ingress-nginx's `enable-cors` and Gateway API's CORS filter read the same settings a
/// little differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CorsRules {
    /// `*.x` origins cover one label; `*` answers `*`; `Access-Control-Expose-Headers`
    /// only on answers that are not preflights.
    #[default]
    IngressNginx,
    /// `*.x` origins cover any number of labels; with credentials allowed, `*` in
    /// origins, methods or headers echoes what the request asked for (browsers refuse a
    /// literal `*` then); `Access-Control-Expose-Headers` on every allowed answer.
    GatewayApi,
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
            rules: CorsRules::IngressNginx,
        }
    }
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
    /// An absolute `http` or `https` URL, rendered per request when it has variables.
    pub url: Template,
    pub method: String,
    /// Where a 401 sends browsers; the controller has already added the parameter that
    /// carries the original URL when the annotation had none.
    pub signin: Option<Template>,
    /// The `X-Auth-Request-Redirect` the auth service is sent (`auth-request-redirect`);
    /// the original path and query without it.
    pub request_redirect: Option<Template>,
    /// Copied from the auth service's answer onto the upstream request, replacing what
    /// the client sent (lower case).
    pub response_headers: Vec<String>,
    /// The auth service's `Set-Cookie` also on answers that are not 2xx or 3xx.
    pub always_set_cookie: bool,
    pub cache: Option<AuthCache>,
    pub timeout_ms: u64,
    /// How long an idle connection to the auth service is kept for the next request
    /// (`auth-keepalive-timeout`); `None` closes each after its answer (`auth-keepalive: 0`).
    #[serde(default)]
    pub keepalive_ms: Option<u64>,
    /// `auth-proxy-set-headers`: set on the auth request (lower-case names), rendered per
    /// request.
    #[serde(default)]
    pub request_headers: Vec<(String, Template)>,
}

/// `auth-cache-key` and `auth-cache-duration`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AuthCache {
    /// A [`Template`] template.
    pub key: Template,
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
