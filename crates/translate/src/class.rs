//! Which Ingresses belong to Portico: `spec.ingressClassName`, the legacy
//! `kubernetes.io/ingress.class` annotation, or the default IngressClass.

use crate::builder::Options;
use crate::cache::ClusterState;
use k8s_openapi::api::networking::v1::Ingress;

pub(crate) const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

pub(crate) enum Admission {
    Admitted,
    /// Belongs to another controller, or to no one; not our business.
    Ignored,
    /// Names a class no IngressClass object defines.
    UnknownClass(String),
}

pub(crate) struct ClassFilter {
    /// The name of the class Portico serves, when it exists (or is assumed to).
    ours: Option<String>,
    ours_is_default: bool,
}

impl ClassFilter {
    pub(crate) fn new(state: &ClusterState, opts: &Options) -> Self {
        let ours = match state.ingress_classes.get(&opts.ingress_class) {
            Some(class) => {
                class.spec.as_ref().and_then(|s| s.controller.as_deref())
                    == Some(crate::CONTROLLER_NAME)
            }
            None => opts.assume_class_exists,
        };
        let ours_is_default = ours
            && state
                .ingress_classes
                .get(&opts.ingress_class)
                .and_then(|c| c.metadata.annotations.as_ref())
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
        ClassFilter {
            ours: ours.then(|| opts.ingress_class.clone()),
            ours_is_default,
        }
    }

    pub(crate) fn admit(&self, state: &ClusterState, ingress: &Ingress) -> Admission {
        let by_spec = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        let by_annotation = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .map(String::as_str);
        match (by_spec, by_annotation) {
            (Some(name), _) => {
                if self.ours.as_deref() == Some(name) {
                    Admission::Admitted
                } else if state.ingress_classes.contains_key(name) {
                    Admission::Ignored
                } else {
                    Admission::UnknownClass(name.to_string())
                }
            }
            // The annotation predates IngressClass objects: like ingress-nginx, it is
            // compared with the class name alone.
            (None, Some(name)) if self.ours.as_deref() == Some(name) => Admission::Admitted,
            (None, Some(_)) => Admission::Ignored,
            (None, None) if self.ours_is_default => Admission::Admitted,
            (None, None) => Admission::Ignored,
        }
    }
}
