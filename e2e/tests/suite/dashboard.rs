//! The dashboard as an operator sees it: served by the proxy's admin listener, rendered
//! by headless Chromium (Debian's `chromium`), with live data and no console errors.

use portico_e2e::browser::Browser;
use portico_e2e::echo::backends;
use portico_e2e::harness::Portico;
use portico_e2e::manifests::{ingress, tls_secret, to_yaml};
use portico_e2e::tls::TestCa;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_routes_traffic_certificates_and_diagnostics_live() {
    let (_servers, mut docs) = backends(&["web"]).await;
    // A thousand routes: the page must stay quick with a cluster's worth of them.
    for site in 0..100 {
        let mut site_ingress = ingress(&format!("site-{site}"));
        for path in 0..10 {
            site_ingress = site_ingress.path(
                &format!("site-{site}.test"),
                "Prefix",
                &format!("/p{path}"),
                "web",
            );
        }
        docs.push(site_ingress.build());
    }
    let ca = TestCa::new("dashboard ca");
    let soon = ca.issue_valid(&["shop.test"], (-1, 10));
    docs.push(tls_secret("shop-tls", &soon.cert_pem, &soon.key_pem));
    docs.push(
        ingress("shop")
            .tls(&["shop.test"], "shop-tls")
            .path("shop.test", "Prefix", "/api", "web")
            .build(),
    );
    docs.push(
        ingress("broken")
            .path("broken.test", "Prefix", "/", "ghost")
            .build(),
    );
    // A TCP service, listed with its state.
    let redis_port = portico_e2e::harness::free_port();
    docs.push(portico_e2e::manifests::config_map(
        "tcp-services",
        &[(&redis_port.to_string(), "default/web:80")],
    ));
    let portico = Portico::start_full(
        &[("all.yaml", to_yaml(&docs))],
        &["--tcp-services-configmap=default/tcp-services"],
        &["--stream-bind", "127.0.0.1"],
    )
    .await;

    // Steady traffic, so that rates and latencies have something to show.
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let (client, running) = (portico.client.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let _ = client.get("shop.test", "/api/items").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut browser = Browser::launch(1400, 1000)
        .await
        .expect("headless chromium (apt package chromium)");
    browser
        .open(&format!("http://{}/", portico.admin))
        .await
        .unwrap();
    browser
        .wait_for(
            "document.body.innerText.includes('shop.test')",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let text = browser.text().await.unwrap();
    assert!(
        text.contains("site-99.test") && text.contains("/p9"),
        "every route is listed"
    );
    assert!(text.contains("default/shop"), "routes name their Ingress");
    assert!(
        text.contains("default/shop-tls") && text.contains("shop.test"),
        "certificates are listed:\n{text}"
    );
    assert!(
        text.contains("default/broken") && text.contains("ServiceNotFound"),
        "the controller's diagnostics are shown"
    );
    browser
        .wait_for(
            &format!("[...document.querySelectorAll('#streams tr')].some(r => r.cells[0].innerText === '{redis_port}/tcp' && r.cells[3].innerText === 'listening')"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    // Live numbers: the request rate of the busy host becomes a number.
    browser
        .wait_for(
            "[...document.querySelectorAll('#routes tr.host')].some(r => r.cells[0].innerText === 'shop.test' && /^[0-9.]+$/.test(r.cells[3].innerText) && Number(r.cells[3].innerText) > 0)",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let days = browser
        .eval("document.querySelector('#certificates td.days').className")
        .await
        .unwrap();
    assert!(
        days.as_str().unwrap().contains("warn"),
        "a certificate expiring within 30 days is highlighted: {days}"
    );

    // A route created now is on the page within 3 s.
    let created = Instant::now();
    portico.write(
        "fresh.yaml",
        &to_yaml(&[ingress("fresh")
            .path("fresh.test", "Prefix", "/new", "web")
            .build()]),
    );
    browser
        .wait_for(
            "document.body.innerText.includes('fresh.test')",
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    println!(
        "a new route appeared on the dashboard {:?} after its manifest was written",
        created.elapsed()
    );

    // The filter narrows a thousand routes down to one host.
    browser
        .eval("const f = document.getElementById('filter'); f.value = 'site-42.test'; f.dispatchEvent(new Event('input')); 0")
        .await
        .unwrap();
    let count = browser
        .eval("document.getElementById('route-count').innerText")
        .await
        .unwrap();
    assert_eq!(count.as_str(), Some("10 of 1003"));
    let render_ms = browser
        .eval("(() => { const t = performance.now(); render(); return performance.now() - t; })()")
        .await
        .unwrap();
    println!("rendering the page with 1 003 routes took {render_ms} ms");
    browser.eval("const g = document.getElementById('filter'); g.value = ''; g.dispatchEvent(new Event('input')); 0").await.unwrap();

    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    std::fs::write(&target, &png).unwrap();
    println!("screenshot: {}", target.display());
    if std::env::var_os("PORTICO_WRITE_DOCS").is_some() {
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img/dashboard.png"),
            &png,
        )
        .unwrap();
    }

    running.store(false, Ordering::Relaxed);
    load.await.unwrap();
    let errors = browser.errors().await.unwrap();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
}
