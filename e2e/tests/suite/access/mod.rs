//! Access control (`docs/annotations.md`, "Access control").

mod client_certificates;
mod credentials;
mod external;
mod jwt;

use portico_e2e::manifests::ingress;
use serde_json::{json, Value};

pub(super) fn site(name: &str, annotations: &[(&str, &str)]) -> Value {
    let mut ing = ingress(name).path(&format!("{name}.test"), "Prefix", "/", "web");
    for (k, v) in annotations {
        ing = ing.annotation(k, v);
    }
    ing.build()
}

pub(super) fn opaque_secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": "default"}, "stringData": data})
}

pub(super) fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        openssl::base64::encode_block(format!("{user}:{password}").as_bytes())
    )
}
