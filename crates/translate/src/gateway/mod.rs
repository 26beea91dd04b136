//! Gateway API on the Ingress data plane: GatewayClasses, Gateways and HTTPRoutes become
//! fragments that merge with the Ingresses' into one route table, and the status the
//! spec asks for (`docs/gateway-api.md`, `docs/design/0022-gateway-api.md`).
//!
//! `listeners` decides which Gateways and listeners Portico serves, `http_route` turns
//! each route into routes for the hosts it attaches to, `grants` answers whether a
//! reference across namespaces is allowed, `status` holds what is reported.

mod grants;
mod grpc_route;
mod http_route;
mod l4_route;
mod listeners;
pub mod status;
pub mod types;

use crate::backend::SliceIndex;
use crate::cache::{ClusterState, ObjectKey};
use crate::diagnostic::Diagnostic;
use crate::ingress::Fragment;
use http_route::RouteProcessor;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use status::GatewayApiStatus;
use std::sync::Arc;

/// The `spec.controllerName` of GatewayClasses Portico serves.
pub const GATEWAY_CONTROLLER_NAME: &str = "portico.io/gateway-controller";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayOptions {
    /// The port of Gateway listeners served by the proxy's HTTP listener (`--gateway-http-port`).
    pub http_port: i32,
    /// The port of Gateway listeners served by the proxy's HTTPS listener (`--gateway-https-port`).
    pub https_port: i32,
    /// Ports TCP and UDP listeners may not have (`--reserved-ports`, filled in from
    /// [`crate::StreamOptions`] by the translator).
    pub reserved_ports: Vec<u16>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            http_port: 80,
            https_port: 443,
            reserved_ports: Vec::new(),
        }
    }
}

/// A fragment with what orders it among the Ingresses' (oldest first).
pub(crate) struct AgedFragment {
    pub created: Option<Time>,
    pub key: ObjectKey,
    pub fragment: Arc<Fragment>,
}

pub(crate) struct GatewayOutput {
    pub fragments: Vec<AgedFragment>,
    pub status: GatewayApiStatus,
}

/// Every Gateway API object of Portico's classes, as fragments and status.
pub(crate) fn process(
    state: &ClusterState,
    slices: &SliceIndex,
    opts: &GatewayOptions,
    diagnostics: &mut Vec<Diagnostic>,
) -> GatewayOutput {
    let mut status = GatewayApiStatus::default();
    let classes = listeners::classes(state, GATEWAY_CONTROLLER_NAME, &mut status.classes);
    let mut gateways = listeners::gateways(state, &classes, opts, diagnostics);
    let mut fragments: Vec<AgedFragment> = gateways
        .iter()
        .filter(|g| !g.fragment.tls.is_empty())
        .map(|g| AgedFragment {
            created: g.created.clone(),
            key: g.key.clone(),
            fragment: Arc::clone(&g.fragment),
        })
        .collect();
    let processor = RouteProcessor {
        state,
        slices,
        gateways: &gateways,
    };
    let mut attached = Vec::new();
    // (key, creation time, what the route contributes, whether a GRPCRoute)
    let mut outputs = Vec::new();
    for (key, route) in &state.http_routes {
        let processed = processor.process_http(key, route);
        outputs.push((key, &route.metadata, processed, false));
    }
    for (key, route) in &state.grpc_routes {
        let processed = processor.process_grpc(key, route);
        outputs.push((key, &route.metadata, processed, true));
    }
    for ((kind, namespace, name), route) in &state.l4_routes {
        let key = (namespace.clone(), name.clone());
        let Some(processed) = processor.process_l4(&key, route) else {
            continue;
        };
        status.l4_routes.insert(
            (kind.clone(), namespace.clone(), name.clone()),
            processed.parents,
        );
        attached.extend(processed.attached);
        fragments.push(AgedFragment {
            created: route.metadata.creation_timestamp.clone(),
            key,
            fragment: Arc::new(processed.fragment),
        });
    }
    for (key, meta, processed, grpc) in outputs {
        let Some(processed) = processed else {
            continue;
        };
        let statuses = if grpc {
            &mut status.grpc_routes
        } else {
            &mut status.http_routes
        };
        statuses.insert(key.clone(), processed.parents);
        attached.extend(processed.attached);
        fragments.push(AgedFragment {
            created: meta.creation_timestamp.clone(),
            key: key.clone(),
            fragment: Arc::new(processed.fragment),
        });
    }
    attached.sort_unstable();
    for (g, l) in attached {
        gateways[g].state.listeners[l].attached_routes += 1;
    }
    for g in gateways {
        status.gateways.insert(g.key, g.state);
    }
    GatewayOutput { fragments, status }
}

#[cfg(test)]
mod tests {
    use crate::cache::{ClusterState, KubeObject};
    use crate::gateway::status::StatusCondition;
    use crate::{translate, Options};
    use serde_json::json;
    use std::sync::Arc;

    fn state() -> ClusterState {
        objects().into_iter().collect()
    }

    fn objects() -> Vec<KubeObject> {
        vec![
            KubeObject::GatewayClass(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "portico", "generation": 1},
                "spec": {"controllerName": "portico.io/gateway-controller"}}))
                .unwrap(),
            )),
            KubeObject::GatewayClass(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "theirs"},
                "spec": {"controllerName": "example.com/other"}}))
                .unwrap(),
            )),
            KubeObject::Gateway(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "gw", "namespace": "infra", "generation": 2},
                "spec": {"gatewayClassName": "portico", "listeners": [
                    {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "*.example.com"},
                    {"name": "tcp", "protocol": "SCTP", "port": 9000},
                    {"name": "on-reserved", "protocol": "TCP", "port": 10254},
                    {"name": "alt", "protocol": "HTTP", "port": 8080},
                    {"name": "https", "protocol": "HTTPS", "port": 443,
                     "tls": {"certificateRefs": [{"name": "missing"}]}}
                ]}}))
                .unwrap(),
            )),
            KubeObject::HttpRoute(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "ok", "namespace": "infra", "generation": 3},
                "spec": {"parentRefs": [{"name": "gw"}], "hostnames": ["a.example.com"],
                         "rules": [{"backendRefs": [{"name": "nowhere", "port": 80}]}]}}))
                .unwrap(),
            )),
            KubeObject::HttpRoute(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "wrong-host", "namespace": "infra"},
                "spec": {"parentRefs": [{"name": "gw", "sectionName": "http"}],
                         "hostnames": ["a.example.org"]}}))
                .unwrap(),
            )),
            KubeObject::HttpRoute(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "foreign", "namespace": "apps"},
                "spec": {"parentRefs": [{"name": "gw", "namespace": "infra"}]}}))
                .unwrap(),
            )),
            KubeObject::HttpRoute(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "no-section", "namespace": "infra"},
                "spec": {"parentRefs": [{"name": "gw", "sectionName": "nope"}]}}))
                .unwrap(),
            )),
            KubeObject::HttpRoute(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": "other-gateway", "namespace": "infra"},
                "spec": {"parentRefs": [{"name": "someone-elses"}]}}))
                .unwrap(),
            )),
        ]
    }

    fn reason(conditions: &[StatusCondition], type_: &str) -> (bool, &'static str) {
        let c = conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status, c.reason)
    }

    #[test]
    fn status_reports_classes_listeners_and_route_parents_as_the_spec_names_them() {
        let opts = Options {
            streams: crate::StreamOptions {
                reserved_ports: vec![10254],
                ..Default::default()
            },
            ..Options::default()
        };
        let t = translate(&state(), &opts);
        let s = &t.gateway_status;
        assert_eq!(
            s.classes.keys().collect::<Vec<_>>(),
            ["portico"],
            "only our class"
        );
        let gw = &s.gateways[&("infra".to_string(), "gw".to_string())];
        assert_eq!(
            reason(&gw.conditions, "Accepted"),
            (true, "ListenersNotValid")
        );
        assert_eq!(reason(&gw.conditions, "Programmed"), (true, "Programmed"));
        assert_eq!(gw.conditions[0].observed_generation, Some(2));
        let listener = |name: &str| gw.listeners.iter().find(|l| l.name == name).unwrap();
        assert_eq!(
            reason(&listener("http").conditions, "Accepted"),
            (true, "Accepted")
        );
        assert_eq!(
            listener("http").attached_routes,
            1,
            "only the route that attached"
        );
        assert_eq!(listener("http").supported_kinds[0].kind, "HTTPRoute");
        assert_eq!(
            reason(&listener("tcp").conditions, "Accepted"),
            (false, "UnsupportedProtocol")
        );
        assert!(listener("tcp").supported_kinds.is_empty());
        assert_eq!(
            reason(&listener("alt").conditions, "Accepted"),
            (false, "PortUnavailable")
        );
        assert_eq!(
            reason(&listener("on-reserved").conditions, "Accepted"),
            (false, "PortUnavailable"),
            "a TCP listener on one of the proxy's own ports"
        );
        assert_eq!(
            reason(&listener("https").conditions, "ResolvedRefs"),
            (false, "InvalidCertificateRef")
        );
        assert_eq!(
            reason(&listener("https").conditions, "Programmed"),
            (false, "Invalid")
        );

        let route = |name: &str| {
            let key = (
                if name == "foreign" { "apps" } else { "infra" }.to_string(),
                name.to_string(),
            );
            s.http_routes.get(&key).map(|p| p[0].conditions.clone())
        };
        let ok = route("ok").unwrap();
        assert_eq!(reason(&ok, "Accepted"), (true, "Accepted"));
        assert_eq!(reason(&ok, "ResolvedRefs"), (false, "BackendNotFound"));
        assert_eq!(ok[0].observed_generation, Some(3));
        assert_eq!(
            reason(&route("wrong-host").unwrap(), "Accepted"),
            (false, "NoMatchingListenerHostname")
        );
        assert_eq!(
            reason(&route("foreign").unwrap(), "Accepted"),
            (false, "NotAllowedByListeners")
        );
        assert_eq!(
            reason(&route("no-section").unwrap(), "Accepted"),
            (false, "NoMatchingParent")
        );
        assert!(
            route("other-gateway").is_none(),
            "not our parent: no status"
        );
        assert!(
            t.diagnostics.iter().any(|d| d.object.kind == "HTTPRoute"
                && d.object.name == "ok"
                && d.message.contains("answered 500")),
            "{:#?}",
            t.diagnostics
        );
    }

    #[test]
    fn frontend_validation_asks_route_hosts_for_client_certificates_and_refuses_unusable_cas() {
        use crate::secret::tests::{self_signed, tls_secret};
        use k8s_openapi::api::core::v1::ConfigMap;
        let (cert, key) = self_signed("site.test", -1, 30);
        let (ca, _) = self_signed("clients", -1, 30);
        let mut secret = tls_secret(&cert, &key);
        secret.metadata.name = Some("site".into());
        secret.metadata.namespace = Some("infra".into());
        let config_map = |name: &str, data: serde_json::Value| {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "infra"}, "data": data}))
            .unwrap();
            KubeObject::ConfigMap(Arc::new(cm))
        };
        let gateway = |name: &str, frontend: serde_json::Value| {
            KubeObject::Gateway(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "infra"},
                "spec": {"gatewayClassName": "portico", "tls": {"frontend": frontend},
                         "listeners": [{"name": "https", "protocol": "HTTPS", "port": 443,
                                        "hostname": format!("{name}.test"),
                                        "tls": {"certificateRefs": [{"name": "site"}]}}]}}))
                .unwrap(),
            ))
        };
        let validation =
            |refs: serde_json::Value| json!({"validation": {"caCertificateRefs": refs}});
        let mut objects = objects();
        objects.extend([
            KubeObject::Secret(Arc::new(secret)),
            config_map("clients", json!({"ca.crt": ca})),
            config_map("empty", json!({"other": "x"})),
            gateway(
                "good",
                json!({
                "default": validation(json!([{"kind": "ConfigMap", "name": "nowhere"}])),
                "perPort": [{"port": 443, "tls": validation(json!([
                    {"kind": "ConfigMap", "group": "", "name": "clients"},
                    {"kind": "ConfigMap", "name": "empty"}]))}]}),
            ),
            gateway(
                "missing",
                json!({"default": validation(json!([{"kind": "ConfigMap", "name": "nowhere"}]))}),
            ),
            gateway(
                "secret",
                json!({"default": validation(json!([{"kind": "Secret", "name": "site"}]))}),
            ),
        ]);
        for name in ["good", "missing", "secret"] {
            objects.push(KubeObject::HttpRoute(Arc::new(
                serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "infra"},
                "spec": {"parentRefs": [{"name": name}]}}))
                .unwrap(),
            )));
        }
        let t = translate(&objects.into_iter().collect(), &Options::default());
        let listener = |gw: &str| {
            let g = &t.gateway_status.gateways[&("infra".to_string(), gw.to_string())];
            g.listeners[0].conditions.clone()
        };
        let good = listener("good");
        assert_eq!(reason(&good, "Accepted"), (true, "Accepted"));
        assert_eq!(
            reason(&good, "ResolvedRefs"),
            (false, "InvalidCACertificateRef"),
            "one of its two CA references has no ca.crt"
        );
        let missing = listener("missing");
        assert_eq!(
            reason(&missing, "Accepted"),
            (false, "NoValidCACertificate")
        );
        assert_eq!(
            reason(&missing, "ResolvedRefs"),
            (false, "InvalidCACertificateRef")
        );
        assert!(!reason(&missing, "Programmed").0);
        let secret = listener("secret");
        assert_eq!(reason(&secret, "Accepted"), (false, "NoValidCACertificate"));
        assert_eq!(
            reason(&secret, "ResolvedRefs"),
            (false, "InvalidCACertificateKind")
        );

        let vhost = |host: &str| {
            t.snapshot
                .virtual_hosts
                .iter()
                .find(|v| v.host.to_string() == host)
        };
        let auth = vhost("good.test")
            .and_then(|v| v.client_auth.as_ref())
            .expect("the route's host asks for client certificates");
        assert_eq!(auth.verify, portico_model::ClientVerify::On);
        assert!(auth.ca_pem.contains("BEGIN CERTIFICATE"));
        assert!(
            vhost("missing.test").is_none(),
            "a listener without a usable CA serves nothing, rather than everyone"
        );
    }
}
