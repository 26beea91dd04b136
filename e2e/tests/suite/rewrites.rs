//! Regex paths, rewrites and redirects through the real binaries.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, to_yaml};

#[tokio::test(flavor = "multi_thread")]
async fn rewrite_targets_fill_capture_groups_and_regex_routes_come_in_ingress_nginx_order() {
    let (servers, mut docs) = backends(&["api", "plain", "exact"]).await;
    docs.push(
        ingress("rewrite")
            .path(
                "r.test",
                "ImplementationSpecific",
                "/something(/|$)(.*)",
                "api",
            )
            .annotation("nginx.ingress.kubernetes.io/rewrite-target", "/$2")
            .annotation(
                "nginx.ingress.kubernetes.io/x-forwarded-prefix",
                "/something",
            )
            .annotation("nginx.ingress.kubernetes.io/upstream-vhost", "internal.api")
            .annotation("nginx.ingress.kubernetes.io/enable-rewrite-log", "true")
            .annotation(
                "nginx.ingress.kubernetes.io/server-alias",
                "alias.test, *.aliases.test",
            )
            .build(),
    );
    docs.push(
        ingress("regex")
            .path("o.test", "ImplementationSpecific", "/v[0-9]+/users", "api")
            .path("o.test", "ImplementationSpecific", "/v[0-9]+/.*", "plain")
            .path("o.test", "Exact", "/v1/users", "exact")
            .annotation("nginx.ingress.kubernetes.io/use-regex", "true")
            .build(),
    );
    docs.push(
        ingress("prefix")
            .path("o.test", "Prefix", "/v1", "exact")
            .path("o.test", "Prefix", "/", "plain")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let reply = portico
        .client
        .get("r.test", "/something/new/path?a=1")
        .await
        .unwrap();
    let echo = reply.echo().expect("reached the backend");
    assert_eq!(
        (echo.path.as_str(), echo.query.as_str()),
        ("/new/path", "a=1"),
        "the second capture group, query kept"
    );
    assert_eq!(echo.host, "internal.api", "upstream-vhost");
    // enable-rewrite-log: the rewrite is written to the proxy's log.
    portico
        .wait_until("the rewrite's log line", |p| async move {
            p.logs().contains("portico::rewrite")
        })
        .await;
    let logs = portico.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("portico::rewrite"))
        .unwrap();
    assert!(
        line.contains("/something/new/path") && line.contains("/new/path?a=1"),
        "{line}"
    );
    assert_eq!(
        echo.headers.get("x-forwarded-prefix").map(String::as_str),
        Some("/something")
    );
    assert_eq!(
        portico
            .client
            .get("r.test", "/something")
            .await
            .unwrap()
            .echo()
            .unwrap()
            .path,
        "/"
    );
    assert_eq!(
        portico
            .client
            .get("r.test", "/SOMETHING/x")
            .await
            .unwrap()
            .echo()
            .unwrap()
            .path,
        "/x",
        "patterns are case-insensitive"
    );
    assert_eq!(
        portico.client.get("r.test", "/other").await.unwrap().status,
        404,
        "anchored: nothing else matches"
    );
    for alias in ["alias.test", "one.aliases.test"] {
        let echo = portico
            .client
            .get(alias, "/something/via/alias")
            .await
            .unwrap()
            .echo()
            .expect("an alias serves the routes");
        assert_eq!(echo.path, "/via/alias", "{alias}");
    }

    // On a host with regex paths every path is a pattern, tried longest first, as
    // ingress-nginx writes them as `location ~*` blocks ordered by length.
    let by = |path: &'static str| {
        let portico = &portico;
        async move {
            portico
                .client
                .get("o.test", path)
                .await
                .unwrap()
                .answered_by()
        }
    };
    assert_eq!(
        by("/v1/users").await,
        "api",
        "the longer pattern beats the shorter Exact path"
    );
    assert_eq!(by("/v2/users").await, "api");
    assert_eq!(by("/v2/orders").await, "plain");
    assert_eq!(
        by("/v1/orders").await,
        "plain",
        "the longer pattern beats the shorter prefix"
    );
    assert_eq!(
        by("/V1x").await,
        "exact",
        "a Prefix path is a case-insensitive pattern there"
    );
    assert_eq!(by("/elsewhere").await, "plain");
    drop(servers);
}

/// cert-manager's HTTP-01 solver adds an Ingress for one path on the application's host;
/// the application's `rewrite-target` must not swallow it.
#[tokio::test(flavor = "multi_thread")]
async fn an_acme_solver_path_beside_a_rewrite_reaches_the_solver_unrewritten() {
    let (servers, mut docs) = backends(&["app", "solver"]).await;
    docs.push(
        ingress("app")
            .path("c.test", "Prefix", "/", "app")
            .annotation("nginx.ingress.kubernetes.io/rewrite-target", "/")
            .build(),
    );
    let challenge = "/.well-known/acme-challenge/Xk2b9_token";
    docs.push(
        ingress("cm-acme-http-solver-7x2kq")
            .path("c.test", "ImplementationSpecific", challenge, "solver")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let echo = portico
        .client
        .get("c.test", challenge)
        .await
        .unwrap()
        .echo()
        .expect("reached a backend");
    assert_eq!(
        (echo.backend.as_str(), echo.path.as_str()),
        ("solver", challenge)
    );
    let echo = portico
        .client
        .get("c.test", "/pages/1")
        .await
        .unwrap()
        .echo()
        .unwrap();
    assert_eq!((echo.backend.as_str(), echo.path.as_str()), ("app", "/"));
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_answer_with_their_code_and_target() {
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("moved")
            .path("moved.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://new.example$request_uri",
            )
            .build(),
    );
    docs.push(
        ingress("moved308")
            .path("m308.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://new.example/",
            )
            .annotation("nginx.ingress.kubernetes.io/permanent-redirect-code", "308")
            .build(),
    );
    docs.push(
        ingress("temp")
            .path("temp.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/temporal-redirect",
                "$scheme://maintenance.$host/",
            )
            .annotation(
                "nginx.ingress.kubernetes.io/permanent-redirect",
                "https://ignored.example/",
            )
            .build(),
    );
    docs.push(
        ingress("temp307")
            .path("t307.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/temporal-redirect",
                "/elsewhere",
            )
            .annotation("nginx.ingress.kubernetes.io/temporal-redirect-code", "307")
            .build(),
    );
    for (name, flag) in [
        ("relative", "nginx.ingress.kubernetes.io/relative-redirects"),
        ("port", "nginx.ingress.kubernetes.io/use-port-in-redirects"),
    ] {
        docs.push(
            ingress(name)
                .path(&format!("{name}.test"), "Prefix", "/", "web")
                .annotation(
                    "nginx.ingress.kubernetes.io/temporal-redirect",
                    "/elsewhere",
                )
                .annotation(flag, "true")
                .build(),
        );
    }
    docs.push(
        ingress("root")
            .path("root.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/app-root", "/app")
            .annotation(
                "nginx.ingress.kubernetes.io/configuration-snippet",
                "more_set_headers \"X: y\";",
            )
            .annotation("nginx.ingress.kubernetes.io/proxy-ssl-protocols", "TLSv1.3")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    for (host, path, code, location) in [
        ("moved.test", "/a/b?c=d", 301, "https://new.example/a/b?c=d"),
        ("m308.test", "/x", 308, "https://new.example/"),
        ("temp.test", "/x", 302, "http://maintenance.temp.test/"),
        ("t307.test", "/x", 307, "http://t307.test/elsewhere"),
        ("relative.test", "/x", 302, "/elsewhere"),
        ("root.test", "/", 302, "http://root.test/app"),
        (
            "port.test",
            "/x",
            302,
            &format!("http://port.test:{}/elsewhere", portico.http.port()),
        ),
    ] {
        let reply = portico.client.get(host, path).await.unwrap();
        assert_eq!(
            (reply.status, reply.header("location")),
            (code, Some(location)),
            "{host}{path}"
        );
        assert!(
            reply.echo().is_none(),
            "{host}: a redirect is answered by the proxy"
        );
    }
    let app = portico.client.get("root.test", "/app/page").await.unwrap();
    assert_eq!(
        (app.status, app.answered_by()),
        (200, "web".to_string()),
        "app-root redirects only /"
    );
    // What a migrating user wrote and Portico does not act on is reported, not silently dropped.
    let logs = portico.logs();
    assert!(
        logs.contains("configuration-snippet is never supported"),
        "{logs}"
    );
    assert!(logs.contains("proxy-ssl-protocols is not supported by Portico yet"));
    drop(servers);
}

/// `proxy-redirect-from`/`-to` and `proxy-cookie-domain`/`-path`: an application that
/// names its internal address in redirects and cookies is shown under the public one.
#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_redirects_and_cookies_are_rewritten_to_the_public_names() {
    let (servers, mut docs) = backends(&["app"]).await;
    docs.push(
        ingress("legacy")
            .path("public.test", "Prefix", "/", "app")
            .annotation(
                "nginx.ingress.kubernetes.io/proxy-redirect-from",
                "http://app.internal:8080/",
            )
            .annotation(
                "nginx.ingress.kubernetes.io/proxy-redirect-to",
                "https://public.test/",
            )
            .annotation(
                "nginx.ingress.kubernetes.io/proxy-cookie-domain",
                "app.internal public.test",
            )
            .annotation("nginx.ingress.kubernetes.io/proxy-cookie-path", "/app/ /")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let reply = portico
        .client
        .get(
            "public.test",
            "/login?status=302&header=location:http://app.internal:8080/home%3Fx%3D1&header=set-cookie:sid%3D1%3B%20Domain%3Dapp.internal%3B%20Path%3D/app/cart%3B%20HttpOnly",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.header("location"),
        Some("https://public.test/home?x=1")
    );
    assert_eq!(
        reply.header("set-cookie"),
        Some("sid=1; Domain=public.test; Path=/cart; HttpOnly")
    );
    let other = portico
        .client
        .get(
            "public.test",
            "/?status=302&header=location:https://elsewhere.test/",
        )
        .await
        .unwrap();
    assert_eq!(
        other.header("location"),
        Some("https://elsewhere.test/"),
        "another prefix is left alone"
    );
    drop(servers);
}
