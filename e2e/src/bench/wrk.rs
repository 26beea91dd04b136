//! Driving wrk and reading its results, including p99.9, through a Lua `done` hook.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

const SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

pub struct Wrk {
    pub connections: u32,
    pub threads: u32,
    pub host: String,
    pub path: String,
    /// Over TLS (wrk keeps each connection alive and does not resume TLS sessions).
    pub https: bool,
    /// More request header lines (`Name: value`), beside `Host`.
    pub headers: Vec<String>,
}

/// What a browser sends for a page's asset: eleven fields beside `Host`, about 600 bytes
/// in all with the request line, as the realistic profile asks.
pub fn browser_headers() -> Vec<String> {
    [
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
        "Accept-Language: en-GB,en;q=0.9,de;q=0.8",
        "Accept-Encoding: identity",
        "Referer: https://bench.test/catalogue/index.html",
        "Cookie: session=4f2c9a7e1b3d5f60; theme=dark; consent=analytics",
        "Sec-Fetch-Dest: document",
        "Sec-Fetch-Mode: navigate",
        "Sec-Fetch-Site: same-origin",
        "Upgrade-Insecure-Requests: 1",
        "Cache-Control: max-age=0",
    ]
    .map(String::from)
    .to_vec()
}

impl Wrk {
    pub fn run(
        &self,
        target: SocketAddr,
        duration: Duration,
        work_dir: &Path,
    ) -> anyhow::Result<LoadResult> {
        let script = work_dir.join("report.lua");
        std::fs::write(&script, SCRIPT)?;
        let out = Command::new("wrk")
            .args([
                "-t",
                &self.threads.to_string(),
                "-c",
                &self.connections.to_string(),
            ])
            .args(["-d", &format!("{}s", duration.as_secs().max(1))])
            .args(["-H", &format!("Host: {}", self.host)])
            .args(self.headers.iter().flat_map(|h| ["-H", h.as_str()]))
            .arg("-s")
            .arg(&script)
            .arg(format!(
                "{}://{target}{}",
                if self.https { "https" } else { "http" },
                self.path
            ))
            .output()
            .context("running wrk (apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&stdout).with_context(|| format!("unexpected wrk output:\n{stdout}"))
    }
}

fn parse(stdout: &str) -> Option<LoadResult> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("WRKJSON "))?;
    let n: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let seconds = n[1] / 1e6;
    Some(LoadResult {
        requests: n[0] as u64,
        errors: n[2] as u64,
        seconds,
        rps: n[0] / seconds,
        p50_us: n[3],
        p99_us: n[4],
        p999_us: n[5],
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_done_hook_line() {
        let r = super::parse("Running 1s test\nWRKJSON 1000 2000000 3 120 900 1500\n").unwrap();
        assert_eq!(
            (r.requests, r.errors, r.rps, r.p99_us),
            (1000, 3, 500.0, 900.0)
        );
        assert!(super::parse("nothing").is_none());
    }
}
