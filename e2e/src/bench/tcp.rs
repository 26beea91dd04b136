//! `bench compare --tcp`: Portico's TCP services beside nginx's stream module (Debian's
//! `libnginx-mod-stream`) and HAProxy in `mode tcp`, each relaying one port to the same
//! backend with one worker thread. Two measures: the throughput of bulk downloads (a few
//! connections each reading as fast as the backend writes), and connections per second
//! (many clients each connecting, exchanging one byte and closing). The backend and the
//! load generator run in this process, on the cores the proxy does not have.

use super::contenders::Running;
use super::placement::Placement;
use super::procs;
use crate::harness::{binary, free_port};
use crate::manifests::{config_map, service_with_endpoints, to_yaml};
use anyhow::{bail, Context};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Contenders of the TCP comparison.
pub const TCP_CONTENDERS: [&str; 3] = ["portico", "nginx", "haproxy"];

/// Bulk downloads at once.
const BULK_CONNECTIONS: usize = 4;
/// Clients connecting in a loop.
const CONNECTING_CLIENTS: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct TcpResult {
    pub proxy: String,
    /// MiB relayed a second, bulk downloads.
    pub mib_per_second: f64,
    /// Proxy CPU seconds per GiB relayed.
    pub cpu_per_gib: f64,
    /// Connections opened, used for one byte each way and closed, a second.
    pub connections_per_second: f64,
    /// Proxy CPU seconds per 10 000 connections.
    pub cpu_per_10k_connections: f64,
    pub errors: u64,
}

/// Runs `rounds` rounds over the contenders, alternating, and reports each one's medians.
pub fn run(
    duration: Duration,
    rounds: usize,
    pin: bool,
    dir: &Path,
) -> anyhow::Result<Vec<TcpResult>> {
    let placement = if pin { Placement::split(1)? } else { None };
    if let Some(p) = &placement {
        p.enter_rest()?;
        eprintln!("{}", p.describe());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let backend = rt.block_on(backend())?;
    let mut all: Vec<Vec<TcpResult>> = vec![Vec::new(); TCP_CONTENDERS.len()];
    for round in 0..rounds {
        for (i, name) in TCP_CONTENDERS.iter().enumerate() {
            let sub = dir.join(format!("tcp-{name}-{round}"));
            std::fs::create_dir_all(&sub)?;
            let start = || start(name, backend, &sub);
            let running = match &placement {
                Some(p) => p.on_proxy_cores(start)?,
                None => start()?,
            };
            let r = rt.block_on(measure(name, &running, duration))?;
            eprintln!("round {round}: {r:?}");
            all[i].push(r);
        }
    }
    Ok(all.into_iter().map(median).collect())
}

fn median(mut runs: Vec<TcpResult>) -> TcpResult {
    runs.sort_by(|a, b| a.mib_per_second.total_cmp(&b.mib_per_second));
    let mut mid = runs[runs.len() / 2].clone();
    let mut by_conns: Vec<f64> = runs.iter().map(|r| r.connections_per_second).collect();
    by_conns.sort_by(f64::total_cmp);
    mid.connections_per_second = by_conns[by_conns.len() / 2];
    mid.errors = runs.iter().map(|r| r.errors).sum();
    mid
}

/// The markdown table, with each contender's ratios to the better of nginx and HAProxy.
pub fn markdown(results: &[TcpResult]) -> String {
    let best = |f: fn(&TcpResult) -> f64| {
        results
            .iter()
            .filter(|r| r.proxy != "portico")
            .map(f)
            .fold(0.0, f64::max)
    };
    let (best_mib, best_conns) = (
        best(|r| r.mib_per_second),
        best(|r| r.connections_per_second),
    );
    let mut md = String::from(
        "| proxy | MiB/s | CPU s / GiB | connections/s | CPU s / 10k connections | errors | throughput vs best | connections vs best |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in results {
        md += &format!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {:.2} | {:.2} |\n",
            r.proxy,
            r.mib_per_second,
            r.cpu_per_gib,
            r.connections_per_second,
            r.cpu_per_10k_connections,
            r.errors,
            r.mib_per_second / best_mib,
            r.connections_per_second / best_conns,
        );
    }
    md
}

/// The backend: after one byte from the client, `D` streams zeros until the client goes,
/// anything else is echoed back once and the connection closed.
async fn backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first[0] == b'D' {
                    let block = vec![0u8; 256 * 1024];
                    while s.write_all(&block).await.is_ok() {}
                } else {
                    let _ = s.write_all(&first).await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

async fn measure(name: &str, running: &Running, duration: Duration) -> anyhow::Result<TcpResult> {
    let addr = running.addr;
    // Warm up: a few connections of each kind.
    for _ in 0..20 {
        exchange_one_byte(addr)
            .await
            .context("warm-up connection")?;
    }
    let before = procs::usage(running.measured_pid);
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..BULK_CONNECTIONS {
        let (bytes, stop) = (bytes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"D").await?;
            let mut buf = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    bail!("the download ended early");
                }
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut errors = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            errors += 1;
        }
    }
    let after = procs::usage(running.measured_pid);
    let moved = bytes.load(Ordering::Relaxed) as f64;
    let mib_per_second = moved / elapsed.as_secs_f64() / f64::from(1 << 20);
    let cpu_per_gib = (after.cpu_seconds - before.cpu_seconds) / (moved / f64::from(1 << 30));

    let before = procs::usage(running.measured_pid);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTING_CLIENTS {
        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match exchange_one_byte(addr).await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    let after = procs::usage(running.measured_pid);
    let connections = done.load(Ordering::Relaxed) as f64;
    Ok(TcpResult {
        proxy: name.to_string(),
        mib_per_second,
        cpu_per_gib,
        connections_per_second: connections / elapsed.as_secs_f64(),
        cpu_per_10k_connections: (after.cpu_seconds - before.cpu_seconds)
            / (connections / 10_000.0),
        errors: errors + failed.load(Ordering::Relaxed),
    })
}

async fn exchange_one_byte(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    // Closed with a reset, so that tens of thousands of closes leave no TIME_WAIT to run
    // the ephemeral ports out; the close is then immediate, never a blocking one.
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO))?;
    s.write_all(b"E").await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await??;
    Ok(())
}

fn start(name: &str, backend: SocketAddr, dir: &Path) -> anyhow::Result<Running> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let log =
        |n: &str| -> anyhow::Result<std::fs::File> { Ok(std::fs::File::create(dir.join(n))?) };
    let children = match name {
        "portico" => {
            let manifests = dir.join("manifests");
            std::fs::create_dir_all(&manifests)?;
            let mut docs = service_with_endpoints("backend", &[backend]);
            docs.push(config_map(
                "tcp-services",
                &[(&addr.port().to_string(), "default/backend:80")],
            ));
            std::fs::write(manifests.join("bench.yaml"), to_yaml(&docs))?;
            let socket = dir.join("portico.sock");
            let controller = Command::new(binary("portico-controller"))
                .arg("--manifests")
                .arg(&manifests)
                .arg("--socket")
                .arg(&socket)
                .args([
                    "--metrics-addr",
                    "",
                    "--tcp-services-configmap",
                    "default/tcp-services",
                ])
                .stdout(log("controller.log")?)
                .stderr(Stdio::null())
                .spawn()?;
            let port = || ([127, 0, 0, 1], free_port()).into();
            let (http, https, admin): (SocketAddr, SocketAddr, SocketAddr) =
                (port(), port(), port());
            let proxy = Command::new(binary("portico-proxy"))
                .arg("--socket")
                .arg(&socket)
                .args([
                    "--http-addr",
                    &http.to_string(),
                    "--https-addr",
                    &https.to_string(),
                ])
                .args(["--admin-addr", &admin.to_string(), "--threads", "1"])
                .args(["--stream-bind", "127.0.0.1", "--access-log", "off"])
                .stdout(log("proxy.log")?)
                .stderr(Stdio::null())
                .spawn()?;
            vec![proxy, controller]
        }
        "nginx" => {
            let conf = format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 stream {{\n  server {{ listen {addr} reuseport; proxy_pass {backend}; proxy_timeout 600s; }}\n}}\n",
                d = dir.display(),
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            vec![Command::new("nginx")
                .arg("-c")
                .arg(&conf_path)
                .args(["-p", &dir.display().to_string(), "-g", "daemon off;"])
                .stdout(log("nginx.log")?)
                .stderr(Stdio::null())
                .spawn()
                .context("nginx with libnginx-mod-stream")?]
        }
        "haproxy" => {
            let conf = format!(
                "global\n  nbthread 1\n  maxconn 4096\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n\
                 frontend fe\n  bind {addr}\n  default_backend be\n\
                 backend be\n  server s1 {backend}\n"
            );
            let conf_path = dir.join("haproxy.cfg");
            std::fs::write(&conf_path, conf)?;
            vec![Command::new("haproxy")
                .arg("-f")
                .arg(&conf_path)
                .arg("-db")
                .stdout(log("haproxy.log")?)
                .stderr(Stdio::null())
                .spawn()?]
        }
        other => bail!("no TCP contender {other}"),
    };
    let running = Running::new(addr, children);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!(
                "{name} does not listen on {addr}; logs in {}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(running)
}
