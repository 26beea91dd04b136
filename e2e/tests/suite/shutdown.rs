//! SIGTERM as Kubernetes sends it: the proxy keeps serving new connections through the
//! grace period with `/readyz` failing, then stops accepting and lets in-flight requests
//! finish before it exits by itself.

use portico_e2e::client::HttpClient;
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, to_yaml};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_serves_through_the_grace_then_drains_in_flight_requests_and_exits() {
    let (servers, mut docs) = backends(&["web", "slow"]).await;
    docs.push(
        ingress("site")
            .path("s.test", "Prefix", "/", "web")
            .path("s.test", "Prefix", "/slow", "slow")
            .build(),
    );
    let mut portico = Portico::start_with(
        &[("all.yaml", to_yaml(&docs))],
        &[
            "--shutdown-grace-seconds",
            "3",
            "--shutdown-drain-seconds",
            "4",
        ],
    )
    .await;
    assert_eq!(portico.admin_get("/readyz").await.unwrap().status, 200);

    // A request in flight across SIGTERM and past the grace: it ends during the drain.
    servers[1].set_delay(Duration::from_millis(4500));
    let in_flight = {
        let client = HttpClient::new(portico.http);
        tokio::spawn(async move { client.get("s.test", "/slow").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &portico.proxy_pid().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The grace: probes see 503, clients on new connections are still served.
    let ready = portico.admin_get("/readyz").await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.text());
    let fresh = HttpClient::new(portico.http)
        .get("s.test", "/")
        .await
        .unwrap();
    assert_eq!(
        fresh.answered_by(),
        "web",
        "a new connection during the grace"
    );
    assert_eq!(
        fresh.header("connection"),
        Some("close"),
        "clients are moved off their connections during the grace"
    );

    // After the grace: no new connection is accepted.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(portico.http).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the listener still accepts after the grace");

    let slow = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(slow.answered_by(), "slow");
    assert_eq!(
        slow.header("connection"),
        Some("close"),
        "its connection is not kept"
    );
    let status = portico
        .proxy_exit(Duration::from_secs(20))
        .await
        .expect("the proxy exits by itself after the drain");
    assert!(status.success(), "{status:?}");
}
