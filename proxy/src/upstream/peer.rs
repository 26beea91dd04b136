//! How the proxy reaches a backend's endpoints: plain HTTP/1.1, TLS, gRPC over h2c or
//! h2 over TLS. Decided once per snapshot; each request only copies it into a peer.

use openssl::x509::X509;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use portico_model::{TrafficPolicy, Upstream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct UpstreamSettings {
    tls: bool,
    alpn: ALPN,
    verify: bool,
    server_name: String,
    ca: Option<Arc<Box<[X509]>>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    send_timeout: Duration,
    /// Pingora pools connections by a hash that leaves out the trusted CAs and the
    /// protocol; without this, a connection verified against one CA (or opened as h2c)
    /// would be reused for a backend that asked for another.
    pool_key: u64,
    /// `proxy-http-version: "1.0"`.
    pub http10: bool,
    /// `connection-proxy-header: close`.
    pub close_connections: bool,
}

impl UpstreamSettings {
    pub fn uses_tls(&self) -> bool {
        self.tls
    }

    /// How long a connect to an endpoint may take (`proxy-connect-timeout`).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn new(u: &Upstream, policy: &TrafficPolicy) -> Result<Self, String> {
        let ca = match &u.ca_pem {
            None => None,
            // An empty bundle trusts nothing: the controller sends one when the CA Secret
            // was unusable, so that verification fails closed.
            Some(pem) if pem.trim().is_empty() => Some(Arc::new(Vec::new().into_boxed_slice())),
            Some(pem) => Some(Arc::new(
                X509::stack_from_pem(pem.as_bytes())
                    .map_err(|e| format!("CA bundle does not parse: {e}"))?
                    .into_boxed_slice(),
            )),
        };
        // HTTP/2 only for gRPC and h2c: over clear text there is no ALPN, so the peer is trusted to speak it.
        let alpn = if u.protocol.is_http2() {
            ALPN::H2
        } else {
            ALPN::H1
        };
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            u.hash(&mut h);
            h.finish()
        };
        Ok(UpstreamSettings {
            pool_key,
            http10: u.http10,
            close_connections: u.close_connections,
            tls: u.protocol.uses_tls(),
            alpn,
            verify: u.verify,
            server_name: u.server_name.clone().unwrap_or_default(),
            ca,
            connect_timeout: Duration::from_millis(policy.connect_timeout_ms),
            read_timeout: Duration::from_millis(policy.read_timeout_ms),
            send_timeout: Duration::from_millis(policy.send_timeout_ms),
        })
    }

    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.tls, self.server_name.clone());
        peer.options.alpn = self.alpn.clone();
        peer.group_key = self.pool_key;
        // The connect timeout covers the TLS handshake too, as nginx's does.
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.send_timeout);
        if self.tls {
            peer.options.verify_cert = self.verify;
            peer.options.verify_hostname = self.verify && !self.server_name.is_empty();
            peer.options.ca = self.ca.clone();
        }
        peer
    }
}
