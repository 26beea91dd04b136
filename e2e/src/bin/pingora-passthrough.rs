//! The Pingora baseline for comparisons: one fixed upstream, no routing, no policies,
//! no metrics; the same runtime settings and allocator as portico-proxy.

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::server::Server;
use std::net::SocketAddr;

#[global_allocator]
static GLOBAL: portico_proxy::allocator::MiMalloc = portico_proxy::allocator::MiMalloc;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    upstream: SocketAddr,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// An HTTPS listener too (HTTP/2 by ALPN), with this certificate and key.
    #[arg(long, requires_all = ["cert", "key"])]
    tls_listen: Option<String>,
    #[arg(long)]
    cert: Option<String>,
    #[arg(long)]
    key: Option<String>,
}

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let mut server =
        Server::new_with_opt_and_conf(None, portico_proxy::server_conf(args.threads, 0));
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen);
    if let (Some(addr), Some(cert), Some(key)) = (&args.tls_listen, &args.cert, &args.key) {
        let mut tls = pingora::listeners::tls::TlsSettings::intermediate(cert, key)
            .expect("certificate and key load");
        tls.enable_h2();
        proxy.add_tls_with_settings(addr, None, tls);
    }
    server.add_service(proxy);
    server.run_forever()
}
