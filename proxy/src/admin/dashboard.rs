//! The admin listener's dashboard: a page embedded in the binary (no CDN, works
//! offline) and the JSON it reads, the serving snapshot as hosts → routes → backends →
//! endpoints with their health, the certificates with their expiry, and the
//! controller's diagnostics. Live rates come from `/metrics`, which the page polls.

use crate::config::compile::CompiledSnapshot;
use crate::telemetry::metrics::host_label;
use portico_model::HostMatch;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The page: HTML, CSS and JavaScript in one file.
pub const PAGE: &str = include_str!("dashboard.html");

fn host_text(host: &HostMatch) -> String {
    match host {
        HostMatch::Any => "*".to_string(),
        h => h.to_string(),
    }
}

/// What the page shows of a snapshot; no secret (keys, hashes, tokens) is ever in it.
pub fn state(
    snapshot: &CompiledSnapshot,
    applied_at: i64,
    ports: &[crate::stream::PortState],
) -> Value {
    let source = &snapshot.source;
    let mut streams: Vec<Value> = source
        .streams
        .services
        .iter()
        .map(|s| {
            let state = ports
                .iter()
                .find(|p| p.port == s.port && p.protocol == s.protocol.as_str())
                .map_or("opening", |p| p.state.as_str());
            json!({
                "port": s.port,
                "protocol": s.protocol.as_str(),
                "service": s.service.to_string(),
                "backend": s.backend,
                "proxy_protocol": [s.accept_proxy_protocol, s.send_proxy_protocol],
                "state": state,
            })
        })
        .collect();
    streams.extend(source.streams.passthrough.iter().map(|p| {
        json!({
            "port": null,
            "protocol": "tls-passthrough",
            "service": host_text(&p.host),
            "backend": p.backend,
            "proxy_protocol": [false, false],
            "state": "by SNI on the HTTPS port",
        })
    }));
    let hosts: Vec<Value> = source
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes: Vec<Value> = vh
                .routes
                .iter()
                .map(|r| {
                    json!({
                        "path": r.path.path(),
                        "kind": r.path.kind(),
                        "ingress": match r.source.kind {
                            portico_model::SourceKind::Ingress => r.source.to_string(),
                            _ => r.source.described(),
                        },
                        "backend": r.backend,
                        "canary": r.canary.as_deref().map(|c| json!({"backend": c.backend, "weight": c.weight, "total": c.weight_total})),
                        "https_redirect": r.redirect_to_https,
                        "conditions": r.conditions.is_some(),
                        "auth": r.access.is_some(),
                        "rate_limit": r.rate_limit.is_some(),
                    })
                })
                .collect();
            json!({"host": host_text(&vh.host), "label": host_label(&vh.host), "routes": routes})
        })
        .collect();
    let backends: Vec<Value> = source
        .backends
        .iter()
        .zip(snapshot.pools())
        .map(|(b, pool)| {
            // The balancer holds the ready endpoints and their health; the snapshot the rest.
            let balancer = &pool.balancer;
            let ready = (0..balancer.len()).map(|i| {
                let endpoint = balancer.endpoint(i);
                let state = match (balancer.is_up(i), endpoint.checked_down()) {
                    (true, _) => "up",
                    (false, true) => "failing checks",
                    (false, false) => "failing",
                };
                json!({"address": endpoint.addr.to_string(), "state": state, "in_flight": endpoint.in_flight()})
            });
            let not_ready = b.endpoints.iter().filter(|e| !e.ready).map(
                |e| json!({"address": std::net::SocketAddr::new(e.address, e.port).to_string(), "state": "not ready", "in_flight": 0}),
            );
            let endpoints: Vec<Value> = ready.chain(not_ready).collect();
            json!({"name": b.name, "balance": b.policy.balance.as_str(), "endpoints": endpoints})
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let certificates: Vec<Value> = snapshot
        .certificates()
        .served()
        .iter()
        .map(|c| {
            let not_after = c.not_after();
            json!({
                "name": c.name,
                "names": c.names(),
                "not_after": not_after,
                "days_left": not_after.map(|t| (t - now).div_euclid(86_400)),
            })
        })
        .collect();
    json!({
        "version": source.version,
        "applied_at": applied_at,
        "now": now,
        "default_backend": source.default_backend,
        "hosts": hosts,
        "backends": backends,
        "certificates": certificates,
        "streams": streams,
        "diagnostics": source.diagnostics,
    })
}
