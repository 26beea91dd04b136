//! Header control (`request-headers-*`, `response-headers-*`, `custom-headers`) through
//! the real binaries, and the hop-by-hop fields that stop at the proxy.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{config_map, ingress, to_yaml};

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
        // The hop-by-hop fields RFC 9110 and its predecessors name, in any case.
        ("Keep-Alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("TE", "trailers"),
        ("trailer", "x-t"),
        ("Proxy-Authorization", "Basic eDp5"),
        ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
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
    for hop in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
        "http2-settings",
    ] {
        assert!(!echo.headers.contains_key(hop), "{hop} stops at the proxy");
    }
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
