//! HAProxy's PROXY protocol (`--proxy-protocol`): a load balancer that forwards TCP sends
//! the client's address in a header ahead of the connection's own bytes (before TLS on
//! the HTTPS port). Every connection must start with one; the address it carries becomes
//! the connection's peer only when the sender is in `--trusted-proxies`, so that anyone
//! else's claim changes nothing.

use crate::listener::forwarded::{self, Cidr};
use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::SocketDigest;
use pingora::protocols::{GetSocketDigest, Stream};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A v1 header is at most 107 bytes; v2 headers may carry TLVs, bounded here.
const MAX_HEADER_BYTES: usize = 4096;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The client's address, and the address it connected to.
    Forwarded {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// `UNKNOWN` (v1) or `LOCAL` (v2), or a family other than TCP over IPv4/IPv6: the
    /// connection stays the sender's own.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Parses the header at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let starts_like = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if buf.is_empty() {
        Ok(None)
    } else if starts_like(V2_SIGNATURE) {
        parse_v2(buf)
    } else if starts_like(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(ProxyHeaderError::Missing)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= 107 {
            Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > 107 {
        return Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 line is not text"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| {
                s.parse::<IpAddr>()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 address"))
            };
            let port = |s: &str| {
                let valid = !s.is_empty() && s.len() <= 5 && !(s.len() > 1 && s.starts_with('0'));
                s.parse::<u16>()
                    .ok()
                    .filter(|_| valid)
                    .ok_or(ProxyHeaderError::Malformed("v1 port"))
            };
            let (src, dst) = (ip(src)?, ip(dst)?);
            if (*family == "TCP4") != (src.is_ipv4() && dst.is_ipv4())
                || src.is_ipv4() != dst.is_ipv4()
            {
                return Err(ProxyHeaderError::Malformed(
                    "v1 addresses do not match the family",
                ));
            }
            ProxyHeader::Forwarded {
                source: SocketAddr::new(src, port(sport)?),
                destination: SocketAddr::new(dst, port(dport)?),
            }
        }
        _ => return Err(ProxyHeaderError::Malformed("v1 fields")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyHeaderError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 || command > 1 {
        return Err(ProxyHeaderError::Malformed("v2 version or command"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > MAX_HEADER_BYTES {
        return Err(ProxyHeaderError::Malformed("v2 header too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let header = match (command, buf[13]) {
        (0, _) => ProxyHeader::Local,
        // TCP over IPv4, then over IPv6.
        (_, 0x11) if len >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            ProxyHeader::Forwarded {
                source: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                destination: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
            }
        }
        (_, 0x21) if len >= 36 => {
            let ip =
                |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")));
            ProxyHeader::Forwarded {
                source: SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                destination: SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
            }
        }
        (_, 0x11 | 0x21) => return Err(ProxyHeaderError::Malformed("v2 address block too short")),
        _ => ProxyHeader::Local,
    };
    Ok(Some((header, 16 + len)))
}

/// Reads the header of each new connection, before TLS on the HTTPS port and before
/// HTTP on the plain one.
/// Reads a header off `stream` within `timeout`: the header, and the bytes read past it.
pub async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(ProxyHeader, Vec<u8>), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some((header, used)) = parse(&buf)? {
            buf.drain(..used);
            return Ok((header, buf));
        }
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(ProxyHeaderError::Missing),
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The v1 header Portico sends upstream for a connection from `source` to `destination`
/// (`UNKNOWN` when their families differ).
pub fn v1_header(source: SocketAddr, destination: SocketAddr) -> String {
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        _ => "PROXY UNKNOWN\r\n".to_string(),
    }
}

pub struct ProxyProtocol {
    pub trusted: Vec<Cidr>,
    /// How long a connection has to send its header.
    pub timeout: Duration,
}

impl ProxyProtocol {
    /// Reads the header off `stream`, leaving what follows it to be read, and makes its
    /// address the connection's peer when the sender is trusted.
    pub async fn read(&self, stream: &mut L4Stream) -> Result<(), ProxyHeaderError> {
        let (header, after) = read_header(stream, self.timeout).await?;
        stream.rewind(&after);
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let trusted = peer.is_some_and(|p| forwarded::is_trusted(&self.trusted, p.ip()));
        match header {
            ProxyHeader::Forwarded {
                source,
                destination,
            } if trusted => {
                let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
                let _ = digest.peer_addr.set(Some(source.into()));
                let _ = digest.local_addr.set(Some(destination.into()));
                stream.set_socket_digest(digest);
            }
            ProxyHeader::Forwarded { source, .. } => {
                tracing::debug!(peer = ?peer, claimed = %source, "PROXY header from an untrusted peer; its address is ignored");
            }
            ProxyHeader::Local => {}
        }
        Ok(())
    }

    /// [`Self::read`] on a plain-HTTP connection; `None` drops it.
    pub async fn accept_plain(&self, stream: Stream) -> Option<Stream> {
        let Ok(mut l4) = stream.into_any().downcast::<L4Stream>() else {
            tracing::warn!("PROXY protocol: not a TCP connection; dropped");
            return None;
        };
        match self.read(&mut l4).await {
            Ok(()) => Some(l4),
            Err(e) => {
                tracing::debug!(error = %e, "connection dropped");
                None
            }
        }
    }
}

#[async_trait]
impl PreTlsProcess for ProxyProtocol {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.read(stream).await.map_err(|e| {
            pingora::Error::because(pingora::ErrorType::AcceptError, "PROXY protocol", e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader::Forwarded {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
        }
    }

    #[test]
    fn the_v1_header_sent_upstream_parses_back() {
        let (src, dst) = (
            "203.0.113.7:51000".parse().unwrap(),
            "10.0.0.1:6379".parse().unwrap(),
        );
        let line = v1_header(src, dst);
        assert_eq!(line, "PROXY TCP4 203.0.113.7 10.0.0.1 51000 6379\r\n");
        assert_eq!(
            parse(line.as_bytes()),
            Ok(Some((
                forwarded("203.0.113.7:51000", "10.0.0.1:6379"),
                line.len()
            )))
        );
        let v6 = v1_header(
            "[2001:db8::1]:1".parse().unwrap(),
            "[::1]:80".parse().unwrap(),
        );
        assert_eq!(
            parse(v6.as_bytes()).unwrap().unwrap().0,
            forwarded("[2001:db8::1]:1", "[::1]:80")
        );
        assert_eq!(
            v1_header(src, "[::1]:80".parse().unwrap()),
            "PROXY UNKNOWN\r\n"
        );
    }

    #[test]
    fn v1_lines_give_addresses_or_nothing_and_wait_for_their_end() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET /";
        assert_eq!(
            parse(line),
            Ok(Some((forwarded("203.0.113.7:51000", "10.0.0.1:443"), 43)))
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::1 ::1 1 80\r\n")
                .unwrap()
                .unwrap()
                .0,
            forwarded("[2001:db8::1]:1", "[::1]:80")
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Some((ProxyHeader::Local, 15)))
        );
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7 10.0"), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        for bad in [
            &b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 080 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse(&[b'P'; 200][..]).is_err());
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        assert_eq!(
            parse(b"\x16\x03\x01"),
            Err(ProxyHeaderError::Missing),
            "a TLS ClientHello is not a header"
        );
    }

    #[test]
    fn v2_headers_give_addresses_skip_tlvs_and_honour_local() {
        let mut v4 = V2_SIGNATURE.to_vec();
        v4.extend_from_slice(&[
            0x21, 0x11, 0, 15, 203, 0, 113, 9, 10, 0, 0, 1, 0xc3, 0x50, 0x01, 0xbb, 0x04, 0, 0,
        ]);
        v4.extend_from_slice(b"rest");
        assert_eq!(
            parse(&v4),
            Ok(Some((forwarded("203.0.113.9:50000", "10.0.0.1:443"), 31)))
        );
        assert_eq!(parse(&v4[..20]), Ok(None));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local), Ok(Some((ProxyHeader::Local, 16))));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&short), Err(ProxyHeaderError::Malformed(_))));
        let mut v1_version = V2_SIGNATURE.to_vec();
        v1_version.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert!(matches!(
            parse(&v1_version),
            Err(ProxyHeaderError::Malformed(_))
        ));
    }

    mod properties {
        use super::super::{parse, V2_SIGNATURE};
        use proptest::prelude::*;

        /// Bytes that start like a header often enough to reach deep into both parsers.
        fn headers() -> impl Strategy<Value = Vec<u8>> {
            let start = prop_oneof![
                Just(b"PROXY ".to_vec()),
                Just(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec()),
                Just(b"PROXY TCP6 ".to_vec()),
                Just(V2_SIGNATURE.to_vec()),
                Just([&V2_SIGNATURE[..], &[0x21, 0x11, 0x00, 0x0c]].concat()),
                Just([&V2_SIGNATURE[..], &[0x21, 0x21, 0x00, 0x24]].concat()),
                Just(Vec::new()),
            ];
            (start, proptest::collection::vec(any::<u8>(), 0..120))
                .prop_map(|(start, rest)| [start, rest].concat())
        }

        proptest! {
            /// Any bytes: a header, "incomplete", or an error; never a panic, and a header
            /// never claims more bytes than there are.
            #[test]
            fn any_bytes_parse_or_are_refused(buf in headers()) {
                if let Ok(Some((_, used))) = parse(&buf) {
                    prop_assert!(used <= buf.len());
                }
            }

            /// A header that parses from a prefix parses the same from more bytes.
            #[test]
            fn more_bytes_never_change_a_parsed_header(buf in headers(), more in proptest::collection::vec(any::<u8>(), 0..16)) {
                if let Ok(Some((header, used))) = parse(&buf) {
                    let longer = [buf.clone(), more].concat();
                    let again = parse(&longer);
                    prop_assert!(matches!(again, Ok(Some((ref h, u))) if *h == header && u == used));
                }
            }
        }
    }
}
