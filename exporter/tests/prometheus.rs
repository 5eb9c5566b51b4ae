//! A real Prometheus scrapes the exporter, and an Argo-AnalysisTemplate-style success-ratio
//! query over what it stored returns exactly the ratio of the traffic sent.
//!
//! Needs the `prometheus` binary (Debian package `prometheus`, on the PATH). Without it this
//! test fails rather than skips: it is the proof that the exposition is something Prometheus
//! really ingests.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{batch, send, series, Exporter};
use http_body_util::Full;
use hyper::Request;
use plover_testkit::prometheus::{scrape_config, Prometheus};
use plover_wire::{Role, SeriesKey};

async fn get(port: u16, path: &str) -> common::Reply {
    let request = Request::get(path)
        .header("host", "prometheus")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(format!("127.0.0.1:{port}").parse().unwrap(), request).await
}

/// Runs an instant query; the single sample's value, if there is one.
async fn query(port: u16, promql: &str) -> Option<f64> {
    let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
    let reply = get(port, &format!("/api/v1/query?query={encoded}")).await;
    assert_eq!(reply.status, 200, "{promql}: {}", reply.body);
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(json["status"], "success", "{}", reply.body);
    let result = json["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{promql}: {}", reply.body);
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Polls until `promql` returns a value that satisfies `done`, or fails after `timeout`.
async fn wait_for(port: u16, promql: &str, timeout: Duration, done: impl Fn(f64) -> bool) -> f64 {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        last = query(port, promql).await;
        if last.is_some_and(&done) {
            return last.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{promql}: last value {last:?} after {timeout:?}");
}

/// A Prometheus (with `flags`) scraping `exporter`. Starting blocks until it is ready; the
/// exporter keeps serving on the other worker.
fn scraping(exporter: &Exporter, dir: &std::path::Path, flags: &[&str]) -> Prometheus {
    tokio::task::block_in_place(|| {
        Prometheus::start(
            dir,
            &scrape_config("plover", &[exporter.addr.to_string()]),
            &dir.join("data"),
            flags,
        )
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_computes_the_exact_canary_success_ratio() {
    let exporter = Exporter::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = scraping(&exporter, dir.path(), &[]);
    let port = prometheus.address.port();

    // Known traffic: canary 950 × 2xx + 50 × 5xx, stable 1000 × 2xx, from two gateways' VMs
    // over a few batches (one retransmitted, which must not count twice).
    let batches = [
        batch(
            "vm-a",
            1,
            2000,
            vec![
                series("v2", Role::Canary, 200, 500, 20_000),
                series("v1", Role::Stable, 200, 600, 15_000),
            ],
        ),
        batch(
            "vm-b",
            1,
            2000,
            vec![
                series("v2", Role::Canary, 200, 450, 20_000),
                series("v2", Role::Canary, 500, 30, 100_000),
            ],
        ),
        batch(
            "vm-a",
            2,
            1500,
            vec![
                series("v2", Role::Canary, 503, 20, 100_000),
                series("v1", Role::Stable, 200, 400, 15_000),
            ],
        ),
    ];
    for b in &batches {
        assert_eq!(exporter.post_batch(b.encode()).await.status, 200);
    }
    assert_eq!(
        exporter.post_batch(batches[2].encode()).await.body,
        "duplicate\n"
    );

    // Wait until Prometheus has scraped the exporter.
    wait_for(port, r#"up{job="plover"}"#, Duration::from_secs(60), |v| {
        v == 1.0
    })
    .await;

    // What an Argo Rollouts AnalysisTemplate (Prometheus provider) would ask.
    let success_ratio = r#"sum(plover_requests_total{service="app",role="canary",status_class!~"5xx|no_response"}) / sum(plover_requests_total{service="app",role="canary"})"#;
    let ratio = wait_for(port, success_ratio, Duration::from_secs(30), |_| true).await;
    assert_eq!(ratio, 0.95, "{success_ratio}");
    let stable = r#"sum(plover_requests_total{service="app",role="stable",status_class!~"5xx|no_response"}) / sum(plover_requests_total{service="app",role="stable"})"#;
    assert_eq!(query(port, stable).await, Some(1.0));
    assert_eq!(
        query(port, r#"sum(plover_requests_total{service="app"})"#).await,
        Some(2000.0)
    );

    // The exporter's own precise window gauges, as stored by Prometheus.
    let windowed = wait_for(
        port,
        r#"plover_success_ratio{service="app",role="canary",window="1m"}"#,
        Duration::from_secs(10),
        |_| true,
    )
    .await;
    assert_eq!(windowed, 0.95);
    let share = query(
        port,
        r#"plover_traffic_share{service="app",role="canary",window="1m"}"#,
    )
    .await;
    assert_eq!(share, Some(0.5));
    let p99 = query(
        port,
        r#"plover_request_duration_window_seconds{service="app",role="canary",window="1m",quantile="0.99"}"#,
    )
    .await
    .unwrap();
    assert!((p99 - 0.1).abs() / 0.1 < 0.01, "p99 {p99}");
    // And the classic histogram works with histogram_quantile.
    let p50 = query(
        port,
        r#"histogram_quantile(0.5, sum by (le) (plover_request_duration_seconds_bucket{service="app",role="canary"}))"#,
    )
    .await
    .unwrap();
    assert!((0.01..=0.025).contains(&p50), "p50 {p50}");

    exporter.stop().await;
}

/// With `--native-histograms only`, a Prometheus with native histograms enabled scrapes the
/// protobuf exposition and stores the duration histogram as one native histogram per route
/// (no `_bucket` series); counts are exact and quantiles fall in the right bucket. Scrapers
/// asking for text still get the classic buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_ingests_native_histograms_from_the_protobuf_exposition() {
    let exporter = Exporter::start(&["--native-histograms", "only"]).await;
    let dir = tempfile::tempdir().unwrap();
    let prometheus = scraping(
        &exporter,
        dir.path(),
        &["--enable-feature=native-histograms"],
    );
    let port = prometheus.address.port();

    // Canary: 900 requests at 20 ms and 100 at 300 ms; stable: 1000 at 15 ms.
    let traffic = batch(
        "vm-a",
        1,
        2000,
        vec![
            series("v2", Role::Canary, 200, 900, 20_000),
            series("v2", Role::Canary, 500, 100, 300_000),
            series("v1", Role::Stable, 200, 1000, 15_000),
        ],
    );
    assert_eq!(exporter.post_batch(traffic.encode()).await.status, 200);
    // Enough routes of another service that the protobuf exposition is sent in several parts
    // (each family then spans several messages).
    let routes = plover_exporter::exposition::ROUTES_PER_PART + 100;
    let bulk = (0..routes)
        .map(|i| {
            let (_, delta) = series("v1", Role::Stable, 200, 1, 5_000);
            let key =
                SeriesKey::answered("demo", "bulk", &format!("r{i}"), "v1", Role::Stable, 200);
            (key, delta)
        })
        .collect();
    assert_eq!(
        exporter
            .post_batch(batch("vm-b", 1, 2000, bulk).encode())
            .await
            .status,
        200
    );

    // What each kind of scraper is served.
    let protobuf_accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,text/plain;version=0.0.4;q=0.5";
    let reply = common::send(
        exporter.addr,
        Request::get("/metrics")
            .header("host", "test")
            .header("accept", protobuf_accept)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.content_type,
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
    );
    let text = exporter
        .metric_lines("plover_request_duration_seconds_bucket")
        .await;
    assert_eq!(text.len(), (2 + routes) * 12, "classic buckets in the text");

    wait_for(port, r#"up{job="plover"}"#, Duration::from_secs(60), |v| {
        v == 1.0
    })
    .await;
    let canary = r#"plover_request_duration_seconds{service="app",role="canary"}"#;
    let count = wait_for(
        port,
        &format!("histogram_count({canary})"),
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    assert_eq!(count, 1000.0);
    let sum = query(port, &format!("histogram_sum({canary})"))
        .await
        .unwrap();
    let exact = 900.0 * 0.02 + 100.0 * 0.3;
    assert!((sum - exact).abs() / exact < 0.004, "sum {sum}");
    // Schema 3: 20 ms is in (2^(-46/8), 2^(-45/8)], 300 ms in (2^(-14/8), 2^(-13/8)].
    let bucket = |index: i32| (f64::from(index - 1) / 8.0).exp2()..=(f64::from(index) / 8.0).exp2();
    let p50 = query(port, &format!("histogram_quantile(0.5, {canary})"))
        .await
        .unwrap();
    assert!(bucket(-45).contains(&p50), "p50 {p50}");
    let p95 = query(port, &format!("histogram_quantile(0.95, {canary})"))
        .await
        .unwrap();
    assert!(bucket(-13).contains(&p95), "p95 {p95}");
    let stable = r#"plover_request_duration_seconds{service="app",role="stable"}"#;
    assert_eq!(
        query(port, &format!("histogram_count({stable})")).await,
        Some(1000.0)
    );
    // Native only: no classic bucket series were stored, and the counters are exact as ever.
    assert_eq!(
        query(port, "count(plover_request_duration_seconds_bucket)").await,
        None
    );
    assert_eq!(
        query(port, r#"sum(plover_requests_total{service="app"})"#).await,
        Some(2000.0)
    );

    // Every part was read: each bulk route's series and histogram.
    assert_eq!(
        query(port, r#"count(plover_requests_total{service="bulk"})"#).await,
        Some(routes as f64)
    );
    assert_eq!(
        query(
            port,
            r#"sum(histogram_count(plover_request_duration_seconds{service="bulk"}))"#
        )
        .await,
        Some(routes as f64)
    );

    exporter.stop().await;
}
