//! Error pages and default backends (`custom-http-errors`, `default-backend`) through
//! the real binaries.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, service_with_endpoints, to_yaml};

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
        ingress("intercepted")
            .path("passthrough.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/custom-http-errors", "404")
            .annotation("nginx.ingress.kubernetes.io/default-backend", "errors")
            .annotation(
                "nginx.ingress.kubernetes.io/disable-proxy-intercept-errors",
                "true",
            )
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

    // disable-proxy-intercept-errors: the upstream's own error answer stands.
    let own = portico
        .client
        .get("passthrough.test", "/missing?status=404")
        .await
        .unwrap();
    assert_eq!((own.status, own.answered_by()), (404, "web".to_string()));

    let fallback = portico
        .client
        .request(
            "GET",
            "fallback.test",
            "/x?y=1",
            &[("accept", "application/json"), ("x-request-id", "req-7")],
        )
        .await
        .unwrap();
    let page = fallback
        .echo()
        .expect("no endpoint: the route's default-backend serves");
    assert_eq!(page.backend, "errors");
    // It is told what it stands in for, as ingress-nginx tells it.
    let header = |name: &str| page.headers.get(name).cloned().unwrap_or_default();
    for (name, value) in [
        ("x-code", "503"),
        ("x-format", "application/json"),
        ("x-original-uri", "/x?y=1"),
        ("x-namespace", "default"),
        ("x-ingress-name", "fallback"),
        ("x-service-name", "empty"),
        ("x-service-port", "80"),
        ("x-request-id", "req-7"),
    ] {
        assert_eq!(header(name), value, "{name}");
    }

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
