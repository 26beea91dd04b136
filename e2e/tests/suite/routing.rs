//! Routing through the real binaries: manifests in, HTTP over loopback out.

use portico_e2e::echo::{backends, EchoServer};
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, ingress_class, service_with_endpoints, to_yaml};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn file(docs: Vec<Value>) -> String {
    to_yaml(&docs)
}

/// Every row of the Kubernetes path-matching examples (shared/reference
/// k8s-ingress-matching.md §3, row 27 being optional), each on its own host.
#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_path_matching_table() {
    // (row, rules as "Type /path", requests, expected rule index or None for 404)
    type Row = (
        u32,
        &'static [&'static str],
        &'static [&'static str],
        Option<usize>,
    );
    let rows: &[Row] = &[
        (
            1,
            &["Prefix /"],
            &["/", "/anything", "/a/b/c", "/foo?x=1"],
            Some(0),
        ),
        (2, &["Exact /foo"], &["/foo"], Some(0)),
        (3, &["Exact /foo"], &["/bar"], None),
        (4, &["Exact /foo"], &["/foo/"], None),
        (5, &["Exact /foo"], &["/FOO"], None),
        (6, &["Exact /foo/"], &["/foo"], None),
        (7, &["Exact /foo/"], &["/foo/"], Some(0)),
        (8, &["Prefix /foo"], &["/foo"], Some(0)),
        (9, &["Prefix /foo"], &["/foo/"], Some(0)),
        (10, &["Prefix /foo"], &["/foo/bar"], Some(0)),
        (11, &["Prefix /foo"], &["/foobar", "/fo", "/Foo"], None),
        (12, &["Prefix /foo/"], &["/foo"], Some(0)),
        (13, &["Prefix /foo/"], &["/foo/"], Some(0)),
        (14, &["Prefix /aaa/bb"], &["/aaa/bbb"], None),
        (15, &["Prefix /aaa/bbb"], &["/aaa/bbb"], Some(0)),
        (16, &["Prefix /aaa/bbb/"], &["/aaa/bbb"], Some(0)),
        (17, &["Prefix /aaa/bbb"], &["/aaa/bbb/"], Some(0)),
        (18, &["Prefix /aaa/bbb"], &["/aaa/bbb/ccc"], Some(0)),
        (19, &["Prefix /aaa/bbb"], &["/aaa/bbbxyz"], None),
        (20, &["Prefix /", "Prefix /aaa"], &["/aaa/ccc"], Some(1)),
        (
            21,
            &["Prefix /", "Prefix /aaa", "Prefix /aaa/bbb"],
            &["/aaa/bbb"],
            Some(2),
        ),
        (
            22,
            &["Prefix /", "Prefix /aaa", "Prefix /aaa/bbb"],
            &["/ccc"],
            Some(0),
        ),
        (
            23,
            &["Prefix /", "Prefix /aaa", "Prefix /aaa/bbb"],
            &["/aaa", "/aaa/", "/aaa/bbbx"],
            Some(1),
        ),
        (24, &["Prefix /aaa"], &["/ccc"], None),
        (25, &["Prefix /foo", "Exact /foo"], &["/foo"], Some(1)),
        (
            26,
            &["Prefix /foo", "Exact /foo"],
            &["/foo/", "/foo/x"],
            Some(0),
        ),
        (
            28,
            &["Prefix /foo", "Exact /foo/bar", "Prefix /foo/bar"],
            &["/foo/bar"],
            Some(1),
        ),
        (
            29,
            &["Prefix /foo", "Exact /foo/bar", "Prefix /foo/bar"],
            &["/foo/bar/", "/foo/bar/baz"],
            Some(2),
        ),
        (
            30,
            &["Exact /foo/bar", "Prefix /foo"],
            &["/foo/bar/"],
            Some(1),
        ),
    ];
    let service = |row: u32, i: usize| format!("r{row}-{i}");
    let names: Vec<String> = rows
        .iter()
        .flat_map(|(row, rules, _, _)| (0..rules.len()).map(move |i| service(*row, i)))
        .collect();
    let (_servers, mut docs) =
        backends(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut ing = ingress("paths");
    for (row, rules, _, _) in rows {
        for (i, rule) in rules.iter().enumerate() {
            let (kind, path) = rule.split_once(' ').unwrap();
            ing = ing.path(
                &format!("row{row}.paths.test"),
                kind,
                path,
                &service(*row, i),
            );
        }
    }
    docs.push(ing.build());
    let portico = Portico::start(&[("paths.yaml", file(docs))]).await;

    let mut failures = Vec::new();
    for (row, rules, requests, expected) in rows {
        let want = expected.map_or("status:404".to_string(), |i| service(*row, i));
        for req in *requests {
            let got = portico
                .client
                .get(&format!("row{row}.paths.test"), req)
                .await
                .unwrap()
                .answered_by();
            if got != want {
                failures.push(format!(
                    "row {row}: rules {rules:?}, GET {req}: expected {want}, got {got}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn host_rules_with_wildcards_and_a_catch_all() {
    let (_servers, mut docs) = backends(&["service1", "service2", "service3", "exact-bar"]).await;
    docs.push(
        ingress("wildcard")
            .path("foo.bar.com", "Prefix", "/bar", "service1")
            .path("*.foo.com", "Prefix", "/foo", "service2")
            .path("bar.foo.com", "Prefix", "/only-exact", "exact-bar")
            .build(),
    );
    docs.push(
        ingress("catch-all")
            .path("", "Prefix", "/catch", "service3")
            .build(),
    );
    let portico = Portico::start(&[("hosts.yaml", file(docs))]).await;

    let cases = [
        ("foo.bar.com", "/bar", "service1"),
        ("foo.bar.com", "/bar/x", "service1"),
        ("FOO.BAR.COM", "/bar", "service1"),
        ("foo.bar.com:80", "/bar", "service1"),
        ("foo.bar.com", "/foo", "status:404"),
        ("baz.foo.com", "/foo", "service2"),
        ("baz.foo.com", "/foo/x", "service2"),
        ("baz.foo.com", "/bar", "status:404"),
        ("baz.bar.foo.com", "/foo", "status:404"),
        ("foo.com", "/foo", "status:404"),
        // An exact host beats a wildcard that also matches; the wildcard's paths do not apply.
        ("bar.foo.com", "/only-exact", "exact-bar"),
        ("bar.foo.com", "/foo", "status:404"),
        // Rules without a host take what no host rule took.
        ("third.bar.com", "/catch", "service3"),
        ("127.0.0.1", "/catch/x", "service3"),
        ("foo.com", "/catch", "service3"),
    ];
    for (host, path, want) in cases {
        let got = portico.client.get(host, path).await.unwrap().answered_by();
        assert_eq!(got, want, "Host {host} GET {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn default_backend_and_class_admission() {
    let (_servers, mut docs) = backends(&[
        "fallback",
        "site",
        "legacy",
        "classless",
        "other",
        "ghost",
        "later-default",
    ])
    .await;
    docs.push(ingress_class(
        "portico",
        "portico.io/ingress-controller",
        true,
    ));
    docs.push(ingress_class(
        "other",
        "example.com/other-controller",
        false,
    ));
    docs.push(ingress("a-default").default_backend("fallback").build());
    docs.push(
        ingress("b-second-default")
            .default_backend("later-default")
            .build(),
    );
    docs.push(
        ingress("site")
            .path("site.test", "Prefix", "/", "site")
            .build(),
    );
    docs.push(
        ingress("legacy")
            .class(None)
            .annotation("kubernetes.io/ingress.class", "portico")
            .path("legacy.test", "Prefix", "/", "legacy")
            .build(),
    );
    docs.push(
        ingress("classless")
            .class(None)
            .path("classless.test", "Prefix", "/", "classless")
            .build(),
    );
    docs.push(
        ingress("other")
            .class(Some("other"))
            .path("other.test", "Prefix", "/", "other")
            .build(),
    );
    docs.push(
        ingress("ghost")
            .class(Some("ghost"))
            .path("ghost.test", "Prefix", "/", "ghost")
            .build(),
    );
    let portico = Portico::start(&[("classes.yaml", file(docs))]).await;

    let cases = [
        ("site.test", "/anything", "site"),
        ("legacy.test", "/", "legacy"),
        // portico is the default class, so an Ingress without a class is ours.
        ("classless.test", "/", "classless"),
        // Other classes and unknown classes are not admitted: their hosts fall to the default backend.
        ("other.test", "/", "fallback"),
        ("ghost.test", "/", "fallback"),
        ("nowhere.test", "/x", "fallback"),
    ];
    for (host, path, want) in cases {
        assert_eq!(
            portico.client.get(host, path).await.unwrap().answered_by(),
            want,
            "Host {host} GET {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_default_class_classless_ingresses_are_ignored() {
    let (_servers, mut docs) = backends(&["classless", "site"]).await;
    docs.push(ingress_class(
        "portico",
        "portico.io/ingress-controller",
        false,
    ));
    docs.push(
        ingress("classless")
            .class(None)
            .path("classless.test", "Prefix", "/", "classless")
            .build(),
    );
    docs.push(
        ingress("site")
            .path("site.test", "Prefix", "/", "site")
            .build(),
    );
    let portico = Portico::start(&[("c.yaml", file(docs))]).await;
    assert_eq!(
        portico
            .client
            .get("site.test", "/")
            .await
            .unwrap()
            .answered_by(),
        "site"
    );
    assert_eq!(
        portico
            .client
            .get("classless.test", "/")
            .await
            .unwrap()
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_reaches_all_ten_endpoints() {
    // Ten pods of one Service: same port, different loopback addresses.
    let first = EchoServer::start("pod-1", "127.0.0.11:0".parse().unwrap())
        .await
        .unwrap();
    let port = first.addr.port();
    let mut pods = vec![first];
    for i in 2..=10 {
        let addr: SocketAddr = format!("127.0.0.{}:{port}", 10 + i).parse().unwrap();
        pods.push(EchoServer::start(&format!("pod-{i}"), addr).await.unwrap());
    }
    let mut docs = service_with_endpoints("web", &pods.iter().map(|p| p.addr).collect::<Vec<_>>());
    docs.push(
        ingress("web")
            .path("web.test", "Prefix", "/", "web")
            .build(),
    );
    let portico = Portico::start(&[("web.yaml", file(docs))]).await;

    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..100 {
        let reply = portico.client.get("web.test", "/").await.unwrap();
        assert_eq!(reply.status, 200);
        *hits.entry(reply.answered_by()).or_default() += 1;
    }
    assert_eq!(hits.len(), 10, "every endpoint should be reached: {hits:?}");
    assert!(
        hits.values().all(|n| *n == 10),
        "round robin should be even: {hits:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_forwarded_unchanged_with_forwarding_headers() {
    let (_servers, mut docs) = backends(&["api"]).await;
    docs.extend(service_with_endpoints("empty", &[]));
    docs.push(
        ingress("api")
            .path("api.test", "Prefix", "/api", "api")
            .path("api.test", "Prefix", "/empty", "empty")
            .path("api.test", "Prefix", "/missing", "no-such-service")
            .build(),
    );
    let portico =
        Portico::start_with(&[("api.yaml", file(docs))], &["--public-http-port", "8000"]).await;

    let reply = portico
        .client
        .request(
            "DELETE",
            "API.test:8123",
            "/api/v1/items%20x/?b=2&a=1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("server"), Some("portico"));
    assert!(reply.header("date").is_some());
    let echo = reply.echo().unwrap();
    assert_eq!(
        (
            echo.method.as_str(),
            echo.path.as_str(),
            echo.query.as_str()
        ),
        ("DELETE", "/api/v1/items%20x/", "b=2&a=1")
    );
    assert_eq!(echo.host, "API.test:8123", "Host is passed through as sent");
    let h = |n: &str| echo.headers.get(n).cloned().unwrap_or_default();
    // The client is not a trusted proxy: what it claims is replaced, not appended to.
    assert_eq!(h("x-forwarded-for"), "127.0.0.1");
    assert_eq!(h("x-real-ip"), "127.0.0.1");
    assert_eq!(h("x-forwarded-proto"), "http");
    assert_eq!(h("x-forwarded-host"), "API.test:8123");
    assert_eq!(h("x-forwarded-port"), "8000", "the port behind the Service");

    let not_found = portico
        .client
        .get("api.test", "/nothing-here")
        .await
        .unwrap();
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.text(), "404 Not Found\n");
    assert_eq!(not_found.header("server"), Some("portico"));
    assert!(not_found.header("date").is_some());
    let unknown_host = portico.client.get("unknown.test", "/api").await.unwrap();
    assert_eq!(unknown_host.status, 404);

    for path in ["/empty", "/missing/x"] {
        let reply = portico.client.get("api.test", path).await.unwrap();
        assert_eq!(reply.status, 503, "{path}");
        assert_eq!(reply.text(), "503 Service Unavailable\n");
        assert_eq!(reply.header("server"), Some("portico"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_may_extend_forwarding_headers() {
    let (_servers, mut docs) = backends(&["api"]).await;
    docs.push(
        ingress("api")
            .path("api.test", "Prefix", "/", "api")
            .build(),
    );
    let portico = Portico::start_with(
        &[("api.yaml", file(docs))],
        &["--trusted-proxies", "127.0.0.0/8"],
    )
    .await;
    let reply = portico
        .client
        .request(
            "GET",
            "api.test",
            "/",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "public.example"),
            ],
        )
        .await
        .unwrap();
    let echo = reply.echo().unwrap();
    assert_eq!(echo.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(echo.headers["x-forwarded-proto"], "https");
    assert_eq!(echo.headers["x-forwarded-host"], "public.example");
}

/// `--forwarded-for-header`: behind a CDN that names the client in its own header, the
/// allowlists and `X-Real-IP` see that client.
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_own_client_header_names_the_client() {
    let (_servers, mut docs) = backends(&["api"]).await;
    docs.push(
        ingress("api")
            .path("api.test", "Prefix", "/", "api")
            .annotation(
                "nginx.ingress.kubernetes.io/allowlist-source-range",
                "203.0.113.0/24",
            )
            .build(),
    );
    let portico = Portico::start_with(
        &[("api.yaml", file(docs))],
        &[
            "--trusted-proxies",
            "127.0.0.0/8",
            "--forwarded-for-header",
            "CF-Connecting-IP",
        ],
    )
    .await;
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let client = &portico.client;
        async move {
            client
                .request("GET", "api.test", "/", headers)
                .await
                .unwrap()
        }
    };
    let reply = get(&[("cf-connecting-ip", "203.0.113.9")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().unwrap().headers["x-real-ip"], "203.0.113.9");
    assert_eq!(
        get(&[("x-forwarded-for", "203.0.113.9")]).await.status,
        403,
        "X-Forwarded-For is not the header this proxy names the client in"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_changes_are_served_within_a_second_without_failed_requests() {
    let (_servers, mut docs) = backends(&["steady", "v1", "v2"]).await;
    let base = docs.clone();
    docs.push(
        ingress("steady")
            .path("steady.test", "Prefix", "/", "steady")
            .build(),
    );
    let portico = Arc::new(Portico::start(&[("steady.yaml", file(docs.clone()))]).await);

    // A client that keeps sending on its keep-alive connection throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (client, stop, sent, failed) = (
            portico.client.clone(),
            stop.clone(),
            sent.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match client.get("steady.test", "/").await {
                    Ok(r) if r.status == 200 && r.answered_by() == "steady" => {}
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(format!("{other:?}"));
                    }
                }
            }
            failures
        })
    };

    for (round, target) in ["v1", "v2", "v1", "v2", "v1"].iter().enumerate() {
        let mut docs = base.clone();
        docs.push(
            ingress("steady")
                .path("steady.test", "Prefix", "/", "steady")
                .build(),
        );
        docs.push(
            ingress("changing")
                .path("changing.test", "Prefix", "/", target)
                .build(),
        );
        let written = Instant::now();
        portico.write("changing.yaml", &file(docs));
        loop {
            let got = portico
                .client
                .get("changing.test", "/")
                .await
                .unwrap()
                .answered_by();
            if got == *target {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(1),
                "round {round}: change to {target} not served within 1 s (still {got})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(
        sent.load(Ordering::Relaxed) > 50,
        "the client should have kept sending"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during swaps: {failures:?}"
    );

    // The first snapshot travels whole; each change after it only as what changed.
    let proxy_log = std::fs::read_to_string(portico.log_path("proxy")).unwrap();
    let sent_as: Vec<&str> = proxy_log
        .lines()
        .filter(|l| l.contains("snapshot applied"))
        .filter_map(|l| l.split("sent_as=").nth(1)?.split(' ').next())
        .collect();
    assert_eq!(sent_as.first(), Some(&"\"whole\""), "{proxy_log}");
    assert!(
        sent_as.len() > 5 && sent_as[1..].iter().all(|s| *s == "\"delta\""),
        "{proxy_log}"
    );
    assert!(!proxy_log.contains("refused"), "{proxy_log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_manifests_are_skipped_and_the_rest_applies() {
    let (_servers, mut docs) = backends(&["good"]).await;
    docs.push(
        ingress("good")
            .path("good.test", "Prefix", "/", "good")
            .build(),
    );
    let broken_ingress = ingress("bad-host")
        .path("10.0.0.1", "Prefix", "/", "good")
        .path("ok-half.test", "Prefix", "/", "good")
        .build();
    let portico = Portico::start(&[
        ("good.yaml", file(docs)),
        ("broken.yaml", "apiVersion: v1\nkind: [unclosed\n".to_string()),
        ("invalid.yaml", file(vec![broken_ingress])),
        (
            "wrong-shape.json",
            r#"{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"x"},"spec":{"rules":"nope"}}"#.to_string(),
        ),
    ])
    .await;
    assert_eq!(
        portico
            .client
            .get("good.test", "/")
            .await
            .unwrap()
            .answered_by(),
        "good"
    );
    // The valid rule of a partly invalid Ingress still applies.
    assert_eq!(
        portico
            .client
            .get("ok-half.test", "/")
            .await
            .unwrap()
            .answered_by(),
        "good"
    );

    let logs = std::fs::read_to_string(portico.log_path("controller")).unwrap();
    assert!(
        logs.contains("broken.yaml") && logs.contains("document=0"),
        "parse error should name file and document:\n{logs}"
    );
    assert!(logs.contains("wrong-shape.json"), "{logs}");
    assert!(
        logs.contains("InvalidHost") && logs.contains(r#"spec.rules[0].host "10.0.0.1""#),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_report_readiness_config_and_metrics() {
    let (_servers, mut docs) = backends(&["m"]).await;
    docs.push(
        ingress("m")
            .path("metrics.test", "Prefix", "/", "m")
            .build(),
    );
    let portico = Portico::start(&[("m.yaml", file(docs))]).await;

    assert_eq!(portico.admin_get("/healthz").await.unwrap().status, 200);
    assert_eq!(portico.admin_get("/readyz").await.unwrap().status, 200);
    let config: Value =
        serde_json::from_slice(&portico.admin_get("/config").await.unwrap().body).unwrap();
    assert!(config["version"].as_u64().unwrap() > 0);
    assert_eq!(config["virtual_hosts"][0]["host"], "metrics.test");

    for _ in 0..3 {
        portico.client.get("metrics.test", "/").await.unwrap();
    }
    portico.client.get("metrics.test", "/").await.unwrap();
    portico
        .client
        .get("elsewhere.test", "/secret/path")
        .await
        .unwrap();
    // Requests are counted as they finish, just after the client has its answer.
    portico
        .wait_until("both requests are counted", |p| async move {
            let metrics = p.admin_get("/metrics").await.unwrap().text();
            metrics.contains(
                r#"portico_requests_total{code="2xx",host="metrics.test",ingress="m",namespace="default",path="/",service="m"} 4"#,
            ) && metrics.contains(r#"portico_requests_total{code="4xx",host="_unmatched",ingress="",namespace="",path="",service=""} 1"#)
        })
        .await;
    let metrics = portico.admin_get("/metrics").await.unwrap().text();
    assert!(
        !metrics.contains("secret") && !metrics.contains("elsewhere"),
        "request data must not become labels"
    );

    // A removed route is gone after the next snapshot, which the version shows.
    let before = portico.applied_version().await;
    portico.remove("m.yaml");
    portico.wait_for_version_after(before).await;
    assert_eq!(
        portico
            .client
            .get("metrics.test", "/")
            .await
            .unwrap()
            .status,
        404
    );
    let hosts: BTreeSet<String> =
        serde_json::from_slice::<Value>(&portico.admin_get("/config").await.unwrap().body).unwrap()
            ["virtual_hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["host"].to_string())
            .collect();
    assert!(hosts.is_empty(), "{hosts:?}");
}

/// With a poll interval of a minute, only the directory watch can pick a change up in time.
#[tokio::test(flavor = "multi_thread")]
async fn the_manifests_directory_is_watched_not_only_polled() {
    let (_servers, base) = backends(&["one", "two"]).await;
    let route = |svc: &str| {
        to_yaml(&[ingress("watched")
            .path("watched.test", "Prefix", "/", svc)
            .build()])
    };
    let files = [
        ("backends.yaml", to_yaml(&base)),
        ("route.yaml", route("one")),
    ];
    let portico = Portico::start_full(&files, &["--manifests-poll-ms", "60000"], &[]).await;
    assert_eq!(
        portico
            .client
            .get("watched.test", "/")
            .await
            .unwrap()
            .answered_by(),
        "one"
    );
    portico.apply("route.yaml", &route("two")).await;
    assert_eq!(
        portico
            .client
            .get("watched.test", "/")
            .await
            .unwrap()
            .answered_by(),
        "two"
    );
}

/// An ExternalName Service, as in the cluster: `spec.externalName`, and the Ingresses'
/// port mapped to the target's.
fn external_name_service(name: &str, target: &str, target_port: u16) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ExternalName", "externalName": target,
            "ports": [{"port": portico_e2e::manifests::SERVICE_PORT, "targetPort": target_port}],
        },
    })
}

/// ExternalName Services are resolved in the controller's background and routed to; one
/// that points inside the node (here: loopback) is refused unless the controller allows it.
#[tokio::test(flavor = "multi_thread")]
async fn external_name_services_are_resolved_and_loopback_is_refused_by_default() {
    let (servers, _) = backends(&["outside"]).await;
    let port = servers[0].addr.port();
    let docs = vec![
        external_name_service("by-address", "127.0.0.1", port),
        external_name_service("by-name", "localhost.", port),
        ingress("external")
            .path("address.test", "Prefix", "/", "by-address")
            .path("name.test", "Prefix", "/", "by-name")
            .build(),
    ];
    let files = [("external.yaml", file(docs))];

    let refused = Portico::start(&files).await;
    let reply = refused.client.get("address.test", "/").await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.text());
    let config = refused.admin_get("/config").await.unwrap().text();
    assert!(
        config.contains("127.0.0.1, a loopback address, which ExternalName Services may not reach"),
        "{config}"
    );
    drop(refused);

    let allowed = Portico::start_full(&files, &["--external-name-allow-local"], &[]).await;
    for host in ["address.test", "name.test"] {
        allowed
            .wait_until(&format!("{host} is resolved and served"), |p| async move {
                p.client.get(host, "/").await.is_ok_and(|r| r.status == 200)
            })
            .await;
        let reply = allowed.client.get(host, "/").await.unwrap();
        assert_eq!(reply.answered_by(), "outside");
    }
}
