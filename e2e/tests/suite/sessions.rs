//! Cookie affinity, canaries and active health checks through the real binaries.

use portico_e2e::client::Reply;
use portico_e2e::echo::{echo_servers, EchoServer};
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, service_with_endpoints, to_yaml};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

fn web_service(servers: &[&EchoServer]) -> String {
    to_yaml(&service_with_endpoints(
        "web",
        &servers.iter().map(|s| s.addr).collect::<Vec<SocketAddr>>(),
    ))
}

fn annotated(name: &str, host: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ing = ingress(name).path(host, "Prefix", "/", service);
    for (k, v) in annotations {
        ing = ing.annotation(k, v);
    }
    ing.build()
}

/// The `name=value` of the reply's `Set-Cookie` for `name`, if it set one.
fn set_cookie(reply: &Reply, name: &str) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_string())
}

async fn get_with(portico: &Portico, host: &str, headers: &[(&str, &str)]) -> Reply {
    portico
        .client
        .request("GET", host, "/", headers)
        .await
        .unwrap()
}

async fn affinity_pins_and_repins(mode: &str) {
    let servers = echo_servers(&["a", "b", "c"]).await;
    let files = vec![
        ("web.yaml", web_service(&servers.iter().collect::<Vec<_>>())),
        (
            "ingress.yaml",
            to_yaml(&[annotated(
                "web",
                "t.test",
                "web",
                &[
                    ("nginx.ingress.kubernetes.io/affinity", "cookie"),
                    ("nginx.ingress.kubernetes.io/affinity-mode", mode),
                    ("nginx.ingress.kubernetes.io/session-cookie-max-age", "3600"),
                ],
            )]),
        ),
    ];
    let portico = Portico::start(&files).await;

    let first = get_with(&portico, "t.test", &[]).await;
    assert_eq!(first.status, 200);
    let full = first
        .header("set-cookie")
        .expect("a new client gets a cookie")
        .to_string();
    assert!(
        full.starts_with("INGRESSCOOKIE=")
            && full.contains("; Path=/")
            && full.contains("Max-Age=3600")
            && full.contains("HttpOnly"),
        "{full}"
    );
    let port = |s: &EchoServer| s.addr.port().to_string();
    assert!(
        !full.contains("127.0.0.1") && servers.iter().all(|s| !full.contains(&port(s))),
        "the cookie reveals no address: {full}"
    );
    let cookie = set_cookie(&first, "INGRESSCOOKIE").unwrap();
    let pinned = first.answered_by();
    for _ in 0..30 {
        let r = get_with(&portico, "t.test", &[("cookie", &cookie)]).await;
        assert_eq!(
            r.answered_by(),
            pinned,
            "{mode}: every request with the cookie reaches one endpoint"
        );
        assert!(
            r.header("set-cookie").is_none(),
            "a valid cookie is not replaced"
        );
    }
    // Clients without a cookie are still spread.
    let mut fresh = BTreeMap::new();
    for _ in 0..30 {
        *fresh
            .entry(get_with(&portico, "t.test", &[]).await.answered_by())
            .or_insert(0) += 1;
    }
    assert!(
        fresh.len() >= 2,
        "{mode}: new clients are balanced: {fresh:?}"
    );
    // A forged cookie is balanced as usual and re-pinned.
    let forged = get_with(
        &portico,
        "t.test",
        &[("cookie", "INGRESSCOOKIE=0123456789abcdef0123456789abcdef")],
    )
    .await;
    assert_eq!(forged.status, 200);
    assert!(
        set_cookie(&forged, "INGRESSCOOKIE").is_some(),
        "a forged cookie is replaced"
    );

    // The pinned endpoint goes away: the client is re-pinned and keeps getting 200.
    let remaining: Vec<&EchoServer> = servers.iter().filter(|s| s.name != pinned).collect();
    portico.apply("web.yaml", &web_service(&remaining)).await;
    let moved = get_with(&portico, "t.test", &[("cookie", &cookie)]).await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert_ne!(moved.answered_by(), pinned);
    let repinned_to = moved.answered_by();
    let cookie = match set_cookie(&moved, "INGRESSCOOKIE") {
        Some(new) => new,
        // Balanced: the same key lands on another endpoint of the ring; no new cookie needed.
        None if mode == "balanced" => cookie,
        None => panic!("persistent: a client whose endpoint went away gets a new cookie"),
    };
    for _ in 0..20 {
        let r = get_with(&portico, "t.test", &[("cookie", &cookie)]).await;
        assert_eq!(
            (r.status, r.answered_by()),
            (200, repinned_to.clone()),
            "{mode}: re-pinned for good"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_affinity_pins_a_client_and_repins_it_when_its_endpoint_goes() {
    affinity_pins_and_repins("persistent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn balanced_affinity_pins_a_client_and_repins_it_when_its_endpoint_goes() {
    affinity_pins_and_repins("balanced").await;
}

fn canary_site(
    primary: &EchoServer,
    canary: &EchoServer,
    canary_annotations: &[(&str, &str)],
) -> Vec<(&'static str, String)> {
    let mut services = service_with_endpoints("main", &[primary.addr]);
    services.extend(service_with_endpoints("next", &[canary.addr]));
    let mut canary_annotations = canary_annotations.to_vec();
    canary_annotations.push(("nginx.ingress.kubernetes.io/canary", "true"));
    vec![
        ("services.yaml", to_yaml(&services)),
        (
            "main.yaml",
            to_yaml(&[annotated("main", "shop.test", "main", &[])]),
        ),
        (
            "canary.yaml",
            to_yaml(&[annotated(
                "canary",
                "shop.test",
                "next",
                &canary_annotations,
            )]),
        ),
        // A canary whose host no primary routes.
        (
            "orphan.yaml",
            to_yaml(&[annotated(
                "orphan",
                "orphan.test",
                "next",
                &[
                    ("portico.io/canary", "true"),
                    ("portico.io/canary-weight", "100"),
                ],
            )]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_rules_go_header_then_cookie_then_weight() {
    let servers = echo_servers(&["main", "next"]).await;
    let rules = [
        ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
        ("nginx.ingress.kubernetes.io/canary-by-cookie", "canary"),
        ("nginx.ingress.kubernetes.io/canary-weight", "30"),
    ];
    let portico = Portico::start(&canary_site(&servers[0], &servers[1], &rules)).await;
    let side = |headers: Vec<(&'static str, &'static str)>| {
        let portico = &portico;
        async move { get_with(portico, "shop.test", &headers).await.answered_by() }
    };
    for _ in 0..10 {
        assert_eq!(
            side(vec![("x-canary", "always"), ("cookie", "canary=never")]).await,
            "next",
            "the header outranks the cookie"
        );
        assert_eq!(
            side(vec![("x-canary", "never"), ("cookie", "canary=always")]).await,
            "main"
        );
        assert_eq!(
            side(vec![("x-canary", "other"), ("cookie", "canary=always")]).await,
            "next",
            "then the cookie"
        );
        assert_eq!(side(vec![("cookie", "canary=never")]).await, "main");
    }
    // Then the weight: 30 of 100.
    let mut counts = BTreeMap::new();
    for _ in 0..2000 {
        *counts.entry(side(vec![]).await).or_insert(0usize) += 1;
    }
    let share = 100.0 * counts.get("next").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (share - 30.0).abs() <= 5.0,
        "the canary got {share:.1}%: {counts:?}"
    );

    // A canary without a primary is reported and takes nobody: 404, not the canary.
    assert_eq!(get_with(&portico, "orphan.test", &[]).await.status, 404);
    let config: serde_json::Value =
        serde_json::from_slice(&portico.admin_get("/config").await.unwrap().body).unwrap();
    assert!(
        !config["virtual_hosts"].to_string().contains("orphan.test"),
        "no route for the orphan canary"
    );
    assert!(
        portico.logs().contains("CanaryWithoutPrimary"),
        "the orphan is reported"
    );

    // With a header value, only that value sends to the canary; `always` is just another value.
    let mut by_value = rules.to_vec();
    by_value.push(("nginx.ingress.kubernetes.io/canary-by-header-value", "beta"));
    by_value.retain(|(k, _)| !k.ends_with("canary-weight"));
    by_value.push(("portico.io/canary", "true"));
    portico
        .apply(
            "canary.yaml",
            &to_yaml(&[annotated("canary", "shop.test", "next", &by_value)]),
        )
        .await;
    for _ in 0..10 {
        assert_eq!(side(vec![("x-canary", "beta")]).await, "next");
        assert_eq!(side(vec![("x-canary", "always")]).await, "main");
        assert_eq!(side(vec![]).await, "main", "weight 0");
    }

    // A pattern that does not compile: with the header, the primary, whatever the cookie
    // and the weight say; without it, they decide.
    let broken = [
        ("nginx.ingress.kubernetes.io/canary", "true"),
        ("nginx.ingress.kubernetes.io/canary-by-header", "X-Canary"),
        (
            "nginx.ingress.kubernetes.io/canary-by-header-pattern",
            "(unclosed",
        ),
        ("nginx.ingress.kubernetes.io/canary-weight", "100"),
    ];
    portico
        .apply(
            "canary.yaml",
            &to_yaml(&[annotated("canary", "shop.test", "next", &broken)]),
        )
        .await;
    for _ in 0..10 {
        assert_eq!(side(vec![("x-canary", "always")]).await, "main");
        assert_eq!(side(vec![]).await, "next", "weight 100");
    }
}

/// Which side each of `n` requests carrying `cookie` lands on.
async fn sides_with_cookie(portico: &Portico, cookie: &str, n: usize) -> BTreeMap<String, usize> {
    let mut sides = BTreeMap::new();
    for _ in 0..n {
        *sides
            .entry(
                get_with(portico, "shop.test", &[("cookie", cookie)])
                    .await
                    .answered_by(),
            )
            .or_insert(0) += 1;
    }
    sides
}

/// The canary takes the primary's affinity settings: only the primary Ingress sets them.
#[tokio::test(flavor = "multi_thread")]
async fn a_sticky_canary_keeps_its_clients_and_a_legacy_one_does_not() {
    let servers = echo_servers(&["main", "next"]).await;
    let weight = [("nginx.ingress.kubernetes.io/canary-weight", "50")];
    let mut files = canary_site(&servers[0], &servers[1], &weight);
    files[1].1 = to_yaml(&[annotated(
        "main",
        "shop.test",
        "main",
        &[("nginx.ingress.kubernetes.io/affinity", "cookie")],
    )]);
    let portico = Portico::start(&files).await;

    // Clients land on either side by weight, are given a cookie on either, and each
    // stays where it landed.
    let mut landed = BTreeMap::new();
    let (mut canary_cookie, mut main_cookie) = (None, None);
    for _ in 0..16 {
        let first = get_with(&portico, "shop.test", &[]).await;
        let cookie = set_cookie(&first, "INGRESSCOOKIE")
            .unwrap_or_else(|| panic!("a new client is pinned on {}", first.answered_by()));
        let sides = sides_with_cookie(&portico, &cookie, 10).await;
        assert_eq!(
            sides.len(),
            1,
            "a pinned client stays on one side: {sides:?}"
        );
        assert_eq!(sides.keys().next().unwrap(), &first.answered_by());
        if first.answered_by() == "next" {
            canary_cookie = Some(cookie);
        } else {
            main_cookie = Some(cookie);
        }
        *landed.entry(first.answered_by()).or_insert(0) += 1;
    }
    assert_eq!(
        landed.len(),
        2,
        "16 clients at 50% all landed on one side: {landed:?}"
    );

    // Legacy: the canary decision is made per request, whatever the cookie says, and
    // the canary gives no cookie.
    let mut legacy = weight.to_vec();
    legacy.push((
        "nginx.ingress.kubernetes.io/affinity-canary-behavior",
        "legacy",
    ));
    legacy.push(("nginx.ingress.kubernetes.io/canary", "true"));
    portico
        .apply(
            "canary.yaml",
            &to_yaml(&[annotated("canary", "shop.test", "next", &legacy)]),
        )
        .await;
    let canary_cookie = canary_cookie.expect("one client landed on the canary");
    let sides = sides_with_cookie(&portico, &canary_cookie, 30).await;
    assert!(
        sides.get("main").is_some_and(|n| *n > 0),
        "a legacy canary does not hold its clients: {sides:?}"
    );
    let main_cookie = main_cookie.expect("one client landed on the primary");
    let sides = sides_with_cookie(&portico, &main_cookie, 30).await;
    assert!(
        sides.get("next").is_some_and(|n| *n > 0),
        "the primary's cookie does not keep a client off a legacy canary: {sides:?}"
    );
    for _ in 0..20 {
        let reply = get_with(&portico, "shop.test", &[]).await;
        if reply.answered_by() == "next" {
            assert_eq!(
                set_cookie(&reply, "INGRESSCOOKIE"),
                None,
                "a legacy canary gives no cookie"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn active_health_checks_take_a_failing_endpoint_out_and_bring_it_back() {
    let servers = echo_servers(&["a", "b"]).await;
    let checks = [
        ("portico.io/health-check-path", "/healthz"),
        ("portico.io/health-check-interval", "200ms"),
        ("portico.io/health-check-unhealthy-threshold", "2"),
        ("portico.io/health-check-healthy-threshold", "2"),
    ];
    let files = vec![
        ("web.yaml", web_service(&[&servers[0], &servers[1]])),
        (
            "ingress.yaml",
            to_yaml(&[annotated("web", "t.test", "web", &checks)]),
        ),
    ];
    let portico = Portico::start(&files).await;
    let spread = || async {
        let mut counts = BTreeMap::new();
        for _ in 0..20 {
            *counts
                .entry(
                    portico
                        .client
                        .get("t.test", "/")
                        .await
                        .unwrap()
                        .answered_by(),
                )
                .or_insert(0) += 1;
        }
        counts
    };
    assert_eq!(
        spread().await.len(),
        2,
        "both endpoints serve while healthy"
    );

    // `b` still serves, but its health check fails: it is taken out.
    servers[1].set_healthy(false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let counts = spread().await;
    assert_eq!(
        counts.get("a"),
        Some(&20),
        "a failing endpoint gets no traffic: {counts:?}"
    );

    // Both failing: traffic still goes to all of them rather than a 503.
    servers[0].set_healthy(false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let counts = spread().await;
    assert!(
        counts.keys().all(|k| k == "a" || k == "b"),
        "with every endpoint down, requests are still served: {counts:?}"
    );

    // Healthy again: back in.
    servers[0].set_healthy(true);
    servers[1].set_healthy(true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(spread().await.len(), 2, "recovered endpoints serve again");
}

/// `session-cookie-partitioned` and `session-cookie-conditional-samesite-none`: the
/// affinity cookie carries `Partitioned`, and `SameSite=None` only for browsers that take it.
#[tokio::test(flavor = "multi_thread")]
async fn the_affinity_cookie_leaves_same_site_none_out_for_browsers_that_refuse_it() {
    let servers = echo_servers(&["a"]).await;
    let site = annotated(
        "site",
        "shop.test",
        "web",
        &[
            ("nginx.ingress.kubernetes.io/affinity", "cookie"),
            (
                "nginx.ingress.kubernetes.io/session-cookie-samesite",
                "None",
            ),
            (
                "nginx.ingress.kubernetes.io/session-cookie-conditional-samesite-none",
                "true",
            ),
            (
                "nginx.ingress.kubernetes.io/session-cookie-partitioned",
                "true",
            ),
        ],
    );
    let portico = Portico::start(&[
        ("web.yaml", web_service(&[&servers[0]])),
        ("site.yaml", to_yaml(&[site])),
    ])
    .await;
    let attributes = |reply: Reply| {
        reply
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .expect("an affinity cookie")
    };
    let modern = attributes(
        get_with(
            &portico,
            "shop.test",
            &[("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")],
        )
        .await,
    );
    assert!(
        modern.contains("; SameSite=None") && modern.contains("; Partitioned"),
        "{modern}"
    );
    let chrome_60 = attributes(
        get_with(
            &portico,
            "shop.test",
            &[("user-agent", "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.90 Safari/537.36")],
        )
        .await,
    );
    assert!(
        !chrome_60.contains("SameSite") && chrome_60.contains("; Partitioned"),
        "{chrome_60}"
    );
}
