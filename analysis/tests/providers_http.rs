//! The web and plover providers against tiny HTTP servers on loopback, through the library
//! (`provider::measure`); `controller/tests/analyze_http.rs` runs the same through `plover
//! analyze`.

use std::{sync::Arc, time::SystemTime};

use plover_analysis::{
    phase::Phase,
    provider::{measure, Providers, Settings},
    template::{self, ArgInputs, MetricSpec},
};
use plover_testkit::scripted::{serve, serve_https, steady_exporter, Seen, TestCa, REVIEWS_STATS};

fn metric(yaml_metric: &str) -> MetricSpec {
    let yaml = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: t}}\nspec:\n  metrics:\n{}",
        yaml_metric.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let spec = template::flatten(&template::load(&yaml).unwrap()).unwrap();
    template::resolve(&spec, &ArgInputs::default())
        .unwrap()
        .metrics
        .remove(0)
}

fn providers(exporter: Option<String>) -> Providers {
    Providers::new(Settings {
        exporter,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn web_get_with_json_path_and_headers() {
    let (url, seen) = serve(Arc::new(|_| {
        (
            200,
            "application/json",
            r#"{"data": {"ok": true, "rate": 0.97}}"#.to_owned(),
        )
    }))
    .await;
    let m = metric(&format!(
        "- name: web\n  successCondition: result >= 0.95\n  provider:\n    web:\n      url: {url}/api/health?x=1\n      jsonPath: '{{$.data.rate}}'\n      headers: [{{key: Authorization, value: Bearer t}}]\n"
    ));
    let out = measure(&providers(None), &m, &SystemTime::now).await;
    assert_eq!(out.phase, Phase::Successful, "{out:?}");
    assert_eq!(out.value, "0.97");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, "/api/health?x=1");
    assert!(seen[0]
        .headers
        .contains(&("authorization".into(), "Bearer t".into())));
}

#[tokio::test]
async fn web_post_json_body_and_failures() {
    let (url, seen) = serve(Arc::new(|req: &Seen| match req.target.as_str() {
        "/down" => (503, "text/plain", "unavailable".to_owned()),
        "/text" => (200, "text/plain", "OK".to_owned()),
        _ => (200, "application/json", r#"{"errors": 12}"#.to_owned()),
    }))
    .await;
    let p = providers(None);
    let post = metric(&format!(
        "- name: web\n  failureCondition: result.errors > 10\n  provider:\n    web:\n      method: POST\n      url: {url}/query\n      jsonBody: {{service: reviews, window: 5m}}\n"
    ));
    let out = measure(&p, &post, &SystemTime::now).await;
    assert_eq!(out.phase, Phase::Failed, "{out:?}");
    assert_eq!(out.value, r#"{"errors":12}"#);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].method, "POST");
        assert!(seen[0]
            .headers
            .contains(&("content-type".into(), "application/json".into())));
        let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"service": "reviews", "window": "5m"})
        );
    }
    let down = metric(&format!(
        "- name: web\n  provider:\n    web:\n      url: {url}/down\n"
    ));
    let out = measure(&p, &down, &SystemTime::now).await;
    assert_eq!(out.phase, Phase::Error);
    assert_eq!(
        out.message.as_deref(),
        Some("received non 2xx response code: 503")
    );
    let text = metric(&format!("- name: web\n  successCondition: result == 'OK'\n  provider:\n    web:\n      url: {url}/text\n"));
    assert_eq!(
        measure(&p, &text, &SystemTime::now).await.phase,
        Phase::Successful
    );
    let get_with_body = metric(&format!(
        "- name: web\n  provider:\n    web:\n      url: {url}/x\n      body: hi\n"
    ));
    let out = measure(&p, &get_with_body, &SystemTime::now).await;
    assert_eq!(
        out.message.as_deref(),
        Some("Body/JSONBody can only be used with POST or PUT WebMetric Method types")
    );
}

#[tokio::test]
async fn plover_provider_reads_v1_stats() {
    let (url, seen) = serve(Arc::new(|req: &Seen| {
        if req.target.starts_with("/v1/stats?") && req.target.contains("service=reviews") {
            (200, "application/json", REVIEWS_STATS.to_owned())
        } else if req.target.contains("service=quiet") {
            (200, "application/json", r#"{"namespace":"bookinfo","service":"quiet","window_seconds":30,"as_of_unix_ms":1,"revisions":[]}"#.to_owned())
        } else {
            (404, "text/plain", "no such service".to_owned())
        }
    }))
    .await;
    let p = providers(Some(url.clone()));
    let success = metric("- name: s\n  successCondition: result >= 0.99\n  provider:\n    plover: {namespace: bookinfo, service: reviews, metric: successRate}\n");
    let out = measure(&p, &success, &SystemTime::now).await;
    assert_eq!(
        (out.phase, out.value.as_str()),
        (Phase::Failed, "0.97"),
        "{out:?}"
    );
    assert_eq!(
        seen.lock().unwrap()[0].target,
        "/v1/stats?namespace=bookinfo&service=reviews&window=30s"
    );
    let latency = metric("- name: l\n  successCondition: result < 0.2\n  provider:\n    plover: {namespace: bookinfo, service: reviews, metric: latency, quantile: p99, revision: stable, window: 5m}\n");
    let out = measure(&p, &latency, &SystemTime::now).await;
    assert_eq!(
        (out.phase, out.value.as_str()),
        (Phase::Successful, "0.05"),
        "{out:?}"
    );
    // The minimum-sample gate: 100 canary requests < 500 ⇒ Inconclusive, conditions untouched.
    let gated = metric("- name: g\n  successCondition: result >= 0.5\n  provider:\n    plover: {namespace: bookinfo, service: reviews, metric: successRate, minRequests: 500}\n");
    let out = measure(&p, &gated, &SystemTime::now).await;
    assert_eq!(out.phase, Phase::Inconclusive);
    assert!(out.message.unwrap().contains(
        "100 requests to revision \"canary\" in the last 30s, fewer than minRequests (500)"
    ));
    // No traffic at all, noData: Failed.
    let quiet = metric("- name: q\n  successCondition: result >= 0.5\n  provider:\n    plover: {namespace: bookinfo, service: quiet, metric: successRate, noData: Failed}\n");
    assert_eq!(
        measure(&p, &quiet, &SystemTime::now).await.phase,
        Phase::Failed
    );
    // A null quantile is no data too, not an error.
    let p999 = metric("- name: p\n  successCondition: result < 1\n  provider:\n    plover: {namespace: bookinfo, service: reviews, metric: latency, quantile: p999}\n");
    assert_eq!(
        measure(&p, &p999, &SystemTime::now).await.phase,
        Phase::Inconclusive
    );
    let missing = metric("- name: m\n  provider:\n    plover: {namespace: bookinfo, service: nope, metric: requests}\n");
    let out = measure(&p, &missing, &SystemTime::now).await;
    assert_eq!(out.phase, Phase::Error);
    assert!(out
        .message
        .unwrap()
        .contains("exporter returned HTTP status 404"));
}

/// `plover analyze` end to end on a Plover-provider template (inline in a Plover resource),
/// text output and exit status.
/// Measures `metric` once a second until `limit` looks or a Failed/Successful one; returns the
/// phases and the last measurement.
async fn looks(
    p: &Providers,
    m: &MetricSpec,
    limit: usize,
) -> (Vec<Phase>, plover_analysis::run::Measurement, u64) {
    let mut phases = Vec::new();
    let mut first_as_of = 0;
    loop {
        let out = measure(p, m, &SystemTime::now).await;
        phases.push(out.phase);
        if first_as_of == 0 {
            let v: serde_json::Value = serde_json::from_str(&out.value).unwrap_or_default();
            first_as_of = v["asOfUnixMs"].as_u64().unwrap_or_default();
        }
        if phases.len() >= limit
            || matches!(out.phase, Phase::Failed | Phase::Successful | Phase::Error)
        {
            return (phases, out, first_as_of);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    }
}

/// The sequential comparison across measurements: a canary with twice stable's error ratio
/// fails within a few looks; an equal one never fails. Every second is counted exactly once.
#[tokio::test]
async fn plover_error_ratio_vs_stable_across_looks() {
    let (bad_url, bad_seen) = serve(steady_exporter((600, 12), (5400, 54))).await;
    let (equal_url, _) = serve(steady_exporter((600, 6), (5400, 54))).await;
    let yaml = "- name: errors-vs-stable\n  interval: 1s\n  count: 20\n  inconclusiveLimit: 19\n  consecutiveSuccessLimit: 1\n  provider:\n    plover: {namespace: bookinfo, service: reviews, metric: errorRatioVsStable, window: 1s}\n";
    let m = metric(yaml);
    let (bad, equal) = (providers(Some(bad_url)), providers(Some(equal_url)));
    let ((bad_phases, last, first_as_of), (equal_phases, equal_last, _)) =
        tokio::join!(looks(&bad, &m, 12), looks(&equal, &m, 12));
    assert_eq!(
        bad_phases.last(),
        Some(&Phase::Failed),
        "{bad_phases:?} {last:?}"
    );
    assert!(
        bad_phases.len() >= 2,
        "needs more than one look: {bad_phases:?}"
    );
    let message = last.message.clone().unwrap();
    assert!(
        message.starts_with("error ratio: canary is worse than stable (canary "),
        "{message}"
    );
    let v: serde_json::Value = serde_json::from_str(&last.value).unwrap();
    assert_eq!(v["decision"], "Fail");
    assert!(v["failLogEvidence"].as_f64().unwrap() >= v["logBoundary"].as_f64().unwrap());
    assert!(
        (v["oddsRatio"].as_f64().unwrap() - 2.02).abs() < 0.05,
        "{v}"
    );
    // Contiguous: every second from the first look's window to the last as_of, once.
    let first: u64 = {
        let seen = bad_seen.lock().unwrap();
        assert!(
            seen[0].target.ends_with("window=1s"),
            "{:?}",
            seen[0].target
        );
        seen.len() as u64
    };
    assert!(first >= bad_phases.len() as u64);
    let requests = v["canaryRequests"].as_u64().unwrap();
    let skipped = v["skippedSeconds"].as_f64().unwrap() as u64;
    // The first look judged the second before its as_of; the rest up to the last as_of.
    let span = (v["asOfUnixMs"].as_u64().unwrap() - first_as_of) / 1000 + 1;
    assert_eq!(requests, 600 * (span - skipped), "{v}");
    assert!(span >= bad_phases.len() as u64, "{v}");
    assert_eq!(
        v["stableRequests"].as_u64().unwrap(),
        (requests / 600) * 5400
    );
    assert!(
        !equal_phases.contains(&Phase::Failed),
        "{equal_phases:?} {equal_last:?}"
    );
    assert!(
        matches!(equal_last.phase, Phase::Successful | Phase::Inconclusive),
        "{equal_last:?}"
    );
    // A fresh run (Providers::for_run) starts a fresh test: its first look is a first look.
    let out = measure(&bad.for_run(), &m, &SystemTime::now).await;
    assert!(out.message.unwrap().contains("first look: the last 1s"));
}

/// Template errors of the comparative metrics name the field.
#[test]
fn plover_vs_stable_fields_are_validated() {
    let err = |provider: &str, extra: &str| {
        let yaml = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: t}}\nspec:\n  metrics:\n  - name: m\n{extra}    provider: {{plover: {{namespace: ns, service: svc, {provider}}}}}\n"
        );
        let spec = template::flatten(&template::load(&yaml).unwrap()).unwrap();
        template::resolve(&spec, &ArgInputs::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        err(
            "metric: errorRatioVsStable, alpha: 0.01, tolerance: 1.2, minEffect: '3'",
            ""
        ),
        ""
    );
    assert!(err("metric: errorRatioVsStable, alpha: 0.7", "")
        .contains("provider.plover.alpha: must be in (0, 0.5), got 0.7"));
    assert!(
        err("metric: errorRatioVsStable, tolerance: 0.5", "").contains("provider.plover.tolerance")
    );
    assert!(err("metric: latencyVsStable, minEffect: 1", "").contains(
        "provider.plover.minEffect: must be a finite odds ratio above tolerance (1), got 1"
    ));
    assert!(err("metric: latencyVsStable, quantile: max", "").contains("provider.plover.quantile"));
    assert!(
        err("metric: latencyDistributionVsStable, quantile: p99", "")
            .contains("provider.plover.quantile: only latencyVsStable")
    );
    assert!(err("metric: errorRatioVsStable, revision: stable", "")
        .contains("provider.plover.revision"));
    assert!(err("metric: successRate, alpha: 0.01", "")
        .contains("provider.plover.alpha: only the errorRatioVsStable"));
    assert!(err("metric: errorRatioVsStable", "    successCondition: result > 1\n")
        .contains("successCondition: provider.plover metric errorRatioVsStable decides each measurement itself"));
}

/// https with a CA of the test's own: trusted through `ca_files`, refused without it (the
/// error says why), accepted without it only with the metric's `insecure: true`, for the
/// Prometheus and web providers alike.
#[tokio::test]
async fn https_trusts_the_system_roots_plus_ca_files_and_insecure_skips_checks() {
    let ca = TestCa::new("plover test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let (url, seen) = serve_https(
        Arc::new(|req: &Seen| match req.target.as_str() {
            "/api/v1/query" => (
                200,
                "application/json",
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.99"]}]}}"#.to_owned(),
            ),
            _ => (200, "application/json", r#"{"rate": 0.99}"#.to_owned()),
        }),
        &ca.server(),
    )
    .await;
    assert!(url.starts_with("https://localhost:"), "{url}");
    let prometheus = |insecure: bool| {
        metric(&format!(
            "- name: p\n  successCondition: result[0] >= 0.95\n  provider:\n    prometheus:\n      address: {url}\n      insecure: {insecure}\n      query: up\n"
        ))
    };
    let web = |insecure: bool| {
        metric(&format!(
            "- name: w\n  successCondition: result >= 0.95\n  provider:\n    web:\n      url: {url}/health\n      insecure: {insecure}\n      jsonPath: '{{$.rate}}'\n"
        ))
    };
    let trusting = Providers::new(Settings {
        ca_files: vec![ca_file.clone()],
        ..Default::default()
    })
    .unwrap();
    let system_only = providers(None);
    for m in [prometheus(false), web(false)] {
        let out = measure(&trusting, &m, &SystemTime::now).await;
        assert_eq!(out.phase, Phase::Successful, "{out:?}");
        let out = measure(&system_only, &m, &SystemTime::now).await;
        assert_eq!(out.phase, Phase::Error, "{out:?}");
        let message = out.message.unwrap_or_default();
        assert!(
            message.contains("certificate") && message.contains("UnknownIssuer"),
            "the cause is named: {message}"
        );
    }
    for m in [prometheus(true), web(true)] {
        let out = measure(&system_only, &m, &SystemTime::now).await;
        assert_eq!(out.phase, Phase::Successful, "{out:?}");
    }
    // Two trusted measurements and two insecure ones reached the server.
    assert_eq!(seen.lock().unwrap().len(), 4);

    // A CA file that cannot be used is refused when the providers are built, by name.
    let missing = Providers::new(Settings {
        ca_files: vec![dir.path().join("nope.pem")],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("--ca-file") && missing.contains("nope.pem"),
        "{missing}"
    );
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let refused = Providers::new(Settings {
        ca_files: vec![not_pem],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(refused.contains("expected PEM certificates"), "{refused}");
}
