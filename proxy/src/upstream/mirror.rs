//! `mirror-target`: a copy of each admitted request goes to another URL from a background
//! task, and its answer is read and dropped. The client's answer never waits for the copy
//! or depends on it: a copy that cannot be made (its body too large, too many copies in
//! flight, the mirror slow or down) is dropped and counted, nothing else.

use crate::routing::request_key::{render, request_host, RequestFacts};
use crate::upstream::fetch::{self, Target, HOP_BY_HOP};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use portico_model::Mirror;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Copies in flight at once, across all routes; more are dropped.
const MAX_IN_FLIGHT: usize = 256;
/// The largest request body copied; a request with a larger one is not mirrored.
pub const MAX_BODY: usize = 1 << 20;
/// How long a copy may take, answer included.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The mirror's answer body is read and dropped, up to this much.
const MAX_ANSWER: usize = 1 << 20;

/// Sends copies: one pooled connector and a bound on copies in flight.
pub struct RequestMirrors {
    connector: Arc<Connector>,
    slots: Arc<Semaphore>,
    dropped: prometheus::IntCounter,
}

impl RequestMirrors {
    /// `dropped` counts copies not sent or not answered.
    pub fn new(dropped: prometheus::IntCounter) -> Self {
        RequestMirrors {
            connector: Arc::new(Connector::new(None)),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            dropped,
        }
    }

    /// Counts a copy that could not be made.
    pub fn dropped(&self) {
        self.dropped.inc();
    }

    /// Sends `copy` with `body` in the background, unless too many are in flight.
    pub fn send(&self, copy: MirrorCopy, body: Option<Bytes>) {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.dropped.inc();
            return;
        };
        let connector = Arc::clone(&self.connector);
        let dropped = self.dropped.clone();
        tokio::spawn(async move {
            let exchange = async {
                let peer = copy.target.peer().await?;
                fetch::exchange(&connector, &peer, copy.header, body, MAX_ANSWER).await
            };
            let result = tokio::time::timeout(TIMEOUT, exchange).await;
            if !matches!(result, Ok(Ok(_))) {
                dropped.inc();
                tracing::debug!(target = %copy.target.authority, "mirror copy failed");
            }
            drop(slot);
        });
    }
}

/// A request being copied: where it goes and its header; its body, when copied, is
/// gathered as it passes.
pub struct MirrorCopy {
    target: Target,
    header: RequestHeader,
    /// The body gathered so far; `None` when the body is not copied.
    pub body: Option<BytesMut>,
}

impl MirrorCopy {
    /// The copy of `facts.req` that `mirror` asks for, to `endpoint` when the mirror
    /// names a backend; `None` when its URL does not render to one (a variable put
    /// something other than a path in it).
    pub fn new(
        mirror: &Mirror,
        endpoint: Option<SocketAddr>,
        facts: &RequestFacts<'_>,
    ) -> Option<MirrorCopy> {
        let mut url = Vec::new();
        if let Some(addr) = endpoint {
            url.extend_from_slice(format!("http://{addr}").as_bytes());
        }
        render(&mirror.target, facts, &mut url);
        let target = Target::parse(&url, true, "mirror-target").ok()?;
        let req = facts.req;
        let mut header =
            RequestHeader::build(req.method.clone(), target.path_and_query.as_bytes(), None)
                .ok()?;
        for (name, value) in req.headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                header.append_header(name.clone(), value.clone()).ok()?;
            }
        }
        let host = if mirror.host.is_empty() {
            request_host(req)
        } else {
            &mirror.host
        };
        header
            .insert_header(header::HOST, HeaderValue::from_str(host).ok()?)
            .ok()?;
        let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
            || req
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|l| l.as_bytes() != b"0");
        let body = (mirror.body && has_body).then(BytesMut::new);
        if body.is_none() {
            header.insert_header(header::CONTENT_LENGTH, "0").ok()?;
        }
        Some(MirrorCopy {
            target,
            header,
            body,
        })
    }

    /// Adds a chunk of the body; false when the body grew past [`MAX_BODY`].
    pub fn gather(&mut self, chunk: &[u8]) -> bool {
        match &mut self.body {
            Some(body) if body.len() + chunk.len() <= MAX_BODY => {
                body.extend_from_slice(chunk);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Ready to send: the header, and the body with its length declared.
    pub fn finish(mut self) -> (MirrorCopy, Option<Bytes>) {
        let body = self.body.take().map(BytesMut::freeze);
        if let Some(body) = &body {
            let _ = self
                .header
                .insert_header(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        (self, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_model::Template;

    fn copy_of(mirror: &Mirror, req: &RequestHeader) -> Option<MirrorCopy> {
        MirrorCopy::new(
            mirror,
            None,
            &RequestFacts {
                req,
                client: None,
                https: false,
                server_port: Some(80),
            },
        )
    }

    #[test]
    fn a_copy_goes_to_the_target_with_the_clients_headers_and_its_own_host() {
        let mirror = Mirror {
            target: Template::parse("http://shadow.test:9000/copy$request_uri").unwrap(),
            host: "copies.test".into(),
            body: true,
            backend: None,
            fraction: None,
        };
        let mut req = RequestHeader::build("POST", b"/orders?id=7", None).unwrap();
        req.insert_header("host", "shop.test").unwrap();
        req.insert_header("cookie", "session=1").unwrap();
        req.insert_header("connection", "keep-alive").unwrap();
        req.insert_header("content-length", "5").unwrap();
        let mut copy = copy_of(&mirror, &req).unwrap();
        assert_eq!(copy.target.authority, "shadow.test:9000");
        assert_eq!(copy.header.uri.to_string(), "/copy/orders?id=7");
        assert_eq!(copy.header.headers["host"], "copies.test");
        assert_eq!(copy.header.headers["cookie"], "session=1");
        assert!(!copy.header.headers.contains_key("connection"));
        assert!(copy.gather(b"hello"));
        let (copy, body) = copy.finish();
        assert_eq!(body.as_deref(), Some(&b"hello"[..]));
        assert_eq!(copy.header.headers["content-length"], "5");
    }

    #[test]
    fn a_body_past_the_bound_is_not_copied_and_a_bodiless_request_declares_none() {
        let mirror = Mirror {
            target: Template::parse("http://shadow.test$request_uri").unwrap(),
            host: "shadow.test".into(),
            body: true,
            backend: None,
            fraction: None,
        };
        let mut req = RequestHeader::build("PUT", b"/big", None).unwrap();
        req.insert_header("transfer-encoding", "chunked").unwrap();
        let mut copy = copy_of(&mirror, &req).unwrap();
        assert!(copy.gather(&vec![0; MAX_BODY]));
        assert!(!copy.gather(b"x"));
        let get = RequestHeader::build("GET", b"/", None).unwrap();
        let (copy, body) = copy_of(&mirror, &get).unwrap().finish();
        assert!(body.is_none());
        assert_eq!(copy.header.headers["content-length"], "0");
    }

    #[test]
    fn a_copy_to_a_backend_goes_to_its_endpoint_and_keeps_the_clients_host() {
        let mirror = Mirror {
            target: Template::parse("$request_uri").unwrap(),
            host: String::new(),
            body: false,
            backend: Some("default/shadow:80".into()),
            fraction: None,
        };
        let mut req = RequestHeader::build("GET", b"/a?b=c", None).unwrap();
        req.insert_header("host", "shop.test").unwrap();
        let facts = RequestFacts {
            req: &req,
            client: None,
            https: true,
            server_port: Some(443),
        };
        let endpoint = "127.0.0.9:8080".parse().unwrap();
        let copy = MirrorCopy::new(&mirror, Some(endpoint), &facts).unwrap();
        assert_eq!(copy.target.authority, "127.0.0.9:8080");
        assert!(!copy.target.tls, "plain HTTP to the endpoint");
        assert_eq!(copy.header.uri.to_string(), "/a?b=c");
        assert_eq!(copy.header.headers["host"], "shop.test");
    }
}
