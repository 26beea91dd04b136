//! TCP and UDP services (`--tcp-services-configmap`, `--udp-services-configmap`) through
//! the real binaries, with real servers and clients behind the ports: redis-server and
//! redis-cli, dnsmasq and dig.

use portico_e2e::harness::{free_port, Portico};
use portico_e2e::l4::{dnsmasq, echo_after_eof, first_line_echo, redis_server, run};
use portico_e2e::manifests::{config_map, ingress, service_with_endpoints, to_yaml};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TCP: &str = "--tcp-services-configmap=default/tcp-services";
const UDP: &str = "--udp-services-configmap=default/udp-services";
const BIND: [&str; 2] = ["--stream-bind", "127.0.0.1"];

fn services(name: &str, entries: &[(&str, &str)]) -> String {
    to_yaml(&[config_map(name, entries)])
}

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

async fn listens(port: u16) -> bool {
    TcpStream::connect(local(port)).await.is_ok()
}

async fn redis_cli(port: u16, command: &[&str]) -> String {
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port];
    args.extend_from_slice(command);
    run("redis-cli", &args).await.trim().to_string()
}

async fn ports(portico: &Portico) -> Vec<Value> {
    let reply = portico.admin_get("/streams").await.unwrap();
    serde_json::from_str::<Value>(&reply.text())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Sends redis's `PING` on an open connection and reads the answer.
async fn ping(s: &mut TcpStream) -> [u8; 7] {
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_through_a_tcp_port_that_moves_and_keeps_its_sessions() {
    let redis = redis_server().await;
    // A dead endpoint first: a failed connect goes on to the next endpoint.
    let dead = local(free_port());
    let mut docs = service_with_endpoints("redis", &[dead, redis.addr]);
    docs.push(config_map("unrelated", &[("a", "1")]));
    let (first, moved) = (free_port(), free_port());
    let portico = Portico::start_full(
        &[
            ("redis.yaml", to_yaml(&docs)),
            (
                "tcp.yaml",
                services(
                    "tcp-services",
                    &[
                        (&first.to_string(), "default/redis:80"),
                        ("70000", "default/redis:80"),
                        ("9", "redis:80"),
                    ],
                ),
            ),
        ],
        &[TCP],
        &BIND,
    )
    .await;
    portico
        .wait_until("the TCP port listens", |_| listens(first))
        .await;
    for _ in 0..4 {
        assert_eq!(redis_cli(first, &["SET", "greeting", "hello"]).await, "OK");
    }
    assert_eq!(redis_cli(first, &["GET", "greeting"]).await, "hello");

    // The two bad entries are reported on the ConfigMap, naming key and value.
    let config: Value =
        serde_json::from_str(&portico.admin_get("/config").await.unwrap().text()).unwrap();
    let messages: Vec<&str> = config["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["object"] == "ConfigMap default/tcp-services")
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m
                .starts_with("key \"70000\": value \"default/redis:80\": the key is not a port"))
    );
    assert!(messages
        .iter()
        .any(|m| m.starts_with("key \"9\": value \"redis:80\": expected namespace/service:port")));

    // A session open across an unrelated change keeps working.
    let mut session = TcpStream::connect(local(first)).await.unwrap();
    assert_eq!(&ping(&mut session).await, b"+PONG\r\n");
    let before = portico.applied_version().await;
    portico.write(
        "unrelated.yaml",
        &to_yaml(&[ingress("web")
            .path("web.test", "Prefix", "/", "redis")
            .build()]),
    );
    portico.wait_for_version_after(before).await;
    assert_eq!(&ping(&mut session).await, b"+PONG\r\n");

    // The port moves: the old one stops accepting, the new one serves, within a second.
    let before = portico.applied_version().await;
    portico.write(
        "tcp.yaml",
        &services("tcp-services", &[(&moved.to_string(), "default/redis:80")]),
    );
    portico.wait_for_version_after(before).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while (listens(first).await || !listens(moved).await) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!listens(first).await, "the removed port is closed");
    assert_eq!(redis_cli(moved, &["GET", "greeting"]).await, "hello");
    assert_eq!(
        ports(&portico).await,
        vec![
            serde_json::json!({"port": moved, "protocol": "tcp", "service": "default/redis:80", "state": "listening"})
        ]
    );

    let metrics = portico.admin_get("/metrics").await.unwrap().text();
    let line = format!(
        "portico_stream_upstream_connect_errors_total{{port=\"{first}\",protocol=\"tcp\"}}"
    );
    assert!(
        metrics.contains(&line),
        "connect errors counted per port:\n{metrics}"
    );
    portico
        .wait_until("one access-log line per TCP session", |p| async move {
            p.logs().contains("\"protocol\":\"tcp\"")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_transfer_passes_both_ways_with_half_close() {
    let upstream = echo_after_eof().await;
    let port = free_port();
    let portico = Portico::start_full(
        &[
            (
                "echo.yaml",
                to_yaml(&service_with_endpoints("bulk", &[upstream])),
            ),
            (
                "tcp.yaml",
                services("tcp-services", &[(&port.to_string(), "default/bulk:80")]),
            ),
        ],
        &[TCP],
        &BIND,
    )
    .await;
    portico
        .wait_until("the TCP port listens", |_| listens(port))
        .await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let stream = TcpStream::connect(local(port)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        // Half-close: the upstream answers only once it has seen the end.
        write.shutdown().await.unwrap();
        write
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut back))
        .await
        .expect("the transfer finishes")
        .unwrap();
    let _write = writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "the bytes come back unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_is_read_from_trusted_clients_and_sent_upstream() {
    let upstream = first_line_echo().await;
    let (both, send_only) = (free_port(), free_port());
    let portico = Portico::start_full(
        &[
            (
                "pp.yaml",
                to_yaml(&service_with_endpoints("pp", &[upstream])),
            ),
            (
                "tcp.yaml",
                services(
                    "tcp-services",
                    &[
                        (&both.to_string(), "default/pp:80:PROXY:PROXY"),
                        (&send_only.to_string(), "default/pp:80::PROXY"),
                    ],
                ),
            ),
        ],
        &[TCP],
        &[BIND[0], BIND[1], "--trusted-proxies", "127.0.0.1/32"],
    )
    .await;
    portico
        .wait_until("the TCP ports listen", |_| async {
            listens(both).await && listens(send_only).await
        })
        .await;

    let exchange = |port: u16, send: Vec<u8>| async move {
        let mut s = TcpStream::connect(local(port)).await.unwrap();
        s.write_all(&send).await.unwrap();
        let mut got = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut got))
            .await
            .unwrap()
            .unwrap_or(0);
        String::from_utf8_lossy(&got[..n]).into_owned()
    };
    let got = exchange(
        both,
        b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 6000\r\nhello".to_vec(),
    )
    .await;
    assert!(
        got.starts_with(&format!("PROXY TCP4 203.0.113.7 127.0.0.1 5000 {both}\r\n")),
        "the client's address from its header goes upstream: {got:?}"
    );
    let got = exchange(send_only, b"hi\r\n".to_vec()).await;
    let first = got.split("\r\n").next().unwrap_or_default();
    assert!(
        first.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ")
            && first.ends_with(&format!(" {send_only}")),
        "without a header from the client, its own address goes upstream: {got:?}"
    );
    assert_eq!(
        exchange(both, b"hello\r\n".to_vec()).await,
        "",
        "no header: closed, nothing relayed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_through_a_udp_port() {
    let dns = dnsmasq("portico.test", "10.1.2.3").await;
    let port = free_port();
    let portico = Portico::start_full(
        &[
            (
                "dns.yaml",
                to_yaml(&service_with_endpoints("dns", &[dns.addr])),
            ),
            (
                "udp.yaml",
                services("udp-services", &[(&port.to_string(), "default/dns:80")]),
            ),
        ],
        &[UDP],
        &BIND,
    )
    .await;
    portico
        .wait_until("the UDP port is open", |p| async move {
            ports(p).await.iter().any(|s| s["state"] == "listening")
        })
        .await;
    let port_arg = port.to_string();
    for _ in 0..3 {
        let answer = run(
            "dig",
            &[
                "@127.0.0.1",
                "-p",
                &port_arg,
                "portico.test",
                "A",
                "+short",
                "+tries=1",
                "+time=2",
            ],
        )
        .await;
        assert_eq!(answer.trim(), "10.1.2.3");
    }
    let metrics = portico.admin_get("/metrics").await.unwrap().text();
    let sent = format!(
        "portico_stream_datagrams_total{{direction=\"sent\",port=\"{port}\",protocol=\"udp\"}} 3"
    );
    assert!(metrics.contains(&sent), "{metrics}");
    // proxy-stream-responses 1: each query's session ends with its answer.
    let open = format!("portico_stream_sessions_open{{port=\"{port}\",protocol=\"udp\"}} 0");
    assert!(metrics.contains(&open), "{metrics}");
    portico
        .wait_until("one access-log line per UDP session", |p| async move {
            p.logs().matches("\"protocol\":\"udp\"").count() == 3
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_passthrough_relays_by_sni_and_terminates_every_other_host() {
    use portico_e2e::l4::openssl_s_server;
    use portico_e2e::manifests::tls_secret;
    use portico_e2e::tls::{self, ClientOptions, TestCa};

    let ca = TestCa::new("test ca");
    let (argo, site) = (ca.issue(&["argo.test"]), ca.issue(&["site.test"]));
    let backend = openssl_s_server(&argo).await;
    let (_servers, mut docs) = portico_e2e::echo::backends(&["web"]).await;
    docs.extend(service_with_endpoints("argocd", &[backend.addr]));
    docs.push(tls_secret("site-tls", &site.cert_pem, &site.key_pem));
    docs.push(
        ingress("argocd")
            .path("argo.test", "Prefix", "/", "argocd")
            .annotation("nginx.ingress.kubernetes.io/ssl-passthrough", "true")
            .build(),
    );
    docs.push(
        ingress("site")
            .tls(&["site.test"], "site-tls")
            .path("site.test", "Prefix", "/", "web")
            .build(),
    );
    let portico = Portico::start_full(
        &[("all.yaml", to_yaml(&docs))],
        &[],
        &["--enable-ssl-passthrough", "--client-header-timeout", "2"],
    )
    .await;
    let sni = |name| ClientOptions {
        sni: Some(name),
        ..Default::default()
    };

    // The passthrough host's client sees the backend's own certificate and talks to it.
    for _ in 0..3 {
        let (stream, hs) = tls::connect(portico.https, sni("argo.test")).await.unwrap();
        assert_eq!(
            (hs.subject_cn.as_str(), hs.serial.as_str()),
            ("argo.test", argo.serial.as_str())
        );
        let reply = tls::get(stream, "argo.test", "/").await.unwrap();
        assert!(
            reply.text().contains("s_server"),
            "answered by openssl s_server: {}",
            reply.text()
        );
    }
    // Other hosts on the same port are terminated by Portico, as before.
    let (stream, hs) = tls::connect(portico.https, sni("site.test")).await.unwrap();
    assert_eq!(hs.serial, site.serial);
    assert_eq!(
        tls::get(stream, "site.test", "/")
            .await
            .unwrap()
            .answered_by(),
        "web"
    );
    let (_, hs) = tls::connect(portico.https, sni("other.test"))
        .await
        .unwrap();
    assert_eq!(hs.subject_cn, "Portico Default Certificate");

    // A hello that arrives in pieces of 40 bytes, 10 ms apart, still finds its host.
    let splitter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let split_addr = splitter.local_addr().unwrap();
    let https = portico.https;
    tokio::spawn(async move {
        let (client, _) = splitter.accept().await.unwrap();
        let server = TcpStream::connect(https).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
        let mut buf = [0u8; 40];
        loop {
            let n = client_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let (_, hs) = tls::connect(split_addr, sni("argo.test")).await.unwrap();
    assert_eq!(hs.serial, argo.serial, "relayed, not terminated");

    // A client that never finishes its hello is closed after --client-header-timeout.
    let mut slow = TcpStream::connect(portico.https).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed: {closed:?}"
    );

    // Plain HTTP on the HTTPS port is no TLS at all: refused as before, nothing relayed.
    let mut plain = TcpStream::connect(portico.https).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: argo.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("s_server"));

    portico
        .wait_until("a log line per passed-through connection", |p| async move {
            p.logs().matches("\"protocol\":\"tls-passthrough\"").count() >= 4
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_passthrough_composes_with_the_proxy_protocol() {
    use portico_e2e::l4::openssl_s_server;
    use portico_e2e::tls::{self, ClientOptions, TestCa};

    let argo = TestCa::new("test ca").issue(&["argo.test"]);
    let backend = openssl_s_server(&argo).await;
    let mut docs = service_with_endpoints("argocd", &[backend.addr]);
    docs.push(
        ingress("argocd")
            .path("argo.test", "Prefix", "/", "argocd")
            .annotation("nginx.ingress.kubernetes.io/ssl-passthrough", "true")
            .build(),
    );
    let portico = Portico::start_full(
        &[("all.yaml", to_yaml(&docs))],
        &[],
        &[
            "--enable-ssl-passthrough",
            "--proxy-protocol",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
    )
    .await;
    let mut raw = TcpStream::connect(portico.https).await.unwrap();
    raw.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n")
        .await
        .unwrap();
    let options = ClientOptions {
        sni: Some("argo.test"),
        ..Default::default()
    };
    let (stream, hs) = tls::connect_over(raw, options).await.unwrap();
    assert_eq!(hs.serial, argo.serial, "relayed to the backend");
    drop(stream);
    portico
        .wait_until(
            "the session's line names the client from the PROXY header",
            |p| async move {
                p.logs()
                    .contains("\"protocol\":\"tls-passthrough\",\"port\":")
                    && p.logs().contains("\"client\":\"203.0.113.9:40000\"")
            },
        )
        .await;
}
