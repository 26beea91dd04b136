//! The slow suites: `bench compare` (Portico beside nginx, HAProxy and bare Pingora).
//! Needs nginx, haproxy and wrk from Debian: `scripts/setup --bench` installs them.

use clap::{Parser, Subcommand};
use portico_e2e::bench::compare::{self, CompareOptions};
use portico_e2e::bench::contenders::Contender;
use portico_e2e::bench::instructions::{self, Protocol};
use portico_e2e::bench::{churn, scale};
use std::path::PathBuf;
use std::time::Duration;

// The scale run times library code as the binaries run it, with their allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Portico's comparison, scale and churn runs")]
struct Args {
    #[command(subcommand)]
    run: Run,
}

#[derive(Subcommand)]
enum Run {
    /// Throughput, latency, CPU and memory beside nginx, HAProxy and a bare Pingora proxy.
    Compare {
        /// Worker threads (processes for nginx) of every proxy.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Seconds measured per proxy per round.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Which proxies (default: all four).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Contender>,
        /// Skip the HTTP/2-over-TLS half (h2load).
        #[arg(long)]
        no_h2: bool,
        /// Let the scheduler place every process, instead of giving the proxy under test
        /// cores of its own (the default when there are more cores than --threads).
        #[arg(long)]
        no_pin: bool,
        /// Every proxy writes its access log to a file: ingress-nginx's `upstreaminfo`
        /// format for nginx, `option httplog` for HAProxy, Portico's default JSON.
        #[arg(long)]
        access_log: bool,
        /// Also the profile closer to real traffic: HTTPS, a browser-like request of 12 header
        /// fields, 8 KiB answers, 200 connections.
        #[arg(long)]
        realistic: bool,
        /// Instead: TCP services beside nginx's stream module and HAProxy's `mode tcp`
        /// (bulk throughput and connections per second; --duration and --rounds apply).
        #[arg(long)]
        tcp: bool,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Translation, snapshot and apply costs at N Ingresses; memory and propagation latency.
    Scale {
        /// Sizes for the in-process stage timings.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
        ingresses: Vec<usize>,
        /// Size for the run through the real binaries (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        process: usize,
        /// Changes timed in the process run.
        #[arg(long, default_value_t = 100)]
        changes: usize,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Zero errors under steady load while the configuration changes 20 times a second,
    /// with the processes' memory and descriptors sampled; `--seconds 600` is the soak.
    Churn {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 20)]
        changes_per_second: u64,
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Instructions per request under callgrind (deterministic, unlike wall-clock figures).
    Instructions {
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "portico,pingora-passthrough,nginx,haproxy"
        )]
        only: Vec<Contender>,
        #[arg(long, default_value_t = 2000)]
        small: u32,
        #[arg(long, default_value_t = 12000)]
        large: u32,
        /// HTTP/2 over TLS instead of HTTP/1.1; profiles go to OUT/h2.
        #[arg(long)]
        h2: bool,
        /// With each proxy's access log written to a file (as `compare --access-log`).
        #[arg(long)]
        access_log: bool,
        #[arg(long, default_value = "target/bench/instructions")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().run {
        Run::Compare {
            duration,
            rounds,
            no_pin,
            tcp: true,
            out,
            ..
        } => {
            std::fs::create_dir_all(&out)?;
            let dir = tempfile::tempdir()?;
            let results = portico_e2e::bench::tcp::run(
                Duration::from_secs(duration),
                rounds,
                !no_pin,
                dir.path(),
            )?;
            let md = portico_e2e::bench::tcp::markdown(&results);
            println!("{md}");
            std::fs::write(out.join("tcp.md"), &md)?;
            std::fs::write(out.join("tcp.json"), serde_json::to_vec_pretty(&results)?)?;
            eprintln!("wrote {0}/tcp.md and {0}/tcp.json", out.display());
        }
        Run::Compare {
            threads,
            connections,
            duration,
            warmup,
            rounds,
            only,
            no_h2,
            no_pin,
            access_log,
            realistic,
            tcp: false,
            out,
        } => {
            let opts = CompareOptions {
                threads,
                connections,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup),
                rounds,
                contenders: if only.is_empty() {
                    Contender::ALL.to_vec()
                } else {
                    only
                },
                h2: !no_h2,
                pin: !no_pin,
                access_log,
                realistic,
            };
            let report = compare::run(&opts)?;
            println!("{}", report.markdown());
            report.write(&out)?;
            eprintln!(
                "wrote {0}/compare.md, {0}/compare.json, {0}/compare.png",
                out.display()
            );
        }
        Run::Scale {
            ingresses,
            process,
            changes,
            out,
        } => {
            std::fs::create_dir_all(&out)?;
            let mut md = String::from(
                "| Ingresses | routes | endpoints | translate ms | snapshot MiB | encode ms | decode ms | apply ms \
                 | one endpoint changed: translate ms (Ingresses reprocessed) | delta encode ms | delta apply ms | total ms \
                 | one Ingress re-pointed: translate ms | delta apply ms |\n\
                 | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
            let mut stages = Vec::new();
            for n in ingresses {
                let t = scale::stage_times(n)?;
                md += &format!(
                    "| {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} ({}) | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} |\n",
                    t.ingresses,
                    t.routes,
                    t.endpoints,
                    t.translate_ms,
                    t.snapshot_bytes as f64 / (1 << 20) as f64,
                    t.encode_ms,
                    t.decode_ms,
                    t.apply_ms,
                    t.change_translate_ms,
                    t.change_reprocessed,
                    t.change_encode_ms,
                    t.change_apply_ms,
                    t.endpoint_change_ms,
                    t.repoint_translate_ms,
                    t.repoint_apply_ms
                );
                eprintln!("{t:?}");
                stages.push(t);
            }
            let mut process_runs = Vec::new();
            if process > 0 {
                let rt = tokio::runtime::Runtime::new()?;
                for feed in [scale::Feed::Files, scale::Feed::KubeApi] {
                    let r = rt.block_on(scale::process_run(process, changes, feed, &out))?;
                    md += &format!(
                        "\nThrough the binaries at {} Ingresses ({}): proxy RSS {:.0} MiB, controller RSS {:.0} MiB; \
                         propagation of one changed Ingress over {} changes at least 200 ms apart: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
                        r.ingresses,
                        match feed {
                            scale::Feed::Files => "manifests source",
                            scale::Feed::KubeApi => "Kubernetes source, test API server",
                        },
                        r.proxy_rss_mib,
                        r.controller_rss_mib,
                        r.changes,
                        r.propagation_p50_ms,
                        r.propagation_p99_ms,
                        r.propagation_max_ms
                    );
                    process_runs.push(r);
                }
            }
            println!("{md}");
            std::fs::write(out.join("scale.md"), &md)?;
            std::fs::write(
                out.join("scale.json"),
                serde_json::to_vec_pretty(
                    &serde_json::json!({"stages": stages, "process": process_runs}),
                )?,
            )?;
        }
        Run::Churn {
            seconds,
            changes_per_second,
            out,
        } => {
            std::fs::create_dir_all(&out)?;
            let r = tokio::runtime::Runtime::new()?
                .block_on(churn::run(seconds, changes_per_second))?;
            let md = format!(
                "{} s of wrk (32 connections) on one route while {} changes were written ({} snapshots applied):\n\n\
                 | | req/s | p50 ms | p99 ms | p99.9 ms | wrk errors |\n| --- | ---: | ---: | ---: | ---: | ---: |\n\
                 | quiet | {:.0} | {:.3} | {:.3} | {:.3} | {} |\n| churn | {:.0} | {:.3} | {:.3} | {:.3} | {} |\n\n\
                 checker: {} requests, {} failed, {} misrouted; p99 under churn is {:.2}x the quiet p99\n\n\
                 {} certificate rotations; TLS checker: {} fresh handshakes and requests, {} failed, {} with a certificate never issued, \
                 {} distinct certificates seen\n\n\
                 proxy: {}\n\ncontroller: {}\n",
                r.seconds,
                r.changes,
                r.snapshots_applied,
                r.quiet.rps,
                r.quiet.p50_us / 1e3,
                r.quiet.p99_us / 1e3,
                r.quiet.p999_us / 1e3,
                r.quiet.errors,
                r.churn.rps,
                r.churn.p50_us / 1e3,
                r.churn.p99_us / 1e3,
                r.churn.p999_us / 1e3,
                r.churn.errors,
                r.checked,
                r.failed,
                r.misrouted,
                r.churn.p99_us / r.quiet.p99_us,
                r.certificates_rotated,
                r.tls_checked,
                r.tls_failed,
                r.tls_wrong_certificate,
                r.tls_certificates_seen,
                churn::drift(&r.proxy),
                churn::drift(&r.controller)
            );
            println!("{md}");
            std::fs::write(out.join("churn.md"), &md)?;
            std::fs::write(out.join("churn.json"), serde_json::to_vec_pretty(&r)?)?;
            anyhow::ensure!(
                r.failed + r.misrouted + r.churn.errors + r.tls_failed + r.tls_wrong_certificate
                    == 0,
                "requests failed or were misrouted under churn"
            );
        }
        Run::Instructions {
            only,
            small,
            large,
            h2,
            access_log,
            out,
        } => {
            let (protocol, out) = if h2 {
                (Protocol::H2Tls, out.join("h2"))
            } else {
                (Protocol::Http1, out)
            };
            std::fs::create_dir_all(&out)?;
            let out = out.canonicalize()?;
            let mut counts = Vec::new();
            println!("| proxy | instructions per request |\n| --- | ---: |");
            for c in only {
                let count = instructions::run(c, protocol, small, large, &out, access_log)?;
                println!("| {} | {:.0} |", count.name, count.instructions_per_request);
                counts.push(count);
            }
            std::fs::write(
                out.join("instructions.json"),
                serde_json::to_vec_pretty(&counts)?,
            )?;
            eprintln!(
                "profiles: callgrind_annotate {}/<proxy>-{large}/callgrind.out",
                out.display()
            );
        }
    }
    Ok(())
}
