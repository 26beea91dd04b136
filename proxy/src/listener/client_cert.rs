//! Client certificates (`auth-tls-*`). A host's handshake asks for a certificate, which is
//! verified against the host's CA bundle when the handshake completes; each request to the
//! host then checks what its connection proved, against the host the request names.
//!
//! The handshake never fails over a certificate: as in nginx, a missing or bad one is
//! answered at the HTTP level (400, or a redirect to `auth-tls-error-page`), so that the
//! client sees why. A request whose host asks for other certificates than its connection's
//! SNI did gets 421, so that one host's handshake cannot admit requests to another.

use http::HeaderValue;
use openssl::nid::Nid;
use openssl::ssl::{SslRef, SslVerifyMode};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509NameRef, X509Ref, X509StoreContext, X509};
use portico_model::{ClientAuth, ClientVerify};
use std::sync::Arc;

/// A host's `ClientAuth`, ready for handshakes.
pub struct ClientCertificates {
    source: ClientAuth,
    store: X509Store,
    /// The CAs' subjects, sent in the CertificateRequest so that clients can pick a certificate.
    ca_names: Vec<openssl::x509::X509Name>,
    error_page: Option<HeaderValue>,
    match_subject: Option<regex::Regex>,
}

impl std::fmt::Debug for ClientCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificates")
            .field("verify", &self.source.verify)
            .finish_non_exhaustive()
    }
}

impl ClientCertificates {
    pub fn compile(source: &ClientAuth) -> Result<Self, String> {
        let cas = X509::stack_from_pem(source.ca_pem.as_bytes())
            .map_err(|e| format!("CA bundle does not parse: {e}"))?;
        if cas.is_empty() {
            return Err("CA bundle holds no certificate".into());
        }
        let openssl_err = |e: openssl::error::ErrorStack| format!("CA bundle: {e}");
        let mut store = X509StoreBuilder::new().map_err(openssl_err)?;
        let mut ca_names = Vec::with_capacity(cas.len());
        for ca in cas {
            ca_names.push(ca.subject_name().to_owned().map_err(openssl_err)?);
            store.add_cert(ca).map_err(openssl_err)?;
        }
        let mut param = X509VerifyParam::new().map_err(openssl_err)?;
        param.set_depth(i32::try_from(source.depth).unwrap_or(i32::MAX));
        store.set_param(&param).map_err(openssl_err)?;
        let error_page = match source.error_page.as_deref() {
            None => None,
            Some(p) => Some(
                HeaderValue::from_str(p)
                    .map_err(|_| format!("error page {p:?} is not a header value"))?,
            ),
        };
        let match_subject = match source.match_subject.as_deref() {
            None => None,
            Some(p) => Some(
                portico_model::pattern::value_regex(p)
                    .map_err(|e| format!("auth-tls-match-cn {p:?}: {e}"))?,
            ),
        };
        Ok(ClientCertificates {
            source: source.clone(),
            store: store.build(),
            ca_names,
            error_page,
            match_subject,
        })
    }

    /// Makes the handshake ask for a certificate. Verification waits for [`Self::inspect`].
    pub fn request(&self, ssl: &mut SslRef) {
        ssl.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
        // The list is handed over with each handshake, so it is copied for each.
        if let Ok(mut names) = Stack::new() {
            for owned in self
                .ca_names
                .iter()
                .filter_map(|name| X509NameRef::to_owned(name).ok())
            {
                let _ = names.push(owned);
            }
            ssl.set_client_ca_list(names);
        }
    }

    /// What a completed handshake proved. The certificate is verified here, against this
    /// policy, even on a resumed session: the session may have been made for another host.
    pub fn inspect(self: &Arc<Self>, ssl: &SslRef) -> ConnectionCertificate {
        let presented = ssl.peer_certificate().map(|leaf| {
            let verified = self.verify(&leaf, ssl);
            PresentedCertificate {
                subject: distinguished_name(leaf.subject_name()),
                issuer: distinguished_name(leaf.issuer_name()),
                pem: leaf
                    .to_pem()
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_default(),
                verified,
            }
        });
        ConnectionCertificate {
            policy: Arc::clone(self),
            presented,
        }
    }

    fn verify(&self, leaf: &X509Ref, ssl: &SslRef) -> Result<(), String> {
        let failed = |e: openssl::error::ErrorStack| e.to_string();
        let mut chain = Stack::new().map_err(failed)?;
        for c in ssl.peer_cert_chain().into_iter().flatten() {
            chain.push(c.to_owned()).map_err(failed)?;
        }
        let mut context = X509StoreContext::new().map_err(failed)?;
        context
            .init(&self.store, leaf, &chain, |c| {
                Ok(if c.verify_cert()? {
                    Ok(())
                } else {
                    Err(c.error().error_string().to_string())
                })
            })
            .map_err(failed)?
    }

    /// Whether two compiled policies ask for the same thing (after a snapshot, the same
    /// host's policy is a new value).
    fn same_as(self: &Arc<Self>, other: &Arc<Self>) -> bool {
        Arc::ptr_eq(self, other) || self.source == other.source
    }

    /// Checks a request to a host with this policy: `connection` is what its connection's
    /// handshake proved, `None` for plain HTTP or a handshake that asked for nothing.
    pub fn check(
        self: &Arc<Self>,
        tls: bool,
        connection: Option<&ConnectionCertificate>,
    ) -> Result<UpstreamHeaders, Refused> {
        let presented = match connection {
            Some(c) if c.policy.same_as(self) => c.presented.as_ref(),
            // Plain HTTP proved nothing: no certificate.
            None if !tls => None,
            _ => return Err(Refused::Misdirected),
        };
        let verify = self.source.verify;
        let status = match presented {
            None if verify == ClientVerify::On => return Err(self.refused()),
            None => Verification::None,
            Some(p) => match (&p.verified, verify) {
                (Ok(()), _) => Verification::Success,
                (Err(why), ClientVerify::OptionalNoCa) => Verification::Failed(why),
                (Err(why), _) => {
                    tracing::debug!(why, subject = p.subject, "client certificate refused");
                    return Err(self.refused());
                }
            },
        };
        if let (Some(pattern), Some(p)) = (&self.match_subject, presented) {
            if matches!(status, Verification::Success) && !pattern.is_match(&p.subject) {
                return Err(Refused::Forbidden);
            }
        }
        Ok(UpstreamHeaders::new(
            &status,
            presented,
            self.source.pass_certificate,
        ))
    }

    fn refused(&self) -> Refused {
        match &self.error_page {
            Some(page) => Refused::Redirect(page.clone()),
            None => Refused::BadCertificate,
        }
    }
}

/// What a connection's handshake proved, kept in its TLS digest.
#[derive(Debug)]
pub struct ConnectionCertificate {
    /// The policy of the SNI host the certificate was asked for and verified against.
    policy: Arc<ClientCertificates>,
    presented: Option<PresentedCertificate>,
}

#[derive(Debug)]
struct PresentedCertificate {
    subject: String,
    issuer: String,
    pem: String,
    verified: Result<(), String>,
}

enum Verification<'a> {
    Success,
    Failed(&'a str),
    None,
}

/// Why a request was refused, and so how it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No certificate, or one that does not verify: 400.
    BadCertificate,
    /// The same, with `auth-tls-error-page`: 302 there.
    Redirect(HeaderValue),
    /// The certificate's subject does not match `auth-tls-match-cn`: 403.
    Forbidden,
    /// The connection's handshake was for a host that asks for other certificates: 421.
    Misdirected,
}

/// The `ssl-client-*` headers the upstream gets, as ingress-nginx sends them. Each replaces
/// what the client sent; `None` removes it, so that a client cannot supply its own.
pub struct UpstreamHeaders(pub [(http::HeaderName, Option<HeaderValue>); 4]);

impl UpstreamHeaders {
    fn new(
        status: &Verification<'_>,
        presented: Option<&PresentedCertificate>,
        pass_certificate: bool,
    ) -> Self {
        let verify = match status {
            Verification::Success => HeaderValue::from_static("SUCCESS"),
            Verification::None => HeaderValue::from_static("NONE"),
            Verification::Failed(why) => HeaderValue::try_from(format!("FAILED:{why}"))
                .unwrap_or_else(|_| HeaderValue::from_static("FAILED")),
        };
        let value = |s: &str| HeaderValue::try_from(s).ok().filter(|_| !s.is_empty());
        let cert = presented
            .filter(|_| pass_certificate)
            .and_then(|p| value(&escaped_pem(&p.pem)));
        UpstreamHeaders([
            (
                http::HeaderName::from_static("ssl-client-verify"),
                Some(verify),
            ),
            (
                http::HeaderName::from_static("ssl-client-subject-dn"),
                presented.and_then(|p| value(&p.subject)),
            ),
            (
                http::HeaderName::from_static("ssl-client-issuer-dn"),
                presented.and_then(|p| value(&p.issuer)),
            ),
            (http::HeaderName::from_static("ssl-client-cert"), cert),
        ])
    }
}

/// nginx's `$ssl_client_escaped_cert`: the PEM, URL-encoded.
fn escaped_pem(pem: &str) -> String {
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(pem, COMPONENT).to_string()
}

/// A name in RFC 2253's form, as nginx's `$ssl_client_s_dn`: most significant last,
/// `CN=alice,O=Example`. Control characters are dropped so that it fits in a header.
fn distinguished_name(name: &X509NameRef) -> String {
    let mut parts: Vec<String> = Vec::new();
    for entry in name.entries() {
        let nid: Nid = entry.object().nid();
        let key = nid.short_name().unwrap_or("UNDEF");
        let value = entry.data().to_string().unwrap_or_default();
        let mut escaped = String::with_capacity(value.len());
        for (i, c) in value.chars().enumerate() {
            if c.is_control() {
                continue;
            }
            if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                || (i == 0 && matches!(c, '#' | ' '))
            {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        parts.push(format!("{key}={escaped}"));
    }
    parts.reverse();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::x509::X509NameBuilder;

    #[test]
    fn names_read_most_significant_last_with_specials_escaped() {
        let mut b = X509NameBuilder::new().unwrap();
        b.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Example, Inc")
            .unwrap();
        b.append_entry_by_nid(Nid::COMMONNAME, "alice").unwrap();
        assert_eq!(distinguished_name(&b.build()), "CN=alice,O=Example\\, Inc");
    }

    #[test]
    fn the_certificate_is_escaped_as_a_url_component() {
        assert_eq!(
            escaped_pem("-----BEGIN CERT-----\nab+/=\n"),
            "-----BEGIN%20CERT-----%0Aab%2B%2F%3D%0A"
        );
    }

    #[test]
    fn a_bundle_without_certificates_or_a_bad_pattern_does_not_compile() {
        let auth = |ca: &str, pattern: Option<&str>| ClientAuth {
            ca_pem: ca.into(),
            verify: ClientVerify::On,
            depth: 1,
            pass_certificate: false,
            error_page: None,
            match_subject: pattern.map(str::to_string),
        };
        assert!(ClientCertificates::compile(&auth("not pem", None))
            .unwrap_err()
            .contains("CA bundle"));
        let ca = crate::listener::tls::ServedCertificate::self_signed()
            .unwrap()
            .chain_pem();
        assert!(ClientCertificates::compile(&auth(&ca, None)).is_ok());
        assert!(ClientCertificates::compile(&auth(&ca, Some("CN=(")))
            .unwrap_err()
            .contains("auth-tls-match-cn"));
    }

    #[test]
    fn plain_http_is_no_certificate_and_another_hosts_handshake_is_misdirected() {
        let ca = crate::listener::tls::ServedCertificate::self_signed()
            .unwrap()
            .chain_pem();
        let policy = |verify, page: Option<&str>| {
            Arc::new(
                ClientCertificates::compile(&ClientAuth {
                    ca_pem: ca.clone(),
                    verify,
                    depth: 1,
                    pass_certificate: false,
                    error_page: page.map(str::to_string),
                    match_subject: None,
                })
                .unwrap(),
            )
        };
        let required = policy(ClientVerify::On, None);
        assert_eq!(
            required.check(false, None).err(),
            Some(Refused::BadCertificate)
        );
        assert_eq!(required.check(true, None).err(), Some(Refused::Misdirected));
        let redirecting = policy(ClientVerify::On, Some("https://login.test/cert"));
        assert!(matches!(
            redirecting.check(false, None),
            Err(Refused::Redirect(_))
        ));
        let other = ConnectionCertificate {
            policy: policy(ClientVerify::Optional, None),
            presented: None,
        };
        assert_eq!(
            required.check(true, Some(&other)).err(),
            Some(Refused::Misdirected)
        );
        let same = ConnectionCertificate {
            policy: policy(ClientVerify::On, None),
            presented: None,
        };
        assert_eq!(
            required.check(true, Some(&same)).err(),
            Some(Refused::BadCertificate),
            "an equal policy is the same host's"
        );
        let optional = policy(ClientVerify::Optional, None);
        let headers = optional
            .check(false, None)
            .expect("optional admits without a certificate");
        assert_eq!(
            headers.0[0].1.as_ref().map(|v| v.as_bytes()),
            Some(&b"NONE"[..])
        );
        assert!(
            headers.0[1..].iter().all(|(_, v)| v.is_none()),
            "a client's own ssl-client-* headers are removed"
        );
    }
}
