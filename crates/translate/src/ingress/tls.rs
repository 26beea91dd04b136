//! The server-level TLS annotations: what a handshake for the Ingress's hosts offers. As in
//! ingress-nginx they belong to the host, not to a path, so the oldest Ingress of a host
//! that sets them decides (see `merge`).

use crate::annotations::{Annotations, InvalidAnnotation};
use crate::diagnostic::{Problem, Problems, Reason};

/// `ssl-ciphers`, checked with OpenSSL; `ssl-prefer-server-ciphers` is read for its
/// warning only, as the listener always prefers its own order.
pub(super) fn ciphers(a: &Annotations<'_>, problems: &mut Problems) -> Option<String> {
    if problems.take(a.bool("ssl-prefer-server-ciphers")) == Some(false) {
        problems.push(Problem::new(
            Reason::UnsupportedAnnotation,
            "annotation ssl-prefer-server-ciphers: \"false\" is not supported: the HTTPS listener always prefers its own cipher order, as ingress-nginx's does by default; ignored",
        ));
    }
    let (key, value) = a.get("ssl-ciphers")?;
    crate::secret::cipher_list(value)
        .map_err(|expected| {
            problems.push(
                InvalidAnnotation {
                    key,
                    value: value.to_string(),
                    expected,
                }
                .into(),
            )
        })
        .ok()
}
