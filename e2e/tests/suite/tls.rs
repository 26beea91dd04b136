//! TLS termination, redirects (HTTPS, www), HSTS, HTTP/2 and upstream protocols through
//! the real binaries: certificates are read back from real handshakes on loopback.

use openssl::ssl::SslVersion;
use portico_e2e::client::{h2c_get, HttpClient};
use portico_e2e::echo::{backends, EchoServer};
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{
    ca_secret, config_map, ingress, service_with_endpoints, tls_secret, to_yaml,
};
use portico_e2e::tls::{self, ClientOptions, TestCa, TlsConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEFAULT_CN: &str = "Portico Default Certificate";

fn sni(name: &str) -> ClientOptions<'_> {
    ClientOptions {
        sni: Some(name),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sni_name_gets_its_certificate_and_unknown_names_the_default() {
    let ca = TestCa::new("test ca");
    let (a, w) = (ca.issue(&["a.test"]), ca.issue(&["*.w.test"]));
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("a-tls", &a.cert_pem, &a.key_pem));
    docs.push(tls_secret("w-tls", &w.cert_pem, &w.key_pem));
    docs.push(
        ingress("secure")
            .tls(&["a.test"], "a-tls")
            .tls(&["*.w.test"], "w-tls")
            .path("a.test", "Prefix", "/", "web")
            .path("*.w.test", "Prefix", "/", "web")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let (_, hs) = tls::connect(portico.https, sni("a.test")).await.unwrap();
    assert_eq!(
        (
            hs.subject_cn.as_str(),
            hs.dns_names.as_slice(),
            hs.serial.as_str()
        ),
        ("a.test", &["a.test".to_string()][..], a.serial.as_str())
    );
    let (_, hs) = tls::connect(portico.https, sni("x.w.test")).await.unwrap();
    assert_eq!(
        (hs.subject_cn.as_str(), hs.serial.as_str()),
        ("*.w.test", w.serial.as_str()),
        "a wildcard covers one label"
    );
    let (_, hs) = tls::connect(portico.https, sni("A.TEST")).await.unwrap();
    assert_eq!(hs.subject_cn, "a.test", "SNI is matched case-insensitively");
    for unknown in [
        sni("other.test"),
        sni("y.x.w.test"),
        ClientOptions::default(),
    ] {
        let (_, hs) = tls::connect(portico.https, unknown.clone()).await.unwrap();
        assert_eq!(
            hs.subject_cn, DEFAULT_CN,
            "SNI {:?} gets the self-signed default",
            unknown.sni
        );
    }

    // HTTP/2 by ALPN, HTTP/1.1 when the client offers only that; both carry HSTS.
    for (alpn, expected) in [
        (&["h2", "http/1.1"][..], "h2"),
        (&["http/1.1"][..], "http/1.1"),
    ] {
        let (stream, hs) = tls::connect(
            portico.https,
            ClientOptions {
                sni: Some("a.test"),
                alpn,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(hs.alpn.as_deref(), Some(expected));
        let reply = tls::get(stream, "a.test", "/hello?x=1").await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.header("strict-transport-security"),
            Some("max-age=31536000")
        );
        let echo = reply.echo().unwrap();
        assert_eq!(echo.headers["x-forwarded-proto"], "https");
        assert_eq!(echo.headers["x-forwarded-host"], "a.test");
        assert_eq!(
            echo.headers["x-forwarded-port"], "443",
            "the port clients reach behind the Service, not the container's"
        );
        assert_eq!((echo.path.as_str(), echo.query.as_str()), ("/hello", "x=1"));
    }
    let plain = portico.client.get("x.w.test", "/").await.unwrap();
    assert_eq!(plain.status, 308, "the TLS host redirects plain HTTP");

    // TLS 1.2 and 1.3 only.
    for old in [SslVersion::TLS1, SslVersion::TLS1_1] {
        let refused = tls::connect(
            portico.https,
            ClientOptions {
                sni: Some("a.test"),
                only_version: Some(old),
                ..Default::default()
            },
        )
        .await;
        assert!(refused.is_err(), "{old:?} must be refused");
    }
    for (version, name) in [
        (SslVersion::TLS1_2, "TLSv1.2"),
        (SslVersion::TLS1_3, "TLSv1.3"),
    ] {
        let opts = ClientOptions {
            sni: Some("a.test"),
            only_version: Some(version),
            ..Default::default()
        };
        let (mut stream, hs) = tls::connect(portico.https, opts.clone()).await.unwrap();
        assert_eq!(hs.version, name);
        assert!(!hs.resumed);
        // A full exchange, so that TLS 1.3 session tickets have arrived.
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        assert!(
            response.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&response)
        );
        let session = tls::session_of(&stream).expect("a session to resume");
        let (_, again) = tls::connect(
            portico.https,
            ClientOptions {
                session: Some(session),
                ..opts
            },
        )
        .await
        .unwrap();
        assert!(again.resumed, "{name} session resumption");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_is_presented_by_the_next_handshake_and_open_connections_survive() {
    let ca = TestCa::new("test ca");
    let (first, second) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let (_servers, base) = backends(&["web"]).await;
    let app = ingress("secure")
        .tls(&["a.test"], "a-tls")
        .path("a.test", "Prefix", "/", "web")
        .build();
    let portico = Portico::start(&[
        ("app.yaml", to_yaml(&base)),
        ("ing.yaml", to_yaml(&[app])),
        (
            "secret.yaml",
            to_yaml(&[tls_secret("a-tls", &first.cert_pem, &first.key_pem)]),
        ),
    ])
    .await;
    let proxy_pid = portico.proxy_pid();

    let (stream, hs) = tls::connect(portico.https, sni("a.test")).await.unwrap();
    assert_eq!(hs.serial, first.serial);
    let mut open = TlsConnection::open(stream).await.unwrap();
    assert_eq!(open.get("a.test", "/").await.unwrap().status, 200);

    portico
        .apply(
            "secret.yaml",
            &to_yaml(&[tls_secret("a-tls", &second.cert_pem, &second.key_pem)]),
        )
        .await;
    let (_, hs) = tls::connect(portico.https, sni("a.test")).await.unwrap();
    assert_eq!(
        hs.serial, second.serial,
        "the next handshake presents the rotated certificate"
    );
    assert_eq!(
        open.get("a.test", "/again").await.unwrap().status,
        200,
        "the connection opened before the rotation still serves"
    );
    assert_eq!(portico.proxy_pid(), proxy_pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_secrets_fall_back_to_the_default_certificate_and_the_rest_applies() {
    let ca = TestCa::new("test ca");
    let good = ca.issue(&["good.test"]);
    let other = ca.issue(&["bad.test"]);
    let fallback = ca.issue(&["fallback.test"]);
    let expired = ca.issue_valid(&["old.test"], (-30, -1));
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("good-tls", &good.cert_pem, &good.key_pem));
    docs.push(tls_secret("mismatched", &good.cert_pem, &other.key_pem));
    docs.push(tls_secret("garbage", "not a certificate", &other.key_pem));
    docs.push(tls_secret(
        "fallback",
        &fallback.cert_pem,
        &fallback.key_pem,
    ));
    docs.push(tls_secret("expired", &expired.cert_pem, &expired.key_pem));
    docs.push(
        ingress("mixed")
            .tls(&["good.test"], "good-tls")
            .tls(&["bad.test"], "mismatched")
            .tls(&["ugly.test"], "garbage")
            .tls(&["old.test"], "expired")
            .path("good.test", "Prefix", "/", "web")
            .path("bad.test", "Prefix", "/", "web")
            .path("ugly.test", "Prefix", "/", "web")
            .path("old.test", "Prefix", "/", "web")
            .build(),
    );
    let files = [("all.yaml", to_yaml(&docs))];
    let portico = Portico::start_full(
        &files,
        &["--default-ssl-certificate", "default/fallback"],
        &[],
    )
    .await;

    let (_, hs) = tls::connect(portico.https, sni("good.test")).await.unwrap();
    assert_eq!(hs.serial, good.serial);
    for broken in ["bad.test", "ugly.test", "unknown.test"] {
        let (stream, hs) = tls::connect(portico.https, sni(broken)).await.unwrap();
        assert_eq!(
            hs.serial, fallback.serial,
            "{broken} gets --default-ssl-certificate"
        );
        let expected = if broken == "unknown.test" { 404 } else { 200 };
        assert_eq!(
            tls::get(stream, broken, "/").await.unwrap().status,
            expected,
            "{broken} still routes"
        );
    }
    let (_, hs) = tls::connect(portico.https, sni("old.test")).await.unwrap();
    assert_eq!(
        hs.serial, expired.serial,
        "an expired certificate is still served"
    );

    let logs = portico.logs();
    for expected in [
        "secret default/mismatched",
        "does not match",
        "secret default/garbage",
        "CertificateExpired",
    ] {
        assert!(
            logs.contains(expected),
            "controller should report {expected:?}:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_redirected_where_asked_and_trusted_proxies_are_believed() {
    let ca = TestCa::new("test ca");
    let a = ca.issue(&["a.test"]);
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("a-tls", &a.cert_pem, &a.key_pem));
    docs.push(
        ingress("secure")
            .tls(&["a.test"], "a-tls")
            .path("a.test", "Prefix", "/", "web")
            .build(),
    );
    docs.push(
        ingress("open")
            .annotation("nginx.ingress.kubernetes.io/ssl-redirect", "false")
            .path("a.test", "Prefix", "/open", "web")
            .build(),
    );
    docs.push(
        ingress("forced")
            .annotation("portico.io/force-ssl-redirect", "true")
            .path("plain.test", "Prefix", "/", "web")
            .build(),
    );
    docs.push(
        ingress("plain")
            .path("plain.test", "Prefix", "/free", "web")
            .build(),
    );
    let portico = Portico::start_with(
        &[("all.yaml", to_yaml(&docs))],
        &["--trusted-proxies", "127.0.0.2/32"],
    )
    .await;
    let client = &portico.client;

    let r = client
        .get("a.test:8080", "/some/path?q=1&r=2")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("https://a.test/some/path?q=1&r=2")),
        "port dropped, path and query kept"
    );
    assert_eq!(
        client.get("a.test", "/open/x").await.unwrap().status,
        200,
        "ssl-redirect: false"
    );
    let acme = client
        .get("a.test", "/.well-known/acme-challenge/token")
        .await
        .unwrap();
    assert_eq!(
        acme.status, 200,
        "ACME HTTP-01 challenges are not redirected"
    );
    assert_eq!(
        acme.header("strict-transport-security"),
        None,
        "no HSTS over plain HTTP"
    );
    assert_eq!(
        client.get("plain.test", "/free").await.unwrap().status,
        200,
        "no TLS section, no redirect"
    );
    let r = client.get("plain.test", "/x").await.unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("https://plain.test/x")),
        "force-ssl-redirect"
    );

    // A client that is not a trusted proxy cannot claim HTTPS or another host.
    let claims = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.test"),
    ];
    let r = client
        .request("GET", "plain.test", "/x", &claims)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("https://plain.test/x"))
    );

    // A trusted proxy that terminated TLS in front is believed, for the redirect target too.
    let trusted = HttpClient::from_source(portico.http, "127.0.0.2".parse().unwrap());
    let r = trusted
        .request("GET", "plain.test", "/x", &claims)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "already HTTPS in front: {}", r.text());
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let r = trusted
        .request(
            "GET",
            "plain.test",
            "/x",
            &[
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "public.test"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (308, Some("https://public.test/x"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn portico_own_answers_over_https_carry_hsts_and_cors_as_upstream_answers_do() {
    let ca = TestCa::new("test ca");
    let app = ca.issue(&["app.test"]);
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("app-tls", &app.cert_pem, &app.key_pem));
    docs.push(
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "users", "namespace": "default"},
        "stringData": {"auth": "carol:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n"}}),
    );
    docs.push(
        ingress("app")
            .tls(&["app.test"], "app-tls")
            .annotation("nginx.ingress.kubernetes.io/enable-cors", "true")
            .annotation(
                "nginx.ingress.kubernetes.io/cors-allow-origin",
                "https://spa.example.com",
            )
            .annotation("nginx.ingress.kubernetes.io/auth-type", "basic")
            .annotation("nginx.ingress.kubernetes.io/auth-secret", "users")
            .path("app.test", "Prefix", "/api", "web")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let get = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let https = portico.https;
        async move {
            let (stream, _) = tls::connect(https, sni("app.test")).await.unwrap();
            tls::get_with(stream, "app.test", path, headers)
                .await
                .unwrap()
        }
    };
    const ORIGIN: &[(&str, &str)] = &[("origin", "https://spa.example.com")];
    const SIGNED_IN: &[(&str, &str)] = &[
        ("origin", "https://spa.example.com"),
        ("authorization", "Basic Y2Fyb2w6c2VjcmV0"),
    ];

    // The sign-in fails: the SPA must be able to read the 401, and the browser must keep HTTPS.
    let refused = get("/api/me", ORIGIN).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://spa.example.com")
    );
    assert!(refused
        .header("x-request-id")
        .is_some_and(|id| !id.is_empty()));

    // A path no route takes: Portico's 404 over HTTPS carries HSTS too.
    let missing = get("/elsewhere", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("strict-transport-security"),
        Some("max-age=31536000")
    );

    // The upstream's answer gets the same headers, from the same place.
    let admitted = get("/api/me", SIGNED_IN).await;
    assert_eq!(
        (
            admitted.status,
            admitted.header("strict-transport-security")
        ),
        (200, Some("max-age=31536000"))
    );
    assert_eq!(
        admitted.header("access-control-allow-origin"),
        Some("https://spa.example.com")
    );
    // Every handshake here completed: the proxy's own readiness check makes none.
    assert!(
        !portico.logs().contains("handshake error"),
        "{}",
        portico.logs()
    );
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_with_prior_knowledge_on_the_plain_port() {
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("app")
            .path("app.test", "Prefix", "/", "web")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let reply = h2c_get(portico.http, "app.test", "/h2c").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.echo().unwrap();
    assert_eq!(
        (
            echo.path.as_str(),
            echo.headers["x-forwarded-proto"].as_str()
        ),
        ("/h2c", "http")
    );
    assert_eq!(
        portico.client.get("app.test", "/h1").await.unwrap().status,
        200,
        "HTTP/1.1 on the same port"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_protocol_reaches_tls_and_h2c_endpoints_and_verifies_when_asked() {
    let ca = TestCa::new("backend ca");
    let stranger = TestCa::new("another ca");
    let any = || "127.0.0.1:0".parse().unwrap();
    let secure = EchoServer::start_tls("secure", any(), ca.acceptor(&["secure.default.svc"]))
        .await
        .unwrap();
    let h2c = EchoServer::start("h2c", any()).await.unwrap();
    let mut docs = service_with_endpoints("secure", &[secure.addr]);
    docs.extend(service_with_endpoints("h2c", &[h2c.addr]));
    docs.push(ca_secret("backend-ca", &ca.cert_pem()));
    docs.push(ca_secret("wrong-ca", &stranger.cert_pem()));
    let https = |name: &str, host: &str| {
        ingress(name)
            .annotation("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS")
            .path(host, "Prefix", "/", "secure")
    };
    docs.push(https("unverified", "unverified.test").build());
    docs.push(
        https("verified", "verified.test")
            .annotation("portico.io/proxy-ssl-verify", "on")
            .annotation("portico.io/proxy-ssl-secret", "default/backend-ca")
            .build(),
    );
    docs.push(
        https("mistrusted", "mistrusted.test")
            .annotation("portico.io/proxy-ssl-verify", "on")
            .annotation("portico.io/proxy-ssl-secret", "default/wrong-ca")
            .build(),
    );
    docs.push(
        https("misnamed", "misnamed.test")
            .annotation("portico.io/proxy-ssl-verify", "on")
            .annotation("portico.io/proxy-ssl-secret", "backend-ca")
            .annotation("portico.io/proxy-ssl-name", "other.default.svc")
            .build(),
    );
    docs.push(
        ingress("h2c")
            .annotation("portico.io/backend-protocol", "H2C")
            .path("h2c.test", "Prefix", "/", "h2c")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    for host in ["unverified.test", "verified.test"] {
        let r = portico.client.get(host, "/").await.unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        let echo = r.echo().unwrap();
        assert!(echo.tls && echo.version == "HTTP/1.1", "{host}: {echo:?}");
    }
    for host in ["mistrusted.test", "misnamed.test"] {
        assert_eq!(
            portico.client.get(host, "/").await.unwrap().status,
            502,
            "{host}: verification must fail"
        );
    }
    let echo = portico
        .client
        .get("h2c.test", "/")
        .await
        .unwrap()
        .echo()
        .unwrap();
    assert_eq!((echo.version.as_str(), echo.tls), ("HTTP/2.0", false));
    assert!(secure.request_count() >= 2, "the TLS backend answered");
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

#[tokio::test(flavor = "multi_thread")]
async fn ssl_protocols_and_ssl_ciphers_apply_per_handshake_and_follow_the_config_map() {
    let ca = TestCa::new("test ca");
    let (a, b) = (ca.issue(&["a.test"]), ca.issue(&["b.test"]));
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("a-tls", &a.cert_pem, &a.key_pem));
    docs.push(tls_secret("b-tls", &b.cert_pem, &b.key_pem));
    docs.push(
        ingress("a")
            .tls(&["a.test"], "a-tls")
            .path("a.test", "Prefix", "/", "web")
            .build(),
    );
    docs.push(
        ingress("b")
            .tls(&["b.test"], "b-tls")
            .path("b.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/ssl-ciphers",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            )
            .build(),
    );
    let controller = |keys: &[(&str, &str)]| to_yaml(&[config_map("portico-controller", keys)]);
    let portico = Portico::start_full(
        &[
            ("site.yaml", to_yaml(&docs)),
            (
                "controller.yaml",
                controller(&[(
                    "ssl-ciphers",
                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
                )]),
            ),
        ],
        &["--configmap=default/portico-controller"],
        &["--http2", "off"],
    )
    .await;

    // The client prefers AES-128; the server's order decides, as ingress-nginx's does.
    const OFFERED: &str =
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384";
    let tls12 = |name| ClientOptions {
        sni: Some(name),
        only_version: Some(SslVersion::TLS1_2),
        ciphers: Some(OFFERED),
        ..Default::default()
    };
    let cipher = |name| async move {
        tls::connect(portico.https, tls12(name))
            .await
            .map(|(_, hs)| hs.cipher)
    };
    assert_eq!(
        cipher("a.test").await.unwrap(),
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "the ConfigMap's ssl-ciphers"
    );
    assert_eq!(
        cipher("other.test").await.unwrap(),
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "and for the default certificate"
    );
    assert_eq!(
        cipher("b.test").await.unwrap(),
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "the host's own ssl-ciphers"
    );

    // --http2 off: no h2 by ALPN, and no h2c by prior knowledge.
    let (_, hs) = tls::connect(
        portico.https,
        ClientOptions {
            sni: Some("a.test"),
            alpn: &["h2", "http/1.1"],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((hs.version.as_str(), hs.alpn), ("TLSv1.3", None));
    assert_ne!(
        h2c_get(portico.http, "a.test", "/")
            .await
            .ok()
            .map(|r| r.status),
        Some(200)
    );

    // ssl-protocols narrows the next handshakes, without a restart.
    let before = portico.applied_version().await;
    portico.write(
        "controller.yaml",
        &controller(&[("ssl-protocols", "TLSv1.3")]),
    );
    portico.wait_for_version_after(before).await;
    assert!(cipher("a.test").await.is_err(), "TLS 1.2 is refused");
    let (_, hs) = tls::connect(portico.https, sni("a.test")).await.unwrap();
    assert_eq!(hs.version, "TLSv1.3");
}
