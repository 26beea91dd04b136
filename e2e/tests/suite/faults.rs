//! Faults injected under load: what breaks around the proxy must not break what it serves.
//! (A controller restart and a backend failure are in `kube` and `traffic`; SIGTERM in
//! `shutdown`.)

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::load::Load;
use portico_e2e::manifests::{ingress, to_yaml};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_cut_short_keeps_serving_what_it_held_until_it_parses_again() {
    let (_servers, mut docs) = backends(&["web", "next"]).await;
    docs.push(ingress("site").path("f.test", "Prefix", "/", "web").build());
    let whole = to_yaml(&docs);
    let portico = Portico::start(&[("all.yaml", whole.clone())]).await;
    let load = Load::start(&portico, vec!["f.test".into()], "web");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A write that stopped half-way through the Ingress, in the middle of a key.
    let cut = whole.rfind("ingressClassName").expect("the Ingress") + "ingressClass".len();
    portico.write("all.yaml", &whole[..cut]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (sent, failed) = load.stop().await;
    assert!(sent > 50, "too few requests to tell: {sent}");
    assert_eq!(
        failed, 0,
        "requests failed while the manifest was cut short"
    );
    assert!(
        portico.logs().contains("last good objects are kept"),
        "the cut is reported"
    );

    // Written whole again, with a change: it applies.
    let mut changed = docs.clone();
    changed.pop();
    changed.push(
        ingress("site")
            .path("f.test", "Prefix", "/", "next")
            .build(),
    );
    portico.write("all.yaml", &to_yaml(&changed));
    portico
        .wait_until_served_by("the fixed manifest applies", "f.test", "next")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_the_proxy_refuses_what_it_cannot_take_and_recovers() {
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(ingress("site").path("d.test", "Prefix", "/", "web").build());
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    assert_eq!(
        portico
            .client
            .get("d.test", "/")
            .await
            .unwrap()
            .answered_by(),
        "web"
    );

    let limited = std::process::Command::new("prlimit")
        .args(["--nofile=96:96", "--pid", &portico.proxy_pid().to_string()])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());
    // Far more connections than descriptors left: the kernel queues them, the proxy's
    // accepts fail with EMFILE.
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(portico.http),
        )
        .await
        {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(held);

    // Once the clients are gone the accept loop takes connections again.
    portico
        .wait_until_served_by("the proxy serves again", "d.test", "web")
        .await;
    assert!(
        portico.logs().contains("Accept() failed"),
        "the exhaustion happened"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_socket_is_bound_again_and_a_proxy_without_controller_says_so() {
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(ingress("site").path("s.test", "Prefix", "/", "web").build());
    let mut portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    std::fs::remove_file(portico.socket()).unwrap();
    portico
        .wait_until("the controller binds its socket again", |p| async move {
            p.socket().exists()
                && p.logs()
                    .contains("the socket file was deleted; bound it again")
        })
        .await;

    portico.kill_controller();
    portico
        .wait_until("/readyz tells the link is down", |p| async move {
            p.admin_get("/readyz")
                .await
                .is_ok_and(|r| r.status == 200 && r.text().contains("controller link down"))
        })
        .await;
    let reply = portico.client.get("s.test", "/").await.unwrap();
    assert_eq!(
        reply.answered_by(),
        "web",
        "the last good snapshot keeps serving"
    );
}
