//! Who may use a route: a refused policy (503), then source ranges (403), then basic
//! auth (401 with a challenge) and external auth (`satisfy: any` lets either admit).
//! Each step fails closed: an address that cannot be told is outside every allowlist,
//! and an unreadable `Authorization` header is no credential.

use crate::listener::forwarded::Cidr;
use crate::policy::external_auth::ExternalAuthCheck;
use crate::policy::jwt::JwtCheck;
use http::header::{self, HeaderValue};
use openssl::hash::{hash, MessageDigest};
use pingora::http::RequestHeader;
use portico_model::AccessPolicy;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Successful bcrypt checks remembered, so that a signed-in client does not pay bcrypt
/// (milliseconds by design) on every request. Failures are never remembered.
const VERIFIED_CACHE_ENTRIES: usize = 4096;

/// What the access policy says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The policy could not be built from its annotations: 503.
    Unavailable,
    /// Source address not allowed: 403.
    Forbidden,
    /// No valid credentials: 401 with this `WWW-Authenticate`.
    Unauthorized(HeaderValue),
    /// The external auth service decides.
    AskExternal,
    /// Basic auth needs a bcrypt comparison first: the caller runs it off the worker
    /// thread ([`crate::policy::password_checks::PasswordChecks`]) and hands the result to
    /// [`CompiledAccess::check_with_password`].
    VerifyPassword(PendingPassword),
}

/// A bcrypt comparison basic auth is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPassword {
    pub password: String,
    pub hash: String,
    /// What a success is remembered under.
    key: [u8; 32],
}

#[cfg(test)]
impl PendingPassword {
    pub fn for_test(password: &str, hash: &str) -> Self {
        PendingPassword {
            password: password.into(),
            hash: hash.into(),
            key: [0; 32],
        }
    }
}

/// What basic auth says of a request's credentials.
enum Admission {
    Decided(bool),
    Bcrypt(PendingPassword),
}

pub struct CompiledAccess {
    refuse: bool,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    basic: Option<BasicCheck>,
    pub external: Option<ExternalAuthCheck>,
    /// A bearer JWT, needed whatever the other checks say.
    pub jwt: Option<JwtCheck>,
    satisfy_any: bool,
}

struct BasicCheck {
    challenge: HeaderValue,
    users: HashMap<String, PasswordHash>,
    /// SHA-256 of (user, hash, password) for recent successful bcrypt checks.
    verified: Mutex<std::collections::HashSet<[u8; 32]>>,
}

enum PasswordHash {
    Bcrypt(String),
    /// The full `$apr1$salt$digest` and the salt.
    Apr1 {
        full: String,
        salt: String,
    },
    Sha1(Vec<u8>),
}

impl PasswordHash {
    fn parse(h: &str) -> Option<Self> {
        if h.starts_with("$2y$") || h.starts_with("$2b$") || h.starts_with("$2a$") {
            return Some(PasswordHash::Bcrypt(h.to_string()));
        }
        if let Some(rest) = h.strip_prefix("$apr1$") {
            let (salt, _) = rest.split_once('$')?;
            return Some(PasswordHash::Apr1 {
                full: h.to_string(),
                salt: salt.to_string(),
            });
        }
        let digest = openssl::base64::decode_block(h.strip_prefix("{SHA}")?)
            .ok()
            .filter(|d| d.len() == 20)?;
        Some(PasswordHash::Sha1(digest))
    }
}

impl CompiledAccess {
    pub fn compile(policy: &AccessPolicy) -> Result<Self, String> {
        let basic = match &policy.basic_auth {
            None => None,
            Some(auth) => {
                let challenge = HeaderValue::try_from(format!(
                    "Basic realm=\"{}\", charset=\"UTF-8\"",
                    auth.realm
                ))
                .map_err(|_| format!("basic auth realm {:?} cannot be sent", auth.realm))?;
                let mut users = HashMap::new();
                for c in &auth.users {
                    let hash = PasswordHash::parse(&c.hash).ok_or_else(|| {
                        format!("basic auth user {:?}: unknown hash format", c.user)
                    })?;
                    users.insert(c.user.clone(), hash);
                }
                Some(BasicCheck {
                    challenge,
                    users,
                    verified: Mutex::new(Default::default()),
                })
            }
        };
        let external = policy
            .external_auth
            .as_ref()
            .map(ExternalAuthCheck::compile)
            .transpose()?;
        // A key set Portico cannot use refuses the routes, not the whole snapshot.
        let mut refuse = policy.refuse.is_some();
        let jwt = policy.jwt.as_ref().and_then(|j| {
            JwtCheck::compile(j)
                .inspect_err(|why| {
                    tracing::warn!(why, "the JWKS Secret cannot be used; its routes answer 503");
                    refuse = true;
                })
                .ok()
        });
        Ok(CompiledAccess {
            refuse,
            jwt,
            allow: policy.allow_sources.clone(),
            deny: policy.deny_sources.clone(),
            basic,
            external,
            satisfy_any: policy.satisfy_any,
        })
    }

    /// Whether the client's address matters (so that it is worked out only then).
    pub fn checks_sources(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty()
    }

    /// `client` is the client's address as [`crate::listener::forwarded::client_address`] tells it.
    pub fn check(&self, client: Option<IpAddr>, req: &RequestHeader) -> Verdict {
        self.decide(client, req, None)
    }

    /// The verdict once the bcrypt comparison `pending` (from [`Verdict::VerifyPassword`])
    /// came out `matched`; a match is remembered.
    pub fn check_with_password(
        &self,
        client: Option<IpAddr>,
        req: &RequestHeader,
        pending: &PendingPassword,
        matched: bool,
    ) -> Verdict {
        if let (true, Some(basic)) = (matched, &self.basic) {
            basic.remember(pending.key);
        }
        self.decide(client, req, Some(matched))
    }

    fn decide(
        &self,
        client: Option<IpAddr>,
        req: &RequestHeader,
        password: Option<bool>,
    ) -> Verdict {
        if self.refuse {
            return Verdict::Unavailable;
        }
        if self.checks_sources() {
            let Some(ip) = client else {
                return Verdict::Forbidden;
            };
            if self.deny.iter().any(|c| c.contains(ip))
                || (!self.allow.is_empty() && !self.allow.iter().any(|c| c.contains(ip)))
            {
                return Verdict::Forbidden;
            }
        }
        let basic = match (&self.basic, password) {
            (None, _) => None,
            (Some(_), Some(matched)) => Some(matched),
            (Some(basic), None) => match basic.admits(req) {
                Admission::Decided(admitted) => Some(admitted),
                Admission::Bcrypt(pending) => return Verdict::VerifyPassword(pending),
            },
        };
        match (basic, self.external.is_some(), self.satisfy_any) {
            (Some(true), _, true) | (Some(true), false, _) | (None, false, _) => Verdict::Allow,
            (Some(false), true, true) | (Some(true), true, false) | (None, true, _) => {
                Verdict::AskExternal
            }
            (Some(false), _, _) => Verdict::Unauthorized(
                self.basic
                    .as_ref()
                    .map(|b| b.challenge.clone())
                    .unwrap_or(HeaderValue::from_static("Basic")),
            ),
        }
    }
}

impl BasicCheck {
    /// SHA-1 and APR1 are decided here (microseconds); bcrypt, unless remembered, is
    /// handed back to run off the worker thread (milliseconds to a quarter second).
    fn admits(&self, req: &RequestHeader) -> Admission {
        let Some((user, password)) = credentials(req) else {
            return Admission::Decided(false);
        };
        let Some(stored) = self.users.get(&user) else {
            return Admission::Decided(false);
        };
        Admission::Decided(match stored {
            PasswordHash::Sha1(digest) => hash(MessageDigest::sha1(), password.as_bytes())
                .is_ok_and(|d| openssl::memcmp::eq(&d, digest)),
            PasswordHash::Apr1 { full, salt } => {
                let computed = apr1(password.as_bytes(), salt.as_bytes());
                computed.len() == full.len()
                    && openssl::memcmp::eq(computed.as_bytes(), full.as_bytes())
            }
            PasswordHash::Bcrypt(h) => {
                let key = cache_key(&user, h, &password);
                if self.verified.lock().is_ok_and(|v| v.contains(&key)) {
                    return Admission::Decided(true);
                }
                return Admission::Bcrypt(PendingPassword {
                    password,
                    hash: h.clone(),
                    key,
                });
            }
        })
    }

    fn remember(&self, key: [u8; 32]) {
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= VERIFIED_CACHE_ENTRIES {
                v.clear();
            }
            v.insert(key);
        }
    }
}

fn cache_key(user: &str, hash_text: &str, password: &str) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    for part in [user, hash_text, password] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    h.finish()
}

/// The user and password of an `Authorization: Basic` header.
fn credentials(req: &RequestHeader) -> Option<(String, String)> {
    let value = req
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(openssl::base64::decode_block(token.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Apache's MD5-based crypt (`$apr1$`), as htpasswd -m writes it.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let md5 = |parts: &[&[u8]]| -> [u8; 16] {
        let mut h = openssl::hash::Hasher::new(MessageDigest::md5()).expect("MD5 is available");
        for p in parts {
            let _ = h.update(p);
        }
        let mut out = [0u8; 16];
        if let Ok(d) = h.finish() {
            out.copy_from_slice(&d);
        }
        out
    };
    let alternate = md5(&[password, salt, password]);
    let mut first: Vec<u8> = [password, MAGIC, salt].concat();
    let mut left = password.len();
    while left > 0 {
        first.extend_from_slice(&alternate[..left.min(16)]);
        left = left.saturating_sub(16);
    }
    let mut i = password.len();
    while i > 0 {
        first.push(if i & 1 == 1 {
            0
        } else {
            password.first().copied().unwrap_or(0)
        });
        i >>= 1;
    }
    let mut digest = md5(&[&first]);
    for round in 0..1000 {
        let mut input: Vec<u8> = Vec::with_capacity(64);
        input.extend_from_slice(if round & 1 == 1 { password } else { &digest });
        if round % 3 != 0 {
            input.extend_from_slice(salt);
        }
        if round % 7 != 0 {
            input.extend_from_slice(password);
        }
        input.extend_from_slice(if round & 1 == 1 { &digest } else { password });
        digest = md5(&[&input]);
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::from("$apr1$");
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    let mut push = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let d = |i: usize| u32::from(digest[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push((d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    push(d(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::{BasicAuth, Credential};

    fn policy(users: &[(&str, String)], allow: &str, deny: &str) -> CompiledAccess {
        let basic_auth = (!users.is_empty()).then(|| BasicAuth {
            realm: "Staff".into(),
            users: users
                .iter()
                .map(|(u, h)| Credential {
                    user: u.to_string(),
                    hash: h.clone(),
                })
                .collect(),
        });
        let list = |s: &str| crate::listener::forwarded::parse_list(s).unwrap();
        CompiledAccess::compile(&AccessPolicy {
            allow_sources: list(allow),
            deny_sources: list(deny),
            basic_auth,
            ..Default::default()
        })
        .unwrap()
    }

    fn request(auth: Option<(&str, &str)>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some((u, p)) = auth {
            req.insert_header(
                "authorization",
                format!(
                    "Basic {}",
                    openssl::base64::encode_block(format!("{u}:{p}").as_bytes())
                ),
            )
            .unwrap();
        }
        req
    }

    #[test]
    fn apr1_matches_what_htpasswd_and_openssl_write() {
        // openssl passwd -apr1 -salt s4ltS4lt 'p@ss word'
        assert_eq!(
            apr1(b"p@ss word", b"s4ltS4lt"),
            "$apr1$s4ltS4lt$CBftm/Gc1GsAc.A7xS.6W/"
        );
    }

    #[test]
    fn each_hash_format_admits_its_password_only() {
        let bcrypt = bcrypt::hash_with_salt("b-pass", 4, [7u8; 16])
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let access = policy(
            &[
                ("sha", "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=".into()),
                ("md5", "$apr1$s4ltS4lt$CBftm/Gc1GsAc.A7xS.6W/".into()),
                ("bc", bcrypt),
            ],
            "",
            "",
        );
        let ip = Some("192.0.2.1".parse().unwrap());
        // The verdict, with a bcrypt comparison run here as `PasswordChecks` runs it.
        let settle = |req: &RequestHeader| match access.check(ip, req) {
            Verdict::VerifyPassword(pending) => {
                let matched = bcrypt::verify(&pending.password, &pending.hash).unwrap_or(false);
                access.check_with_password(ip, req, &pending, matched)
            }
            decided => decided,
        };
        assert!(
            matches!(
                access.check(ip, &request(Some(("bc", "b-pass")))),
                Verdict::VerifyPassword(_)
            ),
            "bcrypt is left to the caller, off the worker thread"
        );
        for (user, good) in [("sha", "secret"), ("md5", "p@ss word"), ("bc", "b-pass")] {
            assert_eq!(
                settle(&request(Some((user, good)))),
                Verdict::Allow,
                "{user}"
            );
            assert_eq!(
                access.check(ip, &request(Some((user, good)))),
                Verdict::Allow,
                "{user}, again (remembered for bcrypt, so decided at once)"
            );
            assert!(
                matches!(
                    settle(&request(Some((user, "wrong")))),
                    Verdict::Unauthorized(_)
                ),
                "{user}"
            );
        }
        assert!(
            matches!(
                access.check(ip, &request(Some(("bc", "wrong")))),
                Verdict::VerifyPassword(_)
            ),
            "a failure is never remembered"
        );
        assert!(matches!(
            access.check(ip, &request(Some(("nobody", "secret")))),
            Verdict::Unauthorized(_)
        ));
        let Verdict::Unauthorized(challenge) = access.check(ip, &request(None)) else {
            panic!("no credentials")
        };
        assert_eq!(challenge, "Basic realm=\"Staff\", charset=\"UTF-8\"");
        let mut garbage = RequestHeader::build("GET", b"/", None).unwrap();
        garbage.insert_header("authorization", "Basic !!!").unwrap();
        assert!(matches!(
            access.check(ip, &garbage),
            Verdict::Unauthorized(_)
        ));
    }

    #[test]
    fn source_ranges_allow_deny_and_refuse_the_unknown() {
        let access = policy(&[], "10.0.0.0/8,2001:db8::/32", "10.6.6.0/24");
        let check = |ip: &str| access.check(Some(ip.parse().unwrap()), &request(None));
        assert_eq!(check("10.1.2.3"), Verdict::Allow);
        assert_eq!(check("2001:db8::7"), Verdict::Allow);
        assert_eq!(
            check("10.6.6.6"),
            Verdict::Forbidden,
            "deny wins over allow"
        );
        assert_eq!(check("192.0.2.1"), Verdict::Forbidden);
        assert_eq!(
            access.check(None, &request(None)),
            Verdict::Forbidden,
            "an unknown client is outside every allowlist"
        );
        let refused = CompiledAccess::compile(&AccessPolicy {
            refuse: Some("bad".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            refused.check(Some("10.1.2.3".parse().unwrap()), &request(None)),
            Verdict::Unavailable
        );
    }
}
