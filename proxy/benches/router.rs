//! Host plus path lookup on a large snapshot: 10 000 hosts of 10 paths each, one in ten
//! a wildcard. Run with `cargo bench -p portico-proxy --bench router`.

use criterion::{criterion_group, criterion_main, Criterion};
use portico_model::{Backend, Endpoint, PathMatch, Route, Snapshot, VirtualHost};
use portico_proxy::config::compile::CompiledSnapshot;
use portico_proxy::telemetry::metrics::ProxyMetrics;
use std::hint::black_box;
use std::sync::Arc;

const HOSTS: usize = 10_000;
const PATHS: [&str; 10] = [
    "/",
    "/api",
    "/api/v1",
    "/api/v1/users",
    "/api/v2",
    "/static",
    "/static/img",
    "/login",
    "/admin",
    "/healthz",
];

fn host(i: usize) -> String {
    if i.is_multiple_of(10) {
        format!("*.tenant{i}.example.com")
    } else {
        format!("app{i}.example.com")
    }
}

fn snapshot() -> Snapshot {
    let mut s = Snapshot {
        version: 1,
        ..Snapshot::default()
    };
    for i in 0..HOSTS {
        let backend = format!("ns{i}/svc:80");
        s.backends.push(Arc::new(Backend {
            name: backend.clone(),
            service: Default::default(),
            endpoints: vec![Endpoint {
                address: [10, 0, (i / 256) as u8, (i % 256) as u8].into(),
                port: 8080,
                ready: true,
            }],
            upstream: Default::default(),
            policy: Default::default(),
        }));
        let routes = PATHS
            .iter()
            .enumerate()
            .map(|(j, p)| {
                Route::new(
                    if j % 3 == 2 {
                        PathMatch::Exact(p.to_string())
                    } else {
                        PathMatch::prefix(p)
                    },
                    backend.clone(),
                )
            })
            .collect();
        s.virtual_hosts
            .push(Arc::new(VirtualHost::new(host(i).parse().unwrap(), routes)));
    }
    s.validate().expect("valid snapshot");
    s
}

fn lookups(c: &mut Criterion) {
    let metrics = std::sync::Arc::new(ProxyMetrics::new());
    let compiled = CompiledSnapshot::compile(snapshot(), &metrics, None).expect("compiles");
    let mut group = c.benchmark_group("route");
    let cases = [
        (
            "exact host, deep prefix",
            "app4242.example.com",
            "/api/v1/users/42/orders",
        ),
        (
            "exact host with port, root",
            "app9999.example.com:8080",
            "/",
        ),
        (
            "mixed-case host",
            "App4242.Example.COM",
            "/static/img/logo.png",
        ),
        (
            "wildcard host",
            "shop.tenant4240.example.com",
            "/api/v2/items",
        ),
        ("exact path", "app4243.example.com", "/api/v1"),
        ("unknown host", "nowhere.example.org", "/api"),
    ];
    for (name, h, p) in cases {
        let req = http::Request::get(p)
            .body(())
            .expect("valid path")
            .into_parts()
            .0;
        assert!(
            compiled.route(h, &req).is_routed() || h.starts_with("nowhere"),
            "{name} should route"
        );
        group.bench_function(name, |b| {
            b.iter(|| compiled.route(black_box(h), black_box(&req)))
        });
    }
    group.finish();

    c.bench_function("compile 10k hosts x 10 paths", |b| {
        let s = snapshot();
        b.iter(|| CompiledSnapshot::compile(s.clone(), &metrics, None).expect("compiles"))
    });
}

criterion_group!(benches, lookups);
criterion_main!(benches);
