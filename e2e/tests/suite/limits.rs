//! Rate limits and CORS through the real binaries: per-client request rates with their
//! burst, requests in progress, the exempt list, the refusal status flag, and CORS
//! preflights and headers, on upstream answers and on Portico's own refusals.

use portico_e2e::client::HttpClient;
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, to_yaml};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

fn site(name: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ing = ingress(name).path(&format!("{name}.test"), "Prefix", "/", "web");
    for (k, v) in annotations {
        ing = ing.annotation(k, v);
    }
    ing.build()
}

fn from(portico: &Portico, source: &str) -> HttpClient {
    HttpClient::from_source(portico.http, source.parse::<IpAddr>().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn request_rates_are_limited_per_client_with_a_burst() {
    let (servers, mut docs) = backends(&["web"]).await;
    // 1 request a second with a multiplier of 3: three more at once, then one a second.
    docs.push(site(
        "limited",
        &[
            ("nginx.ingress.kubernetes.io/limit-rps", "1"),
            ("nginx.ingress.kubernetes.io/limit-burst-multiplier", "3"),
            (
                "nginx.ingress.kubernetes.io/limit-allowlist",
                "127.0.0.3/32",
            ),
        ],
    ));
    docs.push(site("open", &[]));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let client = from(&portico, "127.0.0.2");
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let r = client.get("limited.test", "/").await.unwrap();
        if r.status == 429 {
            retry_after = r.header("retry-after").map(str::to_string);
        }
        statuses.push(r.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "one plus a burst of three: {statuses:?}"
    );
    assert!(
        statuses[..4].iter().all(|s| *s == 200) && statuses[4..].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "Retry-After says when to come back"
    );
    assert_eq!(
        servers[0].requests.load(Ordering::Relaxed),
        4,
        "refused requests never reach the backend"
    );

    // Each client has its own allowance; exempt clients and other Ingresses are not limited.
    assert_eq!(
        from(&portico, "127.0.0.4")
            .get("limited.test", "/")
            .await
            .unwrap()
            .status,
        200
    );
    let exempt = from(&portico, "127.0.0.3");
    for _ in 0..10 {
        assert_eq!(exempt.get("limited.test", "/").await.unwrap().status, 200);
    }
    assert_eq!(client.get("open.test", "/").await.unwrap().status, 200);
    // The rate refills: after a second, one more request.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(client.get("limited.test", "/").await.unwrap().status, 200);
    assert_eq!(client.get("limited.test", "/").await.unwrap().status, 429);
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_in_progress_are_limited_and_the_status_is_configurable() {
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(site(
        "one",
        &[("nginx.ingress.kubernetes.io/limit-connections", "1")],
    ));
    let portico = Portico::start_with(
        &[("all.yaml", to_yaml(&docs))],
        &["--limit-req-status-code", "503"],
    )
    .await;

    let slow = {
        let client = from(&portico, "127.0.0.2");
        tokio::spawn(async move {
            client
                .get("one.test", "/?sleep_ms=1500")
                .await
                .unwrap()
                .status
        })
    };
    let client = from(&portico, "127.0.0.2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while servers[0].requests.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = client.get("one.test", "/").await.unwrap();
    assert_eq!(refused.status, 503, "--limit-req-status-code");
    assert_eq!(
        from(&portico, "127.0.0.4")
            .get("one.test", "/")
            .await
            .unwrap()
            .status,
        200,
        "another client is not held back"
    );
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        client.get("one.test", "/").await.unwrap().status,
        200,
        "the count drops when the request ends"
    );
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_are_answered_and_allowed_origins_can_read_every_answer() {
    let (servers, mut docs) = backends(&["web"]).await;
    let cors = [
        ("nginx.ingress.kubernetes.io/enable-cors", "true"),
        (
            "nginx.ingress.kubernetes.io/cors-allow-origin",
            "https://app.example.com, https://*.example.org",
        ),
        (
            "nginx.ingress.kubernetes.io/cors-expose-headers",
            "X-Request-Id",
        ),
    ];
    docs.push(site("api", &cors));
    docs.push(site(
        "open",
        &[("nginx.ingress.kubernetes.io/enable-cors", "true")],
    ));
    let mut locked = cors.to_vec();
    locked.extend([
        ("nginx.ingress.kubernetes.io/limit-rpm", "1"),
        ("nginx.ingress.kubernetes.io/limit-burst-multiplier", "1"),
    ]);
    locked.push((
        "nginx.ingress.kubernetes.io/whitelist-source-range",
        "127.0.0.2/32",
    ));
    docs.push(site("locked", &locked));
    docs.push(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": "users", "namespace": "default"},
        "stringData": {"auth": "carol:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n"}}));
    let mut authed = cors.to_vec();
    authed.extend([
        ("nginx.ingress.kubernetes.io/auth-type", "basic"),
        ("nginx.ingress.kubernetes.io/auth-secret", "users"),
    ]);
    docs.push(site("authed", &authed));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let client = from(&portico, "127.0.0.2");
    let preflight = |origin: &'static str| {
        let client = client.clone();
        async move {
            let headers = [("origin", origin), ("access-control-request-method", "PUT")];
            client
                .request("OPTIONS", "api.test", "/items", &headers)
                .await
                .unwrap()
        }
    };

    let r = preflight("https://app.example.com").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, PUT, POST, DELETE, PATCH, OPTIONS")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("1728000"));
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("Authorization")));
    assert_eq!(
        servers[0].requests.load(Ordering::Relaxed),
        0,
        "the proxy answers preflights itself"
    );
    assert_eq!(
        preflight("https://a.example.org").await.status,
        204,
        "a wildcard subdomain"
    );

    // An origin that is not allowed gets no CORS headers; its OPTIONS goes to the backend.
    let r = preflight("https://evil.example.com").await;
    assert_eq!((r.status, r.answered_by()), (200, "web".to_string()));
    assert_eq!(r.header("access-control-allow-origin"), None);

    let r = client
        .request(
            "GET",
            "api.test",
            "/",
            &[("origin", "https://app.example.com")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert_eq!(r.header("vary"), Some("Origin"));

    // Portico's own refusals carry the headers too, so that the browser app can read them.
    let origin = [("origin", "https://app.example.com")];
    let r = client
        .request("GET", "authed.test", "/", &origin)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = from(&portico, "127.0.0.5")
        .request("GET", "locked.test", "/", &origin)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let statuses = [
        client
            .request("GET", "locked.test", "/", &origin)
            .await
            .unwrap(),
        client
            .request("GET", "locked.test", "/", &origin)
            .await
            .unwrap(),
        client
            .request("GET", "locked.test", "/", &origin)
            .await
            .unwrap(),
    ];
    let limited = statuses
        .iter()
        .find(|r| r.status == 429)
        .expect("the third request is over 1/min with a burst of 1");
    assert_eq!(
        limited.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );

    // With the default origin `*`, every answer says so, even to a request without Origin.
    let r = client.get("open.test", "/").await.unwrap();
    assert_eq!(
        (r.status, r.header("access-control-allow-origin")),
        (200, Some("*"))
    );
    drop(servers);
}
