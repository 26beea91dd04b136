//! The invariants a snapshot must hold before a proxy may run it.

use crate::{Canary, PathMatch, Route, SessionAffinity, Snapshot, TrafficPolicy, VirtualHost};
use std::sync::Arc;

/// Seeded per process: snapshot contents come from outside the proxy, so the hash must
/// not be predictable, but it need not be SipHash either.
type HashSet<T> = std::collections::HashSet<T, foldhash::quality::RandomState>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("snapshot version must be greater than 0")]
    ZeroVersion,
    #[error("virtual host {host:?} appears more than once")]
    DuplicateHost { host: String },
    #[error("backend {name:?} appears more than once")]
    DuplicateBackend { name: String },
    #[error("backend name must not be empty")]
    EmptyBackendName,
    #[error("host {host:?}: path {path:?} must start with '/'")]
    RelativePath { host: String, path: String },
    #[error("host {host:?}: prefix {path:?} must not end with '/'")]
    UnnormalisedPrefix { host: String, path: String },
    #[error("host {host:?}: route {path:?} appears more than once")]
    DuplicateRoute { host: String, path: String },
    #[error("host {host:?}: route {path:?} names unknown backend {backend:?}")]
    UnknownRouteBackend {
        host: String,
        path: String,
        backend: String,
    },
    #[error("host {host:?}: route {path:?}: {what}")]
    InvalidRoute {
        host: String,
        path: String,
        what: String,
    },
    #[error("default backend names unknown backend {backend:?}")]
    UnknownDefaultBackend { backend: String },
    #[error("backend {backend:?}: endpoint {address} has port 0")]
    ZeroPort {
        backend: String,
        address: std::net::IpAddr,
    },
    #[error("backend {backend:?}: {what}")]
    InvalidPolicy { backend: String, what: String },
    #[error("certificate {name:?} appears more than once")]
    DuplicateCertificate { name: String },
    #[error("certificate {name:?} has an empty chain or key")]
    EmptyCertificate { name: String },
    #[error("TLS host {host:?} appears more than once")]
    DuplicateTlsHost { host: String },
    #[error("TLS host {host:?} names unknown certificate {certificate:?}")]
    UnknownCertificate { host: String, certificate: String },
    #[error("host {host:?}: client certificates: {what}")]
    InvalidClientAuth { host: String, what: String },
    #[error("global policy: {what}")]
    InvalidGlobalPolicy { what: String },
    #[error("TLS policy: {what}")]
    InvalidTlsPolicy { what: String },
    #[error("{what}")]
    InvalidStream { what: String },
}

/// Ports and hosts unique and sorted, backends known, timeouts usable.
fn validate_streams(s: &crate::Streams, backends: &HashSet<&str>) -> Result<(), String> {
    for pair in s.services.windows(2) {
        if (pair[0].port, pair[0].protocol) >= (pair[1].port, pair[1].protocol) {
            return Err(format!(
                "stream port {}/{} is not sorted or appears more than once",
                pair[1].port,
                pair[1].protocol.as_str()
            ));
        }
    }
    for svc in &s.services {
        let name = format!("stream port {}/{}", svc.port, svc.protocol.as_str());
        if svc.port == 0 {
            return Err(format!("{name}: port 0"));
        }
        if !backends.contains(svc.backend.as_str()) {
            return Err(format!("{name} names unknown backend {:?}", svc.backend));
        }
        if svc.timeouts.idle_ms == 0 {
            return Err(format!("{name}: the idle timeout must be greater than 0"));
        }
        if svc.protocol == crate::StreamProtocol::Udp
            && (svc.accept_proxy_protocol || svc.send_proxy_protocol)
        {
            return Err(format!("{name}: the PROXY protocol is for TCP only"));
        }
    }
    for pair in s.passthrough.windows(2) {
        if pair[0].host.to_string() >= pair[1].host.to_string() {
            return Err(format!(
                "passthrough host {:?} is not sorted or appears more than once",
                pair[1].host.to_string()
            ));
        }
    }
    if let Some(p) = s
        .passthrough
        .iter()
        .find(|p| !backends.contains(p.backend.as_str()))
    {
        return Err(format!(
            "passthrough host {:?} names unknown backend {:?}",
            p.host.to_string(),
            p.backend
        ));
    }
    Ok(())
}

/// A cipher list OpenSSL could read: the proxy applies it per handshake and cannot refuse
/// it there, so what reaches it is at least one printable word.
fn validate_ciphers(c: &str) -> Result<(), String> {
    if c.is_empty() || c.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "cipher list {c:?} must be non-empty and printable without spaces"
        ));
    }
    Ok(())
}

fn validate_policy(p: &TrafficPolicy) -> Result<(), String> {
    if matches!(p.balance, crate::Balance::HashSubset { size: 0, .. }) {
        return Err("hash subset size 0".into());
    }
    if p.connect_timeout_ms == 0 || p.read_timeout_ms == 0 || p.send_timeout_ms == 0 {
        return Err("timeouts must be greater than 0".into());
    }
    if p.retry.tries == 0 {
        return Err("retry tries must be at least 1".into());
    }
    if let Some(s) = p.retry.on_status.iter().find(|s| !(500..=599).contains(*s)) {
        return Err(format!(
            "retry on status {s}: only 5xx statuses are retried"
        ));
    }
    if let Some(h) = &p.health_check {
        if !h.path.starts_with('/') || h.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!(
                "health check path {:?} must be an absolute path without spaces",
                h.path
            ));
        }
        if h.interval_ms == 0
            || h.timeout_ms == 0
            || h.healthy_threshold == 0
            || h.unhealthy_threshold == 0
        {
            return Err(
                "health check interval, timeout and thresholds must be greater than 0".into(),
            );
        }
    }
    Ok(())
}

/// An HTTP token (RFC 9110), as cookie and header names must be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_global(g: &crate::GlobalPolicy) -> Result<(), String> {
    if !crate::REDIRECT_CODES.contains(&g.https_redirect_code) {
        return Err(format!(
            "HTTPS redirect status {} is not one of {:?}",
            g.https_redirect_code,
            crate::REDIRECT_CODES
        ));
    }
    let encodings = [
        (&g.compression.gzip, 1..=9),
        (&g.compression.brotli, 0..=11),
    ];
    for (encoding, levels) in encodings {
        if let Some(e) = encoding.as_ref().filter(|e| !levels.contains(&e.level)) {
            return Err(format!(
                "compression level {} is not in {levels:?}",
                e.level
            ));
        }
    }
    let entries = g.block.user_agents.iter().chain(&g.block.referers);
    for m in entries {
        m.check()
            .map_err(|e| format!("block pattern {m:?} does not compile: {e}"))?;
    }
    Ok(())
}

fn validate_client_auth(c: &crate::ClientAuth) -> Result<(), String> {
    if !c.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("the CA bundle holds no PEM certificate".into());
    }
    if let Some(page) = c
        .error_page
        .as_deref()
        .filter(|p| p.is_empty() || p.bytes().any(|b| b <= b' ' || b == 0x7f))
    {
        return Err(format!("error page {page:?} is empty or holds spaces"));
    }
    Ok(())
}

fn validate_affinity(a: &SessionAffinity) -> Result<(), String> {
    let c = &a.cookie;
    if !is_token(&c.name) {
        return Err(format!("affinity cookie name {:?} is not a token", c.name));
    }
    let attribute_safe = |v: &str| {
        v.bytes()
            .all(|b| b > b' ' && b != b';' && b != b',' && b != 0x7f)
    };
    if !c.path.starts_with('/') || !attribute_safe(&c.path) {
        return Err(format!(
            "affinity cookie path {:?} must be an absolute path without ';', ',' or spaces",
            c.path
        ));
    }
    if let Some(d) = c
        .domain
        .as_deref()
        .filter(|d| d.is_empty() || !attribute_safe(d))
    {
        return Err(format!("affinity cookie domain {d:?} is not a domain"));
    }
    Ok(())
}

fn validate_rewrite(r: &crate::Rewrite) -> Result<(), String> {
    let header_safe = |v: &str| !v.is_empty() && v.bytes().all(|b| b > b' ' && b != 0x7f);
    if let Some(t) = r.target.as_deref().filter(|t| !header_safe(t)) {
        return Err(format!("rewrite target {t:?} is empty or holds spaces"));
    }
    if let Some(p) = r
        .app_root
        .as_deref()
        .filter(|p| !p.starts_with('/') || !header_safe(p))
    {
        return Err(format!("app root {p:?} is not an absolute path"));
    }
    if let Some(redirect) = &r.redirect {
        if !(300..=308).contains(&redirect.code) || !header_safe(&redirect.target) {
            return Err(format!(
                "redirect {} to {:?} is not a redirect",
                redirect.code, redirect.target
            ));
        }
    }
    for swap in [&r.location, &r.cookie_domain, &r.cookie_path]
        .into_iter()
        .flatten()
    {
        if !swap.is_usable() {
            return Err(format!(
                "answer rewrite {:?} to {:?} is empty or holds spaces, control characters or ';'",
                swap.from, swap.to
            ));
        }
    }
    for v in [&r.upstream_host, &r.forwarded_prefix]
        .into_iter()
        .flatten()
    {
        if !header_safe(v) {
            return Err(format!(
                "header value {v:?} holds spaces or control characters"
            ));
        }
    }
    Ok(())
}

fn validate_rate_limit(l: &crate::RateLimit) -> Result<(), String> {
    if [l.per_second, l.per_minute, l.concurrent].contains(&Some(0)) || l.burst_multiplier == 0 {
        return Err(format!(
            "rate limit {l:?} has a zero rate, count or burst multiplier"
        ));
    }
    Ok(())
}

fn validate_cors(c: &crate::Cors) -> Result<(), String> {
    let header_safe = |v: &str| v.bytes().all(|b| b >= b' ' && b != 0x7f);
    for origin in &c.allow_origins {
        if origin != "*" && !crate::cors_origin_is_valid(origin) {
            return Err(format!(
                "CORS origin {origin:?} is not * or scheme://host[:port]"
            ));
        }
    }
    for v in [&c.allow_methods, &c.allow_headers, &c.expose_headers] {
        if !header_safe(v) {
            return Err(format!("CORS header value {v:?} holds control characters"));
        }
    }
    Ok(())
}

fn is_header_name(s: &str) -> bool {
    is_token(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

fn validate_conditions(c: &crate::RequestConditions) -> Result<(), String> {
    if let Some(h) = c.headers.iter().find(|h| !is_header_name(&h.name)) {
        return Err(format!(
            "condition on header {:?}: not a lower-case header name",
            h.name
        ));
    }
    if let Some(m) = c
        .methods
        .iter()
        .find(|m| !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()))
    {
        return Err(format!(
            "condition on method {m:?}: not an upper-case method"
        ));
    }
    if let Some(q) = c.query.iter().find(|q| q.name.is_empty()) {
        return Err(format!(
            "condition on query parameter {:?}: empty name",
            q.name
        ));
    }
    Ok(())
}

fn validate_header_edits(e: &crate::HeaderEdits) -> Result<(), String> {
    for changes in [&e.request, &e.response] {
        let named = changes
            .remove
            .iter()
            .chain(changes.set.iter().chain(&changes.add).map(|(n, _)| n));
        if let Some(n) = named.into_iter().find(|n| !is_header_name(n)) {
            return Err(format!(
                "header edit: {n:?} is not a lower-case header name"
            ));
        }
        if let Some((n, _)) = changes
            .set
            .iter()
            .chain(&changes.add)
            .find(|(_, v)| !is_header_value(v))
        {
            return Err(format!(
                "header edit: the value of {n:?} has a control character"
            ));
        }
    }
    Ok(())
}

fn validate_canary(c: &Canary, backends: &HashSet<&str>) -> Result<(), String> {
    if !backends.contains(c.backend.as_str()) {
        return Err(format!("canary names unknown backend {:?}", c.backend));
    }
    if c.weight_total == 0 || c.weight > c.weight_total {
        return Err(format!(
            "canary weight {} out of {} is not a share",
            c.weight, c.weight_total
        ));
    }
    if let Some(h) = &c.header {
        if !is_token(&h.name) || h.name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "canary header name {:?} is not a lower-case token",
                h.name
            ));
        }
    }
    if let Some(name) = c.cookie.as_deref().filter(|n| !is_token(n)) {
        return Err(format!("canary cookie name {name:?} is not a token"));
    }
    c.affinity.as_ref().map_or(Ok(()), validate_affinity)
}

/// `base`, when given, is a validated snapshot `s` was made from by a delta: the hosts `s`
/// shares with it (the same `Arc`) passed every check that concerns only their routes, so
/// theirs are checked again only if they name a backend that is gone.
/// Whether an item of a snapshot is one of its validated base's, by address: most often at
/// the same position (a delta keeps the order), else found in a set built on first need.
struct Shared<'b, T> {
    base: &'b [Arc<T>],
    set: std::cell::OnceCell<HashSet<*const T>>,
}

impl<'b, T> Shared<'b, T> {
    fn new(base: Option<&'b [Arc<T>]>) -> Self {
        Shared {
            base: base.unwrap_or_default(),
            set: std::cell::OnceCell::new(),
        }
    }

    /// Whether `item`, at position `i` of the new snapshot's list, is one of the base's.
    fn contains(&self, i: usize, item: &Arc<T>) -> bool {
        if self.base.is_empty() {
            return false;
        }
        if self.base.get(i).is_some_and(|b| Arc::ptr_eq(b, item)) {
            return true;
        }
        self.set
            .get_or_init(|| self.base.iter().map(Arc::as_ptr).collect())
            .contains(&Arc::as_ptr(item))
    }
}

/// The backends a host's routes name, sorted and each once: noted when the host is
/// validated and kept with it, so that validating a later snapshot that shares the host
/// (the same `Arc`) can tell whether it names a backend that went without visiting its
/// routes, of which a shared host may have thousands. Snapshots are replaced, never edited
/// after validation, so the note stays true; it is not part of the host's value: not
/// compared, sent, or cloned with it.
#[derive(Default)]
pub(crate) struct NamedBackends(std::sync::OnceLock<Box<[Box<str>]>>);

impl NamedBackends {
    fn of(vh: &VirtualHost) -> &[Box<str>] {
        vh.named.0.get_or_init(|| {
            let mut names: Vec<&str> = vh.routes.iter().flat_map(Route::named_backends).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(Box::from).collect()
        })
    }
}

impl Clone for NamedBackends {
    fn clone(&self) -> Self {
        NamedBackends::default()
    }
}

impl PartialEq for NamedBackends {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for NamedBackends {}

impl std::fmt::Debug for NamedBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NamedBackends")
    }
}

pub(crate) fn validate(s: &Snapshot, base: Option<&Snapshot>) -> Result<(), ValidationError> {
    use ValidationError::*;
    if s.version == 0 {
        return Err(ZeroVersion);
    }
    let mut backends = HashSet::with_capacity_and_hasher(s.backends.len(), Default::default());
    let base_backends = Shared::new(base.map(|b| &b.backends[..]));
    for (i, b) in s.backends.iter().enumerate() {
        if b.name.is_empty() {
            return Err(EmptyBackendName);
        }
        if !backends.insert(b.name.as_str()) {
            return Err(DuplicateBackend {
                name: b.name.clone(),
            });
        }
        // A backend of the validated base was checked then.
        if base_backends.contains(i, b) {
            continue;
        }
        if let Some(e) = b.endpoints.iter().find(|e| e.port == 0) {
            return Err(ZeroPort {
                backend: b.name.clone(),
                address: e.address,
            });
        }
        validate_policy(&b.policy).map_err(|what| InvalidPolicy {
            backend: b.name.clone(),
            what,
        })?;
    }
    if let Some(d) = &s.default_backend {
        if !backends.contains(d.as_str()) {
            return Err(UnknownDefaultBackend { backend: d.clone() });
        }
    }
    validate_global(&s.global).map_err(|what| InvalidGlobalPolicy { what })?;
    validate_streams(&s.streams, &backends).map_err(|what| InvalidStream { what })?;
    let mut certificates = HashSet::default();
    for c in &s.certificates {
        if !certificates.insert(c.name.as_str()) {
            return Err(DuplicateCertificate {
                name: c.name.clone(),
            });
        }
        if c.chain_pem.trim().is_empty() || c.key_pem.trim().is_empty() {
            return Err(EmptyCertificate {
                name: c.name.clone(),
            });
        }
    }
    let mut tls_hosts = HashSet::default();
    for t in &s.tls_hosts {
        if !tls_hosts.insert(&t.host) {
            return Err(DuplicateTlsHost {
                host: t.host.to_string(),
            });
        }
        if !certificates.contains(t.certificate.as_str()) {
            return Err(UnknownCertificate {
                host: t.host.to_string(),
                certificate: t.certificate.clone(),
            });
        }
    }
    if let Some(d) = &s.tls.default_certificate {
        if !certificates.contains(d.as_str()) {
            return Err(UnknownCertificate {
                host: "(default)".into(),
                certificate: d.clone(),
            });
        }
    }
    if s.tls.versions.min > s.tls.versions.max {
        return Err(InvalidTlsPolicy {
            what: format!(
                "lowest version {:?} is above the highest {:?}",
                s.tls.versions.min, s.tls.versions.max
            ),
        });
    }
    if let Some(c) = &s.tls.ciphers {
        validate_ciphers(c).map_err(|what| InvalidTlsPolicy { what })?;
    }
    let shared = Shared::new(base.map(|b| &b.virtual_hosts[..]));
    // Usually none or one.
    let gone: Vec<&str> = base
        .map(|b| {
            b.backends
                .iter()
                .map(|b| b.name.as_str())
                .filter(|n| !backends.contains(n))
                .collect()
        })
        .unwrap_or_default();
    let names_a_gone_backend = |vh: &VirtualHost| {
        !gone.is_empty()
            && NamedBackends::of(vh)
                .iter()
                .any(|name| gone.contains(&&**name))
    };
    let mut hosts = HashSet::with_capacity_and_hasher(s.virtual_hosts.len(), Default::default());
    let mut paths = HashSet::default();
    for (i, vh) in s.virtual_hosts.iter().enumerate() {
        if !hosts.insert(&vh.host) {
            return Err(DuplicateHost {
                host: vh.host.to_string(),
            });
        }
        if shared.contains(i, vh) && !names_a_gone_backend(vh) {
            continue;
        }
        if let Some(c) = &vh.client_auth {
            validate_client_auth(c).map_err(|what| InvalidClientAuth {
                host: vh.host.to_string(),
                what,
            })?;
        }
        if let Some(c) = &vh.ciphers {
            validate_ciphers(c).map_err(|what| InvalidTlsPolicy {
                what: format!("host {:?}: {what}", vh.host.to_string()),
            })?;
        }
        paths.clear();
        for r in &vh.routes {
            // Formatted only when something is wrong.
            let host = || vh.host.to_string();
            let path = r.path.path();
            if !path.starts_with('/') {
                return Err(RelativePath {
                    host: host(),
                    path: path.to_string(),
                });
            }
            if matches!(r.path, PathMatch::Prefix(_)) && path.len() > 1 && path.ends_with('/') {
                return Err(UnnormalisedPrefix {
                    host: host(),
                    path: path.to_string(),
                });
            }
            if !paths.insert((&r.path, &r.conditions)) {
                return Err(DuplicateRoute {
                    host: host(),
                    path: path.to_string(),
                });
            }
            if !backends.contains(r.backend.as_str()) {
                return Err(UnknownRouteBackend {
                    host: host(),
                    path: path.to_string(),
                    backend: r.backend.clone(),
                });
            }
            let checked = r.affinity.as_deref().map_or(Ok(()), validate_affinity);
            let checked =
                checked.and_then(|()| r.rewrite.as_deref().map_or(Ok(()), validate_rewrite));
            let checked = checked.and_then(|()| {
                r.canary
                    .as_deref()
                    .map_or(Ok(()), |c| validate_canary(c, &backends))
            });
            let checked =
                checked.and_then(|()| r.rate_limit.as_deref().map_or(Ok(()), validate_rate_limit));
            let checked = checked.and_then(|()| r.cors.as_deref().map_or(Ok(()), validate_cors));
            let checked =
                checked.and_then(|()| r.conditions.as_deref().map_or(Ok(()), validate_conditions));
            let checked =
                checked.and_then(|()| r.headers.as_deref().map_or(Ok(()), validate_header_edits));
            let checked = checked.and_then(|()| match r.split.as_deref() {
                Some(split) if split.shares.is_empty() || split.total() == 0 => {
                    Err("a backend split without a share of weight".into())
                }
                Some(split) if split.shares[0].backend != r.backend => Err(format!(
                    "the route's backend {:?} is not its split's first {:?}",
                    r.backend, split.shares[0].backend
                )),
                _ => Ok(()),
            });
            let checked =
                checked.and_then(|()| match r.mirror.as_deref().and_then(|m| m.fraction) {
                    Some(f) if f.denominator == 0 || f.numerator > f.denominator => Err(format!(
                        "a mirror fraction of {}/{} is not between 0 and 1",
                        f.numerator, f.denominator
                    )),
                    _ => Ok(()),
                });
            let checked = checked.and_then(|()| {
                let named = r
                    .fallback_backend
                    .iter()
                    .chain(r.error_pages.as_deref().and_then(|e| e.backend.as_ref()))
                    .chain(r.split.iter().flat_map(|s| &s.shares).map(|s| &s.backend))
                    .chain(r.mirror.as_deref().and_then(|m| m.backend.as_ref()));
                match named.into_iter().find(|b| !backends.contains(b.as_str())) {
                    Some(b) => Err(format!(
                        "unknown fallback, error, share or mirror backend {b:?}"
                    )),
                    None => Ok(()),
                }
            });
            checked.map_err(|what| InvalidRoute {
                host: host(),
                path: path.to_string(),
                what,
            })?;
        }
        // Noted now, while its routes are in the cache, for the snapshots that share it.
        NamedBackends::of(vh);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Certificate, Endpoint, HostMatch, Route, TlsHost, VirtualHost};
    use std::sync::Arc;

    fn good() -> Snapshot {
        Snapshot {
            version: 1,
            virtual_hosts: vec![Arc::new(VirtualHost {
                host: HostMatch::Exact("a.com".into()),
                routes: vec![Route::new(PathMatch::prefix("/"), "b")],
                client_auth: None,
                ciphers: None,
                named: Default::default(),
            })],
            default_backend: Some("b".into()),
            backends: vec![Arc::new(Backend {
                name: "b".into(),
                service: Default::default(),
                endpoints: vec![Endpoint {
                    address: [127, 0, 0, 1].into(),
                    port: 80,
                    ready: true,
                }],
                upstream: Default::default(),
                policy: Default::default(),
            })],
            certificates: vec![Certificate {
                name: "ns/c".into(),
                chain_pem: "C".into(),
                key_pem: "K".into(),
            }],
            tls_hosts: vec![TlsHost {
                host: HostMatch::Exact("a.com".into()),
                certificate: "ns/c".into(),
            }],
            tls: Default::default(),
            global: Default::default(),
            streams: Default::default(),
            diagnostics: Vec::new(),
        }
    }

    #[test]
    fn refuses_a_global_policy_the_proxy_cannot_apply() {
        let mut s = good();
        s.global.https_redirect_code = 200;
        assert!(matches!(
            s.validate(),
            Err(ValidationError::InvalidGlobalPolicy { .. })
        ));
        let mut s = good();
        s.global.block.referers = vec![crate::TextMatch::Pattern {
            regex: "(".into(),
            ignore_case: true,
        }];
        assert!(matches!(
            s.validate(),
            Err(ValidationError::InvalidGlobalPolicy { .. })
        ));
    }

    #[test]
    fn refuses_tls_versions_out_of_order_and_cipher_lists_with_spaces() {
        let mut s = good();
        s.tls.versions.min = crate::TlsVersion::Tls13;
        s.tls.versions.max = crate::TlsVersion::Tls12;
        assert!(matches!(
            s.validate(),
            Err(ValidationError::InvalidTlsPolicy { .. })
        ));
        let mut s = good();
        s.tls.ciphers = Some("HIGH !aNULL".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::InvalidTlsPolicy { .. })
        ));
        let mut s = good();
        Arc::make_mut(&mut s.virtual_hosts[0]).ciphers = Some(String::new());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("host"), "{err}");
    }

    #[test]
    fn refuses_streams_on_unknown_backends_repeated_ports_or_proxy_headers_over_udp() {
        use crate::{StreamProtocol, StreamService, StreamTimeouts};
        let service = |port, protocol| StreamService {
            port,
            protocol,
            backend: "b".into(),
            service: Default::default(),
            accept_proxy_protocol: false,
            send_proxy_protocol: false,
            timeouts: StreamTimeouts::default(),
            udp_responses: 1,
        };
        let mut s = good();
        s.streams.services = vec![
            service(53, StreamProtocol::Tcp),
            service(53, StreamProtocol::Udp),
        ];
        assert_eq!(s.validate(), Ok(()), "one port, two protocols");
        let cases: [fn(&mut Vec<StreamService>); 4] = [
            |v| v[1].protocol = StreamProtocol::Tcp,
            |v| v[0].backend = "nope".into(),
            |v| v[1].send_proxy_protocol = true,
            |v| v[0].timeouts.idle_ms = 0,
        ];
        for case in cases {
            let mut bad = s.clone();
            case(&mut bad.streams.services);
            assert!(matches!(
                bad.validate(),
                Err(ValidationError::InvalidStream { .. })
            ));
        }
        let mut bad = s.clone();
        bad.streams.passthrough = vec![crate::PassthroughHost {
            host: "argo.test".parse().unwrap(),
            backend: "nope".into(),
        }];
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("argo.test") && err.contains("nope"), "{err}");
    }

    #[test]
    fn accepts_a_consistent_snapshot() {
        assert_eq!(good().validate(), Ok(()));
    }

    #[test]
    fn after_a_delta_shared_hosts_are_checked_again_only_when_a_backend_they_name_went() {
        let base = good();
        let backend = |name: &str| {
            Arc::new(Backend {
                name: name.into(),
                service: Default::default(),
                ..(*base.backends[0]).clone()
            })
        };
        let mut next = base.clone();
        next.version = 2;
        next.backends.push(backend("c"));
        next.virtual_hosts.push(Arc::new(VirtualHost::new(
            "b.com".parse().unwrap(),
            vec![Route::new(PathMatch::prefix("/"), "c")],
        )));
        assert_eq!(next.validate_from(&base), Ok(()));

        // A changed host is checked route by route.
        let mut bad = next.clone();
        Arc::make_mut(&mut bad.virtual_hosts[1]).routes[0].backend = "missing".into();
        assert!(matches!(
            bad.validate_from(&base),
            Err(ValidationError::UnknownRouteBackend { .. })
        ));

        // A changed backend is checked; the base's are taken as checked, wherever they moved.
        let mut bad_port = next.clone();
        Arc::make_mut(&mut bad_port.backends[0]).endpoints[0].port = 0;
        assert!(matches!(
            bad_port.validate_from(&base),
            Err(ValidationError::ZeroPort { .. })
        ));
        let mut moved = next.clone();
        moved.backends.reverse();
        assert_eq!(moved.validate_from(&base), Ok(()));

        // A backend nobody names any more may go without a.com being checked again.
        let mut next_without_c = next.clone();
        next_without_c.version = 3;
        next_without_c.virtual_hosts.pop();
        next_without_c.backends.pop();
        assert_eq!(next_without_c.validate_from(&next), Ok(()));

        // A shared host is checked again when a backend it names is gone: a.com still names "b".
        let mut gone = next.clone();
        gone.backends.retain(|b| b.name != "b");
        gone.default_backend = None;
        let err = gone.validate_from(&base).unwrap_err();
        assert_eq!(
            err,
            ValidationError::UnknownRouteBackend {
                host: "a.com".into(),
                path: "/".into(),
                backend: "b".into()
            }
        );
    }

    #[test]
    fn a_host_copied_and_edited_is_noted_for_the_backends_it_names_now() {
        let mut base = good();
        let mut c = (*base.backends[0]).clone();
        c.name = "c".into();
        base.backends.push(Arc::new(c));
        assert_eq!(base.validate(), Ok(()));
        // A copy of a validated host, re-pointed from "b" to "c", in a snapshot that keeps both.
        let mut copy = (*base.virtual_hosts[0]).clone();
        copy.routes[0].backend = "c".into();
        let mut next = base.clone();
        next.version = 2;
        next.virtual_hosts = vec![Arc::new(copy)];
        assert_eq!(next.validate_from(&base), Ok(()));
        // "c" goes while the copy, shared, still names it: what was noted for the original
        // ("b") must not have come along with the copy.
        let mut third = next.clone();
        third.version = 3;
        third.backends.retain(|b| b.name != "c");
        assert!(matches!(
            third.validate_from(&next),
            Err(ValidationError::UnknownRouteBackend { backend, .. }) if backend == "c"
        ));
    }

    #[test]
    fn names_what_is_inconsistent() {
        let mut s = good();
        s.version = 0;
        assert_eq!(s.validate(), Err(ValidationError::ZeroVersion));

        let mut s = good();
        Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].backend = "missing".into();
        let err = s.validate().unwrap_err();
        assert!(
            err.to_string().contains("unknown backend \"missing\""),
            "{err}"
        );

        let mut s = good();
        s.virtual_hosts.push(s.virtual_hosts[0].clone());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::DuplicateHost { .. })
        ));

        let mut s = good();
        let route = s.virtual_hosts[0].routes[0].clone();
        Arc::make_mut(&mut s.virtual_hosts[0]).routes.push(route);
        assert!(matches!(
            s.validate(),
            Err(ValidationError::DuplicateRoute { .. })
        ));

        let mut s = good();
        Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].path = PathMatch::Prefix("/a/".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::UnnormalisedPrefix { .. })
        ));

        let mut s = good();
        Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].path = PathMatch::Exact("a".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::RelativePath { .. })
        ));

        let mut s = good();
        s.default_backend = Some("nope".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::UnknownDefaultBackend { .. })
        ));

        let mut s = good();
        Arc::make_mut(&mut s.backends[0]).endpoints[0].port = 0;
        assert!(matches!(
            s.validate(),
            Err(ValidationError::ZeroPort { .. })
        ));

        let mut s = good();
        s.tls_hosts[0].certificate = "ns/other".into();
        let err = s.validate().unwrap_err();
        assert!(
            err.to_string().contains("a.com") && err.to_string().contains("ns/other"),
            "{err}"
        );

        let mut s = good();
        s.tls.default_certificate = Some("ns/gone".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::UnknownCertificate { .. })
        ));

        let mut s = good();
        s.certificates[0].key_pem = " ".into();
        assert!(matches!(
            s.validate(),
            Err(ValidationError::EmptyCertificate { .. })
        ));

        let mut s = good();
        s.tls_hosts.push(s.tls_hosts[0].clone());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::DuplicateTlsHost { .. })
        ));
        let mirror = |backend: &str, numerator, denominator| crate::Mirror {
            target: crate::Template::parse("$request_uri").unwrap(),
            host: String::new(),
            body: true,
            backend: Some(backend.into()),
            fraction: Some(crate::MirrorFraction {
                numerator,
                denominator,
            }),
        };
        let with_mirror = |m: crate::Mirror| {
            let mut s = good();
            let backend = s.backends[0].name.clone();
            let m = crate::Mirror {
                backend: m.backend.map(|b| if b.is_empty() { backend } else { b }),
                ..m
            };
            Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].mirror = Some(Box::new(m));
            s.validate()
        };
        assert_eq!(with_mirror(mirror("", 1, 4)), Ok(()));
        for (m, why) in [
            (
                mirror("ns/shadow:80", 1, 4),
                "mirror backend \"ns/shadow:80\"",
            ),
            (mirror("", 5, 4), "mirror fraction of 5/4"),
            (mirror("", 0, 0), "mirror fraction of 0/0"),
        ] {
            let err = with_mirror(m).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn canaries_and_affinity_cookies_must_be_usable() {
        use crate::{AffinityMode, Canary, SessionAffinity, SessionCookie};
        let canary = Canary {
            backend: "b".into(),
            source: crate::SourceRef::new("ns", "c"),
            header: None,
            cookie: Some("canary".into()),
            weight: 10,
            weight_total: 100,
            affinity: None,
            sticky: true,
        };
        let mut s = good();
        Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].canary = Some(Box::new(canary.clone()));
        assert_eq!(s.validate(), Ok(()));

        let mut s = good();
        Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].canary = Some(Box::new(Canary {
            backend: "gone".into(),
            ..canary.clone()
        }));
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("canary names unknown backend \"gone\""));

        let mut s = good();
        Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].canary = Some(Box::new(Canary {
            weight: 101,
            ..canary.clone()
        }));
        assert!(matches!(
            s.validate(),
            Err(ValidationError::InvalidRoute { .. })
        ));

        let cookie = |name: &str, path: &str| SessionCookie {
            name: name.into(),
            path: path.into(),
            domain: None,
            max_age_secs: None,
            expires_secs: None,
            same_site: None,
            secure: false,
            partitioned: false,
            same_site_none_if_compatible: false,
        };
        let affinity = |c| {
            Some(SessionAffinity {
                mode: AffinityMode::Balanced,
                cookie: c,
                change_on_failure: false,
            })
        };
        for (name, path, ok) in [
            ("SID", "/", true),
            ("S ID", "/", false),
            ("SID", "/a; Domain=evil", false),
            ("", "/", false),
        ] {
            let mut s = good();
            Arc::make_mut(&mut s.virtual_hosts[0]).routes[0].affinity =
                affinity(cookie(name, path)).map(Box::new);
            assert_eq!(s.validate().is_ok(), ok, "{name:?} {path:?}");
        }
    }
}
