//! The churn run: steady wrk load on one route while the configuration changes 20 times a
//! second (routes added and removed, endpoints scaled between one and three), with a
//! checker that counts failed or misrouted answers. The p99 under churn is compared with
//! a quiet run of the same length just before it.

use super::wrk::{LoadResult, Wrk};
use crate::echo::EchoServer;
use crate::harness::Portico;
use crate::manifests::{ingress, service_with_endpoints, to_yaml};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
}

fn steady_manifest(pods: &[SocketAddr], scale: usize) -> String {
    let mut docs = service_with_endpoints("steady", &pods[..scale]);
    docs.push(ingress("steady").path("steady.test", "Prefix", "/", "steady").build());
    to_yaml(&docs)
}

fn extra_manifest(k: u64, extra: SocketAddr) -> String {
    let mut docs = service_with_endpoints("extra", &[extra]);
    docs.push(ingress(&format!("extra-{k}")).path(&format!("extra{k}.test"), "Prefix", "/", "extra").build());
    to_yaml(&docs)
}

async fn wrk_in_background(target: SocketAddr, seconds: u64) -> anyhow::Result<LoadResult> {
    let dir = tempfile::tempdir()?;
    tokio::task::spawn_blocking(move || {
        Wrk { connections: 32, threads: 1, host: "steady.test".into(), path: "/".into() }.run(
            target,
            Duration::from_secs(seconds),
            dir.path(),
        )
    })
    .await?
}

pub async fn run(seconds: u64, changes_per_second: u64) -> anyhow::Result<ChurnReport> {
    let first = EchoServer::start("steady-1", "127.0.0.21:0".parse()?).await?;
    let port = first.addr.port();
    let mut pods = vec![first];
    for i in 2..=3 {
        pods.push(EchoServer::start(&format!("steady-{i}"), format!("127.0.0.{}:{port}", 20 + i).parse()?).await?);
    }
    let extra = EchoServer::start("extra", "127.0.0.1:0".parse()?).await?;
    let addrs: Vec<SocketAddr> = pods.iter().map(|p| p.addr).collect();
    let portico = Arc::new(Portico::start(&[("steady.yaml", steady_manifest(&addrs, 3))]).await);

    let quiet = wrk_in_background(portico.http, seconds.min(20)).await?;

    // The checker: every answer for steady.test must come from a steady pod.
    let stop = Arc::new(AtomicBool::new(false));
    let (checked, failed, misrouted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let checker = {
        let (p, stop, checked, failed, misrouted) = (portico.clone(), stop.clone(), checked.clone(), failed.clone(), misrouted.clone());
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

    let load = tokio::spawn(wrk_in_background(portico.http, seconds));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / changes_per_second as f64);
    let mut changes = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        // Alternate: scale the steady Service, then add or remove a route.
        if changes.is_multiple_of(2) {
            portico.write("steady.yaml", &steady_manifest(&addrs, 1 + (changes as usize / 2) % 3));
        } else {
            let k = changes / 2 % 5;
            let name = format!("extra-{k}.yaml");
            if portico.manifests.join(&name).exists() {
                portico.remove(&name);
            } else {
                portico.write(&name, &extra_manifest(k, extra.addr));
            }
        }
        changes += 1;
        tokio::time::sleep_until((started + interval * changes as u32).into()).await;
    }
    let churn = load.await??;
    stop.store(true, Ordering::Relaxed);
    checker.await?;
    let applied = portico.admin_get("/metrics").await?.text();
    let snapshots_applied = applied
        .lines()
        .find(|l| l.starts_with("portico_snapshot_applies_total{result=\"applied\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    Ok(ChurnReport {
        seconds,
        changes,
        snapshots_applied,
        quiet,
        churn,
        checked: checked.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        misrouted: misrouted.load(Ordering::Relaxed),
    })
}
