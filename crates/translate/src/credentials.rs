//! Basic-auth Secrets (`auth-secret`) read into users and password hashes. Only hash
//! formats the proxy verifies pass: bcrypt (`$2y$`, `$2b$`, `$2a$`), Apache's MD5
//! (`$apr1$`) and `{SHA}`. Anything else, a plain-text password above all, is refused.

use crate::secret::value;
use k8s_openapi::api::core::v1::Secret;
use portico_model::Credential;
use std::collections::BTreeMap;

/// `auth-secret-type`: where the users are in the Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SecretLayout {
    /// htpasswd lines in the key `auth`.
    File,
    /// One key per user, its value the hash.
    Map,
}

/// Why a line or key could not be used; reported, and that user left out.
pub(crate) type Rejected = String;

/// The key `auth-file` Secrets hold their htpasswd lines in.
const AUTH_FILE_KEY: &str = "auth";

/// The users of a basic-auth Secret (`name` is its `namespace/name`), and what was
/// rejected. An error when nothing usable is there.
pub(crate) fn read(
    name: &str,
    secret: &Secret,
    layout: SecretLayout,
) -> Result<(Vec<Credential>, Vec<Rejected>), String> {
    let mut rejected = Vec::new();
    // (user, hash, where it was found)
    let mut entries: Vec<(String, String, String)> = Vec::new();
    match layout {
        SecretLayout::File => {
            let file = value(secret, AUTH_FILE_KEY)
                .ok_or_else(|| format!("secret {name}: key {AUTH_FILE_KEY:?} is missing"))?;
            let text = std::str::from_utf8(file)
                .map_err(|_| format!("secret {name}: key {AUTH_FILE_KEY:?} is not text"))?;
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            {
                match line.split_once(':') {
                    Some((user, hash)) => entries.push((
                        user.to_string(),
                        hash.to_string(),
                        format!("line {}", i + 1),
                    )),
                    None => rejected.push(format!("secret {name}: line {}: not user:hash", i + 1)),
                }
            }
        }
        SecretLayout::Map => {
            let data = secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()));
            let string_data = secret
                .string_data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
            for (user, hash) in data.chain(string_data) {
                match String::from_utf8(hash) {
                    Ok(hash) => entries.push((user.clone(), hash, format!("key {user:?}"))),
                    Err(_) => {
                        rejected.push(format!("secret {name}: key {user:?}: the hash is not text"))
                    }
                }
            }
        }
    }
    let mut users = BTreeMap::new();
    for (user, hash, at) in entries {
        let (user, hash) = (user.trim(), hash.trim());
        if user.is_empty() || user.contains(':') {
            rejected.push(format!(
                "secret {name}: {at}: user name {user:?} is empty or holds ':'"
            ));
        } else if let Err(why) = check_hash(hash) {
            rejected.push(format!("secret {name}: {at}: user {user:?}: {why}"));
        } else {
            users.insert(user.to_string(), hash.to_string());
        }
    }
    if users.is_empty() {
        let why = rejected
            .first()
            .cloned()
            .unwrap_or_else(|| format!("secret {name} holds no users"));
        return Err(why);
    }
    Ok((
        users
            .into_iter()
            .map(|(user, hash)| Credential { user, hash })
            .collect(),
        rejected,
    ))
}

/// The highest bcrypt cost taken. Each failed login costs 2^cost rounds of the proxy's CPU
/// (about 250 ms at 12, an hour at 26): a higher one in a Secret would let any client tie
/// up the proxy by sending wrong passwords. `htpasswd -B` writes 5 unless told otherwise.
const MAX_BCRYPT_COST: u32 = 12;

/// Whether the proxy can verify this hash.
fn check_hash(hash: &str) -> Result<(), &'static str> {
    let bcrypt = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p));
    if bcrypt {
        // $2y$NN$ + 53 characters of salt and hash.
        let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
        return match cost {
            Some(c) if hash.len() == 60 && (4..=MAX_BCRYPT_COST).contains(&c) => Ok(()),
            Some(c) if hash.len() == 60 && c > MAX_BCRYPT_COST && c <= 31 => {
                Err("a bcrypt cost above 12: each failed login would hold the proxy's CPU for seconds or more; re-hash with htpasswd -B -C 12 or lower")
            }
            _ => Err("a malformed bcrypt hash"),
        };
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        return match rest.split_once('$') {
            Some((salt, digest)) if !salt.is_empty() && salt.len() <= 8 && digest.len() == 22 => {
                Ok(())
            }
            _ => Err("a malformed apr1 hash"),
        };
    }
    if let Some(digest) = hash.strip_prefix("{SHA}") {
        return if digest.len() == 28
            && openssl::base64::decode_block(digest).is_ok_and(|d| d.len() == 20)
        {
            Ok(())
        } else {
            Err("a malformed {SHA} hash")
        };
    }
    Err("not a bcrypt ($2y$), apr1 ($apr1$) or {SHA} hash; plain-text and crypt(3) passwords are refused")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    const BCRYPT: &str = "$2y$05$6B7Jm0X8xO2mRX5r8YQ0ROiU0z1m0t3sZp9n0VJmYv2f8C1qk3Vxa";

    #[test]
    fn bcrypt_costs_that_would_stall_the_proxy_are_refused() {
        let at = |cost: &str| {
            format!("alice:$2y${cost}$6B7Jm0X8xO2mRX5r8YQ0ROiU0z1m0t3sZp9n0VJmYv2f8C1qk3Vxa")
        };
        assert!(read(
            "ns/auth",
            &secret(&[("auth", &at("12"))]),
            SecretLayout::File
        )
        .is_ok());
        let refused = read(
            "ns/auth",
            &secret(&[("auth", &at("13"))]),
            SecretLayout::File,
        )
        .unwrap_err();
        assert!(refused.contains("a bcrypt cost above 12"), "{refused}");
        let refused = read(
            "ns/auth",
            &secret(&[("auth", &at("31"))]),
            SecretLayout::File,
        )
        .unwrap_err();
        assert!(refused.contains("a bcrypt cost above 12"), "{refused}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn lines() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                "[a-z:]{0,8}:\\$2[aby]\\$[0-9]{2}\\$[./A-Za-z0-9]{53}",
                "[a-z]{0,8}:\\$apr1\\$[a-z]{0,9}\\$[./A-Za-z0-9]{0,24}",
                "[a-z]{0,8}:\\{SHA\\}[A-Za-z0-9+/=]{0,30}",
                "#.{0,10}",
                ".{0,40}",
            ];
            proptest::collection::vec(line, 0..8).prop_map(|l| l.join("\n"))
        }

        proptest! {
            /// Any htpasswd text: users with usable hashes, the rest named as rejected.
            #[test]
            fn any_htpasswd_text_is_read_or_refused(text in lines()) {
                if let Ok((users, _)) = read("ns/auth", &secret(&[("auth", &text)]), SecretLayout::File) {
                    for c in users {
                        prop_assert!(check_hash(&c.hash).is_ok());
                        prop_assert!(!c.user.is_empty() && !c.user.contains(':'));
                    }
                }
            }
        }
    }

    #[test]
    fn htpasswd_lines_with_known_hashes_pass_and_the_rest_is_named() {
        let file = format!("alice:{BCRYPT}\nbob:$apr1$s4ltS4lt$CBftm/Gc1GsAc.A7xS.6W/\n# comment\ncarol:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\nmallory:plaintext\nnocolon\n");
        let (users, rejected) =
            read("ns/auth", &secret(&[("auth", &file)]), SecretLayout::File).unwrap();
        let names: Vec<&str> = users.iter().map(|c| c.user.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(
            rejected
                .iter()
                .any(|r| r.contains("line 5") && r.contains("mallory") && r.contains("plain-text")),
            "{rejected:?}"
        );
        assert!(
            rejected.iter().any(|r| r.contains("line 6")),
            "{rejected:?}"
        );
    }

    #[test]
    fn an_auth_map_has_one_user_per_key_and_an_unusable_secret_is_an_error() {
        let (users, _) = read(
            "ns/m",
            &secret(&[("dave", "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=")]),
            SecretLayout::Map,
        )
        .unwrap();
        assert_eq!(users[0].user, "dave");
        let err = read("ns/m", &secret(&[("other", "x")]), SecretLayout::File).unwrap_err();
        assert!(err.contains("ns/m") && err.contains("\"auth\""), "{err}");
        let err = read(
            "ns/m",
            &secret(&[("auth", "eve:secret\n")]),
            SecretLayout::File,
        )
        .unwrap_err();
        assert!(err.contains("eve"), "{err}");
    }
}
