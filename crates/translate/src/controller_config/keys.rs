//! Which keys of ingress-nginx's controller ConfigMap Portico reads, against its full list:
//! what a migrating user is told about a key it ignores, and the table in
//! `docs/ingress-nginx-migration.md`, rendered from the same list so that the two agree.

/// What Portico does with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Read, with ingress-nginx's meaning.
    Same,
    /// The default of the annotation of the same name, with that annotation's meaning.
    Annotation,
    /// Read, with a difference (which).
    Different(&'static str),
    /// Said to the proxy with a flag (which), not in the ConfigMap.
    Flag(&'static str),
    /// Not read yet (with a note, or empty).
    NotYet(&'static str),
    /// Never read (why).
    Never(&'static str),
}

impl KeyStatus {
    /// Why key `k` is ignored, or `None` when Portico acts on it.
    pub(crate) fn not_acted_on(&self, k: &str) -> Option<String> {
        match self {
            KeyStatus::Same | KeyStatus::Annotation | KeyStatus::Different(_) => None,
            KeyStatus::Flag(flag) => Some(format!(
                "key {k} is not read from the ConfigMap: set it on portico-proxy with {flag}"
            )),
            KeyStatus::NotYet("") => Some(format!("key {k} is not supported yet; ignored")),
            KeyStatus::NotYet(note) => {
                Some(format!("key {k} is not supported yet ({note}); ignored"))
            }
            KeyStatus::Never(why) => Some(format!("key {k} is never supported: {why}; ignored")),
        }
    }
}

pub(crate) fn status_of(k: &str) -> Option<KeyStatus> {
    CONTROLLER_KEYS
        .iter()
        .find(|(name, _)| *name == k)
        .map(|(_, s)| *s)
}

/// The ConfigMap table of the migration document, with its counts.
pub fn configmap_document() -> String {
    let mut rows = String::new();
    let mut counts = [0usize; 6];
    for (k, status) in CONTROLLER_KEYS {
        let (i, portico, note) = match status {
            KeyStatus::Same => (0, "same", String::new()),
            KeyStatus::Annotation => (1, "same", annotation_note(k)),
            KeyStatus::Different(n) => (2, "differs", n.to_string()),
            KeyStatus::Flag(f) => (3, "proxy flag", format!("`{f}`")),
            KeyStatus::NotYet(n) => (4, "not yet", n.to_string()),
            KeyStatus::Never(n) => (5, "never", n.to_string()),
        };
        counts[i] += 1;
        rows.push_str(&format!("| `{k}` | {portico} | {note} |\n"));
    }
    format!(
        "{} keys: {} same, {} as the annotation's default, {} differ, {} are proxy flags, {} not yet, {} never.\n\n| key | Portico | notes |\n|---|---|---|\n{rows}",
        CONTROLLER_KEYS.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts[5],
    )
}

fn annotation_note(k: &str) -> String {
    let annotation = crate::compat::INGRESS_NGINX
        .iter()
        .find(|(name, _)| *name == k)
        .map(|(_, s)| *s);
    match annotation {
        Some(crate::compat::Status::Different(n)) => {
            format!("the default of the `{k}` annotation ({})", lower_first(n))
        }
        _ => format!("the default of the `{k}` annotation"),
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Every key of ingress-nginx's controller ConfigMap (its `configmap.md`), in its order.
pub const CONTROLLER_KEYS: &[(&str, KeyStatus)] = &[
    ("add-headers", KeyStatus::Same),
    ("allow-backend-server-header", KeyStatus::Different("`--hide-server-header` on the proxy wins: with it no `Server` header is sent, the upstream's included")),
    ("allow-cross-namespace-resources", KeyStatus::Different("only `false` (the default): an Ingress reads only Secrets, Services and ConfigMaps of its own namespace")),
    ("allow-snippet-annotations", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("annotations-risk-level", KeyStatus::Never("no annotation Portico reads can inject configuration, so there is no risk level to choose")),
    ("annotation-value-word-blocklist", KeyStatus::Same),
    ("hide-headers", KeyStatus::Same),
    ("access-log-params", KeyStatus::NotYet("the access log's fields are fixed (JSON or text, see docs/observability.md)")),
    ("access-log-path", KeyStatus::Never("Portico logs to stdout (access log) and stderr (its own log), as containers expect")),
    ("http-access-log-path", KeyStatus::Never("Portico logs to stdout (access log) and stderr (its own log), as containers expect")),
    ("stream-access-log-path", KeyStatus::Never("Portico logs to stdout (access log) and stderr (its own log), as containers expect")),
    ("enable-access-log-for-default-backend", KeyStatus::NotYet("the access log's fields are fixed (JSON or text, see docs/observability.md)")),
    ("error-log-path", KeyStatus::Never("Portico logs to stdout (access log) and stderr (its own log), as containers expect")),
    ("enable-modsecurity", KeyStatus::Never("ModSecurity is an nginx module; put a WAF in front of or behind Portico")),
    ("modsecurity-snippet", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("enable-owasp-modsecurity-crs", KeyStatus::Never("ModSecurity is an nginx module; put a WAF in front of or behind Portico")),
    ("client-header-buffer-size", KeyStatus::Flag("--max-request-header-bytes and --max-request-headers")),
    ("client-header-timeout", KeyStatus::Flag("--client-header-timeout")),
    ("client-body-buffer-size", KeyStatus::Annotation),
    ("client-body-timeout", KeyStatus::NotYet("")),
    ("disable-access-log", KeyStatus::Flag("--access-log off")),
    ("disable-ipv6", KeyStatus::Flag("--http-addr and --https-addr")),
    ("disable-ipv6-dns", KeyStatus::NotYet("")),
    ("enable-underscores-in-headers", KeyStatus::NotYet("")),
    ("enable-ocsp", KeyStatus::NotYet("")),
    ("ignore-invalid-headers", KeyStatus::Different("only `true` (the default): a request header with an invalid name is refused, never passed on")),
    ("retry-non-idempotent", KeyStatus::NotYet("")),
    ("error-log-level", KeyStatus::Never("Portico's own log level is set with `RUST_LOG`")),
    ("http2-max-field-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("http2-max-header-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("http2-max-requests", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("http2-max-concurrent-streams", KeyStatus::NotYet("HTTP/2 is always offered by ALPN on the HTTPS listener")),
    ("hsts", KeyStatus::Same),
    ("hsts-include-subdomains", KeyStatus::Same),
    ("hsts-max-age", KeyStatus::Same),
    ("hsts-preload", KeyStatus::Same),
    ("keep-alive", KeyStatus::Flag("--client-keepalive-timeout")),
    ("keep-alive-requests", KeyStatus::NotYet("")),
    ("large-client-header-buffers", KeyStatus::Flag("--max-request-header-bytes and --max-request-headers")),
    ("log-format-escape-none", KeyStatus::NotYet("the access log's fields are fixed (JSON or text, see docs/observability.md)")),
    ("log-format-escape-json", KeyStatus::Flag("--access-log-format json (always escaped as JSON)")),
    ("log-format-upstream", KeyStatus::NotYet("the access log's fields are fixed (JSON or text, see docs/observability.md)")),
    ("log-format-stream", KeyStatus::NotYet("the access log's fields are fixed (JSON or text, see docs/observability.md)")),
    ("enable-multi-accept", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("max-worker-connections", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("max-worker-open-files", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("map-hash-bucket-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("nginx-status-ipv4-whitelist", KeyStatus::Never("nginx's status page; Portico's metrics are on the admin listener's `/metrics`")),
    ("nginx-status-ipv6-whitelist", KeyStatus::Never("nginx's status page; Portico's metrics are on the admin listener's `/metrics`")),
    ("proxy-real-ip-cidr", KeyStatus::Flag("--trusted-proxies: X-Forwarded-* and PROXY headers are believed from those peers only, and X-Forwarded-For is appended to")),
    ("proxy-set-headers", KeyStatus::Same),
    ("server-name-hash-max-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("server-name-hash-bucket-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("proxy-headers-hash-max-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("proxy-headers-hash-bucket-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("reuse-port", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("server-tokens", KeyStatus::Different("only `false` (the default): Portico's `Server: portico` carries no version; `--hide-server-header` on the proxy sends none")),
    ("ssl-ciphers", KeyStatus::Same),
    ("ssl-ecdh-curve", KeyStatus::NotYet("the HTTPS listener offers OpenSSL's default curves and groups")),
    ("ssl-dh-param", KeyStatus::NotYet("the HTTPS listener offers OpenSSL's default curves and groups")),
    ("ssl-protocols", KeyStatus::Different("TLSv1.2 and TLSv1.3 only: older versions named are left out with a warning")),
    ("ssl-session-cache", KeyStatus::NotYet("the HTTPS listener always resumes sessions: OpenSSL's cache in each proxy process, and session tickets (on, where ingress-nginx turns them off) with keys made at start")),
    ("ssl-session-cache-size", KeyStatus::NotYet("the HTTPS listener always resumes sessions: OpenSSL's cache in each proxy process, and session tickets (on, where ingress-nginx turns them off) with keys made at start")),
    ("ssl-session-tickets", KeyStatus::NotYet("the HTTPS listener always resumes sessions: OpenSSL's cache in each proxy process, and session tickets (on, where ingress-nginx turns them off) with keys made at start")),
    ("ssl-session-ticket-key", KeyStatus::NotYet("the HTTPS listener always resumes sessions: OpenSSL's cache in each proxy process, and session tickets (on, where ingress-nginx turns them off) with keys made at start")),
    ("ssl-session-timeout", KeyStatus::NotYet("the HTTPS listener always resumes sessions: OpenSSL's cache in each proxy process, and session tickets (on, where ingress-nginx turns them off) with keys made at start")),
    ("ssl-buffer-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("use-proxy-protocol", KeyStatus::Flag("--proxy-protocol")),
    ("proxy-protocol-header-timeout", KeyStatus::NotYet("")),
    ("enable-aio-write", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("use-gzip", KeyStatus::Same),
    ("use-geoip", KeyStatus::Never("GeoIP databases are not shipped; the MaxMind variables are nginx's")),
    ("use-geoip2", KeyStatus::Never("GeoIP databases are not shipped; the MaxMind variables are nginx's")),
    ("geoip2-autoreload-in-minutes", KeyStatus::Never("GeoIP databases are not shipped; the MaxMind variables are nginx's")),
    ("enable-brotli", KeyStatus::Same),
    ("brotli-level", KeyStatus::Same),
    ("brotli-min-length", KeyStatus::Same),
    ("brotli-types", KeyStatus::Same),
    ("use-http2", KeyStatus::Flag("--http2 off")),
    ("gzip-disable", KeyStatus::NotYet("compression is on or off for every client that accepts it")),
    ("gzip-level", KeyStatus::Same),
    ("gzip-min-length", KeyStatus::Same),
    ("gzip-types", KeyStatus::Same),
    ("worker-processes", KeyStatus::Flag("--threads")),
    ("worker-cpu-affinity", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("worker-shutdown-timeout", KeyStatus::Flag("--shutdown-grace-seconds and --shutdown-drain-seconds")),
    ("enable-serial-reloads", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("load-balance", KeyStatus::Annotation),
    ("variables-hash-bucket-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("variables-hash-max-size", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("upstream-keepalive-connections", KeyStatus::Flag("--upstream-keepalive-connections (per worker thread, over all backends; 320 by default, as ingress-nginx)")),
    ("upstream-keepalive-time", KeyStatus::NotYet("the upstream connection pool counts neither requests nor age per connection; an idle one closes after upstream-keepalive-timeout (docs/design/0013)")),
    ("upstream-keepalive-timeout", KeyStatus::Same),
    ("upstream-keepalive-requests", KeyStatus::NotYet("the upstream connection pool counts neither requests nor age per connection; an idle one closes after upstream-keepalive-timeout (docs/design/0013)")),
    ("limit-conn-zone-variable", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("proxy-stream-timeout", KeyStatus::Same),
    ("proxy-stream-next-upstream", KeyStatus::Same),
    ("proxy-stream-next-upstream-timeout", KeyStatus::Same),
    ("proxy-stream-next-upstream-tries", KeyStatus::Same),
    ("proxy-stream-responses", KeyStatus::Same),
    ("bind-address", KeyStatus::Flag("--http-addr and --https-addr")),
    ("use-forwarded-headers", KeyStatus::Flag("--trusted-proxies: X-Forwarded-* and PROXY headers are believed from those peers only, and X-Forwarded-For is appended to")),
    ("enable-real-ip", KeyStatus::Flag("--trusted-proxies: X-Forwarded-* and PROXY headers are believed from those peers only, and X-Forwarded-For is appended to")),
    ("forwarded-for-header", KeyStatus::Flag("--forwarded-for-header")),
    ("forwarded-for-proxy-protocol-header", KeyStatus::NotYet("")),
    ("compute-full-forwarded-for", KeyStatus::Flag("--trusted-proxies: X-Forwarded-* and PROXY headers are believed from those peers only, and X-Forwarded-For is appended to")),
    ("proxy-add-original-uri-header", KeyStatus::NotYet("")),
    ("generate-request-id", KeyStatus::Same),
    ("jaeger-collector-host", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-collector-port", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-endpoint", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-service-name", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-propagation-format", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-sampler-type", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-sampler-param", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-sampler-host", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-sampler-port", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-trace-context-header-name", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-debug-header", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-baggage-header", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("jaeger-trace-baggage-header-prefix", KeyStatus::Never("Jaeger was removed from ingress-nginx; use OpenTelemetry (`--otlp-endpoint`)")),
    ("enable-opentelemetry", KeyStatus::Flag("--otlp-endpoint")),
    ("opentelemetry-trust-incoming-span", KeyStatus::NotYet("")),
    ("opentelemetry-operation-name", KeyStatus::NotYet("")),
    ("opentelemetry-config", KeyStatus::Flag("--otlp-endpoint")),
    ("otlp-collector-host", KeyStatus::Flag("--otlp-endpoint")),
    ("otlp-collector-port", KeyStatus::Flag("--otlp-endpoint")),
    ("otel-max-queuesize", KeyStatus::NotYet("")),
    ("otel-schedule-delay-millis", KeyStatus::NotYet("")),
    ("otel-max-export-batch-size", KeyStatus::NotYet("")),
    ("otel-service-name", KeyStatus::NotYet("")),
    ("otel-sampler", KeyStatus::Flag("--trace-sample-ratio")),
    ("otel-sampler-parent-based", KeyStatus::Flag("--trace-sample-ratio")),
    ("otel-sampler-ratio", KeyStatus::Flag("--trace-sample-ratio")),
    ("main-snippet", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("http-snippet", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("server-snippet", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("stream-snippet", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("location-snippet", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("custom-http-errors", KeyStatus::Annotation),
    ("proxy-body-size", KeyStatus::Annotation),
    ("proxy-connect-timeout", KeyStatus::Annotation),
    ("proxy-read-timeout", KeyStatus::Annotation),
    ("proxy-send-timeout", KeyStatus::Annotation),
    ("proxy-buffers-number", KeyStatus::Annotation),
    ("proxy-buffer-size", KeyStatus::Annotation),
    ("proxy-busy-buffers-size", KeyStatus::NotYet("")),
    ("proxy-cookie-path", KeyStatus::Annotation),
    ("proxy-cookie-domain", KeyStatus::Annotation),
    ("proxy-next-upstream", KeyStatus::Annotation),
    ("proxy-next-upstream-timeout", KeyStatus::Annotation),
    ("proxy-next-upstream-tries", KeyStatus::Annotation),
    ("proxy-redirect-from", KeyStatus::Different("only `off` (the default), which is what Portico does; rewrite an upstream's `Location` per Ingress with the `proxy-redirect-from`/`-to` annotations")),
    ("proxy-request-buffering", KeyStatus::NotYet("")),
    ("ssl-redirect", KeyStatus::Annotation),
    ("force-ssl-redirect", KeyStatus::Annotation),
    ("denylist-source-range", KeyStatus::Annotation),
    ("whitelist-source-range", KeyStatus::Annotation),
    ("skip-access-log-urls", KeyStatus::NotYet("the access log's fields are fixed (JSON or text, see docs/observability.md)")),
    ("limit-rate", KeyStatus::Annotation),
    ("limit-rate-after", KeyStatus::Annotation),
    ("lua-shared-dicts", KeyStatus::Never("Lua is how ingress-nginx is built, not what it does")),
    ("http-redirect-code", KeyStatus::Different("301, 302, 303, 307 or 308, as ingress-nginx; the default is 308")),
    ("proxy-buffering", KeyStatus::Annotation),
    ("limit-req-status-code", KeyStatus::Flag("--limit-req-status-code")),
    ("limit-conn-status-code", KeyStatus::NotYet("")),
    ("enable-syslog", KeyStatus::Never("Portico logs to stdout (access log) and stderr (its own log), as containers expect")),
    ("syslog-host", KeyStatus::Never("Portico logs to stdout (access log) and stderr (its own log), as containers expect")),
    ("syslog-port", KeyStatus::Never("Portico logs to stdout (access log) and stderr (its own log), as containers expect")),
    ("no-tls-redirect-locations", KeyStatus::NotYet("")),
    ("global-allowed-response-headers", KeyStatus::NotYet("")),
    ("global-auth-url", KeyStatus::Same),
    ("global-auth-method", KeyStatus::Same),
    ("global-auth-signin", KeyStatus::Same),
    ("global-auth-signin-redirect-param", KeyStatus::Same),
    ("global-auth-response-headers", KeyStatus::Same),
    ("global-auth-request-redirect", KeyStatus::Same),
    ("global-auth-snippet", KeyStatus::Never("snippets inject raw nginx configuration: Portico runs no nginx, and configuration must never change the proxy's code")),
    ("global-auth-cache-key", KeyStatus::Same),
    ("global-auth-cache-duration", KeyStatus::Same),
    ("no-auth-locations", KeyStatus::Same),
    ("block-cidrs", KeyStatus::Same),
    ("block-user-agents", KeyStatus::Same),
    ("block-referers", KeyStatus::Same),
    ("proxy-ssl-location-only", KeyStatus::NotYet("")),
    ("default-type", KeyStatus::NotYet("")),
    ("service-upstream", KeyStatus::Annotation),
    ("ssl-reject-handshake", KeyStatus::NotYet("")),
    ("debug-connections", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("strict-validate-path-type", KeyStatus::Different("only `true` (the default): paths are always checked against their `pathType`")),
    ("grpc-buffer-size-kb", KeyStatus::Never("an nginx tuning knob with no counterpart: Portico sizes its own tables and buffers")),
    ("relative-redirects", KeyStatus::Annotation),
];
