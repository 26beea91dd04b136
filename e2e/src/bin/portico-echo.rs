//! Echo backends for the demo and for load tests: `portico-echo --listen NAME=ADDR ...`.

use clap::Parser;
use portico_e2e::echo::EchoServer;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "HTTP backends that answer with JSON describing each request")]
struct Args {
    /// NAME=ADDR, repeatable: one backend named NAME listening on ADDR.
    #[arg(long = "listen", required = true)]
    listen: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut servers = Vec::new();
    for spec in &args.listen {
        let (name, addr) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--listen {spec:?}: expected NAME=ADDR"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| anyhow::anyhow!("--listen {spec:?}: {e}"))?;
        let server = EchoServer::start(name, addr)
            .await
            .map_err(|e| anyhow::anyhow!("--listen {spec:?}: {e}"))?;
        eprintln!("echo backend {name} listening on {}", server.addr);
        servers.push(server);
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
