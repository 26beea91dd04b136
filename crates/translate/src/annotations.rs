//! Annotations, read under both prefixes and parsed into typed values. `portico.io/`
//! wins over `nginx.ingress.kubernetes.io/` when both set a name; a value that does not
//! parse is reported with the annotation and the value, and the default applies.

use crate::diagnostic::Reason;
use portico_model::UpstreamProtocol;
use std::collections::BTreeMap;

pub(crate) const PORTICO_PREFIX: &str = "portico.io/";
pub(crate) const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// One Ingress's annotations.
pub(crate) struct Annotations<'a> {
    map: Option<&'a BTreeMap<String, String>>,
}

/// A value that did not parse: the full annotation key, the value, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidAnnotation {
    pub key: String,
    pub value: String,
    pub expected: &'static str,
}

impl InvalidAnnotation {
    pub fn reason(&self) -> Reason {
        Reason::InvalidAnnotation
    }

    pub fn message(&self) -> String {
        format!("annotation {}: value {:?} is not {}", self.key, self.value, self.expected)
    }
}

impl<'a> Annotations<'a> {
    pub fn new(map: Option<&'a BTreeMap<String, String>>) -> Self {
        Annotations { map }
    }

    /// The value of `name` and the key it was found under.
    pub fn get(&self, name: &str) -> Option<(String, &'a str)> {
        let map = self.map?;
        for prefix in [PORTICO_PREFIX, NGINX_PREFIX] {
            let key = format!("{prefix}{name}");
            if let Some(v) = map.get(&key) {
                return Some((key, v.as_str()));
            }
        }
        None
    }

    fn parse<T>(&self, name: &str, expected: &'static str, parse: impl Fn(&str) -> Option<T>) -> Result<Option<T>, InvalidAnnotation> {
        match self.get(name) {
            None => Ok(None),
            Some((key, value)) => {
                parse(value.trim()).map(Some).ok_or_else(|| InvalidAnnotation { key, value: value.to_string(), expected })
            }
        }
    }

    /// `"true"`/`"false"` as Kubernetes writes booleans in annotations.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, InvalidAnnotation> {
        self.parse(name, "\"true\" or \"false\"", |v| match v.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
    }

    /// ingress-nginx's `"on"`/`"off"` switches.
    pub fn on_off(&self, name: &str) -> Result<Option<bool>, InvalidAnnotation> {
        self.parse(name, "\"on\" or \"off\"", |v| match v.to_ascii_lowercase().as_str() {
            "on" | "true" => Some(true),
            "off" | "false" => Some(false),
            _ => None,
        })
    }

    pub fn backend_protocol(&self) -> Result<Option<UpstreamProtocol>, InvalidAnnotation> {
        self.parse("backend-protocol", "one of HTTP, HTTPS, GRPC, GRPCS, H2C", |v| match v.to_ascii_uppercase().as_str() {
            "HTTP" => Some(UpstreamProtocol::Http),
            "HTTPS" => Some(UpstreamProtocol::Https),
            "GRPC" => Some(UpstreamProtocol::Grpc),
            "GRPCS" => Some(UpstreamProtocol::Grpcs),
            "H2C" => Some(UpstreamProtocol::H2c),
            _ => None,
        })
    }

    /// A DNS name (for SNI and verification).
    pub fn server_name(&self, name: &str) -> Result<Option<String>, InvalidAnnotation> {
        self.parse(name, "a DNS name", |v| {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
            ok.then(|| v.to_ascii_lowercase())
        })
    }

    /// A Secret reference, `namespace/name` or just `name` (the Ingress's namespace).
    pub fn secret_ref(&self, name: &str, own_namespace: &str) -> Result<Option<(String, String)>, InvalidAnnotation> {
        self.parse(name, "a Secret reference, namespace/name", |v| {
            let (ns, n) = v.split_once('/').unwrap_or((own_namespace, v));
            (!ns.is_empty() && !n.is_empty() && !n.contains('/')).then(|| (ns.to_string(), n.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn portico_prefix_wins_and_nginx_prefix_is_read() {
        let m = map(&[("nginx.ingress.kubernetes.io/ssl-redirect", "false"), ("portico.io/ssl-redirect", "true")]);
        assert_eq!(Annotations::new(Some(&m)).bool("ssl-redirect"), Ok(Some(true)));
        let m = map(&[("nginx.ingress.kubernetes.io/backend-protocol", "grpcs")]);
        assert_eq!(Annotations::new(Some(&m)).backend_protocol(), Ok(Some(UpstreamProtocol::Grpcs)));
        assert_eq!(Annotations::new(None).bool("ssl-redirect"), Ok(None));
    }

    #[test]
    fn bad_values_name_the_key_and_value() {
        let m = map(&[("portico.io/backend-protocol", "FTP"), ("portico.io/force-ssl-redirect", "yes")]);
        let a = Annotations::new(Some(&m));
        let err = a.backend_protocol().unwrap_err();
        assert_eq!(err.message(), "annotation portico.io/backend-protocol: value \"FTP\" is not one of HTTP, HTTPS, GRPC, GRPCS, H2C");
        assert!(a.bool("force-ssl-redirect").unwrap_err().message().contains("\"yes\""));
        let m = map(&[("portico.io/proxy-ssl-name", "bad name"), ("portico.io/proxy-ssl-secret", "other/ca")]);
        let a = Annotations::new(Some(&m));
        assert!(a.server_name("proxy-ssl-name").is_err());
        assert_eq!(a.secret_ref("proxy-ssl-secret", "ns"), Ok(Some(("other".into(), "ca".into()))));
    }
}
