//! Which peers may tell us about the original client: `--trusted-proxies`.
//! From anyone else, `X-Forwarded-*` headers are replaced, never believed.

pub use portico_model::cidr::{parse_list, Cidr, InvalidCidr};
use std::net::IpAddr;

/// Whether `ip` is one of the `--trusted-proxies`, whose forwarding headers are believed.
pub fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address: the socket peer, unless the peer is a trusted proxy; then the
/// rightmost `X-Forwarded-For` hop that is not itself trusted (hops a client wrote
/// itself sit to the left of what our proxies appended, so they are never reached).
/// `None` when that hop is not an address: the client is then unknown, and access lists
/// refuse it.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| is_trusted(trusted, ip);
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(hops) = forwarded_for.filter(|h| !h.trim().is_empty()) else {
        return Some(peer);
    };
    let mut client = peer;
    for hop in hops.rsplit(',') {
        let hop = hop.trim();
        // `[v6]:port` and `v4:port` forms, as some proxies write them.
        let bare = hop
            .strip_prefix('[')
            .and_then(|h| h.split_once(']'))
            .map_or(hop, |(h, _)| h);
        let ip = bare.parse::<IpAddr>().ok().or_else(|| {
            bare.rsplit_once(':')
                .and_then(|(h, _)| h.parse::<IpAddr>().ok().filter(IpAddr::is_ipv4))
        })?;
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client_and_only_trusted_peers_are_believed() {
        let trusted = parse_list("10.0.0.0/8").unwrap();
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            client_address(
                ip("10.0.0.1"),
                Some("1.2.3.4, 198.51.100.7, 10.0.0.2"),
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), None, &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("10.0.0.3, 10.0.0.2"), &trusted),
            ip("10.0.0.3"),
            "all trusted: the leftmost"
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("1.2.3.4:5678"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("[2001:db8::1]:443"), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("1.2.3.4, garbage"), &trusted),
            None,
            "an unreadable hop makes the client unknown"
        );
    }
}
