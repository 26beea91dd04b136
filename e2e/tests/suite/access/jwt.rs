//! Bearer JWTs (`portico.io/auth-jwt-*`) through the real binaries, against a JWKS in a
//! Secret and one fetched from a URL.

use super::{opaque_secret, site};
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::to_yaml;
use serde_json::{json, Value};

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
