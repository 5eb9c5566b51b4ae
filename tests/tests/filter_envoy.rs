//! The filter inside a real Envoy: two revisions behind weighted clusters, a sink standing in
//! for the exporter. What the filter reports must equal what each backend served.

use std::time::Duration;

use plover_testkit::assert_latency_close;
use plover_testkit::backend::{
    stable_and_slower_failing_canary, Backend, Behaviour, CANARY_DELAY_MS, STABLE_DELAY_MS,
};
use plover_testkit::envoy::{plover_test_config, Envoy, GatewaySpec, Upstream, WasmFilter};
use plover_testkit::http::{load, LoadReport};
use plover_testkit::process::wait_until;
use plover_testkit::sink::{Received, Sink};
use plover_wire::{Role, StatusClass};

const TOKEN: &str = "e2e-token";
const TAG: &str = "x-plover-revision";

fn plover_config(extra: &str) -> String {
    plover_test_config(TOKEN, extra)
}

fn gateway(stable: &Backend, canary: &Backend, sink: &Sink, configuration: String) -> GatewaySpec {
    GatewaySpec {
        upstreams: vec![
            Upstream {
                cluster: "stable".into(),
                port: stable.port,
                weight: 80,
                tag: Some("stable/v1".into()),
            },
            Upstream {
                cluster: "canary".into(),
                port: canary.port,
                weight: 20,
                tag: Some("canary/v2".into()),
            },
        ],
        filter: Some(WasmFilter::plover(configuration)),
        exporter: Some(("plover_exporter".into(), sink.port)),
        concurrency: 2,
        ..GatewaySpec::default()
    }
}

/// Waits until the sink has accounted for every request the backends served.
async fn wait_for_sink(sink: &Sink, expected: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sink.received().total_requests() < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One more flush interval: anything beyond `expected` would be double counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// What the sink received is exactly what each backend served: per role and revision, and per
/// status class (the canary answers some requests with 503).
fn assert_counted_as_served(received: &Received, stable: &Backend, canary: &Backend) {
    assert_eq!(
        received.requests.get(&(Role::Stable, "v1".into())),
        Some(&stable.served()),
        "{received:?}"
    );
    assert_eq!(
        received.requests.get(&(Role::Canary, "v2".into())),
        Some(&canary.served()),
        "{received:?}"
    );
    assert_eq!(
        received.total_requests(),
        stable.served() + canary.served(),
        "no unknown and no double counting"
    );
    let canary_errors = canary.served_by_status().get(&503).copied().unwrap_or(0);
    assert!(canary_errors > 0);
    assert_eq!(
        received
            .by_class
            .get(&("v2".into(), StatusClass::ServerError)),
        Some(&canary_errors)
    );
    assert_eq!(
        received.by_class.get(&("v2".into(), StatusClass::Success)),
        Some(&(canary.served() - canary_errors))
    );
    assert_eq!(
        received.by_class.get(&("v1".into(), StatusClass::Success)),
        Some(&stable.served())
    );
}

/// The filter's latency quantiles lie between each backend's own and its clients' figures.
fn assert_latency_as_served(
    received: &Received,
    report: &LoadReport,
    backends: [&Backend; 2],
    quantiles: &[f64],
) {
    for (backend, delay_ms) in backends.into_iter().zip([STABLE_DELAY_MS, CANARY_DELAY_MS]) {
        let revision = backend.revision.as_str();
        for &q in quantiles {
            let measured = received.durations[revision].value_at_quantile(q).unwrap() as f64;
            assert_latency_close(
                revision,
                q,
                measured,
                &backend.handling(),
                &report.latency_by_revision[revision],
                delay_ms,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_statuses_latency_and_tags_match_what_each_backend_served() {
    let _serial = plover_testkit::exclusive().await;
    let awake = plover_testkit::latency::keep_cpus_awake();
    println!("{}", awake.state);
    let (stable, canary) = stable_and_slower_failing_canary(503).await;
    let sink = Sink::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(
        &gateway(&stable, &canary, &sink, plover_config("")),
        dir.path(),
    );

    // Moderate load (8 requests in flight, ~300 rps): latency must reflect the backends, not
    // queueing on this 2-core machine.
    let report = load(&envoy.url("/"), 10_000, 8, TAG).await;
    assert_eq!(report.failures(), 0, "client requests failed: {report:?}");
    let served = stable.served() + canary.served();
    assert_eq!(served, 10_000);
    wait_for_sink(&sink, served).await;
    let received = sink.received();

    assert_counted_as_served(&received, &stable, &canary);
    assert_eq!(received.rejected, 0);
    assert_eq!(received.dropped_requests, 0);
    assert!(
        received.instances.len() >= 2,
        "both Envoy workers report: {:?}",
        received.instances
    );

    assert_eq!(
        report.mismatched_tags, 0,
        "a response tag named a revision that did not serve it"
    );
    assert_eq!(report.by_tag.get("stable/v1"), Some(&stable.served()));
    assert_eq!(report.by_tag.get("canary/v2"), Some(&canary.served()));

    assert_latency_as_served(&received, &report, [&stable, &canary], &[0.5, 0.99]);
}

/// The same module loaded as an access logger (`envoy.access_loggers.wasm`, no per-stream
/// context): every request is counted under the revision that served it, with its status and
/// its latency, as the HTTP filter counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_as_an_access_logger_it_counts_the_same() {
    let _serial = plover_testkit::exclusive().await;
    let (stable, canary) = stable_and_slower_failing_canary(503).await;
    let sink = Sink::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = gateway(&stable, &canary, &sink, plover_config(""));
    spec.access_logger = spec.filter.take();
    let envoy = Envoy::start(&spec, dir.path());
    let report = load(&envoy.url("/"), 2_000, 4, TAG).await;
    assert_eq!(report.failures(), 0, "{report:?}");
    let served = stable.served() + canary.served();
    assert_eq!(served, 2_000);
    wait_for_sink(&sink, served).await;
    let received = sink.received();
    assert_counted_as_served(&received, &stable, &canary);
    assert_latency_as_served(&received, &report, [&stable, &canary], &[0.5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_outage_of_ten_seconds_loses_no_count_and_fails_no_request() {
    let _serial = plover_testkit::exclusive().await;
    let stable = Backend::start("v1", Behaviour::default()).await;
    let canary = Backend::start("v2", Behaviour::default()).await;
    let mut sink = Sink::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(
        &gateway(&stable, &canary, &sink, plover_config("")),
        dir.path(),
    );

    let before = load(&envoy.url("/"), 500, 4, TAG).await;
    sink.down();
    let mut during = Vec::new();
    for _ in 0..10 {
        during.push(load(&envoy.url("/"), 200, 4, TAG).await);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    sink.up().await;
    let after = load(&envoy.url("/"), 500, 4, TAG).await;

    for report in std::iter::once(&before)
        .chain(&during)
        .chain(std::iter::once(&after))
    {
        assert_eq!(
            report.by_status.get(&200),
            Some(&report.sent),
            "user traffic failed: {report:?}"
        );
    }
    let served = stable.served() + canary.served();
    assert_eq!(served, 3_000);
    wait_for_sink(&sink, served).await;
    let received = sink.received();
    assert_eq!(
        received.total_requests(),
        served,
        "counts lost or doubled across the outage: {received:?}"
    );
    assert_eq!(received.dropped_requests, 0);
    assert_eq!(received.requests_of("v1"), stable.served());
    assert_eq!(received.requests_of("v2"), canary.served());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_is_reported_and_traffic_still_flows() {
    let _serial = plover_testkit::exclusive().await;
    let stable = Backend::start("v1", Behaviour::default()).await;
    let canary = Backend::start("v2", Behaviour::default()).await;
    let sink = Sink::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let broken = plover_config("").replace(TOKEN, "");
    let envoy = Envoy::start(&gateway(&stable, &canary, &sink, broken), dir.path());

    let report = load(&envoy.url("/"), 300, 4, TAG).await;
    assert_eq!(report.by_status.get(&200), Some(&300), "{report:?}");
    wait_until(
        "the filter to log its configuration error",
        Duration::from_secs(5),
        || envoy.log().contains("exporter.token"),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sink.received().batches,
        0,
        "an unconfigured filter must not send batches"
    );
    drop(envoy);

    // The counting module has no header hooks: asked to tag, it says which module can, and
    // stays out of the way.
    let tagging = plover_config(&format!(
        r#", "tagging": {{"request_header": "{TAG}", "response_header": "{TAG}"}}"#
    ));
    let envoy = Envoy::start(&gateway(&stable, &canary, &sink, tagging), dir.path());
    let report = load(&envoy.url("/"), 100, 4, TAG).await;
    assert_eq!(report.by_status.get(&200), Some(&100), "{report:?}");
    wait_until(
        "the filter to say which module tags",
        Duration::from_secs(5),
        || envoy.log().contains("plover_filter_tagging.wasm"),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.received().batches, 0);
}

/// For routes Plover does not manage, the tagging module writes the tags itself: on the request
/// upstream and the response downstream, replacing what the client sent, and counts exactly as
/// the counting module does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tagging_module_tags_routes_that_carry_no_tags() {
    let _serial = plover_testkit::exclusive().await;
    let stable = Backend::start("v1", Behaviour::default()).await;
    let canary = Backend::start("v2", Behaviour::default()).await;
    let sink = Sink::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = gateway(
        &stable,
        &canary,
        &sink,
        plover_config(&format!(
            r#", "tagging": {{"request_header": "{TAG}", "response_header": "{TAG}"}}"#
        )),
    );
    for upstream in &mut spec.upstreams {
        upstream.tag = None;
    }
    if let Some(filter) = spec.filter.as_mut() {
        filter.module = plover_testkit::tools::filter_tagging_wasm();
    }
    let envoy = Envoy::start(&spec, dir.path());
    let report = load(&envoy.url("/"), 1_000, 4, TAG).await;
    assert_eq!(report.by_status.get(&200), Some(&1_000), "{report:?}");
    assert_eq!(report.mismatched_tags, 0, "{report:?}");
    assert_eq!(report.by_tag.get("stable/v1"), Some(&stable.served()));
    assert_eq!(report.by_tag.get("canary/v2"), Some(&canary.served()));
    wait_for_sink(&sink, 1_000).await;
    let received = sink.received();
    assert_eq!(received.total_requests(), 1_000, "{received:?}");
    assert_eq!(received.requests_of("v1"), stable.served());
    assert_eq!(received.requests_of("v2"), canary.served());
}

/// Replacing the plugin (a new configuration, as when an Istio `WasmPlugin` changes) shuts the
/// old plugin's root contexts down; each sends what it counted since its last flush before it
/// goes, so no count is lost with it. (When the Envoy process itself exits, Envoy runs no
/// callouts: the last interval of each worker, up to `flush_interval_ms`, is lost then.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_plugin_sends_the_old_plugins_last_interval() {
    let _serial = plover_testkit::exclusive().await;
    let stable = Backend::start("v1", Behaviour::default()).await;
    let canary = Backend::start("v2", Behaviour::default()).await;
    let sink = Sink::start(TOKEN).await;
    let dir = tempfile::tempdir().unwrap();
    // A flush interval far longer than the test: only the shutdown can deliver the counts.
    let slow_flush = |gateway: &str| {
        plover_test_config(TOKEN, r#", "flush_interval_ms": 60000"#).replace("e2e-gateway", gateway)
    };
    let spec = gateway(&stable, &canary, &sink, slow_flush("e2e-gateway"));
    let (envoy, filter_file) = Envoy::start_with_filter_file(&spec, dir.path());
    let report = load(&envoy.url("/"), 300, 4, TAG).await;
    assert_eq!(report.by_status.get(&200), Some(&300), "{report:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.received().total_requests(),
        0,
        "no flush before the replacement"
    );

    filter_file.write(&WasmFilter::plover(slow_flush("e2e-gateway-2")), 2);
    wait_until(
        "the old plugin's counts to arrive",
        Duration::from_secs(30),
        || sink.received().total_requests() >= 300,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = sink.received();
    assert_eq!(received.total_requests(), 300, "{received:?}");
    assert_eq!(received.requests_of("v1"), stable.served());
    assert_eq!(received.requests_of("v2"), canary.served());
    // Traffic goes on through the new plugin.
    let after = load(&envoy.url("/"), 100, 4, TAG).await;
    assert_eq!(after.by_status.get(&200), Some(&100), "{after:?}");
}
