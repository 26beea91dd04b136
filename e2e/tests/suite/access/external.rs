//! External auth (`auth-url` and its companions) through the real binaries, against an
//! auth service on loopback.

use super::{opaque_secret, site};
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::ingress;
use portico_e2e::manifests::to_yaml;
use serde_json::json;

/// What the auth service saw: each request's target and headers, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, http::HeaderMap)>>>;

/// An auth service on loopback, deciding by the `Authorization` header: `Bearer good`
/// admits as alice (with a cookie), `Bearer forbidden` is 403, `Bearer broken` is 502,
/// `Bearer slow` never answers in time; anything else is 401 with a Bearer challenge.
async fn auth_service() -> (std::net::SocketAddr, Seen) {
    let (addr, seen, _) = counted_auth_service().await;
    (addr, seen)
}

/// [`auth_service`], also counting the connections it accepted.
async fn counted_auth_service() -> (
    std::net::SocketAddr,
    Seen,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Default::default();
    let record = seen.clone();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    record
                        .lock()
                        .unwrap()
                        .push((req.uri().to_string(), req.headers().clone()));
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    async move {
                        let response = hyper::Response::builder();
                        let response = match auth.as_str() {
                            "Bearer good" => response
                                .status(200)
                                .header("x-auth-request-user", "alice")
                                .header("set-cookie", "authsess=1; Path=/"),
                            "Bearer forbidden" => response.status(403),
                            "Bearer broken" => response.status(502),
                            "Bearer slow" => {
                                tokio::time::sleep(std::time::Duration::from_secs(8)).await;
                                response.status(200)
                            }
                            _ => response
                                .status(401)
                                .header("www-authenticate", "Bearer realm=\"test\""),
                        };
                        Ok::<_, std::convert::Infallible>(
                            response
                                .body(Full::new(bytes::Bytes::from_static(b"auth says")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, connections)
}

#[tokio::test(flavor = "multi_thread")]
async fn external_auth_decides_and_its_headers_replace_the_clients() {
    let (servers, mut docs) = backends(&["web"]).await;
    let (auth, seen) = auth_service().await;
    let url = format!("http://{auth}/check?app=1");
    let common = |extra: &[(&'static str, String)]| {
        let mut a: Vec<(&str, String)> = vec![
            ("nginx.ingress.kubernetes.io/auth-url", url.clone()),
            (
                "nginx.ingress.kubernetes.io/auth-response-headers",
                "X-Auth-Request-User".into(),
            ),
        ];
        a.extend(extra.iter().cloned());
        a
    };
    let build = |name: &str, annotations: Vec<(&str, String)>| {
        let pairs: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (*k, v.as_str())).collect();
        site(name, &pairs)
    };
    docs.push(build("ext", common(&[])));
    docs.push(build(
        "signin",
        common(&[(
            "nginx.ingress.kubernetes.io/auth-signin",
            "https://login.example/start".into(),
        )]),
    ));
    docs.push(build(
        "cached",
        common(&[
            (
                "nginx.ingress.kubernetes.io/auth-cache-key",
                "$http_authorization".into(),
            ),
            (
                "nginx.ingress.kubernetes.io/auth-cache-duration",
                "200 401 1m".into(),
            ),
        ]),
    ));
    docs.push(opaque_secret(
        "users",
        json!({"auth": "carol:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="}),
    ));
    docs.push(build(
        "either",
        common(&[
            ("nginx.ingress.kubernetes.io/auth-type", "basic".into()),
            ("nginx.ingress.kubernetes.io/auth-secret", "users".into()),
            ("nginx.ingress.kubernetes.io/satisfy", "any".into()),
        ]),
    ));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let get = |host: &'static str, headers: Vec<(&'static str, String)>| {
        let portico = &portico;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            portico
                .client
                .request("GET", host, "/page?q=1", &h)
                .await
                .unwrap()
        }
    };

    // Admitted: the auth service's header replaces the one the client tried to send.
    let ok = get(
        "ext.test",
        vec![
            ("authorization", "Bearer good".into()),
            ("x-auth-request-user", "mallory".into()),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        ok.echo()
            .unwrap()
            .headers
            .get("x-auth-request-user")
            .map(String::as_str),
        Some("alice")
    );
    assert!(
        ok.header("set-cookie")
            .is_some_and(|c| c.starts_with("authsess=1")),
        "the auth service's cookie reaches the client"
    );
    let (_, asked) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        asked.get("x-original-url").unwrap(),
        "http://ext.test/page?q=1"
    );
    assert_eq!(asked.get("x-original-method").unwrap(), "GET");

    // Refused: the client sees 401 with the auth service's challenge, and the backend nothing.
    let header_spoof = get("ext.test", vec![("x-auth-request-user", "alice".into())]).await;
    assert_eq!(header_spoof.status, 401);
    assert_eq!(
        header_spoof.header("www-authenticate"),
        Some("Bearer realm=\"test\"")
    );
    assert!(header_spoof.echo().is_none());
    assert_eq!(
        get(
            "ext.test",
            vec![("authorization", "Bearer forbidden".into())]
        )
        .await
        .status,
        403
    );
    assert_eq!(
        get("ext.test", vec![("authorization", "Bearer broken".into())])
            .await
            .status,
        500,
        "a 502 from the auth service is a 500"
    );

    // With auth-signin, a 401 is a redirect carrying the original URL, written as
    // ingress-nginx writes it: `$scheme://$http_host$escaped_request_uri`.
    let redirect = get("signin.test", vec![]).await;
    assert_eq!(redirect.status, 302);
    assert_eq!(
        redirect.header("location"),
        Some("https://login.example/start?rd=http://signin.test%2Fpage%3Fq%3D1")
    );

    // Cached answers are not asked again.
    let before = seen.lock().unwrap().len();
    for _ in 0..5 {
        assert_eq!(
            get("cached.test", vec![("authorization", "Bearer good".into())])
                .await
                .status,
            200
        );
        assert_eq!(
            get("cached.test", vec![("authorization", "Bearer nope".into())])
                .await
                .status,
            401
        );
    }
    assert_eq!(
        seen.lock().unwrap().len() - before,
        2,
        "one question per key"
    );

    // satisfy any: basic auth alone admits; without it, the auth service decides.
    let basic_header = format!("Basic {}", openssl::base64::encode_block(b"carol:secret"));
    assert_eq!(
        get("either.test", vec![("authorization", basic_header)])
            .await
            .status,
        200
    );
    assert_eq!(
        get("either.test", vec![("authorization", "Bearer good".into())])
            .await
            .status,
        200
    );
    assert_eq!(
        get("either.test", vec![("authorization", "Bearer nope".into())])
            .await
            .status,
        401
    );

    // No answer in time is a 500, not a pass.
    assert_eq!(
        get("ext.test", vec![("authorization", "Bearer slow".into())])
            .await
            .status,
        500
    );
    drop(servers);
}

/// The oauth2-proxy setup most clusters copy: the auth and sign-in URLs name the
/// request's own host with nginx variables, which are rendered per request.
#[tokio::test(flavor = "multi_thread")]
async fn oauth2_proxy_urls_are_rendered_with_the_requests_variables() {
    let (servers, mut docs) = backends(&["web"]).await;
    let (auth, seen) = auth_service().await;
    // The Ingress's host is `localhost`, so that `$host` reaches the auth service.
    docs.push(
        ingress("oauth")
            .path("localhost", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/auth-url",
                &format!(
                    "http://$host:{}/oauth2/auth?orig=$escaped_request_uri",
                    auth.port()
                ),
            )
            .annotation(
                "nginx.ingress.kubernetes.io/auth-signin",
                "https://$host/oauth2/start?rd=$escaped_request_uri",
            )
            .annotation(
                "nginx.ingress.kubernetes.io/auth-request-redirect",
                "$scheme://$host$request_uri",
            )
            .annotation(
                "nginx.ingress.kubernetes.io/auth-proxy-set-headers",
                "default/auth-headers",
            )
            .build(),
    );
    docs.push(portico_e2e::manifests::config_map(
        "auth-headers",
        &[("X-Auth-Tenant", "shop"), ("X-Original-Host", "$host")],
    ));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let ok = portico
        .client
        .request(
            "GET",
            "localhost",
            "/page?q=1&x=a%20b",
            &[("authorization", "Bearer good")],
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    let (target, asked) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(target, "/oauth2/auth?orig=%2Fpage%3Fq%3D1%26x%3Da%2520b");
    assert_eq!(
        asked.get("host").unwrap(),
        &format!("localhost:{}", auth.port())
    );
    assert_eq!(
        asked.get("x-auth-request-redirect").unwrap(),
        "http://localhost/page?q=1&x=a%20b"
    );
    // `auth-proxy-set-headers`: the ConfigMap's entries, their variables rendered.
    assert_eq!(asked.get("x-auth-tenant").unwrap(), "shop");
    assert_eq!(asked.get("x-original-host").unwrap(), "localhost");

    let signin = portico
        .client
        .request("GET", "localhost", "/page?q=1", &[])
        .await
        .unwrap();
    assert_eq!(signin.status, 302);
    assert_eq!(
        signin.header("location"),
        Some("https://localhost/oauth2/start?rd=%2Fpage%3Fq%3D1"),
        "the variables are rendered, never sent as text"
    );
    drop(servers);
}

/// Connections to the auth service are kept for the next request, unless
/// `auth-keepalive: "0"` asks for one connection per request.
#[tokio::test(flavor = "multi_thread")]
async fn auth_keepalive_zero_closes_each_connection_to_the_auth_service() {
    use std::sync::atomic::Ordering;
    let (servers, mut docs) = backends(&["web"]).await;
    let (pooled_auth, _, pooled) = counted_auth_service().await;
    let (closing_auth, _, closing) = counted_auth_service().await;
    docs.push(site(
        "pooled",
        &[(
            "nginx.ingress.kubernetes.io/auth-url",
            &format!("http://{pooled_auth}/check"),
        )],
    ));
    docs.push(site(
        "closing",
        &[
            (
                "nginx.ingress.kubernetes.io/auth-url",
                &format!("http://{closing_auth}/check"),
            ),
            ("nginx.ingress.kubernetes.io/auth-keepalive", "0"),
        ],
    ));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    for host in ["pooled.test", "closing.test"] {
        for _ in 0..4 {
            let r = portico
                .client
                .request("GET", host, "/", &[("authorization", "Bearer good")])
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(pooled.load(Ordering::Relaxed), 1, "one connection, reused");
    assert_eq!(
        closing.load(Ordering::Relaxed),
        4,
        "one connection a request"
    );
    drop(servers);
}
