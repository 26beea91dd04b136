//! Basic auth and source ranges through the real binaries, with trusted proxies, and
//! security annotations that fail closed.

use super::{basic, opaque_secret, site};
use portico_e2e::client::HttpClient;
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::to_yaml;
use serde_json::json;
use std::net::IpAddr;

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
    // Two credentials: the one checked and the one a backend reads could differ; 400, as
    // nginx answers.
    let (carol, mallory) = (basic("carol", "secret"), basic("mallory", "plaintext"));
    let twice = portico
        .client
        .request(
            "GET",
            "locked.test",
            "/",
            &[("authorization", &carol), ("authorization", &mallory)],
        )
        .await
        .unwrap();
    assert_eq!(
        (twice.status, twice.answered_by()),
        (400, "status:400".to_string())
    );

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

    // The backend's X-Real-IP is the client the checks above used: the peer, or behind a
    // trusted proxy the address it vouches for.
    let real_ip = |client: HttpClient, forwarded: &'static str| async move {
        let reply = client
            .request("GET", "deny.test", "/", &[("x-forwarded-for", forwarded)])
            .await
            .unwrap();
        reply.echo().expect("reached the backend").headers["x-real-ip"].clone()
    };
    assert_eq!(
        real_ip(from("127.0.0.3"), "127.0.0.9, 127.0.0.2").await,
        "127.0.0.2"
    );
    assert_eq!(real_ip(from("127.0.0.1"), "127.0.0.2").await, "127.0.0.1");
    drop(servers);
}

/// A bcrypt comparison (a quarter of a second at cost 12) runs off the proxy's worker
/// threads: with more comparisons in flight than the proxy has workers (the harness starts
/// two), another route is still answered at once.
#[tokio::test(flavor = "multi_thread")]
async fn bcrypt_checks_do_not_hold_the_worker_thread() {
    let (_servers, mut docs) = backends(&["web"]).await;
    let costly = bcrypt::hash_with_salt("right", 12, [9u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    docs.push(opaque_secret(
        "users",
        json!({"auth": format!("alice:{costly}\n")}),
    ));
    docs.push(site(
        "locked",
        &[
            ("nginx.ingress.kubernetes.io/auth-type", "basic"),
            ("nginx.ingress.kubernetes.io/auth-secret", "users"),
        ],
    ));
    docs.push(site("open", &[]));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let wrong: Vec<_> = (0..4)
        .map(|_| {
            let client = portico.client.clone();
            tokio::spawn(async move {
                let authorization = basic("alice", "wrong");
                let r = client
                    .request(
                        "GET",
                        "locked.test",
                        "/",
                        &[("authorization", &authorization)],
                    )
                    .await
                    .unwrap();
                (r.status, std::time::Instant::now())
            })
        })
        .collect();
    // Let the comparisons start before the other request arrives.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let open = portico.client.get("open.test", "/").await.unwrap();
    let open_answered = std::time::Instant::now();
    assert_eq!(open.status, 200);
    for task in wrong {
        let (status, answered) = task.await.unwrap();
        assert_eq!(status, 401);
        assert!(
            open_answered < answered,
            "the open route waited for a password comparison"
        );
    }
}
