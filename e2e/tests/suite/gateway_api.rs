//! Gateway API in manifests mode, after the conformance suite's GATEWAY-HTTP tests
//! (`HTTPRouteSimpleSameNamespace`, `HTTPRouteMatching`, `HTTPRouteHeaderMatching`,
//! `HTTPRouteQueryParamMatching`, `HTTPRouteMethodMatching`, `HTTPRouteRedirectPath`,
//! `HTTPRouteRewritePath`, `HTTPRouteRequestHeaderModifier`, `HTTPRouteWeight`,
//! `HTTPRouteInvalidNonExistentBackendRef`, `HTTPRouteHostnameIntersection`,
//! `HTTPRouteInvalidCrossNamespaceBackendRef`, `HTTPRouteReferenceGrant`, and the
//! extended mirror, CORS and timeout tests, and frontend client-certificate validation):
//! traffic
//! through the real binaries, and one proxy serving an Ingress and an HTTPRoute.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, service_with_endpoints, to_yaml};
use serde_json::{json, Value};

fn class_and_gateway(listeners: Value) -> Vec<Value> {
    vec![
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "portico"},
               "spec": {"controllerName": "portico.io/gateway-controller"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "gw", "namespace": "default"},
               "spec": {"gatewayClassName": "portico", "listeners": listeners}}),
    ]
}

fn http_route(name: &str, namespace: &str, hostnames: Value, rules: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"parentRefs": [{"name": "gw", "namespace": "default"}],
                    "hostnames": hostnames, "rules": rules}})
}

fn backend(name: &str) -> Value {
    json!({"name": name, "port": 80})
}

#[tokio::test(flavor = "multi_thread")]
async fn http_routes_match_filter_and_split_as_the_conformance_suite_expects() {
    let (_servers, mut docs) = backends(&["v1", "v2", "v3"]).await;
    docs.extend(class_and_gateway(json!([
        {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "*.example.com"},
        {"name": "elsewhere", "protocol": "HTTP", "port": 8081}
    ])));
    docs.push(http_route("matching", "default", json!(["api.example.com"]), json!([
        {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": [backend("v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [backend("v1")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": [backend("v2")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                      "headers": [{"name": "Version", "value": "three"}]}],
         "backendRefs": [backend("v3")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                      "queryParams": [{"name": "animal", "value": "whale"}]}],
         "backendRefs": [backend("v2")]},
        {"matches": [{"method": "POST"}], "backendRefs": [backend("v3")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect",
                      "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                                          "statusCode": 301}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/prefix/one"}}],
         "filters": [{"type": "URLRewrite",
                      "urlRewrite": {"hostname": "rewritten.example.org",
                                     "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/one"}}},
                     {"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "X-Set", "value": "set"}],
                                                "add": [{"name": "X-Added", "value": "added"}],
                                                "remove": ["X-Remove"]}}],
         "backendRefs": [backend("v2")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/split"}}],
         "backendRefs": [{"name": "v1", "port": 80, "weight": 1}, {"name": "v2", "port": 80, "weight": 1},
                         {"name": "v3", "port": 80, "weight": 0}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
         "backendRefs": [{"name": "v1", "port": 80, "weight": 1}, {"name": "nowhere", "port": 80, "weight": 1}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/none"}}]}
    ])));
    // A second host, whose route names no hostname: it gets the listener's wildcard.
    docs.push(http_route(
        "wildcard",
        "default",
        json!([]),
        json!([
            {"backendRefs": [backend("v3")]}
        ]),
    ));
    // Another namespace: not allowed by the listener (allowedRoutes defaults to Same).
    docs.push(http_route(
        "foreign",
        "other",
        json!(["foreign.example.com"]),
        json!([
            {"backendRefs": [backend("v1")]}
        ]),
    ));
    let portico = Portico::start(&[("gateway.yaml", to_yaml(&docs))]).await;
    let c = &portico.client;
    let by = |r: portico_e2e::client::Reply| r.answered_by();

    let host = "api.example.com";
    assert_eq!(by(c.get(host, "/").await.unwrap()), "v1");
    assert_eq!(by(c.get(host, "/exact").await.unwrap()), "v1");
    assert_eq!(
        by(c.get(host, "/v2/x").await.unwrap()),
        "v2",
        "longest prefix"
    );
    let header = c
        .request("GET", host, "/", &[("version", "three")])
        .await
        .unwrap();
    assert_eq!(by(header), "v3", "a header match beats the plain prefix");
    assert_eq!(
        by(c.get(host, "/?animal=whale").await.unwrap()),
        "v2",
        "query match"
    );
    let post = c.request("POST", host, "/", &[]).await.unwrap();
    assert_eq!(by(post), "v3", "method match");

    let redirect = c.get(host, "/old/lemon?x=1").await.unwrap();
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.header("location"),
        Some("http://api.example.com/new/lemon?x=1")
    );

    let rewritten = c
        .request("GET", host, "/prefix/one/two?q=1", &[("x-remove", "gone")])
        .await
        .unwrap();
    let echo = rewritten.echo().expect("an echo backend answered");
    assert_eq!(echo.backend, "v2");
    assert_eq!(echo.path, "/one/two");
    assert_eq!(echo.query, "q=1");
    assert_eq!(echo.host, "rewritten.example.org");
    assert_eq!(echo.headers.get("x-set").map(String::as_str), Some("set"));
    assert_eq!(
        echo.headers.get("x-added").map(String::as_str),
        Some("added")
    );
    assert!(!echo.headers.contains_key("x-remove"));

    // Who answers 200 requests for `path`, and how often.
    let tally = |path: &'static str| async move {
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..200 {
            *seen
                .entry(c.get(host, path).await.unwrap().answered_by())
                .or_default() += 1;
        }
        seen
    };
    let seen = tally("/split").await;
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        ["v1", "v2"],
        "{seen:?}"
    );
    assert!(seen.values().all(|n| *n > 50), "roughly even: {seen:?}");

    let missing = tally("/missing").await;
    assert_eq!(
        missing.keys().cloned().collect::<Vec<_>>(),
        ["status:500", "v1"],
        "the share of a missing backend is answered 500: {missing:?}"
    );
    assert_eq!(
        c.get(host, "/none").await.unwrap().status,
        500,
        "no backendRefs"
    );

    assert_eq!(
        by(c.get("deep.sub.example.com", "/").await.unwrap()),
        "v3",
        "the listener's wildcard covers many labels"
    );
    assert_eq!(by(c.get("other.example.com", "/").await.unwrap()), "v3");
    assert_eq!(
        c.get("example.org", "/").await.unwrap().status,
        404,
        "outside the listener's hostname"
    );
    assert_eq!(
        c.get("foreign.example.com", "/")
            .await
            .unwrap()
            .answered_by(),
        "v3",
        "a route of another namespace is not attached; the wildcard route answers"
    );

    let config = portico.admin_get("/config").await.unwrap().text();
    assert!(
        config.contains("HTTPRoute"),
        "the snapshot names the route kind"
    );
    let state = portico.admin_get("/api/state").await.unwrap().text();
    assert!(
        state.contains("HTTPRoute default/matching"),
        "the dashboard names the route"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_namespace_backend_needs_a_reference_grant() {
    let (servers, mut docs) = backends(&["local"]).await;
    let elsewhere = &servers[0];
    let mut other = service_with_endpoints("shared", &[elsewhere.addr]);
    for d in &mut other {
        d["metadata"]["namespace"] = json!("backends");
    }
    docs.extend(other);
    docs.extend(class_and_gateway(json!([
        {"name": "http", "protocol": "HTTP", "port": 80,
         "allowedRoutes": {"namespaces": {"from": "All"}}}
    ])));
    docs.push(http_route(
        "cross",
        "default",
        json!(["cross.test"]),
        json!([
            {"backendRefs": [{"name": "shared", "namespace": "backends", "port": 80}]}
        ]),
    ));
    let portico = Portico::start(&[("gateway.yaml", to_yaml(&docs))]).await;
    let c = &portico.client;
    assert_eq!(
        c.get("cross.test", "/").await.unwrap().status,
        500,
        "not granted"
    );

    docs.push(json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "routes-to-shared", "namespace": "backends"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
                 "to": [{"group": "", "kind": "Service", "name": "shared"}]}}));
    let before = portico.applied_version().await;
    portico.write("gateway.yaml", &to_yaml(&docs));
    portico.wait_for_version_after(before).await;
    assert_eq!(
        c.get("cross.test", "/").await.unwrap().answered_by(),
        "local"
    );
}

/// The extended filters and fields, after `HTTPRouteRequestMirror`,
/// `HTTPRouteRequestPercentageMirror`, `HTTPRouteCORS`, `HTTPRouteTimeoutRequest` and
/// `HTTPRouteTimeoutBackendRequest`.
#[tokio::test(flavor = "multi_thread")]
async fn mirrors_cors_and_timeouts_act_as_the_conformance_suite_expects() {
    let (servers, mut docs) = backends(&["v1", "shadow", "halves"]).await;
    docs.extend(class_and_gateway(
        json!([{"name": "http", "protocol": "HTTP", "port": 80}]),
    ));
    let mirror = |to: &str, share: Value| {
        let mut m = json!({"backendRef": {"name": to, "port": 80}});
        m.as_object_mut()
            .unwrap()
            .extend(share.as_object().unwrap().clone());
        json!({"type": "RequestMirror", "requestMirror": m})
    };
    let prefix = |p: &str| json!([{"path": {"type": "PathPrefix", "value": p}}]);
    docs.push(http_route(
        "extended",
        "default",
        json!(["ext.test"]),
        json!([
            {"matches": prefix("/mirror"), "filters": [mirror("shadow", json!({}))],
             "backendRefs": [backend("v1")]},
            {"matches": prefix("/half"), "filters": [mirror("halves", json!({"percent": 50}))],
             "backendRefs": [backend("v1")]},
            {"matches": prefix("/lost"), "filters": [mirror("nowhere", json!({}))],
             "backendRefs": [backend("v1")]},
            {"matches": prefix("/cors-1"),
             "filters": [{"type": "CORS", "cors": {
                 "allowOrigins": ["https://www.foo.com", "https://*.bar.com"],
                 "allowMethods": ["GET", "OPTIONS"],
                 "allowHeaders": ["x-header-1", "x-header-2"],
                 "exposeHeaders": ["x-header-3", "x-header-4"],
                 "allowCredentials": true, "maxAge": 3600}}],
             "backendRefs": [backend("v1")]},
            {"matches": prefix("/request-timeout"), "timeouts": {"request": "500ms"},
             "backendRefs": [backend("v1")]},
            {"matches": prefix("/disable-request-timeout"), "timeouts": {"request": "0s"},
             "backendRefs": [backend("v1")]},
            {"matches": prefix("/backend-timeout"), "timeouts": {"backendRequest": "500ms"},
             "backendRefs": [backend("v1")]}
        ]),
    ));
    let portico = Portico::start(&[("gateway.yaml", to_yaml(&docs))]).await;
    let c = &portico.client;
    let host = "ext.test";
    let (shadow, halves) = (&servers[1], &servers[2]);

    for _ in 0..10 {
        let r = c
            .request("POST", host, "/mirror/orders", &[])
            .await
            .unwrap();
        assert_eq!(
            r.answered_by(),
            "v1",
            "the client's answer is the backend's"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while shadow.request_count() < 10 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(shadow.request_count(), 10, "every request is copied");

    for _ in 0..200 {
        assert_eq!(c.get(host, "/half").await.unwrap().answered_by(), "v1");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let copied = halves.request_count();
    assert!(
        (50..=150).contains(&copied),
        "about half of 200 requests copied, not {copied}"
    );
    assert_eq!(
        c.get(host, "/lost").await.unwrap().answered_by(),
        "v1",
        "a mirror whose Service is missing copies nothing and harms nothing"
    );

    let preflight = |origin: &'static str| async move {
        c.request(
            "OPTIONS",
            host,
            "/cors-1",
            &[
                ("origin", origin),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-header-1, x-header-2"),
            ],
        )
        .await
        .unwrap()
    };
    for origin in ["https://www.foo.com", "https://xpto.www.bar.com"] {
        let r = preflight(origin).await;
        assert!([200, 204].contains(&r.status), "{origin}: {}", r.status);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, OPTIONS")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("x-header-3, x-header-4")
        );
        assert_eq!(r.header("access-control-max-age"), Some("3600"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    }
    let refused = preflight("https://foobar.com").await;
    assert_eq!(refused.header("access-control-allow-origin"), None);
    let simple = c
        .request("GET", host, "/cors-1", &[("origin", "https://www.foo.com")])
        .await
        .unwrap();
    assert_eq!(simple.answered_by(), "v1");
    assert_eq!(
        simple.header("access-control-allow-origin"),
        Some("https://www.foo.com")
    );

    assert_eq!(c.get(host, "/request-timeout").await.unwrap().status, 200);
    let slow = std::time::Instant::now();
    let r = c.get(host, "/request-timeout?sleep_ms=3000").await.unwrap();
    assert_eq!(r.status, 504, "past the request timeout");
    assert!(
        slow.elapsed() < std::time::Duration::from_millis(2500),
        "answered at the timeout, not after the backend: {:?}",
        slow.elapsed()
    );
    let r = c
        .get(host, "/disable-request-timeout?sleep_ms=1000")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "0s: no timeout");
    let r = c.get(host, "/backend-timeout?sleep_ms=1000").await.unwrap();
    assert_eq!(r.status, 504, "past the backend request timeout");
    assert_eq!(c.get(host, "/backend-timeout").await.unwrap().status, 200);
}

/// An Ingress and an HTTPRoute for different hosts on one proxy; then the Ingress's host
/// moves to the HTTPRoute without a failed request.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_moves_from_an_ingress_to_an_http_route_without_a_failed_request() {
    let (_servers, mut docs) = backends(&["old", "new"]).await;
    let legacy = ingress("legacy")
        .path("shop.test", "Prefix", "/", "old")
        .build();
    docs.extend(class_and_gateway(
        json!([{"name": "http", "protocol": "HTTP", "port": 80}]),
    ));
    docs.push(http_route(
        "api",
        "default",
        json!(["api.test"]),
        json!([{"backendRefs": [backend("new")]}]),
    ));
    let mut with_ingress = docs.clone();
    with_ingress.push(legacy);
    let portico = Portico::start(&[("cluster.yaml", to_yaml(&with_ingress))]).await;
    let c = portico.client.clone();
    assert_eq!(c.get("shop.test", "/").await.unwrap().answered_by(), "old");
    assert_eq!(c.get("api.test", "/").await.unwrap().answered_by(), "new");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut answered = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c.get("shop.test", "/cart").await.unwrap();
                if r.status != 200 {
                    failures.push(r.status);
                }
                answered.insert(r.answered_by());
            }
            (failures, answered)
        })
    };
    // Step 1: the HTTPRoute takes the host too (the Ingress is older and keeps it).
    let mut both = with_ingress.clone();
    both.push(http_route(
        "shop",
        "default",
        json!(["shop.test"]),
        json!([{"backendRefs": [backend("new")]}]),
    ));
    let before = portico.applied_version().await;
    portico.write("cluster.yaml", &to_yaml(&both));
    portico.wait_for_version_after(before).await;
    // Step 2: the Ingress goes; the HTTPRoute serves the host.
    let mut moved = docs.clone();
    moved.push(http_route(
        "shop",
        "default",
        json!(["shop.test"]),
        json!([{"backendRefs": [backend("new")]}]),
    ));
    let before = portico.applied_version().await;
    portico.write("cluster.yaml", &to_yaml(&moved));
    portico.wait_for_version_after(before).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (failures, answered) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "failed requests during the move: {failures:?}"
    );
    assert_eq!(c.get("shop.test", "/").await.unwrap().answered_by(), "new");
    assert!(
        answered.contains("old") && answered.contains("new"),
        "{answered:?}"
    );
}

fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

fn is(conditions: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

/// Kubernetes mode: the Gateway API kinds are watched, traffic follows them, and the
/// leader writes the status the spec asks for, once, keeping transition times.
#[tokio::test(flavor = "multi_thread")]
async fn status_of_classes_gateways_and_routes_is_written_in_kubernetes_mode() {
    use portico_e2e::kube_api::TestApiServer;
    use std::time::Duration;
    let api = TestApiServer::start().await.expect("test API server");
    let (_servers, docs) = backends(&["v1"]).await;
    api.apply_all(&docs);
    api.apply_all(&class_and_gateway(json!([
        {"name": "http", "protocol": "HTTP", "port": 80},
        {"name": "raw", "protocol": "SCTP", "port": 9000}
    ])));
    let route = http_route(
        "web",
        "default",
        json!(["web.test"]),
        json!([{"backendRefs": [backend("v1")]}]),
    );
    api.apply(&route);
    let portico = Portico::start_kube(&api, &["--publish-status-address", "192.0.2.7"], &[]).await;
    portico
        .wait_until("the HTTPRoute serves", |p| async move {
            p.client
                .get("web.test", "/")
                .await
                .is_ok_and(|r| r.answered_by() == "v1")
        })
        .await;
    let written = |api: &TestApiServer| {
        let class = api.get(
            "gateway.networking.k8s.io/v1",
            "GatewayClass",
            "",
            "portico",
        )?;
        let gw = api.get("gateway.networking.k8s.io/v1", "Gateway", "default", "gw")?;
        let route = api.get(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "default",
            "web",
        )?;
        Some((class, gw, route))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (class, gw, route) = loop {
        if let Some((c, g, r)) = written(&api) {
            if is(&c["status"]["conditions"], "Accepted", "True", "Accepted")
                && !g["status"]["listeners"].is_null()
                && !r["status"]["parents"].is_null()
            {
                break (c, g, r);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no status written\n{}",
            portico.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(class["status"]["conditions"][0]["observedGeneration"], 1);
    let status = &gw["status"];
    assert!(
        is(
            &status["conditions"],
            "Accepted",
            "True",
            "ListenersNotValid"
        ),
        "{status:#}"
    );
    assert!(
        is(&status["conditions"], "Programmed", "True", "Programmed"),
        "{status:#}"
    );
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "192.0.2.7"}])
    );
    let listener = |name: &str| {
        status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(listener("http")["attachedRoutes"], 1);
    assert_eq!(
        listener("http")["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
               {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}])
    );
    assert!(is(
        &listener("raw")["conditions"],
        "Accepted",
        "False",
        "UnsupportedProtocol"
    ));
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["controllerName"], "portico.io/gateway-controller");
    assert_eq!(parent["parentRef"]["name"], "gw");
    assert!(is(&parent["conditions"], "Accepted", "True", "Accepted"));
    assert!(is(
        &parent["conditions"],
        "ResolvedRefs",
        "True",
        "ResolvedRefs"
    ));
    let since = condition(&parent["conditions"], "Accepted").unwrap()["lastTransitionTime"].clone();

    // A new generation of the route that names a missing Service: ResolvedRefs turns
    // False with the new observedGeneration; Accepted keeps its transition time.
    let mut broken = route.clone();
    broken["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("nowhere");
    api.apply(&broken);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = api
            .get(
                "gateway.networking.k8s.io/v1",
                "HTTPRoute",
                "default",
                "web",
            )
            .unwrap();
        let conditions = &r["status"]["parents"][0]["conditions"];
        if is(conditions, "ResolvedRefs", "False", "BackendNotFound") {
            assert_eq!(r["metadata"]["generation"], 2);
            assert_eq!(
                condition(conditions, "ResolvedRefs").unwrap()["observedGeneration"],
                2
            );
            assert_eq!(
                condition(conditions, "Accepted").unwrap()["lastTransitionTime"],
                since
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ResolvedRefs not updated\n{}",
            portico.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        portico.client.get("web.test", "/").await.unwrap().status,
        500
    );

    // Status is written once: translating again writes nothing more.
    let writes = |api: &TestApiServer| {
        api.writes()
            .iter()
            .filter(|w| w.contains("gateway.networking.k8s.io") && w.ends_with("/status"))
            .count()
    };
    let before = writes(&api);
    api.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated", "namespace": "default"}, "data": {"a": "b"}}));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        writes(&api),
        before,
        "status written again though nothing changed: {:#?}",
        api.writes()
    );
}

/// Without the Gateway API CRDs, the controller says so once and serves Ingresses.
#[tokio::test(flavor = "multi_thread")]
async fn without_gateway_api_crds_ingresses_are_still_served() {
    use portico_e2e::kube_api::TestApiServer;
    let api = TestApiServer::start().await.expect("test API server");
    api.without_gateway_api();
    let (_servers, docs) = backends(&["a"]).await;
    api.apply_all(&docs);
    api.apply(&portico_e2e::manifests::ingress_class(
        "portico",
        "portico.io/ingress-controller",
        false,
    ));
    api.apply(&ingress("web").path("web.test", "Prefix", "/", "a").build());
    let portico = Portico::start_kube(&api, &[], &[]).await;
    portico
        .wait_until("the Ingress serves", |p| async move {
            p.client
                .get("web.test", "/")
                .await
                .is_ok_and(|r| r.answered_by() == "a")
        })
        .await;
    assert!(
        portico.logs().contains("Gateway API is not served here"),
        "{}",
        portico.logs()
    );
}

/// GRPCRoute (after `GRPCExactMethodMatching`): method matches pick the backend, over
/// h2c to the proxy and gRPC to the backends.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_routes_pick_backends_by_service_and_method() {
    use portico_e2e::grpc::{GrpcClient, GrpcServer};
    let any = || "127.0.0.1:0".parse().unwrap();
    let g1 = GrpcServer::start("g1", any(), None).await.unwrap();
    let g2 = GrpcServer::start("g2", any(), None).await.unwrap();
    let mut docs = service_with_endpoints("g1", &[g1.addr]);
    docs.extend(service_with_endpoints("g2", &[g2.addr]));
    docs.extend(class_and_gateway(
        json!([{"name": "http", "protocol": "HTTP", "port": 80}]),
    ));
    docs.push(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"name": "echo", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["grpc.test"], "rules": [
            {"matches": [{"method": {"service": "portico.test.Echo", "method": "Unary"}}],
             "backendRefs": [{"name": "g2", "port": 80}]},
            {"matches": [{"method": {"service": "portico.test.Echo"}}],
             "backendRefs": [{"name": "g1", "port": 80}]}
        ]}}),
    );
    let portico = Portico::start(&[("grpc.yaml", to_yaml(&docs))]).await;
    let mut client = GrpcClient::connect(portico.http, "grpc.test", false)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", portico.logs()));
    let reply = client
        .unary("hi", None)
        .await
        .unwrap_or_else(|s| panic!("{s:?}\n{}", portico.logs()));
    let text = String::from_utf8_lossy(reply.get_ref()).into_owned();
    assert!(
        text.starts_with("backend=g2 "),
        "the exact method's rule: {text}"
    );
    let counted = client.count(2).await.unwrap_or_else(|s| panic!("{s:?}"));
    assert_eq!(counted, ["0", "1"], "the service's rule (to g1) streams");
    let status = portico
        .client
        .get("grpc.test", "/other.Service/X")
        .await
        .unwrap()
        .status;
    assert_eq!(status, 404, "no rule for another service");
}

/// HTTPS listeners (after `HTTPRouteHTTPSListener`): each listener's certificate by SNI,
/// a wildcard listener's for its names, and routes served over TLS.
#[tokio::test(flavor = "multi_thread")]
async fn https_listeners_present_their_certificates_and_serve_their_routes() {
    use portico_e2e::manifests::tls_secret;
    use portico_e2e::tls::{self, ClientOptions, TestCa};
    let ca = TestCa::new("gateway ca");
    let exact = ca.issue(&["secure.example.org"]);
    let wild = ca.issue(&["*.wild.example.org"]);
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("exact-cert", &exact.cert_pem, &exact.key_pem));
    docs.push(tls_secret("wild-cert", &wild.cert_pem, &wild.key_pem));
    docs.extend(class_and_gateway(json!([
        {"name": "exact", "protocol": "HTTPS", "port": 443, "hostname": "secure.example.org",
         "tls": {"certificateRefs": [{"name": "exact-cert"}]}},
        {"name": "wild", "protocol": "HTTPS", "port": 443, "hostname": "*.wild.example.org",
         "tls": {"certificateRefs": [{"name": "wild-cert"}]}}
    ])));
    docs.push(http_route(
        "secure",
        "default",
        json!([]),
        json!([{"backendRefs": [backend("web")]}]),
    ));
    let portico = Portico::start(&[("https.yaml", to_yaml(&docs))]).await;
    for (name, cn) in [
        ("secure.example.org", "secure.example.org"),
        ("a.b.wild.example.org", "*.wild.example.org"),
    ] {
        let opts = ClientOptions {
            sni: Some(name),
            ..Default::default()
        };
        let (stream, hs) = tls::connect(portico.https, opts).await.unwrap();
        assert_eq!(hs.subject_cn, cn, "the certificate for {name}");
        let reply = tls::get(stream, name, "/").await.unwrap();
        assert_eq!(
            reply.answered_by(),
            "web",
            "{name} over TLS\n{}",
            portico.logs()
        );
    }
    assert_eq!(
        portico
            .client
            .get("secure.example.org", "/")
            .await
            .unwrap()
            .status,
        404,
        "a route attached to HTTPS listeners only is not served over plain HTTP"
    );
}

/// After `GatewayFrontendClientCertificateValidation` and its insecure fallback: the
/// Gateway's `spec.tls.frontend` makes its HTTPS listeners ask clients for certificates
/// signed by the CA of a ConfigMap.
#[tokio::test(flavor = "multi_thread")]
async fn frontend_validation_admits_only_clients_with_a_certificate_from_the_ca() {
    use portico_e2e::manifests::{config_map, tls_secret};
    use portico_e2e::tls::{self, ClientOptions, TestCa};
    let server_ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let rogue_ca = TestCa::new("rogue ca");
    let alice = client_ca.issue(&["alice"]);
    let mallory = rogue_ca.issue(&["alice"]);
    let (_servers, mut docs) = backends(&["web"]).await;
    for host in ["strict.example.org", "lenient.example.org"] {
        let issued = server_ca.issue(&[host]);
        docs.push(tls_secret(host, &issued.cert_pem, &issued.key_pem));
    }
    docs.push(config_map(
        "client-ca",
        &[("ca.crt", &client_ca.cert_pem())],
    ));
    docs.push(class_and_gateway(json!([]))[0].clone());
    for (name, mode) in [
        ("strict", "AllowValidOnly"),
        ("lenient", "AllowInsecureFallback"),
    ] {
        let host = format!("{name}.example.org");
        docs.push(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"gatewayClassName": "portico",
                     "tls": {"frontend": {"default": {"validation": {
                         "caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "client-ca"}],
                         "mode": mode}}}},
                     "listeners": [{"name": "https", "protocol": "HTTPS", "port": 443,
                                    "hostname": host, "tls": {"certificateRefs": [{"name": host}]}}]}}));
        let mut route = http_route(
            name,
            "default",
            json!([]),
            json!([{"backendRefs": [backend("web")]}]),
        );
        route["spec"]["parentRefs"] = json!([{"name": name}]);
        docs.push(route);
    }
    let portico = Portico::start(&[("mtls.yaml", to_yaml(&docs))]).await;
    let status = |host: &'static str, certificate| {
        let addr = portico.https;
        async move {
            let opts = ClientOptions {
                sni: Some(host),
                certificate,
                alpn: &["http/1.1"],
                ..ClientOptions::default()
            };
            let (stream, _) = tls::connect(addr, opts).await.expect("handshake");
            tls::get(stream, host, "/").await.expect("an answer").status
        }
    };
    let strict = "strict.example.org";
    assert_eq!(
        status(strict, Some(&alice)).await,
        200,
        "{}",
        portico.logs()
    );
    assert_eq!(status(strict, None).await, 400, "no certificate");
    assert_eq!(status(strict, Some(&mallory)).await, 400, "another CA's");
    let lenient = "lenient.example.org";
    for (who, certificate) in [
        ("alice", Some(&alice)),
        ("nobody", None),
        ("mallory", Some(&mallory)),
    ] {
        assert_eq!(
            status(lenient, certificate).await,
            200,
            "AllowInsecureFallback lets {who} in"
        );
    }
}

/// TCPRoute and TLSRoute on the L4 data plane (after `TLSRouteSimpleSameNamespace`):
/// redis-cli through a TCP listener's port to redis-server, and a TLS client through a
/// passthrough listener to `openssl s_server`, whose own certificate it sees.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_and_tls_routes_relay_to_real_servers() {
    use portico_e2e::harness::free_port;
    use portico_e2e::l4::{openssl_s_server, redis_server, run};
    use portico_e2e::tls::{self, ClientOptions, TestCa};
    let redis = redis_server().await;
    let ca = TestCa::new("passthrough ca");
    let vault_cert = ca.issue(&["vault.example.org"]);
    let vault = openssl_s_server(&vault_cert).await;
    let port = free_port();
    let mut docs = service_with_endpoints("redis", &[redis.addr]);
    docs.extend(service_with_endpoints("vault", &[vault.addr]));
    docs.extend(class_and_gateway(json!([
        {"name": "redis", "protocol": "TCP", "port": port},
        {"name": "tls", "protocol": "TLS", "port": 443, "hostname": "*.example.org",
         "tls": {"mode": "Passthrough"}},
        {"name": "reserved", "protocol": "TCP", "port": 8443}
    ])));
    docs.push(
        json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
        "metadata": {"name": "redis", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "gw", "sectionName": "redis"}],
                 "rules": [{"backendRefs": [{"name": "redis", "port": 80}]}]}}),
    );
    docs.push(
        json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TLSRoute",
        "metadata": {"name": "vault", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "gw", "sectionName": "tls"}],
                 "hostnames": ["vault.example.org"],
                 "rules": [{"backendRefs": [{"name": "vault", "port": 80}]}]}}),
    );
    let portico = Portico::start_full(
        &[("l4.yaml", to_yaml(&docs))],
        &[],
        &["--stream-bind", "127.0.0.1", "--enable-ssl-passthrough"],
    )
    .await;
    portico
        .wait_until("the TCP listener's port relays to redis", |_| async move {
            let p = port.to_string();
            run("redis-cli", &["-h", "127.0.0.1", "-p", &p, "PING"])
                .await
                .trim()
                == "PONG"
        })
        .await;
    let p = port.to_string();
    let set = run("redis-cli", &["-h", "127.0.0.1", "-p", &p, "SET", "k", "v"]).await;
    assert_eq!(set.trim(), "OK");

    let opts = ClientOptions {
        sni: Some("vault.example.org"),
        ..Default::default()
    };
    let (stream, hs) = tls::connect(portico.https, opts).await.unwrap();
    assert_eq!(
        hs.serial, vault_cert.serial,
        "the backend's own certificate"
    );
    let reply = tls::get(stream, "vault.example.org", "/").await.unwrap();
    assert!(reply.text().contains("s_server"), "{}", reply.text());

    let config = portico.admin_get("/config").await.unwrap().text();
    assert!(
        config.contains("vault.example.org"),
        "passthrough host in the snapshot"
    );
}

/// Kubernetes mode with TCPRoutes served and UDPRoutes not (experimental-channel CRDs
/// come one by one): the missing kind is left out, the TCPRoute relays and gets status.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_routes_are_watched_where_served_and_a_missing_route_kind_blocks_nothing() {
    use portico_e2e::harness::free_port;
    use portico_e2e::kube_api::TestApiServer;
    use portico_e2e::l4::{redis_server, run};
    let api = TestApiServer::start().await.expect("test API server");
    api.without_kind("udproutes");
    let redis = redis_server().await;
    api.apply_all(&service_with_endpoints("redis", &[redis.addr]));
    let port = free_port();
    api.apply_all(&class_and_gateway(
        json!([{"name": "redis", "protocol": "TCP", "port": port}]),
    ));
    api.apply(
        &json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
        "metadata": {"name": "redis", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"backendRefs": [{"name": "redis", "port": 80}]}]}}),
    );
    let portico = Portico::start_kube(&api, &[], &["--stream-bind", "127.0.0.1"]).await;
    portico
        .wait_until("the TCPRoute relays to redis", |_| async move {
            let p = port.to_string();
            run("redis-cli", &["-h", "127.0.0.1", "-p", &p, "PING"])
                .await
                .trim()
                == "PONG"
        })
        .await;
    portico
        .wait_until("the TCPRoute's parent accepts it", |_| {
            let route = api.get(
                "gateway.networking.k8s.io/v1alpha2",
                "TCPRoute",
                "default",
                "redis",
            );
            async move {
                route.is_some_and(|r| {
                    is(
                        &r["status"]["parents"][0]["conditions"],
                        "Accepted",
                        "True",
                        "Accepted",
                    )
                })
            }
        })
        .await;
    assert!(
        portico.logs().contains("UDPRoute"),
        "the missing kind is named in the log"
    );
}
