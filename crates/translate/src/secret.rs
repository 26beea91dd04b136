//! Validating the TLS material Secrets hold, before any of it reaches a proxy: a
//! certificate chain that parses, a private key that parses and belongs to the leaf.
//! What fails here is reported and left out; its hosts get the default certificate.

use crate::diagnostic::Reason;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use openssl::asn1::Asn1Time;
use openssl::pkey::PKey;
use openssl::x509::X509;
use portico_model::Certificate;

pub(crate) const TLS_CERT_KEY: &str = "tls.crt";
pub(crate) const TLS_PRIVATE_KEY: &str = "tls.key";
pub(crate) const CA_CERT_KEY: &str = "ca.crt";

/// A usable certificate, with a warning when it is usable but wrong (expired).
#[derive(Debug, Clone)]
pub(crate) struct CheckedCertificate {
    pub certificate: Certificate,
    pub warning: Option<String>,
}

/// The bytes of `key`, from `data` or, as manifests written by hand often use, `stringData`.
pub(crate) fn value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(&v.0);
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes())
}

/// Checks a `kubernetes.io/tls` Secret; `name` is its `namespace/name`.
pub(crate) fn tls_certificate(name: &str, secret: &Secret) -> Result<CheckedCertificate, String> {
    let missing = |key: &str| format!("secret {name}: key {key:?} is missing");
    let chain_pem = value(secret, TLS_CERT_KEY).ok_or_else(|| missing(TLS_CERT_KEY))?;
    let key_pem = value(secret, TLS_PRIVATE_KEY).ok_or_else(|| missing(TLS_PRIVATE_KEY))?;
    let chain = X509::stack_from_pem(chain_pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("secret {name}: {TLS_CERT_KEY} does not hold a PEM certificate"))?;
    let key = PKey::private_key_from_pem(key_pem)
        .map_err(|_| format!("secret {name}: {TLS_PRIVATE_KEY} does not hold a PEM private key"))?;
    let leaf = &chain[0];
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(format!("secret {name}: the private key in {TLS_PRIVATE_KEY} does not match the certificate in {TLS_CERT_KEY}"));
    }
    let warning = Asn1Time::days_from_now(0)
        .ok()
        .filter(|now| leaf.not_after() < now.as_ref())
        .map(|_| format!("secret {name}: the certificate in {TLS_CERT_KEY} expired on {}; it is served anyway", leaf.not_after()));
    // Re-encoded from what parsed, so the proxy never sees text it cannot read.
    let mut chain_text = String::new();
    for cert in &chain {
        let pem = cert
            .to_pem()
            .map_err(|e| format!("secret {name}: {TLS_CERT_KEY}: {e}"))?;
        chain_text.push_str(&String::from_utf8_lossy(&pem));
    }
    let key_text = key
        .private_key_to_pem_pkcs8()
        .map_err(|e| format!("secret {name}: {TLS_PRIVATE_KEY}: {e}"))?;
    Ok(CheckedCertificate {
        certificate: Certificate {
            name: name.to_string(),
            chain_pem: chain_text,
            key_pem: String::from_utf8_lossy(&key_text).into_owned(),
        },
        warning,
    })
}

/// [`tls_certificate`] of a Secret that may not exist, with the reason to report either way.
pub(crate) fn tls_certificate_of(
    name: &str,
    secret: Option<&Secret>,
) -> Result<CheckedCertificate, (Reason, String)> {
    match secret {
        None => Err((
            Reason::SecretNotFound,
            format!("secret {name} does not exist"),
        )),
        Some(s) => tls_certificate(name, s).map_err(|e| (Reason::InvalidSecret, e)),
    }
}

/// The trusted CA certificates (PEM) of a Secret's `ca.crt`.
pub(crate) fn ca_bundle(name: &str, secret: &Secret) -> Result<String, String> {
    let pem = value(secret, CA_CERT_KEY)
        .ok_or_else(|| format!("secret {name}: key {CA_CERT_KEY:?} is missing"))?;
    certificates_pem(&format!("secret {name}"), pem)
}

/// The trusted CA certificates (PEM) of a ConfigMap's `ca.crt`, as Gateway API's
/// frontend validation names them.
pub(crate) fn config_map_ca_bundle(name: &str, config_map: &ConfigMap) -> Result<String, String> {
    let pem = config_map
        .data
        .as_ref()
        .and_then(|d| d.get(CA_CERT_KEY))
        .map(String::as_bytes)
        .or_else(|| {
            let binary = config_map.binary_data.as_ref()?;
            binary.get(CA_CERT_KEY).map(|b| b.0.as_slice())
        })
        .ok_or_else(|| format!("ConfigMap {name}: key {CA_CERT_KEY:?} is missing"))?;
    certificates_pem(&format!("ConfigMap {name}"), pem)
}

/// The certificates of `pem`, re-encoded; `what` names where they came from in errors.
fn certificates_pem(what: &str, pem: &[u8]) -> Result<String, String> {
    let certs = X509::stack_from_pem(pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{what}: {CA_CERT_KEY} does not hold a PEM certificate"))?;
    let mut text = String::new();
    for cert in &certs {
        text.push_str(&String::from_utf8_lossy(
            &cert
                .to_pem()
                .map_err(|e| format!("{what}: {CA_CERT_KEY}: {e}"))?,
        ));
    }
    Ok(text)
}

/// A TLS 1.2 cipher list (`ssl-ciphers`) that OpenSSL reads and that leaves at least one
/// cipher: the proxy applies it per handshake, where a list it cannot use would fail every
/// handshake of the host.
/// The error says what was expected.
pub(crate) fn cipher_list(v: &str) -> Result<String, &'static str> {
    let v = v.trim();
    if v.is_empty() || v.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("a cipher list in OpenSSL's syntax, without spaces");
    }
    const UNKNOWN: &str = "a cipher list naming at least one TLS 1.2 cipher OpenSSL knows";
    let mut ctx =
        openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::tls()).map_err(|_| UNKNOWN)?;
    ctx.set_cipher_list(v).map_err(|_| UNKNOWN)?;
    Ok(v.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::X509NameBuilder;

    /// A self-signed certificate for `cn`, valid from `from_days` to `to_days` relative to now.
    pub fn self_signed(cn: &str, from_days: i64, to_days: i64) -> (String, String) {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        b.set_not_before(&Asn1Time::from_unix(now + from_days * 86400).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + to_days * 86400).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns(cn)
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        (
            String::from_utf8(cert.to_pem().unwrap()).unwrap(),
            String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        )
    }

    pub fn tls_secret(cert: &str, key: &str) -> Secret {
        let mut secret = Secret {
            type_: Some("kubernetes.io/tls".into()),
            ..Secret::default()
        };
        secret.data = Some(
            [
                (
                    TLS_CERT_KEY.to_string(),
                    ByteString(cert.as_bytes().to_vec()),
                ),
                (
                    TLS_PRIVATE_KEY.to_string(),
                    ByteString(key.as_bytes().to_vec()),
                ),
            ]
            .into(),
        );
        secret
    }

    #[test]
    fn accepts_a_matching_pair_and_warns_when_expired() {
        let (cert, key) = self_signed("a.example.com", -1, 30);
        let ok = tls_certificate("ns/a", &tls_secret(&cert, &key)).unwrap();
        assert_eq!(ok.certificate.name, "ns/a");
        assert!(ok.certificate.chain_pem.contains("BEGIN CERTIFICATE") && ok.warning.is_none());

        let (cert, key) = self_signed("old.example.com", -30, -1);
        let expired = tls_certificate("ns/old", &tls_secret(&cert, &key)).unwrap();
        assert!(expired.warning.unwrap().contains("expired"));
    }

    #[test]
    fn names_the_secret_and_what_is_wrong() {
        let (cert, key) = self_signed("a.example.com", -1, 30);
        let (_, other_key) = self_signed("b.example.com", -1, 30);
        let mut no_key = tls_secret(&cert, &key);
        no_key.data.as_mut().unwrap().remove(TLS_PRIVATE_KEY);
        assert_eq!(
            tls_certificate("ns/s", &no_key).unwrap_err(),
            "secret ns/s: key \"tls.key\" is missing"
        );
        let garbage = tls_secret("not pem", &key);
        assert!(tls_certificate("ns/s", &garbage)
            .unwrap_err()
            .contains("tls.crt does not hold a PEM certificate"));
        let bad_key = tls_secret(
            &cert,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        assert!(tls_certificate("ns/s", &bad_key)
            .unwrap_err()
            .contains("tls.key does not hold a PEM private key"));
        let mismatch = tls_secret(&cert, &other_key);
        assert!(tls_certificate("ns/s", &mismatch)
            .unwrap_err()
            .contains("does not match"));
    }

    #[test]
    fn reads_string_data_and_ca_bundles() {
        let (cert, key) = self_signed("a.example.com", -1, 30);
        let secret = Secret {
            string_data: Some(
                [
                    (TLS_CERT_KEY.to_string(), cert.clone()),
                    (TLS_PRIVATE_KEY.to_string(), key),
                ]
                .into(),
            ),
            ..Secret::default()
        };
        assert!(tls_certificate("ns/s", &secret).is_ok());
        let ca = Secret {
            string_data: Some([(CA_CERT_KEY.to_string(), cert)].into()),
            ..Secret::default()
        };
        assert!(ca_bundle("ns/ca", &ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        assert!(ca_bundle("ns/ca", &Secret::default())
            .unwrap_err()
            .contains("\"ca.crt\" is missing"));
    }
}
