//! Runs the processors in order and assembles the snapshot.

use crate::backend::SliceIndex;
use crate::cache::{ClusterState, ObjectKey};
use crate::class::{Admission, ClassFilter};
use crate::diagnostic::{Diagnostic, ObjectRef, Reason};
use crate::ingress::{IngressProcessor, RouteTable};
use k8s_openapi::api::networking::v1::Ingress;
use portico_model::{Snapshot, VirtualHost};

#[derive(Debug, Clone)]
pub struct Options {
    /// The IngressClass name Portico serves (`--ingress-class`).
    pub ingress_class: String,
    /// Treat the class as existing when no IngressClass object defines it (manifests mode).
    pub assume_class_exists: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { ingress_class: "portico".into(), assume_class_exists: false }
    }
}

#[derive(Debug, Clone)]
pub struct Translation {
    /// Version 0: the publisher stamps the version.
    pub snapshot: Snapshot,
    /// Sorted and without duplicates.
    pub diagnostics: Vec<Diagnostic>,
    /// The Ingresses this controller serves, whether or not all their rules applied.
    pub admitted: Vec<ObjectKey>,
}

/// Translates cluster state into a snapshot. Deterministic: the same state always gives
/// the same snapshot, byte for byte, whatever order objects arrived in.
pub fn translate(state: &ClusterState, opts: &Options) -> Translation {
    let mut diagnostics = Vec::new();
    let classes = ClassFilter::new(state, opts);
    let mut admitted: Vec<(&ObjectKey, &Ingress)> = Vec::new();
    for (key, ingress) in &state.ingresses {
        match classes.admit(state, ingress) {
            Admission::Admitted => admitted.push((key, ingress)),
            Admission::Ignored => {}
            Admission::UnknownClass(class) => diagnostics.push(Diagnostic {
                object: ObjectRef { kind: "Ingress", namespace: key.0.clone(), name: key.1.clone() },
                reason: Reason::UnknownIngressClass,
                message: format!("spec.ingressClassName {class:?}: no IngressClass of that name exists"),
            }),
        }
    }
    // Oldest first, so that on a conflict the oldest Ingress wins.
    admitted.sort_by(|(ka, a), (kb, b)| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp).then_with(|| ka.cmp(kb)));

    let slices = SliceIndex::new(state);
    let mut table = RouteTable::default();
    for (_, ingress) in &admitted {
        IngressProcessor::new(state, &slices, ingress, &mut diagnostics).process(&mut table);
    }

    // A host whose every path was invalid or taken has no routes and is left out.
    let virtual_hosts = std::mem::take(&mut table.hosts)
        .into_iter()
        .filter(|(_, h)| !h.routes.is_empty())
        .map(|(host, h)| VirtualHost { host, routes: h.routes })
        .collect();
    let default_backend = table.default_backend.take().map(|(name, _)| name);
    let snapshot = Snapshot { version: 0, virtual_hosts, default_backend, backends: table.into_backends() };
    diagnostics.sort();
    diagnostics.dedup();
    let admitted = admitted.into_iter().map(|(k, _)| k.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    Translation { snapshot, diagnostics, admitted }
}
