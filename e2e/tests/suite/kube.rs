//! The controller as a Kubernetes controller: the real binaries, through kube-rs, against
//! the test API server (`portico_e2e::kube_api`).

use portico_e2e::echo::{backends, EchoServer};
use portico_e2e::harness::Portico;
use portico_e2e::kube_api::TestApiServer;
use portico_e2e::load::Load;
use portico_e2e::manifests::{
    config_map, ingress, ingress_class, service_with_endpoints, tls_secret,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONTROLLER: &str = "portico.io/ingress-controller";

/// An API server holding the `portico` IngressClass and one Service per backend name.
async fn cluster(names: &[&str]) -> (TestApiServer, Vec<EchoServer>) {
    let api = TestApiServer::start().await.expect("test API server");
    let (servers, docs) = backends(names).await;
    api.apply(&ingress_class("portico", CONTROLLER, false));
    api.apply_all(&docs);
    (api, servers)
}

async fn answered_by(portico: &Portico, host: &str, path: &str) -> String {
    portico
        .client
        .get(host, path)
        .await
        .map_or_else(|e| format!("error:{e}"), |r| r.answered_by())
}

async fn wait_for_answer(portico: &Portico, host: &str, path: &str, expected: &str) {
    let what = format!("{host}{path} is answered by {expected}");
    portico
        .wait_until(&what, |p| async move {
            answered_by(p, host, path).await == expected
        })
        .await;
}

/// The status addresses of an Ingress as `ip` or `hostname` strings.
fn status_addresses(api: &TestApiServer, name: &str) -> Vec<String> {
    let Some(ingress) = api.get("networking.k8s.io/v1", "Ingress", "default", name) else {
        return vec![];
    };
    ingress["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            a["ip"]
                .as_str()
                .or(a["hostname"].as_str())
                .map(String::from)
        })
        .collect()
}

async fn eventually(
    portico: &Portico,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "timed out after {timeout:?} waiting until {what}\n{}",
        portico.logs()
    );
}

/// Whether the proxy's applied snapshot holds the certificate of Secret `name` (NS/NAME).
async fn serves_certificate(p: &Portico, name: &str) -> bool {
    let Ok(reply) = p.admin_get("/config").await else {
        return false;
    };
    let config: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    config["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"].as_str() == Some(name))
}

/// Whether `k.test` answers with `X-Custom: value` (`None`: without the header).
async fn custom_header_is(p: &Portico, value: Option<&str>) -> bool {
    p.client
        .get("k.test", "/")
        .await
        .is_ok_and(|r| r.header("x-custom") == value)
}

#[tokio::test(flavor = "multi_thread")]
async fn create_update_and_delete_of_every_watched_kind_reach_the_proxy() {
    let (api, _servers) = cluster(&["a", "b", "c"]).await;
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "a").build());
    let portico = Portico::start_kube(&api, &[], &[]).await;
    assert_eq!(answered_by(&portico, "k.test", "/").await, "a");

    // Ingress: update, then a second one, then delete it.
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "b").build());
    wait_for_answer(&portico, "k.test", "/", "b").await;
    let second = ingress("second")
        .path("two.test", "Prefix", "/", "a")
        .build();
    api.apply(&second);
    wait_for_answer(&portico, "two.test", "/", "a").await;
    api.delete(&second);
    wait_for_answer(&portico, "two.test", "/", "status:404").await;

    // EndpointSlice: service b's endpoints move to backend c's address.
    let c_addr = _servers.iter().find(|s| s.name == "c").unwrap().addr;
    let slices = service_with_endpoints("b", &[c_addr]);
    api.apply(&slices[1]);
    wait_for_answer(&portico, "k.test", "/", "c").await;

    // Service: deleted, then created again.
    api.delete(&slices[0]);
    wait_for_answer(&portico, "k.test", "/", "status:503").await;
    api.apply(&slices[0]);
    wait_for_answer(&portico, "k.test", "/", "c").await;

    // Secret: a TLS Secret named by the Ingress becomes a served certificate, and goes.
    let issued = portico_e2e::tls::TestCa::new("Kube CA").issue(&["k.test"]);
    let (cert, key) = (issued.cert_pem, issued.key_pem);
    api.apply(
        &ingress("web")
            .path("k.test", "Prefix", "/", "b")
            .tls(&["k.test"], "k-tls")
            .build(),
    );
    api.apply(&tls_secret("k-tls", &cert, &key));
    portico
        .wait_until("the certificate is served", |p| {
            serves_certificate(p, "default/k-tls")
        })
        .await;
    api.delete(&tls_secret("k-tls", &cert, &key));
    portico
        .wait_until("the certificate is gone", |p| async move {
            !serves_certificate(p, "default/k-tls").await
        })
        .await;
    // (A TLS section redirects plain HTTP to HTTPS; drop it to go on testing over HTTP.)
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "b").build());

    // ConfigMap: `custom-headers` follows its entries.
    api.apply(
        &ingress("web")
            .path("k.test", "Prefix", "/", "b")
            .annotation("nginx.ingress.kubernetes.io/custom-headers", "headers")
            .build(),
    );
    api.apply(&config_map("headers", &[("X-Custom", "one")]));
    portico
        .wait_until("the ConfigMap's header is sent", |p| {
            custom_header_is(p, Some("one"))
        })
        .await;
    api.apply(&config_map("headers", &[("X-Custom", "two")]));
    portico
        .wait_until("the changed header is sent", |p| {
            custom_header_is(p, Some("two"))
        })
        .await;
    api.delete(&config_map("headers", &[]));
    portico
        .wait_until("the header is gone with the ConfigMap", |p| {
            custom_header_is(p, None)
        })
        .await;
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "b").build());

    // IngressClass: without it, nothing is admitted.
    api.delete(&ingress_class("portico", CONTROLLER, false));
    wait_for_answer(&portico, "k.test", "/", "status:404").await;
    api.apply(&ingress_class("portico", CONTROLLER, false));
    wait_for_answer(&portico, "k.test", "/", "c").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_snapshot_is_served_until_every_kind_is_listed() {
    // Secrets cannot be listed for the first two seconds, as with RBAC not yet granted:
    // the controller must not build a snapshot from the other kinds alone, so the proxy
    // (which the harness waits for) cannot become ready before then.
    let (api, _servers) = cluster(&["a"]).await;
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "a").build());
    api.forbid("secrets");
    let api = Arc::new(api);
    let allow = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            api.allow("secrets");
        })
    };
    let begun = Instant::now();
    let portico = Portico::start_kube(&api, &[], &[]).await;
    assert!(
        begun.elapsed() >= Duration::from_secs(2),
        "ready before the Secret list succeeded"
    );
    allow.await.unwrap();
    assert_eq!(answered_by(&portico, "k.test", "/").await, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_watch_relists_without_losing_or_duplicating_routes() {
    let (api, _servers) = cluster(&["a", "b"]).await;
    for i in 0..20 {
        api.apply(
            &ingress(&format!("ing{i}"))
                .path(&format!("h{i}.test"), "Prefix", "/", "a")
                .build(),
        );
    }
    let metrics = portico_e2e::harness::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let portico = Portico::start_kube(&api, &["--metrics-addr", &metrics_addr], &[]).await;
    for i in 0..20 {
        assert_eq!(answered_by(&portico, &format!("h{i}.test"), "/").await, "a");
    }

    // Requests keep flowing while every watch expires and relists.
    let load = Load::start(
        &portico,
        (0..20).map(|i| format!("h{i}.test")).collect(),
        "a",
    );
    api.expire_watches();
    // Changed while the watchers are between their old watch and their relist.
    api.apply(
        &ingress("late")
            .path("late.test", "Prefix", "/", "b")
            .build(),
    );
    api.delete(&ingress("ing0").build());
    wait_for_answer(&portico, "late.test", "/", "b").await;
    wait_for_answer(&portico, "h0.test", "/", "status:404").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (requests, failures) = load.stop().await;

    // h0 answers 404 once deleted; any other failure is a lost route.
    let config: Value =
        serde_json::from_slice(&portico.admin_get("/config").await.unwrap().body).unwrap();
    let hosts: Vec<&str> = config["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap_or(""))
        .collect();
    let mut unique = hosts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(hosts.len(), unique.len(), "a host is duplicated: {hosts:?}");
    assert_eq!(hosts.len(), 20, "19 old hosts and late.test: {hosts:?}");
    let text = portico_e2e::client::HttpClient::new(([127, 0, 0, 1], metrics).into())
        .get("", "/metrics")
        .await
        .unwrap()
        .text();
    // (A watcher that saw a change after the compaction resumes from it without a 410.)
    let restarts = text
        .lines()
        .filter(|l| l.starts_with("portico_controller_watch_restarts_total{"))
        .count();
    assert!(restarts >= 3, "the expired watches are counted:\n{text}");
    // Only requests for h0 after its deletion may fail.
    assert!(
        failures <= requests / 20 + 1,
        "{failures} of {requests} requests failed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_addresses_go_on_admitted_ingresses_only_and_are_cleared_after() {
    let (api, _servers) = cluster(&["a"]).await;
    api.apply(&ingress_class(
        "other",
        "example.com/other-controller",
        false,
    ));
    api.apply(
        &ingress("ours")
            .path("ours.test", "Prefix", "/", "a")
            .build(),
    );
    api.apply(
        &ingress("theirs")
            .class(Some("other"))
            .path("theirs.test", "Prefix", "/", "a")
            .build(),
    );
    let portico = Portico::start_kube(
        &api,
        &["--publish-status-address", "192.0.2.10,lb.example.com"],
        &[],
    )
    .await;

    let expected = vec!["192.0.2.10".to_string(), "lb.example.com".to_string()];
    eventually(
        &portico,
        "the admitted Ingress has the status",
        Duration::from_secs(15),
        || {
            let mut got = status_addresses(&api, "ours");
            got.sort();
            got == expected
        },
    )
    .await;
    assert!(
        status_addresses(&api, "theirs").is_empty(),
        "another controller's Ingress got our status"
    );

    // A correct status is not written again, however often the controller translates.
    let status_writes = |api: &TestApiServer| {
        api.writes()
            .iter()
            .filter(|w| w.ends_with("/status"))
            .count()
    };
    let before = status_writes(&api);
    for i in 0..3 {
        api.apply(
            &ingress(&format!("noise{i}"))
                .class(Some("other"))
                .path("n.test", "Prefix", "/", "a")
                .build(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        status_writes(&api),
        before,
        "status was rewritten though unchanged: {:?}",
        api.writes()
    );

    // Moved to the other class: our status is taken away.
    api.apply(
        &ingress("ours")
            .class(Some("other"))
            .path("ours.test", "Prefix", "/", "a")
            .build(),
    );
    eventually(
        &portico,
        "the status is cleared",
        Duration::from_secs(15),
        || status_addresses(&api, "ours").is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_service_gives_its_load_balancer_address() {
    let (api, _servers) = cluster(&["a"]).await;
    let mut service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "portico", "namespace": "portico-system"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}},
    });
    api.apply(&service);
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "a").build());
    let portico =
        Portico::start_kube(&api, &["--publish-service", "portico-system/portico"], &[]).await;
    eventually(
        &portico,
        "the Service's address is published",
        Duration::from_secs(15),
        || status_addresses(&api, "web") == ["203.0.113.7"],
    )
    .await;
    service["status"]["loadBalancer"]["ingress"] = json!([{"hostname": "lb.example.net"}]);
    api.apply(&service);
    eventually(
        &portico,
        "the new address is published",
        Duration::from_secs(15),
        || status_addresses(&api, "web") == ["lb.example.net"],
    )
    .await;
}

fn lease_holder(api: &TestApiServer) -> Option<String> {
    api.get(
        "coordination.k8s.io/v1",
        "Lease",
        "portico-system",
        "portico-leader",
    )?["spec"]["holderIdentity"]
        .as_str()
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_controllers_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let (api, _servers) = cluster(&["a"]).await;
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "a").build());
    // Each replica would publish a different address: the status shows who writes.
    let mut portico =
        Portico::start_kube(&api, &["--publish-status-address", "192.0.2.1"], &[]).await;
    let mut replica = portico.start_replica("replica", &["--publish-status-address", "192.0.2.2"]);
    let first = ["192.0.2.1", "192.0.2.2"];
    eventually(
        &portico,
        "a leader has written status",
        Duration::from_secs(15),
        || {
            let s = status_addresses(&api, "web");
            s.len() == 1 && first.contains(&s[0].as_str())
        },
    )
    .await;
    let leader_address = status_addresses(&api, "web")[0].clone();
    // Both keep running for more than a lease duration: the status must not flip.
    let holder = lease_holder(&api);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            status_addresses(&api, "web"),
            [leader_address.as_str()],
            "a follower wrote status"
        );
        assert_eq!(
            lease_holder(&api),
            holder,
            "the lease changed hands while the leader was alive"
        );
    }
    let writes = api
        .writes()
        .iter()
        .filter(|w| w.ends_with("/status"))
        .count();
    assert_eq!(
        writes,
        1,
        "one status write by the one leader: {:?}",
        api.writes()
    );

    // Kill the leader without a clean shutdown; the follower takes over within the
    // lease duration (3 s here) plus one retry period.
    let follower_address = if leader_address == "192.0.2.1" {
        portico.kill_controller();
        "192.0.2.2"
    } else {
        replica.kill();
        "192.0.2.1"
    };
    let handover = eventually(
        &portico,
        "the follower took over",
        Duration::from_secs(15),
        || status_addresses(&api, "web") == [follower_address],
    )
    .await;
    assert!(
        handover < Duration::from_secs(6),
        "handover took {handover:?}"
    );
    assert_ne!(lease_holder(&api), holder);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controller_restart_keeps_the_proxy_serving_throughout() {
    let (api, _servers) = cluster(&["a", "b"]).await;
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "a").build());
    let mut portico = Portico::start_kube(&api, &[], &[]).await;
    let load = Load::start(&portico, vec!["k.test".into()], "a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    portico.restart_controller();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (requests, failures) = load.stop().await;
    assert!(requests > 50, "too few requests to tell: {requests}");
    assert_eq!(failures, 0, "requests failed across the restart");

    // The new controller serves changes.
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "b").build());
    wait_for_answer(&portico, "k.test", "/", "b").await;
}

fn events_for(api: &TestApiServer, name: &str, reason: &str) -> usize {
    api.list("events.k8s.io/v1", "Event")
        .iter()
        .filter(|e| {
            e["regarding"]["name"].as_str() == Some(name) && e["reason"].as_str() == Some(reason)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn diagnostics_become_warning_events_once_and_admission_a_sync_event() {
    let (api, _servers) = cluster(&["a"]).await;
    api.apply(
        &ingress("good")
            .path("good.test", "Prefix", "/", "a")
            .build(),
    );
    api.apply(
        &ingress("broken")
            .path("broken.test", "Prefix", "/", "missing")
            .build(),
    );
    let metrics = portico_e2e::harness::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let portico = Portico::start_kube(&api, &["--metrics-addr", &metrics_addr], &[]).await;
    eventually(
        &portico,
        "a ServiceNotFound Warning on the broken Ingress",
        Duration::from_secs(15),
        || events_for(&api, "broken", "ServiceNotFound") == 1,
    )
    .await;
    eventually(
        &portico,
        "Sync events for both",
        Duration::from_secs(15),
        || events_for(&api, "good", "Sync") == 1 && events_for(&api, "broken", "Sync") == 1,
    )
    .await;
    let event = api
        .list("events.k8s.io/v1", "Event")
        .into_iter()
        .find(|e| e["reason"] == "ServiceNotFound")
        .unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["regarding"]["kind"], "Ingress");
    assert!(
        event["note"].as_str().unwrap_or("").contains("missing"),
        "the note names the Service: {event}"
    );
    assert!(
        event["regarding"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty()),
        "the event names the object's uid"
    );

    // More translations, same problem: no more Events.
    for i in 0..3 {
        api.apply(
            &ingress("good")
                .annotation("touch", &i.to_string())
                .path("good.test", "Prefix", "/", "a")
                .build(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(events_for(&api, "broken", "ServiceNotFound"), 1);
    assert_eq!(events_for(&api, "good", "Sync"), 1);

    let text = portico_e2e::client::HttpClient::new(([127, 0, 0, 1], metrics).into())
        .get("", "/metrics")
        .await
        .unwrap()
        .text();
    for expected in [
        "portico_controller_leader 1",
        "portico_controller_connected_proxies 1",
        "portico_controller_diagnostics{reason=\"ServiceNotFound\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "metrics lack {expected:?}:\n{text}"
        );
    }
    assert!(
        text.contains("portico_controller_proxy_acknowledged_version{proxy="),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("portico_controller_snapshot_builds_total ") && !l.ends_with(" 0")
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stopped_cleanly_releases_the_lease_at_once() {
    let (api, _servers) = cluster(&["a"]).await;
    api.apply(&ingress("web").path("k.test", "Prefix", "/", "a").build());
    // A long lease: only a released one can change hands quickly.
    let mut portico = Portico::start_kube(
        &api,
        &[
            "--publish-status-address",
            "192.0.2.1",
            "--lease-duration-secs",
            "30",
        ],
        &[],
    )
    .await;
    eventually(
        &portico,
        "the first controller leads",
        Duration::from_secs(15),
        || status_addresses(&api, "web") == ["192.0.2.1"],
    )
    .await;
    let _replica = portico.start_replica("replica", &["--publish-status-address", "192.0.2.2"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        status_addresses(&api, "web"),
        ["192.0.2.1"],
        "the second replica must follow"
    );

    portico.stop_controller();
    let handover = eventually(
        &portico,
        "the replica took over",
        Duration::from_secs(20),
        || status_addresses(&api, "web") == ["192.0.2.2"],
    )
    .await;
    // The replica looks every lease/5 = 6 s; without the release it would wait 30 s.
    assert!(
        handover < Duration::from_secs(10),
        "handover after a clean stop took {handover:?}"
    );
}

/// An HTTP request written by hand through a TCP port; the status line of the answer.
async fn status_line_through(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: tcp.test\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tcp_services_config_map_is_watched_outside_the_watched_namespaces() {
    use portico_e2e::manifests::in_namespace;
    let (api, _servers) = cluster(&["a"]).await;
    let (first, second) = (
        portico_e2e::harness::free_port(),
        portico_e2e::harness::free_port(),
    );
    let services = |port: u16| {
        in_namespace(
            config_map("tcp-services", &[(&port.to_string(), "default/a:80")]),
            "ingress",
        )
    };
    api.apply(&services(first));
    let portico = Portico::start_kube(
        &api,
        &[
            "--watch-namespace",
            "default",
            "--tcp-services-configmap",
            "ingress/tcp-services",
        ],
        &["--stream-bind", "127.0.0.1"],
    )
    .await;
    portico
        .wait_until("the TCP port relays to the Service", |_| async move {
            status_line_through(first).await.as_deref() == Some("HTTP/1.1 200 OK")
        })
        .await;
    api.apply(&services(second));
    portico
        .wait_until("the port follows the ConfigMap", |_| async move {
            status_line_through(second).await.as_deref() == Some("HTTP/1.1 200 OK")
                && status_line_through(first).await.is_none()
        })
        .await;
}
