//! gRPC through the proxy with tonic on both ends: over TLS (h2 by ALPN) and h2c to the
//! proxy, to GRPCS and GRPC upstreams; unary and server-streaming calls, status and
//! trailers intact, and the client's deadline reaching the backend.

use portico_e2e::grpc::{GrpcClient, GrpcServer};
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, service_with_endpoints, tls_secret, to_yaml};
use portico_e2e::tls::TestCa;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_keep_status_trailers_and_deadlines_through_the_proxy() {
    let ca = TestCa::new("test ca");
    let any = || "127.0.0.1:0".parse().unwrap();
    let grpcs = GrpcServer::start(
        "grpcs-backend",
        any(),
        Some(ca.acceptor(&["grpcs.default.svc"])),
    )
    .await
    .unwrap();
    let grpc = GrpcServer::start("grpc-backend", any(), None)
        .await
        .unwrap();
    let front = ca.issue(&["grpcs.test", "grpc.test"]);

    let mut docs = service_with_endpoints("grpcs", &[grpcs.addr]);
    docs.extend(service_with_endpoints("grpc", &[grpc.addr]));
    docs.push(tls_secret("front-tls", &front.cert_pem, &front.key_pem));
    docs.push(
        ingress("grpcs")
            .annotation("nginx.ingress.kubernetes.io/backend-protocol", "GRPCS")
            .tls(&["grpcs.test"], "front-tls")
            .path("grpcs.test", "Prefix", "/", "grpcs")
            .build(),
    );
    docs.push(
        ingress("grpc")
            .annotation("portico.io/backend-protocol", "GRPC")
            .annotation("portico.io/ssl-redirect", "false")
            .tls(&["grpc.test"], "front-tls")
            .path("grpc.test", "Prefix", "/", "grpc")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    // (host, over TLS to the proxy, the backend expected, whether the backend hop is TLS)
    let cases = [
        ("grpcs.test", true, "grpcs-backend", true),
        ("grpc.test", true, "grpc-backend", false),
        ("grpc.test", false, "grpc-backend", false),
    ];
    for (host, tls, backend, backend_tls) in cases {
        let target = if tls { portico.https } else { portico.http };
        let what = format!("{host} over {}", if tls { "TLS" } else { "h2c" });
        let mut client = GrpcClient::connect(target, host, tls)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", portico.logs()));

        let reply = client
            .unary("hello", Some(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert_eq!(
            reply
                .metadata()
                .get("x-backend")
                .and_then(|v| v.to_str().ok()),
            Some(backend),
            "{what}: response headers intact"
        );
        let text = String::from_utf8_lossy(reply.get_ref()).into_owned();
        assert!(
            text.starts_with(&format!("backend={backend} tls={backend_tls} "))
                && text.ends_with("msg=hello"),
            "{what}: {text}"
        );
        let timeout = text
            .split("timeout=")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .unwrap_or("");
        let seen = grpc_timeout(timeout).unwrap_or_else(|| {
            panic!("{what}: no grpc-timeout reached the backend, got {timeout:?}")
        });
        assert!(
            seen > Duration::from_secs(4) && seen <= Duration::from_secs(5),
            "{what}: the client's 5 s deadline arrived as {seen:?}"
        );

        let status = client.unary("fail", None).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "no such thing"),
            "{what}: grpc-status and grpc-message"
        );
        assert_eq!(
            status
                .metadata()
                .get("x-detail")
                .and_then(|v| v.to_str().ok()),
            Some("trailer intact"),
            "{what}: trailers"
        );

        let started = Instant::now();
        let status = client
            .unary("sleep:3000", Some(Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert!(
            matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
            "{what}: {status:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: the backend honoured the deadline"
        );

        assert_eq!(
            client.count(5).await.unwrap(),
            ["0", "1", "2", "3", "4"],
            "{what}: server streaming"
        );
    }
}

/// Parses a `grpc-timeout` value: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
