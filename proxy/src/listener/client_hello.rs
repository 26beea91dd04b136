//! Reading the server name from a TLS ClientHello without consuming it, for passthrough:
//! the hello may arrive over several reads and even several TLS records, and what is not
//! TLS must be told apart at the first byte.

/// The largest handshake message read: a ClientHello with post-quantum key shares is a
/// few KiB; anything past this is not one worth reading.
const MAX_HELLO_BYTES: usize = 64 * 1024;
const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// The hello is not whole yet.
    NeedMore,
    /// Not a TLS ClientHello (or one past the size read); the TLS handshake will say why.
    NotTls,
    /// A whole ClientHello, and the host name it asks for, if any (lowercased).
    Parsed(Option<String>),
}

/// What the bytes read so far say.
pub fn server_name(buf: &[u8]) -> Hello {
    let mut handshake = Vec::new();
    let mut pos = 0;
    while let Some(header) = buf.get(pos..pos + 5) {
        if header[0] != HANDSHAKE {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16_384 + 2_048 {
            return Hello::NotTls;
        }
        let Some(payload) = buf.get(pos + 5..pos + 5 + len) else {
            return Hello::NeedMore;
        };
        handshake.extend_from_slice(payload);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != CLIENT_HELLO {
                return Hello::NotTls;
            }
            let body = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if body > MAX_HELLO_BYTES {
                return Hello::NotTls;
            }
            if handshake.len() >= 4 + body {
                return Hello::Parsed(sni(&handshake[4..4 + body]));
            }
        }
    }
    match buf.first() {
        Some(&b) if b != HANDSHAKE => Hello::NotTls,
        _ if buf.len() > MAX_HELLO_BYTES => Hello::NotTls,
        _ => Hello::NeedMore,
    }
}

/// A cursor over a ClientHello's body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A field with a length prefix of one or two bytes.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// The `server_name` extension's host name (RFC 6066, section 3).
fn sni(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != usize::from(SERVER_NAME) {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return name
                    .bytes()
                    .all(|b| b.is_ascii_graphic())
                    .then(|| name.to_ascii_lowercase());
            }
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::{SslConnector, SslMethod};
    use std::io::{Read, Write};

    /// The ClientHello OpenSSL writes for `sni` (none when `None`), as a client sends it.
    fn real_hello(sni: Option<&str>) -> Vec<u8> {
        struct Capture(Vec<u8>);
        impl Read for Capture {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        }
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let connector = SslConnector::builder(SslMethod::tls()).unwrap().build();
        let mut config = connector.configure().unwrap();
        config.set_use_server_name_indication(sni.is_some());
        config.set_verify_hostname(false);
        let ssl = config.into_ssl(sni.unwrap_or("unused")).unwrap();
        match ssl.connect(Capture(Vec::new())) {
            Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
            _ => panic!("the handshake waits for the server's answer"),
        }
    }

    #[test]
    fn finds_the_name_in_a_real_hello_read_in_pieces() {
        let hello = real_hello(Some("Argo.Example.test"));
        for cut in [0, 1, 4, 5, 40, hello.len() - 1] {
            assert_eq!(server_name(&hello[..cut]), Hello::NeedMore, "cut at {cut}");
        }
        assert_eq!(
            server_name(&hello),
            Hello::Parsed(Some("argo.example.test".into()))
        );
        assert_eq!(server_name(&real_hello(None)), Hello::Parsed(None));
    }

    #[test]
    fn reassembles_a_hello_split_across_records() {
        let hello = real_hello(Some("vault.test"));
        let message = &hello[5..];
        let (a, b) = message.split_at(100);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(server_name(&split[..110]), Hello::NeedMore);
        assert_eq!(
            server_name(&split),
            Hello::Parsed(Some("vault.test".into()))
        );
    }

    #[test]
    fn tells_what_is_not_tls_at_once_and_survives_garbage() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(server_name(b"G"), Hello::NotTls);
        assert_eq!(
            server_name(&[0x16, 3, 1, 0, 0]),
            Hello::NotTls,
            "an empty record"
        );
        assert_eq!(
            server_name(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Hello::NotTls,
            "not a ClientHello"
        );
        // A truncated body inside a whole message: parsed, without a name.
        assert_eq!(
            server_name(&[0x16, 3, 1, 0, 6, 1, 0, 0, 2, 3, 3]),
            Hello::Parsed(None)
        );
        let hello = real_hello(Some("a.test"));
        for i in 0..hello.len() {
            let mut bad = hello.clone();
            bad[i] ^= 0xff;
            let _ = server_name(&bad);
        }
    }
}
