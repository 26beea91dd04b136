//! Cookie affinity: the session cookie that pins a client to an endpoint, without
//! revealing the endpoint's address.
//!
//! Cookie values are authenticated with a key (HMAC-SHA256), shared by every proxy
//! replica through `--affinity-key-file`, so any replica honours any replica's cookie and
//! a forged or stale value is simply not recognised: the client is balanced as usual and
//! re-pinned. Two forms, one per `affinity-mode`:
//!
//! * persistent: the value is a tag of one endpoint (its Service port and address); the
//!   client stays on it until it goes away or is taken out by health.
//! * balanced: the value is a random key and its tag; the key is placed on the backend's
//!   consistent-hash ring, so scaling up moves a fair share of sessions to new endpoints.

use crate::routing::request_key::cookie;
use crate::upstream::balancer::{Balancer, Tried};
use http::header::HeaderValue;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use pingora::http::RequestHeader;
use portico_model::{AffinityMode, SameSite, SessionAffinity};
use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Used when no key file is given: replicas still agree with one another, but the tag
/// then only hides addresses from people who have not read this source.
const BUILT_IN_KEY: &[u8] =
    b"portico affinity key: set --affinity-key-file to keep endpoint addresses private";

/// Hex characters of a persistent tag (128 bits) and of a balanced key and its tag (64 + 64).
const PERSISTENT_LEN: usize = 32;
const BALANCED_LEN: usize = 32;

/// Where a valid cookie pins a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Persistent: this endpoint, by index.
    Endpoint(usize),
    /// Balanced: this key on the ring.
    Key(u64),
}

/// The key that authenticates cookie values.
pub struct AffinityKey {
    key: PKey<openssl::pkey::Private>,
}

impl AffinityKey {
    pub fn new(secret: &[u8]) -> Result<Self, openssl::error::ErrorStack> {
        Ok(AffinityKey {
            key: PKey::hmac(secret)?,
        })
    }

    pub fn built_in() -> Self {
        AffinityKey::new(BUILT_IN_KEY).expect("an HMAC key from fixed bytes")
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let signed = Signer::new(MessageDigest::sha256(), &self.key).and_then(|mut s| {
            for p in parts {
                s.update(p)?;
                s.update(b"\0")?;
            }
            s.sign(&mut out)
        });
        debug_assert!(signed.is_ok());
        out
    }

    fn balanced_tag(&self, service: &str, key: u64) -> String {
        let mut v = format!("{key:016x}");
        hex(
            &mut v,
            &self.tag(&[b"balanced", service.as_bytes(), &key.to_be_bytes()])[..8],
        );
        v
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// A backend's persistent tags, computed once per pool on first use.
pub struct SessionTags {
    service: Box<str>,
    tags: Vec<String>,
    by_tag: HashMap<String, usize>,
}

impl SessionTags {
    fn new(key: &AffinityKey, service: &str, balancer: &Balancer) -> Self {
        let tags: Vec<String> = (0..balancer.len())
            .map(|i| {
                let addr: SocketAddr = balancer.endpoint(i).addr;
                let mut v = String::with_capacity(PERSISTENT_LEN);
                hex(
                    &mut v,
                    &key.tag(&[
                        b"persistent",
                        service.as_bytes(),
                        addr.to_string().as_bytes(),
                    ])[..PERSISTENT_LEN / 2],
                );
                v
            })
            .collect();
        let by_tag = tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        SessionTags {
            service: service.into(),
            tags,
            by_tag,
        }
    }
}

/// What a pool keeps for affinity: its tags, built lazily.
#[derive(Default)]
pub struct PoolSessions(OnceLock<SessionTags>);

/// The cookie jar side of affinity: reading pins from requests, choosing endpoints for
/// them, and writing `Set-Cookie`.
pub struct StickySessions {
    key: AffinityKey,
}

impl StickySessions {
    pub fn new(key: AffinityKey) -> Self {
        StickySessions { key }
    }

    fn tags<'p>(
        &self,
        sessions: &'p PoolSessions,
        backend: &str,
        balancer: &Balancer,
    ) -> &'p SessionTags {
        sessions
            .0
            .get_or_init(|| SessionTags::new(&self.key, backend, balancer))
    }

    /// Where the request's cookie pins it in this pool, if the cookie is valid here.
    pub fn pinned(
        &self,
        affinity: &SessionAffinity,
        req: &RequestHeader,
        pool: (&str, &Balancer, &PoolSessions),
    ) -> Option<Pin> {
        let value = cookie(req, &affinity.cookie.name)?;
        let (backend, balancer, sessions) = pool;
        match affinity.mode {
            AffinityMode::Persistent => {
                if value.len() != PERSISTENT_LEN {
                    return None;
                }
                self.tags(sessions, backend, balancer)
                    .by_tag
                    .get(value)
                    .map(|i| Pin::Endpoint(*i))
            }
            AffinityMode::Balanced => {
                if value.len() != BALANCED_LEN {
                    return None;
                }
                let key = u64::from_str_radix(&value[..16], 16).ok()?;
                let expected = self.key.balanced_tag(backend, key);
                openssl::memcmp::eq(expected.as_bytes(), value.as_bytes()).then_some(Pin::Key(key))
            }
        }
    }

    /// The endpoint for a request: the pinned one while it is up and untried, else one
    /// chosen as usual. Returns the endpoint and the pin its cookie should carry when the
    /// client needs a new cookie.
    pub fn choose(
        &self,
        mode: AffinityMode,
        pin: Option<Pin>,
        balancer: &Balancer,
        hash_key: &[u8],
        tried: &Tried,
    ) -> Option<(usize, Option<Pin>)> {
        match (mode, pin) {
            (AffinityMode::Persistent, Some(Pin::Endpoint(i)))
                if i < balancer.len() && balancer.is_up(i) && !tried.contains(&i) =>
            {
                Some((i, None))
            }
            (AffinityMode::Persistent, _) => balancer
                .pick(hash_key, tried)
                .map(|i| (i, Some(Pin::Endpoint(i)))),
            (AffinityMode::Balanced, Some(Pin::Key(k))) => balancer
                .pick_on_ring(&k.to_be_bytes(), tried)
                .map(|i| (i, None)),
            (AffinityMode::Balanced, _) => {
                let k = fastrand::u64(..);
                balancer
                    .pick_on_ring(&k.to_be_bytes(), tried)
                    .map(|i| (i, Some(Pin::Key(k))))
            }
        }
    }

    /// A pin for an endpoint chosen some other way (a retry with `change-on-failure`).
    /// Balanced mode searches for a ring key that lands there; `None` if none was found.
    pub fn pin_for(&self, mode: AffinityMode, balancer: &Balancer, index: usize) -> Option<Pin> {
        match mode {
            AffinityMode::Persistent => Some(Pin::Endpoint(index)),
            AffinityMode::Balanced => (0..64 * balancer.len().max(1)).find_map(|_| {
                let k = fastrand::u64(..);
                (balancer.pick_on_ring(&k.to_be_bytes(), &[]) == Some(index)).then_some(Pin::Key(k))
            }),
        }
    }

    /// The `Set-Cookie` value for a pin, for a client that came over `https` with
    /// `user_agent`.
    pub fn set_cookie(
        &self,
        affinity: &SessionAffinity,
        pin: Pin,
        (https, user_agent): (bool, Option<&str>),
        pool: (&str, &Balancer, &PoolSessions),
    ) -> Option<HeaderValue> {
        let (backend, balancer, sessions) = pool;
        let value = match pin {
            Pin::Endpoint(i) => self.tags(sessions, backend, balancer).tags.get(i)?.clone(),
            Pin::Key(k) => self
                .key
                .balanced_tag(&self.tags(sessions, backend, balancer).service, k),
        };
        let c = &affinity.cookie;
        let mut v = format!("{}={value}; Path={}", c.name, c.path);
        if let Some(domain) = &c.domain {
            let _ = write!(v, "; Domain={domain}");
        }
        if let Some(secs) = c.expires_secs {
            let _ = write!(
                v,
                "; Expires={}",
                httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
            );
        }
        if let Some(secs) = c.max_age_secs {
            let _ = write!(v, "; Max-Age={secs}");
        }
        let refuses_none =
            c.same_site_none_if_compatible && user_agent.is_some_and(refuses_same_site_none);
        match c.same_site {
            Some(SameSite::None) if refuses_none => {}
            Some(same_site) => {
                let _ = write!(v, "; SameSite={}", same_site.as_str());
            }
            None => {}
        }
        if c.secure || https {
            v.push_str("; Secure");
        }
        v.push_str("; HttpOnly");
        if c.partitioned {
            v.push_str("; Partitioned");
        }
        HeaderValue::try_from(v).ok()
    }
}

/// The browsers that refuse a cookie with `SameSite=None` (Chrome 51 to 66, Safari on
/// iOS 12 and macOS 10.14), as ingress-nginx tells them by their `User-Agent`.
fn refuses_same_site_none(user_agent: &str) -> bool {
    let has = |s: &str| user_agent.contains(s);
    let old_chrome = ["Chrome/5", "Chrome/6"].iter().any(|p| {
        user_agent.match_indices(p).any(|(i, _)| {
            let version: String = user_agent[i + 7..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            version.parse::<u32>().is_ok_and(|v| (51..=66).contains(&v))
        })
    });
    old_chrome
        || has("CPU iPhone OS 12")
        || has("iPad; CPU OS 12")
        || (has("Macintosh") && has("Intel Mac OS X 10_14") && has("Safari") && !has("Chrome"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{Backend, Endpoint, SessionCookie};

    fn balancer(n: u8) -> Balancer {
        Balancer::new(&Backend {
            name: "ns/web:80|round_robin-1234".into(),
            service: Default::default(),
            endpoints: (1..=n)
                .map(|l| Endpoint {
                    address: [10, 0, 0, l].into(),
                    port: 8080,
                    ready: true,
                })
                .collect(),
            upstream: Default::default(),
            policy: Default::default(),
        })
    }

    fn affinity(mode: AffinityMode) -> SessionAffinity {
        SessionAffinity {
            mode,
            cookie: SessionCookie {
                name: "SID".into(),
                path: "/app".into(),
                domain: Some("example.com".into()),
                max_age_secs: Some(60),
                expires_secs: None,
                same_site: Some(portico_model::SameSite::Lax),
                secure: false,
                partitioned: false,
                same_site_none_if_compatible: false,
            },
            change_on_failure: false,
        }
    }

    fn request_with(cookie: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/app", None).unwrap();
        req.insert_header("cookie", format!("other=1; {cookie}"))
            .unwrap();
        req
    }

    /// The `name=value` part of a `Set-Cookie`.
    fn pair(set_cookie: &HeaderValue) -> String {
        set_cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    #[test]
    fn partitioned_and_conditional_same_site_none_attributes() {
        let sessions = StickySessions::new(AffinityKey::new(b"k1").unwrap());
        let (b, tags) = (balancer(4), PoolSessions::default());
        let mut a = affinity(AffinityMode::Persistent);
        a.cookie.same_site = Some(SameSite::None);
        a.cookie.partitioned = true;
        a.cookie.same_site_none_if_compatible = true;
        let pool = ("ns/web:80", &b, &tags);
        let cookie_for = |a: &SessionAffinity, user_agent| {
            let header = sessions
                .set_cookie(a, Pin::Endpoint(1), (true, user_agent), pool)
                .unwrap();
            header.to_str().unwrap().to_string()
        };
        let cookie = |user_agent| cookie_for(&a, user_agent);
        let chrome_120 = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
        let chrome_60 = "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.90 Safari/537.36";
        let ios_12 = "Mozilla/5.0 (iPhone; CPU iPhone OS 12_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/12.1.2 Mobile/15E148 Safari/604.1";
        let text = cookie(Some(chrome_120));
        assert!(
            text.ends_with("; SameSite=None; Secure; HttpOnly; Partitioned"),
            "{text}"
        );
        assert!(cookie(None).contains("SameSite=None"));
        for old in [chrome_60, ios_12] {
            let text = cookie(Some(old));
            assert!(!text.contains("SameSite"), "{old}: {text}");
        }
        a.cookie.same_site_none_if_compatible = false;
        assert!(cookie_for(&a, Some(chrome_60)).contains("SameSite=None"));
    }

    #[test]
    fn a_persistent_cookie_names_its_endpoint_without_its_address_and_forgeries_are_not_recognised()
    {
        let sessions = StickySessions::new(AffinityKey::new(b"k1").unwrap());
        let (b, tags) = (balancer(4), PoolSessions::default());
        let a = affinity(AffinityMode::Persistent);
        let pool = ("ns/web:80", &b, &tags);
        let header = sessions
            .set_cookie(&a, Pin::Endpoint(2), (false, None), pool)
            .unwrap();
        let text = header.to_str().unwrap();
        assert!(
            text.starts_with("SID=")
                && text.contains(
                    "; Path=/app; Domain=example.com; Max-Age=60; SameSite=Lax; HttpOnly"
                ),
            "{text}"
        );
        assert!(!text.contains("10.0.0") && !text.contains("8080"), "{text}");
        assert_eq!(
            sessions.pinned(&a, &request_with(&pair(&header)), pool),
            Some(Pin::Endpoint(2))
        );
        assert_eq!(
            sessions.pinned(
                &a,
                &request_with("SID=00000000000000000000000000000000"),
                pool
            ),
            None
        );
        let other_key = StickySessions::new(AffinityKey::new(b"k2").unwrap());
        assert_eq!(
            other_key.pinned(
                &a,
                &request_with(&pair(&header)),
                (pool.0, &b, &PoolSessions::default())
            ),
            None
        );
        // A policy change makes a new pool for the same Service port: sessions survive.
        assert_eq!(
            sessions.pinned(
                &a,
                &request_with(&pair(&header)),
                ("ns/web:80", &b, &PoolSessions::default())
            ),
            Some(Pin::Endpoint(2))
        );
        assert!(sessions
            .set_cookie(&a, Pin::Endpoint(2), (true, None), pool)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("; Secure"));
    }

    #[test]
    fn a_balanced_cookie_is_a_tagged_ring_key() {
        let sessions = StickySessions::new(AffinityKey::built_in());
        let (b, tags) = (balancer(5), PoolSessions::default());
        let a = affinity(AffinityMode::Balanced);
        let pool = ("ns/web:80", &b, &tags);
        let (index, pin) = sessions
            .choose(AffinityMode::Balanced, None, &b, b"", &[])
            .unwrap();
        let header = sessions
            .set_cookie(&a, pin.unwrap(), (false, None), pool)
            .unwrap();
        let pinned = sessions.pinned(&a, &request_with(&pair(&header)), pool);
        assert_eq!(pinned, pin);
        for _ in 0..10 {
            assert_eq!(
                sessions.choose(AffinityMode::Balanced, pinned, &b, b"", &[]),
                Some((index, None))
            );
        }
        let mut forged = pair(&header);
        forged.replace_range(
            forged.len() - 1..,
            if forged.ends_with('0') { "1" } else { "0" },
        );
        assert_eq!(
            sessions.pinned(&a, &request_with(&forged), pool),
            None,
            "{forged}"
        );
        let Some(Pin::Key(k)) = sessions.pin_for(AffinityMode::Balanced, &b, 3) else {
            panic!("a key for endpoint 3")
        };
        assert_eq!(b.pick_on_ring(&k.to_be_bytes(), &[]), Some(3));
    }
}
