//! Instructions per request under callgrind: deterministic where wall-clock figures on a
//! shared machine are not. Each proxy runs under `valgrind --tool=callgrind` twice, serving
//! two fixed numbers of requests (h2load, HTTP/1.1 or HTTP/2 over TLS) on the same eight
//! connections; the difference divided by the extra requests is the marginal cost of one
//! request, start-up and TLS handshakes excluded.

use super::contenders::{self, Contender, TlsFiles, BENCH_HOST};
use anyhow::{bail, Context};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Serialize)]
pub struct InstructionCount {
    pub name: &'static str,
    pub instructions_per_request: f64,
    /// The callgrind profile of the larger run, for `callgrind_annotate`.
    pub profile: PathBuf,
}

fn total_instructions(profile: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(profile)
        .with_context(|| format!("reading {}", profile.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals: ")
                .or_else(|| l.strip_prefix("summary: "))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no totals in {}", profile.display()))
}

/// Which protocol the requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over TLS, SNI `BENCH_HOST`.
    H2Tls,
}

fn load(addr: SocketAddr, protocol: Protocol, requests: u32) -> anyhow::Result<()> {
    let mut h2load = Command::new("h2load");
    h2load.args(["-n", &requests.to_string(), "-c", "8", "-t", "1"]);
    match protocol {
        Protocol::Http1 => h2load
            .args(["--h1", "-H", &format!(":authority: {BENCH_HOST}")])
            .arg(format!("http://{addr}/")),
        Protocol::H2Tls => h2load
            .arg(format!("--connect-to={addr}"))
            .arg(format!("https://{BENCH_HOST}/")),
    };
    let out = h2load
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok = format!("{requests} succeeded");
    if !out.status.success() || !stdout.contains(&ok) {
        bail!("h2load did not complete {requests} requests:\n{stdout}");
    }
    Ok(())
}

pub fn run(
    contender: Contender,
    protocol: Protocol,
    small: u32,
    large: u32,
    dir: &Path,
    access_log: bool,
) -> anyhow::Result<InstructionCount> {
    let backend = contenders::start_backend(dir)?;
    let tls = match protocol {
        Protocol::Http1 => None,
        Protocol::H2Tls => Some(TlsFiles::create(dir)?),
    };
    let mut totals = Vec::new();
    let mut profile = PathBuf::new();
    for requests in [small, large] {
        let run_dir = dir.join(format!("{}-{requests}", contender.name()));
        std::fs::create_dir_all(&run_dir)?;
        profile = run_dir.join("callgrind.out");
        let wrapper = vec![
            "valgrind".to_string(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}", profile.display()),
            "--dump-instr=no".into(),
        ];
        let running = contenders::start_wrapped(
            contender,
            backend.addr,
            1,
            &run_dir,
            &wrapper,
            tls.as_ref(),
            access_log,
        )?;
        let addr = match protocol {
            Protocol::Http1 => running.addr,
            Protocol::H2Tls => running.tls_addr.context("no TLS listener")?,
        };
        load(addr, protocol, requests)?;
        running.interrupt_and_wait();
        totals.push(total_instructions(&profile)?);
    }
    let per_request = (totals[1] as f64 - totals[0] as f64) / f64::from(large - small);
    Ok(InstructionCount {
        name: contender.name(),
        instructions_per_request: per_request,
        profile,
    })
}
