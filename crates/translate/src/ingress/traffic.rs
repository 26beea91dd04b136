//! How an Ingress's traffic is spread and bounded: balancing, timeouts, retries, health,
//! the body limit, cookie affinity, rate limits and the canary split. Except for rate
//! limits (which guard a service and fail closed), these are tuning: a value that cannot
//! be used is reported and its default applies.

use crate::annotations::{Annotations, InvalidAnnotation};
use crate::diagnostic::{Problem, Problems};
use portico_model::{
    AffinityMode, Balance, Canary, CanaryHeader, HeaderRule, HealthCheck, Mirror, RateLimit,
    ResponseRate, SessionAffinity, SessionCookie, SourceRef, Template, TrafficPolicy,
    UpstreamProtocol,
};

/// ingress-nginx's `session-cookie-name` default.
const DEFAULT_AFFINITY_COOKIE: &str = "INGRESSCOOKIE";
/// Active health check defaults, when `health-check-path` turns them on.
const DEFAULT_HEALTH_INTERVAL_MS: u64 = 5_000;
const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 2_000;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// ingress-nginx's `limit-burst-multiplier` default.
const DEFAULT_BURST_MULTIPLIER: u32 = 5;
/// ingress-nginx's `proxy-body-size` default.
pub(super) const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// Balancing, timeouts, retries and passive and active health, for backends spoken to
/// with `protocol`.
pub(super) fn traffic(
    a: &Annotations<'_>,
    protocol: UpstreamProtocol,
    problems: &mut Problems,
) -> TrafficPolicy {
    let mut t = TrafficPolicy::default();
    if let Some(balance) = problems.take(a.load_balance()) {
        t.balance = balance;
    }
    // As in ingress-nginx, a hash key overrides the algorithm.
    if let Some(key) = problems.take(a.hash_key()) {
        t.balance = match problems.take(a.bool("upstream-hash-by-subset")) {
            Some(true) => Balance::HashSubset {
                key,
                size: hash_subset_size(a, problems),
            },
            _ => Balance::ConsistentHash(key),
        };
    }
    for (name, field) in [
        ("proxy-connect-timeout", &mut t.connect_timeout_ms),
        ("proxy-read-timeout", &mut t.read_timeout_ms),
        ("proxy-send-timeout", &mut t.send_timeout_ms),
        ("upstream-fail-timeout", &mut t.fail_timeout_ms),
    ] {
        if let Some(ms) = problems.take(a.duration_ms(name, false)) {
            *field = ms;
        }
    }
    if let Some(when) = problems.take(a.next_upstream()) {
        t.retry.on_error = when.error;
        t.retry.on_timeout = when.timeout;
        t.retry.on_status = when.statuses;
    }
    if let Some(tries) = problems.take(a.count("proxy-next-upstream-tries")) {
        // 0 is nginx's "no limit": every endpoint once.
        t.retry.tries = if tries == 0 { u32::MAX } else { tries };
    }
    if !t.retry.on_error && !t.retry.on_timeout && t.retry.on_status.is_empty() {
        t.retry.tries = 1;
    }
    if let Some(ms) = problems.take(a.duration_ms("proxy-next-upstream-timeout", true)) {
        t.retry.timeout_ms = ms;
    }
    if let Some(n) = problems.take(a.count("upstream-max-fails")) {
        t.max_fails = n;
    }
    t.service_upstream = problems.take(a.bool("service-upstream")).unwrap_or(false);
    t.health_check = health_check(a, problems);
    if t.health_check.is_some() && protocol.is_http2() {
        let msg = format!(
            "annotation health-check-path: health checks speak HTTP/1.1, which a {} backend does not; no active checks",
            protocol.as_str()
        );
        problems.push(Problem::invalid(msg));
        t.health_check = None;
    }
    t
}

/// `health-check-path` and its companions.
fn health_check(a: &Annotations<'_>, problems: &mut Problems) -> Option<HealthCheck> {
    let path = problems.take(a.abs_path("health-check-path"))?;
    let positive = |n: Option<u32>, default| n.filter(|n| *n > 0).unwrap_or(default);
    Some(HealthCheck {
        path,
        interval_ms: problems
            .take(a.duration_ms("health-check-interval", false))
            .unwrap_or(DEFAULT_HEALTH_INTERVAL_MS),
        timeout_ms: problems
            .take(a.duration_ms("health-check-timeout", false))
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT_MS),
        healthy_threshold: positive(
            problems.take(a.count("health-check-healthy-threshold")),
            DEFAULT_HEALTHY_THRESHOLD,
        ),
        unhealthy_threshold: positive(
            problems.take(a.count("health-check-unhealthy-threshold")),
            DEFAULT_UNHEALTHY_THRESHOLD,
        ),
    })
}

/// `proxy-body-size`: the largest request body; `None` takes any (`0`).
pub(super) fn max_body_bytes(a: &Annotations<'_>, problems: &mut Problems) -> Option<u64> {
    match problems.take(a.size_bytes("proxy-body-size")) {
        Some(bytes) => (bytes > 0).then_some(bytes),
        None => Some(DEFAULT_MAX_BODY_BYTES),
    }
}

/// `limit-rate` (KiB a second, `0`: no limit) and `limit-rate-after` (KiB), as ingress-nginx
/// writes them into nginx's `limit_rate` and `limit_rate_after`.
pub(super) fn response_rate(a: &Annotations<'_>, problems: &mut Problems) -> Option<ResponseRate> {
    let kib = problems.take(a.count("limit-rate")).filter(|r| *r > 0)?;
    let after = problems.take(a.count("limit-rate-after")).unwrap_or(0);
    Some(ResponseRate {
        bytes_per_second: u64::from(kib) * 1024,
        after_bytes: u64::from(after) * 1024,
    })
}

/// `mirror-target` (with `mirror-host` and `mirror-request-body`); `None` without it or
/// when it cannot be used (reported: the route serves without a mirror). The target's
/// scheme and host part must be literal, so that no request chooses where its copy, with
/// its cookies, goes; without a path the copy keeps the request's (`$request_uri`), as
/// nginx's `proxy_pass` without a URI does.
pub(super) fn mirror(a: &Annotations<'_>, problems: &mut Problems) -> Option<Mirror> {
    let (key, value) = a.get("mirror-target")?;
    let value = value.trim();
    let bad = |why: &str| {
        Problem::invalid(format!(
            "annotation {key}: value {value:?} {why}; requests are not mirrored"
        ))
    };
    let Some((scheme, rest)) = value.split_once("://") else {
        problems.push(bad("is not an absolute http or https URL"));
        return None;
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '$']).unwrap_or(rest.len()));
    let literal_authority = authority.parse::<http::uri::Authority>().ok();
    let Some(parsed) = literal_authority.filter(|_| matches!(scheme, "http" | "https")) else {
        problems.push(bad(
            "is not an absolute http or https URL with a literal host",
        ));
        return None;
    };
    let target = if path.is_empty() {
        format!("{scheme}://{authority}$request_uri")
    } else {
        value.to_string()
    };
    let template = match Template::parse(&target) {
        Ok(t) => t,
        Err(why) => {
            problems.push(bad(&format!("has {why}")));
            return None;
        }
    };
    let host = match a.get("mirror-host") {
        None => parsed.host().to_string(),
        Some((host_key, h)) => match h.trim().parse::<http::uri::Authority>() {
            Ok(h) if !h.as_str().contains('@') => h.to_string(),
            _ => {
                problems.push(Problem::invalid(format!(
                    "annotation {host_key}: value {h:?} is not a host; the target's is used"
                )));
                parsed.host().to_string()
            }
        },
    };
    let body = problems
        .take(a.on_off("mirror-request-body"))
        .unwrap_or(true);
    Some(Mirror {
        target: template,
        host,
        body,
        backend: None,
        fraction: None,
    })
}

/// `upstream-hash-by-subset-size`: at least 1, 3 by default as in ingress-nginx.
fn hash_subset_size(a: &Annotations<'_>, problems: &mut Problems) -> u32 {
    match problems.take(a.count("upstream-hash-by-subset-size")) {
        Some(0) => {
            let key = a
                .get("upstream-hash-by-subset-size")
                .map(|(k, _)| k)
                .unwrap_or_default();
            problems.push(Problem::invalid(format!(
                "annotation {key}: value \"0\" is not a subset size of at least 1; 3 is used"
            )));
            3
        }
        Some(size) => size,
        None => 3,
    }
}

/// The variables `opentelemetry-operation-name` may use beside a request's: those of the
/// route, as ingress-nginx sets them for each location.
pub(super) const ROUTE_VARIABLES: [&str; 5] = [
    "namespace",
    "ingress_name",
    "service_name",
    "service_port",
    "location_path",
];

/// `enable-opentelemetry`, `opentelemetry-trust-incoming-span` and
/// `opentelemetry-operation-name` (checked here with stand-ins for the route's variables,
/// which each route fills in); `None` when none is set.
pub(super) fn tracing(a: &Annotations<'_>, problems: &mut Problems) -> Option<TracingPolicy> {
    let enabled = problems.take(a.bool("enable-opentelemetry"));
    let trust_incoming = problems.take(a.bool("opentelemetry-trust-incoming-span"));
    let operation_name = a
        .get("opentelemetry-operation-name")
        .and_then(|(key, value)| {
            let stand_in = |n: &str| ROUTE_VARIABLES.contains(&n).then(String::new);
            match Template::parse_with(value.trim(), stand_in) {
                Ok(_) if !value.trim().is_empty() => Some(value.trim().to_string()),
                Ok(_) => None,
                Err(why) => {
                    problems.push(Problem::invalid(format!(
                    "annotation {key}: value {value:?} has {why}; the span keeps its usual name"
                )));
                    None
                }
            }
        });
    if enabled.is_none() && trust_incoming.is_none() && operation_name.is_none() {
        return None;
    }
    Some(TracingPolicy {
        enabled: enabled.unwrap_or(true),
        trust_incoming: trust_incoming.unwrap_or(true),
        operation_name,
    })
}

/// What an Ingress says about tracing its routes; the operation name is still text, as
/// each route fills in its own variables.
#[derive(Debug, Clone)]
pub(super) struct TracingPolicy {
    pub enabled: bool,
    pub trust_incoming: bool,
    pub operation_name: Option<String>,
}

/// ingress-nginx's buffer annotations. Portico streams request and response bodies as
/// they come (for responses, ingress-nginx's own default, `proxy-buffering: off`), so there
/// is no buffer or temporary file to size; they are read so that a bad value is reported
/// as it would be by ingress-nginx's validation.
pub(super) fn buffering(a: &Annotations<'_>, problems: &mut Problems) {
    problems.take(a.on_off("proxy-buffering"));
    for size in [
        "proxy-buffer-size",
        "client-body-buffer-size",
        "proxy-max-temp-file-size",
    ] {
        problems.take(a.size_bytes(size));
    }
    problems.take(a.count("proxy-buffers-number"));
}

/// `affinity: cookie` and the `session-cookie-*` attributes. An empty cookie path stands
/// for each route's own path.
pub(super) fn affinity(a: &Annotations<'_>, problems: &mut Problems) -> Option<SessionAffinity> {
    problems.take(a.affinity())?;
    let cookie = SessionCookie {
        name: problems
            .take(a.token("session-cookie-name"))
            .unwrap_or_else(|| DEFAULT_AFFINITY_COOKIE.to_string()),
        path: problems
            .take(a.abs_path("session-cookie-path"))
            .unwrap_or_default(),
        domain: problems.take(a.attribute("session-cookie-domain")),
        max_age_secs: problems
            .take(a.duration_ms("session-cookie-max-age", false))
            .map(|ms| ms / 1000),
        expires_secs: problems
            .take(a.duration_ms("session-cookie-expires", false))
            .map(|ms| ms / 1000),
        same_site: problems.take(a.same_site()),
        secure: problems
            .take(a.bool("session-cookie-secure"))
            .unwrap_or(false),
        partitioned: problems
            .take(a.bool("session-cookie-partitioned"))
            .unwrap_or(false),
        same_site_none_if_compatible: problems
            .take(a.bool("session-cookie-conditional-samesite-none"))
            .unwrap_or(false),
    };
    Some(SessionAffinity {
        mode: problems
            .take(a.affinity_mode())
            .unwrap_or(AffinityMode::Balanced),
        cookie,
        change_on_failure: problems
            .take(a.bool("session-cookie-change-on-failure"))
            .unwrap_or(false),
    })
}

/// `limit-rps`, `limit-rpm`, `limit-connections` and their companions; `None` when no
/// limit is set.
pub(super) fn rate_limit(a: &Annotations<'_>) -> Result<Option<RateLimit>, InvalidAnnotation> {
    let positive = |v: Option<u32>| v.filter(|n| *n > 0);
    let per_second = positive(a.count("limit-rps")?);
    let per_minute = positive(a.count("limit-rpm")?);
    let concurrent = positive(a.count("limit-connections")?);
    if per_second.is_none() && per_minute.is_none() && concurrent.is_none() {
        return Ok(None);
    }
    let burst_multiplier = a
        .count("limit-burst-multiplier")?
        .filter(|m| *m > 0)
        .unwrap_or(DEFAULT_BURST_MULTIPLIER);
    let exempt = a.cidr_list("limit-allowlist")?.unwrap_or_default();
    Ok(Some(RateLimit {
        per_second,
        per_minute,
        burst_multiplier,
        concurrent,
        exempt,
    }))
}

/// The `canary-*` rules of a `canary: "true"` Ingress named `source`. A bad rule is
/// reported and left out, so the canary gets less traffic, never more.
pub(super) fn canary(a: &Annotations<'_>, source: &SourceRef, problems: &mut Problems) -> Canary {
    let header = problems.take(a.token("canary-by-header")).map(|name| {
        let rule = match (
            problems.take(a.header_value("canary-by-header-value")),
            a.regex("canary-by-header-pattern"),
        ) {
            (Some(value), _) => HeaderRule::Equals(value),
            (None, Ok(Some(pattern))) => HeaderRule::Matches(pattern),
            (None, Ok(None)) => HeaderRule::AlwaysNever,
            // As in ingress-nginx, whose match fails at request time.
            (None, Err(invalid)) => {
                let message = format!(
                    "{}; a request with header {name} goes to the primary backend",
                    invalid.message()
                );
                problems.push(Problem::new(invalid.reason(), message));
                HeaderRule::Primary
            }
        };
        CanaryHeader {
            name: name.to_ascii_lowercase(),
            rule,
        }
    });
    let weight_total = problems
        .take(a.count("canary-weight-total"))
        .filter(|t| *t > 0)
        .unwrap_or(100);
    let weight = match problems.take(a.count("canary-weight")) {
        Some(w) if w > weight_total => {
            let msg =
                format!("annotation canary-weight: {w} is more than canary-weight-total {weight_total}; all traffic goes to the canary");
            problems.push(Problem::invalid(msg));
            weight_total
        }
        w => w.unwrap_or(0),
    };
    Canary {
        backend: String::new(),
        source: source.clone(),
        header,
        cookie: problems.take(a.token("canary-by-cookie")),
        weight,
        weight_total,
        affinity: None,
        sticky: problems.take(a.canary_sticky()).unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::nginx_annotations;

    fn read<T>(
        pairs: &[(&str, &str)],
        f: impl Fn(&Annotations<'_>, &mut Problems) -> T,
    ) -> (T, Vec<String>) {
        let map = nginx_annotations(pairs);
        let mut problems = Problems::default();
        let value = f(&Annotations::new(Some(&map)), &mut problems);
        (value, problems.0.into_iter().map(|p| p.message).collect())
    }

    #[test]
    fn mirror_targets_keep_their_host_literal() {
        let (m, problems) = read(&[("mirror-target", "https://shadow.test:8443")], mirror);
        let m = m.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            m.target.to_string(),
            "https://shadow.test:8443${request_uri}"
        );
        assert_eq!((m.host.as_str(), m.body), ("shadow.test", true));
        let (m, _) = read(
            &[
                ("mirror-target", "http://10.0.0.9/copy$request_uri"),
                ("mirror-host", "copies.test"),
                ("mirror-request-body", "off"),
            ],
            mirror,
        );
        let m = m.unwrap();
        assert_eq!(m.target.to_string(), "http://10.0.0.9/copy${request_uri}");
        assert_eq!((m.host.as_str(), m.body), ("copies.test", false));
        for refused in [
            "http://$host/copy",
            "https://$http_x_target",
            "ftp://a.test/",
            "/relative",
        ] {
            let (m, problems) = read(&[("mirror-target", refused)], mirror);
            assert!(m.is_none(), "{refused}");
            assert!(problems[0].contains("not mirrored"), "{problems:?}");
        }
    }

    #[test]
    fn hash_subsets_take_the_key_and_a_size() {
        let (t, problems) = read(
            &[
                ("upstream-hash-by", "$arg_user"),
                ("upstream-hash-by-subset", "true"),
                ("upstream-hash-by-subset-size", "0"),
            ],
            |a, p| traffic(a, UpstreamProtocol::Http, p),
        );
        assert!(
            matches!(t.balance, Balance::HashSubset { size: 3, .. }),
            "{:?}",
            t.balance
        );
        assert!(problems[0].contains("subset size"), "{problems:?}");
        let (t, _) = read(
            &[
                ("upstream-hash-by", "$arg_user"),
                ("upstream-hash-by-subset-size", "5"),
            ],
            |a, p| traffic(a, UpstreamProtocol::Http, p),
        );
        assert!(
            matches!(t.balance, Balance::ConsistentHash(_)),
            "subset off by default"
        );
    }

    #[test]
    fn tracing_names_take_route_variables_and_report_unknown_ones() {
        let (policy, problems) = read(
            &[(
                "opentelemetry-operation-name",
                "HTTP $request_method $service_name",
            )],
            tracing,
        );
        let policy = policy.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(policy.enabled && policy.trust_incoming);
        assert_eq!(
            policy.operation_name.as_deref(),
            Some("HTTP $request_method $service_name")
        );
        let (policy, problems) = read(
            &[
                ("opentelemetry-operation-name", "$upstream_addr"),
                ("enable-opentelemetry", "false"),
            ],
            tracing,
        );
        assert_eq!(
            policy.map(|p| (p.enabled, p.operation_name)),
            Some((false, None))
        );
        assert!(
            problems[0].contains("unknown variable $upstream_addr"),
            "{problems:?}"
        );
        assert!(read(&[], tracing).0.is_none());
    }

    /// Annotations, and the retry policy expected: on error, on timeout, on statuses, tries.
    type RetryCase<'a> = (&'a [(&'a str, &'a str)], bool, bool, &'a [u16], u32);

    #[test]
    fn retries_follow_proxy_next_upstream_as_nginx_reads_it() {
        let traffic = |pairs: &[(&str, &str)]| {
            read(pairs, |a, p| traffic(a, UpstreamProtocol::Http, p))
                .0
                .retry
        };
        #[rustfmt::skip]
        let cases: &[RetryCase] = &[
            (&[], true, true, &[], 3),
            (&[("proxy-next-upstream", "error http_502")], true, false, &[502], 3),
            (&[("proxy-next-upstream", "off")], false, false, &[], 1),
            (&[("proxy-next-upstream-tries", "0")], true, true, &[], u32::MAX),
            (&[("proxy-next-upstream-tries", "5")], true, true, &[], 5),
        ];
        for (pairs, on_error, on_timeout, on_status, tries) in cases {
            let r = traffic(pairs);
            assert_eq!(
                (r.on_error, r.on_timeout, r.on_status.as_slice(), r.tries),
                (*on_error, *on_timeout, *on_status, *tries),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn a_bad_tuning_value_keeps_its_default_and_is_reported() {
        let (t, problems) = read(
            &[("proxy-read-timeout", "soon"), ("load-balance", "ewma")],
            |a, p| traffic(a, UpstreamProtocol::Http, p),
        );
        assert_eq!(t.read_timeout_ms, TrafficPolicy::default().read_timeout_ms);
        assert_eq!(t.balance, Balance::Ewma);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("proxy-read-timeout") && problems[0].contains("\"soon\""),
            "{problems:?}"
        );
    }

    #[test]
    fn health_checks_are_left_out_for_http2_backends() {
        let pairs = [("health-check-path", "/healthz")];
        let (plain, _) = read(&pairs, |a, p| traffic(a, UpstreamProtocol::Http, p));
        assert_eq!(
            plain.health_check.map(|h| (h.path, h.interval_ms)),
            Some(("/healthz".to_string(), DEFAULT_HEALTH_INTERVAL_MS))
        );
        let (grpc, problems) = read(&pairs, |a, p| traffic(a, UpstreamProtocol::Grpc, p));
        assert!(grpc.health_check.is_none());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn body_size_defaults_to_a_mebibyte_and_zero_lifts_it() {
        assert_eq!(read(&[], max_body_bytes).0, Some(DEFAULT_MAX_BODY_BYTES));
        assert_eq!(
            read(&[("proxy-body-size", "8m")], max_body_bytes).0,
            Some(8 << 20)
        );
        assert_eq!(read(&[("proxy-body-size", "0")], max_body_bytes).0, None);
        assert_eq!(
            read(&[("proxy-body-size", "huge")], max_body_bytes),
            (
                Some(DEFAULT_MAX_BODY_BYTES),
                vec!["annotation nginx.ingress.kubernetes.io/proxy-body-size: value \"huge\" is not a size such as 1m, 512k or 1048576"
                    .to_string()]
            )
        );
    }

    #[test]
    fn rate_limits_need_a_positive_limit_and_fail_on_a_bad_value() {
        let limit = |pairs: &[(&str, &str)]| read(pairs, |a, _| rate_limit(a)).0;
        assert_eq!(limit(&[]), Ok(None));
        assert_eq!(limit(&[("limit-rps", "0")]), Ok(None));
        let set = limit(&[("limit-rps", "10")]).unwrap().unwrap();
        assert_eq!(
            (set.per_second, set.burst_multiplier),
            (Some(10), DEFAULT_BURST_MULTIPLIER)
        );
        assert!(limit(&[("limit-rps", "ten")]).is_err());
    }

    #[test]
    fn a_canary_weight_above_the_total_takes_everything_and_is_reported() {
        let (c, problems) = read(&[("canary-weight", "150")], |a, p| {
            canary(a, &SourceRef::new("ns", "c"), p)
        });
        assert_eq!(
            (c.weight, c.weight_total, c.source.to_string()),
            (100, 100, "ns/c".to_string())
        );
        assert_eq!(problems.len(), 1);
        let (c, _) = read(
            &[
                ("canary-by-header", "X-Canary"),
                ("canary-by-header-pattern", "^(yes|1)$"),
            ],
            |a, p| canary(a, &SourceRef::new("ns", "c"), p),
        );
        assert_eq!(
            c.header.map(|h| (h.name, h.rule)),
            Some((
                "x-canary".to_string(),
                HeaderRule::Matches("^(yes|1)$".into())
            ))
        );
    }
}
