//! Which annotations Portico reads, against ingress-nginx's full list: what a migrating
//! user is told about the ones it ignores, and the migration document, rendered from the
//! same table so that the two cannot drift.

use crate::annotations::{NGINX_PREFIX, PORTICO_PREFIX};
use std::collections::BTreeMap;

/// What Portico does with an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Read, with ingress-nginx's meaning.
    Same,
    /// Read, with a difference (which).
    Different(&'static str),
    /// Not read yet (with a note, or empty).
    NotYet(&'static str),
    /// Never read (why).
    Never(&'static str),
}

/// Why the upstream TLS annotations are not read yet.
const PER_BACKEND_TLS: &str = "Pingora's upstream TLS connector applies one TLS configuration (versions, ciphers, chain depth) to every backend; a per-backend setting needs a change to the vendored connector";
/// Why the listener TLS annotations are not read yet.
/// Why FastCGI annotations are never read (docs/design/0018).
const FASTCGI: &str = "Portico speaks HTTP/1.1, HTTP/2 and gRPC to upstreams, not FastCGI: serve PHP-FPM through an HTTP server beside it (nginx, Caddy, FrankenPHP)";

/// Every annotation of ingress-nginx (`shared/reference/ingress-nginx-annotations.tsv`).
pub const INGRESS_NGINX: &[(&str, Status)] = &[
    ("server-alias", Status::Same),
    ("allowlist-source-range", Status::Same),
    ("whitelist-source-range", Status::Same),
    ("backend-protocol", Status::Different("`HTTP`, `HTTPS`, `GRPC`, `GRPCS` and `H2C`; `FCGI` never (see `fastcgi-index`), `AUTO_HTTP` not yet; another value is reported and HTTP is used")),
    ("auth-realm", Status::Same),
    ("auth-secret", Status::Same),
    ("auth-secret-type", Status::Same),
    ("auth-type", Status::Different("`basic` only; `digest` makes the routes answer 503")),
    ("canary", Status::Same),
    ("canary-by-cookie", Status::Same),
    ("canary-by-header", Status::Same),
    ("canary-by-header-pattern", Status::Same),
    ("canary-by-header-value", Status::Same),
    ("canary-weight", Status::Same),
    ("canary-weight-total", Status::Same),
    ("auth-tls-error-page", Status::Same),
    ("auth-tls-match-cn", Status::Same),
    ("auth-tls-pass-certificate-to-upstream", Status::Same),
    (
        "auth-tls-secret",
        Status::Different(
            "a property of the host, as in ingress-nginx; a newer Ingress asking the same host for other client certificates has its routes for it left out. Requests whose Host is not their connection's SNI get 421",
        ),
    ),
    ("auth-tls-verify-client", Status::Different("without `auth-tls-secret` the routes answer 503 (ingress-nginx verifies nothing)")),
    ("auth-tls-verify-depth", Status::Same),
    ("client-body-buffer-size", Status::Different("accepted and checked; request bodies stream to the upstream as they arrive, so nothing is buffered or written to disk")),
    (
        "configuration-snippet",
        Status::Never(
            "snippets inject raw nginx configuration: Portico runs no nginx, and an annotation must never change the proxy's code",
        ),
    ),
    ("connection-proxy-header", Status::Different("`keep-alive` (what Portico does anyway) or `close`; another value is reported and connections are kept alive")),
    ("cors-allow-credentials", Status::Same),
    ("cors-allow-headers", Status::Same),
    ("cors-allow-methods", Status::Same),
    ("cors-allow-origin", Status::Same),
    ("cors-expose-headers", Status::Same),
    ("cors-max-age", Status::Same),
    (
        "enable-cors",
        Status::Different(
            "preflights are answered only when they carry `Access-Control-Request-Method`; any other OPTIONS goes to the backend",
        ),
    ),
    ("custom-http-errors", Status::Different("the pages come from `default-backend`, else from the default backend (`spec.defaultBackend` or `--default-backend-service`); without either the upstream answer stands")),
    ("custom-headers", Status::Different("the ConfigMap must be in the Ingress's namespace")),
    ("default-backend", Status::Different("`name` or `name:port` (default: the Service's first port)")),
    ("denylist-source-range", Status::Same),
    ("disable-proxy-intercept-errors", Status::Same),
    ("enable-global-auth", Status::Same),
    ("auth-always-set-cookie", Status::Same),
    ("auth-cache-duration", Status::Same),
    ("auth-cache-key", Status::Different("the variables of `upstream-hash-by`; not `$remote_user`")),
    ("auth-keepalive", Status::Different("`0` closes each connection to the auth service after its answer; any other number keeps them in the proxy's shared pool")),
    ("auth-keepalive-requests", Status::Different("accepted and checked; the shared pool does not count requests per connection")),
    ("auth-keepalive-share-vars", Status::Different("accepted and checked; there are no nginx variables to share")),
    ("auth-keepalive-timeout", Status::Same),
    ("auth-method", Status::Same),
    (
        "auth-proxy-set-headers",
        Status::Different("the ConfigMap must be in the Ingress's namespace; its values may hold the request variables Portico knows (`$host`, `$http_<name>`...)"),
    ),
    ("auth-request-redirect", Status::Same),
    ("auth-response-headers", Status::Same),
    ("auth-signin", Status::Same),
    ("auth-signin-redirect-param", Status::Same),
    ("auth-snippet", Status::Never("as configuration-snippet")),
    ("auth-url", Status::Different("variables in the host part only `$host`, `$http_host`, `$server_port`, and `$host` only when every rule names a host (record 0016); a URL that does not parse makes the routes answer 503")),
    ("fastcgi-index", Status::Never(FASTCGI)),
    ("fastcgi-params-configmap", Status::Never(FASTCGI)),
    ("http2-push-preload", Status::Never("browsers no longer accept HTTP/2 server push (Chrome removed it in 2022, Firefox in 2024); a `Link: rel=preload` header from the backend still reaches them")),
    ("load-balance", Status::Same),
    ("enable-access-log", Status::Same),
    ("enable-rewrite-log", Status::Different("each `rewrite-target` rewrite is logged at info level (target `portico::rewrite`) with the host and both paths")),
    ("mirror-host", Status::Same),
    ("mirror-request-body", Status::Same),
    ("mirror-target", Status::Different("the scheme and host must be literal (variables only in the path and query); a body over 1 MiB is not copied, nor a copy past 256 in flight (`portico_mirror_copies_dropped_total`)")),
    ("enable-modsecurity", Status::Never("ModSecurity is an nginx module; put a WAF beside Portico")),
    ("enable-owasp-core-rules", Status::Never("as enable-modsecurity")),
    ("modsecurity-snippet", Status::Never("as configuration-snippet")),
    ("modsecurity-transaction-id", Status::Never("as enable-modsecurity")),
    ("enable-opentelemetry", Status::Different("with `--otlp-endpoint` every route is traced unless this is `false`; without it nothing is (ingress-nginx's ConfigMap switch is that flag)")),
    ("opentelemetry-operation-name", Status::Different("the request variables Portico knows (`$request_method`, `$uri`, `$host`...) and the route's `$namespace`, `$ingress_name`, `$service_name`, `$service_port`, `$location_path`; another variable is reported and the span keeps its usual name")),
    ("opentelemetry-trust-incoming-span", Status::Same),
    ("proxy-body-size", Status::Same),
    ("proxy-buffer-size", Status::Different("accepted and checked; responses stream, and a response header may be as large as the proxy's header limit")),
    ("proxy-buffering", Status::Different("accepted and checked; responses always stream as with ingress-nginx's default `off`: `on` changes nothing a client sees but when the bytes arrive")),
    ("proxy-buffers-number", Status::Different("accepted and checked; responses stream, no buffers to count")),
    ("proxy-connect-timeout", Status::Same),
    ("proxy-cookie-domain", Status::Different("`off` or `FROM TO`; no regular expressions")),
    ("proxy-cookie-path", Status::Different("`off` or `FROM TO` (a path prefix); no regular expressions")),
    ("proxy-http-version", Status::Same),
    ("proxy-max-temp-file-size", Status::Different("accepted and checked; nothing is spooled to disk")),
    (
        "proxy-next-upstream",
        Status::Different(
            "`error`, `timeout`, `http_502`, `http_503`, `http_504`, `off`; a non-idempotent request is never resent once sent",
        ),
    ),
    ("proxy-next-upstream-timeout", Status::Same),
    ("proxy-next-upstream-tries", Status::Same),
    ("proxy-read-timeout", Status::Same),
    ("proxy-redirect-from", Status::Different("a URL prefix or `off`; not `default`")),
    ("proxy-redirect-to", Status::Same),
    ("proxy-request-buffering", Status::NotYet("request bodies stream to the upstream as they arrive, so a request whose body has started is not retried on another endpoint")),
    ("proxy-send-timeout", Status::Same),
    ("proxy-ssl-ciphers", Status::NotYet(PER_BACKEND_TLS)),
    ("proxy-ssl-name", Status::Same),
    ("proxy-ssl-protocols", Status::NotYet(PER_BACKEND_TLS)),
    ("proxy-ssl-secret", Status::Same),
    ("proxy-ssl-server-name", Status::Same),
    ("proxy-ssl-verify", Status::Same),
    ("proxy-ssl-verify-depth", Status::NotYet(PER_BACKEND_TLS)),
    ("limit-allowlist", Status::Same),
    ("limit-burst-multiplier", Status::Same),
    (
        "limit-connections",
        Status::Different("counts requests in progress per client address, HTTP/2 streams included; over it, the limit status"),
    ),
    ("limit-rate", Status::Same),
    ("limit-rate-after", Status::Same),
    ("limit-rpm", Status::Same),
    (
        "limit-rps",
        Status::Different(
            "over the limit the answer is 429 with `Retry-After` (ingress-nginx: 503); `portico-proxy --limit-req-status-code` changes it",
        ),
    ),
    ("from-to-www-redirect", Status::Same),
    ("permanent-redirect", Status::Same),
    ("permanent-redirect-code", Status::Same),
    ("temporal-redirect", Status::Same),
    ("temporal-redirect-code", Status::Same),
    ("app-root", Status::Same),
    ("force-ssl-redirect", Status::Same),
    ("preserve-trailing-slash", Status::Same),
    ("rewrite-target", Status::Same),
    ("ssl-redirect", Status::Same),
    ("use-regex", Status::Same),
    ("ssl-ciphers", Status::Same),
    ("ssl-prefer-server-ciphers", Status::Different("the HTTPS listener always prefers its own cipher order (ingress-nginx's default); \"false\" is reported and ignored")),
    ("ssl-passthrough", Status::Same),
    ("satisfy", Status::Same),
    ("server-snippet", Status::Never("as configuration-snippet")),
    ("service-upstream", Status::Same),
    ("affinity", Status::Same),
    ("affinity-canary-behavior", Status::Same),
    (
        "affinity-mode",
        Status::Different("`balanced` places a random key on a consistent-hash ring; `persistent` names the endpoint by an HMAC tag"),
    ),
    (
        "session-cookie-change-on-failure",
        Status::Different("a retry always goes to another endpoint; this says whether the cookie follows it"),
    ),
    ("session-cookie-conditional-samesite-none", Status::Same),
    ("session-cookie-domain", Status::Same),
    ("session-cookie-expires", Status::Same),
    ("session-cookie-max-age", Status::Same),
    ("session-cookie-name", Status::Same),
    ("session-cookie-partitioned", Status::Same),
    ("session-cookie-path", Status::Same),
    ("session-cookie-samesite", Status::Same),
    ("session-cookie-secure", Status::Same),
    ("stream-snippet", Status::Never("as configuration-snippet")),
    ("upstream-hash-by", Status::Different("`$remote_addr`, `$host`, `$uri`, `$request_uri`, `$http_*`, `$cookie_*`, `$arg_*` and text")),
    ("upstream-hash-by-subset", Status::Same),
    ("upstream-hash-by-subset-size", Status::Same),
    ("upstream-vhost", Status::Same),
    ("use-port-in-redirects", Status::Different("applies to the redirects Portico answers with a path as target (made absolute with the listener's port)")),
    ("x-forwarded-prefix", Status::Same),
    // Newer than the reference list.
    ("relative-redirects", Status::Same),
];

/// Portico's own annotations, read under `portico.io/` (and, like every name, under
/// ingress-nginx's prefix too).
pub const PORTICO_ONLY: &[(&str, Status)] = &[
    ("upstream-max-fails", Status::Same),
    ("upstream-fail-timeout", Status::Same),
    ("health-check-path", Status::Same),
    ("health-check-interval", Status::Same),
    ("health-check-timeout", Status::Same),
    ("health-check-healthy-threshold", Status::Same),
    ("health-check-unhealthy-threshold", Status::Same),
    ("auth-jwt-jwks-secret", Status::Same),
    ("auth-jwt-jwks-url", Status::Same),
    ("auth-jwt-issuer", Status::Same),
    ("auth-jwt-audience", Status::Same),
    ("auth-jwt-algorithms", Status::Same),
    ("auth-jwt-leeway", Status::Same),
    ("auth-jwt-claims-to-headers", Status::Same),
    ("match-headers", Status::Same),
    ("match-methods", Status::Same),
    ("match-query", Status::Same),
    ("request-headers-set", Status::Same),
    ("request-headers-add", Status::Same),
    ("request-headers-remove", Status::Same),
    ("response-headers-set", Status::Same),
    ("response-headers-add", Status::Same),
    ("response-headers-remove", Status::Same),
];

fn status_of(name: &str) -> Option<Status> {
    INGRESS_NGINX
        .iter()
        .chain(PORTICO_ONLY)
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// A message for each annotation of ours or ingress-nginx's that Portico ignores.
pub(crate) fn ignored(annotations: Option<&BTreeMap<String, String>>) -> Vec<String> {
    let mut out = Vec::new();
    for key in annotations.into_iter().flat_map(|m| m.keys()) {
        let Some(name) = key
            .strip_prefix(PORTICO_PREFIX)
            .or_else(|| key.strip_prefix(NGINX_PREFIX))
        else {
            continue;
        };
        match status_of(name) {
            Some(Status::Same | Status::Different(_)) => {}
            Some(Status::NotYet("")) => out.push(format!(
                "annotation {key} is not supported by Portico yet; ignored"
            )),
            Some(Status::NotYet(note)) => out.push(format!(
                "annotation {key} is not supported by Portico yet ({note}); ignored"
            )),
            Some(Status::Never(why)) => out.push(format!(
                "annotation {key} is never supported: {why}; ignored"
            )),
            None => out.push(format!(
                "annotation {key} is not one Portico or ingress-nginx knows; ignored"
            )),
        }
    }
    out
}

/// The body of `docs/ingress-nginx-migration.md`.
pub fn migration_document() -> String {
    let mut doc = String::from(MIGRATION_INTRO);
    let count = |f: fn(&Status) -> bool| INGRESS_NGINX.iter().filter(|(_, s)| f(s)).count();
    doc.push_str(&format!(
        "Of ingress-nginx's {} annotations: {} supported with the same meaning, {} with a difference, {} not yet, {} never.\n\n",
        INGRESS_NGINX.len(),
        count(|s| matches!(s, Status::Same)),
        count(|s| matches!(s, Status::Different(_))),
        count(|s| matches!(s, Status::NotYet(_))),
        count(|s| matches!(s, Status::Never(_))),
    ));
    doc.push_str("| annotation | Portico | notes |\n| --- | --- | --- |\n");
    let mut rows: Vec<&(&str, Status)> = INGRESS_NGINX.iter().collect();
    rows.sort_by_key(|(n, _)| *n);
    for (name, status) in rows {
        let (word, note) = match status {
            Status::Same => ("supported", ""),
            Status::Different(n) => ("supported, differs", *n),
            Status::NotYet(n) => ("not yet", *n),
            Status::Never(n) => ("never", *n),
        };
        doc.push_str(&format!("| `{name}` | {word} | {note} |\n"));
    }
    doc.push_str("\n## Portico's own annotations\n\n| annotation | status |\n| --- | --- |\n");
    for (name, status) in PORTICO_ONLY {
        let word = if matches!(status, Status::Same) {
            "supported"
        } else {
            "not yet"
        };
        doc.push_str(&format!("| `portico.io/{name}` | {word} |\n"));
    }
    doc.push_str(FLAGS_SECTION);
    doc.push_str(CONFIGMAP_INTRO);
    doc.push_str(&crate::controller_config::configmap_document());
    doc
}

const FLAGS_SECTION: &str = "
## ingress-nginx's controller flags

| ingress-nginx flag | Portico | notes |
| --- | --- | --- |
| `--ingress-class` | `portico-controller --ingress-class` | same |
| `--watch-namespace` | `portico-controller --watch-namespace` | same (a list) |
| `--configmap` | `portico-controller --configmap` | same; see below |
| `--tcp-services-configmap` | `portico-controller --tcp-services-configmap` | same format: each key the port the proxy listens on, each value `namespace/service:port[:PROXY][:PROXY]`; see [`l4.md`](l4.md) |
| `--udp-services-configmap` | `portico-controller --udp-services-configmap` | same, without PROXY |
| `--enable-ssl-passthrough` | `portico-proxy --enable-ssl-passthrough` | same: TLS for hosts with `ssl-passthrough` goes to their `/` backend untouched |
| `--default-ssl-certificate` | `portico-controller --default-ssl-certificate` | same |
| `--default-backend-service` | `portico-controller --default-backend-service` | same |
| `--publish-service`, `--publish-status-address` | `portico-controller`, same names | same |
| `--election-id` | `portico-controller --election-id` | same (a Lease) |
| `--http-port`, `--https-port` | `portico-proxy --http-addr`, `--https-addr` | addresses, not ports |
";

const CONFIGMAP_INTRO: &str = "
## The controller ConfigMap

`portico-controller --configmap NS/NAME` reads ingress-nginx's controller ConfigMap, from
the manifests directory in file mode and watched in Kubernetes mode; a change applies
without a restart. A key that is also an annotation is the default of every Ingress that
does not set the annotation. A key Portico does not act on gets an `UnsupportedSetting`
diagnostic (a Warning Event on the ConfigMap); a value that does not parse gets
`InvalidSetting`, naming the key and the value, and the key keeps its previous good value
(its default, if it never had one). `portico-controller --check DIR` reports both.

Which wins when two places say the same thing: an annotation on an Ingress over the
ConfigMap's default for it; a ConfigMap key over the controller flag with the same meaning
(`hsts*` over `--hsts*`), because the ConfigMap is the setting operators change live.
What concerns sockets and clients (trusted proxies, PROXY protocol, client timeouts, header
limits, threads, the rate-limit status, the access log, tracing) is a flag of
`portico-proxy`, never read from the ConfigMap: the proxy applies it when it starts, and
the controller that reads the ConfigMap may run elsewhere. Those keys are listed as
\"proxy flag\" with the flag to use, and a Warning names the flag when one is set.

";

const MIGRATION_INTRO: &str = "# Moving from ingress-nginx

<!-- Rendered from crates/translate/src/compat.rs; regenerate with
     PORTICO_WRITE_DOCS=1 cargo test -p portico-translate migration_document -->

Portico reads ingress-nginx's annotations under their own prefix,
`nginx.ingress.kubernetes.io/`, and under `portico.io/` (which wins when both are set), so
Ingresses written for ingress-nginx work unchanged where Portico has the knob. For every
annotation it does not act on, the controller reports an `UnsupportedAnnotation` diagnostic
(a Warning Event on the Ingress) naming it, so that nothing is ignored silently.
Security annotations Portico does not enforce yet make their routes answer 503 instead of
serving without the control. ExternalName Services are backends as in ingress-nginx,
except that addresses inside the node (loopback, link-local, cloud metadata) are refused
unless the controller runs with `--external-name-allow-local` (`docs/design/0019`). Defaults and details of what is supported:
[`annotations.md`](annotations.md).

";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/ingress-nginx-migration.md");
        let rendered = migration_document();
        if std::env::var_os("PORTICO_WRITE_DOCS").is_some() {
            std::fs::write(&path, &rendered).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == rendered,
            "docs/ingress-nginx-migration.md is stale: PORTICO_WRITE_DOCS=1 cargo test -p portico-translate migration_document"
        );
    }

    #[test]
    fn ignored_annotations_are_named_and_read_ones_are_not() {
        let map: BTreeMap<String, String> = [
            "nginx.ingress.kubernetes.io/rewrite-target",
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "nginx.ingress.kubernetes.io/proxy-ssl-ciphers",
            "nginx.ingress.kubernetes.io/auth-tls-secret",
            "nginx.ingress.kubernetes.io/proxy-request-buffering",
            "portico.io/health-check-path",
            "portico.io/rewrite-targt",
            "kubernetes.io/ingress.class",
        ]
        .iter()
        .map(|k| (k.to_string(), "x".to_string()))
        .collect();
        let messages = ignored(Some(&map));
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages
            .iter()
            .any(|m| m.contains("configuration-snippet is never supported")));
        assert!(messages
            .iter()
            .any(|m| m.contains("proxy-request-buffering is not supported by Portico yet")));
        assert!(messages
            .iter()
            .any(|m| m.contains("proxy-ssl-ciphers is not supported by Portico yet")));
        assert!(messages
            .iter()
            .any(|m| m
                .contains("portico.io/rewrite-targt is not one Portico or ingress-nginx knows")));
        // The reference list's 136, and relative-redirects, which is newer.
        assert_eq!(INGRESS_NGINX.len(), 136 + 1);
    }
}
