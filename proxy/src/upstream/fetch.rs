//! One request and its whole answer over Pingora's pooled connector, for what the proxy
//! asks of other services itself (error pages, JWKS documents).

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

/// How long a connection stays pooled after a fetch.
const IDLE: Duration = Duration::from_secs(60);

/// Sends `req` without a body and reads the answer, failing if its body is larger than
/// `max_body` bytes. The connection goes back to the pool.
pub async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    max_body: usize,
) -> Result<(ResponseHeader, Bytes), String> {
    let (mut session, _reused) = connector.get_http_session(peer).await.map_err(text)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(text)?;
    session.finish_request_body().await.map_err(text)?;
    session.read_response_header().await.map_err(text)?;
    let header = session
        .response_header()
        .ok_or("no response header")?
        .clone();
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await.map_err(text)? {
        if body.len() + chunk.len() > max_body {
            return Err(format!("answer larger than {max_body} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    connector
        .release_http_session(session, peer, Some(IDLE))
        .await;
    Ok((header, body.freeze()))
}

/// An error as the text these fetches report.
pub fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
