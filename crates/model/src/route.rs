//! Virtual hosts and their routes: how a request is matched (paths, conditions), and
//! what a route does with it beyond its backend (rewrites, redirects, affinity, canaries,
//! header edits, error pages).

use crate::{AccessPolicy, ClientAuth, Cors, HostMatch, RateLimit, Template};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualHost {
    pub host: HostMatch,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// The client certificate a handshake for this host asks for, and every request to
    /// the host needs: as in ingress-nginx, a property of the host, not of one path.
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// `ssl-ciphers`: the TLS 1.2 cipher list a handshake for this host offers, over the
    /// snapshot's [`crate::TlsPolicy::ciphers`].
    #[serde(default)]
    pub ciphers: Option<String>,
    /// Noted when the host is validated; not part of its value.
    #[serde(skip)]
    pub(crate) named: crate::validate::NamedBackends,
}

impl VirtualHost {
    /// A host that asks for no client certificate.
    pub fn new(host: HostMatch, routes: Vec<Route>) -> Self {
        VirtualHost {
            host,
            routes,
            client_auth: None,
            ciphers: None,
            named: Default::default(),
        }
    }
}

/// The object a route came from: an Ingress, or a Gateway API route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct SourceRef {
    pub namespace: String,
    pub name: String,
    /// Always written: the wire format (postcard) cannot skip a field.
    #[serde(default)]
    pub kind: SourceKind,
}

/// The kinds of object routes come from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub enum SourceKind {
    #[default]
    Ingress,
    HTTPRoute,
    GRPCRoute,
    /// A Gateway's listeners (their certificates).
    Gateway,
    TCPRoute,
    UDPRoute,
    TLSRoute,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Ingress => "Ingress",
            SourceKind::HTTPRoute => "HTTPRoute",
            SourceKind::GRPCRoute => "GRPCRoute",
            SourceKind::Gateway => "Gateway",
            SourceKind::TCPRoute => "TCPRoute",
            SourceKind::UDPRoute => "UDPRoute",
            SourceKind::TLSRoute => "TLSRoute",
        }
    }
}

impl SourceRef {
    /// An Ingress.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        SourceRef {
            namespace: namespace.into(),
            name: name.into(),
            kind: SourceKind::Ingress,
        }
    }

    /// `Ingress ns/name`, `HTTPRoute ns/name`: for messages.
    pub fn described(&self) -> String {
        format!("{} {self}", self.kind.as_str())
    }
}

impl std::fmt::Display for SourceRef {
    /// `namespace/name`, as `kubectl` names an object.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The policies a route seldom has are boxed: a route without them is a few pointers wide
/// rather than 1.6 KiB, which at 100 000 routes is the difference between 20 and 160 MiB
/// in each of the controller and the proxy. Boxes serialize as what they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub path: PathMatch,
    /// The [`Backend::name`] this route forwards to.
    pub backend: String,
    /// Which object the route came from, for metrics, rate-limit scopes and diagnostics.
    #[serde(default)]
    pub source: SourceRef,
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
    /// `enable-access-log: "false"`: the route's requests are not written to the access log.
    #[serde(default)]
    pub no_access_log: bool,
    /// Served over HTTPS only (a Gateway API route attached to HTTPS listeners alone):
    /// a plain-HTTP request finds no route and is answered 404.
    #[serde(default)]
    pub https_only: bool,
    /// `limit-rate`: how fast each answer's body is sent.
    #[serde(default)]
    pub response_rate: Option<Box<ResponseRate>>,
    /// `enable-opentelemetry` and its companions; `None` traces as the proxy is told to.
    #[serde(default)]
    pub tracing: Option<Box<RouteTracing>>,
    /// `mirror-target`: a copy of each request goes here too.
    #[serde(default)]
    pub mirror: Option<Box<Mirror>>,
    /// Gateway API weighted `backendRefs`: each request takes one share, by weight, in
    /// place of [`Route::backend`] (which names the first share's backend).
    #[serde(default)]
    pub split: Option<Box<BackendSplit>>,
}

/// Backends that share a route's requests by weight. A share whose reference did not
/// resolve is answered 500, as Gateway API asks, rather than sent anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSplit {
    pub shares: Vec<BackendShare>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendShare {
    /// A [`Backend::name`] (one without endpoints when `unresolved`).
    pub backend: String,
    pub weight: u32,
    /// The reference names no usable backend: its requests are answered 500.
    #[serde(default)]
    pub unresolved: bool,
}

impl BackendSplit {
    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.shares.iter().map(|s| u64::from(s.weight)).sum()
    }
}

/// `mirror-target`, `mirror-host`, `mirror-request-body`: a copy of each admitted request
/// goes to another URL, and its answer is read and dropped; the client's answer never
/// waits for it or depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mirror {
    /// An absolute `http` or `https` URL whose scheme and host part are literal text; its
    /// path and query may hold variables (`$request_uri`).
    pub target: Template,
    /// The copy's `Host`: `mirror-host`, else the target's host name; empty: the client's.
    pub host: String,
    /// The request body is copied too (up to a bound; a larger one is not mirrored).
    pub body: bool,
    /// Gateway API's `RequestMirror`: the copy goes over plain HTTP to an endpoint of
    /// this [`Backend::name`], and `target` is only its path and query (`$request_uri`).
    #[serde(default)]
    pub backend: Option<String>,
    /// Only this share of requests is copied; `None`: every one.
    #[serde(default)]
    pub fraction: Option<MirrorFraction>,
}

/// `numerator` requests in `denominator`, picked at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorFraction {
    pub numerator: u32,
    pub denominator: u32,
}

/// How a route's requests are traced when the proxy exports spans (`--otlp-endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTracing {
    /// `enable-opentelemetry: "false"` turns tracing off: no span, and a client's
    /// `traceparent` passes through untouched.
    pub enabled: bool,
    /// `opentelemetry-trust-incoming-span: "false"`: a client's `traceparent` is not
    /// continued; the request starts a trace of its own.
    pub trust_incoming: bool,
    /// `opentelemetry-operation-name`: the span's name, rendered per request.
    pub operation_name: Option<Template>,
}

/// `limit-rate` and `limit-rate-after`, as nginx's `limit_rate` applies them to each
/// answer: after the first `after_bytes`, at most `bytes_per_second` on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRate {
    pub bytes_per_second: u64,
    pub after_bytes: u64,
}

impl ResponseRate {
    /// How long to wait before sending more, once `sent` bytes (what is about to go
    /// included) would have gone `elapsed` after the body began.
    pub fn delay(&self, sent: u64, elapsed: std::time::Duration) -> Option<std::time::Duration> {
        let limited = sent.saturating_sub(self.after_bytes);
        if limited == 0 || self.bytes_per_second == 0 {
            return None;
        }
        let due = std::time::Duration::from_secs_f64(limited as f64 / self.bytes_per_second as f64);
        due.checked_sub(elapsed).filter(|d| !d.is_zero())
    }
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
    /// `proxy-redirect-from`/`-to`: the upstream's `Location` and `Refresh` rewritten.
    #[serde(default)]
    pub location: Option<PrefixSwap>,
    /// `proxy-cookie-domain`: the `Domain` of the upstream's cookies rewritten.
    #[serde(default)]
    pub cookie_domain: Option<PrefixSwap>,
    /// `proxy-cookie-path`: the `Path` of the upstream's cookies rewritten.
    #[serde(default)]
    pub cookie_path: Option<PrefixSwap>,
    /// `enable-rewrite-log`: each rewrite of `target` is logged (info, target
    /// `portico::rewrite`), as nginx's `rewrite_log` writes notices.
    #[serde(default)]
    pub log: bool,
    /// Gateway API `ReplacePrefixMatch`: the path sent upstream is the request's with the
    /// matched prefix `from` replaced by `to` (the query follows). Instead of `target`.
    #[serde(default)]
    pub replace_prefix: Option<PrefixSwap>,
}

/// Text that starts with `from` has that start replaced by `to` (for a cookie's domain,
/// the whole value must be `from`, compared without case, as nginx does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixSwap {
    pub from: String,
    pub to: String,
}

impl PrefixSwap {
    /// Both sides are non-empty and fit in a header and a cookie attribute: no spaces,
    /// control characters or `;`.
    pub fn is_usable(&self) -> bool {
        let fits = |v: &str| !v.is_empty() && v.bytes().all(|b| b > b' ' && b != 0x7f && b != b';');
        fits(&self.from) && fits(&self.to)
    }
}

/// A redirect answered by the proxy. The target may use `$scheme`, `$host` and `$request_uri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub code: u16,
    pub target: String,
    /// `relative-redirects`: a target that is a path stays one in `Location`; otherwise
    /// it is made absolute with the request's scheme and host, as nginx does.
    #[serde(default)]
    pub relative: bool,
    /// `use-port-in-redirects`: a target made absolute names the listener's port too
    /// (unless it is the scheme's default).
    #[serde(default)]
    pub with_port: bool,
    /// Gateway API's path modifiers: what `$request_uri` in `target` stands for (the
    /// request's query follows the new path).
    #[serde(default)]
    pub path: Option<RedirectPath>,
}

/// A redirect's new path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedirectPath {
    /// `ReplaceFullPath`.
    Full(String),
    /// `ReplacePrefixMatch`: the matched prefix `from` replaced by `to`.
    Prefix(PrefixSwap),
}

/// A path that starts with the path prefix `swap.from` (element-wise), with that prefix
/// replaced by `swap.to`, as Gateway API's `ReplacePrefixMatch` asks: `/foo` → `/bar`
/// makes `/foo/x` `/bar/x`; `/foo` → `/` makes it `/x`. A path outside the prefix is
/// returned as it is.
pub fn replace_path_prefix(path: &str, swap: &PrefixSwap) -> String {
    let from = swap.from.trim_end_matches('/');
    let rest = match path.strip_prefix(from) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => return path.to_string(),
    };
    let to = swap.to.trim_end_matches('/');
    let joined = format!("{to}{rest}");
    if joined.is_empty() {
        "/".to_string()
    } else if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

impl Route {
    /// Every backend the route names: its own, its canary's, its fallback, its error
    /// backend, its shares' and its mirror's.
    pub fn named_backends(&self) -> impl Iterator<Item = &str> {
        let canary = self.canary.as_deref().map(|c| c.backend.as_str());
        let error = self
            .error_pages
            .as_deref()
            .and_then(|e| e.backend.as_deref());
        let shares = self.split.iter().flat_map(|s| &s.shares);
        let mirror = self.mirror.as_deref().and_then(|m| m.backend.as_deref());
        std::iter::once(self.backend.as_str())
            .chain(canary)
            .chain(self.fallback_backend.as_deref())
            .chain(error)
            .chain(shares.map(|s| s.backend.as_str()))
            .chain(mirror)
    }

    /// A route to `backend` with nothing else set: no limit, redirect, policy or canary.
    pub fn new(path: PathMatch, backend: impl Into<String>) -> Self {
        Route {
            path,
            backend: backend.into(),
            source: SourceRef::default(),
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
            no_access_log: false,
            https_only: false,
            response_rate: None,
            tracing: None,
            mirror: None,
            split: None,
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
    /// `session-cookie-partitioned`: the `Partitioned` attribute (CHIPS).
    #[serde(default)]
    pub partitioned: bool,
    /// `session-cookie-conditional-samesite-none`: `SameSite=None` is left out for the
    /// browsers that would refuse the cookie because of it.
    #[serde(default)]
    pub same_site_none_if_compatible: bool,
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
    /// The canary Ingress.
    pub source: SourceRef,
    pub header: Option<CanaryHeader>,
    /// A cookie whose value `always` or `never` decides.
    pub cookie: Option<String>,
    /// Of `weight_total` requests that nothing else decided, this many go to the canary.
    pub weight: u32,
    pub weight_total: u32,
    /// Cookie affinity within the canary backend: the primary's settings; `None` for a
    /// legacy canary, which issues no cookie.
    pub affinity: Option<SessionAffinity>,
    /// `affinity-canary-behavior: sticky`: a client with an affinity cookie stays on the
    /// side that issued it. Legacy: the canary's rules decide every request.
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
    /// A `canary-by-header-pattern` that does not compile: a request with the header goes
    /// to the primary, whatever the cookie and weight say, as in ingress-nginx.
    Primary,
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

    /// The path as it is matched on a host where some Ingress uses `use-regex` or
    /// `rewrite-target`: ingress-nginx then makes every location of the host a
    /// case-insensitive regex anchored at the start, so an Exact or Prefix path becomes its
    /// literal text as a pattern (and matches whatever starts with it, in any case).
    pub fn on_regex_host(self) -> PathMatch {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => PathMatch::Regex(regex::escape(&p)),
            regex => regex,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PathMatch;
    use crate::pattern::path_regex;

    #[test]
    fn a_replaced_prefix_keeps_the_rest_of_the_path_and_one_slash() {
        use super::{replace_path_prefix, PrefixSwap};
        let swap = |from: &str, to: &str| PrefixSwap {
            from: from.into(),
            to: to.into(),
        };
        let cases = [
            ("/foo", "/bar", "/foo/x", "/bar/x"),
            ("/foo", "/bar", "/foo", "/bar"),
            ("/foo/", "/bar", "/foo/", "/bar/"),
            ("/foo", "/", "/foo/x", "/x"),
            ("/foo", "/", "/foo", "/"),
            ("/foo", "/bar/", "/foo/x", "/bar/x"),
            ("/", "/api", "/x/y", "/api/x/y"),
            ("/foo", "/bar", "/foobar", "/foobar"),
        ];
        for (from, to, path, want) in cases {
            assert_eq!(
                replace_path_prefix(path, &swap(from, to)),
                want,
                "{from} -> {to} on {path}"
            );
        }
    }

    #[test]
    fn a_response_rate_waits_only_past_its_free_bytes_and_its_pace() {
        use super::ResponseRate;
        use std::time::Duration;
        let rate = ResponseRate {
            bytes_per_second: 1000,
            after_bytes: 500,
        };
        assert_eq!(
            rate.delay(500, Duration::ZERO),
            None,
            "within the free bytes"
        );
        assert_eq!(
            rate.delay(1500, Duration::from_millis(200)),
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            rate.delay(1500, Duration::from_secs(2)),
            None,
            "behind pace"
        );
    }

    #[test]
    fn on_a_regex_host_exact_and_prefix_paths_match_their_literal_text_from_the_start() {
        let cases = [
            (PathMatch::prefix("/admin/"), "/admin", true),
            (PathMatch::prefix("/admin"), "/ADMIN/users", true),
            (PathMatch::prefix("/admin"), "/administrator", true),
            (PathMatch::Exact("/v1.0".into()), "/v1.0/x", true),
            (PathMatch::Exact("/v1.0".into()), "/v1x0", false),
            (PathMatch::Regex("/api/.*".into()), "/api/x", true),
            (PathMatch::prefix("/"), "/anything", true),
            (PathMatch::prefix("/admin"), "/x/admin", false),
        ];
        for (path, request, matches) in cases {
            let described = format!("{} {}", path.kind(), path.path());
            let PathMatch::Regex(pattern) = path.on_regex_host() else {
                panic!("{described} is not a pattern on a regex host");
            };
            let re = path_regex(&pattern).unwrap();
            assert_eq!(
                re.is_match(request),
                matches,
                "{described} against {request}"
            );
        }
    }
}
