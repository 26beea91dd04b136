//! `--client-header-timeout` and `--client-keepalive-timeout` against real slow clients on
//! loopback: a header sent a byte at a time is cut off however steadily the bytes come,
//! over plain HTTP and over TLS, while a slow body and a prompt keep-alive are not.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, tls_secret, to_yaml};
use portico_e2e::tls::{self, ClientOptions, TestCa};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: &str = "2";
const KEEPALIVE_TIMEOUT: &str = "3";

/// Sends `bytes` one every `every`, watching for the server to close; how long the
/// connection lasted, or `None` if it outlived all of `bytes`.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    every: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    for b in bytes {
        if stream
            .write_all(&[*b])
            .await
            .and(stream.flush().await)
            .is_err()
        {
            return Some(start.elapsed());
        }
        match tokio::time::timeout(every, stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(n)) => panic!(
                "answered a header that never ended: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    None
}

/// The response to a request already sent, read until the body's `Content-Length` is in.
async fn response<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length: ")
                    .or_else(|| l.strip_prefix("Content-Length: "))
            });
            if length
                .and_then(|l| l.trim().parse::<usize>().ok())
                .is_some_and(|l| body.len() >= l)
            {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_are_cut_off_while_slow_bodies_and_prompt_keep_alives_are_not() {
    let ca = TestCa::new("slow ca");
    let cert = ca.issue(&["slow.test"]);
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("slow-tls", &cert.cert_pem, &cert.key_pem));
    docs.push(
        ingress("slow")
            .tls(&["slow.test"], "slow-tls")
            .path("slow.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/ssl-redirect", "false")
            .build(),
    );
    let args = [
        "--client-header-timeout",
        HEADER_TIMEOUT,
        "--client-keepalive-timeout",
        KEEPALIVE_TIMEOUT,
    ];
    let portico = Portico::start_with(&[("all.yaml", to_yaml(&docs))], &args).await;
    let step = Duration::from_millis(400);
    let slow_header =
        b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";

    // A byte every 400 ms never trips a per-read timeout, but the header as a whole has 2 s.
    let mut plain = TcpStream::connect(portico.http).await.unwrap();
    let lasted = trickle(&mut plain, slow_header, step)
        .await
        .expect("the plain connection is closed");
    assert!(
        lasted >= Duration::from_millis(1500) && lasted < Duration::from_secs(6),
        "plain: closed after {lasted:?}"
    );
    let opts = ClientOptions {
        sni: Some("slow.test"),
        alpn: &["http/1.1"],
        ..ClientOptions::default()
    };
    let (mut secure, _) = tls::connect(portico.https, opts.clone()).await.unwrap();
    let lasted = trickle(&mut secure, slow_header, step)
        .await
        .expect("the TLS connection is closed");
    assert!(
        lasted >= Duration::from_millis(1500) && lasted < Duration::from_secs(6),
        "TLS: closed after {lasted:?}"
    );

    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(portico.http).await.unwrap();
    let mut buf = [0u8; 16];
    let start = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(8), silent.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(start.elapsed() < Duration::from_secs(6));

    // A body may take longer than the header timeout: only the header is bounded.
    let mut upload = TcpStream::connect(portico.http).await.unwrap();
    upload
        .write_all(b"POST /upload HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 12\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        trickle(&mut upload, b"hello world", step).await,
        None,
        "the upload is not cut off"
    );
    upload.write_all(b"!").await.unwrap();
    let answer = response(&mut upload).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""body_bytes":12"#), "{answer}");

    // Keep-alive: a next request within the keep-alive timeout is served on the same
    // connection, even after longer than the header timeout; an idle one is closed after it.
    let request = b"GET /again HTTP/1.1\r\nHost: slow.test\r\n\r\n";
    tokio::time::sleep(Duration::from_millis(2500)).await;
    upload.write_all(request).await.unwrap();
    assert!(response(&mut upload).await.starts_with("HTTP/1.1 200"));
    let start = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(8), upload.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let idle = start.elapsed();
    assert!(
        idle >= Duration::from_millis(2500) && idle < Duration::from_secs(7),
        "idle connection closed after {idle:?}"
    );

    // HTTP/2 over TLS is left to its own timeouts: a request after the header timeout works.
    let (stream, hs) = tls::connect(
        portico.https,
        ClientOptions {
            alpn: &["h2"],
            ..opts
        },
    )
    .await
    .unwrap();
    assert_eq!(hs.alpn.as_deref(), Some("h2"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        tls::get(stream, "slow.test", "/").await.unwrap().status,
        200
    );
}

/// Every state a connection can wait in ends: a whole request shorter than the HTTP/2
/// preface is answered at once (the check for the preface stops at its first byte), and an
/// HTTP/2 connection with no open stream is closed after the keep-alive timeout, in clear
/// text and over TLS.
#[tokio::test(flavor = "multi_thread")]
async fn short_requests_are_answered_and_idle_http2_connections_are_closed() {
    let ca = TestCa::new("idle ca");
    let cert = ca.issue(&["idle.test"]);
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(tls_secret("idle-tls", &cert.cert_pem, &cert.key_pem));
    docs.push(
        ingress("idle")
            .tls(&["idle.test"], "idle-tls")
            .path("idle.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/ssl-redirect", "false")
            .build(),
    );
    let files = [("all.yaml", to_yaml(&docs))];
    // Without the header deadline (0 turns it off), Pingora's own check for the preface
    // must stop early too (vendored pingora-core, change 5).
    let unguarded = Portico::start_with(&files, &["--client-header-timeout", "0"]).await;
    let args = ["--client-keepalive-timeout", "2"];
    let portico = Portico::start_with(&files, &args).await;

    for addr in [unguarded.http, portico.http] {
        for short in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(short).await.unwrap();
            let mut answer = vec![0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("{:?} was not answered", String::from_utf8_lossy(short)))
                .unwrap();
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(answer.starts_with("HTTP/1."), "{answer}");
        }
    }
    drop(unguarded);

    // Prior-knowledge HTTP/2: the preface and an empty SETTINGS frame, then nothing.
    let hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let mut h2c = TcpStream::connect(portico.http).await.unwrap();
    h2c.write_all(hello).await.unwrap();
    let start = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), h2c.read_to_end(&mut sink))
        .await
        .expect("an idle h2c connection is closed")
        .ok();
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        start.elapsed()
    );

    let opts = ClientOptions {
        sni: Some("idle.test"),
        alpn: &["h2"],
        ..ClientOptions::default()
    };
    let (mut h2, hs) = tls::connect(portico.https, opts).await.unwrap();
    assert_eq!(hs.alpn.as_deref(), Some("h2"));
    h2.write_all(hello).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), h2.read_to_end(&mut sink))
        .await
        .expect("an idle HTTP/2 connection over TLS is closed")
        .ok();
}
