//! ingress-nginx's controller ConfigMap (`--configmap`) through the real binaries: the
//! keys an operator sets once for every Ingress, applied live, a typo never undoing them.

use portico_e2e::client::{post, raw_status};
use portico_e2e::echo::{backends, EchoServer};
use portico_e2e::harness::{binary, Portico};
use portico_e2e::manifests::{config_map, ingress, to_yaml};

const CONFIG: &str = "--configmap=default/portico-controller";

fn controller_config(data: &[(&str, &str)]) -> String {
    to_yaml(&[config_map("portico-controller", data)])
}

/// Portico serving `site.test` from one echo backend, with the controller ConfigMap `keys`.
async fn site_with(keys: &[(&str, &str)]) -> (Vec<EchoServer>, Portico) {
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("site")
            .path("site.test", "Prefix", "/", "web")
            .build(),
    );
    let files = [
        ("site.yaml", to_yaml(&docs)),
        ("controller.yaml", controller_config(keys)),
    ];
    let portico = Portico::start_full(&files, &[CONFIG], &[]).await;
    (servers, portico)
}

#[tokio::test(flavor = "multi_thread")]
async fn global_keys_apply_to_every_ingress_and_a_bad_value_keeps_the_last_good_one() {
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("site")
            .path("site.test", "Prefix", "/", "web")
            .build(),
    );
    docs.push(
        ingress("own")
            .path("own.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/proxy-body-size", "8k")
            .annotation("nginx.ingress.kubernetes.io/force-ssl-redirect", "false")
            .build(),
    );
    docs.push(config_map("answer-headers", &[("X-Frame-Options", "DENY")]));
    docs.push(config_map("upstream-headers", &[("X-Cluster", "eu-1")]));
    let keys = [
        ("proxy-body-size", "1k"),
        ("force-ssl-redirect", "true"),
        ("http-redirect-code", "301"),
        ("add-headers", "default/answer-headers"),
        ("proxy-set-headers", "upstream-headers"),
        ("block-user-agents", "~*badbot"),
        ("generate-request-id", "false"),
    ];
    let portico = Portico::start_full(
        &[
            ("site.yaml", to_yaml(&docs)),
            ("controller.yaml", controller_config(&keys)),
        ],
        &[CONFIG],
        &[],
    )
    .await;

    // force-ssl-redirect for every Ingress, with http-redirect-code's status.
    let reply = portico.client.get("site.test", "/a?b=1").await.unwrap();
    assert_eq!(reply.status, 301, "{}", reply.text());
    assert_eq!(reply.header("location"), Some("https://site.test/a?b=1"));

    // An Ingress's own annotations win over the ConfigMap's defaults.
    let reply = portico.client.get("own.test", "/").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-frame-options"), Some("DENY"), "add-headers");
    let echo = reply.echo().expect("reached the backend");
    assert_eq!(
        echo.headers.get("x-cluster").map(String::as_str),
        Some("eu-1")
    );
    assert!(
        !echo.headers.contains_key("x-request-id"),
        "generate-request-id is false"
    );
    assert_eq!(
        raw_status(portico.http, &post("own.test", &[b'x'; 4096])).await,
        200
    );

    let reply = portico
        .client
        .request("GET", "own.test", "/", &[("user-agent", "BadBot/2.0")])
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "block-user-agents");

    // A typo: reported, and the previous value stays.
    portico
        .apply(
            "controller.yaml",
            &controller_config(&[
                ("proxy-body-size", "one k"),
                ("force-ssl-redirect", "false"),
            ]),
        )
        .await;
    let site_post = |size: usize| post("site.test", &vec![b'x'; size]);
    assert_eq!(raw_status(portico.http, &site_post(2048)).await, 413);
    assert_eq!(raw_status(portico.http, &site_post(512)).await, 200);
    let config = portico.admin_get("/config").await.unwrap().text();
    assert!(
        config.contains(r#"key proxy-body-size: value \"one k\" is not"#)
            && config.contains(r#"keeping the previous value \"1k\""#),
        "{config}"
    );
    // Live: a new good value applies without a restart, and keys left out go back to
    // their defaults.
    portico
        .apply(
            "controller.yaml",
            &controller_config(&[("proxy-body-size", "4k")]),
        )
        .await;
    assert_eq!(raw_status(portico.http, &site_post(2048)).await, 200);
    let reply = portico
        .client
        .request("GET", "site.test", "/", &[("user-agent", "BadBot/2.0")])
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "no block list any more");
    assert!(reply.echo().unwrap().headers.contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn global_auth_guards_every_ingress_but_the_solver_and_those_that_opt_out() {
    let (servers, mut docs) = backends(&["web", "auth"]).await;
    docs.push(
        ingress("site")
            .path("site.test", "Prefix", "/", "web")
            .build(),
    );
    // What cert-manager's HTTP-01 solver creates beside the application's Ingress.
    docs.push(
        ingress("solver")
            .path(
                "site.test",
                "Exact",
                "/.well-known/acme-challenge/token",
                "web",
            )
            .build(),
    );
    docs.push(
        ingress("public")
            .path("public.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/enable-global-auth", "false")
            .build(),
    );
    let auth = servers.iter().find(|s| s.name == "auth").unwrap().addr;
    let url = format!("http://{auth}/check?status=401");
    let portico = Portico::start_full(
        &[
            ("site.yaml", to_yaml(&docs)),
            (
                "controller.yaml",
                controller_config(&[("global-auth-url", &url)]),
            ),
        ],
        &[CONFIG],
        &[],
    )
    .await;
    let status = |host: &'static str, path: &'static str| {
        let client = &portico.client;
        async move { client.get(host, path).await.unwrap().status }
    };
    assert_eq!(
        status("site.test", "/").await,
        401,
        "the auth service said no"
    );
    assert_eq!(
        status("site.test", "/.well-known/acme-challenge/other").await,
        401
    );
    assert_eq!(
        status("site.test", "/.well-known/acme-challenge/token").await,
        200,
        "no-auth-locations' default keeps cert-manager's solver reachable"
    );
    assert_eq!(
        status("public.test", "/").await,
        200,
        "enable-global-auth: false"
    );
}

#[test]
fn check_reports_bad_values_as_errors_and_ignored_keys_as_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |data: &[(&str, &str)]| {
        std::fs::write(dir.path().join("controller.yaml"), controller_config(data)).unwrap()
    };
    let check = || {
        let out = std::process::Command::new(binary("portico-controller"))
            .arg("--check")
            .arg(dir.path())
            .arg(CONFIG)
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    write(&[("ssl-session-tickets", "true"), ("proxy-body-size", "2m")]);
    let (code, report) = check();
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("warning  ConfigMap default/portico-controller: UnsupportedSetting: key ssl-session-tickets is not supported yet"),
        "{report}"
    );
    write(&[("proxy-body-size", "huge")]);
    let (code, report) = check();
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("error    ConfigMap default/portico-controller: InvalidSetting: key proxy-body-size: value \"huge\""),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn use_gzip_compresses_answers_for_clients_that_accept_it() {
    use std::io::Read;
    let (_servers, portico) = site_with(&[("use-gzip", "true"), ("gzip-min-length", "20")]).await;
    let gzipped = portico
        .client
        .request(
            "GET",
            "site.test",
            "/zipped",
            &[("accept-encoding", "gzip")],
        )
        .await
        .unwrap();
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert!(gzipped
        .header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")));
    let mut json = String::new();
    flate2::read::GzDecoder::new(&gzipped.body[..])
        .read_to_string(&mut json)
        .expect("a gzip body");
    let echo: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(echo["path"], "/zipped");

    let plain = portico.client.get("site.test", "/plain").await.unwrap();
    assert_eq!(
        plain.header("content-encoding"),
        None,
        "the client accepts no encoding"
    );
    assert_eq!(plain.echo().unwrap().path, "/plain");
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_backend_server_header_lets_the_upstreams_server_header_through() {
    let (_servers, portico) = site_with(&[("allow-backend-server-header", "true")]).await;
    let own = portico
        .client
        .get("site.test", "/?header=server:EchoServer%2F1.0")
        .await
        .unwrap();
    assert_eq!(own.header("server"), Some("EchoServer/1.0"));
    let none = portico.client.get("site.test", "/").await.unwrap();
    assert_eq!(
        none.header("server"),
        Some("portico"),
        "without one, Portico's"
    );
    let portico_answer = portico.client.get("nowhere.test", "/").await.unwrap();
    assert_eq!(portico_answer.header("server"), Some("portico"));
}
