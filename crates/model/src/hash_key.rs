//! The key template of `upstream-hash-by`, in ingress-nginx's variable syntax: literal
//! text with `$name` or `${name}` variables. Parsed here so that the controller can reject
//! a bad template and the proxy can build keys without parsing per request.

use serde::{Deserialize, Serialize};

/// One piece of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyPart {
    Text(String),
    /// The client address (`$remote_addr`, `$binary_remote_addr`).
    RemoteAddr,
    /// The request's host (`$host`).
    Host,
    /// The path without the query (`$uri`).
    Uri,
    /// The path and query as sent (`$request_uri`).
    RequestUri,
    /// A request header, lower case with `-` (`$http_x_user` reads `x-user`).
    Header(String),
    Cookie(String),
    /// A query parameter (`$arg_id`).
    Arg(String),
}

/// A parsed template. It travels in the snapshot in this form, so the proxy never parses
/// a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HashKey {
    pub parts: Vec<KeyPart>,
}

impl HashKey {
    /// Fails with the variable it does not know.
    pub fn parse(template: &str) -> Result<HashKey, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {template:?}"))?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            let part = variable(name).ok_or_else(|| format!("${name}"))?;
            if !text.is_empty() {
                parts.push(KeyPart::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(KeyPart::Text(text));
        }
        Ok(HashKey { parts })
    }
}

fn variable(name: &str) -> Option<KeyPart> {
    let named = |prefix: &str| {
        name.strip_prefix(prefix)
            .filter(|n| !n.is_empty())
            .map(str::to_ascii_lowercase)
    };
    Some(match name {
        "remote_addr" | "binary_remote_addr" => KeyPart::RemoteAddr,
        "host" => KeyPart::Host,
        "uri" => KeyPart::Uri,
        "request_uri" => KeyPart::RequestUri,
        _ => {
            if let Some(h) = named("http_") {
                KeyPart::Header(h.replace('_', "-"))
            } else if let Some(c) = named("cookie_") {
                KeyPart::Cookie(c)
            } else if let Some(a) = named("arg_") {
                KeyPart::Arg(a)
            } else {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_variables_and_text() {
        let k = HashKey::parse("u-$http_x_user/${cookie_session}$arg_id:$remote_addr").unwrap();
        assert_eq!(
            k.parts,
            vec![
                KeyPart::Text("u-".into()),
                KeyPart::Header("x-user".into()),
                KeyPart::Text("/".into()),
                KeyPart::Cookie("session".into()),
                KeyPart::Arg("id".into()),
                KeyPart::Text(":".into()),
                KeyPart::RemoteAddr,
            ]
        );
        assert_eq!(
            HashKey::parse("$request_uri").unwrap().parts,
            vec![KeyPart::RequestUri]
        );
        assert_eq!(HashKey::parse("$unknown").unwrap_err(), "$unknown");
        assert!(HashKey::parse("${host").is_err());
        assert!(HashKey::parse("$http_").is_err());
    }
}
