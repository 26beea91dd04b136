//! Attempts to reach a protected route around its access control, through the real
//! binaries with raw bytes: path tricks, host tricks, and request smuggling. The
//! protected backend must never receive a request.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{in_namespace, ingress, to_yaml};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` on a fresh connection and reads until the proxy closes it (or 3 s pass).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// `a.test/admin` on the `secret` backend, for clients in 10.0.0.0/8 only: loopback
/// clients get 403 there, so any other answer is a bypass.
fn admin_only_from_10_8() -> serde_json::Value {
    ingress("admin")
        .path("a.test", "Prefix", "/admin", "secret")
        .annotation(
            "nginx.ingress.kubernetes.io/whitelist-source-range",
            "10.0.0.0/8",
        )
        .build()
}

async fn protected_site() -> (Portico, Vec<portico_e2e::echo::EchoServer>) {
    let (servers, mut docs) = backends(&["site", "secret"]).await;
    docs.push(
        ingress("public")
            .path("a.test", "Prefix", "/", "site")
            .build(),
    );
    docs.push(admin_only_from_10_8());
    (
        Portico::start(&[("all.yaml", to_yaml(&docs))]).await,
        servers,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn path_and_host_tricks_reach_the_access_check_or_are_refused() {
    let (portico, servers) = protected_site().await;
    let secret = &servers[1];
    let get = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    for (target, host, expected) in [
        ("/admin", "a.test", 403),
        ("/admin/", "a.test", 403),
        ("/public/../admin", "a.test", 403),
        ("/public/%2e%2e/admin", "a.test", 403),
        ("/%61dmin", "a.test", 403),
        ("//admin", "a.test", 403),
        ("/./admin/./x", "a.test", 403),
        ("/admin%2Fx", "a.test", 400),
        ("/admin%5Cx", "a.test", 400),
        ("/public/..%2Fadmin", "a.test", 400),
        ("/../admin", "a.test", 400),
        ("/admin%00", "a.test", 400),
        ("/admin", "A.TEST", 403),
        ("/admin", "a.test:80", 403),
        ("/admin", "a.test.", 403),
        // A Host that is not host[:port] is refused, whatever it would route to.
        ("/", "a.test:abc", 400),
        ("/", "a.test/admin", 400),
        ("/", "a.test admin", 400),
        ("/", "a.test:80:80", 400),
        ("http://a.test/admin", "a.test", 403),
        // An absolute-form target naming another host than Host: refused by Pingora.
        ("http://a.test/admin", "b.test", 400),
    ] {
        let reply = exchange(portico.http, &get(target, host)).await;
        assert_eq!(
            statuses(&reply).first().copied(),
            Some(expected),
            "GET {target} Host: {host}\n{reply}"
        );
    }
    // HTTP/1.1 without Host: refused (RFC 9112 §3.2).
    let reply = exchange(portico.http, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&reply).first().copied(), Some(400), "{reply}");
    // Two Host headers: refused, never routed by either.
    let reply = exchange(
        portico.http,
        b"GET /admin HTTP/1.1\r\nHost: b.test\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(statuses(&reply).first().copied(), Some(200), "{reply}");
    // Keep-alive: every request on a connection is checked, not only the first.
    let mut stream = tokio::net::TcpStream::connect(portico.http).await.unwrap();
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(statuses(&String::from_utf8_lossy(&first[..n])), [200]);
    stream
        .write_all(b"GET /admin HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert_eq!(statuses(&String::from_utf8_lossy(&rest)), [403]);
    assert_eq!(
        secret.request_count(),
        0,
        "the protected backend was reached"
    );
    // A path that only looks odd still works, normalised for the backend as it was routed.
    let reply = exchange(portico.http, &get("/x/./y//z/../w", "a.test")).await;
    assert!(reply.contains("\"path\":\"/x/y/w\""), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_targets_in_no_form_http_allows_are_refused_and_reach_no_backend() {
    let (portico, servers) = protected_site().await;
    // Each would be routed as `/` (the open site) and, sent on as written, read by many
    // servers as `/admin`.
    for target in [
        "%2fadmin",
        "\\admin",
        "..\\admin",
        "admin/x",
        "*",
        "a.test:80",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
        let reply = exchange(portico.http, raw.as_bytes()).await;
        assert_eq!(
            statuses(&reply).first().copied(),
            Some(400),
            "GET {target}\n{reply}"
        );
    }
    assert_eq!(
        (servers[0].request_count(), servers[1].request_count()),
        (0, 0),
        "a refused target reached a backend"
    );
    // Absolute-form is a form HTTP allows: routed by its host and path.
    let absolute = b"GET http://a.test/ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    assert_eq!(
        statuses(&exchange(portico.http, absolute).await)
            .first()
            .copied(),
        Some(200)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_is_refused_and_smuggles_nothing() {
    let (portico, servers) = protected_site().await;
    let secret = &servers[1];
    let smuggled = "GET /admin HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let chunked_body = format!("0\r\n\r\n{smuggled}");
    let attempts: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}",
                chunked_body.len()
            ),
        ),
        ("TE.CL", format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{chunked_body}")),
        (
            "TE.TE",
            format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{chunked_body}"),
        ),
        ("TE obfuscated", format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n{chunked_body}")),
        ("TE list", format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{chunked_body}")),
        ("TE space before colon", format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\n\r\n{chunked_body}")),
        ("CL.CL", format!("POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len())),
        ("CL sign", format!("POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: +{}\r\n\r\n{smuggled}", smuggled.len())),
        ("CL list", format!("POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0, {}\r\n\r\n{smuggled}", smuggled.len())),
        ("HTTP/1.0 TE", format!("POST /p HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}")),
    ];
    for (name, raw) in &attempts {
        let reply = exchange(portico.http, raw.as_bytes()).await;
        let seen = statuses(&reply);
        assert_eq!(
            seen.len(),
            1,
            "{name}: one answer, then the connection is closed: {reply}"
        );
        if name.starts_with("CL.TE") || name.starts_with("TE.CL") {
            // Pingora drops the Content-Length and reads the body as chunked (RFC 9112,
            // 6.3), then closes: the bytes after the last chunk are never a request.
            assert!(
                reply.contains("\"body_bytes\":0") && reply.contains("Connection: close"),
                "{name}: {reply}"
            );
        } else {
            assert_eq!(seen, [400], "{name}: {reply}");
        }
    }
    // A request with honest framing passes, and its body stays its body.
    let honest = format!("POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}", smuggled.len());
    let reply = exchange(portico.http, honest.as_bytes()).await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    assert!(
        reply.contains(&format!("\"body_bytes\":{}", smuggled.len())),
        "{reply}"
    );
    assert_eq!(
        secret.request_count(),
        0,
        "a smuggled request reached the protected backend"
    );
}

/// RFC 9112, 9.3.2: requests a client pipelines on one connection are answered in order
/// (nginx does); an access check applies to each as if it came alone.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_each_answered_in_order() {
    let (portico, servers) = protected_site().await;
    let raw = "GET /one HTTP/1.1\r\nHost: a.test\r\n\r\n\
               GET /admin HTTP/1.1\r\nHost: a.test\r\n\r\n\
               POST /three HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc\
               GET /four HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n";
    let reply = exchange(portico.http, raw.as_bytes()).await;
    assert_eq!(statuses(&reply), [200, 403, 200, 200], "{reply}");
    let paths: Vec<&str> = reply
        .match_indices("\"path\":\"")
        .filter_map(|(i, m)| reply[i + m.len()..].split('"').next())
        .collect();
    assert_eq!(paths, ["/one", "/three", "/four"], "{reply}");
    assert!(reply.contains("\"body_bytes\":3"), "{reply}");
    assert_eq!(servers[1].request_count(), 0, "the access check held");
}

/// What Pingora refuses before Portico sees the request (a header it cannot parse, more
/// fields than its parser holds) is answered as Portico answers: 431 for too many fields
/// (it was 400), and the `Server` policy of every other answer (it said `Pingora`).
#[tokio::test(flavor = "multi_thread")]
async fn refusals_before_routing_get_431_and_follow_the_server_policy() {
    let (_servers, mut docs) = backends(&["site"]).await;
    docs.push(
        ingress("public")
            .path("a.test", "Prefix", "/", "site")
            .build(),
    );
    let files = [("all.yaml", to_yaml(&docs))];
    let many_fields = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\n{}\r\n",
        (0..300)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let bad_name = "GET / HTTP/1.1\r\nHost: a.test\r\nBad Name: v\r\n\r\n";
    let server = |reply: &str| {
        reply.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("server: ")
                .map(str::to_string)
        })
    };

    let portico = Portico::start(&files).await;
    let reply = exchange(portico.http, many_fields.as_bytes()).await;
    assert_eq!(statuses(&reply), [431], "{reply}");
    assert_eq!(server(&reply).as_deref(), Some("portico"), "{reply}");
    let reply = exchange(portico.http, bad_name.as_bytes()).await;
    assert_eq!(statuses(&reply), [400], "{reply}");
    assert_eq!(server(&reply).as_deref(), Some("portico"), "{reply}");
    drop(portico);

    let portico = Portico::start_with(&files, &["--hide-server-header"]).await;
    for raw in [many_fields.as_str(), bad_name] {
        let reply = exchange(portico.http, raw.as_bytes()).await;
        assert_eq!(server(&reply), None, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_lines_and_chunks_are_refused_and_oversized_headers_get_431() {
    let (portico, servers) = protected_site().await;
    let smuggled = "GET /admin HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let attempts: Vec<(&str, String, u16)> = vec![
        ("obs-fold", format!("GET /p HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n continued\r\n\r\n{smuggled}"), 400),
        ("bare LF", format!("GET /p HTTP/1.1\nHost: a.test\nX-A: 1\n\n{smuggled}"), 400),
        ("bare LF in one line", format!("GET /p HTTP/1.1\r\nHost: a.test\nX-A: 1\r\n\r\n{smuggled}"), 400),
        (
            "chunk size not hex",
            format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "chunk size overflow",
            format!(
                "POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n{smuggled}"
            ),
            400,
        ),
        (
            "whitespace after a chunk size",
            format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "bare LF in a chunk extension",
            format!("POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nabc\r\nabc\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        ("header too large", format!("GET /p HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n{smuggled}", "a".repeat(40 * 1024)), 431),
        (
            "too many headers",
            format!("GET /p HTTP/1.1\r\nHost: a.test\r\n{}\r\n{smuggled}", (0..120).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()),
            431,
        ),
    ];
    for (name, raw, status) in &attempts {
        let reply = exchange(portico.http, raw.as_bytes()).await;
        assert_eq!(
            statuses(&reply),
            [*status],
            "{name}: one refusal, then the connection is closed: {reply}"
        );
    }
    // Within the limits, the same shapes are answered.
    let fine = format!(
        "GET /p HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    assert_eq!(
        statuses(&exchange(portico.http, fine.as_bytes()).await),
        [200]
    );
    assert_eq!(
        servers[1].request_count(),
        0,
        "a smuggled request reached the protected backend"
    );
}

/// ingress-nginx makes every path of a host a regex location, longest first, as soon as
/// one Ingress on it uses `use-regex` or `rewrite-target`: a catch-all pattern then
/// cannot take `/admin` away from its protected Prefix route.
#[tokio::test(flavor = "multi_thread")]
async fn a_catch_all_regex_from_another_ingress_does_not_take_a_protected_prefix() {
    let (servers, mut docs) = backends(&["site", "secret"]).await;
    docs.push(admin_only_from_10_8());
    docs.push(
        ingress("catchall")
            .path("a.test", "ImplementationSpecific", "/.*", "site")
            .annotation("nginx.ingress.kubernetes.io/use-regex", "true")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    for (path, expected) in [
        ("/admin", "status:403"),
        ("/admin/users", "status:403"),
        ("/ADMIN", "status:403"),
        ("/Admin/users", "status:403"),
        ("/shop", "site"),
        ("/", "site"),
    ] {
        let reply = portico.client.get("a.test", path).await.unwrap();
        assert_eq!(reply.answered_by(), expected, "{path}");
    }
    assert_eq!(
        servers[1].request_count(),
        0,
        "the protected backend saw nothing"
    );
}

/// `portico.io/match-*` conditions pick among the routes of a path before age does; from
/// another namespace they would take a protected path for every request that meets them.
#[tokio::test(flavor = "multi_thread")]
async fn conditions_from_another_namespace_do_not_take_a_protected_path() {
    let (servers, docs) = backends(&["secret", "grab"]).await;
    // The `grab` Service and its endpoints live in the other namespace.
    let mut docs: Vec<_> = docs
        .into_iter()
        .map(|d| match d["metadata"]["name"].as_str() {
            Some(n) if n.starts_with("grab") => in_namespace(d, "other"),
            _ => d,
        })
        .collect();
    docs.push(admin_only_from_10_8());
    docs.push(in_namespace(
        ingress("grab")
            .path("a.test", "Prefix", "/admin", "grab")
            .annotation("portico.io/match-headers", "user-agent")
            .build(),
        "other",
    ));
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let reply = portico
        .client
        .request("GET", "a.test", "/admin", &[("user-agent", "Mozilla/5.0")])
        .await
        .unwrap();
    assert_eq!(reply.answered_by(), "status:403");
    assert_eq!(
        servers[1].request_count(),
        0,
        "the other namespace's route took nothing"
    );
    assert_eq!(servers[0].request_count(), 0);
}
