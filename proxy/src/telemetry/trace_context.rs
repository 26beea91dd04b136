//! Request ids and W3C trace context. Every request carries an `X-Request-ID` (the
//! client's, when it sent a usable one) and a `traceparent` that names Portico's own span
//! as the parent of the upstream's, so upstream spans join the client's trace; a request
//! without one starts a trace.

use http::HeaderValue;

/// Where one request sits in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// Portico's span for this request.
    pub span_id: [u8; 8],
    /// The client's span, when the client sent a `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the trace of the request's `traceparent`, keeping its sampling decision;
    /// without a valid one, starts a trace sampled with probability `sample_ratio`.
    pub fn continue_or_start(traceparent: Option<&[u8]>, sample_ratio: f64) -> Self {
        let span_id = nonzero_u64().to_be_bytes();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent),
                sampled: flags & 1 == 1,
            },
            None => TraceContext {
                trace_id: nonzero_u128().to_be_bytes(),
                span_id,
                parent_id: None,
                sampled: sample_ratio >= 1.0
                    || (sample_ratio > 0.0 && fastrand::f64() < sample_ratio),
            },
        }
    }

    /// The `traceparent` for the upstream request: this trace, with Portico's span as parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_into(&self.span_id, &mut out[36..52]);
        out[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        unique_per_request(HeaderValue::from_bytes(&out).expect("hex digits and dashes"))
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// `00-<trace id>-<parent id>-<flags>`; a later version is read the same way when it
/// starts with these fields (as the specification asks). All-zero ids are invalid.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let fields = value.get(..55)?;
    let version = unhex::<1>(&fields[..2])?[0];
    let rest_ok = match version {
        0 => value.len() == 55,
        0xff => false,
        _ => value.len() == 55 || value[55] == b'-',
    };
    if !rest_ok || fields[2] != b'-' || fields[35] != b'-' || fields[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&fields[3..35])?;
    let parent = unhex::<8>(&fields[36..52])?;
    let flags = unhex::<1>(&fields[53..55])?[0];
    (trace_id != [0; 16] && parent != [0; 8]).then_some((trace_id, parent, flags))
}

/// Whether the client's request id can be kept: 1 to 200 visible ASCII characters. If
/// not, the caller sets a new one from [`new_request_id`].
pub fn usable_request_id(value: Option<&HeaderValue>) -> bool {
    value.is_some_and(|v| {
        (1..=200).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    })
}

/// 32 hex digits, as nginx's `$request_id`.
pub fn new_request_id() -> HeaderValue {
    let mut out = [0u8; 32];
    hex_into(&fastrand::u128(..).to_be_bytes(), &mut out);
    unique_per_request(HeaderValue::from_bytes(&out).expect("hex digits"))
}

/// `value`, marked never-indexed: HTTP/2's HPACK then sends it as a literal instead of
/// adding to the peer's table a value that never repeats, where it would evict the
/// entries that do (`content-type`, `server`...) and be compared against on every request.
pub fn unique_per_request(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

fn nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits")
}

/// Lower-case hex only, as trace context requires.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    if text.len() != 2 * N {
        return None;
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn continues_the_clients_trace_under_a_span_of_its_own() {
        let t = TraceContext::continue_or_start(Some(CLIENT.as_bytes()), 0.0);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(t.sampled, "the client's decision stands over the ratio");
        let sent = t.traceparent();
        let sent = sent.to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"),
            "{sent}"
        );
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "the upstream's parent is Portico's span"
        );
        assert_eq!(parse_traceparent(sent.as_bytes()).unwrap().1, t.span_id);
    }

    #[test]
    fn starts_a_trace_when_the_header_is_missing_or_invalid() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let t = TraceContext::continue_or_start(Some(bad.as_bytes()), 1.0);
            assert_eq!(t.parent_id, None, "{bad:?} is not a trace to continue");
            assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(t.sampled, "ratio 1 samples every new trace");
        }
        assert!(!TraceContext::continue_or_start(None, 0.0).sampled);
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future";
        assert!(
            TraceContext::continue_or_start(Some(later.as_bytes()), 1.0)
                .parent_id
                .is_some(),
            "later versions are read"
        );
    }

    #[test]
    fn values_unique_to_a_request_are_never_indexed_by_hpack() {
        assert!(new_request_id().is_sensitive());
        assert!(TraceContext::continue_or_start(None, 1.0)
            .traceparent()
            .is_sensitive());
        assert!(unique_per_request(HeaderValue::from_static("client-chosen-id")).is_sensitive());
    }

    #[test]
    fn request_ids_are_kept_when_usable() {
        assert!(usable_request_id(Some(&HeaderValue::from_static(
            "abc-123"
        ))));
        assert!(!usable_request_id(Some(&HeaderValue::from_static(
            "has space"
        ))));
        assert!(!usable_request_id(None));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_request_id());
    }
}
