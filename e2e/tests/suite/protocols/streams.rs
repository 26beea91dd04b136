//! Long-lived and large exchanges through the proxy: a WebSocket that outlives 20
//! snapshot changes, and 100 MiB uploads and downloads that are streamed, not buffered.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portico_e2e::bench::procs;
use portico_e2e::echo::{backends, Zeros};
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, to_yaml};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a reply within 5 s")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("websocket ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_stays_open_across_twenty_snapshot_changes() {
    let (_servers, base) = backends(&["first", "second"]).await;
    let route = |service: &str| {
        to_yaml(&[ingress("chat")
            .path("ws.test", "Prefix", "/", service)
            .build()])
    };
    let portico = Portico::start(&[
        ("backends.yaml", to_yaml(&base)),
        ("chat.yaml", route("first")),
    ])
    .await;

    let tcp = TcpStream::connect(portico.http).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "first: hello");

    // Each change moves the route itself between the two backends, and adds a route elsewhere.
    let mut versions = Vec::new();
    for i in 0..20 {
        let service = if i % 2 == 0 { "second" } else { "first" };
        let mut docs = vec![ingress("chat")
            .path("ws.test", "Prefix", "/", service)
            .build()];
        docs.push(
            ingress("other")
                .path(&format!("other{i}.test"), "Prefix", "/", "first")
                .build(),
        );
        versions.push(portico.apply("chat.yaml", &to_yaml(&docs)).await);
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        assert_eq!(
            next_text(&mut ws).await,
            format!("first: message {i}"),
            "after change {i} the open WebSocket still reaches its backend"
        );
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "20 distinct snapshots applied: {versions:?}"
    );

    // New connections follow the latest snapshot (the route now points at "first" again after an even count).
    let tcp = TcpStream::connect(portico.http).await.unwrap();
    let (mut fresh, _) = tokio_tungstenite::client_async("ws://ws.test/chat", tcp)
        .await
        .unwrap();
    fresh.send(Message::text("new")).await.unwrap();
    assert_eq!(next_text(&mut fresh).await, "first: new");
    ws.close(None).await.unwrap();
}

const HUNDRED_MIB: usize = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn hundred_mib_bodies_stream_through_without_growing_the_proxy() {
    let (_servers, mut docs) = backends(&["bulk"]).await;
    // Uploads are limited to 1 MiB unless the Ingress says otherwise, as in ingress-nginx.
    docs.push(
        ingress("bulk")
            .annotation("portico.io/proxy-body-size", "0")
            .path("bulk.test", "Prefix", "/", "bulk")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let pid = portico.proxy_pid();
    // Warm the proxy's connection paths first, so that growth measures the bodies.
    assert_eq!(
        portico
            .client
            .get("bulk.test", "/warm")
            .await
            .unwrap()
            .status,
        200
    );
    let before = procs::usage(pid).rss_bytes;

    let tcp = TcpStream::connect(portico.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let upload = http::Request::post("/upload")
        .header("host", "bulk.test")
        .body(Zeros::new(HUNDRED_MIB))
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(60), sender.send_request(upload))
        .await
        .unwrap()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&reply.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        report["body_bytes"], HUNDRED_MIB,
        "the backend received the whole upload"
    );

    let tcp = TcpStream::connect(portico.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let download = http::Request::get(format!("/download?download={HUNDRED_MIB}"))
        .header("host", "bulk.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(60), sender.send_request(download))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status(), 200);
    let mut body = reply.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(received, HUNDRED_MIB, "the whole download arrived");

    let peak = procs::usage(pid).peak_rss_bytes;
    let growth = peak.saturating_sub(before);
    eprintln!(
        "proxy resident memory: {:.1} MiB before, peak {:.1} MiB, growth {:.1} MiB for 100 MiB up and down",
        mib(before),
        mib(peak),
        mib(growth)
    );
    assert!(
        growth < 32 * 1024 * 1024,
        "the proxy grew by {:.1} MiB: bodies must be streamed",
        mib(growth)
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
