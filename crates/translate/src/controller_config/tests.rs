//! The controller ConfigMap, translated with Ingresses as a user would write both.

use crate::{ClusterState, KubeObject, Options, Reason, Translation, Translator};
use portico_model::{Hsts, TextMatch};
use serde_json::{json, Value};

fn config_map(ns: &str, name: &str, data: Value) -> KubeObject {
    KubeObject::ConfigMap(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "data": data}))
            .unwrap(),
    )
}

fn ingress(name: &str, annotations: Value, host: &str, paths: &[&str]) -> KubeObject {
    let paths: Vec<Value> = paths
        .iter()
        .map(|p| json!({"path": p, "pathType": "Prefix", "backend": {"service": {"name": "app", "port": {"number": 80}}}}))
        .collect();
    KubeObject::Ingress(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "annotations": annotations},
            "spec": {"ingressClassName": "portico", "rules": [{"host": host, "http": {"paths": paths}}]},
        }))
        .unwrap(),
    )
}

fn options() -> Options {
    Options {
        assume_class_exists: true,
        controller_config: Some(("ingress-nginx".into(), "controller".into())),
        ..Options::default()
    }
}

/// `objects` beside the Service every Ingress here routes to.
fn state(objects: Vec<KubeObject>) -> ClusterState {
    let app = KubeObject::Service(
        serde_json::from_value(json!({"metadata": {"name": "app", "namespace": "ns"}, "spec": {"ports": [{"port": 80}]}}))
            .unwrap(),
    );
    objects.into_iter().chain([app]).collect()
}

fn config_diagnostics(t: &Translation) -> Vec<(Reason, String)> {
    t.diagnostics
        .iter()
        .filter(|d| d.object.kind == "ConfigMap")
        .map(|d| (d.reason, d.message.clone()))
        .collect()
}

fn route<'a>(t: &'a Translation, host: &str, path: &str) -> &'a portico_model::Route {
    t.snapshot
        .virtual_hosts
        .iter()
        .find(|v| v.host.to_string() == host)
        .and_then(|v| v.routes.iter().find(|r| r.path.path() == path))
        .unwrap_or_else(|| panic!("no route {host}{path}"))
}

#[test]
fn keys_that_are_annotations_are_the_defaults_an_ingress_overrides() {
    let t = Translator::new(options()).translate(&state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({"proxy-body-size": "8m", "ssl-redirect": "false", "whitelist-source-range": "10.0.0.0/8"}),
        ),
        ingress("plain", json!({}), "plain.test", &["/"]),
        ingress(
            "own",
            json!({"nginx.ingress.kubernetes.io/proxy-body-size": "1k", "nginx.ingress.kubernetes.io/whitelist-source-range": "192.168.0.0/16"}),
            "own.test",
            &["/"],
        ),
    ]));
    assert_eq!(config_diagnostics(&t), vec![]);
    let plain = route(&t, "plain.test", "/");
    assert_eq!(plain.max_body_bytes, Some(8 << 20));
    let allow = &plain.access.as_ref().unwrap().allow_sources;
    assert_eq!(allow, &vec!["10.0.0.0/8".parse().unwrap()]);
    let own = route(&t, "own.test", "/");
    assert_eq!(own.max_body_bytes, Some(1024));
    let allow = &own.access.as_ref().unwrap().allow_sources;
    assert_eq!(allow, &vec!["192.168.0.0/16".parse().unwrap()]);
}

#[test]
fn a_bad_value_names_key_and_value_and_the_previous_one_stays() {
    let mut translator = Translator::new(options());
    let good = state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({"proxy-body-size": "8m", "http-redirect-code": "301"}),
        ),
        ingress("plain", json!({}), "plain.test", &["/"]),
    ]);
    let t = translator.translate(&good);
    assert_eq!(route(&t, "plain.test", "/").max_body_bytes, Some(8 << 20));
    assert_eq!(t.snapshot.global.https_redirect_code, 301);

    let bad = state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({"proxy-body-size": "eight", "http-redirect-code": "200"}),
        ),
        ingress("plain", json!({}), "plain.test", &["/"]),
    ]);
    let t = translator.translate(&bad);
    let diagnostics = config_diagnostics(&t);
    assert_eq!(diagnostics.len(), 2, "{diagnostics:?}");
    assert!(diagnostics
        .iter()
        .all(|(r, _)| *r == Reason::InvalidSetting));
    assert!(diagnostics[0]
        .1
        .contains("key http-redirect-code: value \"200\""));
    assert!(diagnostics[1]
        .1
        .starts_with("key proxy-body-size: value \"eight\""));
    assert!(diagnostics[1]
        .1
        .ends_with("keeping the previous value \"8m\""));
    assert_eq!(route(&t, "plain.test", "/").max_body_bytes, Some(8 << 20));
    assert_eq!(t.snapshot.global.https_redirect_code, 301);

    // A controller that starts on the bad value has no previous one: the default applies.
    let t = Translator::new(options()).translate(&bad);
    assert_eq!(route(&t, "plain.test", "/").max_body_bytes, Some(1 << 20));
    assert!(config_diagnostics(&t)[1].1.ends_with("the default applies"));
}

#[test]
fn keys_not_acted_on_are_reported_and_harm_nothing() {
    let t = Translator::new(options()).translate(&state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({
                "ssl-session-tickets": "true",
                "http-snippet": "lua_code_cache off;",
                "use-proxy-protocol": "true",
                "no-such-key": "1",
                "server-tokens": "true",
                "proxy-body-size": "2m",
            }),
        ),
        ingress("plain", json!({}), "plain.test", &["/"]),
    ]));
    let messages: Vec<String> = config_diagnostics(&t)
        .into_iter()
        .map(|(r, m)| {
            assert_eq!(r, Reason::UnsupportedSetting);
            m
        })
        .collect();
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert!(messages[0].starts_with("key http-snippet is never supported"));
    assert!(messages[1].contains("no-such-key is not a key of ingress-nginx's ConfigMap"));
    assert!(messages[2].starts_with("key server-tokens: value \"true\" is not supported"));
    assert!(messages[3].contains("ssl-session-tickets is not supported yet"));
    assert!(messages[4].contains("set it on portico-proxy with --proxy-protocol"));
    assert_eq!(route(&t, "plain.test", "/").max_body_bytes, Some(2 << 20));
}

#[test]
fn a_missing_config_map_is_reported_and_defaults_apply() {
    let t = Translator::new(options()).translate(&state(vec![ingress(
        "plain",
        json!({}),
        "plain.test",
        &["/"],
    )]));
    assert_eq!(
        config_diagnostics(&t)
            .into_iter()
            .map(|(r, _)| r)
            .collect::<Vec<_>>(),
        vec![Reason::ConfigMapNotFound]
    );
    assert_eq!(route(&t, "plain.test", "/").max_body_bytes, Some(1 << 20));
}

#[test]
fn a_changed_config_map_reprocesses_every_ingress() {
    let mut translator = Translator::new(options());
    let ingresses = state(vec![
        ingress("a", json!({}), "a.test", &["/"]),
        ingress("b", json!({}), "b.test", &["/"]),
    ]);
    let with = |size: &str| {
        let mut s = ingresses.clone();
        s.insert(config_map(
            "ingress-nginx",
            "controller",
            json!({"proxy-body-size": size}),
        ));
        s
    };
    translator.translate(&with("2m"));
    let t = translator.translate(&with("2m"));
    assert_eq!(translator.reprocessed(), 0);
    assert_eq!(route(&t, "a.test", "/").max_body_bytes, Some(2 << 20));
    let t = translator.translate(&with("3m"));
    assert_eq!(translator.reprocessed(), 2);
    assert_eq!(route(&t, "a.test", "/").max_body_bytes, Some(3 << 20));
    assert_eq!(route(&t, "b.test", "/").max_body_bytes, Some(3 << 20));
}

#[test]
fn hsts_keys_override_the_flags_one_by_one() {
    let t = Translator::new(options()).translate(&state(vec![config_map(
        "ingress-nginx",
        "controller",
        json!({"hsts-max-age": "600", "hsts-preload": "true"}),
    )]));
    assert_eq!(
        t.snapshot.tls.hsts,
        Some(Hsts {
            max_age: 600,
            include_subdomains: false,
            preload: true
        })
    );
    let t = Translator::new(options()).translate(&state(vec![config_map(
        "ingress-nginx",
        "controller",
        json!({"hsts": "false", "hsts-max-age": "600"}),
    )]));
    assert_eq!(t.snapshot.tls.hsts, None);
}

#[test]
fn global_headers_sit_under_an_ingresss_own() {
    let t = Translator::new(options()).translate(&state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({"add-headers": "ingress-nginx/answer-headers", "proxy-set-headers": "request-headers", "hide-headers": "X-Powered-By"}),
        ),
        config_map("ingress-nginx", "answer-headers", json!({"X-Frame-Options": "DENY", "X-Team": "platform"})),
        config_map("ingress-nginx", "request-headers", json!({"X-Cluster": "eu-1"})),
        ingress(
            "own",
            json!({"nginx.ingress.kubernetes.io/response-headers-set": "X-Team: payments"}),
            "own.test",
            &["/"],
        ),
    ]));
    assert_eq!(config_diagnostics(&t), vec![]);
    let edits = route(&t, "own.test", "/").headers.as_ref().unwrap();
    assert_eq!(
        edits.response.set,
        vec![
            ("x-frame-options".to_string(), "DENY".to_string()),
            ("x-team".to_string(), "payments".to_string())
        ]
    );
    assert_eq!(edits.response.remove, vec!["x-powered-by".to_string()]);
    assert_eq!(
        edits.request.set,
        vec![("x-cluster".to_string(), "eu-1".to_string())]
    );
}

#[test]
fn global_auth_applies_unless_an_ingress_has_its_own_or_turns_it_off() {
    let t = Translator::new(options()).translate(&state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({"global-auth-url": "http://auth.test/check", "global-auth-response-headers": "X-User"}),
        ),
        ingress("plain", json!({}), "plain.test", &["/", "/.well-known/acme-challenge/x", "/public"]),
        ingress(
            "own",
            json!({"nginx.ingress.kubernetes.io/auth-url": "http://own.test/auth"}),
            "own.test",
            &["/"],
        ),
        ingress(
            "off",
            json!({"nginx.ingress.kubernetes.io/enable-global-auth": "false"}),
            "off.test",
            &["/"],
        ),
    ]));
    assert_eq!(config_diagnostics(&t), vec![]);
    let auth = |host: &str, path: &str| {
        route(&t, host, path)
            .access
            .as_ref()
            .and_then(|a| a.external_auth.as_ref())
            .map(|e| (e.url.to_string(), e.response_headers.clone()))
    };
    assert_eq!(
        auth("plain.test", "/"),
        Some(("http://auth.test/check".into(), vec!["x-user".into()]))
    );
    assert_eq!(auth("plain.test", "/public"), auth("plain.test", "/"));
    // cert-manager's solver stays reachable: `no-auth-locations`' default.
    assert_eq!(auth("plain.test", "/.well-known/acme-challenge/x"), None);
    assert_eq!(
        auth("own.test", "/"),
        Some(("http://own.test/auth".into(), vec![]))
    );
    assert_eq!(auth("off.test", "/"), None);
}

#[test]
fn a_global_auth_url_that_cannot_be_used_leaves_global_auth_off() {
    let t = Translator::new(options()).translate(&state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({"global-auth-url": "not a url"}),
        ),
        ingress("plain", json!({}), "plain.test", &["/"]),
    ]));
    let diagnostics = config_diagnostics(&t);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert!(diagnostics[0]
        .1
        .starts_with("key global-auth-url: value \"not a url\""));
    assert!(diagnostics[0].1.ends_with("global auth is off"));
    assert!(route(&t, "plain.test", "/").access.is_none());
}

#[test]
fn an_ingress_with_a_blocked_word_is_skipped() {
    let t = Translator::new(options()).translate(&state(vec![
        config_map(
            "ingress-nginx",
            "controller",
            json!({"annotation-value-word-blocklist": "load_module, lua_package"}),
        ),
        ingress(
            "sneaky",
            json!({"nginx.ingress.kubernetes.io/auth-realm": "x lua_package y"}),
            "sneaky.test",
            &["/"],
        ),
        ingress(
            "plain",
            json!({"other.io/note": "load_module"}),
            "plain.test",
            &["/"],
        ),
    ]));
    assert!(t
        .snapshot
        .virtual_hosts
        .iter()
        .all(|v| v.host.to_string() != "sneaky.test"));
    route(&t, "plain.test", "/");
    let skipped = t
        .diagnostics
        .iter()
        .find(|d| d.object.name == "sneaky")
        .unwrap();
    assert!(
        skipped.message.contains("\"lua_package\""),
        "{}",
        skipped.message
    );
}

#[test]
fn block_lists_reach_the_snapshot() {
    let t = Translator::new(options()).translate(&state(vec![config_map(
        "ingress-nginx",
        "controller",
        json!({"block-cidrs": "192.0.2.0/24", "block-user-agents": "~*curl, Wget/1.0", "block-referers": "~spam", "generate-request-id": "false"}),
    )]));
    let g = &t.snapshot.global;
    assert_eq!(g.block.cidrs, vec!["192.0.2.0/24".parse().unwrap()]);
    assert_eq!(
        g.block.user_agents,
        vec![
            TextMatch::parse("~*curl").unwrap(),
            TextMatch::Exact("Wget/1.0".into())
        ]
    );
    assert_eq!(g.block.referers, vec![TextMatch::parse("~spam").unwrap()]);
    assert!(!g.generate_request_id);
    t.snapshot.validate().unwrap_or_else(|e| {
        // Version 0 is the publisher's to stamp; everything else must hold.
        assert_eq!(e, portico_model::ValidationError::ZeroVersion)
    });
}

#[test]
fn every_key_that_is_an_annotation_reads_its_usual_value() {
    let values = [
        ("custom-http-errors", "404,503"),
        ("proxy-body-size", "10m"),
        ("proxy-connect-timeout", "5"),
        ("proxy-read-timeout", "120"),
        ("proxy-send-timeout", "120"),
        ("proxy-buffers-number", "4"),
        ("proxy-buffer-size", "8k"),
        ("proxy-cookie-path", "off"),
        ("proxy-cookie-domain", "off"),
        ("proxy-next-upstream", "error timeout"),
        ("proxy-next-upstream-timeout", "0"),
        ("proxy-next-upstream-tries", "3"),
        ("ssl-redirect", "true"),
        ("force-ssl-redirect", "false"),
        ("denylist-source-range", "192.0.2.0/24"),
        ("whitelist-source-range", "10.0.0.0/8"),
        ("limit-rate", "0"),
        ("limit-rate-after", "0"),
        ("proxy-buffering", "off"),
        ("load-balance", "round_robin"),
        ("service-upstream", "false"),
        ("relative-redirects", "false"),
        ("client-body-buffer-size", "8k"),
    ];
    for (k, v) in values {
        assert_eq!(
            super::keys::status_of(k),
            Some(super::KeyStatus::Annotation),
            "{k}"
        );
        assert_eq!(
            crate::ingress::check_annotation_default(k, v),
            Ok(()),
            "{k}: {v}"
        );
    }
    let annotations = super::CONTROLLER_KEYS
        .iter()
        .filter(|(_, s)| *s == super::KeyStatus::Annotation)
        .count();
    assert_eq!(annotations, values.len());
}

#[test]
fn a_reread_follows_the_config_maps_it_names_and_a_reuse_reports_again() {
    let mut translator = Translator::new(options());
    // The same controller ConfigMap object throughout: only the one it names changes.
    let controller = config_map(
        "ingress-nginx",
        "controller",
        json!({"add-headers": "answer-headers", "use-gzip": "maybe"}),
    );
    let with = |frame: &str| {
        state(vec![
            controller.clone(),
            config_map(
                "ingress-nginx",
                "answer-headers",
                json!({"X-Frame-Options": frame}),
            ),
            ingress("plain", json!({}), "plain.test", &["/"]),
        ])
    };
    let first = with("DENY");
    let t = translator.translate(&first);
    assert_eq!(config_diagnostics(&t).len(), 1, "use-gzip's bad value");
    let t = translator.translate(&first);
    assert_eq!(
        config_diagnostics(&t).len(),
        1,
        "reported again when reused"
    );
    let t = translator.translate(&with("SAMEORIGIN"));
    let edits = route(&t, "plain.test", "/").headers.clone().unwrap();
    assert_eq!(
        edits.response.set,
        vec![("x-frame-options".to_string(), "SAMEORIGIN".to_string())]
    );
}

#[test]
fn tls_keys_narrow_the_versions_and_set_the_ciphers_and_a_bad_one_keeps_the_previous() {
    use portico_model::{TlsVersion, TlsVersions};
    let mut translator = Translator::new(options());
    let t = translator.translate(&state(vec![config_map(
        "ingress-nginx",
        "controller",
        json!({"ssl-protocols": "TLSv1 TLSv1.1 TLSv1.2", "ssl-ciphers": "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"}),
    )]));
    assert_eq!(
        t.snapshot.tls.versions,
        TlsVersions {
            min: TlsVersion::Tls12,
            max: TlsVersion::Tls12
        }
    );
    assert_eq!(
        t.snapshot.tls.ciphers.as_deref(),
        Some("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    );
    let diagnostics = config_diagnostics(&t);
    assert_eq!(
        diagnostics
            .iter()
            .map(|(r, m)| (*r, m.split(':').nth(1).unwrap_or_default().trim()))
            .collect::<Vec<_>>(),
        vec![
            (Reason::UnsupportedSetting, "TLSv1 is not offered"),
            (Reason::UnsupportedSetting, "TLSv1.1 is not offered"),
        ],
        "{diagnostics:?}"
    );

    let t = translator.translate(&state(vec![config_map(
        "ingress-nginx",
        "controller",
        json!({"ssl-protocols": "TLSv1.4", "ssl-ciphers": "TLS_AES_128_GCM_SHA256"}),
    )]));
    let diagnostics = config_diagnostics(&t);
    assert_eq!(diagnostics.len(), 2, "{diagnostics:?}");
    assert!(diagnostics[0].1.starts_with("key ssl-ciphers: value \"TLS_AES_128_GCM_SHA256\" is not a cipher list naming at least one TLS 1.2 cipher"), "{diagnostics:?}");
    assert!(
        diagnostics[1].1.contains("names \"TLSv1.4\""),
        "{diagnostics:?}"
    );
    assert!(diagnostics
        .iter()
        .all(|(r, m)| *r == Reason::InvalidSetting && m.contains("keeping the previous value")));
    assert_eq!(t.snapshot.tls.versions.max, TlsVersion::Tls12);
    assert!(t.snapshot.tls.ciphers.is_some());
}

#[test]
fn ssl_ciphers_annotations_belong_to_the_host_and_the_oldest_ingress_decides() {
    let mut older = ingress(
        "older",
        json!({"nginx.ingress.kubernetes.io/ssl-ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"}),
        "shop.test",
        &["/"],
    );
    let mut newer = ingress(
        "newer",
        json!({"nginx.ingress.kubernetes.io/ssl-ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256", "nginx.ingress.kubernetes.io/ssl-prefer-server-ciphers": "false"}),
        "shop.test",
        &["/api"],
    );
    let bad = ingress(
        "bad",
        json!({"nginx.ingress.kubernetes.io/ssl-ciphers": "NOT-A-CIPHER"}),
        "bad.test",
        &["/"],
    );
    for (i, (object, at)) in [
        (&mut older, "2026-01-01T00:00:00Z"),
        (&mut newer, "2026-02-01T00:00:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        let KubeObject::Ingress(ing) = object else {
            unreachable!()
        };
        let ing = std::sync::Arc::make_mut(ing);
        ing.metadata.creation_timestamp = Some(serde_json::from_value(json!(at)).unwrap());
        ing.metadata.uid = Some(format!("uid-{i}"));
    }
    let t = Translator::new(options()).translate(&state(vec![newer, older, bad]));
    let vhost = |host: &str| {
        t.snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.host.to_string() == host)
            .unwrap()
    };
    assert_eq!(
        vhost("shop.test").ciphers.as_deref(),
        Some("ECDHE-ECDSA-AES256-GCM-SHA384")
    );
    assert_eq!(
        vhost("shop.test").routes.len(),
        2,
        "the newer Ingress's routes stay"
    );
    assert_eq!(vhost("bad.test").ciphers, None);
    assert_eq!(vhost("bad.test").routes.len(), 1);
    let of = |name: &str| {
        t.diagnostics
            .iter()
            .filter(|d| d.object.name == name)
            .map(|d| (d.reason, d.message.as_str()))
            .collect::<Vec<_>>()
    };
    let newer = of("newer");
    assert!(
        newer.iter().any(
            |(r, m)| *r == Reason::TLSConflict && m.contains("ssl-ciphers of Ingress ns/older")
        ),
        "{newer:?}"
    );
    assert!(
        newer
            .iter()
            .any(|(r, m)| *r == Reason::UnsupportedAnnotation
                && m.contains("ssl-prefer-server-ciphers")),
        "{newer:?}"
    );
    let bad = of("bad");
    assert!(
        bad.iter()
            .any(|(r, m)| *r == Reason::InvalidAnnotation && m.contains("\"NOT-A-CIPHER\"")),
        "{bad:?}"
    );
}
