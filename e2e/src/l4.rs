//! Servers behind L4 ports: real ones from Debian's packages (redis-server, dnsmasq) as
//! child processes stopped on drop, and two small TCP servers of our own for what a real
//! server does not show (a whole transfer echoed after the client's half-close, and the
//! PROXY header an upstream receives).

use crate::harness::free_port;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server process on loopback, killed when dropped.
pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
    /// Files the process reads, removed after it.
    _files: Option<tempfile::TempDir>,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` on a free loopback port, without persistence.
pub async fn redis_server() -> ChildServer {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt package redis-server) is installed");
    started(child, port, None).await
}

/// `child`, once it listens on loopback `port` (dnsmasq listens on TCP too, so its TCP port
/// answering means its UDP one is bound).
async fn started(child: Child, port: u16, files: Option<tempfile::TempDir>) -> ChildServer {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_tcp(addr).await;
    ChildServer {
        child,
        addr,
        _files: files,
    }
}

/// `openssl s_server` on a free loopback port with `certificate`, answering each request
/// with its status page (`-www`): the TLS a passthrough client must reach untouched.
pub async fn openssl_s_server(certificate: &crate::tls::Issued) -> ChildServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &certificate.cert_pem).expect("write cert");
    std::fs::write(&key, &certificate.key_pem).expect("write key");
    let port = free_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed");
    started(child, port, Some(dir)).await
}

/// `dnsmasq` on a free loopback UDP port, answering `name` with `address` and nothing else.
pub async fn dnsmasq(name: &str, address: &str) -> ChildServer {
    let port = free_port();
    // In /usr/sbin, which a user's PATH may not have.
    let program = ["/usr/sbin/dnsmasq", "dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("dnsmasq");
    let child = Command::new(program)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
        ])
        .args([
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
        ])
        .args(["--no-hosts", "--user=root"])
        .arg(format!("--port={port}"))
        .arg(format!("--address=/{name}/{address}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (apt package dnsmasq-base) is installed");
    started(child, port, None).await
}

async fn wait_for_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on {addr}");
}

/// Runs `program` with `args` and returns its standard output, failing on a non-zero exit.
pub async fn run(program: &str, args: &[&str]) -> String {
    let (name, list): (String, Vec<String>) =
        (program.into(), args.iter().map(|a| a.to_string()).collect());
    let out = tokio::task::spawn_blocking(move || Command::new(name).args(list).output())
        .await
        .expect("joined")
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP server that reads each connection to its end, then writes all it read back and
/// closes: what it returns shows the client's half-close arrived and the answer after it.
pub async fn echo_after_eof() -> SocketAddr {
    serve(|mut stream| async move {
        let mut all = Vec::new();
        if stream.read_to_end(&mut all).await.is_ok() {
            let _ = stream.write_all(&all).await;
        }
        let _ = stream.shutdown().await;
    })
    .await
}

/// A TCP server that answers each connection with the first line it received (a PROXY
/// header, when one is sent) and then echoes the rest.
pub async fn first_line_echo() -> SocketAddr {
    serve(|mut stream| async move {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(&got).await;
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await
}

async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handle(stream));
        }
    });
    addr
}
