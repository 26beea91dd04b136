//! `portico-controller --check DIR`, as a CI pipeline runs it before `kubectl apply`.

use portico_e2e::harness::binary;
use portico_e2e::manifests::{in_namespace, ingress, service_with_endpoints, to_yaml};

fn check(files: &[(&str, String)]) -> (i32, String) {
    check_with(files, &[])
}

fn check_with(files: &[(&str, String)], flags: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write manifest");
    }
    let out = std::process::Command::new(binary("portico-controller"))
        .arg("--check")
        .arg(dir.path())
        .args(flags)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn good_manifests_pass_and_list_what_they_route() {
    let mut docs = service_with_endpoints("web", &["127.0.0.1:8080".parse().unwrap()]);
    docs.push(
        ingress("site")
            .path("app.test", "Prefix", "/api", "web")
            .path("app.test", "Exact", "/", "web")
            .build(),
    );
    // Objects of a cluster the directory does not hold are warnings, not errors.
    docs.push(
        ingress("elsewhere")
            .path("other.test", "Prefix", "/", "not-here")
            .build(),
    );
    let (code, out) = check(&[("site.yaml", to_yaml(&docs))]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("  default/site\n") && out.contains("  default/elsewhere\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "app.test Prefix /api -> default/web:80 (1 endpoints) from Ingress default/site"
        ),
        "{out}"
    );
    assert!(
        out.contains("warning  Ingress default/elsewhere: ServiceNotFound"),
        "{out}"
    );
    assert!(out.contains("0 errors, 1 warnings"), "{out}");
}

#[test]
fn bad_manifests_fail_naming_the_object_and_field() {
    let mut docs = service_with_endpoints("web", &["127.0.0.1:8080".parse().unwrap()]);
    docs.push(
        ingress("older")
            .path("app.test", "Prefix", "/", "web")
            .build(),
    );
    docs.push(
        ingress("taken")
            .path("app.test", "Prefix", "/", "web")
            .build(),
    );
    docs.push(
        ingress("badpath")
            .path("bad.test", "Exact", "no-slash", "web")
            .build(),
    );
    docs.push(
        ingress("badregex")
            .path("re.test", "Prefix", "/", "web")
            .annotation("portico.io/match-headers", "x~=(")
            .build(),
    );
    let broken = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: typo}\nspec: {rules: 7}\n".to_string();
    let (code, out) = check(&[("all.yaml", to_yaml(&docs)), ("broken.yaml", broken)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error    Ingress default/badpath: InvalidPath: spec.rules[0].http.paths[0]"),
        "{out}"
    );
    assert!(
        out.contains("error    Ingress default/badregex: InvalidAnnotation"),
        "{out}"
    );
    assert!(
        out.contains("PathConflict") && out.contains("broken.yaml: document 0"),
        "{out}"
    );
}

#[test]
fn another_namespace_on_a_host_is_a_warning_shared_and_an_error_owned() {
    let mut docs = service_with_endpoints("web", &["127.0.0.1:8080".parse().unwrap()]);
    docs.extend(
        service_with_endpoints("web", &["127.0.0.1:8081".parse().unwrap()])
            .into_iter()
            .map(|d| in_namespace(d, "team-b")),
    );
    docs.push(
        ingress("site")
            .path("app.test", "Prefix", "/", "web")
            .build(),
    );
    docs.push(in_namespace(
        ingress("login")
            .path("app.test", "Exact", "/login", "web")
            .build(),
        "team-b",
    ));
    let files = [("all.yaml", to_yaml(&docs))];

    let (code, out) = check(&files);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning  Ingress default/site: CrossNamespaceShadowing: host \"app.test\": Exact path \"/login\" of Ingress team-b/login"),
        "{out}"
    );
    assert!(
        out.contains("from Ingress team-b/login"),
        "shared: both route\n{out}"
    );

    let (code, out) = check_with(&files, &["--host-ownership", "namespace"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error    Ingress team-b/login: HostConflict: host \"app.test\" belongs to namespace \"default\""),
        "{out}"
    );
    assert!(
        !out.contains("from Ingress team-b/login"),
        "owned: only default routes\n{out}"
    );
}

#[test]
fn gateway_api_objects_are_checked_and_listed() {
    let yaml = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: portico
  listeners:
  - {name: http, protocol: HTTP, port: 80}
  - {name: sctp, protocol: SCTP, port: 9000}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: gw}]
  hostnames: [web.test]
  rules:
  - backendRefs: [{name: missing, port: 80}]
"#;
    let (code, out) = check(&[("gateway.yaml", yaml.to_string())]);
    assert_eq!(
        code, 1,
        "a listener that cannot be served is an error:\n{out}"
    );
    for line in [
        "Gateway default/gw: NotAccepted: spec.listeners[1] (\"sctp\"): protocol \"SCTP\" is not served",
        "HTTPRoute default/web: ServiceNotFound: spec.rules[0].backendRefs[0]",
        "default/gw listener \"http\": serving, 1 routes attached",
        "default/gw listener \"sctp\": not serving, 0 routes attached",
        "HTTPRoute default/web: accepted by 1 of 1 parents, some references unresolved",
        "web.test Prefix / -> httproute:default/web|unresolved (0 endpoints) from HTTPRoute default/web",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}
