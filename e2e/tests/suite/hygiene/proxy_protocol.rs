//! `--proxy-protocol`: connections from a TCP load balancer carry the client's address in
//! a PROXY header, before HTTP on the plain port and before TLS on the HTTPS one. The
//! address counts only when the load balancer is in `--trusted-proxies`.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, tls_secret, to_yaml};
use portico_e2e::tls::{self, ClientOptions, TestCa};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `preamble` then a plain GET for `pp.test`; the response text, empty when the
/// connection was closed without one.
async fn plain(addr: SocketAddr, preamble: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut bytes = preamble.to_vec();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n");
    tcp.write_all(&bytes).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the connection ends by itself");
    String::from_utf8_lossy(&response).into_owned()
}

fn v2_header(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_header_names_the_client_when_its_sender_is_trusted() {
    let ca = TestCa::new("pp ca");
    let cert = ca.issue(&["pp.test"]);
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("pp-tls", &cert.cert_pem, &cert.key_pem));
    docs.push(
        ingress("pp")
            .tls(&["pp.test"], "pp-tls")
            .path("pp.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/allowlist-source-range",
                "203.0.113.0/24",
            )
            .annotation("nginx.ingress.kubernetes.io/ssl-redirect", "false")
            .build(),
    );
    let files = [("all.yaml", to_yaml(&docs))];
    let trusting = Portico::start_with(
        &files,
        &["--proxy-protocol", "--trusted-proxies", "127.0.0.1/32"],
    )
    .await;

    // v1 on the plain port: the client is the header's, for source ranges and the upstream.
    let allowed = plain(
        trusting.http,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n",
    )
    .await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(
        allowed.contains(r#""x-forwarded-for":"203.0.113.7""#),
        "{allowed}"
    );
    let refused = plain(
        trusting.http,
        b"PROXY TCP4 198.51.100.1 127.0.0.1 51000 80\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    // v2 before TLS on the HTTPS port.
    let mut tcp = TcpStream::connect(trusting.https).await.unwrap();
    tcp.write_all(&v2_header([203, 0, 113, 9], 50000))
        .await
        .unwrap();
    let opts = ClientOptions {
        sni: Some("pp.test"),
        alpn: &["http/1.1"],
        ..ClientOptions::default()
    };
    let (stream, hs) = tls::connect_over(tcp, opts.clone())
        .await
        .expect("the handshake follows the header");
    assert_eq!(hs.subject_cn, "pp.test");
    let reply = tls::get(stream, "pp.test", "/").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.echo().unwrap().headers["x-forwarded-for"],
        "203.0.113.9"
    );

    // Without a header, or with a broken one, the connection is closed unanswered.
    for preamble in [&b""[..], b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n"] {
        assert_eq!(
            plain(trusting.http, preamble).await,
            "",
            "{}",
            String::from_utf8_lossy(preamble)
        );
    }
    assert!(
        tls::connect(trusting.https, opts.clone()).await.is_err(),
        "a bare TLS handshake is not a header"
    );

    // An untrusted sender's header is read and ignored: the client is the socket peer.
    let wary = Portico::start_with(&files, &["--proxy-protocol"]).await;
    let ignored = plain(wary.http, b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n").await;
    assert!(ignored.starts_with("HTTP/1.1 403"), "{ignored}");
    let local = plain(wary.http, b"PROXY UNKNOWN\r\n").await;
    assert!(
        local.starts_with("HTTP/1.1 403"),
        "UNKNOWN keeps the peer: {local}"
    );
}
