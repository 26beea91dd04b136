//! Per-object results: what was wrong with which object, and why it matters.

use serde::Serialize;
use std::fmt;

/// Which object a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    /// The object (Ingress or Gateway API route) a route came from.
    pub fn source(source: &portico_model::SourceRef) -> Self {
        ObjectRef {
            kind: source.kind.as_str(),
            namespace: source.namespace.clone(),
            name: source.name.clone(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The reasons also serve as Kubernetes Event reasons, so they are stable CamelCase words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Reason {
    UnknownIngressClass,
    InvalidIngress,
    InvalidHost,
    InvalidPath,
    PathConflict,
    DefaultBackendConflict,
    UnsupportedBackend,
    ServiceNotFound,
    ServicePortNotFound,
    NoReadyEndpoints,
    InvalidAnnotation,
    SecretNotFound,
    InvalidSecret,
    CertificateExpired,
    TLSConflict,
    ClientAuthConflict,
    CanaryWithoutPrimary,
    CanaryConflict,
    UnsupportedAnnotation,
    ConfigMapNotFound,
    RegexHost,
    HostConflict,
    CrossNamespaceShadowing,
    /// A controller ConfigMap value that does not parse.
    InvalidSetting,
    /// A controller ConfigMap key (or value) Portico does not act on.
    UnsupportedSetting,
    /// A Gateway listener Portico does not serve, or a route no listener takes.
    NotAccepted,
    /// A reference across namespaces that no ReferenceGrant allows.
    RefNotPermitted,
    /// A Gateway API field or filter Portico does not implement.
    UnsupportedField,
    /// A Gateway API field whose value Portico cannot use.
    InvalidField,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::UnknownIngressClass => "UnknownIngressClass",
            Reason::InvalidIngress => "InvalidIngress",
            Reason::InvalidHost => "InvalidHost",
            Reason::InvalidPath => "InvalidPath",
            Reason::PathConflict => "PathConflict",
            Reason::DefaultBackendConflict => "DefaultBackendConflict",
            Reason::UnsupportedBackend => "UnsupportedBackend",
            Reason::ServiceNotFound => "ServiceNotFound",
            Reason::ServicePortNotFound => "ServicePortNotFound",
            Reason::NoReadyEndpoints => "NoReadyEndpoints",
            Reason::InvalidAnnotation => "InvalidAnnotation",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::InvalidSecret => "InvalidSecret",
            Reason::CertificateExpired => "CertificateExpired",
            Reason::TLSConflict => "TLSConflict",
            Reason::ClientAuthConflict => "ClientAuthConflict",
            Reason::CanaryWithoutPrimary => "CanaryWithoutPrimary",
            Reason::CanaryConflict => "CanaryConflict",
            Reason::UnsupportedAnnotation => "UnsupportedAnnotation",
            Reason::ConfigMapNotFound => "ConfigMapNotFound",
            Reason::RegexHost => "RegexHost",
            Reason::HostConflict => "HostConflict",
            Reason::CrossNamespaceShadowing => "CrossNamespaceShadowing",
            Reason::InvalidSetting => "InvalidSetting",
            Reason::UnsupportedSetting => "UnsupportedSetting",
            Reason::NotAccepted => "NotAccepted",
            Reason::RefNotPermitted => "RefNotPermitted",
            Reason::UnsupportedField => "UnsupportedField",
            Reason::InvalidField => "InvalidField",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one object. The message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    pub object: ObjectRef,
    pub reason: Reason,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.reason, self.message)
    }
}

/// What is wrong, before it is known which object it is about: a diagnostic's reason and
/// message. The annotation readers return these, and the Ingress processor turns each into
/// a [`Diagnostic`] on its Ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Problem::new(Reason::InvalidAnnotation, message)
    }
}

/// The problems met while reading values that fall back to a default when they cannot be
/// used (tuning): each is kept for a diagnostic, and reading goes on.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }

    /// The value, or `None` (the default) with the problem kept.
    pub fn take<T, E: Into<Problem>>(&mut self, parsed: Result<Option<T>, E>) -> Option<T> {
        parsed.unwrap_or_else(|e| {
            self.0.push(e.into());
            None
        })
    }
}
