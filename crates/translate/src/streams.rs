//! ingress-nginx's TCP and UDP services ConfigMaps (`--tcp-services-configmap`,
//! `--udp-services-configmap`): each key a port to expose, each value
//! `namespace/service:port[:PROXY][:PROXY]` (the first `PROXY`: clients send a PROXY protocol
//! header; the second: Portico sends one upstream). Each entry becomes a stream service
//! over a backend of the Service's endpoints; a bad entry is reported on its ConfigMap and
//! left out, the others served. Also the passthrough hosts (`ssl-passthrough`), whose
//! backend is their `/` route's.

use crate::backend::{self, SliceIndex};
use crate::cache::{ClusterState, ObjectKey};
use crate::controller_config::StreamDefaults;
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::merge::RouteTable;
use k8s_openapi::api::networking::v1::{IngressServiceBackend, ServiceBackendPort};
use portico_model::{
    Backend, RetryPolicy, StreamProtocol, StreamService, Streams, TrafficPolicy, Upstream,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the TCP and UDP services are configured, and the ports they may not take.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    pub tcp_services: Option<ObjectKey>,
    pub udp_services: Option<ObjectKey>,
    /// The proxy's own ports (`--reserved-ports`): an entry naming one is refused.
    pub reserved_ports: Vec<u16>,
}

/// One entry of a services ConfigMap, as written.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    namespace: String,
    service: String,
    port: ServiceBackendPort,
    accept_proxy_protocol: bool,
    send_proxy_protocol: bool,
}

/// The stream services and passthrough hosts, and the backends they name.
pub(crate) fn streams(
    state: &ClusterState,
    slices: &SliceIndex,
    opts: &StreamOptions,
    defaults: &StreamDefaults,
    table: &RouteTable<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> (Streams, Vec<Arc<Backend>>) {
    let mut services: BTreeMap<(u16, StreamProtocol), StreamService> = BTreeMap::new();
    // Two ports may expose one Service port: one backend.
    let mut backends: BTreeMap<String, Arc<Backend>> = BTreeMap::new();
    for (protocol, key) in [
        (StreamProtocol::Tcp, &opts.tcp_services),
        (StreamProtocol::Udp, &opts.udp_services),
    ] {
        let Some(key) = key else {
            continue;
        };
        let (namespace, name) = key;
        let object = ObjectRef {
            kind: "ConfigMap",
            namespace: namespace.clone(),
            name: name.clone(),
        };
        let mut report = |reason, message: String| {
            diagnostics.push(Diagnostic {
                object: object.clone(),
                reason,
                message,
            })
        };
        let Some(config_map) = state.config_maps.get(key) else {
            report(
                Reason::ConfigMapNotFound,
                format!(
                    "the {} services ConfigMap does not exist; no {} port is exposed",
                    protocol.as_str().to_uppercase(),
                    protocol.as_str().to_uppercase()
                ),
            );
            continue;
        };
        for (k, v) in config_map.data.iter().flatten() {
            let parsed = parse_port(k).and_then(|port| {
                let entry = parse_entry(v)?;
                if opts.reserved_ports.contains(&port) {
                    return Err(format!(
                        "port {port} is one of the proxy's own (--reserved-ports)"
                    ));
                }
                if protocol == StreamProtocol::Udp
                    && (entry.accept_proxy_protocol || entry.send_proxy_protocol)
                {
                    return Err("the PROXY protocol is for TCP only".into());
                }
                if services.contains_key(&(port, protocol)) {
                    return Err(format!("port {port} is already exposed by another entry"));
                }
                Ok((port, entry))
            });
            let (port, entry) = match parsed {
                Ok(p) => p,
                Err(why) => {
                    report(
                        Reason::InvalidSetting,
                        format!("key {k:?}: value {v:?}: {why}; the entry is left out"),
                    );
                    continue;
                }
            };
            let (service, backend) =
                resolve(state, slices, defaults, protocol, port, entry, &mut report);
            backends.insert(backend.name.clone(), backend);
            services.insert((port, protocol), service);
        }
    }
    let (passthrough, passthrough_problems) = table.passthrough_hosts();
    diagnostics.extend(passthrough_problems);
    (
        Streams {
            services: services.into_values().collect(),
            passthrough,
        },
        backends.into_values().collect(),
    )
}

fn resolve(
    state: &ClusterState,
    slices: &SliceIndex,
    defaults: &StreamDefaults,
    protocol: StreamProtocol,
    port: u16,
    entry: Entry,
    report: &mut impl FnMut(Reason, String),
) -> (StreamService, Arc<Backend>) {
    let policy = TrafficPolicy {
        retry: RetryPolicy {
            on_error: defaults.next_upstream,
            on_timeout: defaults.next_upstream,
            on_status: Vec::new(),
            tries: if defaults.next_upstream {
                defaults.tries
            } else {
                1
            },
            timeout_ms: defaults.timeouts.next_upstream_ms,
        },
        ..TrafficPolicy::default()
    };
    let svc = IngressServiceBackend {
        name: entry.service.clone(),
        port: Some(port_for_protocol(
            state,
            &entry.namespace,
            &entry.service,
            entry.port.clone(),
            protocol,
        )),
    };
    let resolved = backend::resolve(
        state,
        slices,
        &entry.namespace,
        &svc,
        &Upstream::default(),
        &policy,
    );
    let written = format!(
        "{}/{}:{}",
        entry.namespace,
        entry.service,
        backend::port_text(Some(&entry.port))
    );
    if let Some((reason, message)) = resolved.problem {
        report(
            reason,
            format!(
                "key \"{port}\": {message}; {} port {port} is open and closes each connection until it has",
                protocol.as_str().to_uppercase()
            ),
        );
    }
    let backend = Arc::new(Backend {
        name: format!("{}:{written}", protocol.as_str()),
        ..(*resolved.backend).clone()
    });
    let service = StreamService {
        port,
        protocol,
        backend: backend.name.clone(),
        service: backend.service.clone(),
        accept_proxy_protocol: entry.accept_proxy_protocol,
        send_proxy_protocol: entry.send_proxy_protocol,
        timeouts: defaults.timeouts,
        udp_responses: if protocol == StreamProtocol::Udp {
            defaults.responses
        } else {
            0
        },
    };
    (service, backend)
}

/// A Service port given by number, as the protocol's own where the Service has the number
/// twice (DNS: 53/UDP and 53/TCP, told apart by their names).
fn port_for_protocol(
    state: &ClusterState,
    namespace: &str,
    service: &str,
    port: ServiceBackendPort,
    protocol: StreamProtocol,
) -> ServiceBackendPort {
    let Some(number) = port.number else {
        return port;
    };
    let ports = state
        .service(namespace, service)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let wanted = protocol.as_str().to_uppercase();
    let same_number: Vec<_> = ports.iter().filter(|p| p.port == number).collect();
    match same_number.as_slice() {
        [_, _, ..] => same_number
            .iter()
            .find(|p| p.protocol.as_deref().unwrap_or("TCP") == wanted)
            .and_then(|p| p.name.clone())
            .map(|name| ServiceBackendPort {
                name: Some(name),
                number: None,
            })
            .unwrap_or(port),
        _ => port,
    }
}

fn parse_port(k: &str) -> Result<u16, String> {
    k.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| "the key is not a port from 1 to 65535".to_string())
}

/// `namespace/service:port[:PROXY][:PROXY]`; either `PROXY` may be left empty.
fn parse_entry(v: &str) -> Result<Entry, String> {
    const FORM: &str = "expected namespace/service:port[:PROXY][:PROXY]";
    let mut parts = v.trim().split(':');
    let target = parts.next().unwrap_or_default();
    let port = parts.next().ok_or(FORM)?;
    let mut proxy = [false; 2];
    for flag in &mut proxy {
        match parts.next() {
            None | Some("") => {}
            Some("PROXY") => *flag = true,
            Some(_) => return Err(format!("{FORM}, each PROXY written in capitals")),
        }
    }
    if parts.next().is_some() {
        return Err(FORM.into());
    }
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let (namespace, service) = target
        .split_once('/')
        .filter(|(n, s)| dns_label(n) && dns_label(s))
        .ok_or(FORM)?;
    let port = match port.parse::<u16>() {
        Ok(0) => return Err("the service port must not be 0".into()),
        Ok(n) => ServiceBackendPort {
            number: Some(i32::from(n)),
            name: None,
        },
        Err(_) if dns_label(port) => ServiceBackendPort {
            number: None,
            name: Some(port.to_string()),
        },
        Err(_) => return Err(format!("{FORM}: the port is a number or a port name")),
    };
    Ok(Entry {
        namespace: namespace.to_string(),
        service: service.to_string(),
        port,
        accept_proxy_protocol: proxy[0],
        send_proxy_protocol: proxy[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KubeObject, Options, Translator};
    use serde_json::json;

    fn object(v: serde_json::Value) -> KubeObject {
        let kind = v["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "ConfigMap" => KubeObject::ConfigMap(serde_json::from_value(v).unwrap()),
            "Service" => KubeObject::Service(serde_json::from_value(v).unwrap()),
            "EndpointSlice" => KubeObject::EndpointSlice(serde_json::from_value(v).unwrap()),
            _ => KubeObject::Ingress(Arc::new(serde_json::from_value(v).unwrap())),
        }
    }

    fn cluster(tcp: serde_json::Value, udp: serde_json::Value) -> crate::ClusterState {
        [
            json!({"kind": "ConfigMap", "metadata": {"name": "tcp", "namespace": "ingress"}, "data": tcp}),
            json!({"kind": "ConfigMap", "metadata": {"name": "udp", "namespace": "ingress"}, "data": udp}),
            json!({"kind": "Service", "metadata": {"name": "dns", "namespace": "kube-system"}, "spec": {"ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
            json!({"kind": "EndpointSlice", "metadata": {"name": "dns-1", "namespace": "kube-system", "labels": {"kubernetes.io/service-name": "dns"}},
                "addressType": "IPv4", "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5354, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": true}}]}),
        ]
        .into_iter()
        .map(object)
        .collect()
    }

    fn options() -> Options {
        Options {
            assume_class_exists: true,
            streams: StreamOptions {
                tcp_services: Some(("ingress".into(), "tcp".into())),
                udp_services: Some(("ingress".into(), "udp".into())),
                reserved_ports: vec![80, 443],
            },
            ..Options::default()
        }
    }

    #[test]
    fn config_map_entries_become_ports_over_the_protocols_own_service_port() {
        let t = Translator::new(options()).translate(&cluster(
            json!({"53": "kube-system/dns:53", "5300": "kube-system/dns:53:PROXY", "443": "kube-system/dns:53", "54": "kube-system/dns:dns:PROXY:SOAP"}),
            json!({"53": "kube-system/dns:53", "60": "kube-system/dns:53::PROXY"}),
        ));
        let summary: Vec<(u16, StreamProtocol, &str, bool, u32)> = t
            .snapshot
            .streams
            .services
            .iter()
            .map(|s| {
                (
                    s.port,
                    s.protocol,
                    s.backend.as_str(),
                    s.accept_proxy_protocol,
                    s.udp_responses,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (53, StreamProtocol::Tcp, "tcp:kube-system/dns:53", false, 0),
                (53, StreamProtocol::Udp, "udp:kube-system/dns:53", false, 1),
                (5300, StreamProtocol::Tcp, "tcp:kube-system/dns:53", true, 0),
            ]
        );
        let port_of = |name: &str| {
            let b = t.snapshot.backends.iter().find(|b| b.name == name).unwrap();
            b.endpoints.iter().map(|e| e.port).collect::<Vec<_>>()
        };
        assert_eq!(
            port_of("tcp:kube-system/dns:53"),
            vec![5354],
            "53/TCP is dns-tcp"
        );
        assert_eq!(
            port_of("udp:kube-system/dns:53"),
            vec![5353],
            "53/UDP is dns"
        );
        assert_eq!(
            t.snapshot.backends.len(),
            2,
            "one backend for two ports of one Service port"
        );
        let snapshot = portico_model::Snapshot {
            version: 1,
            ..t.snapshot.clone()
        };
        assert_eq!(snapshot.validate(), Ok(()));
        let mut messages: Vec<String> = t
            .diagnostics
            .iter()
            .filter(|d| d.object.kind == "ConfigMap")
            .map(|d| format!("{} {}", d.object.name, d.message))
            .collect();
        messages.sort();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(
            messages[0].starts_with(
                "tcp key \"443\": value \"kube-system/dns:53\": port 443 is one of the proxy's own"
            ),
            "{messages:?}"
        );
        assert!(
            messages[1]
                .starts_with("tcp key \"54\": value \"kube-system/dns:dns:PROXY:SOAP\": expected"),
            "{messages:?}"
        );
        assert!(messages[2].starts_with("udp key \"60\": value \"kube-system/dns:53::PROXY\": the PROXY protocol is for TCP only"), "{messages:?}");
    }

    #[test]
    fn ssl_passthrough_hosts_take_their_root_paths_backend() {
        let mut state = cluster(json!({}), json!({}));
        for ingress in [
            json!({"kind": "Ingress", "metadata": {"name": "argocd", "namespace": "kube-system", "annotations": {"nginx.ingress.kubernetes.io/ssl-passthrough": "true"}},
                "spec": {"ingressClassName": "portico", "rules": [{"host": "argocd.test", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "dns", "port": {"number": 53}}}}]}}]}}),
            json!({"kind": "Ingress", "metadata": {"name": "noroot", "namespace": "kube-system", "annotations": {"nginx.ingress.kubernetes.io/ssl-passthrough": "true"}},
                "spec": {"ingressClassName": "portico", "rules": [{"host": "vault.test", "http": {"paths": [{"path": "/ui", "pathType": "Prefix", "backend": {"service": {"name": "dns", "port": {"number": 53}}}}]}}]}}),
        ] {
            state.insert(object(ingress));
        }
        let t = Translator::new(options()).translate(&state);
        let hosts: Vec<(String, &str)> = t
            .snapshot
            .streams
            .passthrough
            .iter()
            .map(|p| (p.host.to_string(), p.backend.as_str()))
            .collect();
        assert_eq!(
            hosts,
            vec![("argocd.test".to_string(), "kube-system/dns:53")]
        );
        assert!(t.diagnostics.iter().any(|d| d.object.name == "noroot"
            && d.message
                .contains("ssl-passthrough: host \"vault.test\" has no \"/\" path")));
        let snapshot = portico_model::Snapshot {
            version: 1,
            ..t.snapshot.clone()
        };
        assert_eq!(snapshot.validate(), Ok(()));
    }

    #[test]
    fn entries_parse_as_ingress_nginx_writes_them() {
        let e = parse_entry("db/redis:6379").unwrap();
        assert_eq!(
            (e.namespace.as_str(), e.service.as_str(), e.port.number),
            ("db", "redis", Some(6379))
        );
        assert!(!e.accept_proxy_protocol && !e.send_proxy_protocol);
        let e = parse_entry("db/redis:client:PROXY").unwrap();
        assert_eq!(e.port.name.as_deref(), Some("client"));
        assert!(e.accept_proxy_protocol && !e.send_proxy_protocol);
        let e = parse_entry("db/redis:6379::PROXY").unwrap();
        assert!(!e.accept_proxy_protocol && e.send_proxy_protocol);
        let e = parse_entry("db/redis:6379:PROXY:PROXY").unwrap();
        assert!(e.accept_proxy_protocol && e.send_proxy_protocol);
        for bad in [
            "redis:6379",
            "db/redis",
            "db/redis:0",
            "db/Redis:6379",
            "db/redis:6379:proxy",
            "db/redis:6379:PROXY:PROXY:PROXY",
            "db/redis:port_name",
            "/redis:6379",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_port(" 9000 "), Ok(9000));
        assert!(
            parse_port("0").is_err() && parse_port("65536").is_err() && parse_port("x").is_err()
        );
    }
}
