//! Upstream answers compressed for clients that accept it (the controller ConfigMap's
//! `use-gzip`, `enable-brotli` and their `-level`, `-min-length`, `-types`), with
//! Pingora's encoders. Nothing is allocated for a request when compression is off or the
//! client accepts no encoding.

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::compression::{Algorithm, ResponseCompressionCtx};
use portico_model::{Compression, Encoding};

/// One answer's encoder, from the request's `Accept-Encoding` and the policy.
pub struct AnswerCompression {
    ctx: ResponseCompressionCtx,
    gzip: Option<Encoding>,
    brotli: Option<Encoding>,
}

impl AnswerCompression {
    /// `None` when no encoding is on, or the request cannot take a compressed answer.
    pub fn for_request(policy: &Compression, req: &RequestHeader) -> Option<Box<Self>> {
        if !policy.is_on()
            || req.method == http::Method::HEAD
            || !req.headers.contains_key(header::ACCEPT_ENCODING)
        {
            return None;
        }
        let mut ctx = ResponseCompressionCtx::new(0, false, false);
        if let Some(gzip) = &policy.gzip {
            ctx.adjust_algorithm_level(Algorithm::Gzip, gzip.level);
        }
        if let Some(brotli) = &policy.brotli {
            // Pingora reads level 0 as off; nginx's brotli level 0 is its fastest.
            ctx.adjust_algorithm_level(Algorithm::Brotli, brotli.level.max(1));
        }
        ctx.request_filter(req);
        Some(Box::new(AnswerCompression {
            ctx,
            gzip: policy.gzip.clone(),
            brotli: policy.brotli.clone(),
        }))
    }

    /// Decides from the answer's header (its type and length against each encoding's) and
    /// rewrites it (`Content-Encoding`, `Vary`, no `Content-Length`) when compressing.
    /// Returns whether the body is to be compressed.
    pub fn start(&mut self, answer: &mut ResponseHeader) -> bool {
        let status = answer.status.as_u16();
        if matches!(status, 100..=199 | 204 | 206 | 304) {
            return false;
        }
        let content_type = answer
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let length = answer
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let encodings = [
            (Algorithm::Gzip, &self.gzip),
            (Algorithm::Brotli, &self.brotli),
        ];
        for (algorithm, encoding) in encodings {
            if encoding
                .as_ref()
                .is_some_and(|e| !e.takes(content_type, length))
            {
                self.ctx.adjust_algorithm_level(algorithm, 0);
            }
        }
        if !self.ctx.is_enabled() {
            return false;
        }
        self.ctx.response_header_filter(answer, false);
        // An encoder was chosen (not, say, for an answer the upstream already encoded).
        self.ctx.get_info().is_some()
    }

    /// The compressed form of a body chunk (at the end, with the encoder's last bytes);
    /// `None` passes the chunk as it is, also before `start` decided (Pingora's encoder
    /// panics on a body before its header).
    pub fn chunk(&mut self, chunk: Option<&bytes::Bytes>, end: bool) -> Option<bytes::Bytes> {
        if self.ctx.is_header_phase() {
            return None;
        }
        self.ctx.response_body_filter(chunk, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn policy() -> Compression {
        Compression {
            gzip: Some(Encoding {
                level: 6,
                min_length: 100,
                types: vec!["text/html".into(), "application/json".into()],
            }),
            brotli: None,
        }
    }

    fn request(accept: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("accept-encoding", accept).unwrap();
        req
    }

    fn answer(content_type: &str, length: usize) -> ResponseHeader {
        let mut a = ResponseHeader::build(200, None).unwrap();
        a.insert_header("content-type", content_type).unwrap();
        a.insert_header("content-length", length.to_string())
            .unwrap();
        a
    }

    #[test]
    fn a_json_answer_is_gzipped_for_a_client_that_accepts_it() {
        let body = bytes::Bytes::from("{\"items\": [1, 2, 3]} ".repeat(20));
        let mut c = AnswerCompression::for_request(&policy(), &request("gzip, br")).unwrap();
        let mut a = answer("application/json; charset=utf-8", body.len());
        assert!(c.start(&mut a));
        assert_eq!(a.headers["content-encoding"], "gzip");
        assert!(!a.headers.contains_key("content-length"));
        let mut out = c.chunk(Some(&body), false).unwrap_or_default().to_vec();
        out.extend_from_slice(&c.chunk(None, true).unwrap_or_default());
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain.as_bytes(), &body[..]);
    }

    #[test]
    fn an_answer_the_upstream_encoded_is_passed_on_and_a_body_before_a_header_is_not_a_panic() {
        let mut c = AnswerCompression::for_request(&policy(), &request("gzip")).unwrap();
        assert_eq!(
            c.chunk(Some(&bytes::Bytes::from_static(b"early")), false),
            None
        );
        let mut encoded = answer("text/html", 5000);
        encoded.insert_header("content-encoding", "br").unwrap();
        assert!(!c.start(&mut encoded));
        assert_eq!(encoded.headers["content-encoding"], "br");
    }

    #[test]
    fn small_answers_other_types_and_clients_without_gzip_are_left_alone() {
        let mut c = AnswerCompression::for_request(&policy(), &request("gzip")).unwrap();
        assert!(
            !c.start(&mut answer("application/json", 50)),
            "under min-length"
        );
        let mut c = AnswerCompression::for_request(&policy(), &request("gzip")).unwrap();
        let mut png = answer("image/png", 5000);
        assert!(!c.start(&mut png));
        assert!(!png.headers.contains_key("content-encoding"));
        assert!(
            AnswerCompression::for_request(&Compression::default(), &request("gzip")).is_none()
        );
        let mut c = AnswerCompression::for_request(&policy(), &request("br")).unwrap();
        assert!(!c.start(&mut answer("text/html", 5000)), "brotli is off");
    }
}
