//! The churn run: steady wrk load on one route while the configuration changes 20 times a
//! second (in turn: endpoints scaled between one and three, a route added or removed, the
//! route's TLS certificate rotated), with checkers that count failed or misrouted answers
//! over HTTP and over fresh TLS handshakes. The p99 under churn is compared with a quiet
//! run of the same length just before it, with the same checkers running.

use super::wrk::{LoadResult, Wrk};
use crate::echo::EchoServer;
use crate::harness::Portico;
use crate::manifests::{ingress, service_with_endpoints, tls_secret, to_yaml};
use crate::tls::{self, ClientOptions, TestCa};
use serde::Serialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct ChurnReport {
    pub seconds: u64,
    pub changes: u64,
    pub snapshots_applied: u64,
    pub quiet: LoadResult,
    pub churn: LoadResult,
    pub checked: u64,
    pub failed: u64,
    pub misrouted: u64,
    pub certificates_rotated: u64,
    /// Requests over a fresh TLS handshake each.
    pub tls_checked: u64,
    /// Handshakes or requests that failed, or answers from the wrong backend.
    pub tls_failed: u64,
    /// A handshake presented a certificate that was never issued for the host.
    pub tls_wrong_certificate: u64,
    /// How many of the rotated certificates handshakes were seen to present.
    pub tls_certificates_seen: usize,
    /// The proxy's and the controller's resident memory and open descriptors, sampled every
    /// ten seconds of the churn: a soak (`--seconds 600`) reads their drift from here.
    pub proxy: Vec<Resources>,
    pub controller: Vec<Resources>,
}

/// One sample of a process's resources.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Resources {
    pub at_seconds: u64,
    pub rss_mib: f64,
    pub open_fds: usize,
}

impl Resources {
    fn of(pid: u32, at_seconds: u64) -> Self {
        Resources {
            at_seconds,
            rss_mib: super::procs::usage(pid).rss_bytes as f64 / (1 << 20) as f64,
            open_fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        }
    }
}

/// How a series of samples moved: first, last and highest.
pub fn drift(samples: &[Resources]) -> String {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return "no samples".into();
    };
    let max_rss = samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let max_fds = samples.iter().map(|s| s.open_fds).max().unwrap_or(0);
    format!(
        "RSS {:.1} → {:.1} MiB (max {:.1}), descriptors {} → {} (max {})",
        first.rss_mib, last.rss_mib, max_rss, first.open_fds, last.open_fds, max_fds
    )
}

fn steady_manifest(pods: &[SocketAddr], scale: usize) -> String {
    let mut docs = service_with_endpoints("steady", &pods[..scale]);
    // HTTPS too, without redirecting the plain HTTP load.
    let steady = ingress("steady")
        .tls(&["steady.test"], "steady-tls")
        .annotation("portico.io/ssl-redirect", "false");
    docs.push(steady.path("steady.test", "Prefix", "/", "steady").build());
    to_yaml(&docs)
}

fn certificate_manifest(issued: &tls::Issued) -> String {
    to_yaml(&[tls_secret("steady-tls", &issued.cert_pem, &issued.key_pem)])
}

fn extra_manifest(k: u64, extra: SocketAddr) -> String {
    let mut docs = service_with_endpoints("extra", &[extra]);
    docs.push(
        ingress(&format!("extra-{k}"))
            .path(&format!("extra{k}.test"), "Prefix", "/", "extra")
            .build(),
    );
    to_yaml(&docs)
}

async fn wrk_in_background(target: SocketAddr, seconds: u64) -> anyhow::Result<LoadResult> {
    let dir = tempfile::tempdir()?;
    tokio::task::spawn_blocking(move || {
        Wrk {
            connections: 32,
            threads: 1,
            host: "steady.test".into(),
            path: "/".into(),
            https: false,
            headers: Vec::new(),
        }
        .run(target, Duration::from_secs(seconds), dir.path())
    })
    .await?
}

pub async fn run(seconds: u64, changes_per_second: u64) -> anyhow::Result<ChurnReport> {
    let first = EchoServer::start("steady-1", "127.0.0.21:0".parse()?).await?;
    let port = first.addr.port();
    let mut pods = vec![first];
    for i in 2..=3 {
        pods.push(
            EchoServer::start(
                &format!("steady-{i}"),
                format!("127.0.0.{}:{port}", 20 + i).parse()?,
            )
            .await?,
        );
    }
    let extra = EchoServer::start("extra", "127.0.0.1:0".parse()?).await?;
    let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
    let ca = TestCa::new("churn ca");
    let first_cert = ca.issue(&["steady.test"]);
    let issued = Arc::new(Mutex::new(HashSet::from([first_cert.serial.clone()])));
    let portico = Arc::new(
        Portico::start_with(
            &[
                ("steady.yaml", steady_manifest(&addrs, 3)),
                ("steady-tls.yaml", certificate_manifest(&first_cert)),
            ],
            // A line per request of a minute of wrk would fill the disk, not test anything.
            &["--access-log", "off"],
        )
        .await,
    );

    // The checker: every answer for steady.test must come from a steady pod.
    let stop = Arc::new(AtomicBool::new(false));
    let (checked, failed, misrouted) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let checker = {
        let (p, stop, checked, failed, misrouted) = (
            portico.clone(),
            stop.clone(),
            checked.clone(),
            failed.clone(),
            misrouted.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                checked.fetch_add(1, Ordering::Relaxed);
                match p.client.get("steady.test", "/").await {
                    Ok(r) if r.status == 200 && r.answered_by().starts_with("steady-") => {}
                    Ok(r) if r.status == 200 => {
                        misrouted.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    // The TLS checker: a fresh handshake each time; the certificate must be one issued for
    // the host (rotations race with handshakes, so any of them), the answer a steady pod's.
    let (tls_checked, tls_failed, tls_wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let tls_checker = {
        let (p, stop, checked, failed, wrong, issued, seen) = (
            portico.clone(),
            stop.clone(),
            tls_checked.clone(),
            tls_failed.clone(),
            tls_wrong.clone(),
            issued.clone(),
            seen.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                checked.fetch_add(1, Ordering::Relaxed);
                let opts = ClientOptions {
                    sni: Some("steady.test"),
                    alpn: &["h2", "http/1.1"],
                    ..ClientOptions::default()
                };
                let ok = match tls::connect(p.https, opts).await {
                    Ok((stream, hs)) => {
                        if !issued.lock().expect("lock").contains(&hs.serial) {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        seen.lock().expect("lock").insert(hs.serial);
                        matches!(tls::get(stream, "steady.test", "/").await, Ok(r) if r.status == 200 && r.answered_by().starts_with("steady-"))
                    }
                    Err(_) => false,
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // The checkers run through both phases, so that the ratio shows what churn costs.
    let quiet = wrk_in_background(portico.http, seconds.min(20)).await?;
    let load = tokio::spawn(wrk_in_background(portico.http, seconds));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / changes_per_second as f64);
    let mut changes = 0u64;
    let mut rotated = 0u64;
    let (proxy_pid, controller_pid) = (portico.proxy_pid(), portico.controller_pid());
    let (mut proxy, mut controller) = (Vec::new(), Vec::new());
    let mut next_sample = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(seconds) {
        if started.elapsed() >= next_sample {
            let at = next_sample.as_secs();
            proxy.push(Resources::of(proxy_pid, at));
            controller.push(Resources::of(controller_pid, at));
            next_sample += Duration::from_secs(10);
        }
        // In turn: scale the steady Service, add or remove a route, rotate the certificate.
        match changes % 3 {
            0 => portico.write(
                "steady.yaml",
                &steady_manifest(&addrs, 1 + (changes as usize / 3) % 3),
            ),
            1 => {
                let k = changes / 3 % 5;
                let name = format!("extra-{k}.yaml");
                if portico.manifests.join(&name).exists() {
                    portico.remove(&name);
                } else {
                    portico.write(&name, &extra_manifest(k, extra.addr));
                }
            }
            _ => {
                let next = ca.issue(&["steady.test"]);
                issued.lock().expect("lock").insert(next.serial.clone());
                portico.write("steady-tls.yaml", &certificate_manifest(&next));
                rotated += 1;
            }
        }
        changes += 1;
        tokio::time::sleep_until((started + interval * changes as u32).into()).await;
    }
    let churn = load.await??;
    stop.store(true, Ordering::Relaxed);
    checker.await?;
    tls_checker.await?;
    let applied = portico.admin_get("/metrics").await?.text();
    let snapshots_applied = applied
        .lines()
        .find(|l| l.starts_with("portico_snapshot_applies_total{result=\"applied\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    let tls_certificates_seen = seen.lock().expect("lock").len();
    Ok(ChurnReport {
        seconds,
        changes,
        snapshots_applied,
        quiet,
        churn,
        checked: checked.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        misrouted: misrouted.load(Ordering::Relaxed),
        certificates_rotated: rotated,
        tls_checked: tls_checked.load(Ordering::Relaxed),
        tls_failed: tls_failed.load(Ordering::Relaxed),
        tls_wrong_certificate: tls_wrong.load(Ordering::Relaxed),
        tls_certificates_seen,
        proxy,
        controller,
    })
}
