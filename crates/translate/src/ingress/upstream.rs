//! How an Ingress's endpoints are reached: `backend-protocol` and, for the TLS protocols,
//! `proxy-ssl-verify`, `-server-name`, `-name` and `-secret`.

use super::fragment::ObjectReads;
use crate::annotations::Annotations;
use crate::diagnostic::{Problem, Problems, Reason};
use crate::secret;
use portico_model::Upstream;

/// The upstream settings of an Ingress's backends.
pub(super) struct UpstreamPolicy {
    pub upstream: Upstream,
    /// Verify (or send SNI) with each Service's cluster DNS name, as no name was given.
    pub server_name_from_service: bool,
}

/// An unknown protocol or a bad TLS setting is reported and its default kept; a CA
/// bundle that cannot be read trusts nothing, so verification fails closed.
pub(super) fn upstream(
    a: &Annotations<'_>,
    reads: &mut ObjectReads<'_>,
    problems: &mut Problems,
) -> UpstreamPolicy {
    let protocol = problems.take(a.backend_protocol()).unwrap_or_default();
    let mut upstream = Upstream {
        protocol,
        ..Upstream::default()
    };
    match a.get("proxy-http-version") {
        None => {}
        Some((_, v)) if v.trim() == "1.1" => {}
        Some((_, v)) if v.trim() == "1.0" && !protocol.is_http2() => upstream.http10 = true,
        Some((key, v)) => problems.push(Problem::invalid(format!(
            "annotation {key}: value {v:?} is not \"1.0\" or \"1.1\" for a {} backend; HTTP/1.1 is used",
            protocol.as_str()
        ))),
    }
    match a.get("connection-proxy-header") {
        None => {}
        Some((_, v)) if v.trim().eq_ignore_ascii_case("keep-alive") => {}
        Some((_, v)) if v.trim().eq_ignore_ascii_case("close") && !protocol.is_http2() => {
            upstream.close_connections = true
        }
        Some((key, v)) => problems.push(Problem::invalid(format!(
            "annotation {key}: value {v:?} is not \"keep-alive\" or \"close\" for a {} backend; connections are kept alive",
            protocol.as_str()
        ))),
    }
    let mut server_name_from_service = false;
    if protocol.uses_tls() {
        upstream.verify = problems.take(a.on_off("proxy-ssl-verify")).unwrap_or(false);
        let send_sni = problems
            .take(a.on_off("proxy-ssl-server-name"))
            .unwrap_or(false);
        upstream.server_name = problems.take(a.server_name("proxy-ssl-name"));
        if let Some(object_ref) = problems.take(a.object_ref("proxy-ssl-secret", reads.namespace)) {
            upstream.ca_pem = Some(ca_bundle(object_ref, reads, problems));
        }
        // Verification needs a name; the Service's cluster DNS name is the one its certificate carries.
        server_name_from_service = upstream.server_name.is_none() && (upstream.verify || send_sni);
    }
    UpstreamPolicy {
        upstream,
        server_name_from_service,
    }
}

/// The CA bundle of `proxy-ssl-secret`. A Secret that cannot be used yields a bundle
/// that trusts nothing, so verification fails closed rather than trusting everyone.
fn ca_bundle(
    (namespace, name): (String, String),
    reads: &mut ObjectReads<'_>,
    problems: &mut Problems,
) -> String {
    if namespace != reads.namespace {
        let msg =
            format!("annotation proxy-ssl-secret: secret {namespace}/{name} is in another namespace; only {} is read", reads.namespace);
        problems.push(Problem::invalid(msg));
        return String::new();
    }
    match reads.secret(&name) {
        None => {
            problems.push(Problem::new(
                Reason::SecretNotFound,
                format!("annotation proxy-ssl-secret: secret {namespace}/{name} does not exist"),
            ));
            String::new()
        }
        Some(s) => secret::ca_bundle(&format!("{namespace}/{name}"), &s).unwrap_or_else(|e| {
            problems.push(Problem::new(
                Reason::InvalidSecret,
                format!("annotation proxy-ssl-secret: {e}"),
            ));
            String::new()
        }),
    }
}
