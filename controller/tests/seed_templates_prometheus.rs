//! Every seed template in `tests/fixtures/seed-templates/`, unchanged, run by `plover analyze`
//! against a real Prometheus (the Debian package) whose TSDB is backfilled with
//! `promtool tsdb create-blocks-from openmetrics`: once with a healthy canary (⇒ Successful,
//! exit 0) and once with a failing one (⇒ Failed, exit 1).
//!
//! Two Prometheus servers run on loopback, one per scenario, because several templates hard-code
//! their label values. `--time-scale 0.05` keeps the templates' 20–60 s intervals to 1–3 s, and
//! `--duration` stops the metrics that run until stopped. The test fails (it does not skip)
//! when `prometheus` or `promtool` is missing.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use plover_testkit::tools::debian_tool;

const TIME_SCALE: &str = "0.05";

/// A Prometheus serving a backfilled TSDB, with its scratch directory.
struct Prometheus {
    // Declared first, so it stops before its directory is removed.
    server: plover_testkit::prometheus::Prometheus,
    _dir: tempfile::TempDir,
}

/// One counter series: labels and requests per second.
struct Series {
    labels: String,
    per_second: f64,
}

fn requests(labels: &str, per_second: f64) -> Series {
    Series {
        labels: labels.to_owned(),
        per_second,
    }
}

/// OpenMetrics text: counters and gauges every 5 s from 30 min ago to 10 min ahead, so that
/// `rate()`/`irate()` windows ending at any moment of the test see them.
fn openmetrics(counters: &[Series], gauges: &[(&str, &str, f64)]) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (start, end, step) = (now - 1800, now + 600, 5);
    let mut out = String::from("# HELP istio_requests Requests.\n# TYPE istio_requests counter\n");
    for s in counters {
        let mut total = 0.0;
        let mut t = start;
        while t <= end {
            total += s.per_second * step as f64;
            writeln!(out, "istio_requests_total{{{}}} {total} {t}", s.labels).unwrap();
            t += step;
        }
    }
    for (name, labels, value) in gauges {
        writeln!(out, "# TYPE {name} gauge").unwrap();
        let mut t = start;
        while t <= end {
            writeln!(out, "{name}{{{labels}}} {value} {t}").unwrap();
            t += step;
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Backfills a TSDB from `data` (OpenMetrics) with promtool and serves it.
fn start_prometheus(data: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("series.om");
    let tsdb = dir.path().join("tsdb");
    std::fs::write(&input, data).unwrap();
    let out = Command::new(debian_tool("promtool"))
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&tsdb)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = plover_testkit::prometheus::Prometheus::start(
        dir.path(),
        "global:\n  evaluation_interval: 1m\n",
        &tsdb,
        &["--storage.tsdb.retention.time=100y"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Prometheus { server, _dir: dir }
}

/// The series for one scenario. `ok` is the canary's (or the service's) success share.
fn scenario(ok: f64, cpu: f64) -> String {
    let split = |base: &str, good_code: &str, bad_code: &str, rps: f64, ok: f64| {
        vec![
            requests(&format!("{base},response_code=\"{good_code}\""), rps * ok),
            requests(
                &format!("{base},response_code=\"{bad_code}\""),
                rps * (1.0 - ok),
            ),
        ]
    };
    let mut counters = Vec::new();
    // seed000: reporter=source, destination_service=<service>.<namespace>.svc.cluster.local.
    counters.extend(split(
        r#"reporter="source",destination_service="reviews.bookinfo.svc.cluster.local",destination_workload="reviews-v2""#,
        "200", "500", 20.0, ok,
    ));
    // seed003: the v2 version of myapp.default.
    counters.extend(split(
        r#"reporter="destination",destination_service="myapp.default.svc.cluster.local",destination_version="v2""#,
        "200", "503", 20.0, ok,
    ));
    counters.extend(split(
        r#"reporter="destination",destination_service="myapp.default.svc.cluster.local",destination_version="v1""#,
        "200", "503", 20.0, 0.999,
    ));
    // seed004 baseline/canary comparison: workloads by pod-template hash; the baseline is healthy.
    counters.extend(split(
        r#"reporter="destination",destination_service_name="mock-server-canary",destination_workload="mock-server-abc123-stable""#,
        "200", "500", 20.0, 0.99,
    ));
    counters.extend(split(
        r#"reporter="destination",destination_service_name="mock-server-canary",destination_workload="mock-server-def456-canary""#,
        "200", "500", 20.0, ok,
    ));
    // seed004 success rate.
    counters.extend(split(
        r#"reporter="destination",destination_service_name="mock-server""#,
        "200",
        "500",
        20.0,
        ok,
    ));
    // seed002: the recording rules its query joins.
    let gauges = [
        (
            "node_namespace_pod_container:container_cpu_usage_seconds_total:sum_irate",
            r#"cluster="appmod-dev",namespace="argo-rollouts",pod="argo-rollouts-7d9f-x1",container="argo-rollouts""#,
            cpu,
        ),
        (
            "namespace_workload_pod:kube_pod_owner:relabel",
            r#"cluster="appmod-dev",namespace="argo-rollouts",pod="argo-rollouts-7d9f-x1",workload="argo-rollouts",workload_type="deployment""#,
            1.0,
        ),
    ];
    openmetrics(&counters, &gauges)
}

fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/seed-templates")
        .join(name)
}

struct Case {
    template: &'static str,
    extra: &'static [&'static str],
    /// The value every runnable measurement must show, per scenario (healthy, failing);
    /// `None` when the metrics of the template see different values.
    values: (Option<f64>, Option<f64>),
}

const CASES: &[Case] = &[
    Case {
        template: "seed000-istio-success-rate.yaml",
        extra: &[
            "--arg",
            "service=reviews",
            "--arg",
            "namespace=bookinfo",
            "--duration",
            "4s",
        ],
        values: (Some(0.99), Some(0.8)),
    },
    Case {
        template: "seed002-success-rate-with-job.yaml",
        // The address comes from a secret; the Job metric cannot run here: refused unless it
        // is dry-run (see `refuses_what_it_cannot_measure`), then skipped.
        extra: &[
            "--secret",
            "workspace-url/secretURL={prometheus}",
            "--dry-run",
            "trigger-load-test",
        ],
        values: (Some(0.002), Some(0.5)),
    },
    Case {
        template: "seed003-apdex-analysis.yaml",
        extra: &["--duration", "12s"],
        values: (Some(0.01), Some(0.2)),
    },
    Case {
        template: "seed004-baseline-canary-comparison.yaml",
        extra: &[
            "--arg",
            "baseline-hash=abc123",
            "--arg",
            "canary-hash=def456",
        ],
        values: (Some(0.99), None),
    },
    Case {
        template: "seed004-success-rate.yaml",
        extra: &[],
        values: (Some(0.99), Some(0.8)),
    },
];

struct Outcome {
    code: i32,
    doc: serde_json::Value,
    stderr: String,
}

fn analyze(case: &Case, prometheus: &Prometheus) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plover"));
    cmd.args(["analyze", "-f"]).arg(seed(case.template));
    // Templates that carry a cluster address are pointed at the test's Prometheus with
    // --prometheus; seed002's address comes from its secret, as in a cluster.
    if !case.extra.iter().any(|a| a.contains("{prometheus}")) {
        cmd.args(["--prometheus", &prometheus.server.url]);
    }
    for a in case.extra {
        cmd.arg(a.replace("{prometheus}", &prometheus.server.url));
    }
    cmd.args(["--time-scale", TIME_SCALE, "--output", "json"]);
    cmd.env_remove("ARGO_ROLLOUTS_PROMETHEUS_ADDRESS");
    let out = cmd.output().expect("plover runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let doc = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{}: stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}",
            case.template
        )
    });
    Outcome {
        code: out.status.code().unwrap_or(-1),
        doc,
        stderr,
    }
}

fn check(case: &Case, healthy: bool, o: &Outcome) {
    let what = format!(
        "{} ({}):\n{}\n{}",
        case.template,
        if healthy { "healthy" } else { "failing" },
        o.doc,
        o.stderr
    );
    let (phase, code) = if healthy {
        ("Successful", 0)
    } else {
        ("Failed", 1)
    };
    assert_eq!(o.doc["phase"], phase, "{what}");
    assert_eq!(o.code, code, "{what}");
    let expected = if healthy {
        case.values.0
    } else {
        case.values.1
    };
    let mut measured = 0;
    for metric in o.doc["metrics"].as_array().unwrap() {
        if metric.get("skipped").is_some() {
            continue;
        }
        for m in metric["measurements"].as_array().unwrap() {
            measured += 1;
            assert_ne!(m["phase"], "Error", "{what}");
            let text = m["value"].as_str().unwrap();
            let number: f64 = text
                .trim_matches(|c| c == '[' || c == ']')
                .parse()
                .unwrap_or(f64::NAN);
            if let Some(expected) = expected {
                assert!(
                    (number - expected).abs() < 1e-9,
                    "value {text}, expected {expected}: {what}"
                );
            }
        }
    }
    assert!(measured > 0, "{what}");
}

#[test]
fn seed_templates_against_a_real_prometheus() {
    let healthy = start_prometheus(&scenario(0.99, 0.002));
    let failing = start_prometheus(&scenario(0.8, 0.5));

    // Run every case in parallel: each mostly sleeps between measurements.
    let results: Vec<(usize, bool, Outcome)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, case) in CASES.iter().enumerate() {
            for (is_healthy, p) in [(true, &healthy), (false, &failing)] {
                handles.push(s.spawn(move || (i, is_healthy, analyze(case, p))));
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, is_healthy, outcome) in &results {
        check(&CASES[*i], *is_healthy, outcome);
    }

    // Specific expectations per template.
    let find = |template: &str, healthy: bool| {
        let (i, _, o) = results
            .iter()
            .find(|(i, h, _)| CASES[*i].template == template && *h == healthy)
            .unwrap();
        let _ = i;
        o
    };
    // seed000: unbounded metric, stopped by --duration after several Successful measurements.
    let o = find("seed000-istio-success-rate.yaml", true);
    assert_eq!(o.doc["message"], "Run Terminated");
    assert!(
        o.doc["metrics"][0]["measurements"]
            .as_array()
            .unwrap()
            .len()
            >= 2,
        "{}",
        o.doc
    );
    let o = find("seed000-istio-success-rate.yaml", false);
    assert_eq!(
        o.doc["message"],
        "Metric \"success-rate\" assessed Failed due to failed (1) > failureLimit (0)"
    );
    // seed002: the Job metric is reported as skipped, the Prometheus one ran 3 times; the secret
    // (the Prometheus URL) never appears in the output.
    let o = find("seed002-success-rate-with-job.yaml", true);
    let job = o.doc["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "trigger-load-test")
        .unwrap();
    assert!(
        job["skipped"].as_str().unwrap().contains("Kubernetes Job"),
        "{job}"
    );
    let rate = o.doc["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "success-rate")
        .unwrap();
    assert_eq!(rate["count"], 3);
    assert!(
        o.stderr.contains("prometheus *****"),
        "the secret address is redacted: {}",
        o.stderr
    );
    assert!(!o.stderr.contains(&healthy.server.url), "{}", o.stderr);
    // seed003: failureLimit 3 ⇒ the 4th failure fails the metric (Argo's `>`).
    let o = find("seed003-apdex-analysis.yaml", false);
    assert_eq!(o.doc["metrics"][0]["failed"], 4, "{}", o.doc);
    assert_eq!(
        o.doc["message"],
        "Metric \"error-rate\" assessed Failed due to failed (4) > failureLimit (3)"
    );
    // seed004 comparison: the baseline stays Successful, the canary fails after 3 of 3.
    let o = find("seed004-baseline-canary-comparison.yaml", false);
    let phase = |name: &str| {
        o.doc["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()["phase"]
            .clone()
    };
    assert_eq!(phase("baseline-success-rate"), "Successful");
    assert_eq!(phase("canary-success-rate"), "Failed");
    assert_eq!(
        o.doc["message"],
        "Metric \"canary-success-rate\" assessed Failed due to failed (3) > failureLimit (2)"
    );
    // seed004 success rate: count 3 reached ⇒ Successful with no message.
    let o = find("seed004-success-rate.yaml", true);
    assert_eq!(o.doc["metrics"][0]["count"], 3);
}
