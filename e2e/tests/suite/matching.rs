//! Routing on headers, methods and query parameters; header control; error pages and
//! default backends; the www redirect and the trailing slash, through the real binaries.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{config_map, ingress, service_with_endpoints, to_yaml};

#[tokio::test(flavor = "multi_thread")]
async fn header_method_and_query_routes_sit_beside_the_plain_route() {
    let (servers, mut docs) = backends(&["plain", "beta", "writes", "v2", "admin"]).await;
    docs.push(
        ingress("plain")
            .path("app.test", "Prefix", "/", "plain")
            .build(),
    );
    docs.push(
        ingress("beta")
            .path("app.test", "Prefix", "/", "beta")
            .annotation("portico.io/match-headers", "x-env=beta, x-user~=^[a-z]+$")
            .build(),
    );
    docs.push(
        ingress("writes")
            .path("app.test", "Prefix", "/", "writes")
            .annotation("portico.io/match-methods", "POST, PUT")
            .build(),
    );
    docs.push(
        ingress("v2")
            .path("app.test", "Prefix", "/", "v2")
            .annotation("portico.io/match-query", "version=2\ndebug")
            .build(),
    );
    // Only conditioned routes on /admin: a request that meets none falls through to `/`.
    docs.push(
        ingress("admin")
            .path("app.test", "Prefix", "/admin", "admin")
            .annotation("portico.io/match-headers", "x-admin")
            .build(),
    );
    // A condition that does not parse keeps its Ingress out rather than routing everything.
    docs.push(
        ingress("broken")
            .path("broken.test", "Prefix", "/", "beta")
            .annotation("portico.io/match-headers", "x-env~=(")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let by = |method: &'static str,
              path: &'static str,
              headers: &'static [(&'static str, &'static str)]| {
        let portico = &portico;
        async move {
            portico
                .client
                .request(method, "app.test", path, headers)
                .await
                .unwrap()
                .answered_by()
        }
    };
    assert_eq!(by("GET", "/x", &[]).await, "plain");
    assert_eq!(
        by("GET", "/x", &[("x-env", "beta"), ("x-user", "ann")]).await,
        "beta"
    );
    assert_eq!(
        by("GET", "/x", &[("x-env", "beta"), ("x-user", "Ann1")]).await,
        "plain",
        "every condition must hold"
    );
    assert_eq!(
        by("GET", "/x", &[("x-env", "BETA"), ("x-user", "ann")]).await,
        "plain",
        "values are exact"
    );
    assert_eq!(by("POST", "/x", &[]).await, "writes");
    assert_eq!(by("PUT", "/x", &[]).await, "writes");
    assert_eq!(by("DELETE", "/x", &[]).await, "plain");
    assert_eq!(by("GET", "/x?debug&version=2", &[]).await, "v2");
    assert_eq!(
        by("GET", "/x?version=%32&debug=1", &[]).await,
        "v2",
        "parameters are percent-decoded"
    );
    assert_eq!(by("GET", "/x?version=3&debug", &[]).await, "plain");
    assert_eq!(
        by("GET", "/admin/users", &[("x-admin", "")]).await,
        "admin",
        "presence is enough"
    );
    assert_eq!(by("GET", "/admin/users", &[]).await, "plain");
    assert_eq!(
        portico.client.get("broken.test", "/").await.unwrap().status,
        404
    );
    let logs = portico.logs();
    assert!(
        logs.contains("match-headers") && logs.contains("routes are skipped"),
        "the bad condition is reported"
    );
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn header_edits_apply_both_ways_and_hop_by_hop_fields_stop_at_the_proxy() {
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("edited")
            .path("edit.test", "Prefix", "/", "web")
            .annotation("portico.io/request-headers-set", "X-Env: prod")
            .annotation("portico.io/request-headers-add", "X-Tag: added")
            .annotation("portico.io/request-headers-remove", "x-debug")
            .annotation(
                "portico.io/response-headers-set",
                "X-Frame-Options: DENY\nCache-Control: no-store, private",
            )
            .annotation("portico.io/response-headers-remove", "x-powered-by")
            .annotation("nginx.ingress.kubernetes.io/custom-headers", "security")
            .build(),
    );
    docs.push(config_map(
        "security",
        &[
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "SAMEORIGIN"),
        ],
    ));
    docs.push(
        ingress("denied")
            .path("denied.test", "Prefix", "/", "web")
            .annotation("portico.io/response-headers-set", "X-Frame-Options: DENY")
            .annotation("portico.io/allowlist-source-range", "10.0.0.0/8")
            .build(),
    );
    let portico =
        Portico::start_with(&[("all.yaml", to_yaml(&docs))], &["--hide-server-header"]).await;

    let headers = [
        ("x-env", "dev"),
        ("x-tag", "client"),
        ("x-debug", "1"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
    ];
    let path = "/p?header=x-powered-by:php&header=cache-control:public&header=connection:x-internal&header=x-internal:secret";
    let reply = portico
        .client
        .request("GET", "edit.test", path, &headers)
        .await
        .unwrap();
    let echo = reply.echo().expect("reached the backend");
    assert_eq!(
        echo.headers.get("x-env").map(String::as_str),
        Some("prod"),
        "set replaces"
    );
    assert_eq!(
        echo.headers.get("x-tag").map(String::as_str),
        Some("client, added"),
        "add appends"
    );
    assert!(!echo.headers.contains_key("x-debug"), "remove removes");
    assert!(
        !echo.headers.contains_key("x-hop"),
        "a field the client's Connection names is not forwarded"
    );
    assert_eq!(
        reply.header("x-content-type-options"),
        Some("nosniff"),
        "custom-headers"
    );
    assert_eq!(
        reply.header("x-frame-options"),
        Some("DENY"),
        "response-headers-set wins over custom-headers"
    );
    assert_eq!(
        reply.header("cache-control"),
        Some("no-store, private"),
        "set replaces the upstream's value"
    );
    assert!(reply.header("x-powered-by").is_none());
    assert!(
        reply.header("x-internal").is_none(),
        "a field the upstream's Connection names is not passed on"
    );
    assert!(reply.header("server").is_none(), "--hide-server-header");
    // Portico's own answers carry the route's response headers too.
    let refused = portico.client.get("denied.test", "/").await.unwrap();
    assert_eq!(
        (refused.status, refused.header("x-frame-options")),
        (403, Some("DENY"))
    );
    assert!(refused.header("server").is_none());
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_pages_and_default_backends_answer_for_the_route() {
    let (servers, mut docs) = backends(&["web", "errors", "global"]).await;
    docs.extend(service_with_endpoints("empty", &[]));
    docs.push(
        ingress("pages")
            .path("pages.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/custom-http-errors", "404, 503")
            .annotation("nginx.ingress.kubernetes.io/default-backend", "errors")
            .build(),
    );
    docs.push(
        ingress("fallback")
            .path("fallback.test", "Prefix", "/", "empty")
            .annotation("portico.io/default-backend", "errors")
            .build(),
    );
    docs.push(
        ingress("globalpages")
            .path("global.test", "Prefix", "/", "web")
            .annotation("portico.io/custom-http-errors", "502")
            .build(),
    );
    let portico = Portico::start_full(
        &[("all.yaml", to_yaml(&docs))],
        &["--default-backend-service", "default/global"],
        &[],
    )
    .await;

    let reply = portico
        .client
        .request(
            "GET",
            "pages.test",
            "/missing?status=404",
            &[("accept", "text/html")],
        )
        .await
        .unwrap();
    let page = reply.echo().expect("the error backend answered");
    assert_eq!(page.backend, "errors");
    let header = |name: &str| page.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header("x-code"), "404");
    assert_eq!(header("x-format"), "text/html");
    assert_eq!(header("x-original-uri"), "/missing?status=404");
    assert_eq!(
        (header("x-namespace"), header("x-ingress-name")),
        ("default".into(), "pages".into())
    );
    assert_eq!(
        (header("x-service-name"), header("x-service-port")),
        ("web".into(), "80".into())
    );
    assert_eq!(page.method, "GET");
    let asked = servers[1].request_count();
    let head = portico
        .client
        .request("HEAD", "pages.test", "/gone?status=503", &[])
        .await
        .unwrap();
    assert_eq!(head.body.len(), 0);
    assert_eq!(
        servers[1].request_count(),
        asked + 1,
        "the error backend was asked for the HEAD's page"
    );
    let kept = portico
        .client
        .get("pages.test", "/teapot?status=418")
        .await
        .unwrap();
    assert_eq!(
        (kept.status, kept.answered_by()),
        (418, "web".to_string()),
        "an unlisted status is the upstream's"
    );

    assert!(
        !portico.logs().contains("Fail to proxy"),
        "a page sent is not logged as a failure"
    );

    let fallback = portico.client.get("fallback.test", "/x").await.unwrap();
    assert_eq!(
        fallback.answered_by(),
        "errors",
        "no endpoint: the route's default-backend serves"
    );

    // Without default-backend, the pages come from the global default backend.
    let page = portico
        .client
        .get("global.test", "/?status=502")
        .await
        .unwrap();
    assert_eq!(
        page.echo()
            .map(|e| (e.backend, e.headers.get("x-code").cloned())),
        Some(("global".into(), Some("502".into())))
    );
    assert_eq!(
        portico
            .client
            .get("unknown.test", "/x")
            .await
            .unwrap()
            .answered_by(),
        "global",
        "--default-backend-service"
    );
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn www_redirects_and_the_trailing_slash_of_https_redirects() {
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("www")
            .path("www.shop.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/from-to-www-redirect", "true")
            .build(),
    );
    docs.push(
        ingress("secure")
            .path("secure.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/force-ssl-redirect", "true")
            .build(),
    );
    docs.push(
        ingress("slash")
            .path("slash.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/force-ssl-redirect", "true")
            .annotation(
                "nginx.ingress.kubernetes.io/preserve-trailing-slash",
                "true",
            )
            .build(),
    );
    let portico = Portico::start_with(
        &[("all.yaml", to_yaml(&docs))],
        &["--https-redirect-port", "443"],
    )
    .await;

    let reply = portico.client.get("shop.test", "/cart?id=1").await.unwrap();
    assert_eq!(
        (reply.status, reply.header("location")),
        (308, Some("http://www.shop.test/cart?id=1"))
    );
    assert_eq!(
        portico
            .client
            .get("www.shop.test", "/cart")
            .await
            .unwrap()
            .answered_by(),
        "web"
    );

    let reply = portico.client.get("secure.test", "/dir/").await.unwrap();
    assert_eq!(
        (reply.status, reply.header("location")),
        (308, Some("https://secure.test/dir")),
        "ingress-nginx drops the slash"
    );
    let reply = portico.client.get("secure.test", "/").await.unwrap();
    assert_eq!(reply.header("location"), Some("https://secure.test/"));
    let reply = portico.client.get("slash.test", "/dir/").await.unwrap();
    assert_eq!(
        reply.header("location"),
        Some("https://slash.test/dir/"),
        "preserve-trailing-slash"
    );
    drop(servers);
}
