//! GatewayClasses and Gateways: which are Portico's, and what each listener serves.
//! Every Gateway of a Portico class is served by the same proxies: HTTP listeners on
//! `--gateway-http-port` by the proxy's HTTP listener, HTTPS ones on
//! `--gateway-https-port` by its HTTPS listener. A listener Portico cannot serve is
//! reported in its status and takes no routes.

use super::grants::{self, CoreRef};
use super::status::{GatewayState, ListenerState, StatusCondition};
use super::types::{Gateway, Listener, RouteGroupKind, GROUP};
use super::GatewayOptions;
use crate::cache::{ClusterState, ObjectKey};
use crate::diagnostic::{Diagnostic, Reason};
use crate::ingress::{Fragment, TlsClaim};
use crate::secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use portico_model::{ClientAuth, ClientVerify, HostMatch, SourceKind};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Https,
    /// TLS passed through to the backend by SNI, on the HTTPS port.
    Tls,
    Tcp,
    Udp,
}

impl Protocol {
    /// The route kinds a listener of this protocol takes.
    fn route_kinds(self) -> &'static [&'static str] {
        match self {
            Protocol::Http | Protocol::Https => &["HTTPRoute", "GRPCRoute"],
            Protocol::Tls => &["TLSRoute"],
            Protocol::Tcp => &["TCPRoute"],
            Protocol::Udp => &["UDPRoute"],
        }
    }
}

/// Which namespaces' routes a listener takes.
pub(crate) enum AllowedNamespaces {
    Same,
    All,
    Selector(LabelSelector),
}

/// A listener that serves: routes may attach to it.
pub(crate) struct ServedListener {
    pub index: usize,
    pub port: i32,
    pub protocol: Protocol,
    /// `None`: every host.
    pub hostname: Option<HostMatch>,
    pub namespaces: AllowedNamespaces,
    pub kinds: Vec<String>,
    /// The client certificates an HTTPS listener asks for (`spec.tls.frontend`).
    pub client_auth: Option<ClientAuth>,
}

/// One of Portico's Gateways, as routes see it.
pub(crate) struct ServedGateway {
    pub key: ObjectKey,
    pub created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Every listener, by index; `None` where the listener does not serve.
    pub listeners: Vec<Option<ServedListener>>,
    pub listener_names: Vec<String>,
    pub listener_ports: Vec<i32>,
    pub state: GatewayState,
    /// The certificates of its HTTPS listeners, as TLS claims.
    pub fragment: Arc<Fragment>,
}

/// The GatewayClasses whose `controllerName` is Portico's, with their status.
pub(crate) fn classes(
    state: &ClusterState,
    controller_name: &str,
    status: &mut BTreeMap<String, Vec<StatusCondition>>,
) -> Vec<String> {
    let mut ours = Vec::new();
    for (name, class) in &state.gateway_classes {
        if class.spec.controller_name != controller_name {
            continue;
        }
        let generation = class.metadata.generation;
        status.insert(
            name.clone(),
            vec![StatusCondition::new(
                "Accepted",
                true,
                "Accepted",
                "Portico serves this class",
                generation,
            )],
        );
        ours.push(name.clone());
    }
    ours
}

fn condition(
    type_: &'static str,
    ok: bool,
    reason: &'static str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> StatusCondition {
    StatusCondition::new(type_, ok, reason, message, generation)
}

/// The Gateways of Portico's classes, each listener checked.
pub(crate) fn gateways(
    state: &ClusterState,
    classes: &[String],
    opts: &GatewayOptions,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<ServedGateway> {
    let mut served = Vec::new();
    for (key, gateway) in &state.gateways {
        if !classes.contains(&gateway.spec.gateway_class_name) {
            continue;
        }
        served.push(gateway_of(state, key, gateway, opts, diagnostics));
    }
    served
}

fn gateway_of(
    state: &ClusterState,
    key: &ObjectKey,
    gateway: &Gateway,
    opts: &GatewayOptions,
    diagnostics: &mut Vec<Diagnostic>,
) -> ServedGateway {
    let generation = gateway.metadata.generation;
    let mut fragment = Fragment::of_gateway_api(SourceKind::Gateway, key);
    let object = fragment.object.clone();
    let mut report = |reason, message: String| {
        diagnostics.push(Diagnostic {
            object: object.clone(),
            reason,
            message,
        })
    };
    let listeners = &gateway.spec.listeners;
    let mut states = Vec::with_capacity(listeners.len());
    let mut served: Vec<Option<ServedListener>> = Vec::with_capacity(listeners.len());
    for (i, l) in listeners.iter().enumerate() {
        let field = format!("spec.listeners[{i}] ({:?})", l.name);
        let mut ls = ListenerState {
            name: l.name.clone(),
            ..ListenerState::default()
        };
        let checked = check_listener(l, opts);
        let (protocol, hostname, kinds) = match checked {
            Err((reason, message)) => {
                report(Reason::NotAccepted, format!("{field}: {message}"));
                ls.conditions = vec![
                    condition("Accepted", false, reason, message.clone(), generation),
                    condition("Programmed", false, "Invalid", message, generation),
                    condition("ResolvedRefs", true, "ResolvedRefs", "", generation),
                    condition("Conflicted", false, "NoConflicts", "", generation),
                ];
                states.push(ls);
                served.push(None);
                continue;
            }
            Ok(c) => c,
        };
        let (kinds, bad_kinds) = kinds;
        ls.supported_kinds = kinds
            .iter()
            .map(|k| RouteGroupKind {
                group: Some(GROUP.to_string()),
                kind: k.clone(),
            })
            .collect();
        let mut resolved = Ok(());
        if !bad_kinds.is_empty() {
            let message = format!(
                "route kinds {bad_kinds:?} are not served by a {} listener",
                l.protocol
            );
            report(
                Reason::NotAccepted,
                format!("{field}: spec.allowedRoutes.kinds: {message}"),
            );
            resolved = Err(("InvalidRouteKinds", message));
        }
        let mut client_auth = None;
        let mut certificate_failed = false;
        if protocol == Protocol::Https {
            let (auth, problem) = frontend_validation(state, key, gateway, l.port);
            if let Some((reason, message)) = problem {
                let field = format!("{field}: spec.tls.frontend");
                report(Reason::InvalidSecret, format!("{field}: {message}"));
                if auth.is_none() {
                    // No CA to check clients against: serving would let every client in.
                    let why = format!("no usable CA certificate: {message}");
                    ls.conditions = vec![
                        condition(
                            "Accepted",
                            false,
                            "NoValidCACertificate",
                            why.clone(),
                            generation,
                        ),
                        condition("Programmed", false, "Invalid", why, generation),
                        condition("ResolvedRefs", false, reason, message, generation),
                    ];
                    states.push(ls);
                    served.push(None);
                    continue;
                }
                resolved = resolved.and(Err((reason, message)));
            }
            client_auth = auth;
            match certificate(state, key, l) {
                Ok(checked) => {
                    fragment.tls.push(TlsClaim {
                        host: hostname.clone().unwrap_or(HostMatch::Any),
                        certificate: Some(checked.certificate.name.clone()),
                        entry: i,
                        listener: true,
                    });
                    fragment.certificates.push(Arc::new(checked));
                }
                Err((reason, message)) => {
                    report(
                        if reason == "RefNotPermitted" {
                            Reason::RefNotPermitted
                        } else {
                            Reason::InvalidSecret
                        },
                        format!("{field}: spec.tls.certificateRefs: {message}"),
                    );
                    resolved = resolved.and(Err((reason, message)));
                    certificate_failed = true;
                }
            }
        }
        ls.conditions = vec![condition("Accepted", true, "Accepted", "", generation)];
        match &resolved {
            Ok(()) => ls.conditions.push(condition(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "",
                generation,
            )),
            Err((reason, message)) => ls.conditions.push(condition(
                "ResolvedRefs",
                false,
                reason,
                message.clone(),
                generation,
            )),
        }
        states.push(ls);
        served.push(Some(ServedListener {
            index: i,
            port: l.port,
            protocol,
            hostname,
            namespaces: allowed_namespaces(l),
            kinds,
            client_auth,
        }));
        // A listener whose certificate is unusable serves nothing rather than another certificate.
        if certificate_failed {
            served[i] = None;
        }
    }
    // Two listeners on one port with one hostname: both are conflicted and serve nothing.
    for i in 0..served.len() {
        let conflicted = served[i].as_ref().is_some_and(|a| {
            served.iter().enumerate().any(|(j, b)| {
                j != i
                    && b.as_ref()
                        .is_some_and(|b| b.port == a.port && b.hostname == a.hostname)
            })
        });
        let ls = &mut states[i];
        if conflicted {
            report(
                Reason::NotAccepted,
                format!(
                    "spec.listeners[{i}] ({:?}): another listener has the same port and hostname",
                    ls.name
                ),
            );
            ls.conditions.push(condition(
                "Conflicted",
                true,
                "HostnameConflict",
                "another listener has the same port and hostname",
                generation,
            ));
        } else if !ls.conditions.iter().any(|c| c.type_ == "Conflicted") {
            ls.conditions.push(condition(
                "Conflicted",
                false,
                "NoConflicts",
                "",
                generation,
            ));
        }
    }
    for (i, ls) in states.iter_mut().enumerate() {
        if ls.conditions.iter().any(|c| c.type_ == "Programmed") {
            continue;
        }
        let conflicted = ls
            .conditions
            .iter()
            .any(|c| c.type_ == "Conflicted" && c.status);
        if conflicted {
            served[i] = None;
        }
        let programmed = served[i].is_some();
        ls.conditions.push(condition(
            "Programmed",
            programmed,
            if programmed { "Programmed" } else { "Invalid" },
            "",
            generation,
        ));
    }
    let valid = served.iter().filter(|s| s.is_some()).count();
    let all_valid = valid == listeners.len() && !listeners.is_empty();
    let accepted = if all_valid {
        condition("Accepted", true, "Accepted", "", generation)
    } else {
        condition(
            "Accepted",
            valid > 0,
            "ListenersNotValid",
            format!(
                "{} of {} listeners are not valid",
                listeners.len() - valid,
                listeners.len()
            ),
            generation,
        )
    };
    let programmed = condition(
        "Programmed",
        valid > 0,
        if valid > 0 { "Programmed" } else { "Invalid" },
        "",
        generation,
    );
    ServedGateway {
        key: key.clone(),
        created: gateway.metadata.creation_timestamp.clone(),
        listener_names: listeners.iter().map(|l| l.name.clone()).collect(),
        listener_ports: listeners.iter().map(|l| l.port).collect(),
        listeners: served,
        state: GatewayState {
            conditions: vec![accepted, programmed],
            listeners: states,
        },
        fragment: Arc::new(fragment),
    }
}

/// The client certificates HTTPS listeners on `port` ask for: the Gateway's
/// `spec.tls.frontend` for the port, else its default. With them, the first unusable
/// CA reference's reason and message; `(None, Some(_))` when none is usable.
fn frontend_validation(
    state: &ClusterState,
    key: &ObjectKey,
    gateway: &Gateway,
    port: i32,
) -> (Option<ClientAuth>, Option<(&'static str, String)>) {
    let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return (None, None);
    };
    let config = frontend
        .per_port
        .iter()
        .find(|p| p.port == port)
        .map_or(&frontend.default, |p| &p.tls);
    let Some(validation) = &config.validation else {
        return (None, None);
    };
    let mut pem = String::new();
    let mut problem = None;
    for (i, r) in validation.ca_certificate_refs.iter().enumerate() {
        let reference = CoreRef::from(r);
        let found = grants::core_reference(
            state,
            ("Gateway", &key.0),
            &reference,
            "ConfigMap",
            "InvalidCACertificateKind",
        )
        .and_then(|namespace| {
            let name = format!("{namespace}/{}", r.name);
            let config_map = state
                .config_maps
                .get(&(namespace, r.name.clone()))
                .ok_or_else(|| {
                    (
                        "InvalidCACertificateRef",
                        format!("ConfigMap {name} does not exist"),
                    )
                })?;
            secret::config_map_ca_bundle(&name, config_map)
                .map_err(|e| ("InvalidCACertificateRef", e))
        });
        match found {
            Ok(bundle) => pem.push_str(&bundle),
            Err((reason, message)) => {
                problem.get_or_insert((reason, format!("caCertificateRefs[{i}]: {message}")));
            }
        }
    }
    if validation.ca_certificate_refs.is_empty() {
        problem = Some((
            "InvalidCACertificateRef",
            "caCertificateRefs is empty".to_string(),
        ));
    }
    if pem.is_empty() {
        return (None, problem);
    }
    let verify = match validation.mode.as_deref() {
        Some("AllowInsecureFallback") => ClientVerify::OptionalNoCa,
        _ => ClientVerify::On,
    };
    let auth = ClientAuth {
        ca_pem: pem,
        verify,
        depth: FRONTEND_VERIFY_DEPTH,
        pass_certificate: false,
        error_page: None,
        match_subject: None,
    };
    (Some(auth), problem)
}

/// How many intermediate certificates may stand between a client's certificate and a
/// CA of `caCertificateRefs` (Gateway API leaves it to the implementation).
const FRONTEND_VERIFY_DEPTH: u32 = 3;

type Checked = (Protocol, Option<HostMatch>, (Vec<String>, Vec<String>));

/// The listener's protocol, hostname and route kinds (served, refused); or the reason
/// for its `Accepted: False` and a message.
fn check_listener(l: &Listener, opts: &GatewayOptions) -> Result<Checked, (&'static str, String)> {
    let protocol = match l.protocol.as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        "TLS" => Protocol::Tls,
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => {
            return Err((
                "UnsupportedProtocol",
                format!("protocol {other:?} is not served (HTTP, HTTPS, TLS, TCP and UDP are)"),
            ))
        }
    };
    let fixed = match protocol {
        Protocol::Http => Some((opts.http_port, "http")),
        Protocol::Https | Protocol::Tls => Some((opts.https_port, "https")),
        Protocol::Tcp | Protocol::Udp => None,
    };
    match fixed {
        Some((port, flag)) if l.port != port => {
            return Err((
                "PortUnavailable",
                format!(
                    "port {}: {} listeners are served on port {port} (--gateway-{flag}-port)",
                    l.port, l.protocol
                ),
            ));
        }
        None if !(1..=65535).contains(&l.port)
            || opts.reserved_ports.contains(&(l.port as u16)) =>
        {
            return Err((
                "PortUnavailable",
                format!(
                    "port {} is not a port Portico may open for {} (--reserved-ports)",
                    l.port, l.protocol
                ),
            ));
        }
        _ => {}
    }
    let mode = l
        .tls
        .as_ref()
        .and_then(|t| t.mode.as_deref())
        .unwrap_or("Terminate");
    match protocol {
        Protocol::Https if mode != "Terminate" => {
            return Err((
                "UnsupportedValue",
                format!("tls.mode {mode:?}: an HTTPS listener terminates TLS"),
            ))
        }
        Protocol::Tls if mode != "Passthrough" => {
            return Err((
                "UnsupportedValue",
                format!("tls.mode {mode:?}: a TLS listener passes TLS through (Terminate is not served yet)"),
            ))
        }
        _ => {}
    }
    let hostname = match l.hostname.as_deref().filter(|h| !h.is_empty()) {
        None => None,
        Some(h) => Some(
            HostMatch::gateway(h)
                .map_err(|e| ("UnsupportedValue", format!("hostname {h:?}: {}", e.reason)))?,
        ),
    };
    let (mut kinds, mut refused) = (Vec::new(), Vec::new());
    let served = protocol.route_kinds();
    match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
        None => kinds.extend(served.iter().map(|k| k.to_string())),
        Some(wanted) => {
            for k in wanted {
                let group_ok = k.group.as_deref().is_none_or(|g| g == GROUP);
                if group_ok && served.contains(&k.kind.as_str()) {
                    if !kinds.contains(&k.kind) {
                        kinds.push(k.kind.clone());
                    }
                } else {
                    refused.push(k.kind.clone());
                }
            }
        }
    }
    Ok((protocol, hostname, (kinds, refused)))
}

fn allowed_namespaces(l: &Listener) -> AllowedNamespaces {
    let from = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match from.and_then(|n| n.from.as_deref()) {
        Some("All") => AllowedNamespaces::All,
        Some("Selector") => {
            AllowedNamespaces::Selector(from.and_then(|n| n.selector.clone()).unwrap_or_default())
        }
        _ => AllowedNamespaces::Same,
    }
}

/// The listener's first certificate, checked.
fn certificate(
    state: &ClusterState,
    gateway: &ObjectKey,
    l: &Listener,
) -> Result<secret::CheckedCertificate, (&'static str, String)> {
    let refs = l
        .tls
        .as_ref()
        .map(|t| t.certificate_refs.as_slice())
        .unwrap_or_default();
    let Some(r) = refs.first() else {
        return Err((
            "InvalidCertificateRef",
            "an HTTPS listener needs a certificate".into(),
        ));
    };
    let reference = CoreRef::from(r);
    let namespace = grants::core_reference(
        state,
        ("Gateway", &gateway.0),
        &reference,
        "Secret",
        "InvalidCertificateRef",
    )?;
    let name = format!("{namespace}/{}", r.name);
    let secret = state.secrets.get(&(namespace, r.name.clone()));
    secret::tls_certificate_of(&name, secret.map(|s| &**s))
        .map_err(|(_, message)| ("InvalidCertificateRef", message))
}

/// Whether a label selector selects an object with `labels`.
pub(crate) fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_label && by_expression
}
