//! ExternalName Services: the DNS names they point at, resolved in the background with
//! their answers' TTLs and handed to translation, never looked up on a request's path.
//! Addresses inside the node's own reach (loopback, link-local, cloud metadata services,
//! unspecified) are refused unless `--external-name-allow-local` says otherwise, so that
//! an Ingress cannot be turned into a way into the node (`docs/design/0019`).

use futures_util::StreamExt;
use hickory_resolver::TokioResolver;
use portico_translate::{ClusterState, NameResolution, ResolvedNames};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// An answer is kept at least this long, whatever its TTL says...
const MIN_TTL: Duration = Duration::from_secs(5);
/// ...and at most this long, so that a long TTL does not hide a move for hours.
const MAX_TTL: Duration = Duration::from_secs(300);
/// A failed lookup is tried again after this long.
const RETRY: Duration = Duration::from_secs(5);
/// Names looked up at once.
const CONCURRENT_LOOKUPS: usize = 16;

/// Cloud metadata services outside the link-local range: Alibaba's, and AWS's over IPv6.
const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Why an ExternalName may not route to `ip`, or `None` when it may.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if METADATA.contains(&ip) {
        return Some("a cloud metadata address");
    }
    match ip {
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        _ => None,
    }
}

/// The addresses `name` may route to, or why none.
pub fn screen(name: &str, addresses: Vec<IpAddr>, allow_local: bool) -> NameResolution {
    if allow_local {
        return NameResolution::Addresses(addresses);
    }
    let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) =
        addresses.into_iter().partition(|a| refusal(*a).is_none());
    match (allowed.is_empty(), refused.first()) {
        (true, Some(first)) => NameResolution::Failed(format!(
            "{name} resolves to {first}, {}, which ExternalName Services may not reach without --external-name-allow-local",
            refusal(*first).unwrap_or("an address")
        )),
        (true, None) => NameResolution::Failed(format!("{name} has no address")),
        (false, _) => {
            if let Some(first) = refused.first() {
                tracing::warn!(name, address = %first, "an ExternalName's address is refused; the others are used");
            }
            NameResolution::Addresses(allowed)
        }
    }
}

/// Resolves the names of the ExternalName Services in the state it is given.
pub struct NameResolver {
    resolver: TokioResolver,
    allow_local: bool,
}

impl NameResolver {
    /// A resolver with the system's configuration (`/etc/resolv.conf`: cluster DNS in a pod).
    pub fn from_system(allow_local: bool) -> anyhow::Result<Self> {
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| anyhow::anyhow!("reading the DNS configuration: {e}"))?
            .build();
        Ok(NameResolver {
            resolver,
            allow_local,
        })
    }

    /// Keeps `names` current for the ExternalName Services of the latest state: new names
    /// are looked up at once, known ones when their TTL runs out.
    pub async fn run(
        self,
        mut states: watch::Receiver<Option<Arc<ClusterState>>>,
        names: watch::Sender<Arc<ResolvedNames>>,
    ) {
        let mut entries: BTreeMap<String, (NameResolution, Instant)> = BTreeMap::new();
        let this = &self;
        loop {
            let wanted = states
                .borrow_and_update()
                .as_ref()
                .map(|s| s.external_names())
                .unwrap_or_default();
            entries.retain(|name, _| wanted.contains(name));
            let now = Instant::now();
            let due: Vec<(String, Option<NameResolution>)> = wanted
                .into_iter()
                .filter(|n| entries.get(n).is_none_or(|(_, at)| *at <= now))
                .map(|n| {
                    let last = entries.get(&n).map(|(r, _)| r.clone());
                    (n, last)
                })
                .collect();
            let answers: Vec<(String, NameResolution, Duration)> = futures_util::stream::iter(due)
                .map(|(name, last)| async move {
                    let (resolution, ttl) = this.resolve(&name, last).await;
                    (name, resolution, ttl)
                })
                .buffer_unordered(CONCURRENT_LOOKUPS)
                .collect()
                .await;
            let now = Instant::now();
            for (name, resolution, ttl) in answers {
                entries.insert(name, (resolution, now + ttl));
            }
            let current: ResolvedNames = entries
                .iter()
                .map(|(n, (r, _))| (n.clone(), r.clone()))
                .collect();
            names.send_if_modified(|published| {
                let changed = **published != current;
                if changed {
                    *published = Arc::new(current);
                }
                changed
            });
            let next = entries.values().map(|(_, at)| *at).min();
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return },
                _ = sleep_until(next) => {}
            }
        }
    }

    /// One lookup and how long its answer stands. A failure after a good answer keeps
    /// the good addresses (a DNS hiccup must not take a working route down) and is
    /// tried again soon.
    async fn resolve(
        &self,
        name: &str,
        last: Option<NameResolution>,
    ) -> (NameResolution, Duration) {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return (screen(name, vec![ip], self.allow_local), MAX_TTL);
        }
        match self.resolver.lookup_ip(name).await {
            Ok(answer) => {
                let ttl = answer
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now())
                    .clamp(MIN_TTL, MAX_TTL);
                let addresses = answer.iter().collect();
                (screen(name, addresses, self.allow_local), ttl)
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "resolving an ExternalName failed");
                match last {
                    Some(good @ NameResolution::Addresses(_)) => (good, RETRY),
                    _ => (
                        NameResolution::Failed(format!("resolving {name}: {e}")),
                        RETRY,
                    ),
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_inside_the_node_are_refused() {
        for inside in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "100.100.100.200",
            "fd00:ec2::254",
        ] {
            assert!(refusal(ip(inside)).is_some(), "{inside}");
        }
        for outside in ["10.0.0.1", "192.0.2.7", "2001:db8::1", "100.100.100.201"] {
            assert_eq!(refusal(ip(outside)), None, "{outside}");
        }
    }

    #[test]
    fn a_name_keeps_its_allowed_addresses_and_fails_with_none() {
        assert_eq!(
            screen("mixed.test", vec![ip("127.0.0.1"), ip("192.0.2.7")], false),
            NameResolution::Addresses(vec![ip("192.0.2.7")])
        );
        let NameResolution::Failed(why) = screen("meta.test", vec![ip("169.254.169.254")], false)
        else {
            panic!("refused");
        };
        assert!(
            why.contains("169.254.169.254, a link-local address"),
            "{why}"
        );
        assert!(why.contains("--external-name-allow-local"), "{why}");
        assert_eq!(
            screen("local.test", vec![ip("127.0.0.1")], true),
            NameResolution::Addresses(vec![ip("127.0.0.1")])
        );
    }

    #[tokio::test]
    async fn names_are_resolved_for_the_external_name_services_of_the_state() {
        let service = |name: &str, target: &str| {
            portico_translate::KubeObject::Service(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": "ns"},
                    "spec": {"type": "ExternalName", "externalName": target},
                }))
                .unwrap(),
            )
        };
        let state: ClusterState = [
            service("literal", "192.0.2.7"),
            service("local", "127.0.0.1"),
        ]
        .into_iter()
        .collect();
        let (_states_tx, states_rx) = watch::channel(Some(Arc::new(state)));
        let (names_tx, mut names_rx) = watch::channel(Arc::new(ResolvedNames::new()));
        let resolver = NameResolver::from_system(false).unwrap();
        let task = tokio::spawn(resolver.run(states_rx, names_tx));
        tokio::time::timeout(Duration::from_secs(10), names_rx.changed())
            .await
            .unwrap()
            .unwrap();
        let names = names_rx.borrow().clone();
        assert_eq!(
            names.get("192.0.2.7"),
            Some(&NameResolution::Addresses(vec![ip("192.0.2.7")]))
        );
        assert!(matches!(
            names.get("127.0.0.1"),
            Some(NameResolution::Failed(_))
        ));
        task.abort();
    }
}
