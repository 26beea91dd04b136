//! Text with ingress-nginx's variables (`$name` or `${name}`): the keys of
//! `upstream-hash-by` and `auth-cache-key`, and the URLs of `auth-url` and `auth-signin`.
//! Parsed here so that the controller can reject a bad template and the proxy can render
//! one without parsing per request.

use serde::{Deserialize, Serialize};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TemplatePart {
    Text(String),
    /// The client address (`$remote_addr`, `$binary_remote_addr`).
    RemoteAddr,
    /// The request's host without its port (`$host`).
    Host,
    /// The request's host as sent, port included (`$http_host`, `$best_http_host`).
    HttpHost,
    /// `http` or `https` (`$scheme`, `$pass_access_scheme`).
    Scheme,
    /// The port the request came in on (`$server_port`, `$pass_server_port`).
    ServerPort,
    /// The path without the query (`$uri`).
    Uri,
    /// The path and query as sent (`$request_uri`).
    RequestUri,
    /// The path and query with everything but RFC 3986's unreserved characters
    /// percent-encoded (`$escaped_request_uri`), fit to be a query parameter's value.
    EscapedRequestUri,
    /// A request header, lower case with `-` (`$http_x_user` reads `x-user`).
    Header(String),
    Cookie(String),
    /// A query parameter (`$arg_id`).
    Arg(String),
    /// The request's method (`$request_method`).
    Method,
}

/// A parsed template. It travels in the snapshot in this form, so the proxy never parses
/// a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

impl Template {
    /// Fails saying which variable it does not know, or that a `${` is not closed.
    pub fn parse(template: &str) -> Result<Template, String> {
        Template::parse_with(template, |_| None)
    }

    /// As [`Template::parse`], with the variables `known` gives a value for (those of one
    /// route, such as `$service_name`) written in as text.
    pub fn parse_with(
        template: &str,
        known: impl Fn(&str) -> Option<String>,
    ) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| "an unclosed ${".to_string())?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if let Some(value) = known(name) {
                text.push_str(&value);
                rest = after;
                continue;
            }
            let part = variable(name).ok_or_else(|| format!("unknown variable ${name}"))?;
            if !text.is_empty() {
                parts.push(TemplatePart::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(TemplatePart::Text(text));
        }
        Ok(Template { parts })
    }

    /// The template's text when it has no variables.
    pub fn as_text(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [TemplatePart::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The template with a URL's credentials replaced, for messages and the admin API.
    pub fn redacted(&self) -> Template {
        let text = self.to_string();
        Template::parse(&crate::redact_userinfo(&text)).unwrap_or_else(|_| self.clone())
    }

    /// The template with each variable replaced by `value(part)`.
    pub fn render_with(&self, mut value: impl FnMut(&TemplatePart) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => out.push_str(t),
                variable => out.push_str(&value(variable)),
            }
        }
        out
    }
}

/// Written back in `${name}` form, so that a message can quote what was configured.
impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in &self.parts {
            match part {
                TemplatePart::Text(t) => f.write_str(t)?,
                TemplatePart::RemoteAddr => f.write_str("${remote_addr}")?,
                TemplatePart::Host => f.write_str("${host}")?,
                TemplatePart::HttpHost => f.write_str("${http_host}")?,
                TemplatePart::Scheme => f.write_str("${scheme}")?,
                TemplatePart::ServerPort => f.write_str("${server_port}")?,
                TemplatePart::Uri => f.write_str("${uri}")?,
                TemplatePart::RequestUri => f.write_str("${request_uri}")?,
                TemplatePart::EscapedRequestUri => f.write_str("${escaped_request_uri}")?,
                TemplatePart::Header(h) => write!(f, "${{http_{}}}", h.replace('-', "_"))?,
                TemplatePart::Cookie(c) => write!(f, "${{cookie_{c}}}")?,
                TemplatePart::Arg(a) => write!(f, "${{arg_{a}}}")?,
                TemplatePart::Method => f.write_str("${request_method}")?,
            }
        }
        Ok(())
    }
}

fn variable(name: &str) -> Option<TemplatePart> {
    let named = |prefix: &str| {
        name.strip_prefix(prefix)
            .filter(|n| !n.is_empty())
            .map(str::to_ascii_lowercase)
    };
    Some(match name {
        "remote_addr" | "binary_remote_addr" => TemplatePart::RemoteAddr,
        "host" => TemplatePart::Host,
        "http_host" | "best_http_host" => TemplatePart::HttpHost,
        "scheme" | "pass_access_scheme" => TemplatePart::Scheme,
        "server_port" | "pass_server_port" => TemplatePart::ServerPort,
        "uri" => TemplatePart::Uri,
        "request_uri" => TemplatePart::RequestUri,
        "escaped_request_uri" => TemplatePart::EscapedRequestUri,
        "request_method" => TemplatePart::Method,
        _ => {
            if let Some(h) = named("http_") {
                TemplatePart::Header(h.replace('_', "-"))
            } else if let Some(c) = named("cookie_") {
                TemplatePart::Cookie(c)
            } else if let Some(a) = named("arg_") {
                TemplatePart::Arg(a)
            } else {
                return None;
            }
        }
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters, as nginx's
/// `set_escape_uri` does for `$escaped_request_uri`.
pub fn escape_uri_component(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn variables_a_caller_knows_are_written_in_as_text() {
        let t = Template::parse_with("HTTP $request_method ${service_name} $uri", |n| {
            (n == "service_name").then(|| "web".to_string())
        })
        .unwrap();
        assert_eq!(
            t.parts,
            vec![
                TemplatePart::Text("HTTP ".into()),
                TemplatePart::Method,
                TemplatePart::Text(" web ".into()),
                TemplatePart::Uri,
            ]
        );
        assert_eq!(t.to_string(), "HTTP ${request_method} web ${uri}");
        assert!(Template::parse("$service_name").is_err());
    }

    use super::*;

    #[test]
    fn parses_variables_and_text() {
        let k = Template::parse("u-$http_x_user/${cookie_session}$arg_id:$remote_addr").unwrap();
        assert_eq!(
            k.parts,
            vec![
                TemplatePart::Text("u-".into()),
                TemplatePart::Header("x-user".into()),
                TemplatePart::Text("/".into()),
                TemplatePart::Cookie("session".into()),
                TemplatePart::Arg("id".into()),
                TemplatePart::Text(":".into()),
                TemplatePart::RemoteAddr,
            ]
        );
        assert_eq!(
            Template::parse("$request_uri").unwrap().parts,
            vec![TemplatePart::RequestUri]
        );
        assert_eq!(
            Template::parse("$unknown").unwrap_err(),
            "unknown variable $unknown"
        );
        assert!(Template::parse("${host").is_err());
        assert!(Template::parse("$http_").is_err());
    }

    #[test]
    fn the_variables_of_oauth2_proxy_urls_are_known() {
        let t = Template::parse("https://$host/oauth2/start?rd=$escaped_request_uri").unwrap();
        assert_eq!(
            t.parts,
            vec![
                TemplatePart::Text("https://".into()),
                TemplatePart::Host,
                TemplatePart::Text("/oauth2/start?rd=".into()),
                TemplatePart::EscapedRequestUri,
            ]
        );
        let t = Template::parse("$pass_access_scheme://$best_http_host:$server_port").unwrap();
        assert_eq!(
            t.parts,
            vec![
                TemplatePart::Scheme,
                TemplatePart::Text("://".into()),
                TemplatePart::HttpHost,
                TemplatePart::Text(":".into()),
                TemplatePart::ServerPort,
            ]
        );
        assert_eq!(t.as_text(), None);
        assert_eq!(
            Template::parse("http://a.test/").unwrap().as_text(),
            Some("http://a.test/")
        );
    }

    #[test]
    fn a_template_is_written_back_as_it_parses() {
        let source = "https://$host:${server_port}/x?u=$http_x_user&c=$cookie_s&a=$arg_id$scheme$uri$request_uri$escaped_request_uri$remote_addr$http_host";
        let t = Template::parse(source).unwrap();
        assert_eq!(Template::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn escaping_keeps_only_unreserved_characters() {
        let mut out = Vec::new();
        escape_uri_component("/p?x=1&y=é~", &mut out);
        assert_eq!(out, b"%2Fp%3Fx%3D1%26y%3D%C3%A9~");
    }
}
