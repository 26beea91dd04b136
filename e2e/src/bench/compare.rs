//! The side-by-side run: the same nginx backend behind Portico, nginx, HAProxy and a
//! minimal Pingora pass-through, driven by wrk in alternating rounds.

use super::chart::{bar_panels, Panel};
use super::contenders::{self, Contender, Running, BENCH_HOST};
use super::procs;
use super::wrk::{LoadResult, Wrk};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

pub struct CompareOptions {
    pub threads: usize,
    pub connections: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub contenders: Vec<Contender>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContenderSummary {
    pub name: &'static str,
    pub rounds: Vec<LoadResult>,
    /// Medians over the rounds.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub cpu_seconds_per_100k: f64,
    pub peak_rss_mib: f64,
    pub errors: u64,
}

#[derive(Debug, Serialize)]
pub struct CompareReport {
    pub threads: usize,
    pub connections: u32,
    pub duration_seconds: u64,
    pub rounds: usize,
    pub body_bytes: usize,
    pub machine: String,
    pub results: Vec<ContenderSummary>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

pub fn run(opts: &CompareOptions) -> anyhow::Result<CompareReport> {
    let work = tempfile::tempdir()?;
    let backend = contenders::start_backend(work.path())?;
    eprintln!("backend nginx on {}", backend.addr);
    let mut running: Vec<(Contender, Running)> = Vec::new();
    for c in &opts.contenders {
        let dir = work.path().join(c.name());
        std::fs::create_dir_all(&dir)?;
        running.push((*c, contenders::start(*c, backend.addr, opts.threads, &dir)?));
        eprintln!("{} ready on {}", c.name(), running.last().expect("pushed").1.addr);
    }
    let wrk = Wrk { connections: opts.connections, threads: 1, host: BENCH_HOST.into(), path: "/".into() };
    let mut samples: Vec<Vec<(LoadResult, f64)>> = vec![Vec::new(); running.len()];
    for round in 0..opts.rounds {
        // Rotate the order each round so no contender always runs first or last.
        for k in 0..running.len() {
            let i = (k + round) % running.len();
            let (c, r) = &running[i];
            wrk.run(r.addr, opts.warmup, work.path())?;
            let before = procs::usage(r.measured_pid);
            let result = wrk.run(r.addr, opts.duration, work.path())?;
            let after = procs::usage(r.measured_pid);
            let cpu_per_100k = (after.cpu_seconds - before.cpu_seconds) / result.requests.max(1) as f64 * 100_000.0;
            eprintln!(
                "round {}/{} {:<20} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  p99.9 {:>6.3} ms  cpu {:.2} s/100k  errors {}",
                round + 1,
                opts.rounds,
                c.name(),
                result.rps,
                result.p50_us / 1e3,
                result.p99_us / 1e3,
                result.p999_us / 1e3,
                cpu_per_100k,
                result.errors
            );
            samples[i].push((result, cpu_per_100k));
        }
    }
    let results = running
        .iter()
        .zip(samples)
        .map(|((c, r), s)| ContenderSummary {
            name: c.name(),
            rps: median(s.iter().map(|(l, _)| l.rps).collect()),
            p50_ms: median(s.iter().map(|(l, _)| l.p50_us / 1e3).collect()),
            p99_ms: median(s.iter().map(|(l, _)| l.p99_us / 1e3).collect()),
            p999_ms: median(s.iter().map(|(l, _)| l.p999_us / 1e3).collect()),
            cpu_seconds_per_100k: median(s.iter().map(|(_, c)| *c).collect()),
            peak_rss_mib: procs::usage(r.measured_pid).peak_rss_bytes as f64 / (1 << 20) as f64,
            errors: s.iter().map(|(l, _)| l.errors).sum(),
            rounds: s.into_iter().map(|(l, _)| l).collect(),
        })
        .collect();
    Ok(CompareReport {
        threads: opts.threads,
        connections: opts.connections,
        duration_seconds: opts.duration.as_secs(),
        rounds: opts.rounds,
        body_bytes: contenders::BODY_BYTES,
        machine: machine_description(),
        results,
    })
}

impl CompareReport {
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "HTTP/1.1, wrk 1 thread x {} connections, {} s x {} rounds (medians), {} B body, {} worker thread(s); {}\n\n\
             | proxy | req/s | p50 ms | p99 ms | p99.9 ms | CPU s / 100k req | peak RSS MiB | errors |\n\
             | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.connections, self.duration_seconds, self.rounds, self.body_bytes, self.threads, self.machine
        );
        for r in &self.results {
            s += &format!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {} |\n",
                r.name, r.rps, r.p50_ms, r.p99_ms, r.p999_ms, r.cpu_seconds_per_100k, r.peak_rss_mib, r.errors
            );
        }
        let find = |n: &str| self.results.iter().find(|r| r.name == n);
        if let Some(p) = find("portico") {
            s += "\n| Portico relative to | throughput | p99 | CPU per request |\n| --- | ---: | ---: | ---: |\n";
            for other in ["nginx", "haproxy", "pingora-passthrough"] {
                if let Some(o) = find(other) {
                    s += &format!(
                        "| {other} | {:.2} | {:.2} | {:.2} |\n",
                        p.rps / o.rps,
                        p.p99_ms / o.p99_ms,
                        p.cpu_seconds_per_100k / o.cpu_seconds_per_100k
                    );
                }
            }
        }
        s
    }

    /// Writes `compare.md`, `compare.json` and `compare.png` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("compare.md"), self.markdown())?;
        std::fs::write(dir.join("compare.json"), serde_json::to_vec_pretty(self)?)?;
        let bars = |f: fn(&ContenderSummary) -> f64| {
            self.results.iter().map(|r| (r.name.replace("pingora-passthrough", "pingora"), f(r))).collect()
        };
        bar_panels(
            &dir.join("compare.png"),
            &[
                Panel { title: "Throughput (higher is better)", unit: "requests / s", bars: bars(|r| r.rps) },
                Panel { title: "p99 latency (lower is better)", unit: "microseconds", bars: bars(|r| r.p99_ms * 1e3) },
            ],
        )
    }
}
