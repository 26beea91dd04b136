//! TLS termination: which certificate a handshake gets. The certificate is chosen per
//! handshake from the SNI name against the serving snapshot, so a rotated Secret is
//! presented by the next handshake while open connections keep what they negotiated.

use crate::config::store::SnapshotStore;
use crate::routing::router::HostTable;
use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::ssl::{
    ClientHelloResponse, NameType, SslOptions, SslSessionCacheMode, SslVersion,
};
use portico_model::{Certificate, Snapshot, TlsVersion};
use std::collections::HashMap;
use std::sync::Arc;

/// A parsed certificate chain (leaf first) and its key, ready to hand to a handshake.
pub struct ServedCertificate {
    pub name: String,
    chain: Vec<X509>,
    key: PKey<Private>,
}

#[derive(Debug, thiserror::Error)]
#[error("certificate {name:?}: {what}")]
pub struct CertificateError {
    pub name: String,
    pub what: String,
}

impl ServedCertificate {
    pub fn parse(c: &Certificate) -> Result<Self, CertificateError> {
        let err = |what: &str| CertificateError {
            name: c.name.clone(),
            what: what.to_string(),
        };
        let chain = X509::stack_from_pem(c.chain_pem.as_bytes())
            .map_err(|e| err(&format!("chain does not parse: {e}")))?;
        if chain.is_empty() {
            return Err(err("chain holds no certificate"));
        }
        let key = PKey::private_key_from_pem(c.key_pem.as_bytes())
            .map_err(|e| err(&format!("key does not parse: {e}")))?;
        if !chain[0]
            .public_key()
            .map(|p| p.public_eq(&key))
            .unwrap_or(false)
        {
            return Err(err("key does not match the leaf certificate"));
        }
        Ok(ServedCertificate {
            name: c.name.clone(),
            chain,
            key,
        })
    }

    /// A self-signed certificate for when no default certificate is configured, as
    /// ingress-nginx's "Fake Certificate": clients see an untrusted certificate, not a failed handshake.
    pub fn self_signed() -> Result<Self, openssl::error::ErrorStack> {
        const CN: &str = "Portico Default Certificate";
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Portico")?;
        name.append_entry_by_nid(Nid::COMMONNAME, CN)?;
        let name = name.build();
        let mut b = X509::builder()?;
        b.set_version(2)?;
        let mut serial = BigNum::new()?;
        serial.rand(127, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
        let serial = serial.to_asn1_integer()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
        b.set_not_after(&*Asn1Time::days_from_now(365)?)?;
        b.append_extension(BasicConstraints::new().build()?)?;
        let san = SubjectAlternativeName::new()
            .dns("ingress.local")
            .build(&b.x509v3_context(None, None))?;
        b.append_extension(san)?;
        b.sign(&key, MessageDigest::sha256())?;
        Ok(ServedCertificate {
            name: CN.to_string(),
            chain: vec![b.build()],
            key,
        })
    }

    /// The DNS names of the leaf certificate (its common name when it has none).
    pub fn names(&self) -> Vec<String> {
        let leaf = &self.chain[0];
        let sans: Vec<String> = leaf
            .subject_alt_names()
            .map(|n| {
                n.iter()
                    .filter_map(|g| g.dnsname().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !sans.is_empty() {
            return sans;
        }
        leaf.subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .filter_map(|e| e.data().to_string().ok())
            .map(|s| s.to_string())
            .collect()
    }

    /// When the leaf certificate expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> Option<i64> {
        let epoch = Asn1Time::from_unix(0).ok()?;
        let diff = epoch.diff(self.chain[0].not_after()).ok()?;
        Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
    }

    #[cfg(test)]
    pub(crate) fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| String::from_utf8(c.to_pem().unwrap()).unwrap())
            .collect()
    }

    fn install(&self, ssl: &mut TlsRef) -> Result<(), openssl::error::ErrorStack> {
        ext::ssl_use_certificate(ssl, &self.chain[0])?;
        ext::ssl_use_private_key(ssl, &self.key)?;
        for intermediate in &self.chain[1..] {
            ext::ssl_add_chain_cert(ssl, intermediate)?;
        }
        Ok(())
    }
}

/// SNI name → certificate, compiled with each snapshot.
#[derive(Default)]
pub struct CertificateTable {
    hosts: HostTable,
    certificates: Vec<Arc<ServedCertificate>>,
    default: Option<usize>,
}

impl CertificateTable {
    /// Parses the snapshot's certificates, reusing those of `previous` whose PEM is unchanged.
    pub fn compile(
        snapshot: &Snapshot,
        previous: Option<(&Snapshot, &CertificateTable)>,
    ) -> Result<Self, CertificateError> {
        let reusable: HashMap<&str, (&Certificate, &Arc<ServedCertificate>)> = previous
            .map(|(snap, table)| {
                snap.certificates
                    .iter()
                    .zip(&table.certificates)
                    .map(|(c, served)| (c.name.as_str(), (c, served)))
                    .collect()
            })
            .unwrap_or_default();
        let mut certificates = Vec::with_capacity(snapshot.certificates.len());
        let mut index = HashMap::with_capacity(snapshot.certificates.len());
        for c in &snapshot.certificates {
            let served = match reusable.get(c.name.as_str()) {
                Some((old, served)) if *old == c => Arc::clone(served),
                _ => Arc::new(ServedCertificate::parse(c)?),
            };
            index.insert(c.name.as_str(), certificates.len());
            certificates.push(served);
        }
        let mut hosts = HostTable::default();
        for t in &snapshot.tls_hosts {
            hosts.insert(&t.host, index[t.certificate.as_str()]);
        }
        let default = snapshot
            .tls
            .default_certificate
            .as_deref()
            .map(|n| index[n]);
        Ok(CertificateTable {
            hosts,
            certificates,
            default,
        })
    }

    /// Every certificate, in the order of the snapshot's.
    pub fn served(&self) -> &[Arc<ServedCertificate>] {
        &self.certificates
    }

    /// The certificate for an SNI name (or none), `None` meaning the proxy's own fallback.
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<ServedCertificate>> {
        let i = sni
            .and_then(|name| self.hosts.lookup(name))
            .or(self.default)?;
        self.certificates.get(i)
    }
}

/// Pingora's certificate callback, reading the serving snapshot.
pub struct SniCertificates {
    pub store: Arc<SnapshotStore>,
    pub fallback: Arc<ServedCertificate>,
}

#[async_trait]
impl TlsAccept for SniCertificates {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let snapshot = self.store.load();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
        let chosen = snapshot
            .as_ref()
            .and_then(|s| s.certificates().lookup(sni.as_deref()))
            .unwrap_or(&self.fallback);
        self.store.metrics().tls_client_hellos.inc();
        if let Err(e) = chosen.install(ssl) {
            tracing::warn!(certificate = %chosen.name, sni = ?sni, error = %e, "could not use certificate for handshake");
        }
        // OpenSSL picks a TLS 1.2 cipher after this callback (a TLS 1.3 suite before it, which
        // is why, as with nginx's ssl_ciphers, the list concerns TLS 1.2 only).
        if let Some(ciphers) = snapshot
            .as_ref()
            .and_then(|s| s.ciphers_for_sni(sni.as_deref()))
        {
            if let Err(e) = ssl.set_cipher_list(ciphers) {
                tracing::warn!(sni = ?sni, ciphers, error = %e, "could not use cipher list for handshake; the listener's stays");
            }
        }
        if let Some(client_auth) = snapshot
            .as_ref()
            .zip(sni.as_deref())
            .and_then(|(s, sni)| s.client_auth_for_sni(sni))
        {
            client_auth.request(ssl);
        }
    }

    /// Keeps what a host with client certificates was shown, for its requests to check.
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.store.metrics().tls_handshake(ssl.version_str());
        let snapshot = self.store.load()?;
        let client_auth = snapshot.client_auth_for_sni(ssl.servername(NameType::HOST_NAME)?)?;
        Some(Arc::new(client_auth.inspect(ssl)))
    }
}

/// The HTTPS listener's settings: TLS 1.2 and 1.3 with Mozilla's intermediate cipher
/// list in the server's order of preference, ALPN `h2` (when `http2`) then `http/1.1`,
/// server-side session cache and tickets for resumption. The snapshot narrows the versions
/// per handshake (`ssl-protocols`) and replaces the cipher list (`ssl-ciphers`).
pub fn listener_settings(callbacks: SniCertificates, http2: bool) -> pingora::Result<TlsSettings> {
    let store = callbacks.store.clone();
    let mut settings = TlsSettings::with_callbacks(Box::new(callbacks))?;
    // ingress-nginx's `ssl_prefer_server_ciphers on` (docs/design/0020).
    settings.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    // Versions are negotiated before the certificate callback: they are narrowed here.
    settings.set_client_hello_callback(move |ssl, _alert| {
        let versions = store.load().map(|s| s.tls_versions()).unwrap_or_default();
        let version = |v| match v {
            TlsVersion::Tls12 => SslVersion::TLS1_2,
            TlsVersion::Tls13 => SslVersion::TLS1_3,
        };
        ssl.set_min_proto_version(Some(version(versions.min)))?;
        ssl.set_max_proto_version(Some(version(versions.max)))?;
        Ok(ClientHelloResponse::SUCCESS)
    });
    if http2 {
        settings.enable_h2();
    }
    let conf_err = |e| {
        pingora::Error::because(
            pingora::ErrorType::InternalError,
            "configuring TLS listener",
            e,
        )
    };
    settings
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(conf_err)?;
    settings
        .set_max_proto_version(Some(SslVersion::TLS1_3))
        .map_err(conf_err)?;
    settings.set_session_cache_mode(SslSessionCacheMode::SERVER);
    settings
        .set_session_id_context(b"portico")
        .map_err(conf_err)?;
    // Accepting the SNI name keeps it in the session, so that a resumed TLS 1.2 handshake
    // still names its host (without this, OpenSSL reports none), as client certificates need.
    settings.set_servername_callback(|_, _| Ok(()));
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::TlsHost;

    fn pem(cert: &ServedCertificate, name: &str) -> Certificate {
        Certificate {
            name: name.into(),
            chain_pem: String::from_utf8(cert.chain[0].to_pem().unwrap()).unwrap(),
            key_pem: String::from_utf8(cert.key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        }
    }

    #[test]
    fn picks_by_sni_with_wildcards_and_default_and_reuses_unchanged_certificates() {
        let a = pem(&ServedCertificate::self_signed().unwrap(), "ns/a");
        let w = pem(&ServedCertificate::self_signed().unwrap(), "ns/w");
        let snap = Snapshot {
            version: 1,
            certificates: vec![a.clone(), w.clone()],
            tls_hosts: vec![
                TlsHost {
                    host: "a.test".parse().unwrap(),
                    certificate: "ns/a".into(),
                },
                TlsHost {
                    host: "*.w.test".parse().unwrap(),
                    certificate: "ns/w".into(),
                },
            ],
            tls: portico_model::TlsPolicy {
                default_certificate: Some("ns/a".into()),
                ..Default::default()
            },
            ..Snapshot::default()
        };
        let table = CertificateTable::compile(&snap, None).unwrap();
        assert_eq!(table.lookup(Some("A.TEST")).unwrap().name, "ns/a");
        assert_eq!(table.lookup(Some("x.w.test")).unwrap().name, "ns/w");
        assert_eq!(
            table.lookup(Some("other.test")).unwrap().name,
            "ns/a",
            "unknown SNI gets the default"
        );
        assert_eq!(table.lookup(None).unwrap().name, "ns/a");

        let next = CertificateTable::compile(&snap, Some((&snap, &table))).unwrap();
        assert!(
            Arc::ptr_eq(
                next.lookup(Some("a.test")).unwrap(),
                table.lookup(Some("a.test")).unwrap()
            ),
            "unchanged: reused"
        );

        let mut bad = snap.clone();
        bad.certificates[1].key_pem = a.key_pem.clone();
        let err = CertificateTable::compile(&bad, Some((&snap, &table)))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("ns/w") && err.to_string().contains("does not match"),
            "{err}"
        );
    }
}
