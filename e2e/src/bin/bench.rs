//! The slow suites: `bench compare` (Portico beside nginx, HAProxy and bare Pingora).
//! Needs nginx, haproxy and wrk from Debian: `scripts/setup --bench` installs them.

use clap::{Parser, Subcommand};
use portico_e2e::bench::compare::{self, CompareOptions};
use portico_e2e::bench::contenders::Contender;
use portico_e2e::bench::instructions;
use std::path::PathBuf;
use std::time::Duration;

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
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Instructions per request under callgrind (deterministic, unlike wall-clock figures).
    Instructions {
        #[arg(long, value_enum, value_delimiter = ',', default_value = "portico,pingora-passthrough,nginx,haproxy")]
        only: Vec<Contender>,
        #[arg(long, default_value_t = 2000)]
        small: u32,
        #[arg(long, default_value_t = 12000)]
        large: u32,
        #[arg(long, default_value = "target/bench/instructions")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().run {
        Run::Compare { threads, connections, duration, warmup, rounds, only, out } => {
            let opts = CompareOptions {
                threads,
                connections,
                duration: Duration::from_secs(duration),
                warmup: Duration::from_secs(warmup),
                rounds,
                contenders: if only.is_empty() { Contender::ALL.to_vec() } else { only },
            };
            let report = compare::run(&opts)?;
            println!("{}", report.markdown());
            report.write(&out)?;
            eprintln!("wrote {0}/compare.md, {0}/compare.json, {0}/compare.png", out.display());
        }
        Run::Instructions { only, small, large, out } => {
            std::fs::create_dir_all(&out)?;
            let out = out.canonicalize()?;
            let mut counts = Vec::new();
            println!("| proxy | instructions per request |\n| --- | ---: |");
            for c in only {
                let count = instructions::run(c, small, large, &out)?;
                println!("| {} | {:.0} |", count.name, count.instructions_per_request);
                counts.push(count);
            }
            std::fs::write(out.join("instructions.json"), serde_json::to_vec_pretty(&counts)?)?;
            eprintln!("profiles: callgrind_annotate {}/<proxy>-{large}/callgrind.out", out.display());
        }
    }
    Ok(())
}
