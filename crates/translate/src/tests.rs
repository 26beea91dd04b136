//! Translation as a whole: objects in, snapshot and diagnostics out.

use crate::{translate, ClusterState, KubeObject, Options, Reason, Translation};
use portico_model::{Endpoint, HostMatch, PathMatch, Route, SourceRef, VirtualHost};
use serde_json::{json, Value};
use std::sync::Arc;

fn ingress(ns: &str, name: &str, spec: Value) -> KubeObject {
    ingress_with(json!({"name": name, "namespace": ns}), spec)
}

fn ingress_with(metadata: Value, spec: Value) -> KubeObject {
    KubeObject::Ingress(
        serde_json::from_value(json!({"metadata": metadata, "spec": spec})).unwrap(),
    )
}

fn class(name: &str, controller: &str, default: bool) -> KubeObject {
    let annotations = if default {
        json!({"ingressclass.kubernetes.io/is-default-class": "true"})
    } else {
        json!({})
    };
    KubeObject::IngressClass(
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}, "spec": {"controller": controller}}))
            .unwrap(),
    )
}

fn service(ns: &str, name: &str, ports: Value) -> KubeObject {
    KubeObject::Service(
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": ns}, "spec": {"ports": ports}}),
        )
        .unwrap(),
    )
}

fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    family: &str,
    ports: Value,
    endpoints: Value,
) -> KubeObject {
    KubeObject::EndpointSlice(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family, "ports": ports, "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

fn rule(host: &str, path_type: &str, path: &str, svc: &str, port: Value) -> Value {
    json!({"host": host, "http": {"paths": [{"path": path, "pathType": path_type, "backend": {"service": {"name": svc, "port": port}}}]}})
}

fn run(objects: Vec<KubeObject>) -> Translation {
    translate(
        &objects.into_iter().collect::<ClusterState>(),
        &Options::default(),
    )
}

fn reasons(t: &Translation) -> Vec<(String, Reason)> {
    t.diagnostics
        .iter()
        .map(|d| (d.object.name.clone(), d.reason))
        .collect()
}

fn hosts(t: &Translation) -> Vec<String> {
    t.snapshot
        .virtual_hosts
        .iter()
        .map(|v| v.host.to_string())
        .collect()
}

fn ours() -> KubeObject {
    class("portico", crate::CONTROLLER_NAME, false)
}

#[test]
fn class_admission() {
    let simple = |name: &str, host: &str| json!({"ingressClassName": name, "rules": [rule(host, "Prefix", "/", "s", json!({"number": 80}))]});
    let t = run(vec![
        ours(),
        class("other", "example.com/other", false),
        ingress("ns", "mine", simple("portico", "mine.test")),
        ingress("ns", "theirs", simple("other", "theirs.test")),
        ingress("ns", "ghost", simple("ghost", "ghost.test")),
        ingress_with(
            json!({"name": "legacy", "namespace": "ns", "annotations": {"kubernetes.io/ingress.class": "portico"}}),
            json!({"rules": [rule("legacy.test", "Prefix", "/", "s", json!({"number": 80}))]}),
        ),
        ingress(
            "ns",
            "classless",
            json!({"rules": [rule("classless.test", "Prefix", "/", "s", json!({"number": 80}))]}),
        ),
    ]);
    assert_eq!(hosts(&t), ["legacy.test", "mine.test"]);
    assert!(reasons(&t).contains(&("ghost".into(), Reason::UnknownIngressClass)));
    assert!(
        !reasons(&t).iter().any(|(n, _)| n == "theirs"),
        "other controllers' Ingresses are not ours to judge"
    );

    // Marked default, the class also takes Ingresses that name none.
    let t = run(vec![
        class("portico", crate::CONTROLLER_NAME, true),
        ingress(
            "ns",
            "classless",
            json!({"rules": [rule("classless.test", "Prefix", "/", "s", json!({"number": 80}))]}),
        ),
    ]);
    assert_eq!(hosts(&t), ["classless.test"]);

    // An IngressClass named portico that belongs to another controller is not ours.
    let t = run(vec![
        class("portico", "example.com/other", true),
        ingress("ns", "mine", simple("portico", "mine.test")),
    ]);
    assert!(hosts(&t).is_empty());

    // Without the class object, only the manifests mode assumes it exists.
    let state: ClusterState = [ingress("ns", "mine", simple("portico", "mine.test"))]
        .into_iter()
        .collect();
    assert!(hosts(&translate(&state, &Options::default())).is_empty());
    let assumed = Options {
        assume_class_exists: true,
        ..Options::default()
    };
    assert_eq!(hosts(&translate(&state, &assumed)), ["mine.test"]);
}

#[test]
fn the_oldest_ingress_wins_a_path_conflict() {
    let spec = |svc: &str| json!({"ingressClassName": "portico", "rules": [rule("shop.test", "Prefix", "/cart/", svc, json!({"number": 80}))]});
    let older = ingress_with(
        json!({"name": "z-older", "namespace": "b", "creationTimestamp": "2024-01-01T00:00:00Z"}),
        spec("old"),
    );
    let newer = ingress_with(
        json!({"name": "a-newer", "namespace": "a", "creationTimestamp": "2025-01-01T00:00:00Z"}),
        spec("new"),
    );
    let t = run(vec![ours(), newer, older]);
    let routes = &t.snapshot.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].backend, "b/old:80");
    let conflict = t
        .diagnostics
        .iter()
        .find(|d| d.reason == Reason::PathConflict)
        .expect("conflict diagnostic");
    assert_eq!(conflict.object.name, "a-newer");
    assert!(
        conflict.message.contains("b/z-older") && conflict.message.contains("\"/cart\""),
        "{}",
        conflict.message
    );

    // Same path but another type is no conflict: Exact and Prefix live side by side.
    let exact = json!({"ingressClassName": "portico", "rules": [rule("shop.test", "Exact", "/cart", "x", json!({"number": 80}))]});
    let t = run(vec![
        ours(),
        ingress("a", "one", spec("old")),
        ingress("a", "two", exact),
    ]);
    assert_eq!(t.snapshot.virtual_hosts[0].routes.len(), 2);
    assert!(!reasons(&t).iter().any(|(_, r)| *r == Reason::PathConflict));
}

#[test]
fn path_conflicts_are_found_on_hosts_with_many_routes() {
    // Hosts of up to 16 routes are searched, longer ones indexed: both must find a taken path.
    let paths = |svc: &str, range: std::ops::Range<usize>| {
        let paths: Vec<Value> = range
            .map(|i| json!({"path": format!("/p{i}"), "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": 80}}}}))
            .collect();
        json!({"ingressClassName": "portico", "rules": [{"host": "many.test", "http": {"paths": paths}}]})
    };
    for taken in [3, 15, 16, 30] {
        let older = ingress_with(
            json!({"name": "older", "namespace": "ns", "creationTimestamp": "2024-01-01T00:00:00Z"}),
            paths("old", 0..40),
        );
        let newer = ingress_with(
            json!({"name": "newer", "namespace": "ns", "creationTimestamp": "2025-01-01T00:00:00Z"}),
            paths("new", taken..taken + 1),
        );
        let extra = ingress_with(
            json!({"name": "extra", "namespace": "ns", "creationTimestamp": "2025-02-01T00:00:00Z"}),
            paths("new", 40..41),
        );
        let t = run(vec![ours(), older, newer, extra]);
        let routes = &t.snapshot.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 41, "taken {taken}");
        assert!(
            routes
                .iter()
                .filter(|r| r.backend == "ns/new:80")
                .map(|r| r.path.path())
                .eq(["/p40"]),
            "taken {taken}"
        );
        let conflicts: Vec<_> = reasons(&t)
            .into_iter()
            .filter(|(_, r)| *r == Reason::PathConflict)
            .collect();
        assert_eq!(
            conflicts,
            [("newer".to_string(), Reason::PathConflict)],
            "taken {taken}"
        );
    }
}

#[test]
fn default_backends_and_invalid_ingresses() {
    let default = |svc: &str| json!({"ingressClassName": "portico", "defaultBackend": {"service": {"name": svc, "port": {"number": 80}}}});
    let t = run(vec![
        ours(),
        service("ns", "first", json!([{"port": 80}])),
        ingress("ns", "a", default("first")),
        ingress("ns", "b", default("second")),
        ingress("ns", "empty", json!({"ingressClassName": "portico"})),
        ingress(
            "ns",
            "resource",
            json!({"ingressClassName": "portico", "defaultBackend": {"resource": {"kind": "Bucket", "name": "x"}}}),
        ),
    ]);
    assert_eq!(t.snapshot.default_backend.as_deref(), Some("ns/first:80"));
    let r = reasons(&t);
    assert!(
        r.contains(&("b".into(), Reason::DefaultBackendConflict)),
        "{r:?}"
    );
    assert!(
        r.contains(&("empty".into(), Reason::InvalidIngress)),
        "{r:?}"
    );
    assert!(
        r.contains(&("resource".into(), Reason::UnsupportedBackend)),
        "{r:?}"
    );
    let mut stamped = t.snapshot.clone();
    stamped.version = 1;
    assert_eq!(
        stamped.validate(),
        Ok(()),
        "a translation always yields a valid snapshot"
    );
}

#[test]
fn backends_resolve_through_service_and_slice_ports() {
    let t = run(vec![
        ours(),
        service(
            "ns",
            "web",
            json!([{"name": "http", "port": 80}, {"name": "admin", "port": 9000}]),
        ),
        slice(
            "ns",
            "web-v4",
            "web",
            "IPv4",
            json!([{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}]),
            json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"]},
            ]),
        ),
        slice(
            "ns",
            "web-v6",
            "web",
            "IPv6",
            json!([{"name": "http", "port": 8080}]),
            json!([{"addresses": ["fd00::1"]}]),
        ),
        slice(
            "ns",
            "web-fqdn",
            "web",
            "FQDN",
            json!([{"name": "http", "port": 8080}]),
            json!([{"addresses": ["x.example"]}]),
        ),
        // Same label, other namespace: never read across namespaces.
        slice(
            "other",
            "web-elsewhere",
            "web",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            json!([{"addresses": ["10.9.9.9"]}]),
        ),
        ingress(
            "ns",
            "site",
            json!({"ingressClassName": "portico", "rules": [
                rule("site.test", "Prefix", "/", "web", json!({"name": "http"})),
                rule("admin.test", "Prefix", "/", "web", json!({"number": 9000})),
            ]}),
        ),
    ]);
    let by_name = |n: &str| {
        t.snapshot
            .backend(n)
            .unwrap_or_else(|| panic!("backend {n}"))
            .endpoints
            .clone()
    };
    let ep = |a: &str, port, ready| Endpoint {
        address: a.parse().unwrap(),
        port,
        ready,
    };
    assert_eq!(
        by_name("ns/web:http"),
        [
            ep("10.0.0.1", 8080, true),
            ep("10.0.0.2", 8080, false),
            ep("10.0.0.3", 8080, true),
            ep("fd00::1", 8080, true)
        ]
    );
    assert_eq!(
        by_name("ns/web:9000"),
        [
            ep("10.0.0.1", 9090, true),
            ep("10.0.0.2", 9090, false),
            ep("10.0.0.3", 9090, true)
        ]
    );
    assert!(t.diagnostics.is_empty(), "{:?}", t.diagnostics);
}

#[test]
fn unroutable_backends_keep_their_route_and_say_why() {
    let t = run(vec![
        ours(),
        service("ns", "noports", json!([{"name": "http", "port": 80}])),
        service("ns", "idle", json!([{"port": 80}])),
        slice(
            "ns",
            "idle-1",
            "idle",
            "IPv4",
            json!([{"port": 80}]),
            json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]),
        ),
        service("b", "elsewhere", json!([{"port": 80}])),
        ingress(
            "ns",
            "site",
            json!({"ingressClassName": "portico", "rules": [{"host": "site.test", "http": {"paths": [
                {"path": "/missing", "pathType": "Prefix", "backend": {"service": {"name": "nope", "port": {"number": 80}}}},
                {"path": "/port", "pathType": "Prefix", "backend": {"service": {"name": "noports", "port": {"number": 81}}}},
                {"path": "/idle", "pathType": "Prefix", "backend": {"service": {"name": "idle", "port": {"number": 80}}}},
                {"path": "/cross", "pathType": "Prefix", "backend": {"service": {"name": "elsewhere", "port": {"number": 80}}}},
            ]}}]}),
        ),
    ]);
    assert_eq!(
        t.snapshot.virtual_hosts[0].routes.len(),
        4,
        "routes stay, to answer 503"
    );
    let r: Vec<Reason> = t.diagnostics.iter().map(|d| d.reason).collect();
    assert_eq!(
        r,
        [
            Reason::ServiceNotFound,
            Reason::ServiceNotFound,
            Reason::ServicePortNotFound,
            Reason::NoReadyEndpoints
        ]
    );
    let missing = &t.diagnostics[0].message;
    assert!(
        missing.contains("spec.rules[0].http.paths") && missing.contains("ns/"),
        "{missing}"
    );
    assert!(t
        .snapshot
        .backends
        .iter()
        .all(|b| !b.endpoints.iter().any(|e| e.ready)));
}

#[test]
fn invalid_rules_skip_only_themselves() {
    let t = run(vec![
        ours(),
        ingress(
            "ns",
            "mixed",
            json!({"ingressClassName": "portico", "rules": [
                rule("10.0.0.1", "Prefix", "/", "s", json!({"number": 80})),
                rule("good.test", "Prefix", "/a/../b", "s", json!({"number": 80})),
                rule("good.test", "Exact", "/ok", "s", json!({"number": 80})),
                rule("*.Wild.test", "ImplementationSpecific", "/x/", "s", json!({"number": 80})),
            ]}),
        ),
    ]);
    let vh: Vec<(HostMatch, Vec<PathMatch>)> = t
        .snapshot
        .virtual_hosts
        .iter()
        .map(|v| {
            (
                v.host.clone(),
                v.routes.iter().map(|r| r.path.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        vh,
        [
            (
                HostMatch::Exact("good.test".into()),
                vec![PathMatch::Exact("/ok".into())]
            ),
            (
                HostMatch::Wildcard("wild.test".into()),
                vec![PathMatch::Prefix("/x".into())]
            ),
        ]
    );
    let msgs: Vec<String> = t
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.reason, d.message))
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("InvalidHost: spec.rules[0].host \"10.0.0.1\"")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("InvalidPath: spec.rules[1].http.paths[0]: path \"/a/../b\"")),
        "{msgs:?}"
    );
}

#[test]
fn translation_is_deterministic_whatever_the_arrival_order() {
    let objects = vec![
        ours(),
        service("ns", "a", json!([{"port": 80}])),
        slice(
            "ns",
            "a-1",
            "a",
            "IPv4",
            json!([{"port": 80}]),
            json!([{"addresses": ["10.0.0.2", "10.0.0.1"]}]),
        ),
        ingress(
            "ns",
            "x",
            json!({"ingressClassName": "portico", "rules": [rule("b.test", "Prefix", "/", "a", json!({"number": 80}))]}),
        ),
        ingress(
            "ns",
            "y",
            json!({"ingressClassName": "portico", "rules": [rule("a.test", "Prefix", "/", "a", json!({"number": 80}))]}),
        ),
    ];
    let forward = run(objects.clone());
    let backward = run(objects.into_iter().rev().collect());
    assert_eq!(forward.snapshot.to_bytes(), backward.snapshot.to_bytes());
    assert_eq!(hosts(&forward), ["a.test", "b.test"]);
}

fn tls_secret(ns: &str, name: &str, cn: &str) -> KubeObject {
    let (cert, key) = crate::secret::tests::self_signed(cn, -1, 30);
    let mut s = crate::secret::tests::tls_secret(&cert, &key);
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    KubeObject::Secret(std::sync::Arc::new(s))
}

fn backends_of(ns: &str, svc: &str) -> Vec<KubeObject> {
    vec![
        service(ns, svc, json!([{"port": 80}])),
        slice(
            ns,
            &format!("{svc}-1"),
            svc,
            "IPv4",
            json!([{"port": 8080}]),
            json!([{"addresses": ["10.0.0.1"]}]),
        ),
    ]
}

#[test]
fn tls_sections_bind_certificates_and_turn_on_redirects() {
    let mut objects = vec![
        ours(),
        tls_secret("ns", "good", "a.test"),
        tls_secret("ns", "wild", "*.w.test"),
        tls_secret("other", "theirs", "c.test"),
        ingress(
            "ns",
            "secure",
            json!({"ingressClassName": "portico",
                "tls": [{"hosts": ["a.test"], "secretName": "good"}, {"hosts": ["*.w.test"], "secretName": "wild"},
                        {"hosts": ["b.test"], "secretName": "missing"}, {"hosts": ["c.test"], "secretName": "theirs"}],
                "rules": [rule("a.test", "Prefix", "/", "s", json!({"number": 80})), rule("x.w.test", "Prefix", "/", "s", json!({"number": 80})),
                          rule("b.test", "Prefix", "/", "s", json!({"number": 80})), rule("plain.test", "Prefix", "/", "s", json!({"number": 80}))]}),
        ),
        ingress_with(
            json!({"name": "no-redirect", "namespace": "ns", "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "false"}}),
            json!({"ingressClassName": "portico", "rules": [rule("a.test", "Prefix", "/open", "s", json!({"number": 80}))]}),
        ),
        ingress_with(
            json!({"name": "forced", "namespace": "ns", "annotations": {"portico.io/force-ssl-redirect": "true"}}),
            json!({"ingressClassName": "portico", "rules": [rule("plain.test", "Prefix", "/forced", "s", json!({"number": 80}))]}),
        ),
    ];
    objects.extend(backends_of("ns", "s"));
    let t = run(objects);
    let snap = &t.snapshot;
    let bound: Vec<(String, String)> = snap
        .tls_hosts
        .iter()
        .map(|h| (h.host.to_string(), h.certificate.clone()))
        .collect();
    assert_eq!(
        bound,
        [
            ("a.test".to_string(), "ns/good".to_string()),
            ("*.w.test".into(), "ns/wild".into())
        ]
    );
    assert_eq!(
        snap.certificates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["ns/good", "ns/wild"]
    );
    assert!(snap.validate().is_err(), "version 0 is stamped later");

    let redirect = |host: &str, path: &str| {
        let vh = snap
            .virtual_hosts
            .iter()
            .find(|v| v.host.to_string() == host)
            .unwrap();
        vh.routes
            .iter()
            .find(|r| r.path.path() == path)
            .unwrap()
            .redirect_to_https
    };
    assert!(redirect("a.test", "/"), "a host with TLS redirects");
    assert!(
        redirect("x.w.test", "/"),
        "a wildcard TLS section covers the host"
    );
    assert!(
        redirect("b.test", "/"),
        "a TLS section with a missing Secret still means HTTPS, on the default certificate"
    );
    assert!(
        !redirect("a.test", "/open"),
        "ssl-redirect: false turns it off for that Ingress's routes"
    );
    assert!(!redirect("plain.test", "/"), "no TLS, no redirect");
    assert!(
        redirect("plain.test", "/forced"),
        "force-ssl-redirect redirects without TLS"
    );

    let msgs: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("SecretNotFound") && m.contains("ns/missing")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("SecretNotFound") && m.contains("ns/theirs")),
        "a Secret in another namespace is not read: {msgs:?}"
    );
}

#[test]
fn bad_and_expired_secrets_are_reported_and_the_rest_applies() {
    let (cert, _) = crate::secret::tests::self_signed("a.test", -1, 30);
    let (_, other_key) = crate::secret::tests::self_signed("z.test", -1, 30);
    let mut mismatched = crate::secret::tests::tls_secret(&cert, &other_key);
    mismatched.metadata =
        serde_json::from_value(json!({"name": "mismatched", "namespace": "ns"})).unwrap();
    let (old_cert, old_key) = crate::secret::tests::self_signed("old.test", -30, -1);
    let mut expired = crate::secret::tests::tls_secret(&old_cert, &old_key);
    expired.metadata =
        serde_json::from_value(json!({"name": "expired", "namespace": "ns"})).unwrap();
    let mut objects = vec![
        ours(),
        KubeObject::Secret(mismatched.into()),
        KubeObject::Secret(expired.into()),
        ingress(
            "ns",
            "ing",
            json!({"ingressClassName": "portico",
                "tls": [{"hosts": ["a.test"], "secretName": "mismatched"}, {"hosts": ["old.test"], "secretName": "expired"}],
                "rules": [rule("a.test", "Prefix", "/", "s", json!({"number": 80})), rule("old.test", "Prefix", "/", "s", json!({"number": 80}))]}),
        ),
    ];
    objects.extend(backends_of("ns", "s"));
    let t = run(objects);
    assert_eq!(
        hosts(&t),
        ["a.test", "old.test"],
        "routes apply whatever the certificates"
    );
    assert_eq!(t.snapshot.tls_hosts.len(), 1);
    assert_eq!(
        t.snapshot.tls_hosts[0].certificate, "ns/expired",
        "an expired certificate is still served"
    );
    let msgs: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("InvalidSecret")
            && m.contains("secret ns/mismatched")
            && m.contains("does not match")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("CertificateExpired") && m.contains("ns/expired")),
        "{msgs:?}"
    );
}

#[test]
fn backend_protocol_shapes_the_upstream_and_bad_values_fall_back() {
    let annotated = |name: &str, host: &str, annotations: Value| {
        ingress_with(
            json!({"name": name, "namespace": "ns", "annotations": annotations}),
            json!({"ingressClassName": "portico", "rules": [rule(host, "Prefix", "/", "s", json!({"number": 80}))]}),
        )
    };
    let mut objects = vec![
        ours(),
        annotated(
            "grpc",
            "grpc.test",
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPCS", "portico.io/proxy-ssl-verify": "on"}),
        ),
        annotated("plain", "plain.test", json!({})),
        annotated(
            "ftp",
            "ftp.test",
            json!({"portico.io/backend-protocol": "FTP"}),
        ),
    ];
    objects.extend(backends_of("ns", "s"));
    let t = run(objects);
    let backend_of = |host: &str| {
        let vh = t
            .snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.host.to_string() == host)
            .unwrap();
        t.snapshot.backend(&vh.routes[0].backend).unwrap().clone()
    };
    let grpc = backend_of("grpc.test");
    assert_eq!(
        grpc.upstream.protocol,
        portico_model::UpstreamProtocol::Grpcs
    );
    assert!(grpc.upstream.verify);
    assert_eq!(
        grpc.upstream.server_name.as_deref(),
        Some("s.ns.svc"),
        "verification names the Service's cluster DNS name"
    );
    assert_eq!(grpc.endpoints.len(), 1);
    assert_eq!(
        backend_of("plain.test").upstream,
        portico_model::Upstream::default()
    );
    assert_eq!(
        backend_of("ftp.test").name,
        backend_of("plain.test").name,
        "an unknown protocol falls back to HTTP"
    );
    let msgs: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("Ingress ns/ftp: InvalidAnnotation") && m.contains("\"FTP\"")),
        "{msgs:?}"
    );
}

#[test]
fn a_translator_reprocesses_only_what_changed_and_agrees_with_a_fresh_translation() {
    reprocesses_only_what_changed(|t, state| t.translate(state));
}

#[test]
fn a_translator_given_shared_states_finds_what_changed_by_comparing_them() {
    // As the controller calls it: each state a new `Arc` sharing the unchanged objects.
    reprocesses_only_what_changed(|t, state| t.translate_shared(&Arc::new(state.clone())));
}

fn reprocesses_only_what_changed(
    translate_with: impl Fn(&mut crate::Translator, &ClusterState) -> Translation,
) {
    use crate::Translator;
    let mut objects = vec![ours(), tls_secret("ns", "cert", "a0.test")];
    for i in 0..20 {
        let svc = format!("s{i}");
        objects.extend(backends_of("ns", &svc));
        let mut spec = json!({"ingressClassName": "portico", "rules": [rule(&format!("a{i}.test"), "Prefix", "/", &svc, json!({"number": 80}))]});
        if i == 0 {
            spec["tls"] = json!([{"hosts": ["a0.test"], "secretName": "cert"}]);
        }
        objects.push(ingress("ns", &format!("i{i}"), spec));
    }
    let mut state: ClusterState = objects.into_iter().collect();
    let opts = Options::default();
    let mut translator = Translator::new(opts.clone());
    let first = translate_with(&mut translator, &state);
    assert_eq!(translator.reprocessed(), 20);
    assert_eq!(first.snapshot, translate(&state, &opts).snapshot);

    let again = translate_with(&mut translator, &state);
    assert_eq!(again.snapshot, first.snapshot);
    assert_eq!(
        translator.reprocessed(),
        0,
        "nothing changed, nothing reprocessed"
    );
    assert_eq!(translator.rebuilt_hosts(), 0);
    assert!(again
        .snapshot
        .virtual_hosts
        .iter()
        .zip(&first.snapshot.virtual_hosts)
        .all(|(a, b)| Arc::ptr_eq(a, b)));

    // One EndpointSlice changes: only the Ingress behind that Service is reprocessed,
    // only its host is built again, and the other hosts and backends are shared.
    state.insert(slice(
        "ns",
        "s7-1",
        "s7",
        "IPv4",
        json!([{"port": 8080}]),
        json!([{"addresses": ["10.0.0.9"]}]),
    ));
    let second = translate_with(&mut translator, &state);
    assert_eq!(translator.reprocessed(), 1);
    assert_eq!(translator.rebuilt_hosts(), 1);
    assert_eq!(second.snapshot, translate(&state, &opts).snapshot);
    let shared = |a: &[Arc<VirtualHost>], b: &[Arc<VirtualHost>]| {
        a.iter()
            .zip(b)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .map(|(a, _)| a.host.to_string())
            .collect::<Vec<_>>()
    };
    let reused = shared(
        &second.snapshot.virtual_hosts,
        &first.snapshot.virtual_hosts,
    );
    assert_eq!(reused.len(), 19);
    assert!(!reused.contains(&"a7.test".to_string()), "{reused:?}");
    assert_eq!(
        second
            .snapshot
            .backends
            .iter()
            .zip(&first.snapshot.backends)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count(),
        19
    );
    let backend = second.snapshot.backend("ns/s7:80").unwrap();
    assert_eq!(backend.endpoints[0].address.to_string(), "10.0.0.9");

    // The Secret changes: the Ingress with TLS is reprocessed and serves the new certificate.
    state.insert(tls_secret("ns", "cert", "a0.test"));
    let third = translate_with(&mut translator, &state);
    assert_eq!(translator.reprocessed(), 1);
    assert_ne!(third.snapshot.certificates, second.snapshot.certificates);
    assert_eq!(third.snapshot, translate(&state, &opts).snapshot);

    // A Service that appears after the Ingress that names it is picked up.
    state.insert(ingress(
        "ns",
        "late",
        json!({"ingressClassName": "portico", "rules": [rule("late.test", "Prefix", "/", "late", json!({"number": 80}))]}),
    ));
    let fourth = translate_with(&mut translator, &state);
    assert!(fourth
        .diagnostics
        .iter()
        .any(|d| d.reason == Reason::ServiceNotFound && d.object.name == "late"));
    for o in backends_of("ns", "late") {
        state.insert(o);
    }
    let fifth = translate_with(&mut translator, &state);
    assert_eq!(translator.reprocessed(), 1);
    assert!(
        !fifth.diagnostics.iter().any(|d| d.object.name == "late"),
        "{:?}",
        fifth.diagnostics
    );
    assert_eq!(fifth.snapshot, translate(&state, &opts).snapshot);

    // The slice moves to another Service: both Ingresses are reprocessed; then it goes.
    state.insert(slice(
        "ns",
        "s7-1",
        "s8",
        "IPv4",
        json!([{"port": 8080}]),
        json!([{"addresses": ["10.0.0.7"]}]),
    ));
    let sixth = translate_with(&mut translator, &state);
    assert_eq!(translator.reprocessed(), 2);
    assert_eq!(sixth.snapshot, translate(&state, &opts).snapshot);
    let endpoints = |t: &Translation, b: &str| t.snapshot.backend(b).unwrap().endpoints.len();
    assert_eq!(
        (endpoints(&sixth, "ns/s7:80"), endpoints(&sixth, "ns/s8:80")),
        (0, 2)
    );
    state
        .endpoint_slices
        .remove(&("ns".to_string(), "s7-1".to_string()));
    let seventh = translate_with(&mut translator, &state);
    assert_eq!(translator.reprocessed(), 1);
    assert_eq!(seventh.snapshot, translate(&state, &opts).snapshot);
    assert_eq!(endpoints(&seventh, "ns/s8:80"), 1);

    // An Ingress goes: the others stand, its fragment is forgotten (a controller that keeps
    // the fragments of deleted Ingresses grows with every one), and it is no longer admitted.
    assert_eq!(translator.kept_fragments(), 21);
    let gone = ("ns".to_string(), "i3".to_string());
    state.ingresses.remove(&gone);
    let eighth = translate_with(&mut translator, &state);
    assert_eq!(translator.reprocessed(), 0);
    assert_eq!(translator.kept_fragments(), 20);
    assert_eq!(eighth.snapshot, translate(&state, &opts).snapshot);
    assert_eq!(eighth.admitted.len(), 20);
    assert!(!eighth.admitted.contains(&gone));
    assert!(eighth.admitted.is_sorted(), "{:?}", eighth.admitted);
}

#[test]
fn a_translator_keeps_reporting_conflicts_and_remerges_a_host_when_a_claimant_goes() {
    use crate::Translator;
    let older = ingress_with(
        json!({"name": "older", "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"}),
        json!({"ingressClassName": "portico", "rules": [rule("a.test", "Prefix", "/", "s1", json!({"number": 80}))]}),
    );
    let younger = ingress_with(
        json!({"name": "younger", "namespace": "ns", "creationTimestamp": "2026-02-01T00:00:00Z"}),
        json!({"ingressClassName": "portico", "rules": [rule("a.test", "Prefix", "/", "s2", json!({"number": 80}))]}),
    );
    let mut objects = vec![ours(), older, younger];
    objects.extend(backends_of("ns", "s1"));
    objects.extend(backends_of("ns", "s2"));
    let mut state: ClusterState = objects.into_iter().collect();
    let mut translator = Translator::new(Options::default());
    let route_backend = |t: &Translation| t.snapshot.virtual_hosts[0].routes[0].backend.clone();
    for _ in 0..2 {
        let t = translator.translate(&state);
        assert_eq!(route_backend(&t), "ns/s1:80");
        assert!(
            reasons(&t).contains(&("younger".into(), Reason::PathConflict)),
            "reported on every translation"
        );
    }
    state
        .ingresses
        .remove(&("ns".to_string(), "older".to_string()));
    let t = translator.translate(&state);
    assert_eq!(
        route_backend(&t),
        "ns/s2:80",
        "the younger Ingress takes the path once the older one is gone"
    );
    assert!(!reasons(&t).iter().any(|(_, r)| *r == Reason::PathConflict));
    assert_eq!(t.snapshot, translate(&state, &Options::default()).snapshot);
}

#[test]
fn a_translator_rebuilds_a_host_whose_tls_canary_or_routes_change_through_another_ingress() {
    use crate::Translator;
    let spec = |svc: &str, path: &str| json!({"ingressClassName": "portico", "rules": [rule("shop.test", "Prefix", path, svc, json!({"number": 80}))]});
    let mut objects = vec![ours(), tls_secret("ns", "cert", "shop.test")];
    objects.extend(backends_of("ns", "main"));
    objects.extend(backends_of("ns", "next"));
    objects.push(annotated(
        "ns",
        "main",
        "2026-01-01T00:00:00Z",
        json!({}),
        spec("main", "/"),
    ));
    let mut state: ClusterState = objects.into_iter().collect();
    let opts = Options::default();
    let mut translator = Translator::new(opts.clone());
    let first = translator.translate(&state);
    let route = |t: &Translation| {
        let shop = t
            .snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.host.to_string() == "shop.test")
            .expect("shop.test is routed");
        shop.routes[0].clone()
    };
    assert!(!route(&first).redirect_to_https);

    // Another Ingress, routing another host, adds TLS for this one: the unchanged route
    // now redirects to HTTPS.
    let mut with_tls = json!({"ingressClassName": "portico", "rules": [rule("other.test", "Prefix", "/", "main", json!({"number": 80}))]});
    with_tls["tls"] = json!([{"hosts": ["shop.test"], "secretName": "cert"}]);
    state.insert(annotated(
        "ns",
        "tls",
        "2026-02-01T00:00:00Z",
        json!({}),
        with_tls,
    ));
    let second = translator.translate(&state);
    assert_eq!(translator.reprocessed(), 1);
    assert!(route(&second).redirect_to_https, "{:?}", route(&second));
    assert_eq!(second.snapshot, translate(&state, &opts).snapshot);

    // A canary for the same path attaches to the unchanged route.
    let canary = json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "20"});
    state.insert(annotated(
        "ns",
        "canary",
        "2026-03-01T00:00:00Z",
        canary,
        spec("next", "/"),
    ));
    let third = translator.translate(&state);
    assert_eq!(route(&third).canary.as_ref().map(|c| c.weight), Some(20));
    assert_eq!(third.snapshot, translate(&state, &opts).snapshot);

    // And each goes away again.
    state
        .ingresses
        .remove(&("ns".to_string(), "canary".to_string()));
    state
        .ingresses
        .remove(&("ns".to_string(), "tls".to_string()));
    let fourth = translator.translate(&state);
    assert_eq!(route(&fourth), route(&first));
    assert_eq!(fourth.snapshot, translate(&state, &opts).snapshot);
}

fn annotated(ns: &str, name: &str, created: &str, annotations: Value, spec: Value) -> KubeObject {
    ingress_with(
        json!({"name": name, "namespace": ns, "creationTimestamp": created, "annotations": annotations}),
        spec,
    )
}

#[test]
fn a_canary_attaches_to_the_primary_route_of_its_host_and_path_whatever_its_age() {
    let spec = |svc: &str, path: &str| json!({"ingressClassName": "portico", "rules": [rule("shop.test", "Prefix", path, svc, json!({"number": 80}))]});
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.extend(backends_of("ns", "next"));
    objects.push(annotated(
        "ns",
        "canary",
        "2024-01-01T00:00:00Z",
        json!({
            "nginx.ingress.kubernetes.io/canary": "true",
            "nginx.ingress.kubernetes.io/canary-by-header": "X-Canary",
            "nginx.ingress.kubernetes.io/canary-by-header-pattern": "^(beta|qa)$",
            "nginx.ingress.kubernetes.io/canary-weight": "20",
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/affinity-mode": "persistent",
        }),
        spec("next", "/"),
    ));
    objects.push(annotated(
        "ns",
        "main",
        "2025-01-01T00:00:00Z",
        json!({}),
        spec("main", "/"),
    ));
    // A canary whose path no primary routes gets nothing, and says so.
    objects.push(annotated(
        "ns",
        "orphan",
        "2025-01-01T00:00:00Z",
        json!({"portico.io/canary": "true"}),
        spec("next", "/beta"),
    ));
    let t = run(objects);

    let routes = &t.snapshot.virtual_hosts[0].routes;
    assert_eq!(
        routes.len(),
        1,
        "a canary adds no route of its own: {routes:?}"
    );
    assert_eq!(routes[0].backend, "ns/main:80");
    let canary = routes[0].canary.as_ref().expect("canary attached");
    assert!(
        canary.backend.starts_with("ns/next:80"),
        "{}",
        canary.backend
    );
    assert_eq!(canary.source.to_string(), "ns/canary");
    assert_eq!(
        (canary.weight, canary.weight_total, canary.sticky),
        (20, 100, true)
    );
    let header = canary.header.as_ref().unwrap();
    assert_eq!(
        (header.name.as_str(), &header.rule),
        (
            "x-canary",
            &portico_model::HeaderRule::Matches("^(beta|qa)$".into())
        )
    );
    let affinity = canary.affinity.as_ref().expect("the canary's own affinity");
    assert_eq!(
        (
            affinity.mode,
            affinity.cookie.name.as_str(),
            affinity.cookie.path.as_str()
        ),
        (
            portico_model::AffinityMode::Persistent,
            "INGRESSCOOKIE",
            "/"
        )
    );
    assert!(
        t.snapshot.backends.iter().any(|b| b.name == canary.backend),
        "the canary's backend is in the snapshot"
    );
    assert_eq!(
        portico_model::Snapshot {
            version: 1,
            ..t.snapshot.clone()
        }
        .validate(),
        Ok(())
    );
    let orphan = t
        .diagnostics
        .iter()
        .find(|d| d.reason == Reason::CanaryWithoutPrimary)
        .expect("orphan reported");
    assert_eq!(orphan.object.name, "orphan");
    assert!(
        orphan.message.contains("\"/beta\"") && orphan.message.contains("shop.test"),
        "{}",
        orphan.message
    );
}

#[test]
fn bad_canary_and_affinity_annotations_are_reported_and_never_widen_the_canary() {
    let spec = |svc: &str| json!({"ingressClassName": "portico", "rules": [rule("shop.test", "Exact", "/cart", svc, json!({"number": 80}))]});
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.extend(backends_of("ns", "next"));
    objects.push(annotated(
        "ns",
        "main",
        "2024-01-01T00:00:00Z",
        json!({"portico.io/affinity": "cookie", "portico.io/session-cookie-name": "bad name", "portico.io/session-cookie-samesite": "lax",
               "portico.io/session-cookie-max-age": "3600"}),
        spec("main"),
    ));
    objects.push(annotated(
        "ns",
        "canary",
        "2025-01-01T00:00:00Z",
        json!({"portico.io/canary": "true", "portico.io/canary-by-header": "x-canary", "portico.io/canary-by-header-pattern": "(unclosed",
               "portico.io/canary-weight": "lots"}),
        spec("next"),
    ));
    objects.push(annotated(
        "ns",
        "second",
        "2025-02-01T00:00:00Z",
        json!({"portico.io/canary": "true"}),
        spec("next"),
    ));
    let t = run(objects);
    let route = &t.snapshot.virtual_hosts[0].routes[0];
    let affinity = route.affinity.as_ref().unwrap();
    assert_eq!(
        affinity.cookie.name, "INGRESSCOOKIE",
        "a bad cookie name falls back to the default"
    );
    assert_eq!(
        (affinity.cookie.path.as_str(), affinity.cookie.max_age_secs),
        ("/cart", Some(3600)),
        "the path defaults to the route's"
    );
    assert_eq!(
        affinity.cookie.same_site,
        Some(portico_model::SameSite::Lax)
    );
    let canary = route.canary.as_ref().unwrap();
    assert_eq!(
        canary.source.to_string(),
        "ns/canary",
        "the older canary wins"
    );
    assert_eq!(
        canary.weight, 0,
        "an unreadable weight sends nothing by weight"
    );
    assert_eq!(
        canary.header.as_ref().unwrap().rule,
        portico_model::HeaderRule::Primary,
        "a pattern that does not compile sends requests with the header to the primary"
    );
    let messages: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
    for expected in [
        "session-cookie-name: value \"bad name\"",
        "canary-by-header-pattern: value \"(unclosed\"",
        "canary-weight: value \"lots\"",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "{expected} not in {messages:#?}"
        );
    }
    assert!(reasons(&t).contains(&("second".into(), Reason::CanaryConflict)));
}

#[test]
fn health_checks_are_opt_in_and_part_of_the_backend() {
    let spec = json!({"ingressClassName": "portico", "rules": [rule("a.test", "Prefix", "/", "main", json!({"number": 80}))]});
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.push(annotated(
        "ns",
        "checked",
        "2024-01-01T00:00:00Z",
        json!({"portico.io/health-check-path": "/healthz", "portico.io/health-check-interval": "2s", "portico.io/health-check-unhealthy-threshold": "1"}),
        spec,
    ));
    let t = run(objects);
    let check = t.snapshot.backends[0]
        .policy
        .health_check
        .as_ref()
        .expect("health check on");
    assert_eq!(
        (
            check.path.as_str(),
            check.interval_ms,
            check.unhealthy_threshold,
            check.healthy_threshold
        ),
        ("/healthz", 2000, 1, 2)
    );
    assert_ne!(
        t.snapshot.backends[0].name, "ns/main:80",
        "a checked backend is not shared with unchecked routes"
    );
}

fn opaque_secret(ns: &str, name: &str, pairs: Value) -> KubeObject {
    KubeObject::Secret(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "type": "Opaque", "stringData": pairs})).unwrap(),
    )
}

/// For each (name, annotations): an Ingress `name` in `ns`, one a day older than the
/// next, routing `name.test/` to Service `main`.
fn one_route_sites(cases: &[(&str, Value)]) -> Vec<KubeObject> {
    let spec = |host: &str| json!({"ingressClassName": "portico", "rules": [rule(host, "Prefix", "/", "main", json!({"number": 80}))]});
    let created = |i: usize| format!("2024-01-{:02}T00:00:00Z", i + 1);
    cases
        .iter()
        .enumerate()
        .map(|(i, (name, annotations))| {
            annotated(
                "ns",
                name,
                &created(i),
                annotations.clone(),
                spec(&format!("{name}.test")),
            )
        })
        .collect()
}

/// The first route of `host`.
fn first_route(t: &Translation, host: &str) -> Route {
    let vh = t
        .snapshot
        .virtual_hosts
        .iter()
        .find(|v| v.host.to_string() == host)
        .unwrap_or_else(|| panic!("{host} routed"));
    vh.routes[0].clone()
}

#[test]
fn security_annotations_fail_closed() {
    let mut objects = vec![
        ours(),
        opaque_secret(
            "ns",
            "users",
            json!({"auth": "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\nbob:hunter2\n"}),
        ),
        opaque_secret(
            "ns",
            "idp",
            json!({"jwks.json": r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}"#}),
        ),
    ];
    objects.extend(backends_of("ns", "main"));
    let cases: &[(&str, Value)] = &[
        (
            "good",
            json!({"nginx.ingress.kubernetes.io/auth-type": "basic", "nginx.ingress.kubernetes.io/auth-secret": "users",
                        "nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8, 192.168.0.1", "portico.io/auth-realm": "Staff"}),
        ),
        (
            "badrange",
            json!({"portico.io/allowlist-source-range": "10.0.0.0/33"}),
        ),
        (
            "nosecret",
            json!({"portico.io/auth-type": "basic", "portico.io/auth-secret": "missing"}),
        ),
        (
            "othernamespace",
            json!({"portico.io/auth-type": "basic", "portico.io/auth-secret": "kube-system/users"}),
        ),
        (
            "digest",
            json!({"portico.io/auth-type": "digest", "portico.io/auth-secret": "users"}),
        ),
        (
            "external",
            json!({"nginx.ingress.kubernetes.io/auth-url": "auth.example/check"}),
        ),
        (
            "leaky",
            json!({"nginx.ingress.kubernetes.io/auth-url": "ftp://svc:hunter2@auth.example/check"}),
        ),
        ("jwt", json!({"portico.io/auth-tls-secret": "client-ca"})),
        (
            "jwturl",
            json!({"portico.io/auth-jwt-jwks-url": "idp.example/jwks"}),
        ),
        (
            "remote",
            json!({"portico.io/auth-jwt-jwks-url": "https://idp.example/jwks", "portico.io/auth-jwt-issuer": "https://idp.example"}),
        ),
        (
            "jwthmac",
            json!({"portico.io/auth-jwt-jwks-secret": "idp", "portico.io/auth-jwt-algorithms": "RS256,HS256"}),
        ),
        (
            "jwtempty",
            json!({"portico.io/auth-jwt-jwks-secret": "users"}),
        ),
        (
            "oauth",
            json!({"nginx.ingress.kubernetes.io/auth-url": "https://svc:s3cret@auth.example/oauth2/auth?x=1",
                         "nginx.ingress.kubernetes.io/auth-signin": "https://auth.example/oauth2/start",
                         "nginx.ingress.kubernetes.io/auth-response-headers": "X-Auth-Request-User, X-Auth-Request-Email",
                         "nginx.ingress.kubernetes.io/auth-cache-key": "$http_authorization$cookie_session",
                         "nginx.ingress.kubernetes.io/auth-cache-duration": "200 5m",
                         "nginx.ingress.kubernetes.io/satisfy": "any"}),
        ),
    ];
    objects.extend(one_route_sites(cases));
    let t = run(objects);
    let access = |host: &str| first_route(&t, host).access.expect("an access policy");
    let good = access("good.test");
    assert_eq!(good.refuse, None);
    assert_eq!(
        good.allow_sources
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.0/8", "192.168.0.1/32"]
    );
    let auth = good.basic_auth.unwrap();
    assert_eq!(
        (
            auth.realm.as_str(),
            auth.users.len(),
            auth.users[0].user.as_str()
        ),
        ("Staff", 1, "alice")
    );
    assert!(t.diagnostics.iter().any(|d| d.object.name == "good"
        && d.message.contains("bob")
        && d.reason == Reason::InvalidSecret));
    for (host, why) in [
        ("badrange.test", "10.0.0.0/33"),
        ("nosecret.test", "ns/missing does not exist"),
        ("othernamespace.test", "another namespace"),
        ("digest.test", "\"digest\""),
        (
            "external.test",
            "auth-url: value \"auth.example/check\" is not an absolute http or https URL",
        ),
        (
            "jwt.test",
            "annotation auth-tls-secret: secret ns/client-ca does not exist",
        ),
        (
            "leaky.test",
            "value \"ftp://<redacted>@auth.example/check\" is not an absolute http or https URL",
        ),
        (
            "jwturl.test",
            "auth-jwt-jwks-url: value \"idp.example/jwks\" is not an absolute http or https URL",
        ),
        (
            "jwthmac.test",
            "algorithm \"HS256\" is not one of RS256, ES256, EdDSA",
        ),
        ("jwtempty.test", "key \"jwks.json\" is missing"),
    ] {
        let refused = access(host)
            .refuse
            .unwrap_or_else(|| panic!("{host} must refuse"));
        assert!(refused.contains(why), "{host}: {refused}");
        let name = host.trim_end_matches(".test");
        assert!(
            t.diagnostics
                .iter()
                .any(|d| d.object.name == name && d.message.contains("answer 503")),
            "{name} reported"
        );
    }
    assert!(
        !t.diagnostics.iter().any(|d| d.message.contains("hunter2")),
        "credentials in a URL are not repeated"
    );
    let remote = access("remote.test");
    let jwt = remote.jwt.expect("a JWT check");
    assert_eq!(
        (remote.refuse, jwt.jwks_url.as_deref(), jwt.jwks.as_str()),
        (None, Some("https://idp.example/jwks"), "")
    );
    let shown = portico_model::Snapshot {
        version: 1,
        ..t.snapshot.clone()
    }
    .redacted()
    .to_json_pretty();
    assert!(!shown.contains("5en6G6"), "hashes are redacted");
    assert!(
        !shown.contains("s3cret")
            && shown.contains("https://<redacted>@auth.example/oauth2/auth?x=1"),
        "so are a URL's credentials"
    );
    assert!(
        t.snapshot.to_json_pretty().contains("s3cret"),
        "the proxy still gets them"
    );
}

#[test]
fn answer_rewrites_read_nginx_forms_and_report_the_rest() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.extend(one_route_sites(&[
        (
            "good",
            json!({"nginx.ingress.kubernetes.io/proxy-redirect-from": "http://app:8080/",
                   "nginx.ingress.kubernetes.io/proxy-redirect-to": "/",
                   "nginx.ingress.kubernetes.io/proxy-cookie-domain": "app.internal example.com",
                   "nginx.ingress.kubernetes.io/proxy-cookie-path": "off"}),
        ),
        (
            "bad",
            json!({"nginx.ingress.kubernetes.io/proxy-redirect-from": "default",
                   "nginx.ingress.kubernetes.io/proxy-cookie-path": "~^/app(.*) /$1",
                   "nginx.ingress.kubernetes.io/proxy-cookie-domain": "only-one"}),
        ),
        (
            "half",
            json!({"nginx.ingress.kubernetes.io/proxy-redirect-from": "http://app/"}),
        ),
    ]));
    let t = run(objects);
    let rw = first_route(&t, "good.test").rewrite.expect("a rewrite");
    let swap =
        |s: &Option<portico_model::PrefixSwap>| s.as_ref().map(|s| (s.from.clone(), s.to.clone()));
    assert_eq!(
        swap(&rw.location),
        Some(("http://app:8080/".into(), "/".into()))
    );
    assert_eq!(
        swap(&rw.cookie_domain),
        Some(("app.internal".into(), "example.com".into()))
    );
    assert_eq!(rw.cookie_path, None, "off");
    assert_eq!(first_route(&t, "bad.test").rewrite, None);
    let messages: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
    for expected in [
        "proxy-redirect-from: \"default\" is not supported",
        "proxy-cookie-path: value \"~^/app(.*) /$1\" is not \"off\" or \"FROM TO\"",
        "proxy-cookie-domain: value \"only-one\"",
        "proxy-redirect-from needs proxy-redirect-to",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(expected)),
            "{expected} not in {messages:#?}"
        );
    }
}

#[test]
fn service_upstream_is_the_cluster_ip_and_a_headless_service_has_none() {
    let svc = |name: &str, cluster_ip: &str| {
        KubeObject::Service(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"},
                "spec": {"clusterIP": cluster_ip, "ports": [{"port": 80, "targetPort": 8080}]}}))
            .unwrap(),
        )
    };
    let spec = |host: &str, svc: &str| json!({"ingressClassName": "portico", "rules": [rule(host, "Prefix", "/", svc, json!({"number": 80}))]});
    let upstream = json!({"nginx.ingress.kubernetes.io/service-upstream": "true"});
    let objects = vec![
        ours(),
        svc("mesh", "10.96.0.10"),
        svc("headless", "None"),
        annotated(
            "ns",
            "a",
            "2024-01-01T00:00:00Z",
            upstream.clone(),
            spec("a.test", "mesh"),
        ),
        annotated(
            "ns",
            "b",
            "2024-01-02T00:00:00Z",
            upstream,
            spec("b.test", "headless"),
        ),
    ];
    let t = run(objects);
    let backend = |host: &str| {
        let name = first_route(&t, host).backend;
        t.snapshot
            .backends
            .iter()
            .find(|b| b.name == name)
            .cloned()
            .unwrap()
    };
    let endpoints: Vec<String> = backend("a.test")
        .endpoints
        .iter()
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect();
    assert_eq!(
        endpoints,
        ["10.96.0.10:80"],
        "the Service's port, not the target port"
    );
    assert!(backend("b.test").endpoints.is_empty());
    assert!(t
        .diagnostics
        .iter()
        .any(|d| d.object.name == "b" && d.message.contains("has no cluster IP")));
}

#[test]
fn buffer_annotations_are_accepted_and_their_values_checked() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.extend(one_route_sites(&[
        (
            "streams",
            json!({"nginx.ingress.kubernetes.io/proxy-buffering": "on",
                   "nginx.ingress.kubernetes.io/proxy-buffer-size": "16k",
                   "nginx.ingress.kubernetes.io/proxy-buffers-number": "4",
                   "nginx.ingress.kubernetes.io/client-body-buffer-size": "1m",
                   "nginx.ingress.kubernetes.io/proxy-max-temp-file-size": "0"}),
        ),
        (
            "typo",
            json!({"nginx.ingress.kubernetes.io/proxy-buffer-size": "16kb"}),
        ),
    ]));
    let t = run(objects);
    let of = |name: &str| -> Vec<String> {
        t.diagnostics
            .iter()
            .filter(|d| d.object.name == name)
            .map(|d| d.message.clone())
            .collect()
    };
    assert_eq!(of("streams"), Vec::<String>::new(), "nothing to warn about");
    assert_eq!(
        of("typo"),
        ["annotation nginx.ingress.kubernetes.io/proxy-buffer-size: value \"16kb\" is not a size such as 1m, 512k or 1048576"]
    );
    assert!(
        first_route(&t, "typo.test").access.is_none(),
        "and it serves"
    );
}

#[test]
fn auth_urls_take_nginx_variables_but_a_client_never_chooses_where_auth_goes() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    let auth = |url: &str, signin: &str| json!({"nginx.ingress.kubernetes.io/auth-url": url, "nginx.ingress.kubernetes.io/auth-signin": signin});
    let cases = [
        (
            "oauth",
            json!({"nginx.ingress.kubernetes.io/auth-url": "https://$host/oauth2/auth",
                   "nginx.ingress.kubernetes.io/auth-signin": "https://$host/oauth2/start?rd=$escaped_request_uri",
                   "nginx.ingress.kubernetes.io/auth-request-redirect": "$scheme://$host$request_uri"}),
        ),
        (
            "plain",
            auth("http://auth.example/check", "https://login.example/start"),
        ),
        (
            "param",
            json!({"nginx.ingress.kubernetes.io/auth-url": "http://auth.example:$server_port/check?u=$http_x_user",
                   "nginx.ingress.kubernetes.io/auth-signin": "https://login.example/start?x=1",
                   "nginx.ingress.kubernetes.io/auth-signin-redirect-param": "next"}),
        ),
        (
            "steered",
            auth("http://$http_x_target/check", "https://login.example/"),
        ),
        (
            "steeredport",
            auth(
                "http://auth.example:$arg_port/check",
                "https://login.example/",
            ),
        ),
        (
            "unknown",
            auth("https://$host/auth?u=$nonsense", "https://login.example/"),
        ),
        (
            "signinunknown",
            auth("https://auth.example/", "https://$hots/start"),
        ),
    ];
    objects.extend(one_route_sites(&cases));
    objects.push(annotated(
        "ns",
        "catchall",
        "2024-02-01T00:00:00Z",
        auth("https://$host/oauth2/auth", "https://login.example/"),
        json!({"ingressClassName": "portico", "rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "main", "port": {"number": 80}}}}]}}]}),
    ));
    let t = run(objects);
    let access = |host: &str| first_route(&t, host).access.expect("an access policy");
    let external = |host: &str| {
        let a = access(host);
        assert_eq!(a.refuse, None, "{host}");
        a.external_auth.expect("external auth")
    };
    let shown = |t: &Option<portico_model::Template>| t.as_ref().map(|t| t.to_string());

    let oauth = external("oauth.test");
    assert_eq!(oauth.url.to_string(), "https://${host}/oauth2/auth");
    assert_eq!(
        shown(&oauth.signin).as_deref(),
        Some("https://${host}/oauth2/start?rd=${escaped_request_uri}"),
        "a sign-in URL that sets rd keeps it"
    );
    assert_eq!(
        shown(&oauth.request_redirect).as_deref(),
        Some("${scheme}://${host}${request_uri}")
    );
    assert_eq!(
        shown(&external("plain.test").signin).as_deref(),
        Some("https://login.example/start?rd=${scheme}://${http_host}${escaped_request_uri}"),
        "without rd, the original URL is added as ingress-nginx adds it"
    );
    let param = external("param.test");
    assert_eq!(
        shown(&param.signin).as_deref(),
        Some("https://login.example/start?x=1&next=${scheme}://${http_host}${escaped_request_uri}")
    );
    assert_eq!(
        param.url.to_string(),
        "http://auth.example:${server_port}/check?u=${http_x_user}",
        "the listener's port may name the auth port, and the path may hold anything"
    );

    for (host, why) in [
        ("steered.test", "${http_x_target} in the URL's host part would let a client choose where the auth request goes"),
        ("steeredport.test", "${arg_port} in the URL's host part"),
        ("unknown.test", "value \"https://$host/auth?u=$nonsense\" has unknown variable $nonsense"),
        ("signinunknown.test", "annotation nginx.ingress.kubernetes.io/auth-signin: value \"https://$hots/start\" has unknown variable $hots"),
    ] {
        let refused = access(host)
            .refuse
            .unwrap_or_else(|| panic!("{host} must refuse"));
        assert!(refused.contains(why), "{host}: {refused}");
    }
    assert!(
        t.diagnostics.iter().any(|d| d.object.name == "catchall"
            && d.message
                .contains("needs every rule of the Ingress to name a host")
            && d.message.contains("answer 503")),
        "$host may not steer the auth request of a rule that matches any host"
    );
}

#[test]
fn rewrite_target_makes_paths_patterns_and_redirects_are_checked() {
    let path = |p: &str, t: &str| json!({"path": p, "pathType": t, "backend": {"service": {"name": "main", "port": {"number": 80}}}});
    let spec = |paths: Vec<Value>| json!({"ingressClassName": "portico", "rules": [{"host": "r.test", "http": {"paths": paths}}]});
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.push(annotated(
        "ns",
        "rewrite",
        "2024-01-01T00:00:00Z",
        json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2", "nginx.ingress.kubernetes.io/x-forwarded-prefix": "/something"}),
        spec(vec![path("/something(/|$)(.*)", "ImplementationSpecific"), path("/exact", "Exact"), path("/bad(", "Prefix")]),
    ));
    objects.push(annotated(
        "ns",
        "moved",
        "2024-01-02T00:00:00Z",
        json!({"nginx.ingress.kubernetes.io/permanent-redirect": "https://new.example$request_uri",
               "nginx.ingress.kubernetes.io/permanent-redirect-code": "308",
               "nginx.ingress.kubernetes.io/app-root": "/app"}),
        spec(vec![path("/old", "Prefix")]),
    ));
    objects.push(annotated(
        "ns",
        "badredirect",
        "2024-01-03T00:00:00Z",
        json!({"nginx.ingress.kubernetes.io/temporal-redirect": "javascript:alert(1)", "nginx.ingress.kubernetes.io/temporal-redirect-code": "200"}),
        spec(vec![path("/b", "Prefix")]),
    ));
    let t = run(objects);
    let routes = &t.snapshot.virtual_hosts[0].routes;
    let find = |p: &str| {
        routes
            .iter()
            .find(|r| r.path.path() == p)
            .unwrap_or_else(|| panic!("{p} routed: {routes:?}"))
    };
    let rewritten = find("/something(/|$)(.*)");
    assert_eq!(
        rewritten.path,
        PathMatch::Regex("/something(/|$)(.*)".into())
    );
    let rw = rewritten.rewrite.as_ref().unwrap();
    assert_eq!(
        (rw.target.as_deref(), rw.forwarded_prefix.as_deref()),
        (Some("/$2"), Some("/something"))
    );
    assert_eq!(
        find("/exact").path,
        PathMatch::Regex("/exact".into()),
        "on a host with a rewrite, every path is a pattern, as in ingress-nginx"
    );
    assert!(
        t.diagnostics
            .iter()
            .any(|d| d.reason == Reason::InvalidPath && d.message.contains("/bad(")),
        "{:?}",
        t.diagnostics
    );
    let moved = find("/old").rewrite.as_ref().unwrap();
    let redirect = moved.redirect.as_ref().unwrap();
    assert_eq!(
        (
            redirect.code,
            redirect.target.as_str(),
            moved.app_root.as_deref()
        ),
        (308, "https://new.example$request_uri", Some("/app"))
    );
    assert!(
        find("/b").rewrite.is_none(),
        "an unusable redirect is left out"
    );
    let messages: Vec<String> = t.diagnostics.iter().map(|d| d.message.clone()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("temporal-redirect: value \"javascript:alert(1)\"")),
        "{messages:#?}"
    );
    assert_eq!(
        portico_model::Snapshot {
            version: 1,
            ..t.snapshot.clone()
        }
        .validate(),
        Ok(())
    );
}

#[test]
fn a_regex_path_makes_every_path_of_its_host_a_pattern_and_tells_the_other_ingresses() {
    let path = |p: &str, t: &str| json!({"path": p, "pathType": t, "backend": {"service": {"name": "main", "port": {"number": 80}}}});
    let rules = |host: &str, paths: Vec<Value>| json!({"ingressClassName": "portico", "rules": [{"host": host, "http": {"paths": paths}}]});
    let mut objects = vec![ours()];
    objects.extend(backends_of("shop", "main"));
    objects.extend(backends_of("other", "main"));
    objects.push(annotated(
        "shop",
        "admin",
        "2024-01-01T00:00:00Z",
        json!({"nginx.ingress.kubernetes.io/auth-type": "basic", "nginx.ingress.kubernetes.io/auth-secret": "users"}),
        rules("a.test", vec![path("/admin", "Prefix"), path("/login", "Exact")]),
    ));
    objects.push(annotated(
        "other",
        "catchall",
        "2024-01-02T00:00:00Z",
        json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
        rules("a.test", vec![path("/.*", "ImplementationSpecific")]),
    ));
    objects.push(annotated(
        "shop",
        "plain",
        "2024-01-03T00:00:00Z",
        json!({}),
        rules("b.test", vec![path("/admin", "Prefix")]),
    ));
    let t = run(objects);
    let paths_of = |host: &str| -> Vec<PathMatch> {
        let vh = t
            .snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.host.to_string() == host)
            .unwrap();
        vh.routes.iter().map(|r| r.path.clone()).collect()
    };
    assert_eq!(
        paths_of("a.test"),
        [
            PathMatch::Regex("/admin".into()),
            PathMatch::Regex("/login".into()),
            PathMatch::Regex("/.*".into())
        ]
    );
    assert_eq!(paths_of("b.test"), [PathMatch::Prefix("/admin".into())]);
    let told: Vec<(String, String)> = t
        .diagnostics
        .iter()
        .filter(|d| d.reason == Reason::RegexHost)
        .map(|d| (d.object.to_string(), d.message.clone()))
        .collect();
    assert_eq!(told.len(), 1, "{told:#?}");
    assert_eq!(told[0].0, "Ingress shop/admin");
    assert!(
        told[0]
            .1
            .contains("host \"a.test\": Ingress other/catchall uses use-regex"),
        "{}",
        told[0].1
    );
}

#[test]
fn a_canary_of_another_namespace_gets_no_traffic_and_says_why() {
    let spec = |svc: &str| json!({"ingressClassName": "portico", "rules": [rule("shop.test", "Prefix", "/", svc, json!({"number": 80}))]});
    let mut objects = vec![ours()];
    objects.extend(backends_of("shop", "main"));
    objects.extend(backends_of("other", "spy"));
    objects.push(annotated(
        "shop",
        "main",
        "2024-01-01T00:00:00Z",
        json!({}),
        spec("main"),
    ));
    objects.push(annotated(
        "other",
        "spy",
        "2024-01-02T00:00:00Z",
        json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "100"}),
        spec("spy"),
    ));
    let t = run(objects);
    let routes = &t.snapshot.virtual_hosts[0].routes;
    assert_eq!(
        (
            routes.len(),
            routes[0].backend.as_str(),
            routes[0].canary.is_none()
        ),
        (1, "shop/main:80", true)
    );
    let told: Vec<String> = t
        .diagnostics
        .iter()
        .filter(|d| d.reason == Reason::CanaryWithoutPrimary)
        .map(|d| format!("{}: {}", d.object, d.message))
        .collect();
    assert_eq!(told, ["Ingress other/spy: spec.rules[0].http.paths[0]: canary for path \"/\" on host \"shop.test\", which Ingress shop/main of another namespace routes; a canary attaches only to an Ingress of its own namespace, so it gets no traffic"]);
}

/// Two namespaces on one host: `shop` older, with a Prefix `/admin` and a TLS section;
/// `other` newer, with an Exact `/admin/login`, a Prefix `/` and a host of its own.
fn two_namespaces_on_one_host() -> Vec<KubeObject> {
    let path = |p: &str, t: &str| json!({"path": p, "pathType": t, "backend": {"service": {"name": "main", "port": {"number": 80}}}});
    let mut objects = vec![
        ours(),
        tls_secret("shop", "cert", "a.test"),
        tls_secret("other", "cert", "b.test"),
    ];
    for ns in ["shop", "other"] {
        objects.extend(backends_of(ns, "main"));
    }
    objects.push(annotated(
        "shop",
        "admin",
        "2024-01-01T00:00:00Z",
        json!({}),
        json!({
            "ingressClassName": "portico",
            "tls": [{"hosts": ["a.test"], "secretName": "cert"}],
            "rules": [{"host": "a.test", "http": {"paths": [path("/admin", "Prefix")]}}],
        }),
    ));
    objects.push(annotated("other", "web", "2024-01-02T00:00:00Z", json!({}), json!({
        "ingressClassName": "portico",
        "tls": [{"hosts": ["b.test"], "secretName": "cert"}],
        "rules": [
            {"host": "a.test", "http": {"paths": [path("/admin/login", "Exact"), path("/", "Prefix")]}},
            {"host": "b.test", "http": {"paths": [path("/", "Prefix")]}},
        ],
    })));
    objects
}

fn told(t: &Translation, reason: Reason) -> Vec<String> {
    t.diagnostics
        .iter()
        .filter(|d| d.reason == reason)
        .map(|d| format!("{}: {}", d.object, d.message))
        .collect()
}

#[test]
fn shadowing_across_namespaces_is_allowed_and_told_to_both_ingresses() {
    let t = run(two_namespaces_on_one_host());
    let a = t
        .snapshot
        .virtual_hosts
        .iter()
        .find(|v| v.host.to_string() == "a.test")
        .unwrap();
    assert_eq!(
        a.routes.len(),
        3,
        "ingress-nginx's rules: everything is routed"
    );
    let mut warnings = told(&t, Reason::CrossNamespaceShadowing);
    warnings.sort();
    assert_eq!(
        warnings,
        [
            "Ingress other/web: host \"a.test\": Exact path \"/admin/login\" of this Ingress takes requests from Prefix path \"/admin\" of Ingress shop/admin, of another namespace",
            "Ingress other/web: host \"a.test\": Prefix path \"/admin\" of Ingress shop/admin, of another namespace, takes requests from this Ingress's Prefix path \"/\"",
            "Ingress other/web: host \"a.test\": the TLS section of Ingress shop/admin, of another namespace, redirects this Ingress's routes to HTTPS with its certificate",
            "Ingress shop/admin: host \"a.test\": Exact path \"/admin/login\" of Ingress other/web, of another namespace, takes requests from this Ingress's Prefix path \"/admin\"",
            "Ingress shop/admin: host \"a.test\": Prefix path \"/admin\" of this Ingress takes requests from Prefix path \"/\" of Ingress other/web, of another namespace",
            "Ingress shop/admin: host \"a.test\": this Ingress's TLS section also redirects the routes of Ingress other/web, of another namespace, to HTTPS with this Ingress's certificate",
        ]
    );
    assert!(told(&t, Reason::HostConflict).is_empty());
}

#[test]
fn under_namespace_ownership_the_oldest_namespace_on_a_host_keeps_it() {
    let options = Options {
        host_ownership: crate::HostOwnership::Namespace,
        ..Options::default()
    };
    let t = translate(
        &two_namespaces_on_one_host()
            .into_iter()
            .collect::<ClusterState>(),
        &options,
    );
    let routed: Vec<(String, String)> = t
        .snapshot
        .virtual_hosts
        .iter()
        .flat_map(|v| {
            v.routes
                .iter()
                .map(|r| (v.host.to_string(), r.source.to_string()))
        })
        .collect();
    let row = |h: &str, s: &str| (h.to_string(), s.to_string());
    assert_eq!(
        routed,
        [row("a.test", "shop/admin"), row("b.test", "other/web")]
    );
    assert_eq!(
        told(&t, Reason::HostConflict),
        ["Ingress other/web: host \"a.test\" belongs to namespace \"shop\" (Ingress shop/admin is the oldest to name it) and the controller runs with --host-ownership namespace; this Ingress's routes for it are ignored"]
    );
    assert!(told(&t, Reason::CrossNamespaceShadowing).is_empty());
}

#[test]
fn routes_with_conditions_share_a_path_only_within_their_namespace() {
    let path = |p: &str, t: &str| json!({"path": p, "pathType": t, "backend": {"service": {"name": "main", "port": {"number": 80}}}});
    let rules = |host: &str, paths: Vec<Value>| json!({"ingressClassName": "portico", "rules": [{"host": host, "http": {"paths": paths}}]});
    let browsers = json!({"portico.io/match-headers": "user-agent"});
    let mut objects = vec![ours()];
    for ns in ["shop", "other"] {
        objects.extend(backends_of(ns, "main"));
    }
    // a.test: the other namespace's conditions come later and are refused.
    objects.push(annotated(
        "shop",
        "admin",
        "2024-01-01T00:00:00Z",
        json!({}),
        rules("a.test", vec![path("/admin", "Prefix")]),
    ));
    objects.push(annotated(
        "other",
        "grab",
        "2024-01-02T00:00:00Z",
        browsers.clone(),
        rules(
            "a.test",
            vec![path("/admin", "Exact"), path("/mine", "Prefix")],
        ),
    ));
    // b.test: conditions came first; a plain route of another namespace on the path is refused.
    objects.push(annotated(
        "other",
        "first",
        "2024-01-01T00:00:00Z",
        browsers.clone(),
        rules("b.test", vec![path("/x", "Prefix")]),
    ));
    objects.push(annotated(
        "shop",
        "late",
        "2024-01-02T00:00:00Z",
        json!({}),
        rules("b.test", vec![path("/x", "Prefix")]),
    ));
    // c.test: the same namespace may share a path with conditions.
    objects.push(annotated(
        "shop",
        "plain",
        "2024-01-01T00:00:00Z",
        json!({}),
        rules("c.test", vec![path("/", "Prefix")]),
    ));
    objects.push(annotated(
        "shop",
        "beta",
        "2024-01-02T00:00:00Z",
        browsers,
        rules("c.test", vec![path("/", "Prefix")]),
    ));
    let t = run(objects);
    let routed = |host: &str| -> Vec<(String, String, bool)> {
        t.snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.host.to_string() == host)
            .map(|v| {
                v.routes
                    .iter()
                    .map(|r| {
                        (
                            r.source.to_string(),
                            r.path.path().to_string(),
                            r.conditions.is_some(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let row = |s: &str, p: &str, c: bool| (s.to_string(), p.to_string(), c);
    assert_eq!(
        routed("a.test"),
        [
            row("shop/admin", "/admin", false),
            row("other/grab", "/mine", true)
        ]
    );
    assert_eq!(routed("b.test"), [row("other/first", "/x", true)]);
    assert_eq!(
        routed("c.test"),
        [row("shop/plain", "/", false), row("shop/beta", "/", true)]
    );
    let conflicts: Vec<String> = t
        .diagnostics
        .iter()
        .filter(|d| d.reason == Reason::PathConflict)
        .map(|d| format!("{}: {}", d.object, d.message))
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:#?}");
    assert!(conflicts[0].starts_with("Ingress other/grab: spec.rules[0].http.paths[0]: Exact path \"/admin\" on host \"a.test\" is routed by Ingress shop/admin, which is older and of another namespace"), "{conflicts:#?}");
    assert!(conflicts[1].starts_with("Ingress shop/late: spec.rules[0].http.paths[0]: Prefix path \"/x\" on host \"b.test\" is routed by Ingress other/first"), "{conflicts:#?}");
}

#[test]
fn rate_limits_fail_closed_and_cors_fails_off() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    let cases: &[(&str, Value)] = &[
        (
            "limited",
            json!({"nginx.ingress.kubernetes.io/limit-rps": "5", "nginx.ingress.kubernetes.io/limit-connections": "3",
                   "nginx.ingress.kubernetes.io/limit-allowlist": "10.0.0.0/8"}),
        ),
        (
            "badlimit",
            json!({"nginx.ingress.kubernetes.io/limit-rpm": "lots"}),
        ),
        (
            "cors",
            json!({"nginx.ingress.kubernetes.io/enable-cors": "true",
                   "nginx.ingress.kubernetes.io/cors-allow-origin": "https://app.example.com, https://*.example.org",
                   "nginx.ingress.kubernetes.io/cors-allow-credentials": "false"}),
        ),
        (
            "badcors",
            json!({"nginx.ingress.kubernetes.io/enable-cors": "true", "nginx.ingress.kubernetes.io/cors-allow-origin": "evil.com/x"}),
        ),
    ];
    objects.extend(one_route_sites(cases));
    let t = run(objects);
    let route = |host: &str| first_route(&t, host);
    let limited = route("limited.test").rate_limit.expect("a rate limit");
    assert_eq!(
        (
            limited.per_second,
            limited.per_minute,
            limited.concurrent,
            limited.burst_multiplier
        ),
        (Some(5), None, Some(3), 5)
    );
    assert_eq!(limited.exempt.len(), 1);
    let refused = route("badlimit.test")
        .access
        .and_then(|a| a.refuse)
        .expect("an unreadable limit refuses");
    assert!(refused.contains("limit-rpm: value \"lots\""), "{refused}");
    let cors = route("cors.test").cors.expect("CORS on");
    assert_eq!(
        cors.allow_origins,
        ["https://app.example.com", "https://*.example.org"]
    );
    assert!(!cors.allow_credentials);
    assert_eq!(cors.max_age_secs, 1_728_000, "ingress-nginx's default");
    assert!(
        route("badcors.test").cors.is_none(),
        "a bad origin list leaves CORS off"
    );
    assert!(t
        .diagnostics
        .iter()
        .any(|d| d.object.name == "badcors" && d.message.contains("CORS stays off")));
    assert_eq!(
        portico_model::Snapshot {
            version: 1,
            ..t.snapshot.clone()
        }
        .validate(),
        Ok(())
    );
}

#[test]
fn conditions_tell_routes_of_one_path_apart_and_a_bad_one_routes_nothing() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    let spec = json!({"ingressClassName": "portico", "rules": [rule("app.test", "Prefix", "/", "main", json!({"number": 80}))]});
    objects.push(annotated(
        "ns",
        "plain",
        "2024-01-01T00:00:00Z",
        json!({}),
        spec.clone(),
    ));
    let beta = json!({"portico.io/match-headers": "x-env=beta", "portico.io/match-methods": "get,post",
                      "portico.io/match-query": "v~=^2"});
    objects.push(annotated(
        "ns",
        "beta",
        "2024-01-02T00:00:00Z",
        beta,
        spec.clone(),
    ));
    objects.push(annotated(
        "ns",
        "broken",
        "2024-01-03T00:00:00Z",
        json!({"portico.io/match-headers": "x-env~=(beta"}),
        spec,
    ));
    let t = run(objects);
    let routes = &t.snapshot.virtual_hosts[0].routes;
    assert_eq!(
        routes.len(),
        2,
        "the same path twice, told apart by conditions; the broken one left out"
    );
    let c = routes
        .iter()
        .find_map(|r| r.conditions.clone())
        .expect("a route with conditions");
    assert_eq!(c.methods, ["GET", "POST"]);
    assert_eq!(
        c.headers[0].rule,
        portico_model::ValueRule::Equals("beta".into())
    );
    assert!(!reasons(&t).iter().any(|(_, r)| *r == Reason::PathConflict));
    let broken = t
        .diagnostics
        .iter()
        .find(|d| d.object.name == "broken")
        .expect("the bad pattern is reported");
    assert!(
        broken.message.contains("match-headers") && broken.message.contains("routes are skipped"),
        "{}",
        broken.message
    );
    assert_eq!(
        portico_model::Snapshot {
            version: 1,
            ..t.snapshot.clone()
        }
        .validate(),
        Ok(())
    );
}

#[test]
fn header_edits_error_pages_fallbacks_and_www_redirects() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.extend(backends_of("ns", "errors"));
    let cases: &[(&str, Value)] = &[
        (
            "edited",
            json!({"portico.io/request-headers-set": "X-Env: prod", "portico.io/response-headers-remove": "x-powered-by",
                   "portico.io/response-headers-add": "X-Frame-Options: DENY\nCache-Control: no-store, private",
                   "portico.io/request-headers-add": "not a header"}),
        ),
        (
            "pages",
            json!({"nginx.ingress.kubernetes.io/default-backend": "errors", "nginx.ingress.kubernetes.io/custom-http-errors": "404,503",
                   "nginx.ingress.kubernetes.io/preserve-trailing-slash": "true"}),
        ),
        (
            "nofallback",
            json!({"nginx.ingress.kubernetes.io/default-backend": "missing"}),
        ),
        (
            "custom",
            json!({"nginx.ingress.kubernetes.io/custom-headers": "ns/security"}),
        ),
        (
            "elsewhere",
            json!({"nginx.ingress.kubernetes.io/custom-headers": "other/security"}),
        ),
        (
            "nomap",
            json!({"nginx.ingress.kubernetes.io/custom-headers": "absent"}),
        ),
        (
            "www.shop",
            json!({"nginx.ingress.kubernetes.io/from-to-www-redirect": "true"}),
        ),
    ];
    objects.extend(one_route_sites(cases));
    // A younger Ingress that routes the bare name itself keeps it.
    let taken = json!({"ingressClassName": "portico", "rules": [rule("shop.test", "Prefix", "/", "main", json!({"number": 80}))]});
    objects.push(annotated(
        "ns",
        "bare",
        "2025-01-01T00:00:00Z",
        json!({}),
        taken,
    ));
    objects.extend(one_route_sites(&[(
        "blog",
        json!({"nginx.ingress.kubernetes.io/from-to-www-redirect": "true"}),
    )]));
    let config_map = |ns: &str| {
        KubeObject::ConfigMap(std::sync::Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "security", "namespace": ns},
                "data": {"X-Content-Type-Options": "nosniff", "bad name": "x"}}))
            .unwrap(),
        ))
    };
    objects.push(config_map("ns"));
    objects.push(config_map("other"));
    let t = run(objects);
    let route = |host: &str| first_route(&t, host);

    let custom = route("custom.test").headers.expect("custom headers");
    assert_eq!(
        custom.response.set,
        [("x-content-type-options".to_string(), "nosniff".to_string())]
    );
    let reported = |name: &str, text: &str| {
        t.diagnostics
            .iter()
            .any(|d| d.object.name == name && d.message.contains(text))
    };
    assert!(reported("custom", "\"bad name\" is not a header"));
    assert!(
        route("elsewhere.test").headers.is_none() && reported("elsewhere", "another namespace")
    );
    assert!(route("nomap.test").headers.is_none() && reported("nomap", "does not exist"));

    let edits = route("edited.test").headers.expect("header edits");
    assert_eq!(
        edits.request.set,
        [("x-env".to_string(), "prod".to_string())]
    );
    assert!(
        edits.request.add.is_empty(),
        "a bad value is reported and left out"
    );
    assert_eq!(edits.response.remove, ["x-powered-by"]);
    assert_eq!(
        edits.response.add[1],
        ("cache-control".to_string(), "no-store, private".to_string())
    );
    assert!(t
        .diagnostics
        .iter()
        .any(|d| d.object.name == "edited" && d.message.contains("request-headers-add")));

    let pages = route("pages.test");
    assert_eq!(pages.fallback_backend.as_deref(), Some("ns/errors:80"));
    let e = pages.error_pages.expect("error pages");
    assert_eq!(
        (
            e.statuses.as_slice(),
            e.backend.as_deref(),
            e.service.as_str(),
            e.ingress.as_str()
        ),
        (&[404, 503][..], Some("ns/errors:80"), "main", "pages")
    );
    assert!(pages.preserve_trailing_slash);
    assert!(route("nofallback.test").fallback_backend.is_none());
    assert!(t
        .diagnostics
        .iter()
        .any(|d| d.object.name == "nofallback" && d.reason == Reason::ServiceNotFound));

    assert!(
        route("blog.test").rewrite.is_none(),
        "the named host itself is not redirected"
    );
    let www = route("www.blog.test")
        .rewrite
        .and_then(|r| r.redirect)
        .expect("the www name redirects");
    assert_eq!(
        (www.code, www.target.as_str()),
        (308, "$scheme://blog.test$request_uri")
    );
    let shop = route("shop.test");
    assert!(
        shop.rewrite.is_none() && shop.source == SourceRef::new("ns", "bare"),
        "an Ingress that routes the other name keeps it"
    );
    assert!(
        !reasons(&t).iter().any(|(_, r)| *r == Reason::PathConflict),
        "a redirect yields without a conflict"
    );
    assert_eq!(
        portico_model::Snapshot {
            version: 1,
            ..t.snapshot.clone()
        }
        .validate(),
        Ok(())
    );
}

#[test]
fn the_default_backend_service_serves_when_no_ingress_sets_one() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("infra", "fallback"));
    objects.extend(one_route_sites(&[("site", json!({}))]));
    objects.extend(backends_of("ns", "main"));
    let state: ClusterState = objects.into_iter().collect();
    let opts = Options {
        default_backend_service: Some(("infra".into(), "fallback".into())),
        ..Options::default()
    };
    let t = translate(&state, &opts);
    assert_eq!(
        t.snapshot.default_backend.as_deref(),
        Some("infra/fallback:80")
    );
    assert!(t
        .snapshot
        .backends
        .iter()
        .any(|b| b.name == "infra/fallback:80" && !b.endpoints.is_empty()));
    let missing = Options {
        default_backend_service: Some(("infra".into(), "nope".into())),
        ..Options::default()
    };
    let t = translate(&state, &missing);
    assert!(t.snapshot.default_backend.is_none());
    assert!(t
        .diagnostics
        .iter()
        .any(|d| d.object.name == "nope" && d.message.contains("--default-backend-service")));
}

#[test]
fn client_certificates_are_a_property_of_the_host() {
    let (ca, _) = crate::secret::tests::self_signed("Client CA", -1, 30);
    let (other_ca, _) = crate::secret::tests::self_signed("Other CA", -1, 30);
    let mut objects = vec![
        ours(),
        opaque_secret("ns", "client-ca", json!({"ca.crt": ca})),
        opaque_secret("ns", "other-ca", json!({"ca.crt": other_ca})),
    ];
    objects.extend(backends_of("ns", "main"));
    let tls = |extra: Value| {
        let mut a = json!({"nginx.ingress.kubernetes.io/auth-tls-secret": "ns/client-ca",
                           "nginx.ingress.kubernetes.io/auth-tls-verify-depth": "2",
                           "nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream": "true",
                           "nginx.ingress.kubernetes.io/auth-tls-match-cn": "CN=(alice|bob)"});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    objects.extend(one_route_sites(&[
        ("strict", tls(json!({}))),
        (
            "optional",
            tls(json!({"portico.io/auth-tls-verify-client": "optional_no_ca"})),
        ),
        (
            "off",
            tls(json!({"portico.io/auth-tls-verify-client": "off"})),
        ),
        ("noca", json!({"portico.io/auth-tls-verify-client": "on"})),
        (
            "badmode",
            tls(json!({"portico.io/auth-tls-verify-client": "require"})),
        ),
        (
            "elsewhere",
            json!({"portico.io/auth-tls-secret": "kube-system/client-ca"}),
        ),
    ]));
    // Two newer Ingresses on strict.test: one without client certificates shares the
    // host's, one with another CA is left out.
    let path = |p: &str| json!({"ingressClassName": "portico", "rules": [rule("strict.test", "Prefix", p, "main", json!({"number": 80}))]});
    objects.push(annotated(
        "ns",
        "plain",
        "2024-02-01T00:00:00Z",
        json!({}),
        path("/plain"),
    ));
    objects.push(annotated(
        "ns",
        "rival",
        "2024-02-02T00:00:00Z",
        json!({"portico.io/auth-tls-secret": "other-ca"}),
        path("/rival"),
    ));
    let t = run(objects);
    let vhost = |host: &str| {
        t.snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.host.to_string() == host)
            .unwrap_or_else(|| panic!("{host}"))
    };

    let strict = vhost("strict.test")
        .client_auth
        .clone()
        .expect("strict.test asks for certificates");
    assert_eq!(strict.verify, portico_model::ClientVerify::On);
    assert_eq!(
        (
            strict.depth,
            strict.pass_certificate,
            strict.match_subject.as_deref()
        ),
        (2, true, Some("CN=(alice|bob)"))
    );
    assert!(strict.ca_pem.contains("BEGIN CERTIFICATE"));
    let paths: Vec<&str> = vhost("strict.test")
        .routes
        .iter()
        .map(|r| r.path.path())
        .collect();
    assert_eq!(
        paths,
        ["/", "/plain"],
        "the rival's path is left out, the plain one is kept under the host's policy"
    );
    assert!(t
        .diagnostics
        .iter()
        .any(|d| d.object.name == "rival" && d.reason == Reason::ClientAuthConflict));

    assert_eq!(
        vhost("optional.test")
            .client_auth
            .as_ref()
            .map(|c| c.verify),
        Some(portico_model::ClientVerify::OptionalNoCa)
    );
    assert_eq!(vhost("off.test").client_auth, None);
    assert_eq!(
        first_route(&t, "off.test").access,
        None,
        "off asks for nothing and refuses nothing"
    );
    for (host, why) in [
        ("noca.test", "without auth-tls-secret"),
        (
            "badmode.test",
            "\"require\" is not one of on, optional, optional_no_ca, off",
        ),
        ("elsewhere.test", "another namespace"),
    ] {
        assert_eq!(vhost(host).client_auth, None);
        let refused = first_route(&t, host)
            .access
            .and_then(|a| a.refuse)
            .unwrap_or_else(|| panic!("{host} must refuse"));
        assert!(refused.contains(why), "{host}: {refused}");
    }
}

mod properties {
    use super::*;
    use crate::compat::{INGRESS_NGINX, PORTICO_ONLY};
    use proptest::prelude::*;

    /// Values shaped like what annotations take, and some that are not.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("true".to_string()),
            Just("false".to_string()),
            Just("cookie".to_string()),
            Just("basic".to_string()),
            "[0-9]{1,6}[smhkKmMgG]?",
            "(/[a-z$0-9().*{}|]{0,8}){0,3}",
            "https?://[a-z.]{1,12}(/[a-z$]{0,6})?",
            "[a-z-]{1,10}(=[a-z0-9~^$()]{0,6})?(, ?[a-z-]{1,10})?",
            "[0-9./,: ]{0,24}",
            ".{0,40}",
        ]
    }

    fn annotations() -> impl Strategy<Value = Vec<(String, String)>> {
        let names: Vec<&'static str> = INGRESS_NGINX
            .iter()
            .chain(PORTICO_ONLY)
            .map(|(name, _)| *name)
            .collect();
        proptest::collection::vec(
            (proptest::sample::select(names), any::<bool>(), value()),
            0..12,
        )
        .prop_map(|picked| {
            picked
                .into_iter()
                .map(|(name, ours, value)| {
                    let prefix = if ours {
                        "portico.io"
                    } else {
                        "nginx.ingress.kubernetes.io"
                    };
                    (format!("{prefix}/{name}"), value)
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever an Ingress's annotations say, translation does not panic, and what it
        /// builds is a snapshot the proxy accepts.
        #[test]
        fn any_annotations_translate_to_a_valid_snapshot(picked in annotations(), canary in any::<bool>()) {
            let mut map: serde_json::Map<String, Value> = picked
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let mut objects = vec![ours()];
            objects.extend(backends_of("ns", "main"));
            objects.push(opaque_secret("ns", "users", json!({"auth": "alice:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="})));
            objects.push(annotated("ns", "plain", "2024-01-01T00:00:00Z", json!({}), json!({
                "ingressClassName": "portico",
                "rules": [rule("a.test", "Prefix", "/", "main", json!({"number": 80}))],
            })));
            if canary {
                map.insert("nginx.ingress.kubernetes.io/canary".into(), json!("true"));
            }
            objects.push(annotated("ns", "fuzzed", "2024-01-02T00:00:00Z", Value::Object(map), json!({
                "ingressClassName": "portico",
                "tls": [{"hosts": ["a.test"], "secretName": "missing"}],
                "rules": [
                    rule("a.test", "ImplementationSpecific", "/api/(.*)", "main", json!({"number": 80})),
                    rule("b.test", "Exact", "/", "main", json!({"name": "http"})),
                ],
            })));
            let t = run(objects);
            let validated = portico_model::Snapshot { version: 1, ..t.snapshot.clone() }.validate();
            prop_assert_eq!(validated, Ok(()));
        }
    }
}

#[test]
fn external_name_services_route_to_what_the_resolver_found() {
    use crate::{NameResolution, ResolvedNames, Translator};
    let external = KubeObject::Service(
        serde_json::from_value(json!({
            "metadata": {"name": "api", "namespace": "ns"},
            "spec": {"type": "ExternalName", "externalName": "API.Example.test.", "ports": [{"name": "https", "port": 443, "targetPort": 9443}]},
        }))
        .unwrap(),
    );
    let objects = vec![
        ours(),
        external,
        ingress(
            "ns",
            "by-number",
            json!({"ingressClassName": "portico", "rules": [rule("a.test", "Prefix", "/", "api", json!({"number": 8443}))]}),
        ),
        ingress(
            "ns",
            "by-name",
            json!({"ingressClassName": "portico", "rules": [rule("b.test", "Prefix", "/", "api", json!({"name": "https"}))]}),
        ),
    ];
    let state: ClusterState = objects.into_iter().collect();
    assert_eq!(
        state.external_names().into_iter().collect::<Vec<_>>(),
        vec!["api.example.test".to_string()]
    );
    let mut translator = Translator::new(Options::default());
    let t = translator.translate(&state);
    assert!(
        t.diagnostics
            .iter()
            .any(|d| d.reason == Reason::NoReadyEndpoints && d.message.contains("not resolved yet")),
        "{:?}",
        t.diagnostics
    );
    let names: ResolvedNames = [(
        "api.example.test".to_string(),
        NameResolution::Addresses(vec!["192.0.2.10".parse().unwrap()]),
    )]
    .into();
    translator.set_resolved_names(Arc::new(names));
    let t = translator.translate(&state);
    assert_eq!(
        translator.reprocessed(),
        2,
        "what a name resolved to is read by both"
    );
    let endpoints = |port: u16| {
        t.snapshot
            .backends
            .iter()
            .find(|b| b.endpoints.iter().any(|e| e.port == port))
            .map(|b| b.endpoints.clone())
    };
    assert_eq!(
        endpoints(8443),
        Some(vec![Endpoint {
            address: "192.0.2.10".parse().unwrap(),
            port: 8443,
            ready: true
        }])
    );
    assert!(
        endpoints(9443).is_some(),
        "a named port is the Service's, by its targetPort"
    );
    assert!(!t
        .diagnostics
        .iter()
        .any(|d| d.reason == Reason::NoReadyEndpoints));
    translator.translate(&state);
    assert_eq!(
        translator.reprocessed(),
        0,
        "the same answer changes nothing"
    );
}

#[test]
fn auth_proxy_set_headers_are_read_from_the_ingresss_namespace_with_their_variables() {
    let mut objects = vec![ours()];
    objects.extend(backends_of("ns", "main"));
    objects.extend(one_route_sites(&[(
        "guarded",
        json!({
            "nginx.ingress.kubernetes.io/auth-url": "http://auth.test/check",
            "nginx.ingress.kubernetes.io/auth-proxy-set-headers": "auth-headers",
        }),
    )]));
    objects.push(KubeObject::ConfigMap(Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": "auth-headers", "namespace": "ns"},
            "data": {"X-Tenant": "shop", "X-Host": "$host", "X-Odd": "$nope"}}),
        )
        .unwrap(),
    )));
    let t = run(objects);
    let route = first_route(&t, "guarded.test");
    let external = route.access.unwrap().external_auth.unwrap();
    let headers: Vec<(String, String)> = external
        .request_headers
        .iter()
        .map(|(n, v)| (n.clone(), v.to_string()))
        .collect();
    assert_eq!(
        headers,
        [
            ("x-host".to_string(), "${host}".to_string()),
            ("x-tenant".to_string(), "shop".to_string())
        ]
    );
    assert!(t.diagnostics.iter().any(|d| d.object.name == "guarded"
        && d.message.contains("\"x-odd\" has unknown variable $nope")));
}
