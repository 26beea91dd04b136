//! TLS for the tests: a throwaway certificate authority, and a client that reports what
//! the server presented (subject, names, serial) and negotiated (version, ALPN).

use crate::client::Reply;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    Ssl, SslAcceptor, SslConnector, SslMethod, SslSession, SslVerifyMode, SslVersion,
};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509Ref, X509};
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// A certificate and its key, as PEM text.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Upper-case hex, to tell two certificates for the same name apart.
    pub serial: String,
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
    PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey")
}

/// A certificate authority that issues leaf certificates for the test's host names.
pub struct TestCa {
    cert: X509,
    key: PKey<Private>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = new_key();
        let cert = build(name, &[], &key, None, true, (-1, 365));
        TestCa { cert, key }
    }

    pub fn cert_pem(&self) -> String {
        String::from_utf8(self.cert.to_pem().expect("pem")).expect("utf-8")
    }

    /// A leaf for `names` (the first is the subject CN), valid from `days.0` to `days.1` from now.
    pub fn issue_valid(&self, names: &[&str], days: (i64, i64)) -> Issued {
        let key = new_key();
        let cert = build(
            names[0],
            names,
            &key,
            Some((&self.cert, &self.key)),
            false,
            days,
        );
        Issued {
            cert_pem: String::from_utf8(cert.to_pem().expect("pem")).expect("utf-8"),
            key_pem: String::from_utf8(key.private_key_to_pem_pkcs8().expect("pem"))
                .expect("utf-8"),
            serial: serial_hex(&cert),
        }
    }

    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_valid(names, (-1, 30))
    }

    /// An `SslAcceptor` presenting a leaf for `names`, for TLS backends.
    pub fn acceptor(&self, names: &[&str]) -> SslAcceptor {
        let issued = self.issue(names);
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        b.set_certificate(&X509::from_pem(issued.cert_pem.as_bytes()).expect("cert"))
            .expect("set cert");
        b.set_private_key(&PKey::private_key_from_pem(issued.key_pem.as_bytes()).expect("key"))
            .expect("set key");
        b.set_alpn_select_callback(|_, offered| {
            openssl::ssl::select_next_proto(b"\x02h2\x08http/1.1", offered)
                .ok_or(openssl::ssl::AlpnError::NOACK)
        });
        b.build()
    }
}

fn build(
    cn: &str,
    sans: &[&str],
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    days: (i64, i64),
) -> X509 {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    let mut serial = BigNum::new().expect("bn");
    serial.rand(64, MsbOption::MAYBE_ZERO, false).expect("rand");
    b.set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .expect("issuer");
    b.set_pubkey(key).expect("pubkey");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now + days.0 * 86_400).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::from_unix(now + days.1 * 86_400).expect("time"))
        .expect("not after");
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("ext");
    }
    if !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for n in sans {
            san.dns(n);
        }
        let ext = san
            .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
            .expect("san");
        b.append_extension(ext).expect("ext");
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())
        .expect("sign");
    b.build()
}

fn serial_hex(cert: &X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// What the server presented and negotiated in one handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub subject_cn: String,
    pub dns_names: Vec<String>,
    pub serial: String,
    pub version: String,
    pub alpn: Option<String>,
    pub resumed: bool,
    /// The cipher negotiated, by OpenSSL's name.
    pub cipher: String,
}

/// Options for [`connect`].
#[derive(Default, Clone)]
pub struct ClientOptions<'a> {
    pub sni: Option<&'a str>,
    pub alpn: &'a [&'a str],
    /// Offer only this version (e.g. TLS 1.1, to check it is refused).
    pub only_version: Option<SslVersion>,
    pub session: Option<SslSession>,
    /// A client certificate (and its key) to present when the server asks for one.
    pub certificate: Option<&'a Issued>,
    /// Offer these TLS 1.2 ciphers, in this order (OpenSSL's syntax).
    pub ciphers: Option<&'a str>,
}

/// Handshakes with `addr` without verifying the server (the tests inspect what it presents).
pub async fn connect(
    addr: SocketAddr,
    opts: ClientOptions<'_>,
) -> anyhow::Result<(SslStream<TcpStream>, Handshake)> {
    connect_over(TcpStream::connect(addr).await?, opts).await
}

/// [`connect`] over a connection already open (and perhaps already written to).
pub async fn connect_over(
    tcp: TcpStream,
    opts: ClientOptions<'_>,
) -> anyhow::Result<(SslStream<TcpStream>, Handshake)> {
    let mut b = SslConnector::builder(SslMethod::tls()).context("connector")?;
    b.set_verify(SslVerifyMode::NONE);
    if let Some(v) = opts.only_version {
        b.set_min_proto_version(Some(v))?;
        b.set_max_proto_version(Some(v))?;
        b.set_security_level(0);
        b.set_cipher_list("ALL:@SECLEVEL=0")?;
    }
    if let Some(ciphers) = opts.ciphers {
        b.set_cipher_list(ciphers)?;
    }
    if !opts.alpn.is_empty() {
        let mut wire = Vec::new();
        for p in opts.alpn {
            wire.push(p.len() as u8);
            wire.extend_from_slice(p.as_bytes());
        }
        b.set_alpn_protos(&wire)?;
    }
    if let Some(issued) = opts.certificate {
        let cert = X509::from_pem(issued.cert_pem.as_bytes())?;
        let key = PKey::private_key_from_pem(issued.key_pem.as_bytes())?;
        b.set_certificate(&cert)?;
        b.set_private_key(&key)?;
    }
    let connector = b.build();
    let mut config = connector.configure()?;
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(opts.sni.is_some());
    let mut ssl = config.into_ssl(opts.sni.unwrap_or("none"))?;
    if let Some(s) = &opts.session {
        // SAFETY: the session came from a connection to the same server with the same settings.
        #[allow(unsafe_code)]
        unsafe {
            ssl.set_session(s)?
        };
    }
    let mut stream = SslStream::new(ssl, tcp)?;
    tokio::time::timeout(Duration::from_secs(5), Pin::new(&mut stream).connect())
        .await
        .context("handshake timed out")??;
    let ssl = stream.ssl();
    let cert = ssl.peer_certificate().context("no peer certificate")?;
    let subject_cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default();
    let dns_names = cert
        .subject_alt_names()
        .map(|n| {
            n.iter()
                .filter_map(|g| g.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let handshake = Handshake {
        subject_cn,
        dns_names,
        serial: serial_hex(&cert),
        version: ssl.version_str().to_string(),
        alpn: ssl
            .selected_alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        resumed: ssl.session_reused(),
        cipher: ssl
            .current_cipher()
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
    };
    Ok((stream, handshake))
}

/// The server side of a handshake on `tcp` with `acceptor`'s settings; `None` when it fails.
pub async fn accept(acceptor: &SslAcceptor, tcp: TcpStream) -> Option<SslStream<TcpStream>> {
    let ssl = Ssl::new(acceptor.context()).ok()?;
    let mut stream = SslStream::new(ssl, tcp).ok()?;
    Pin::new(&mut stream).accept().await.ok()?;
    Some(stream)
}

/// The session of a finished handshake, for resuming it.
pub fn session_of(stream: &SslStream<TcpStream>) -> Option<SslSession> {
    stream.ssl().session().map(|s| s.to_owned())
}

/// One GET over an established connection, HTTP/2 when ALPN chose `h2`.
pub async fn get(stream: SslStream<TcpStream>, host: &str, path: &str) -> anyhow::Result<Reply> {
    get_with(stream, host, path, &[]).await
}

/// [`get`] with extra request headers.
pub async fn get_with(
    stream: SslStream<TcpStream>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let h2 = stream.ssl().selected_alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let uri = format!("https://{host}{path}");
    let mut req = http::Request::builder().uri(&uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        sender
            .send_request(req.body(Empty::<Bytes>::new())?)
            .await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        sender
            .send_request(
                req.header(http::header::HOST, host)
                    .body(Empty::<Bytes>::new())?,
            )
            .await?
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// A keep-alive HTTP/1.1 connection over TLS, for sending several requests on one handshake.
pub struct TlsConnection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl TlsConnection {
    pub async fn open(stream: SslStream<TcpStream>) -> anyhow::Result<Self> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(TlsConnection { sender })
    }

    pub async fn get(&mut self, host: &str, path: &str) -> anyhow::Result<Reply> {
        self.sender.ready().await?;
        let req = http::Request::builder()
            .uri(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}
