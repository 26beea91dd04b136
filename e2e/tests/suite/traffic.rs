//! Traffic policies through the real binaries: balancing algorithms, consistent hashing,
//! timeouts, body limits, retries and passive health.

use portico_e2e::client::{post, raw_status};
use portico_e2e::echo::{backends, echo_servers};
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, service_with_endpoints, to_yaml};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One Service `web` over `endpoints`, and an Ingress for `t.test` with `annotations`.
fn site(endpoints: &[SocketAddr], annotations: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut ing = ingress("web").path("t.test", "Prefix", "/", "web");
    for (k, v) in annotations {
        ing = ing.annotation(k, v);
    }
    vec![
        (
            "web.yaml",
            to_yaml(&service_with_endpoints("web", endpoints)),
        ),
        ("ingress.yaml", to_yaml(&[ing.build()])),
    ]
}

async fn tally(portico: &Portico, requests: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..requests {
        *counts
            .entry(
                portico
                    .client
                    .get("t.test", "/")
                    .await
                    .unwrap()
                    .answered_by(),
            )
            .or_insert(0) += 1;
    }
    counts
}

/// Percent of `counts` that `name` got.
fn share(counts: &BTreeMap<String, usize>, name: &str) -> f64 {
    let total: usize = counts.values().sum();
    100.0 * *counts.get(name).unwrap_or(&0) as f64 / total as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_requests_evenly() {
    let servers = echo_servers(&["a", "b", "c"]).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let portico = Portico::start(&site(&addrs, &[])).await;
    // Round robin is exact: 3 × 40 requests in turn give each endpoint 40.
    let counts = tally(&portico, 120).await;
    let expected: BTreeMap<String, usize> = ["a", "b", "c"].map(|n| (n.to_string(), 40)).into();
    assert_eq!(counts, expected);
}

/// Sends requests from `concurrency` clients for `duration`; counts by backend.
async fn concurrent_tally(
    portico: &Portico,
    concurrency: usize,
    duration: Duration,
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = portico.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            while Instant::now() < deadline {
                *counts
                    .entry(
                        client
                            .get("t.test", "/")
                            .await
                            .map_or_else(|e| e.to_string(), |r| r.answered_by()),
                    )
                    .or_insert(0) += 1;
            }
            counts
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn least_conn_and_ewma_send_less_to_a_slow_endpoint() {
    let servers = echo_servers(&["fast", "slow"]).await;
    servers[1].set_delay(Duration::from_millis(40));
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    for algorithm in ["least_conn", "ewma", "round_robin"] {
        let portico =
            Portico::start(&site(&addrs, &[("portico.io/load-balance", algorithm)])).await;
        let counts = concurrent_tally(&portico, 8, Duration::from_secs(2)).await;
        let slow = share(&counts, "slow");
        if algorithm == "round_robin" {
            // The baseline: an even split, whatever the speed.
            assert!(
                (slow - 50.0).abs() <= 5.0,
                "round_robin gave the slow endpoint {slow:.1}%: {counts:?}"
            );
        } else {
            assert!(
                slow < 25.0,
                "{algorithm} gave the slow endpoint {slow:.1}%: {counts:?}"
            );
        }
        assert_eq!(
            counts
                .keys()
                .filter(|k| *k != "fast" && *k != "slow")
                .count(),
            0,
            "failures: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hashing_pins_keys_and_moves_few_when_an_endpoint_goes() {
    let names: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    let servers = echo_servers(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let portico = Portico::start(&site(
        &addrs,
        &[(
            "nginx.ingress.kubernetes.io/upstream-hash-by",
            "user-$http_x_user",
        )],
    ))
    .await;
    let owners = |portico: &Portico| {
        let client = portico.client.clone();
        async move {
            let mut owners = Vec::new();
            for user in 0..300 {
                let user = user.to_string();
                let reply = client
                    .request("GET", "t.test", "/", &[("x-user", &user)])
                    .await
                    .unwrap();
                owners.push(reply.answered_by());
            }
            owners
        }
    };
    let before = owners(&portico).await;
    assert_eq!(
        owners(&portico).await,
        before,
        "every key keeps its endpoint"
    );
    assert!(
        before
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 8,
        "keys spread over the endpoints: {before:?}"
    );

    // e9 goes away: only its keys move.
    portico
        .apply(
            "web.yaml",
            &to_yaml(&service_with_endpoints("web", &addrs[..9])),
        )
        .await;
    let after = owners(&portico).await;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let on_removed = before.iter().filter(|b| *b == "e9").count();
    assert_eq!(moved, on_removed, "only the removed endpoint's keys moved");
    assert!(moved <= 300 * 15 / 100, "{moved} of 300 keys moved");
}

fn chunked_post(host: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = format!("POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").into_bytes();
    for c in chunks {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_gives_504_and_a_large_body_413() {
    let servers = echo_servers(&["a"]).await;
    let portico = Portico::start(&site(
        &[servers[0].addr],
        &[
            ("portico.io/proxy-read-timeout", "1"),
            ("portico.io/proxy-body-size", "1k"),
        ],
    ))
    .await;

    let started = Instant::now();
    let reply = portico
        .client
        .get("t.test", "/?sleep_ms=2500")
        .await
        .unwrap();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_millis(2400),
        "the timeout is 1 s, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        portico
            .client
            .get("t.test", "/?sleep_ms=200")
            .await
            .unwrap()
            .status,
        200,
        "within the timeout"
    );

    let before = servers[0].request_count();
    assert_eq!(
        raw_status(portico.http, &post("t.test", &[b'x'; 2048])).await,
        413
    );
    assert_eq!(
        servers[0].request_count(),
        before,
        "a declared oversize body never reaches the backend"
    );
    assert_eq!(
        raw_status(
            portico.http,
            &chunked_post("t.test", &[&[b'x'; 600], &[b'y'; 600]])
        )
        .await,
        413
    );
    assert_eq!(
        raw_status(portico.http, &post("t.test", &[b'x'; 512])).await,
        200
    );
    assert_eq!(
        raw_status(
            portico.http,
            &chunked_post("t.test", &[&[b'x'; 300], &[b'y'; 300]])
        )
        .await,
        200
    );
}

/// A TCP server on loopback that hands each connection to `handle` and counts what
/// `handle` reports as served.
async fn tcp_server<F, Fut>(handle: F) -> (SocketAddr, Arc<AtomicU64>)
where
    F: Fn(tokio::net::TcpStream, Arc<AtomicU64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(handle(stream, count.clone()));
        }
    });
    (addr, served)
}

/// A TCP server that accepts connections, reads what arrives, and closes without
/// answering: an endpoint that fails after the request was sent. Counts connections.
async fn black_hole() -> (SocketAddr, Arc<AtomicU64>) {
    tcp_server(|mut stream, accepted| async move {
        accepted.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
    })
    .await
}

/// A loopback port nothing listens on.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_mask_a_dead_endpoint_and_never_resend_a_non_idempotent_request() {
    let servers = echo_servers(&["live"]).await;
    let dead = dead_port();
    // Passive health off, so that the failing endpoints stay in rotation throughout.
    let portico = Portico::start(&site(
        &[servers[0].addr, dead],
        &[("portico.io/upstream-max-fails", "0")],
    ))
    .await;
    // Connection refused: nothing was sent, so every request goes to the live endpoint.
    for i in 0..50 {
        assert_eq!(
            portico
                .client
                .get("t.test", "/")
                .await
                .unwrap()
                .answered_by(),
            "live",
            "request {i}"
        );
        assert_eq!(
            raw_status(portico.http, &post("t.test", b"data")).await,
            200,
            "POST {i}"
        );
    }

    // An endpoint that takes the request and drops it: a GET is tried again elsewhere,
    // a POST is not (it may have been acted on).
    let (hole, accepted) = black_hole().await;
    portico
        .apply(
            "web.yaml",
            &to_yaml(&service_with_endpoints("web", &[servers[0].addr, hole])),
        )
        .await;
    let mut post_failures = 0;
    for _ in 0..20 {
        assert_eq!(
            portico
                .client
                .get("t.test", "/")
                .await
                .unwrap()
                .answered_by(),
            "live"
        );
        let before = accepted.load(Ordering::Relaxed);
        let status = raw_status(portico.http, &post("t.test", b"data")).await;
        if status != 200 {
            assert_eq!(status, 502);
            assert_eq!(
                accepted.load(Ordering::Relaxed),
                before + 1,
                "the failed POST went to the black hole once"
            );
            post_failures += 1;
        }
    }
    // Round robin over two endpoints: about half the POSTs land on the black hole.
    assert!(
        post_failures >= 3,
        "only {post_failures} of 20 POSTs reached the black hole"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_health_survives_an_unrelated_snapshot() {
    let (servers, mut docs) = backends(&["other"]).await;
    let live = echo_servers(&["live"]).await;
    let (hole, accepted) = black_hole().await;
    let mut files = site(&[live[0].addr, hole], &[]);
    docs.push(
        ingress("other")
            .path("other.test", "Prefix", "/", "other")
            .build(),
    );
    files.push(("other.yaml", to_yaml(&docs)));
    let portico = Portico::start(&files).await;
    // Three failures take the black hole out for the fail timeout (10 s).
    while accepted.load(Ordering::Relaxed) < 3 {
        assert_eq!(
            portico
                .client
                .get("t.test", "/")
                .await
                .unwrap()
                .answered_by(),
            "live"
        );
    }
    let taken_out = accepted.load(Ordering::Relaxed);
    for _ in 0..20 {
        portico.client.get("t.test", "/").await.unwrap();
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        taken_out,
        "the failing endpoint is skipped"
    );

    // Another Ingress changes; web's pool, and what it learnt, stay.
    let mut changed = ingress("other")
        .path("other.test", "Prefix", "/", "other")
        .path("other.test", "Prefix", "/v2", "other")
        .build();
    changed["metadata"]["labels"] = serde_json::json!({"changed": "yes"});
    portico
        .apply(
            "other.yaml",
            &to_yaml(&[docs[0].clone(), docs[1].clone(), changed]),
        )
        .await;
    for _ in 0..20 {
        assert_eq!(
            portico
                .client
                .get("t.test", "/")
                .await
                .unwrap()
                .answered_by(),
            "live"
        );
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        taken_out,
        "health was reset by an unrelated snapshot"
    );
    drop(servers);
}

/// An HTTP/1.1 server that answers every request with `status` and closes. Counts answers.
async fn fixed_status(status: u16) -> (SocketAddr, Arc<AtomicU64>) {
    tcp_server(move |mut stream, answered| async move {
        let mut buf = [0u8; 8192];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        answered.fetch_add(1, Ordering::Relaxed);
        let reply = format!(
            "HTTP/1.1 {status} Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.write_all(reply.as_bytes()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_upstream_statuses_are_retried_for_idempotent_requests_only() {
    let servers = echo_servers(&["live"]).await;
    let (failing, answered) = fixed_status(503).await;
    let annotations = [
        ("portico.io/proxy-next-upstream", "error timeout http_503"),
        ("portico.io/upstream-max-fails", "0"),
    ];
    let portico = Portico::start(&site(&[servers[0].addr, failing], &annotations)).await;
    for i in 0..20 {
        assert_eq!(
            portico
                .client
                .get("t.test", "/")
                .await
                .unwrap()
                .answered_by(),
            "live",
            "GET {i}"
        );
    }
    assert!(
        answered.load(Ordering::Relaxed) >= 5,
        "the failing endpoint was tried, and its 503 replaced"
    );
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..20 {
            s.push(raw_status(portico.http, &post("t.test", b"data")).await);
        }
        s
    };
    assert!(
        statuses.contains(&503),
        "a POST's 503 is passed on, not retried: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );

    // Without http_503 listed, a 503 is the answer.
    portico
        .apply(
            "ingress.yaml",
            &to_yaml(&[ingress("web").path("t.test", "Prefix", "/", "web").build()]),
        )
        .await;
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        *seen
            .entry(portico.client.get("t.test", "/").await.unwrap().status)
            .or_insert(0) += 1;
    }
    assert!(seen.get(&503).is_some_and(|n| *n >= 5), "{seen:?}");
}

/// A keep-alive backend that answers 200 to each request and closes a connection left idle
/// for `idle`. Counts connections.
async fn closes_when_idle(idle: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    tcp_server(move |mut stream, accepted| async move {
        accepted.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 8192];
        let mut got = Vec::new();
        loop {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout(idle, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            got.clear();
            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(reply).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// Sockets on this machine connected to `port` and waiting for their own side to close
/// (CLOSE_WAIT): the peer closed them and the process holding them has not.
fn close_wait_to(port: u16) -> usize {
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3
                && fields[3] == "08"
                && fields[2]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused_and_closed_once_the_backend_closes_them() {
    let (backend, connections) = closes_when_idle(Duration::from_millis(400)).await;
    let portico = Portico::start(&site(&[backend], &[])).await;
    for _ in 0..5 {
        let r = portico.client.get("t.test", "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "requests one after another share one upstream connection"
    );

    // The backend closes the idle connection; Portico closes its side soon after, rather
    // than holding a dead socket until the next request looks at it.
    let deadline = Instant::now() + Duration::from_secs(4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    while close_wait_to(backend.port()) > 0 {
        assert!(
            Instant::now() < deadline,
            "the proxy still holds the connection the backend closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = portico.client.get("t.test", "/").await.unwrap();
    assert_eq!(r.status, 200, "the next request goes on a new connection");
    assert_eq!(connections.load(Ordering::Relaxed), 2);
}

/// `limit-rate` and `limit-rate-after`: after the free kilobytes, an answer's body goes
/// no faster than the rate. Only the lower bound is checked: a slow machine only adds.
#[tokio::test(flavor = "multi_thread")]
async fn limit_rate_paces_an_answer_after_its_free_bytes() {
    let (servers, mut docs) = backends(&["files"]).await;
    docs.push(
        ingress("slow")
            .path("slow.test", "Prefix", "/", "files")
            .annotation("nginx.ingress.kubernetes.io/limit-rate", "32")
            .annotation("nginx.ingress.kubernetes.io/limit-rate-after", "16")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let started = std::time::Instant::now();
    // 80 KiB: 16 free, then 64 at 32 KiB a second.
    let reply = portico
        .client
        .get("slow.test", "/?download=81920")
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!((reply.status, reply.body.len()), (200, 81920));
    assert!(
        took >= Duration::from_millis(1900),
        "64 KiB at 32 KiB/s took {took:?}"
    );
    drop(servers);
}

/// `service-upstream`: the request goes to the Service's cluster IP and port (where a
/// service mesh or kube-proxy balances), not to the endpoints of its EndpointSlices.
#[tokio::test(flavor = "multi_thread")]
async fn service_upstream_sends_to_the_cluster_ip_instead_of_the_endpoints() {
    let servers = echo_servers(&["cluster-ip", "endpoint"]).await;
    let (cluster_ip, endpoint) = (servers[0].addr, servers[1].addr);
    let mut docs = service_with_endpoints("mesh", &[endpoint]);
    // The Service's own port is the one the cluster IP answers on.
    docs[0]["spec"]["clusterIP"] = serde_json::json!(cluster_ip.ip().to_string());
    docs[0]["spec"]["ports"][0]["port"] = serde_json::json!(cluster_ip.port());
    let mut direct = ingress("direct")
        .path("direct.test", "Prefix", "/", "mesh")
        .build();
    let mut meshed = ingress("meshed")
        .path("meshed.test", "Prefix", "/", "mesh")
        .annotation("nginx.ingress.kubernetes.io/service-upstream", "true")
        .build();
    for ing in [&mut direct, &mut meshed] {
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"] =
            serde_json::json!(cluster_ip.port());
    }
    docs.extend([direct, meshed]);
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    for _ in 0..5 {
        let meshed = portico.client.get("meshed.test", "/").await.unwrap();
        assert_eq!(meshed.answered_by(), "cluster-ip");
        let direct = portico.client.get("direct.test", "/").await.unwrap();
        assert_eq!(direct.answered_by(), "endpoint");
    }
}

/// `proxy-http-version: "1.0"`: an old backend is spoken to in HTTP/1.0, one request a
/// connection after another; other Ingresses of the same Service keep HTTP/1.1.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_http_version_1_0_speaks_http_1_0_upstream() {
    let (servers, mut docs) = backends(&["old"]).await;
    docs.push(
        ingress("old")
            .path("old.test", "Prefix", "/", "old")
            .annotation("nginx.ingress.kubernetes.io/proxy-http-version", "1.0")
            .build(),
    );
    docs.push(
        ingress("new")
            .path("new.test", "Prefix", "/", "old")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    for _ in 0..3 {
        let old = portico.client.get("old.test", "/").await.unwrap();
        assert_eq!(old.status, 200);
        assert_eq!(old.echo().unwrap().version, "HTTP/1.0");
        let new = portico.client.get("new.test", "/").await.unwrap();
        assert_eq!(new.echo().unwrap().version, "HTTP/1.1");
    }
    drop(servers);
}

/// `connection-proxy-header: close`: the backend is told to close each connection after
/// its answer; `keep-alive` (and no annotation) keeps them.
#[tokio::test(flavor = "multi_thread")]
async fn connection_proxy_header_close_reaches_the_backend() {
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("closing")
            .path("close.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/connection-proxy-header",
                "close",
            )
            .build(),
    );
    docs.push(
        ingress("kept")
            .path("kept.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/connection-proxy-header",
                "keep-alive",
            )
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    for _ in 0..2 {
        let closing = portico.client.get("close.test", "/").await.unwrap();
        assert_eq!(
            closing
                .echo()
                .unwrap()
                .headers
                .get("connection")
                .map(String::as_str),
            Some("close")
        );
        let kept = portico.client.get("kept.test", "/").await.unwrap();
        assert_eq!(kept.echo().unwrap().headers.get("connection"), None);
    }
}

/// A mirror that records each request it gets (head and body, as text) and answers late.
async fn slow_recording_mirror(
    answer_after: Duration,
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            record.lock().unwrap().push(text);
                            break;
                        }
                    }
                    match tcp.read(&mut buf).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                tokio::time::sleep(answer_after).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (addr, seen)
}

/// `mirror-target`: each request is copied, body and all, to the mirror, whose slowness
/// and errors the client never sees.
#[tokio::test(flavor = "multi_thread")]
async fn mirror_target_copies_requests_without_holding_them_up() {
    let (_servers, mut docs) = backends(&["web"]).await;
    let (mirror, seen) = slow_recording_mirror(Duration::from_secs(3)).await;
    docs.push(
        ingress("shop")
            .path("shop.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/mirror-target",
                &format!("http://{mirror}/copy$request_uri"),
            )
            .annotation("nginx.ingress.kubernetes.io/mirror-host", "shadow.test")
            .build(),
    );
    docs.push(
        ingress("lean")
            .path("lean.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/mirror-target",
                &format!("http://{mirror}"),
            )
            .annotation("nginx.ingress.kubernetes.io/mirror-request-body", "off")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let started = Instant::now();
    let reply = portico
        .client
        .request("GET", "shop.test", "/orders?id=7", &[("cookie", "s=1")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        raw_status(portico.http, &post("shop.test", b"hello mirror")).await,
        200
    );
    assert_eq!(
        raw_status(portico.http, &post("lean.test", b"not copied")).await,
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the mirror answers after 3 s; the clients did not wait: {:?}",
        started.elapsed()
    );
    portico
        .wait_until("three copies reach the mirror", |_| {
            let n = seen.lock().unwrap().len();
            async move { n >= 3 }
        })
        .await;
    let copies = seen.lock().unwrap().clone();
    let get = copies
        .iter()
        .find(|c| c.starts_with("GET "))
        .expect("the GET's copy");
    assert!(
        get.starts_with("GET /copy/orders?id=7 HTTP/1.1\r\n"),
        "{get}"
    );
    assert!(
        get.to_ascii_lowercase().contains("host: shadow.test\r\n"),
        "{get}"
    );
    assert!(
        get.to_ascii_lowercase().contains("cookie: s=1\r\n"),
        "{get}"
    );
    let post_copy = copies
        .iter()
        .find(|c| c.starts_with("POST /copy/"))
        .expect("the POST's copy");
    assert!(post_copy.ends_with("\r\n\r\nhello mirror"), "{post_copy}");
    let lean = copies
        .iter()
        .find(|c| c.starts_with("POST / "))
        .expect("a copy without a path keeps the request's");
    assert!(
        lean.ends_with("\r\n\r\n"),
        "mirror-request-body off: {lean}"
    );
}

/// `upstream-keepalive-timeout` (the controller ConfigMap's): an idle upstream connection
/// is closed by the proxy after it, and the next request opens a new one.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_keepalive_timeout_closes_idle_upstream_connections() {
    let (backend, connections) = closes_when_idle(Duration::from_secs(60)).await;
    let mut files = site(&[backend], &[]);
    files.push((
        "controller.yaml",
        to_yaml(&[portico_e2e::manifests::config_map(
            "portico-controller",
            &[("upstream-keepalive-timeout", "1")],
        )]),
    ));
    let portico =
        Portico::start_full(&files, &["--configmap=default/portico-controller"], &[]).await;
    for _ in 0..3 {
        assert_eq!(portico.client.get("t.test", "/").await.unwrap().status, 200);
    }
    assert_eq!(connections.load(Ordering::Relaxed), 1, "reused while busy");
    // Past the timeout and the pool's once-a-second sweep.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(portico.client.get("t.test", "/").await.unwrap().status, 200);
    assert_eq!(
        connections.load(Ordering::Relaxed),
        2,
        "the idle connection was closed; the backend would have kept it a minute"
    );
}
