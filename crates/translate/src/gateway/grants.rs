//! ReferenceGrants: whether an object of one namespace may refer to one of another.

use super::types::{BackendRef, ObjectReference, GROUP};
use crate::cache::ClusterState;

/// A typed reference to a core object, as Gateway API writes them (certificateRefs,
/// backendRefs).
pub(crate) struct CoreRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
}

impl<'a> From<&'a ObjectReference> for CoreRef<'a> {
    fn from(r: &'a ObjectReference) -> Self {
        CoreRef {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
        }
    }
}

impl<'a> From<&'a BackendRef> for CoreRef<'a> {
    fn from(r: &'a BackendRef) -> Self {
        CoreRef {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
        }
    }
}

/// The namespace of a reference from a Gateway API `from_kind` object of
/// `from_namespace` to a core object of kind `want`; or the status reason (`wrong_kind`
/// for another kind, `RefNotPermitted` for a namespace no ReferenceGrant opens) and a
/// message.
pub(crate) fn core_reference(
    state: &ClusterState,
    (from_kind, from_namespace): (&str, &str),
    r: &CoreRef<'_>,
    want: &str,
    wrong_kind: &'static str,
) -> Result<String, (&'static str, String)> {
    let group = r.group.unwrap_or("");
    let kind = r.kind.unwrap_or(want);
    if !group.is_empty() || kind != want {
        return Err((
            wrong_kind,
            format!("{kind} {:?} (group {group:?}) is not a {want}", r.name),
        ));
    }
    let namespace = r.namespace.unwrap_or(from_namespace).to_string();
    let reference = CrossReference {
        from_group: GROUP,
        from_kind,
        from_namespace,
        to_group: "",
        to_kind: want,
        to_namespace: &namespace,
        name: r.name,
    };
    if !permitted(state, &reference) {
        return Err((
            "RefNotPermitted",
            format!(
                "{want} {namespace}/{}: no ReferenceGrant in {namespace:?} lets {from_kind}s of {from_namespace:?} use it",
                r.name
            ),
        ));
    }
    Ok(namespace)
}

/// A reference from a `from_kind` object in `from_namespace` to the `to_kind` object
/// `name` in `to_namespace` (groups: `gateway.networking.k8s.io` for Gateway API kinds,
/// `""` for core kinds).
pub(crate) struct CrossReference<'a> {
    pub from_group: &'a str,
    pub from_kind: &'a str,
    pub from_namespace: &'a str,
    pub to_group: &'a str,
    pub to_kind: &'a str,
    pub to_namespace: &'a str,
    pub name: &'a str,
}

/// Whether the reference is allowed: within a namespace always, across only when a
/// ReferenceGrant in the target's namespace names both sides.
pub(crate) fn permitted(state: &ClusterState, r: &CrossReference<'_>) -> bool {
    if r.from_namespace == r.to_namespace {
        return true;
    }
    state
        .reference_grants
        .iter()
        .filter(|((ns, _), _)| ns == r.to_namespace)
        .any(|(_, grant)| {
            grant.spec.from.iter().any(|f| {
                f.group == r.from_group && f.kind == r.from_kind && f.namespace == r.from_namespace
            }) && grant.spec.to.iter().any(|t| {
                t.group == r.to_group
                    && t.kind == r.to_kind
                    && t.name
                        .as_deref()
                        .is_none_or(|n| n.is_empty() || n == r.name)
            })
        })
}
