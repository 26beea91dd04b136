//! `auth-jwt-jwks-url`: key sets fetched from an identity provider and cached per URL,
//! across snapshots. A request waits for a fetch only when there are no keys yet, or
//! when its token names a key the cached set lacks (a rotation) and the set is older
//! than [`UNKNOWN_KID_REFETCH`]; otherwise a set older than [`REFRESH`] is refreshed in
//! the background while the cached one serves. Every fetch is bounded by [`TIMEOUT`];
//! a failed one keeps the keys there were.

use crate::policy::jwt::{self, read_jwks, JwtCheck, Key, Refusal};
use crate::upstream::fetch::{self, text};
use arc_swap::ArcSwapOption;
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use portico_model::redact_userinfo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a fetched key set serves before it is refreshed in the background.
pub const REFRESH: Duration = Duration::from_secs(300);
/// How soon after a fetch a token with an unknown `kid` may cause another.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// How long a fetch may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// URLs remembered at most; past this the cache starts over.
const MAX_URLS: usize = 1_000;

/// The key sets of every JWKS URL the routes name. Owned by the proxy service.
pub struct JwksCache {
    sets: Mutex<HashMap<String, Arc<RemoteKeySet>>>,
    connector: Arc<Connector>,
    /// [`UNKNOWN_KID_REFETCH`], shorter in tests.
    refetch_after: Duration,
}

#[derive(Default)]
struct RemoteKeySet {
    keys: ArcSwapOption<Vec<Key>>,
    /// When the last fetch was attempted, successful or not.
    attempted: Mutex<Option<Instant>>,
    /// One fetch at a time; requests that need keys wait for it.
    fetching: tokio::sync::Mutex<()>,
}

/// Why the keys are wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any keys will do.
    Any,
    /// The token names a key the cached set lacks.
    Newer,
}

impl Default for JwksCache {
    fn default() -> Self {
        JwksCache {
            sets: Mutex::default(),
            connector: Arc::new(Connector::new(None)),
            refetch_after: UNKNOWN_KID_REFETCH,
        }
    }
}

impl JwksCache {
    /// The keys of `url`, fetched first when `need` calls for it (see the module comment).
    /// `None` when there are none: the URL never answered with a usable set.
    pub(crate) async fn keys(&self, url: &str, need: Need) -> Option<Arc<Vec<Key>>> {
        let set = self.set(url);
        let age = set.age();
        let current = set.keys.load_full();
        let must_fetch = (current.is_none() || need == Need::Newer)
            && age.is_none_or(|a| a >= self.refetch_after);
        if must_fetch {
            let _one = set.fetching.lock().await;
            // Another request may have fetched while this one waited.
            if set.age().is_none_or(|a| a >= self.refetch_after) {
                set.fetch(&self.connector, url).await;
            }
        } else if age.is_some_and(|a| a >= REFRESH) {
            let (set, connector, url) = (
                Arc::clone(&set),
                Arc::clone(&self.connector),
                url.to_string(),
            );
            tokio::spawn(async move {
                if let Ok(_one) = set.fetching.try_lock() {
                    if set.age().is_some_and(|a| a >= REFRESH) {
                        set.fetch(&connector, &url).await;
                    }
                }
            });
        }
        set.keys.load_full()
    }

    /// The request's bearer token checked against the key set of `url` (see
    /// [`JwtCheck::verify_with`]). A token naming a key the cached set lacks gets one
    /// newer set: the provider may have rotated its keys since they were fetched. `None`
    /// when no usable set was ever fetched.
    pub(crate) async fn verify(
        &self,
        check: &JwtCheck,
        url: &str,
        req: &RequestHeader,
        now: u64,
    ) -> Option<Result<Vec<(HeaderName, Option<HeaderValue>)>, Refusal>> {
        let keys = self.keys(url, Need::Any).await?;
        Some(match check.verify_with(&keys, req, now) {
            Err(jwt::UNKNOWN_KID) => match self.keys(url, Need::Newer).await {
                Some(newer) if !Arc::ptr_eq(&newer, &keys) => check.verify_with(&newer, req, now),
                _ => Err(jwt::UNKNOWN_KID),
            },
            other => other,
        })
    }

    fn set(&self, url: &str) -> Arc<RemoteKeySet> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.get(url) {
            return Arc::clone(set);
        }
        if sets.len() >= MAX_URLS {
            sets.clear();
        }
        Arc::clone(sets.entry(url.to_string()).or_default())
    }
}

impl RemoteKeySet {
    fn age(&self) -> Option<Duration> {
        self.attempted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|at| at.elapsed())
    }

    async fn fetch(&self, connector: &Connector, url: &str) {
        *self.attempted.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        match tokio::time::timeout(TIMEOUT, download(connector, url)).await {
            Ok(Ok(text)) => match read_jwks(&text) {
                Ok(keys) => {
                    tracing::debug!(url = %redact_userinfo(url), keys = keys.len(), "JWKS fetched");
                    self.keys.store(Some(Arc::new(keys)));
                }
                Err(why) => {
                    tracing::warn!(url = %redact_userinfo(url), why, "JWKS unusable; the keys there were stay")
                }
            },
            Ok(Err(why)) => {
                tracing::warn!(url = %redact_userinfo(url), why, "JWKS fetch failed; the keys there were stay")
            }
            Err(_) => {
                tracing::warn!(url = %redact_userinfo(url), timeout_ms = TIMEOUT.as_millis() as u64, "JWKS fetch timed out; the keys there were stay")
            }
        }
    }
}

/// GETs `url` (http, or https with the certificate verified against the system's roots).
async fn download(connector: &Connector, url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(text)?;
    let tls = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or("no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(text)?
        .next()
        .ok_or("no address")?;
    let peer = HttpPeer::new(addr, tls, host.clone());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(text)?;
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    req.insert_header(header::HOST, authority).map_err(text)?;
    req.insert_header(header::ACCEPT, "application/json")
        .map_err(text)?;
    let (answer, body) = fetch::exchange(connector, &peer, req, None, MAX_JWKS_BYTES).await?;
    if answer.status != 200 {
        return Err(format!("status {}", answer.status.as_u16()));
    }
    String::from_utf8(body.to_vec()).map_err(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A JWKS of one Ed25519 key with this `kid`.
    fn jwks(kid: &str) -> String {
        let key = openssl::pkey::PKey::generate_ed25519().unwrap();
        let x = openssl::base64::encode_block(&key.raw_public_key().unwrap())
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_");
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}]})
            .to_string()
    }

    /// Serves whatever `body` holds at the time of each request, on 127.0.0.1.
    async fn server(body: Arc<Mutex<String>>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = body.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = stream.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
                });
            }
        });
        addr
    }

    fn kids(keys: &Option<Arc<Vec<Key>>>) -> Vec<String> {
        keys.iter()
            .flat_map(|k| k.iter())
            .filter_map(|k| k.kid().map(str::to_string))
            .collect()
    }

    #[tokio::test]
    async fn keys_are_cached_refetched_for_an_unknown_kid_and_kept_when_a_fetch_fails() {
        let body = Arc::new(Mutex::new(jwks("a")));
        let url = format!("http://{}/jwks", server(body.clone()).await);
        let cache = JwksCache {
            refetch_after: Duration::ZERO,
            ..JwksCache::default()
        };
        assert_eq!(
            kids(&cache.keys(&url, Need::Any).await),
            ["a"],
            "fetched on first use"
        );
        *body.lock().unwrap() = jwks("b");
        assert_eq!(
            kids(&cache.keys(&url, Need::Any).await),
            ["a"],
            "served from the cache"
        );
        assert_eq!(
            kids(&cache.keys(&url, Need::Newer).await),
            ["b"],
            "a token naming another key fetches again"
        );
        *body.lock().unwrap() = "not json".into();
        assert_eq!(
            kids(&cache.keys(&url, Need::Newer).await),
            ["b"],
            "a failed fetch keeps the keys there were"
        );

        let patient = JwksCache::default();
        assert_eq!(
            kids(&patient.keys(&url, Need::Any).await),
            Vec::<String>::new(),
            "nothing usable: no keys"
        );
        *body.lock().unwrap() = jwks("c");
        assert!(
            patient.keys(&url, Need::Newer).await.is_none(),
            "no second try within the refetch interval"
        );
    }
}
