//! `custom-http-errors`: when an upstream answers with a listed status, the error backend
//! is asked for the page instead, with ingress-nginx's headers saying what went wrong
//! (`X-Code`, `X-Format`, `X-Original-URI`, `X-Namespace`, `X-Ingress-Name`,
//! `X-Service-Name`, `X-Service-Port`). Its answer, status included, goes to the client.

use crate::config::compile::{CompiledErrorPages, OriginHeaders};
use crate::upstream::fetch::{self, text};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::Duration;

/// How long the error backend has to answer; after that the upstream's answer stands.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest page taken from the error backend.
const MAX_PAGE: usize = 1 << 20;

/// The fields of the error backend's answer passed to the client; framing is Portico's.
const PASSED: &[header::HeaderName] = &[
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::CONTENT_LANGUAGE,
    header::SET_COOKIE,
];

/// ingress-nginx's custom-error headers on a request to an error or default backend:
/// `X-Code`, `X-Format` (the client's `Accept`), `X-Original-URI`, and where the original
/// request was going (`origin`).
pub fn tell_what_went_wrong(
    req: &mut RequestHeader,
    status: u16,
    original: &RequestHeader,
    origin: &OriginHeaders,
) -> pingora::Result<()> {
    req.insert_header("x-code", status)?;
    if let Some(accept) = original.headers.get(header::ACCEPT) {
        req.insert_header("x-format", accept.clone())?;
    }
    let uri = original.uri.path_and_query().map_or("/", |p| p.as_str());
    req.insert_header("x-original-uri", uri)?;
    for (name, value) in origin {
        req.insert_header(*name, value.clone())?;
    }
    Ok(())
}

/// Asks the error backend for the page of `status`. `None` when it has no endpoint, fails
/// or takes too long: the caller keeps the upstream's answer.
pub async fn fetch(
    connector: &Connector,
    pages: &CompiledErrorPages,
    status: u16,
    original: &RequestHeader,
    host: &str,
) -> Option<(ResponseHeader, Bytes)> {
    let pool = &pages.pool;
    let index = pool.balancer.pick(b"", &[])?;
    let peer = pool.upstream.peer(pool.balancer.endpoint(index).addr);
    let exchange = async {
        // The page is fetched, never acted on: GET (HEAD stays HEAD), without the body.
        let method = if original.method == http::Method::HEAD {
            "HEAD"
        } else {
            "GET"
        };
        let uri = original.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = RequestHeader::build(method, uri.as_bytes(), None).map_err(text)?;
        let value = |v: &str| HeaderValue::from_str(v).map_err(text);
        req.insert_header(header::HOST, value(host)?)
            .map_err(text)?;
        tell_what_went_wrong(&mut req, status, original, &pages.headers).map_err(text)?;
        if let Some(id) = original.headers.get("x-request-id") {
            req.insert_header("x-request-id", id.clone())
                .map_err(text)?;
        }
        let (answer, body) = fetch::exchange(connector, &peer, req, None, MAX_PAGE).await?;
        let mut header =
            ResponseHeader::build(answer.status, Some(PASSED.len() + 2)).map_err(text)?;
        for name in PASSED {
            for v in answer.headers.get_all(name) {
                header
                    .append_header(name.clone(), v.clone())
                    .map_err(text)?;
            }
        }
        header
            .insert_header(header::CONTENT_LENGTH, body.len())
            .map_err(text)?;
        Ok::<_, String>((header, body))
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(page)) => Some(page),
        Ok(Err(error)) => {
            tracing::warn!(backend = %pool.name, status, error, "error backend failed; the upstream answer stands");
            None
        }
        Err(_) => {
            tracing::warn!(backend = %pool.name, status, "error backend timed out; the upstream answer stands");
            None
        }
    }
}
