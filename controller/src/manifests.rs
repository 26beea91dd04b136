//! Reading Kubernetes objects out of YAML and JSON manifests: multi-document files and
//! `List` kinds, keeping only the kinds translation uses.

use portico_translate::KubeObject;
use serde_json::Value;
use std::sync::Arc;

/// Why one document of one file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {reason}")]
pub struct DocumentError {
    /// 0-based position of the document in its file.
    pub document: usize,
    pub reason: String,
}

/// Parses every document in `text`; good objects and per-document errors come back
/// side by side so one bad document never hides the others.
pub fn parse(text: &str) -> (Vec<KubeObject>, Vec<DocumentError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (document, d) in documents(text).documents.into_iter().enumerate() {
        objects.extend(d.objects);
        if let Some(reason) = d.error {
            errors.push(DocumentError { document, reason });
        }
    }
    (objects, errors)
}

/// One document of a file: the objects it holds, and why some or all could not be used.
#[derive(Debug, Default)]
pub struct Document {
    pub objects: Vec<KubeObject>,
    pub error: Option<String>,
}

/// The documents of a file, in order.
#[derive(Debug)]
pub struct Documents {
    pub documents: Vec<Document>,
    /// False after a syntax error: the erroneous document is the last one read, and
    /// what follows it in the file cannot be read.
    pub complete: bool,
}

pub fn documents(text: &str) -> Documents {
    let mut documents = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let value = match serde::Deserialize::deserialize(de)
            .map_err(|e: serde_yaml::Error| e.to_string())
            .and_then(yaml_to_json)
        {
            Ok(v) => v,
            Err(reason) => {
                documents.push(Document {
                    objects: Vec::new(),
                    error: Some(reason),
                });
                return Documents {
                    documents,
                    complete: false,
                };
            }
        };
        let mut document = Document::default();
        // A null document (an empty one, e.g. after a trailing `---`) holds nothing.
        if !value.is_null() {
            document.error = collect(value, &mut document.objects).err();
        }
        documents.push(document);
    }
    Documents {
        documents,
        complete: true,
    }
}

fn yaml_to_json(v: serde_yaml::Value) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("not representable as JSON: {e}"))
}

fn collect(value: Value, out: &mut Vec<KubeObject>) -> Result<(), String> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("missing kind")?
        .to_string();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or("missing apiVersion")?
        .to_string();
    if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
        let items = value
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut failures = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            if let Err(e) = collect(item, out) {
                failures.push(format!("items[{i}]: {e}"));
            }
        }
        return if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        };
    }
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let what = |e: serde_json::Error| format!("{kind} {name:?}: {e}");
    let object = match (api_version.as_str(), kind.as_str()) {
        ("networking.k8s.io/v1", "IngressClass") => {
            KubeObject::IngressClass(serde_json::from_value(value).map_err(what)?)
        }
        ("networking.k8s.io/v1", "Ingress") => KubeObject::Ingress(Arc::new(namespaced(
            serde_json::from_value(value).map_err(what)?,
        ))),
        ("v1", "Service") => KubeObject::Service(Arc::new(namespaced(
            serde_json::from_value(value).map_err(what)?,
        ))),
        ("discovery.k8s.io/v1", "EndpointSlice") => KubeObject::EndpointSlice(Arc::new(
            namespaced(serde_json::from_value(value).map_err(what)?),
        )),
        ("v1", "Secret") => KubeObject::Secret(Arc::new(namespaced(
            serde_json::from_value(value).map_err(what)?,
        ))),
        ("v1", "ConfigMap") => KubeObject::ConfigMap(Arc::new(namespaced(
            serde_json::from_value(value).map_err(what)?,
        ))),
        ("v1", "Namespace") => {
            KubeObject::Namespace(Arc::new(serde_json::from_value(value).map_err(what)?))
        }
        (GATEWAY_V1, "GatewayClass") => {
            KubeObject::GatewayClass(Arc::new(serde_json::from_value(value).map_err(what)?))
        }
        (GATEWAY_V1, "Gateway") => KubeObject::Gateway(Arc::new(namespaced(
            serde_json::from_value(value).map_err(what)?,
        ))),
        (GATEWAY_V1, "HTTPRoute") => KubeObject::HttpRoute(Arc::new(namespaced(
            serde_json::from_value(value).map_err(what)?,
        ))),
        (GATEWAY_V1, "GRPCRoute") => KubeObject::GrpcRoute(Arc::new(namespaced(
            serde_json::from_value(value).map_err(what)?,
        ))),
        (
            GATEWAY_V1 | GATEWAY_V1ALPHA2 | GATEWAY_V1ALPHA3,
            "TCPRoute" | "UDPRoute" | "TLSRoute",
        ) => {
            let mut route: portico_translate::gateway::types::L4Route =
                serde_json::from_value(value).map_err(what)?;
            route.kind = kind.clone();
            if route.metadata.namespace.as_deref().unwrap_or("").is_empty() {
                route.metadata.namespace = Some("default".into());
            }
            KubeObject::L4Route(Arc::new(route))
        }
        (GATEWAY_V1 | GATEWAY_V1BETA1, "ReferenceGrant") => KubeObject::ReferenceGrant(Arc::new(
            namespaced(serde_json::from_value(value).map_err(what)?),
        )),
        (_, "Ingress" | "IngressClass" | "EndpointSlice") => {
            return Err(format!(
                "{kind} {name:?}: apiVersion {api_version:?} is not supported"
            ));
        }
        _ => return Ok(()), // other kinds (Deployments, Pods...) are not ours to read
    };
    if name.is_empty() {
        return Err(format!("{kind}: metadata.name is missing"));
    }
    out.push(object);
    Ok(())
}

const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";
const GATEWAY_V1ALPHA2: &str = "gateway.networking.k8s.io/v1alpha2";
const GATEWAY_V1ALPHA3: &str = "gateway.networking.k8s.io/v1alpha3";

/// Gives namespaced objects without a namespace the `default` one, as kubectl would.
fn namespaced<K: kube::Resource>(mut o: K) -> K {
    let meta = o.meta_mut();
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some("default".into());
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\nspec:\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n";

    #[test]
    fn reads_multi_document_yaml_and_lists() {
        let text = format!(
            "{INGRESS}---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: web, namespace: shop}}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {{name: x}}\n---\n"
        );
        let (objects, errors) = parse(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 2);
        match &objects[0] {
            KubeObject::Ingress(i) => assert_eq!(i.metadata.namespace.as_deref(), Some("default")),
            other => panic!("expected an Ingress, got {other:?}"),
        }
        match &objects[1] {
            KubeObject::Service(s) => assert_eq!(s.metadata.namespace.as_deref(), Some("shop")),
            other => panic!("expected a Service, got {other:?}"),
        }
    }

    #[test]
    fn reads_json() {
        let (objects, errors) =
            parse(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}"#);
        assert!(errors.is_empty());
        assert_eq!(objects.len(), 1);
    }

    #[test]
    fn a_bad_document_is_reported_with_its_index_and_the_others_still_apply() {
        let text = format!(
            "{INGRESS}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: broken}}\nspec: {{rules: 7}}\n---\n{INGRESS}"
        );
        let (objects, errors) = parse(&text);
        assert_eq!(objects.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].document, 1);
        assert!(
            errors[0].reason.contains("Ingress \"broken\""),
            "{}",
            errors[0].reason
        );

        let (_, errors) = parse("kind: Ingress\n");
        assert_eq!(errors[0].reason, "missing apiVersion");
        let (_, errors) =
            parse("apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old}\n");
        assert!(errors[0].reason.contains("not supported"));
        let (_, errors) = parse("a: [unclosed\n");
        assert_eq!(errors.len(), 1);
    }
}
