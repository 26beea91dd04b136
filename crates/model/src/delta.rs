//! A snapshot told as its differences from the one before it. At ten thousand Ingresses
//! one changed Ingress is a few hundred bytes of the snapshot's megabytes: sending and
//! applying only those makes a change cost the controller and the proxy in proportion
//! to the change rather than to the cluster.
//!
//! Hosts, backends and certificates are keyed lists, sorted by key as translation
//! emits them, and travel as the entries added or changed and the keys removed; the
//! rest of the snapshot is small and travels whole.

use crate::{
    Backend, Certificate, Diagnostic, GlobalPolicy, HostMatch, Snapshot, Streams, TlsHost,
    TlsPolicy, VirtualHost,
};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDelta {
    /// The version the result has.
    pub version: u64,
    /// Hosts added or changed, sorted by host.
    pub hosts: Vec<Arc<VirtualHost>>,
    /// Sorted.
    pub removed_hosts: Vec<HostMatch>,
    /// Backends added or changed, sorted by name.
    pub backends: Vec<Arc<Backend>>,
    /// Sorted.
    pub removed_backends: Vec<String>,
    /// Certificates added or changed, sorted by name.
    pub certificates: Vec<Certificate>,
    /// Sorted.
    pub removed_certificates: Vec<String>,
    pub default_backend: Option<String>,
    pub tls_hosts: Vec<TlsHost>,
    pub tls: TlsPolicy,
    pub global: GlobalPolicy,
    #[serde(default)]
    pub streams: Streams,
    pub diagnostics: Vec<Diagnostic>,
}

/// Why a delta does not fit the snapshot it was applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta removes {kind} {key:?}, which the snapshot does not have")]
    UnknownKey { kind: &'static str, key: String },
    #[error(
        "the {kind} of the delta or of the snapshot are not sorted by key, or repeat one ({key:?})"
    )]
    Unsorted { kind: &'static str, key: String },
}

impl Snapshot {
    /// What turns `base` into `self`, or `None` when a keyed list of either is not sorted
    /// and unique by key (translation always sorts them; a snapshot from elsewhere may not),
    /// so that the whole snapshot has to be sent.
    pub fn delta_from(&self, base: &Snapshot) -> Option<SnapshotDelta> {
        let (hosts, removed_hosts) = diff(&base.virtual_hosts, &self.virtual_hosts, |v| &v.host)?;
        let (backends, removed_backends) = diff(&base.backends, &self.backends, |b| &b.name)?;
        let (certificates, removed_certificates) =
            diff(&base.certificates, &self.certificates, |c| &c.name)?;
        Some(SnapshotDelta {
            version: self.version,
            hosts,
            removed_hosts,
            backends,
            removed_backends,
            certificates,
            removed_certificates,
            default_backend: self.default_backend.clone(),
            tls_hosts: self.tls_hosts.clone(),
            tls: self.tls.clone(),
            global: self.global.clone(),
            streams: self.streams.clone(),
            diagnostics: self.diagnostics.clone(),
        })
    }

    /// `self` with `delta` applied. Unchanged hosts and backends are shared with `self`.
    pub fn with_delta(&self, delta: SnapshotDelta) -> Result<Snapshot, DeltaError> {
        Ok(Snapshot {
            version: delta.version,
            virtual_hosts: patch(
                "virtual hosts",
                &self.virtual_hosts,
                delta.hosts,
                &delta.removed_hosts,
                |v| &v.host,
            )?,
            default_backend: delta.default_backend,
            backends: patch(
                "backends",
                &self.backends,
                delta.backends,
                &delta.removed_backends,
                |b| &b.name,
            )?,
            certificates: patch(
                "certificates",
                &self.certificates,
                delta.certificates,
                &delta.removed_certificates,
                |c| &c.name,
            )?,
            tls_hosts: delta.tls_hosts,
            tls: delta.tls,
            global: delta.global,
            streams: delta.streams,
            diagnostics: delta.diagnostics,
        })
    }
}

impl SnapshotDelta {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("delta serialisation cannot fail")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

fn sorted_unique<T, K: Ord>(items: &[T], key: impl Fn(&T) -> &K) -> bool {
    items.windows(2).all(|w| key(&w[0]) < key(&w[1]))
}

/// The entries of `new` that `old` lacks or holds differently, and the keys of `old`
/// that `new` lacks; `None` unless both are sorted and unique by key. For `Arc`s of `Eq`
/// types `==` is true at once for the same allocation, so shared entries cost nothing.
fn diff<T: Clone + PartialEq, K: Ord + Clone>(
    old: &[T],
    new: &[T],
    key: impl Fn(&T) -> &K,
) -> Option<(Vec<T>, Vec<K>)> {
    if !sorted_unique(old, &key) || !sorted_unique(new, &key) {
        return None;
    }
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => return Some((changed, removed)),
            (Some(a), None) => {
                removed.push(key(a).clone());
                o.next();
            }
            (None, Some(b)) => {
                changed.push((*b).clone());
                n.next();
            }
            (Some(a), Some(b)) => match key(a).cmp(key(b)) {
                Ordering::Less => {
                    removed.push(key(a).clone());
                    o.next();
                }
                Ordering::Greater => {
                    changed.push((*b).clone());
                    n.next();
                }
                Ordering::Equal => {
                    if a != b {
                        changed.push((*b).clone());
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
}

/// `old` without the `removed` keys and with `changed` put in place, all sorted by key.
fn patch<T: Clone, K: Ord + std::fmt::Display>(
    kind: &'static str,
    old: &[T],
    changed: Vec<T>,
    removed: &[K],
    key: impl Fn(&T) -> &K,
) -> Result<Vec<T>, DeltaError> {
    let unsorted = |k: &K| DeltaError::Unsorted {
        kind,
        key: k.to_string(),
    };
    for list in [old, &changed] {
        if let Some(w) = list.windows(2).find(|w| key(&w[0]) >= key(&w[1])) {
            return Err(unsorted(key(&w[1])));
        }
    }
    if let Some(w) = removed.windows(2).find(|w| w[0] >= w[1]) {
        return Err(unsorted(&w[1]));
    }
    let mut out = Vec::with_capacity(old.len() + changed.len());
    let mut removed = removed.iter().peekable();
    let mut changed = changed.into_iter().peekable();
    for item in old {
        let k = key(item);
        while let Some(c) = changed.next_if(|c| key(c) < k) {
            out.push(c);
        }
        if let Some(r) = removed.next_if(|r| *r <= k) {
            if r < k {
                return Err(DeltaError::UnknownKey {
                    kind,
                    key: r.to_string(),
                });
            }
            if changed.peek().is_some_and(|c| key(c) == k) {
                return Err(DeltaError::Unsorted {
                    kind,
                    key: format!("{k} is both removed and changed"),
                });
            }
            continue;
        }
        match changed.next_if(|c| key(c) == k) {
            Some(c) => out.push(c),
            None => out.push(item.clone()),
        }
    }
    if let Some(r) = removed.next() {
        return Err(DeltaError::UnknownKey {
            kind,
            key: r.to_string(),
        });
    }
    out.extend(changed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, PathMatch, Route};

    fn host(name: &str, backend: &str) -> Arc<VirtualHost> {
        Arc::new(VirtualHost::new(
            name.parse().unwrap(),
            vec![Route::new(PathMatch::prefix("/"), backend)],
        ))
    }

    fn backend(name: &str, last_octet: u8) -> Arc<Backend> {
        Arc::new(Backend {
            name: name.into(),
            service: Default::default(),
            endpoints: vec![Endpoint {
                address: [10, 0, 0, last_octet].into(),
                port: 80,
                ready: true,
            }],
            upstream: Default::default(),
            policy: Default::default(),
        })
    }

    fn snapshot(version: u64, hosts: &[(&str, &str)], backends: &[(&str, u8)]) -> Snapshot {
        Snapshot {
            version,
            virtual_hosts: hosts.iter().map(|(h, b)| host(h, b)).collect(),
            backends: backends.iter().map(|(b, o)| backend(b, *o)).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_delta_carries_only_what_changed_and_rebuilds_the_new_snapshot() {
        let base = snapshot(
            1,
            &[("a.test", "x"), ("b.test", "x"), ("c.test", "y")],
            &[("x", 1), ("y", 2)],
        );
        let mut next = base.clone();
        next.version = 2;
        next.virtual_hosts.remove(1); // b.test goes
        next.virtual_hosts.insert(0, host("0.test", "y")); // 0.test comes
        next.virtual_hosts[2] = host("c.test", "x"); // c.test changes
        next.virtual_hosts.push(host("d.test", "y"));
        next.backends[1] = backend("y", 3); // an endpoint moves
        next.default_backend = Some("x".into());

        let delta = next.delta_from(&base).expect("sorted lists");
        let names = |hosts: &[Arc<VirtualHost>]| {
            hosts.iter().map(|v| v.host.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(names(&delta.hosts), ["0.test", "c.test", "d.test"]);
        assert_eq!(
            delta.removed_hosts,
            vec!["b.test".parse::<HostMatch>().unwrap()]
        );
        assert_eq!(
            delta
                .backends
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>(),
            ["y"]
        );
        assert!(delta.removed_backends.is_empty());

        let decoded = SnapshotDelta::from_bytes(&delta.to_bytes()).unwrap();
        let rebuilt = base.with_delta(decoded).unwrap();
        assert_eq!(rebuilt, next);
        assert!(
            Arc::ptr_eq(&rebuilt.virtual_hosts[1], &base.virtual_hosts[0]),
            "a.test is shared, not copied"
        );
        assert!(delta.to_bytes().len() < next.to_bytes().len());
    }

    #[test]
    fn a_host_rebuilt_to_the_same_value_is_not_sent() {
        let base = snapshot(1, &[("a.test", "x")], &[("x", 1)]);
        let next = snapshot(2, &[("a.test", "x")], &[("x", 1)]);
        let delta = next.delta_from(&base).unwrap();
        assert!(
            delta.hosts.is_empty() && delta.backends.is_empty() && delta.removed_hosts.is_empty()
        );
        assert_eq!(base.with_delta(delta).unwrap(), next);
    }

    #[test]
    fn unsorted_lists_get_no_delta() {
        let base = snapshot(1, &[("b.test", "x"), ("a.test", "x")], &[("x", 1)]);
        let next = snapshot(2, &[("a.test", "x")], &[("x", 1)]);
        assert!(next.delta_from(&base).is_none());
        assert!(base.delta_from(&next).is_none());
    }

    #[test]
    fn a_delta_that_does_not_fit_its_base_is_refused_by_name() {
        let base = snapshot(1, &[("a.test", "x")], &[("x", 1)]);
        let other = snapshot(1, &[("a.test", "x"), ("gone.test", "x")], &[("x", 1)]);
        let next = snapshot(2, &[("a.test", "x")], &[("x", 1)]);
        let delta = next.delta_from(&other).unwrap();
        let err = base.with_delta(delta).unwrap_err();
        assert_eq!(
            err,
            DeltaError::UnknownKey {
                kind: "virtual hosts",
                key: "gone.test".into()
            }
        );

        let mut unsorted = next.delta_from(&base).unwrap();
        unsorted.hosts = vec![host("b.test", "x"), host("a.test", "x")];
        assert!(matches!(
            base.with_delta(unsorted),
            Err(DeltaError::Unsorted {
                kind: "virtual hosts",
                ..
            })
        ));

        let mut both = next.delta_from(&base).unwrap();
        both.hosts = vec![host("a.test", "y")];
        both.removed_hosts = vec!["a.test".parse().unwrap()];
        assert!(matches!(
            base.with_delta(both),
            Err(DeltaError::Unsorted { .. })
        ));
    }
}
