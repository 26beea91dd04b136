//! `request-headers-*` and `response-headers-*` (and `custom-headers`): header names and
//! values parsed once per snapshot, applied to each request or response in the order
//! remove, set, add. Also the hop-by-hop fields an upstream's response must not pass on.

use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use portico_model::{HeaderChanges, HeaderEdits};

#[derive(Debug, Default)]
pub struct CompiledHeaderEdits {
    pub request: Changes,
    pub response: Changes,
}

#[derive(Debug, Default)]
pub struct Changes {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// A request or response header, to edit the same way. Pingora keeps the case of names
/// beside the map, so edits go through its methods rather than the map.
pub trait EditableHeader {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()>;
}

/// Pingora's two header types have the same methods under the same names, without a
/// shared trait.
macro_rules! editable_header {
    ($header:ty) => {
        impl EditableHeader for $header {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.append_header(name, value).map(|_| ())
            }
        }
    };
}

editable_header!(RequestHeader);
editable_header!(ResponseHeader);

impl Changes {
    fn compile(c: &HeaderChanges) -> Result<Self, String> {
        let name = |n: &String| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("header name {n:?}"))
        };
        let pair = |(n, v): &(String, String)| {
            Ok((
                name(n)?,
                HeaderValue::from_str(v).map_err(|_| format!("value of header {n:?}"))?,
            ))
        };
        Ok(Changes {
            remove: c.remove.iter().map(name).collect::<Result<_, _>>()?,
            set: c.set.iter().map(pair).collect::<Result<_, String>>()?,
            add: c.add.iter().map(pair).collect::<Result<_, String>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, header: &mut impl EditableHeader) -> pingora::Result<()> {
        for name in &self.remove {
            header.remove(name);
        }
        for (name, value) in &self.set {
            header.insert(name.clone(), value.clone())?;
        }
        for (name, value) in &self.add {
            header.append(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

impl CompiledHeaderEdits {
    pub fn compile(e: &HeaderEdits) -> Result<Self, String> {
        Ok(CompiledHeaderEdits {
            request: Changes::compile(&e.request)?,
            response: Changes::compile(&e.response)?,
        })
    }
}

/// Removes from an upstream's response the fields its `Connection` header names and the
/// standard hop-by-hop fields that describe only the upstream connection. Pingora writes
/// the framing (`Connection`, `Transfer-Encoding`) of the client's connection itself.
pub fn strip_hop_by_hop(response: &mut ResponseHeader) {
    if response.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    // One pass over the names; nothing is allocated unless something must go.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in response.headers.iter() {
        if name == http::header::CONNECTION {
            let tokens = value
                .as_bytes()
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii);
            let named = tokens.filter(|t| {
                !t.is_empty()
                    && !CONNECTION_OPTIONS
                        .iter()
                        .any(|o| t.eq_ignore_ascii_case(o.as_bytes()))
            });
            doomed.extend(
                named
                    .filter_map(|t| HeaderName::from_bytes(t).ok())
                    .take(16),
            );
        } else if HOP_BY_HOP.contains(&name.as_str()) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        response.remove_header(name);
    }
}

/// Fields that describe only the connection they arrived on.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];
/// `Connection` options that are not field names.
const CONNECTION_OPTIONS: &[&str] = &["close", "keep-alive", "upgrade"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_remove_then_set_then_add() {
        let edits = CompiledHeaderEdits::compile(&HeaderEdits {
            request: HeaderChanges {
                remove: vec!["x-debug".into()],
                set: vec![("x-env".into(), "prod".into())],
                add: vec![("x-tag".into(), "b".into())],
            },
            response: HeaderChanges::default(),
        })
        .unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in [
            ("x-debug", "1"),
            ("x-env", "dev"),
            ("x-env", "qa"),
            ("x-tag", "a"),
        ] {
            req.append_header(n, v).unwrap();
        }
        edits.request.apply(&mut req).unwrap();
        assert!(req.headers.get("x-debug").is_none());
        assert_eq!(
            req.headers.get_all("x-env").iter().collect::<Vec<_>>(),
            ["prod"]
        );
        assert_eq!(
            req.headers.get_all("x-tag").iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(edits.response.is_empty());
    }

    #[test]
    fn upstream_hop_by_hop_fields_stop_at_the_proxy() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (n, v) in [
            ("connection", "keep-alive, X-Internal"),
            ("x-internal", "secret"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ] {
            resp.append_header(n, v).unwrap();
        }
        strip_hop_by_hop(&mut resp);
        assert!(
            resp.headers.get("x-internal").is_none() && resp.headers.get("keep-alive").is_none()
        );
        assert_eq!(resp.headers.get("x-kept").unwrap(), "1");
    }
}
