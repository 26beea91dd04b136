//! `--client-header-timeout`: a deadline on a whole HTTP/1 request header. Pingora bounds
//! each read of a header (60 s) but not the header, so a client sending a byte a minute
//! holds its connection for ever; and before each request on the plain port it peeks for
//! the HTTP/2 preface with no bound at all. This wraps a connection's stream and watches
//! its bytes: from the first byte of a request (or the accept, for the first request) to
//! the blank line that ends its header, the client has the header timeout; between
//! requests it has the keep-alive timeout. Bodies, HTTP/2 and upgraded connections are
//! left to Pingora's own timeouts.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const BLANK_LINE: &[u8] = b"\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request header; `ended` counts how much of `\r\n\r\n` the bytes so far end with.
    Header { ended: u8, start: bool },
    /// The header is in; the body and the response are Pingora's.
    Body,
    /// A response was written; waiting for the next request.
    Idle,
    /// HTTP/2 or an upgraded connection: not HTTP/1 headers any more.
    Off,
}

/// Where a connection is between requests, from the bytes that pass.
#[derive(Debug)]
struct RequestBoundaries {
    phase: Phase,
}

impl RequestBoundaries {
    /// Follows bytes the client sent; true when they start a new request's header.
    fn read(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return false;
        }
        let started = self.phase == Phase::Idle;
        if started {
            self.phase = Phase::Header {
                ended: 0,
                start: true,
            };
        }
        let Phase::Header { ended, start } = self.phase else {
            return false;
        };
        // HTTP/2 with prior knowledge: Pingora's h2 timeouts apply.
        if start && bytes.starts_with(H2_PREFACE_START) {
            self.phase = Phase::Off;
            return started;
        }
        // The blank line may straddle reads: `ended` bytes of it closed the last one.
        let rest = &BLANK_LINE[usize::from(ended)..];
        // Most headers arrive whole in one read, ending the bytes: no search for those.
        if ended > 0 && bytes.starts_with(rest)
            || bytes.ends_with(BLANK_LINE)
            || memchr::memmem::find(bytes, BLANK_LINE).is_some()
        {
            self.phase = Phase::Body;
            return started;
        }
        let ended = if ended > 0 && rest.starts_with(bytes) {
            ended + bytes.len() as u8
        } else {
            (1..=3)
                .rev()
                .find(|&n| bytes.ends_with(&BLANK_LINE[..n]))
                .map_or(0, |n| n as u8)
        };
        self.phase = Phase::Header {
            ended,
            start: false,
        };
        started
    }

    /// Follows bytes the proxy wrote; true when a final response ends the request. A 101
    /// ends HTTP/1 on the connection.
    fn wrote(&mut self, bytes: &[u8]) -> bool {
        if matches!(self.phase, Phase::Off | Phase::Idle) || !bytes.starts_with(b"HTTP/1.") {
            return false;
        }
        match bytes.get(9..12) {
            Some(b"101") => self.phase = Phase::Off,
            Some(status) if status[0] != b'1' => self.phase = Phase::Idle,
            _ => {}
        }
        self.phase == Phase::Idle
    }
}

/// Timeouts for [`HeaderDeadline`].
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    pub header: Duration,
    pub keepalive: Duration,
}

/// A connection's stream with the header and keep-alive deadlines.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    timeouts: ClientTimeouts,
    boundaries: RequestBoundaries,
    /// When the current phase's time is up.
    due: Instant,
    /// A timer set to `due` only when a read has to wait: most requests arrive whole and
    /// never need it, and moving a timer costs more than comparing two instants.
    deadline: Pin<Box<Sleep>>,
    /// Bytes a peek read, served before the stream's.
    peeked: Vec<u8>,
}

impl HeaderDeadline {
    /// Wraps a new connection; its first header must arrive within the header timeout.
    pub fn new(inner: Stream, timeouts: ClientTimeouts) -> Self {
        let due = Instant::now() + timeouts.header;
        HeaderDeadline {
            inner,
            timeouts,
            boundaries: RequestBoundaries {
                phase: Phase::Header {
                    ended: 0,
                    start: true,
                },
            },
            due,
            deadline: Box::pin(tokio::time::sleep_until(due)),
            peeked: Vec::new(),
        }
    }

    fn arm(&mut self, after: Duration) {
        self.due = Instant::now() + after;
    }

    /// Whether the deadline of the current phase has passed (registering the waker if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !matches!(self.boundaries.phase, Phase::Header { .. } | Phase::Idle) {
            return false;
        }
        if self.deadline.deadline() != self.due {
            self.deadline.as_mut().reset(self.due);
        }
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.boundaries.read(&buf.filled()[before..]) {
                    this.arm(this.timeouts.header);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(match this.boundaries.phase {
                // An idle keep-alive connection ends as if the client had closed it.
                Phase::Idle => Ok(()),
                _ => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client header timeout",
                )),
            }),
            other => other,
        }
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if this.boundaries.wrote(&buf[..n]) {
                this.arm(this.timeouts.keepalive);
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Pingora peeks for the HTTP/2 preface before each request on the plain port; the peek
/// reads through the deadline and keeps what it read for the next read. It stops as soon
/// as the bytes cannot be the preface (giving Pingora what it read, which is not the
/// preface, so HTTP/1 it is): a whole request shorter than the preface, such as
/// `GET / HTTP/1.0\r\n\r\n`, would otherwise wait for bytes that never come, past the
/// header deadline, which ended with its blank line.
#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut read = std::mem::take(&mut self.peeked);
        while read.len() < buf.len() {
            if !could_be_h2_preface(&read) {
                // What was read, padded: it differs from the preface already.
                buf.fill(0);
                buf[..read.len()].copy_from_slice(&read);
                self.peeked = read;
                return Ok(true);
            }
            let mut chunk = vec![0u8; buf.len() - read.len()];
            let n = self.read(&mut chunk).await?;
            if n == 0 {
                self.peeked = read;
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            read.extend_from_slice(&chunk[..n]);
        }
        buf.copy_from_slice(&read[..buf.len()]);
        self.peeked = read;
        Ok(true)
    }
}

fn could_be_h2_preface(bytes: &[u8]) -> bool {
    let n = bytes.len().min(H2_PREFACE.len());
    bytes[..n] == H2_PREFACE[..n]
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Wraps `stream` unless it speaks HTTP/2 by ALPN.
pub fn guard(stream: Stream, timeouts: ClientTimeouts) -> Stream {
    if stream.selected_alpn_proto() == Some(ALPN::H2) {
        return stream;
    }
    Box::new(HeaderDeadline::new(stream, timeouts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_check_stops_at_the_first_byte_that_differs() {
        assert!(could_be_h2_preface(b""));
        assert!(could_be_h2_preface(b"PRI * HT"));
        assert!(could_be_h2_preface(H2_PREFACE));
        assert!(!could_be_h2_preface(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!could_be_h2_preface(b"PRIX"));
    }

    /// The phase after each chunk; chunks starting `HTTP/1.1 ` are the proxy's writes.
    fn phases(chunks: &[&[u8]]) -> Vec<(Phase, bool)> {
        let mut b = RequestBoundaries {
            phase: Phase::Header {
                ended: 0,
                start: true,
            },
        };
        chunks
            .iter()
            .map(|c| {
                let armed = if c.starts_with(b"HTTP/1.1 ") {
                    b.wrote(c)
                } else {
                    b.read(c)
                };
                (b.phase, armed)
            })
            .collect()
    }

    #[test]
    fn a_header_ends_at_its_blank_line_even_across_reads_and_a_response_starts_the_next_wait() {
        let got = phases(&[
            b"GET / HTTP/1.1\r\nHost: a\r",
            b"\n\r",
            b"\nbody",
            b"HTTP/1.1 200 OK\r\n",
            b"G",
        ]);
        assert_eq!(
            got,
            [
                (
                    Phase::Header {
                        ended: 1,
                        start: false
                    },
                    false
                ),
                (
                    Phase::Header {
                        ended: 3,
                        start: false
                    },
                    false
                ),
                (Phase::Body, false),
                (Phase::Idle, true),
                (
                    Phase::Header {
                        ended: 0,
                        start: false
                    },
                    true
                ),
            ]
        );
        assert_eq!(phases(&[b"GET / HTTP/1.1\r\n", b"\r\n"])[1].0, Phase::Body);
        assert_eq!(
            phases(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"])[0].0,
            Phase::Body,
            "a body in the same read"
        );
        assert_eq!(
            phases(&[b"GET / HTTP/1.1\r\nA: b\r\n\r", b"x\r\n"])[1].0,
            Phase::Header {
                ended: 2,
                start: false
            }
        );
        assert_eq!(
            phases(&[b"GET /\n\n"])[0].0,
            Phase::Header {
                ended: 0,
                start: false
            },
            "bare LFs are Pingora's to refuse"
        );
    }

    #[test]
    fn interim_responses_keep_the_body_going_and_http2_or_upgrades_end_the_watch() {
        let got = phases(&[
            b"POST / HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 101 Switching\r\n\r\n",
            b"x",
        ]);
        let got: Vec<Phase> = got.into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, [Phase::Body, Phase::Body, Phase::Off, Phase::Off]);
        assert_eq!(
            phases(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"])[0].0,
            Phase::Off
        );
    }

    mod properties {
        use super::super::{Phase, RequestBoundaries};
        use proptest::prelude::*;

        fn boundaries() -> RequestBoundaries {
            RequestBoundaries {
                phase: Phase::Header {
                    ended: 0,
                    start: true,
                },
            }
        }

        /// Header bytes rich in the pieces of a blank line.
        fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(
                prop_oneof![
                    Just("\r"),
                    Just("\n"),
                    Just("\r\n"),
                    Just("a"),
                    Just(":"),
                    Just(" ")
                ],
                0..40,
            )
            .prop_map(|parts| format!("GET / HTTP/1.1{}", parts.concat()).into_bytes())
        }

        proptest! {
            /// However a request header is cut into reads, its end is found at the same
            /// place: the first blank line.
            #[test]
            fn the_end_of_a_header_does_not_depend_on_how_it_is_read(
                bytes in header_bytes(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            ) {
                let mut whole = boundaries();
                whole.read(&bytes);
                let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
                at.sort_unstable();
                at.dedup();
                let mut pieces = boundaries();
                let mut from = 0;
                for to in at.into_iter().chain([bytes.len()]) {
                    pieces.read(&bytes[from..to]);
                    from = to;
                }
                let ended = |b: &RequestBoundaries| b.phase == Phase::Body;
                let expected = bytes.windows(4).any(|w| w == b"\r\n\r\n");
                prop_assert_eq!(ended(&whole), expected);
                prop_assert_eq!(ended(&pieces), expected);
            }
        }
    }
}
