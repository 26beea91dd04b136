//! Bearer JWTs (`portico.io/auth-jwt-*`): the signature is checked against the public
//! keys of a JWKS, then `exp`, `nbf`, `iss` and `aud`. Each key is tied to the one
//! algorithm its type allows (RSA to RS256, P-256 to ES256, Ed25519 to EdDSA), so a token
//! cannot choose how its signature is read: `none` and HMAC never verify.

use http::header::{self, HeaderName, HeaderValue};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use pingora::http::RequestHeader;
use portico_model::JwtAuth;
use serde_json::Value;

/// Tokens longer than this are refused unread.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// RSA keys shorter than this are not used.
const MIN_RSA_BITS: u32 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            "EdDSA" => Some(Algorithm::EdDsa),
            _ => None,
        }
    }
}

pub(crate) struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: PKey<Public>,
}

pub struct JwtCheck {
    keys: KeySource,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway_secs: u64,
    claims_to_headers: Vec<(String, HeaderName)>,
}

impl Key {
    #[cfg(test)]
    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}

/// Where a check's keys come from.
enum KeySource {
    /// `auth-jwt-jwks-secret`, read when the snapshot is compiled.
    Fixed(Vec<Key>),
    /// `auth-jwt-jwks-url`, fetched and cached by [`crate::policy::jwks::JwksCache`].
    Url(String),
}

/// Why a token was refused, for the `error_description` of the challenge.
pub type Refusal = &'static str;

/// The refusal when no key has the token's `kid`: a fetched key set may be stale.
pub const UNKNOWN_KID: Refusal = "no key for the token's kid";

/// The signing keys of a JWKS document that Portico can use (see [`read_jwk`]).
pub(crate) fn read_jwks(text: &str) -> Result<Vec<Key>, String> {
    let jwks: Value = serde_json::from_str(text).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys: Vec<Key> = jwks
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(read_jwk)
        .collect();
    if keys.is_empty() {
        return Err(
            "the JWKS has no RSA (2048 bits or more), P-256 or Ed25519 signing key".to_string(),
        );
    }
    Ok(keys)
}

fn base64url(text: &str) -> Option<Vec<u8>> {
    if text
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return None;
    }
    let mut standard: String = text
        .chars()
        .map(|c| {
            if c == '-' {
                '+'
            } else if c == '_' {
                '/'
            } else {
                c
            }
        })
        .collect();
    while !standard.len().is_multiple_of(4) {
        standard.push('=');
    }
    openssl::base64::decode_block(&standard).ok()
}

/// The key a JWK describes, with the algorithm it is for; `None` for keys Portico does
/// not use (other types or curves, short RSA, `use` other than `sig`, an `alg` that
/// disagrees with the key type).
fn read_jwk(jwk: &Value) -> Option<Key> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| field(name).and_then(base64url);
    if field("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let (algorithm, key) = match (field("kty")?, field("crv")) {
        ("RSA", _) => {
            let rsa = Rsa::from_public_components(
                BigNum::from_slice(&bytes("n")?).ok()?,
                BigNum::from_slice(&bytes("e")?).ok()?,
            )
            .ok()?;
            if rsa.n().num_bits() < MIN_RSA_BITS as i32 {
                return None;
            }
            (Algorithm::Rs256, PKey::from_rsa(rsa).ok()?)
        }
        ("EC", Some("P-256")) => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).ok()?;
            let (x, y) = (
                BigNum::from_slice(&bytes("x")?).ok()?,
                BigNum::from_slice(&bytes("y")?).ok()?,
            );
            let ec = EcKey::from_public_key_affine_coordinates(&group, &x, &y).ok()?;
            ec.check_key().ok()?;
            (Algorithm::Es256, PKey::from_ec_key(ec).ok()?)
        }
        ("OKP", Some("Ed25519")) => (
            Algorithm::EdDsa,
            PKey::public_key_from_raw_bytes(&bytes("x")?, Id::ED25519).ok()?,
        ),
        _ => return None,
    };
    if field("alg").is_some_and(|alg| Algorithm::parse(alg) != Some(algorithm)) {
        return None;
    }
    Some(Key {
        kid: field("kid").map(str::to_string),
        algorithm,
        key,
    })
}

impl JwtCheck {
    /// Fails when the JWKS holds no key Portico can use.
    pub fn compile(auth: &JwtAuth) -> Result<Self, String> {
        let keys = match &auth.jwks_url {
            Some(url) => KeySource::Url(url.clone()),
            None => KeySource::Fixed(read_jwks(&auth.jwks)?),
        };
        let claims_to_headers = auth
            .claims_to_headers
            .iter()
            .map(|(claim, name)| {
                Ok((
                    claim.clone(),
                    HeaderName::try_from(name.as_str())
                        .map_err(|_| format!("header name {name:?}"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(JwtCheck {
            keys,
            algorithms: auth
                .algorithms
                .iter()
                .filter_map(|a| Algorithm::parse(a))
                .collect(),
            issuer: auth.issuer.clone(),
            audiences: auth.audiences.clone(),
            leeway_secs: auth.leeway_secs,
            claims_to_headers,
        })
    }

    /// The URL the keys are fetched from, for `auth-jwt-jwks-url`.
    pub fn jwks_url(&self) -> Option<&str> {
        match &self.keys {
            KeySource::Url(url) => Some(url),
            KeySource::Fixed(_) => None,
        }
    }

    /// [`JwtCheck::verify_with`] the keys of the JWKS Secret; a check whose keys come
    /// from a URL needs them passed in.
    pub fn verify(
        &self,
        req: &RequestHeader,
        now: u64,
    ) -> Result<Vec<(HeaderName, Option<HeaderValue>)>, Refusal> {
        match &self.keys {
            KeySource::Fixed(keys) => self.verify_with(keys, req, now),
            KeySource::Url(_) => Err("no keys"),
        }
    }

    /// The request's bearer token, checked against `keys` at `now` (seconds since the
    /// epoch): the headers its claims set on the upstream request, or why it was refused.
    pub(crate) fn verify_with(
        &self,
        keys: &[Key],
        req: &RequestHeader,
        now: u64,
    ) -> Result<Vec<(HeaderName, Option<HeaderValue>)>, Refusal> {
        let authorization = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or("no bearer token")?;
        let token = authorization
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or("no bearer token")?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long");
        }
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a signed JWT");
        };
        let header: Value = base64url(head)
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or("unreadable token header")?;
        if header.get("crit").is_some() {
            return Err("critical token header parameters are not supported");
        }
        let algorithm = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Algorithm::parse)
            .filter(|a| self.algorithms.contains(a))
            .ok_or("signature algorithm not allowed")?;
        let signature = base64url(signature).ok_or("unreadable signature")?;
        let kid = header.get("kid").and_then(Value::as_str);
        let signed = &token.as_bytes()[..head.len() + 1 + body.len()];
        let mut candidates = keys
            .iter()
            .filter(|k| {
                k.algorithm == algorithm && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
            })
            .peekable();
        if kid.is_some() && candidates.peek().is_none() {
            return Err(UNKNOWN_KID);
        }
        if !candidates.any(|k| signature_holds(k, signed, &signature)) {
            return Err("signature does not verify");
        }
        let claims: Value = base64url(body)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("unreadable claims")?;
        self.check_claims(&claims, now)?;
        Ok(self
            .claims_to_headers
            .iter()
            .map(|(claim, name)| {
                let value = match claims.get(claim) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => HeaderValue::try_from(s.as_str()).ok(),
                    Some(other) => HeaderValue::try_from(other.to_string()).ok(),
                };
                (name.clone(), value)
            })
            .collect())
    }

    fn check_claims(&self, claims: &Value, now: u64) -> Result<(), Refusal> {
        let time = |name: &str| {
            claims.get(name).map(|v| {
                v.as_f64()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .map(|t| t as u64)
            })
        };
        match time("exp") {
            None => return Err("token has no exp"),
            Some(None) => return Err("unreadable exp"),
            Some(Some(exp)) if now > exp.saturating_add(self.leeway_secs) => {
                return Err("token expired")
            }
            _ => {}
        }
        match time("nbf") {
            Some(None) => return Err("unreadable nbf"),
            Some(Some(nbf)) if now.saturating_add(self.leeway_secs) < nbf => {
                return Err("token not valid yet")
            }
            _ => {}
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err("wrong issuer");
            }
        }
        if !self.audiences.is_empty() {
            let named = |aud: &str| self.audiences.iter().any(|a| a == aud);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => named(aud),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
                _ => false,
            };
            if !ok {
                return Err("wrong audience");
            }
        }
        Ok(())
    }
}

fn signature_holds(key: &Key, signed: &[u8], signature: &[u8]) -> bool {
    let verify = |digest: Option<MessageDigest>,
                  signature: &[u8]|
     -> Result<bool, openssl::error::ErrorStack> {
        let mut verifier = match digest {
            Some(d) => Verifier::new(d, &key.key)?,
            None => Verifier::new_without_digest(&key.key)?,
        };
        verifier.verify_oneshot(signature, signed)
    };
    match key.algorithm {
        Algorithm::Rs256 => verify(Some(MessageDigest::sha256()), signature).unwrap_or(false),
        Algorithm::EdDsa => verify(None, signature).unwrap_or(false),
        Algorithm::Es256 => {
            // JWS carries r and s as two 32-byte numbers; OpenSSL wants DER.
            if signature.len() != 64 {
                return false;
            }
            let der = BigNum::from_slice(&signature[..32])
                .and_then(|r| Ok((r, BigNum::from_slice(&signature[32..])?)))
                .and_then(|(r, s)| EcdsaSig::from_private_components(r, s))
                .and_then(|sig| sig.to_der());
            der.is_ok_and(|der| verify(Some(MessageDigest::sha256()), &der).unwrap_or(false))
        }
    }
}

/// The `WWW-Authenticate` of a refused token.
pub fn challenge(why: Refusal) -> HeaderValue {
    HeaderValue::try_from(format!(
        "Bearer error=\"invalid_token\", error_description=\"{why}\""
    ))
    .unwrap_or(HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openssl::pkey::Private;
    use openssl::sign::Signer;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        openssl::base64::encode_block(bytes)
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_")
    }

    /// A JWKS entry for `key`, and the token signer for it.
    pub(crate) fn jwk(key: &PKey<Private>, kid: &str) -> Value {
        match key.id() {
            Id::RSA => {
                let rsa = key.rsa().unwrap();
                json!({"kty": "RSA", "kid": kid, "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())})
            }
            Id::EC => {
                let ec = key.ec_key().unwrap();
                let mut ctx = openssl::bn::BigNumContext::new().unwrap();
                let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
                ec.public_key()
                    .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)
                    .unwrap();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())})
            }
            _ => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&key.raw_public_key().unwrap())})
            }
        }
    }

    pub(crate) fn sign(key: &PKey<Private>, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = match key.id() {
            Id::ED25519 => Signer::new_without_digest(key)
                .unwrap()
                .sign_oneshot_to_vec(input.as_bytes())
                .unwrap(),
            Id::EC => {
                let der = Signer::new(MessageDigest::sha256(), key)
                    .unwrap()
                    .sign_oneshot_to_vec(input.as_bytes())
                    .unwrap();
                let sig = EcdsaSig::from_der(&der).unwrap();
                [
                    sig.r().to_vec_padded(32).unwrap(),
                    sig.s().to_vec_padded(32).unwrap(),
                ]
                .concat()
            }
            _ => Signer::new(MessageDigest::sha256(), key)
                .unwrap()
                .sign_oneshot_to_vec(input.as_bytes())
                .unwrap(),
        };
        format!("{input}.{}", b64(&signature))
    }

    fn keys() -> [PKey<Private>; 3] {
        let ec =
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
        [
            PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
            PKey::from_ec_key(ec).unwrap(),
            PKey::generate_ed25519().unwrap(),
        ]
    }

    fn check(jwks: Value) -> JwtCheck {
        JwtCheck::compile(&JwtAuth {
            jwks: jwks.to_string(),
            jwks_url: None,
            issuer: Some("https://idp.test".into()),
            audiences: vec!["api".into()],
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            leeway_secs: 30,
            claims_to_headers: vec![
                ("sub".into(), "x-user".into()),
                ("admin".into(), "x-admin".into()),
            ],
        })
        .unwrap()
    }

    fn bearer(token: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", format!("Bearer {token}"))
            .unwrap();
        req
    }

    const NOW: u64 = 1_800_000_000;

    fn claims() -> Value {
        json!({"iss": "https://idp.test", "aud": ["other", "api"], "sub": "alice", "exp": NOW + 60, "nbf": NOW - 60})
    }

    #[test]
    fn each_algorithm_verifies_with_its_key_and_sets_claim_headers() {
        let keys = keys();
        let check =
            check(json!({"keys": [jwk(&keys[0], "r"), jwk(&keys[1], "e"), jwk(&keys[2], "o")]}));
        for (key, alg, kid) in [
            (&keys[0], "RS256", "r"),
            (&keys[1], "ES256", "e"),
            (&keys[2], "EdDSA", "o"),
        ] {
            let token = sign(key, &json!({"alg": alg, "kid": kid}), &claims());
            let headers = check
                .verify(&bearer(&token), NOW)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(
                headers[0],
                (
                    HeaderName::from_static("x-user"),
                    Some(HeaderValue::from_static("alice"))
                )
            );
            assert_eq!(
                headers[1],
                (HeaderName::from_static("x-admin"), None),
                "an absent claim removes the header"
            );
            // Without a kid, every key of the algorithm is tried.
            let token = sign(key, &json!({"alg": alg}), &claims());
            assert!(
                check.verify(&bearer(&token), NOW).is_ok(),
                "{alg} without kid"
            );
        }
    }

    #[test]
    fn forged_confused_and_stale_tokens_are_refused() {
        let keys = keys();
        let check = check(json!({"keys": [jwk(&keys[0], "r"), jwk(&keys[1], "e")]}));
        let refused = |token: &str, now: u64| check.verify(&bearer(token), now).unwrap_err();
        let good = sign(&keys[0], &json!({"alg": "RS256", "kid": "r"}), &claims());
        let (head, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();

        // Claims changed after signing.
        let forged_claims = b64(
            json!({"iss": "https://idp.test", "aud": "api", "sub": "root", "exp": NOW + 60})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(
            refused(&format!("{head}.{forged_claims}.{signature}"), NOW),
            "signature does not verify"
        );
        // alg none, and HMAC keyed with the public key's bytes.
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(claims().to_string().as_bytes())
        );
        assert_eq!(refused(&none, NOW), "signature algorithm not allowed");
        let hs_input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","kid":"r"}"#),
            b64(claims().to_string().as_bytes())
        );
        let public_pem = keys[0].public_key_to_pem().unwrap();
        let hmac_key = PKey::hmac(&public_pem).unwrap();
        let mac = Signer::new(MessageDigest::sha256(), &hmac_key)
            .unwrap()
            .sign_oneshot_to_vec(hs_input.as_bytes())
            .unwrap();
        assert_eq!(
            refused(&format!("{hs_input}.{}", b64(&mac)), NOW),
            "signature algorithm not allowed"
        );
        // An RSA-signed token that claims ES256, and a key from another set.
        let relabelled = sign(&keys[0], &json!({"alg": "ES256", "kid": "e"}), &claims());
        assert_eq!(refused(&relabelled, NOW), "signature does not verify");
        let stranger = sign(&keys[2], &json!({"alg": "EdDSA"}), &claims());
        assert_eq!(
            refused(&stranger, NOW),
            "signature does not verify",
            "no Ed25519 key in this set"
        );
        // Time, issuer and audience.
        assert_eq!(refused(&good, NOW + 91), "token expired");
        assert!(
            check.verify(&bearer(&good), NOW + 89).is_ok(),
            "within the leeway"
        );
        assert_eq!(refused(&good, NOW - 91), "token not valid yet");
        let sign_claims = |c: Value| sign(&keys[0], &json!({"alg": "RS256"}), &c);
        assert_eq!(
            refused(
                &sign_claims(json!({"iss": "https://idp.test", "aud": "api"})),
                NOW
            ),
            "token has no exp"
        );
        assert_eq!(
            refused(
                &sign_claims(json!({"iss": "https://evil", "aud": "api", "exp": NOW + 60})),
                NOW
            ),
            "wrong issuer"
        );
        assert_eq!(
            refused(
                &sign_claims(json!({"iss": "https://idp.test", "aud": "web", "exp": NOW + 60})),
                NOW
            ),
            "wrong audience"
        );
        // Not a token at all.
        assert_eq!(refused("abc", NOW), "not a signed JWT");
        let mut basic = RequestHeader::build("GET", b"/", None).unwrap();
        basic.insert_header("authorization", "Basic YTpi").unwrap();
        assert_eq!(check.verify(&basic, NOW).unwrap_err(), "no bearer token");
    }

    #[test]
    fn unusable_keys_are_left_out_and_a_set_without_one_is_refused() {
        let short = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        let mut encryption = jwk(&keys()[2], "enc");
        encryption["use"] = json!("enc");
        let set =
            json!({"keys": [jwk(&short, "short"), encryption, {"kty": "oct", "k": "c2VjcmV0"}]});
        let auth = |jwks: &Value| JwtAuth {
            jwks: jwks.to_string(),
            jwks_url: None,
            issuer: None,
            audiences: vec![],
            algorithms: vec!["RS256".into()],
            leeway_secs: 0,
            claims_to_headers: vec![],
        };
        assert!(JwtCheck::compile(&auth(&set)).is_err());
        assert!(JwtCheck::compile(&auth(&json!({"keys": []}))).is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        fn key() -> &'static PKey<Private> {
            static KEY: OnceLock<PKey<Private>> = OnceLock::new();
            KEY.get_or_init(|| PKey::generate_ed25519().unwrap())
        }

        fn checker() -> &'static JwtCheck {
            static CHECK: OnceLock<JwtCheck> = OnceLock::new();
            CHECK.get_or_init(|| check(json!({"keys": [jwk(key(), "k1")]})))
        }

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z0-9_-]{0,60}",
                any::<Vec<u8>>().prop_map(|b| b64(&b)),
                Just(b64(br#"{"alg":"none"}"#)),
                Just(b64(br#"{"alg":"HS256","kid":"k1"}"#)),
                Just(b64(br#"{"alg":"EdDSA","kid":"k1"}"#)),
            ]
        }

        proptest! {
            /// Tokens nobody signed (any header, `none` and HMAC included) are refused,
            /// whatever their shape.
            #[test]
            fn unsigned_and_garbled_tokens_never_verify(
                parts in proptest::collection::vec(segment(), 0..5),
                separator in prop_oneof![Just("."), Just(".."), Just(" ")],
            ) {
                let token = parts.join(separator);
                prop_assert!(checker().verify(&bearer(&token), NOW).is_err(), "{token}");
            }

            /// Changing one character of a signed token's claims makes it fail.
            #[test]
            fn a_changed_claim_is_refused(at in any::<prop::sample::Index>(), with in any::<prop::sample::Index>()) {
                let token = sign(key(), &json!({"alg": "EdDSA", "kid": "k1"}), &claims());
                prop_assert!(checker().verify(&bearer(&token), NOW).is_ok());
                let first = token.find('.').unwrap() + 1;
                let last = token.rfind('.').unwrap();
                // Not the segment's last character, whose low bits base64 may ignore.
                let i = first + at.index(last - first - 1);
                let others: Vec<char> = ('A'..='Z')
                    .chain('a'..='z')
                    .chain('0'..='9')
                    .chain(['_', '-'])
                    .filter(|c| !token[i..].starts_with(*c))
                    .collect();
                let mut changed = token.clone();
                changed.replace_range(i..i + 1, &others[with.index(others.len())].to_string());
                prop_assert!(checker().verify(&bearer(&changed), NOW).is_err(), "{changed}");
            }

            #[test]
            fn any_jwks_text_is_read_or_refused(text in ".{0,200}") {
                let _ = read_jwks(&text);
            }
        }
    }
}
