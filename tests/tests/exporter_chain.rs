//! The full data path: real Envoy + filter → real exporter → `/v1/stats` and `/metrics`.
//! The exporter's windowed answer must count exactly the requests each backend served, and
//! its quantiles must match the backends' delays.

use std::time::Duration;

use plover_testkit::backend::{stable_and_slower_failing_canary, CANARY_DELAY_MS, STABLE_DELAY_MS};
use plover_testkit::envoy::{Envoy, GatewaySpec};
use plover_testkit::http::{client, get, load};
use plover_testkit::{assert_latency_close, exclusive};
use plover_wire::stats::StatsResponse;

const TOKEN: &str = "chain-token";

async fn stats(port: u16, window: &str) -> StatsResponse {
    let url =
        format!("http://127.0.0.1:{port}/v1/stats?namespace=demo&service=app&window={window}");
    let (status, _, body) = get(&client(), &url, "").await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_every_request_per_revision_and_match_the_backends_latency() {
    let _serial = exclusive().await;
    let awake = plover_testkit::latency::keep_cpus_awake();
    println!("{}", awake.state);
    let (stable, canary) = stable_and_slower_failing_canary(500).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let exporter_port = listener.local_addr().unwrap().port();
    let config =
        plover_exporter::Config::parse_from(["plover-exporter", "--token", TOKEN]).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let exporter = tokio::spawn(plover_exporter::run(config, listener, async {
        let _ = stopped.await;
    }));

    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(
        &GatewaySpec::plover_seventy_thirty(stable.port, canary.port, TOKEN, exporter_port),
        dir.path(),
    );

    let report = load(&envoy.url("/"), 4_000, 8, "x-plover-revision").await;
    assert_eq!(report.failures(), 0, "{report:?}");
    let served = stable.served() + canary.served();
    assert_eq!(served, 4_000);

    // Every request is in the exporter within a few flushes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut answer = stats(exporter_port, "5m").await;
    while answer.revisions.iter().map(|r| r.requests).sum::<u64>() < served
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        answer = stats(exporter_port, "5m").await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = stats(exporter_port, "5m").await;

    let v1 = answer
        .revisions
        .iter()
        .find(|r| r.revision == "v1")
        .expect("stable in /v1/stats");
    let v2 = answer
        .revisions
        .iter()
        .find(|r| r.revision == "v2")
        .expect("canary in /v1/stats");
    assert_eq!(answer.revisions.len(), 2, "no unknown traffic: {answer:?}");
    assert_eq!((v1.role.as_str(), v2.role.as_str()), ("stable", "canary"));
    assert_eq!(v1.requests, stable.served());
    assert_eq!(v2.requests, canary.served());
    let canary_errors = canary.served_by_status()[&500];
    assert_eq!((v1.errors, v2.errors), (0, canary_errors));
    assert_eq!(
        v2.success_ratio,
        Some(1.0 - canary_errors as f64 / canary.served() as f64)
    );
    assert_eq!(v1.traffic_share, stable.served() as f64 / served as f64);
    assert_eq!(v2.latency_samples, canary.served());

    for (backend, entry, delay_ms) in [
        (&stable, v1, STABLE_DELAY_MS),
        (&canary, v2, CANARY_DELAY_MS),
    ] {
        let client_seen = &report.latency_by_revision[&backend.revision];
        for (q, value) in [
            (0.5, entry.latency_seconds.p50),
            (0.99, entry.latency_seconds.p99),
        ] {
            let measured = value.expect("quantile with samples") * 1e6;
            assert_latency_close(
                &backend.revision,
                q,
                measured,
                &backend.handling(),
                client_seen,
                delay_ms,
            );
        }
    }

    // The same counts reach Prometheus' exposition.
    let (status, _, metrics) = get(
        &client(),
        &format!("http://127.0.0.1:{exporter_port}/metrics"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let total_in_metrics: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("plover_requests_total{") && l.contains("service=\"app\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total_in_metrics, served as f64, "{metrics}");

    let _ = stop.send(());
    exporter.await.unwrap().unwrap();
}

/// The exporter's figure for one of its own counters in `/metrics`.
async fn exporter_counter(port: u16, name: &str) -> u64 {
    let (status, _, metrics) =
        get(&client(), &format!("http://127.0.0.1:{port}/metrics"), "").await;
    assert_eq!(status, 200);
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics: {metrics}")) as u64
}

/// Issue 17, item 2: an exporter that hangs past the filter's callout timeout and then resumes
/// applies the batches Envoy gave up on. The filter must not also count them as dropped: what
/// the exporter counts plus what the filters report dropped is exactly what was served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_that_hangs_and_resumes_loses_exactly_what_is_reported_dropped() {
    let _serial = exclusive().await;
    let (stable, canary) = stable_and_slower_failing_canary(500).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter_port = plover_testkit::free_port();
    let mut command =
        std::process::Command::new(plover_testkit::tools::workspace_binary("plover-exporter"));
    command.args([
        "--listen",
        &format!("127.0.0.1:{exporter_port}"),
        "--token",
        TOKEN,
    ]);
    let exporter = plover_testkit::process::ChildGuard::spawn(
        "plover-exporter",
        command,
        &dir.path().join("exporter.log"),
    );
    plover_testkit::process::wait_until("the exporter listens", Duration::from_secs(20), || {
        plover_testkit::process::port_open(exporter_port)
    });
    // Short callouts and a two-batch buffer: a hang of a few seconds times calls out and
    // overflows the buffer.
    let config = plover_testkit::envoy::plover_test_config(TOKEN, "")
        .replacen(
            r#""token": "chain-token"}"#,
            r#""token": "chain-token", "timeout_ms": 300}"#,
            1,
        )
        .replacen(
            r#""gateway_id": "e2e-gateway","#,
            r#""gateway_id": "e2e-gateway", "flush_interval_ms": 200, "buffer": {"max_batches": 2},"#,
            1,
        );
    assert!(
        config.contains("timeout_ms") && config.contains("max_batches"),
        "{config}"
    );
    let mut spec =
        GatewaySpec::plover_seventy_thirty(stable.port, canary.port, TOKEN, exporter_port);
    spec.filter = Some(plover_testkit::envoy::WasmFilter::plover(config));
    let envoy = Envoy::start(&spec, dir.path());

    // Steady traffic for about 10 s; the exporter is stopped (SIGSTOP) from 2 s to 7 s.
    let pid = exporter.pid().to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} {pid}");
    };
    let url = envoy.url("/");
    let traffic = tokio::spawn(async move {
        let mut failures = 0;
        for _ in 0..50 {
            failures += load(&url, 40, 2, "x-plover-revision").await.failures();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        failures
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal("-CONT");
    assert_eq!(traffic.await.unwrap(), 0);
    let served = stable.served() + canary.served();
    assert_eq!(served, 2_000);

    // Settled: counted + dropped stops changing.
    let figures = || async {
        let counted: u64 = stats(exporter_port, "5m")
            .await
            .revisions
            .iter()
            .map(|r| r.requests)
            .sum();
        let dropped = exporter_counter(
            exporter_port,
            "plover_exporter_filter_dropped_requests_total",
        )
        .await;
        (counted, dropped)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = figures().await;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = figures().await;
        if (now == last && now.0 + now.1 >= served) || tokio::time::Instant::now() > deadline {
            last = now;
            break;
        }
        last = now;
    }
    let (counted, dropped) = last;
    println!("served {served}, counted {counted}, reported dropped {dropped}");
    // The hang must have cost something, or this test could not fail.
    assert!(
        dropped > 0,
        "nothing was dropped: the hang did not overflow the buffer"
    );
    assert_eq!(
        counted + dropped,
        served,
        "counted {counted} + reported dropped {dropped} must be the {served} served: lost requests are reported once, stored ones never"
    );
    drop(envoy);
}
