//! ReferenceGrants: whether an object of one namespace may refer to one of another.

use crate::cache::ClusterState;

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
