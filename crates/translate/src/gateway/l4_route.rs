//! TCPRoute, UDPRoute and TLSRoute on the L4 data plane: a TCP or UDP listener's port
//! becomes a stream service to the route's backend, a TLSRoute's hostnames become
//! passthrough hosts on the HTTPS port (the proxy needs `--enable-ssl-passthrough`).
//! One backend per route: the first with a weight; more are reported.

use super::http_route::{BackendReach, ProcessedRoute, Refusal, RouteHead, RouteProcessor};
use super::listeners::Protocol;
use super::types::L4Route;
use crate::cache::ObjectKey;
use crate::diagnostic::{Diagnostic, Reason};
use crate::ingress::Fragment;
use portico_model::{
    HostMatch, PassthroughHost, SourceKind, StreamProtocol, StreamService, StreamTimeouts,
};

impl RouteProcessor<'_> {
    pub fn process_l4(&self, key: &ObjectKey, route: &L4Route) -> Option<ProcessedRoute> {
        let kind = match route.kind.as_str() {
            "TCPRoute" => SourceKind::TCPRoute,
            "UDPRoute" => SourceKind::UDPRoute,
            _ => SourceKind::TLSRoute,
        };
        let head = RouteHead {
            kind,
            generation: route.metadata.generation,
            parent_refs: &route.spec.parent_refs,
            hostnames: if kind == SourceKind::TLSRoute {
                &route.spec.hostnames
            } else {
                &[]
            },
        };
        self.process(
            key,
            head,
            Box::new(move |p, hosts, listeners, f| {
                p.l4_rules(key, route, kind, hosts, listeners, f)
            }),
        )
    }

    fn l4_rules(
        &self,
        key: &ObjectKey,
        route: &L4Route,
        kind: SourceKind,
        hosts: &[HostMatch],
        listeners: &[(usize, usize)],
        fragment: &mut Fragment,
    ) -> Result<(), Refusal> {
        let refs: Vec<_> = route
            .spec
            .rules
            .iter()
            .flat_map(|r| &r.backend_refs)
            .filter(|r| r.weight.unwrap_or(1) > 0)
            .cloned()
            .collect();
        if refs.len() > 1 {
            fragment.diagnostics.push(Diagnostic {
                object: fragment.object.clone(),
                reason: Reason::UnsupportedField,
                message: format!(
                    "spec.rules: {} backends; an L4 route sends to its first only for now",
                    refs.len()
                ),
            });
        }
        let mut unresolved = Ok(());
        let (backend, split) = self.backends(
            key,
            0,
            &refs[..refs.len().min(1)],
            &BackendReach::default(),
            fragment,
            &mut unresolved,
        );
        if split.is_some() {
            // Nothing to send to: no port or host is served for the route.
            return unresolved.and(Err((
                "BackendNotFound",
                "the route has no backend to send to".to_string(),
            )));
        }
        let service = fragment
            .backends
            .iter()
            .find(|b| b.backend.name == backend)
            .map(|b| b.backend.service.clone())
            .unwrap_or_default();
        match kind {
            SourceKind::TLSRoute => {
                for host in hosts {
                    fragment.passthrough_hosts.push(PassthroughHost {
                        host: host.clone(),
                        backend: backend.clone(),
                    });
                }
            }
            _ => {
                let protocol = if kind == SourceKind::UDPRoute {
                    StreamProtocol::Udp
                } else {
                    StreamProtocol::Tcp
                };
                for (g, l) in listeners {
                    let Some(listener) = self.gateways[*g].listeners[*l].as_ref() else {
                        continue;
                    };
                    let wanted = if protocol == StreamProtocol::Udp {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    };
                    if listener.protocol != wanted {
                        continue;
                    }
                    fragment.streams.push(StreamService {
                        port: listener.port as u16,
                        protocol,
                        backend: backend.clone(),
                        service: service.clone(),
                        accept_proxy_protocol: false,
                        send_proxy_protocol: false,
                        timeouts: StreamTimeouts::default(),
                        udp_responses: 0,
                    });
                }
            }
        }
        unresolved
    }
}
