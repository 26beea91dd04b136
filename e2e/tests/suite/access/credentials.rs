//! Access control through the real binaries: basic auth, source ranges with trusted
//! proxies, and security annotations that fail closed.

use portico_e2e::client::HttpClient;
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, to_yaml};
use serde_json::{json, Value};
use std::net::IpAddr;

fn site(name: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ing = ingress(name).path(&format!("{name}.test"), "Prefix", "/", "web");
    for (k, v) in annotations {
        ing = ing.annotation(k, v);
    }
    ing.build()
}

fn opaque_secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": "default"}, "stringData": data})
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        openssl::base64::encode_block(format!("{user}:{password}").as_bytes())
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_admits_valid_users_only_and_broken_security_answers_503() {
    let (servers, mut docs) = backends(&["web"]).await;
    let bcrypt = bcrypt::hash_with_salt("bcrypt pass", 5, [3u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    let htpasswd = format!(
        "alice:{bcrypt}\nbob:$apr1$s4ltS4lt$CBftm/Gc1GsAc.A7xS.6W/\ncarol:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\nmallory:plaintext\n"
    );
    docs.push(opaque_secret("users", json!({"auth": htpasswd})));
    docs.push(opaque_secret(
        "map",
        json!({"dave": "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="}),
    ));
    let auth = |secret: &'static str, kind: &'static str| {
        vec![
            ("nginx.ingress.kubernetes.io/auth-type", "basic"),
            ("nginx.ingress.kubernetes.io/auth-secret", secret),
            ("nginx.ingress.kubernetes.io/auth-secret-type", kind),
            ("nginx.ingress.kubernetes.io/auth-realm", "Staff only"),
        ]
    };
    docs.push(site("locked", &auth("users", "auth-file")));
    docs.push(site("mapped", &auth("map", "auth-map")));
    docs.push(site("nosecret", &auth("missing", "auth-file")));
    docs.push(site(
        "external",
        &[("nginx.ingress.kubernetes.io/auth-url", "auth.example/check")],
    ));
    docs.push(site(
        "mtls",
        &[("nginx.ingress.kubernetes.io/auth-tls-secret", "client-ca")],
    ));
    // Credentials in an auth URL, usable and not: neither is repeated anywhere.
    docs.push(site(
        "leaky",
        &[(
            "nginx.ingress.kubernetes.io/auth-url",
            "http://svc:hunter2@127.0.0.1:9/check",
        )],
    ));
    docs.push(site(
        "leakier",
        &[(
            "nginx.ingress.kubernetes.io/auth-url",
            "ftp://svc:hunter3@auth.example/check",
        )],
    ));
    docs.push(site("open", &[]));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let get = |host: &'static str, authorization: Option<String>| {
        let portico = &portico;
        async move {
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            portico
                .client
                .request("GET", host, "/", &headers)
                .await
                .unwrap()
        }
    };

    let refused = get("locked.test", None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Basic realm=\"Staff only\", charset=\"UTF-8\"")
    );
    assert!(refused.echo().is_none(), "nothing reached the backend");
    for (user, password) in [
        ("alice", "bcrypt pass"),
        ("bob", "p@ss word"),
        ("carol", "secret"),
    ] {
        let r = get("locked.test", Some(basic(user, password))).await;
        assert_eq!(
            (r.status, r.answered_by()),
            (200, "web".to_string()),
            "{user}"
        );
        assert_eq!(
            get("locked.test", Some(basic(user, "wrong"))).await.status,
            401,
            "{user} with a wrong password"
        );
    }
    assert_eq!(
        get("locked.test", Some(basic("mallory", "plaintext")))
            .await
            .status,
        401,
        "plain-text entries are refused"
    );
    assert_eq!(
        get("locked.test", Some(basic("nobody", "secret")))
            .await
            .status,
        401
    );
    assert_eq!(
        get("mapped.test", Some(basic("dave", "secret")))
            .await
            .status,
        200
    );
    assert_eq!(get("mapped.test", None).await.status, 401);

    // Security that cannot be enforced is not skipped: 503, and the rest still serves.
    assert_eq!(
        get("nosecret.test", Some(basic("carol", "secret")))
            .await
            .status,
        503
    );
    assert_eq!(
        get("external.test", None).await.status,
        503,
        "an auth-url that is not a URL is not served without its check"
    );
    assert_eq!(
        get("mtls.test", None).await.status,
        503,
        "client certificates against a missing CA bundle are not skipped"
    );
    assert_eq!(get("open.test", None).await.status, 200);
    assert_eq!(
        get("leaky.test", None).await.status,
        500,
        "an auth service that cannot be reached admits no one"
    );
    assert_eq!(get("leakier.test", None).await.status, 503);
    let logs = portico.logs();
    assert!(
        logs.contains("secret default/client-ca does not exist") && logs.contains("mallory"),
        "the reasons are reported"
    );
    assert!(
        logs.contains("ftp://<redacted>@auth.example/check")
            && logs.contains("http://<redacted>@127.0.0.1:9/check")
    );
    let config = portico.admin_get("/config").await.unwrap().text();
    for shown in [&logs, &config] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "a URL's password is never shown"
        );
    }
    for hash in ["5en6G6", "$apr1$s4ltS4lt"] {
        let at = config
            .find(hash)
            .map(|i| &config[i.saturating_sub(300)..(i + 100).min(config.len())]);
        assert_eq!(at, None, "password hashes are not shown");
    }
    drop(servers);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_ranges_use_the_peer_unless_a_trusted_proxy_forwards() {
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(site(
        "allow",
        &[(
            "nginx.ingress.kubernetes.io/whitelist-source-range",
            "127.0.0.2/32, ::1",
        )],
    ));
    docs.push(site(
        "deny",
        &[("portico.io/denylist-source-range", "127.0.0.4")],
    ));
    let portico = Portico::start_with(
        &[("all.yaml", to_yaml(&docs))],
        &["--trusted-proxies", "127.0.0.3/32"],
    )
    .await;
    let from =
        |source: &str| HttpClient::from_source(portico.http, source.parse::<IpAddr>().unwrap());
    let status = |client: HttpClient, host: &'static str, forwarded: Option<&'static str>| async move {
        let headers: Vec<(&str, &str)> = forwarded
            .map(|f| vec![("x-forwarded-for", f)])
            .unwrap_or_default();
        client
            .request("GET", host, "/", &headers)
            .await
            .unwrap()
            .status
    };

    assert_eq!(status(from("127.0.0.2"), "allow.test", None).await, 200);
    assert_eq!(status(from("127.0.0.1"), "allow.test", None).await, 403);
    assert_eq!(
        status(from("127.0.0.1"), "allow.test", Some("127.0.0.2")).await,
        403,
        "an untrusted peer cannot claim an address"
    );
    // Through a trusted proxy, the rightmost hop it did not vouch for is the client.
    assert_eq!(
        status(
            from("127.0.0.3"),
            "allow.test",
            Some("127.0.0.9, 127.0.0.2")
        )
        .await,
        200
    );
    assert_eq!(
        status(
            from("127.0.0.3"),
            "allow.test",
            Some("127.0.0.2, 127.0.0.9")
        )
        .await,
        403,
        "a hop written by the client is never reached"
    );
    assert_eq!(
        status(from("127.0.0.3"), "allow.test", Some("not-an-address")).await,
        403,
        "an unknown client is refused"
    );

    assert_eq!(status(from("127.0.0.4"), "deny.test", None).await, 403);
    assert_eq!(status(from("127.0.0.1"), "deny.test", None).await, 200);
    assert_eq!(
        status(from("127.0.0.3"), "deny.test", Some("127.0.0.4")).await,
        403,
        "a denied client behind a trusted proxy"
    );
    drop(servers);
}

/// What the auth service saw: each request's headers, in order.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>;

/// An auth service on loopback, deciding by the `Authorization` header: `Bearer good`
/// admits as alice (with a cookie), `Bearer forbidden` is 403, `Bearer broken` is 502,
/// `Bearer slow` never answers in time; anything else is 401 with a Bearer challenge.
async fn auth_service() -> (std::net::SocketAddr, Seen) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Default::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    record.lock().unwrap().push(req.headers().clone());
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
    (addr, seen)
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
    let asked = seen.lock().unwrap().last().cloned().unwrap();
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

    // With auth-signin, a 401 is a redirect carrying the original URL.
    let redirect = get("signin.test", vec![]).await;
    assert_eq!(redirect.status, 302);
    assert_eq!(
        redirect.header("location"),
        Some("https://login.example/start?rd=http%3A%2F%2Fsignin.test%2Fpage%3Fq%3D1")
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

/// A compact JWS signed with an Ed25519 key, as an identity provider issues it.
fn ed25519_token(
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    header: Value,
    claims: Value,
) -> String {
    let b64 = |b: &[u8]| {
        openssl::base64::encode_block(b)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    };
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = openssl::sign::Signer::new_without_digest(key)
        .unwrap()
        .sign_oneshot_to_vec(input.as_bytes())
        .unwrap();
    format!("{input}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_jwts_are_verified_against_the_jwks_secret() {
    let (servers, mut docs) = backends(&["web"]).await;
    let key = openssl::pkey::PKey::generate_ed25519().unwrap();
    let x = openssl::base64::encode_block(&key.raw_public_key().unwrap())
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": x}]});
    docs.push(opaque_secret("idp", json!({"jwks.json": jwks.to_string()})));
    docs.push(site(
        "api",
        &[
            ("portico.io/auth-jwt-jwks-secret", "idp"),
            ("portico.io/auth-jwt-issuer", "https://idp.test"),
            ("portico.io/auth-jwt-audience", "api"),
            (
                "portico.io/auth-jwt-claims-to-headers",
                "sub:X-User, groups:X-Groups",
            ),
        ],
    ));
    docs.push(site(
        "badset",
        &[("portico.io/auth-jwt-jwks-secret", "missing")],
    ));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "exp": now + 300});
    let get = |token: Option<String>| {
        let portico = &portico;
        async move {
            let authorization = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("x-user", "root"), ("x-groups", "admins")];
            if let Some(a) = authorization.as_deref() {
                headers.push(("authorization", a));
            }
            portico
                .client
                .request("GET", "api.test", "/", &headers)
                .await
                .unwrap()
        }
    };

    let good = get(Some(ed25519_token(
        &key,
        json!({"alg": "EdDSA", "kid": "k1"}),
        claims.clone(),
    )))
    .await;
    assert_eq!(good.status, 200);
    let echo = good.echo().unwrap();
    assert_eq!(
        echo.headers.get("x-user").map(String::as_str),
        Some("alice"),
        "the claim replaces what the client sent"
    );
    assert!(
        !echo.headers.contains_key("x-groups"),
        "a claim the token lacks removes the client's header"
    );

    let missing = get(None).await;
    assert_eq!(missing.status, 401);
    assert!(missing
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer error=\"invalid_token\"")));
    let expired =
        json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "exp": now - 300});
    assert_eq!(
        get(Some(ed25519_token(&key, json!({"alg": "EdDSA"}), expired)))
            .await
            .status,
        401
    );
    let other_key = openssl::pkey::PKey::generate_ed25519().unwrap();
    assert_eq!(
        get(Some(ed25519_token(
            &other_key,
            json!({"alg": "EdDSA", "kid": "k1"}),
            claims.clone()
        )))
        .await
        .status,
        401
    );
    let unsigned = ed25519_token(&key, json!({"alg": "none"}), claims.clone());
    let unsigned = format!("{}.", unsigned.rsplit_once('.').unwrap().0);
    assert_eq!(get(Some(unsigned)).await.status, 401, "alg none");
    assert_eq!(
        servers[0].request_count(),
        1,
        "only the valid token reached the backend"
    );
    assert_eq!(
        portico.client.get("badset.test", "/").await.unwrap().status,
        503,
        "a missing key set fails closed"
    );
    drop(servers);
}

/// Serves `body` as JSON to every request on 127.0.0.1, counting requests.
async fn jwks_server(
    body: String,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
            });
        }
    });
    (addr, fetches)
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_jwts_are_verified_against_a_fetched_and_cached_jwks() {
    let (servers, mut docs) = backends(&["web"]).await;
    let key = openssl::pkey::PKey::generate_ed25519().unwrap();
    let x = openssl::base64::encode_block(&key.raw_public_key().unwrap())
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    let (idp, fetches) = jwks_server(
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": x}]}).to_string(),
    )
    .await;
    docs.push(site(
        "remote",
        &[(
            "portico.io/auth-jwt-jwks-url",
            &format!("http://{idp}/.well-known/jwks.json"),
        )],
    ));
    docs.push(site(
        "down",
        &[("portico.io/auth-jwt-jwks-url", "http://127.0.0.1:1/jwks")],
    ));
    docs.push(site(
        "both",
        &[
            (
                "portico.io/auth-jwt-jwks-url",
                &format!("http://{idp}/jwks"),
            ),
            ("portico.io/auth-jwt-jwks-secret", "idp"),
        ],
    ));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": "alice", "exp": now + 300});
    let get = |host: &'static str, token: String| {
        let portico = &portico;
        async move {
            let authorization = format!("Bearer {token}");
            portico
                .client
                .request("GET", host, "/", &[("authorization", &authorization)])
                .await
                .unwrap()
        }
    };
    let good = ed25519_token(&key, json!({"alg": "EdDSA", "kid": "k1"}), claims.clone());
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing is fetched before a request needs it"
    );
    for _ in 0..3 {
        assert_eq!(get("remote.test", good.clone()).await.status, 200);
    }
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the key set is fetched once and cached"
    );
    let other_key = openssl::pkey::PKey::generate_ed25519().unwrap();
    let unknown = ed25519_token(
        &other_key,
        json!({"alg": "EdDSA", "kid": "k2"}),
        claims.clone(),
    );
    assert_eq!(
        get("remote.test", unknown).await.status,
        401,
        "an unknown kid is refused"
    );
    assert_eq!(
        fetches.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "and fetches again at most every 30 s"
    );
    assert_eq!(
        get("down.test", good.clone()).await.status,
        503,
        "no key set: fail closed"
    );
    assert_eq!(
        get("both.test", good).await.status,
        503,
        "a Secret and a URL at once is ambiguous"
    );
    drop(servers);
}
