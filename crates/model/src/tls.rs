//! TLS in the snapshot: certificates for hosts, the TLS policy (HSTS), and the client
//! certificates a host asks for.

use crate::HostMatch;
use serde::{Deserialize, Serialize};

/// A certificate chain (leaf first) and its private key, both PEM, already checked by the
/// controller to parse and to belong together.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Unique within the snapshot: the Secret's `namespace/name`.
    pub name: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsHost {
    pub host: HostMatch,
    /// The [`Certificate::name`] presented for this host.
    pub certificate: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TlsPolicy {
    /// Presented for an SNI name no [`TlsHost`] covers, or no SNI at all; when `None` the
    /// proxy presents its own self-signed certificate.
    #[serde(default)]
    pub default_certificate: Option<String>,
    /// `Strict-Transport-Security` on HTTPS responses; `None` sends none.
    #[serde(default)]
    pub hsts: Option<Hsts>,
    /// The TLS versions a handshake may negotiate (`ssl-protocols`); OpenSSL takes a range.
    #[serde(default)]
    pub versions: TlsVersions,
    /// The TLS 1.2 cipher list, in OpenSSL's syntax (`ssl-ciphers`), for hosts that name
    /// none of their own; `None` keeps the listener's (Mozilla's intermediate list). As with
    /// nginx's `ssl_ciphers`, TLS 1.3's suites are not affected.
    #[serde(default)]
    pub ciphers: Option<String>,
}

/// The lowest and highest TLS version offered. Only 1.2 and 1.3 exist here: Portico
/// offers nothing older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsVersions {
    pub min: TlsVersion,
    pub max: TlsVersion,
}

impl Default for TlsVersions {
    fn default() -> Self {
        TlsVersions {
            min: TlsVersion::Tls12,
            max: TlsVersion::Tls13,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hsts {
    pub max_age: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

impl Hsts {
    /// The header value, e.g. `max-age=31536000; includeSubDomains`.
    pub fn header_value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// `auth-tls-*`: client certificates, checked against a CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAuth {
    /// The CA certificates (PEM) a client certificate must chain to (`auth-tls-secret`'s `ca.crt`).
    pub ca_pem: String,
    pub verify: ClientVerify,
    /// `auth-tls-verify-depth`: how many certificates may stand between the client's and a trusted CA's.
    pub depth: u32,
    /// `auth-tls-pass-certificate-to-upstream`: the certificate, URL-encoded PEM, in `ssl-client-cert`.
    pub pass_certificate: bool,
    /// `auth-tls-error-page`: a refused request is redirected here instead of answered 400.
    pub error_page: Option<String>,
    /// `auth-tls-match-cn`: a pattern the certificate's subject (`CN=...,O=...`) must match, else 403.
    #[serde(default)]
    pub match_subject: Option<String>,
}

/// `auth-tls-verify-client` (`off` is no [`ClientAuth`] at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientVerify {
    /// A verified certificate is required.
    On,
    /// A certificate is asked for; one that is sent must verify.
    Optional,
    /// A certificate is asked for; the upstream is told whether it verified.
    OptionalNoCa,
}
