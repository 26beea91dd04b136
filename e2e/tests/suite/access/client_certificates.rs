//! Client certificates (`auth-tls-*`) through the real binaries, with real handshakes on
//! loopback: who gets in with which certificate, what the upstream is told, and that a
//! request cannot borrow another host's handshake.

use openssl::ssl::SslVersion;
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ca_secret, ingress, tls_secret, to_yaml};
use portico_e2e::tls::{self, ClientOptions, Issued, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NGINX: &str = "nginx.ingress.kubernetes.io/";

fn with<'a>(sni: &'a str, certificate: Option<&'a Issued>) -> ClientOptions<'a> {
    ClientOptions {
        sni: Some(sni),
        certificate,
        alpn: &["http/1.1"],
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_admit_refuse_and_tell_the_upstream() {
    let server_ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let rogue_ca = TestCa::new("rogue ca");
    let alice = client_ca.issue(&["alice"]);
    let carol = client_ca.issue(&["carol"]);
    let mallory = rogue_ca.issue(&["alice"]);

    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(ca_secret("client-ca", &client_ca.cert_pem()));
    let hosts = ["mtls.test", "open.test", "opt.test", "page.test"];
    for host in hosts {
        let issued = server_ca.issue(&[host]);
        docs.push(tls_secret(
            &format!("{host}-tls"),
            &issued.cert_pem,
            &issued.key_pem,
        ));
    }
    let site = |name: &str, host: &str| {
        ingress(name)
            .tls(&[host], &format!("{host}-tls"))
            .path(host, "Prefix", "/", "web")
    };
    docs.push(
        site("mtls", "mtls.test")
            .annotation(&format!("{NGINX}auth-tls-secret"), "default/client-ca")
            .annotation(
                &format!("{NGINX}auth-tls-pass-certificate-to-upstream"),
                "true",
            )
            .annotation(&format!("{NGINX}auth-tls-match-cn"), "CN=(alice|bob)$")
            .build(),
    );
    docs.push(site("open", "open.test").build());
    docs.push(
        site("opt", "opt.test")
            .annotation(&format!("{NGINX}auth-tls-secret"), "client-ca")
            .annotation(&format!("{NGINX}auth-tls-verify-client"), "optional_no_ca")
            .build(),
    );
    docs.push(
        site("page", "page.test")
            .annotation(&format!("{NGINX}auth-tls-secret"), "client-ca")
            .annotation(
                &format!("{NGINX}auth-tls-error-page"),
                "https://login.test/certificate",
            )
            .annotation(&format!("{NGINX}ssl-redirect"), "false")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    let get = |opts: ClientOptions<'static>,
               host: &'static str,
               headers: &'static [(&'static str, &'static str)]| {
        let addr = portico.https;
        async move {
            let (stream, _) = tls::connect(addr, opts)
                .await
                .expect("handshake: certificates never fail it");
            tls::get_with(stream, host, "/", headers)
                .await
                .expect("an answer")
        }
    };
    // 'static copies, for the closure above.
    let (alice, carol, mallory): (&'static Issued, &'static Issued, &'static Issued) = (
        Box::leak(Box::new(alice)),
        Box::leak(Box::new(carol)),
        Box::leak(Box::new(mallory)),
    );

    // A certificate from the CA gets in; the upstream learns who it is, not what the client claims.
    let spoof: &[(&str, &str)] = &[
        ("ssl-client-verify", "SUCCESS"),
        ("ssl-client-subject-dn", "CN=admin"),
    ];
    let reply = get(with("mtls.test", Some(alice)), "mtls.test", spoof).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echo = reply.echo().unwrap();
    assert_eq!(echo.headers["ssl-client-verify"], "SUCCESS");
    assert_eq!(echo.headers["ssl-client-subject-dn"], "CN=alice");
    assert_eq!(echo.headers["ssl-client-issuer-dn"], "CN=client ca");
    let passed = &echo.headers["ssl-client-cert"];
    assert!(
        passed.starts_with("-----BEGIN%20CERTIFICATE-----%0A"),
        "URL-encoded PEM: {passed}"
    );
    assert!(!passed.contains(['\n', ' ']));

    // No certificate, another CA's, or a subject auth-tls-match-cn does not take: refused.
    for (who, certificate, status) in [
        ("nobody", None, 400),
        ("mallory", Some(mallory), 400),
        ("carol", Some(carol), 403),
    ] {
        let reply = get(with("mtls.test", certificate), "mtls.test", &[]).await;
        assert_eq!(reply.status, status, "{who}: {}", reply.text());
        assert!(reply.echo().is_none(), "{who} reached the backend");
    }

    // HTTP/2 carries the same proof.
    let opts = ClientOptions {
        alpn: &["h2"],
        ..with("mtls.test", Some(alice))
    };
    let (stream, hs) = tls::connect(portico.https, opts).await.unwrap();
    assert_eq!(hs.alpn.as_deref(), Some("h2"));
    assert_eq!(
        tls::get(stream, "mtls.test", "/").await.unwrap().status,
        200
    );

    // A handshake for a host that asks for no certificate, or none at all, cannot carry a
    // request to one that does: 421, so that the client opens a connection for that host.
    for opts in [
        with("open.test", None),
        ClientOptions {
            sni: None,
            ..with("", None)
        },
    ] {
        let reply = get(opts.clone(), "mtls.test", &[]).await;
        assert_eq!(reply.status, 421, "SNI {:?}: {}", opts.sni, reply.text());
    }
    let reply = get(with("mtls.test", Some(alice)), "open.test", &[]).await;
    assert_eq!(
        reply.status, 200,
        "a host without client certificates takes any connection"
    );
    assert!(!reply
        .echo()
        .unwrap()
        .headers
        .contains_key("ssl-client-verify"));

    // optional_no_ca: everyone gets in; the upstream is told how the certificate fared.
    for (who, certificate, verify) in [
        ("nobody", None, "NONE"),
        ("mallory", Some(mallory), "FAILED:"),
        ("alice", Some(alice), "SUCCESS"),
    ] {
        let reply = get(with("opt.test", certificate), "opt.test", spoof).await;
        assert_eq!(reply.status, 200, "{who}: {}", reply.text());
        let echo = reply.echo().unwrap();
        assert!(
            echo.headers["ssl-client-verify"].starts_with(verify),
            "{who}: {:?}",
            echo.headers["ssl-client-verify"]
        );
        assert_eq!(
            echo.headers
                .get("ssl-client-subject-dn")
                .map(String::as_str),
            certificate.map(|_| "CN=alice"),
            "{who}"
        );
        assert!(
            !echo.headers.contains_key("ssl-client-cert"),
            "not passed unless asked for"
        );
    }

    // auth-tls-error-page: refusals are redirected there, plain HTTP included (it has no certificate).
    let reply = get(with("page.test", None), "page.test", &[]).await;
    assert_eq!(
        (reply.status, reply.header("location")),
        (302, Some("https://login.test/certificate"))
    );
    let reply = portico.client.get("page.test", "/").await.unwrap();
    assert_eq!(
        (reply.status, reply.header("location")),
        (302, Some("https://login.test/certificate"))
    );
    let reply = get(with("page.test", Some(alice)), "page.test", &[]).await;
    assert_eq!(reply.status, 200);

    // A resumed TLS 1.2 session keeps its certificate, verified again against the host's CA.
    let opts = ClientOptions {
        only_version: Some(SslVersion::TLS1_2),
        ..with("mtls.test", Some(alice))
    };
    let (mut stream, _) = tls::connect(portico.https, opts.clone()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: mtls.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let session = tls::session_of(&stream).expect("a session");
    let resumed = ClientOptions {
        session: Some(session),
        certificate: None,
        ..opts
    };
    let (stream, hs) = tls::connect(portico.https, resumed).await.unwrap();
    assert!(hs.resumed, "the session is resumed");
    let reply = tls::get(stream, "mtls.test", "/").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.echo().unwrap().headers["ssl-client-subject-dn"],
        "CN=alice"
    );

    let metrics = portico.admin_get("/metrics").await.unwrap().text();
    let refused = metrics
        .lines()
        .filter(|l| {
            l.starts_with("portico_refusals_total{") && l.contains("reason=\"client_certificate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(
        refused, 7.0,
        "400 ×2, 403, 421 ×2, 302 ×2 counted as client-certificate refusals"
    );
}
