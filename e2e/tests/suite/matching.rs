//! Routing on headers, methods and query parameters (`portico.io/match-*`) through the
//! real binaries.

use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, to_yaml};

#[tokio::test(flavor = "multi_thread")]
async fn header_method_and_query_routes_sit_beside_the_plain_route() {
    let (servers, mut docs) = backends(&["plain", "beta", "writes", "v2", "admin"]).await;
    docs.push(
        ingress("plain")
            .path("app.test", "Prefix", "/", "plain")
            .build(),
    );
    docs.push(
        ingress("beta")
            .path("app.test", "Prefix", "/", "beta")
            .annotation("portico.io/match-headers", "x-env=beta, x-user~=^[a-z]+$")
            .build(),
    );
    docs.push(
        ingress("writes")
            .path("app.test", "Prefix", "/", "writes")
            .annotation("portico.io/match-methods", "POST, PUT")
            .build(),
    );
    docs.push(
        ingress("v2")
            .path("app.test", "Prefix", "/", "v2")
            .annotation("portico.io/match-query", "version=2\ndebug")
            .build(),
    );
    // Only conditioned routes on /admin: a request that meets none falls through to `/`.
    docs.push(
        ingress("admin")
            .path("app.test", "Prefix", "/admin", "admin")
            .annotation("portico.io/match-headers", "x-admin")
            .build(),
    );
    // A condition that does not parse keeps its Ingress out rather than routing everything.
    docs.push(
        ingress("broken")
            .path("broken.test", "Prefix", "/", "beta")
            .annotation("portico.io/match-headers", "x-env~=(")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;

    let by = |method: &'static str,
              path: &'static str,
              headers: &'static [(&'static str, &'static str)]| {
        let portico = &portico;
        async move {
            portico
                .client
                .request(method, "app.test", path, headers)
                .await
                .unwrap()
                .answered_by()
        }
    };
    assert_eq!(by("GET", "/x", &[]).await, "plain");
    assert_eq!(
        by("GET", "/x", &[("x-env", "beta"), ("x-user", "ann")]).await,
        "beta"
    );
    assert_eq!(
        by("GET", "/x", &[("x-env", "beta"), ("x-user", "Ann1")]).await,
        "plain",
        "every condition must hold"
    );
    assert_eq!(
        by("GET", "/x", &[("x-env", "BETA"), ("x-user", "ann")]).await,
        "plain",
        "values are exact"
    );
    assert_eq!(by("POST", "/x", &[]).await, "writes");
    assert_eq!(by("PUT", "/x", &[]).await, "writes");
    assert_eq!(by("DELETE", "/x", &[]).await, "plain");
    assert_eq!(by("GET", "/x?debug&version=2", &[]).await, "v2");
    assert_eq!(
        by("GET", "/x?version=%32&debug=1", &[]).await,
        "v2",
        "parameters are percent-decoded"
    );
    assert_eq!(by("GET", "/x?version=3&debug", &[]).await, "plain");
    assert_eq!(
        by("GET", "/admin/users", &[("x-admin", "")]).await,
        "admin",
        "presence is enough"
    );
    assert_eq!(by("GET", "/admin/users", &[]).await, "plain");
    assert_eq!(
        portico.client.get("broken.test", "/").await.unwrap().status,
        404
    );
    let logs = portico.logs();
    assert!(
        logs.contains("match-headers") && logs.contains("routes are skipped"),
        "the bad condition is reported"
    );
    drop(servers);
}
