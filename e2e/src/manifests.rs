//! Builders for the Kubernetes objects the e2e tests write, rendered as multi-document
//! YAML (each document in JSON syntax, which YAML accepts).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Every test Service exposes this port, named `http`.
pub const SERVICE_PORT: u16 = 80;

/// Renders documents as one multi-document YAML stream.
pub fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_json::to_string_pretty(d).expect("serialisable"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

pub fn ingress_class(name: &str, controller: &str, default: bool) -> Value {
    let mut class = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller},
    });
    if default {
        class["metadata"]["annotations"] =
            json!({"ingressclass.kubernetes.io/is-default-class": "true"});
    }
    class
}

/// A Service in `default` with port 80 (`http`), plus EndpointSlices putting `endpoints`
/// behind it (one slice per distinct port, as the port lives on the slice).
pub fn service_with_endpoints(name: &str, endpoints: &[SocketAddr]) -> Vec<Value> {
    let mut docs = vec![json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP"}]},
    })];
    let mut by_port: BTreeMap<u16, Vec<&SocketAddr>> = BTreeMap::new();
    for e in endpoints {
        by_port.entry(e.port()).or_default().push(e);
    }
    for (i, (port, addrs)) in by_port.into_iter().enumerate() {
        let family = if addrs[0].is_ipv4() { "IPv4" } else { "IPv6" };
        let eps: Vec<Value> = addrs
            .iter()
            .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
            .collect();
        docs.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-{i}"), "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
            "addressType": family,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": eps,
        }));
    }
    docs
}

/// `doc` moved to namespace `ns`.
pub fn in_namespace(mut doc: Value, ns: &str) -> Value {
    doc["metadata"]["namespace"] = json!(ns);
    doc
}

/// An Ingress in `default` of class `portico`, built rule by rule.
#[derive(Debug, Clone)]
pub struct IngressBuilder {
    value: Value,
}

pub fn ingress(name: &str) -> IngressBuilder {
    IngressBuilder {
        value: json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ingressClassName": "portico"},
        }),
    }
}

fn backend(service: &str) -> Value {
    json!({"service": {"name": service, "port": {"number": SERVICE_PORT}}})
}

impl IngressBuilder {
    pub fn class(mut self, class: Option<&str>) -> Self {
        match class {
            Some(c) => self.value["spec"]["ingressClassName"] = json!(c),
            None => {
                self.value["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("ingressClassName");
            }
        }
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.value["metadata"]["annotations"][key] = json!(value);
        self
    }

    /// Adds a path to the rule for `host` ("" for a rule without host).
    pub fn path(mut self, host: &str, path_type: &str, path: &str, service: &str) -> Self {
        let spec = &mut self.value["spec"];
        if spec.get("rules").is_none() {
            spec["rules"] = json!([]);
        }
        let rules = spec["rules"].as_array_mut().expect("rules");
        let wanted = (!host.is_empty()).then(|| json!(host));
        let index = match rules.iter().position(|r| r.get("host") == wanted.as_ref()) {
            Some(i) => i,
            None => {
                let mut rule = json!({"http": {"paths": []}});
                if let Some(h) = wanted {
                    rule["host"] = h;
                }
                rules.push(rule);
                rules.len() - 1
            }
        };
        rules[index]["http"]["paths"]
            .as_array_mut()
            .expect("paths")
            .push(json!({
                "path": path,
                "pathType": path_type,
                "backend": backend(service),
            }));
        self
    }

    /// Adds a `spec.tls` entry: `hosts` served with the certificate of Secret `secret`.
    pub fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        let spec = &mut self.value["spec"];
        if spec.get("tls").is_none() {
            spec["tls"] = json!([]);
        }
        spec["tls"]
            .as_array_mut()
            .expect("tls")
            .push(json!({"hosts": hosts, "secretName": secret}));
        self
    }

    pub fn default_backend(mut self, service: &str) -> Self {
        self.value["spec"]["defaultBackend"] = backend(service);
        self
    }

    pub fn build(self) -> Value {
        self.value
    }
}

/// A `kubernetes.io/tls` Secret in `default`, with the PEM as `stringData`.
/// A ConfigMap in `default` with these entries.
pub fn config_map(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": data})
}

pub fn tls_secret(name: &str, cert_pem: &str, key_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert_pem, "tls.key": key_pem},
    })
}

/// An Opaque Secret in `default` holding a CA bundle as `ca.crt`.
pub fn ca_secret(name: &str, ca_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "stringData": {"ca.crt": ca_pem},
    })
}
