//! What an operator sees of the traffic: Prometheus metrics after real requests, access
//! log lines, request ids, and traces followed from the client through the upstream into
//! an OTLP receiver.

use portico_e2e::echo::backends;
use portico_e2e::harness::{free_port, Portico};
use portico_e2e::manifests::{ingress, service_with_endpoints, to_yaml};
use portico_e2e::otlp_receiver::{attribute, OtlpReceiver};
use portico_e2e::tls::{self, ClientOptions};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(sampled: bool) -> String {
    format!(
        "00-{CLIENT_TRACE}-{CLIENT_SPAN}-{}",
        if sampled { "01" } else { "00" }
    )
}

/// Every sample of `name` in a Prometheus text page: its labels and value.
fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    p.split_once("=\"")
                        .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include all of `wanted`.
fn value(text: &str, name: &str, wanted: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(labels, _)| {
            wanted
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_routes_backends_and_refusals_but_never_request_data() {
    let (servers, mut docs) = backends(&["web"]).await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    docs.extend(service_with_endpoints("flaky", &[dead, servers[0].addr]));
    docs.push(
        ingress("shop")
            .path("shop.test", "Prefix", "/api", "web")
            .build(),
    );
    docs.push(
        ingress("flaky")
            .path("flaky.test", "Prefix", "/", "flaky")
            .build(),
    );
    docs.push(
        ingress("private")
            .path("private.test", "Prefix", "/", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/whitelist-source-range",
                "10.0.0.0/8",
            )
            .build(),
    );
    let portico = Portico::start(&[("shop.yaml", to_yaml(&docs))]).await;

    for _ in 0..3 {
        assert_eq!(
            portico
                .client
                .get("shop.test", "/api/items?token=secret-value")
                .await
                .unwrap()
                .status,
            200
        );
    }
    for _ in 0..4 {
        assert_eq!(
            portico.client.get("flaky.test", "/").await.unwrap().status,
            200,
            "the dead endpoint's requests are retried"
        );
    }
    assert_eq!(
        portico
            .client
            .get("private.test", "/")
            .await
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        portico
            .client
            .get("elsewhere.test", "/secret/path")
            .await
            .unwrap()
            .status,
        404
    );
    let (stream, hs) = tls::connect(
        portico.https,
        ClientOptions {
            sni: Some("shop.test"),
            ..ClientOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        tls::get(stream, "shop.test", "/api/tls")
            .await
            .unwrap()
            .status,
        200
    );

    let shop = [
        ("namespace", "default"),
        ("ingress", "shop"),
        ("host", "shop.test"),
        ("path", "/api"),
        ("service", "web"),
    ];
    // Requests are counted as they finish, just after the client has its answer.
    portico
        .wait_until("every request is counted", |p| async move {
            let text = p.admin_get("/metrics").await.unwrap().text();
            value(
                &text,
                "portico_requests_total",
                &[("host", "shop.test"), ("code", "2xx")],
            ) == 4.0
                && value(
                    &text,
                    "portico_requests_total",
                    &[("host", "_unmatched"), ("code", "4xx")],
                ) == 1.0
                && value(&text, "portico_refusals_total", &[("host", "private.test")]) == 1.0
        })
        .await;
    let text = portico.admin_get("/metrics").await.unwrap().text();
    let count = |name: &str, wanted: &[(&str, &str)]| value(&text, name, wanted);

    // Every request family carries the route's labels and nothing from the request.
    for (labels, _) in samples(&text, "portico_requests_total") {
        let names: BTreeSet<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from(["namespace", "ingress", "host", "path", "service", "code"])
        );
    }
    for leaked in ["secret", "items", "elsewhere", "/api/tls", "127.0.0.1"] {
        assert!(
            !text.contains(leaked),
            "{leaked:?} must not become a label:\n{text}"
        );
    }
    assert_eq!(count("portico_request_duration_seconds_count", &shop), 4.0);
    assert_eq!(
        count(
            "portico_request_duration_seconds_bucket",
            &[shop.as_slice(), &[("le", "10")]].concat()
        ),
        4.0
    );
    assert!(
        count("portico_response_bytes_total", &shop) > 400.0,
        "four echo answers were sent"
    );
    assert_eq!(
        count(
            "portico_refusals_total",
            &[
                ("ingress", "private"),
                ("reason", "source_range"),
                ("service", "web")
            ]
        ),
        1.0
    );

    // The backend with a dead endpoint: each connect error is retried on the live one.
    let flaky = [("namespace", "default"), ("service", "flaky")];
    let errors = count("portico_upstream_connect_errors_total", &flaky);
    assert!(
        errors >= 1.0,
        "round robin reached the dead endpoint:\n{text}"
    );
    assert_eq!(count("portico_upstream_retries_total", &flaky), errors);
    assert_eq!(
        count("portico_upstream_response_duration_seconds_count", &flaky),
        4.0
    );
    let web = [("namespace", "default"), ("service", "web")];
    assert_eq!(
        count("portico_upstream_connections_total", &web),
        4.0,
        "one connection used per forwarded request"
    );
    assert!(
        count(
            "portico_upstream_connections_total",
            &[web.as_slice(), &[("reused", "true")]].concat()
        ) >= 1.0,
        "keep-alive reuses"
    );

    assert_eq!(
        count("portico_tls_handshakes_total", &[("protocol", &hs.version)]),
        1.0
    );
    assert_eq!(count("portico_tls_client_hellos_total", &[]), 1.0);
    assert!(count("portico_downstream_connections_total", &[]) >= 2.0);
    assert_eq!(count("portico_requests_in_flight", &[]), 0.0);
    assert!(count("portico_snapshot_apply_duration_seconds_count", &[]) >= 1.0);

    // The Grafana dashboard asks only for metrics that exist.
    let grafana = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/portico-dashboard.json"
    ))
    .unwrap();
    let controller_metrics = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../controller/src/metrics.rs"
    ))
    .unwrap();
    let names: BTreeSet<&str> = grafana
        .match_indices("portico_")
        .map(|(at, _)| {
            let name = &grafana[at..];
            let end = name
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(name.len());
            let name = &name[..end];
            name.strip_suffix("_bucket").unwrap_or(name)
        })
        .collect();
    assert!(names.len() > 15, "{names:?}");
    for name in names {
        let exported = if name.starts_with("portico_controller_") {
            controller_metrics.contains(&format!("\"{name}\""))
        } else {
            text.contains(&format!("# TYPE {name} "))
        };
        assert!(
            exported,
            "the Grafana dashboard uses {name}, which is not exported"
        );
    }

    // A deleted Ingress leaves no series behind.
    docs.retain(|d| d["metadata"]["name"] != "private");
    portico.apply("shop.yaml", &to_yaml(&docs)).await;
    assert_eq!(
        portico
            .client
            .get("shop.test", "/api")
            .await
            .unwrap()
            .status,
        200
    );
    let text = portico.admin_get("/metrics").await.unwrap().text();
    assert!(!text.contains("private.test"), "{text}");
    assert!(text.contains("shop.test"));
}

/// The JSON access-log lines of the proxy's output.
fn access_lines(portico: &Portico) -> Vec<Value> {
    std::fs::read_to_string(portico.log_path("proxy"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("request_id").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn without_tracing_a_clients_traceparent_passes_through_untouched() {
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("shop")
            .path("shop.test", "Prefix", "/", "web")
            .build(),
    );
    let portico = Portico::start(&[("shop.yaml", to_yaml(&docs))]).await;

    let sent = traceparent(true);
    let r = portico
        .client
        .request("GET", "shop.test", "/", &[("traceparent", &sent)])
        .await
        .unwrap();
    let seen = r.echo().unwrap().headers;
    assert_eq!(
        seen.get("traceparent"),
        Some(&sent),
        "the client's, unchanged"
    );

    let r = portico.client.get("shop.test", "/").await.unwrap();
    let seen = r.echo().unwrap().headers;
    assert_eq!(seen.get("traceparent"), None, "none is made up");
    assert!(
        seen.get("x-request-id").is_some_and(|id| id.len() == 32),
        "request ids stay on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_carry_ids_and_traces_into_logs_upstreams_and_the_collector() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("shop")
            .path("shop.test", "Prefix", "/api", "web")
            .build(),
    );
    let portico = Portico::start_with(
        &[("shop.yaml", to_yaml(&docs))],
        &["--otlp-endpoint", &receiver.endpoint()],
    )
    .await;

    // The client's id and trace go on; the upstream's parent is Portico's span.
    let sent = [
        ("x-request-id", "client-id-1"),
        ("traceparent", &traceparent(true)),
        ("user-agent", "obs-test/1"),
    ];
    let r = portico
        .client
        .request("GET", "shop.test", "/api/x?q=1", &sent)
        .await
        .unwrap();
    assert_eq!(
        r.header("x-request-id"),
        Some("client-id-1"),
        "the id comes back to the client"
    );
    let seen = r.echo().unwrap().headers;
    assert_eq!(seen["x-request-id"], "client-id-1");
    let upstream_parent = seen["traceparent"].clone();
    assert!(
        upstream_parent.starts_with(&format!("00-{CLIENT_TRACE}-"))
            && upstream_parent.ends_with("-01"),
        "{upstream_parent}"
    );
    let portico_span = upstream_parent[36..52].to_string();
    assert_ne!(portico_span, CLIENT_SPAN);

    // Without them, Portico makes both, and the upstream and the client see the same id.
    let r = portico.client.get("shop.test", "/api/new").await.unwrap();
    let id = r.header("x-request-id").unwrap().to_string();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let seen = r.echo().unwrap().headers;
    assert_eq!(seen["x-request-id"], id);
    let new_trace = seen["traceparent"][3..35].to_string();
    assert_ne!(new_trace, CLIENT_TRACE);
    // Portico's own answers carry the id too.
    let r = portico
        .client
        .request("GET", "nowhere.test", "/", &[("x-request-id", "refused-1")])
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-request-id")),
        (404, Some("refused-1"))
    );

    portico
        .wait_until("three access log lines", |p| async move {
            access_lines(p).len() >= 3
        })
        .await;
    let lines = access_lines(&portico);
    let line = lines
        .iter()
        .find(|l| l["request_id"] == "client-id-1")
        .expect("the first request's line");
    assert_eq!(line["method"], "GET");
    assert_eq!(
        (
            line["host"].as_str(),
            line["path"].as_str(),
            line["query"].as_str()
        ),
        (Some("shop.test"), Some("/api/x"), Some("q=1"))
    );
    assert_eq!(
        (line["status"].as_u64(), line["protocol"].as_str()),
        (Some(200), Some("HTTP/1.1"))
    );
    assert_eq!(
        (
            line["namespace"].as_str(),
            line["ingress"].as_str(),
            line["service"].as_str()
        ),
        (Some("default"), Some("shop"), Some("web"))
    );
    assert_eq!(line["upstream_addr"], servers[0].addr.to_string());
    assert!(line["upstream_duration"].as_f64().unwrap() <= line["duration"].as_f64().unwrap());
    assert_eq!(
        (line["client"].as_str(), line["user_agent"].as_str()),
        (Some("127.0.0.1"), Some("obs-test/1"))
    );
    assert_eq!(line["trace_id"], CLIENT_TRACE);
    assert!(
        line["bytes_out"].as_u64().unwrap() > 100 && line["time"].as_str().unwrap().ends_with('Z')
    );
    let refused = lines
        .iter()
        .find(|l| l["request_id"] == "refused-1")
        .expect("the refused request's line");
    assert_eq!(
        (
            refused["status"].as_u64(),
            refused["ingress"].as_str(),
            refused["upstream_addr"].is_null()
        ),
        (Some(404), Some(""), true)
    );

    // One span per request, in the client's trace where it had one.
    portico
        .wait_until("the spans reach the collector", |_| async {
            receiver.spans().len() >= 3
        })
        .await;
    let spans = receiver.spans();
    let span = spans
        .iter()
        .find(|s| s["traceId"] == CLIENT_TRACE)
        .expect("the client's trace");
    assert_eq!(
        (span["parentSpanId"].as_str(), span["spanId"].as_str()),
        (Some(CLIENT_SPAN), Some(portico_span.as_str()))
    );
    assert_eq!(
        (
            span["name"].as_str(),
            span["kind"].as_u64(),
            span["service"].as_str()
        ),
        (Some("GET /api"), Some(2), Some("portico-proxy"))
    );
    assert_eq!(
        attribute(span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attribute(span, "http.route").as_deref(), Some("/api"));
    assert_eq!(
        attribute(span, "portico.request_id").as_deref(),
        Some("client-id-1")
    );
    let started: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let ended: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(ended >= started);
    let started_here = spans
        .iter()
        .find(|s| s["traceId"] == new_trace.as_str())
        .expect("the trace Portico started");
    assert!(
        started_here.get("parentSpanId").is_none(),
        "a trace Portico starts has no parent"
    );
    // The exporter counts a batch once the collector has answered, which may be just
    // after the collector shows the spans.
    let mut exported = 0.0;
    for _ in 0..50 {
        let metrics = portico.admin_get("/metrics").await.unwrap().text();
        exported = value(&metrics, "portico_trace_spans_exported_total", &[]);
        if exported >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(exported >= 3.0, "{exported} spans counted as exported");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_access_logs_and_sampling_follow_their_flags() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("shop")
            .path("shop.test", "Prefix", "/", "web")
            .build(),
    );
    let args = [
        "--access-log-format",
        "text",
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--trace-sample-ratio",
        "0",
    ];
    let portico = Portico::start_with(&[("shop.yaml", to_yaml(&docs))], &args).await;

    portico
        .client
        .request("GET", "shop.test", "/unsampled", &[])
        .await
        .unwrap();
    portico
        .client
        .request(
            "GET",
            "shop.test",
            "/declined",
            &[("traceparent", &traceparent(false))],
        )
        .await
        .unwrap();
    let sent = [
        ("x-request-id", "text-1"),
        ("traceparent", &traceparent(true)),
        ("user-agent", "say \"hi\""),
    ];
    let r = portico
        .client
        .request("GET", "shop.test", "/a%22b?x=1", &sent)
        .await;
    assert_eq!(r.unwrap().status, 200);

    portico
        .wait_until("the text line is written", |p| async move {
            std::fs::read_to_string(p.log_path("proxy"))
                .unwrap_or_default()
                .contains(" text-1\n")
        })
        .await;
    let log = std::fs::read_to_string(portico.log_path("proxy")).unwrap();
    let line = log.lines().find(|l| l.ends_with(" text-1")).unwrap();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains(r#""GET /a%22b?x=1 HTTP/1.1" 200 "#) && line.contains("[default-shop-web]"),
        "{line}"
    );
    assert!(
        line.contains(r#" "-" "say \x22hi\x22" "#),
        "quotes from the client are escaped: {line}"
    );

    // With a ratio of 0 Portico starts no sampled trace, but a client's sampled one is followed.
    portico
        .wait_until("the sampled span arrives", |_| async {
            !receiver.spans().is_empty()
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // one more batch interval
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(attribute(&spans[0], "url.path").as_deref(), Some("/a%22b"));
}

/// `enable-access-log: "false"` keeps one Ingress's requests out of the access log; the
/// others are still written.
#[tokio::test(flavor = "multi_thread")]
async fn an_ingress_can_turn_its_access_log_off() {
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("quiet")
            .path("quiet.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/enable-access-log", "false")
            .build(),
    );
    docs.push(
        ingress("loud")
            .path("loud.test", "Prefix", "/", "web")
            .build(),
    );
    let portico = Portico::start(&[("all.yaml", to_yaml(&docs))]).await;
    for (host, id) in [("quiet.test", "quiet-1"), ("loud.test", "loud-1")] {
        let r = portico
            .client
            .request("GET", host, "/", &[("x-request-id", id)])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    // The log is written in order: once the later request's line is there, the
    // earlier one's would be too.
    portico
        .wait_until("the logged request's line", |p| async move {
            access_lines(p).iter().any(|l| l["request_id"] == "loud-1")
        })
        .await;
    assert!(
        !access_lines(&portico)
            .iter()
            .any(|l| l["request_id"] == "quiet-1"),
        "the quiet Ingress's request is not logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ingresses_turn_tracing_off_refuse_incoming_traces_and_name_their_spans() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (_servers, mut docs) = backends(&["web"]).await;
    docs.push(
        ingress("quiet")
            .path("quiet.test", "Prefix", "/", "web")
            .annotation("nginx.ingress.kubernetes.io/enable-opentelemetry", "false")
            .build(),
    );
    docs.push(
        ingress("edge")
            .path("edge.test", "Prefix", "/api", "web")
            .annotation(
                "nginx.ingress.kubernetes.io/opentelemetry-trust-incoming-span",
                "false",
            )
            .annotation(
                "nginx.ingress.kubernetes.io/opentelemetry-operation-name",
                "HTTP $request_method $service_name $location_path $uri",
            )
            .build(),
    );
    let portico = Portico::start_with(
        &[("shop.yaml", to_yaml(&docs))],
        &["--otlp-endpoint", &receiver.endpoint()],
    )
    .await;
    let sent = traceparent(true);
    let echo = |host: &'static str, path: &'static str| {
        let client = &portico.client;
        let sent = sent.clone();
        async move {
            let r = client
                .request("GET", host, path, &[("traceparent", &sent)])
                .await
                .unwrap();
            r.echo().expect("reached the backend").headers
        }
    };

    // Off: the client's trace context passes untouched, and no span is exported.
    let seen = echo("quiet.test", "/").await;
    assert_eq!(seen.get("traceparent"), Some(&sent));

    // Not trusted: a trace of Portico's own, whose span is named as the Ingress asks.
    let seen = echo("edge.test", "/api/orders").await;
    let upstream = &seen["traceparent"];
    assert!(!upstream.contains(CLIENT_TRACE), "{upstream}");
    let trace = upstream[3..35].to_string();
    portico
        .wait_until("the span reaches the collector", |_| async {
            !receiver.spans().is_empty()
        })
        .await;
    // Spans leave in order: one of the earlier, quiet request would be here by now.
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0]["traceId"].as_str(), Some(trace.as_str()));
    assert_eq!(spans[0]["parentSpanId"].as_str().unwrap_or(""), "");
    assert_eq!(spans[0]["name"], "HTTP GET web /api /api/orders");
}
