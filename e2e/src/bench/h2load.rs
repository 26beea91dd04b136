//! Driving h2load over TLS (HTTP/2 by ALPN) for a fixed duration, with latency
//! percentiles computed from its per-request log.

use super::wrk::LoadResult;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct H2load {
    pub connections: u32,
    /// Concurrent streams per connection.
    pub streams: u32,
    /// The authority and SNI name asked for.
    pub host: String,
}

impl H2load {
    pub fn run(
        &self,
        target: SocketAddr,
        warmup: Duration,
        duration: Duration,
        work_dir: &Path,
    ) -> anyhow::Result<LoadResult> {
        let log = work_dir.join("h2load.log");
        let _ = std::fs::remove_file(&log);
        let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as f64;
        let out = Command::new("h2load")
            .args([
                "-t",
                "1",
                "-c",
                &self.connections.to_string(),
                "-m",
                &self.streams.to_string(),
            ])
            .args([
                "-D",
                &duration.as_secs().max(1).to_string(),
                &format!("--warm-up-time={}", warmup.as_secs()),
            ])
            .arg(format!("--connect-to={target}"))
            .arg(format!("--log-file={}", log.display()))
            .arg(format!("https://{}/", self.host))
            .output()
            .context("running h2load (apt-get install nghttp2-client)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "h2load failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !stdout.contains("h2") {
            bail!("h2load did not negotiate HTTP/2:\n{stdout}");
        }
        let errors = failed_requests(&stdout)
            .with_context(|| format!("unexpected h2load output:\n{stdout}"))?;
        // Only requests started after the warm-up count.
        let measured_from = started + warmup.as_micros() as f64;
        let text =
            std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        let mut latencies: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let start: f64 = f.next()?.parse().ok()?;
                let status: i32 = f.next()?.parse().ok()?;
                let micros: f64 = f.next()?.parse().ok()?;
                (start >= measured_from && status == 200).then_some(micros)
            })
            .collect();
        if latencies.is_empty() {
            bail!("h2load logged no successful request:\n{stdout}");
        }
        latencies.sort_by(f64::total_cmp);
        let at = |p: f64| latencies[(((latencies.len() - 1) as f64) * p).round() as usize];
        let seconds = duration.as_secs_f64();
        Ok(LoadResult {
            requests: latencies.len() as u64,
            errors,
            seconds,
            rps: latencies.len() as f64 / seconds,
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
        })
    }
}

/// `failed + errored + timeout` from h2load's `requests:` line.
fn failed_requests(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.starts_with("requests:"))?;
    let count = |what: &str| -> Option<u64> {
        line.split(',')
            .find(|p| p.trim().ends_with(what))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(count("failed")? + count("errored")? + count("timeout").unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_failures_from_the_summary() {
        let out = "finished in 10.00s\nrequests: 900 total, 900 started, 890 done, 880 succeeded, 10 failed, 3 errored, 2 timeout\n";
        assert_eq!(super::failed_requests(out), Some(15));
        assert_eq!(super::failed_requests("nothing"), None);
    }
}
