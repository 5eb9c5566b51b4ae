//! Bad input on a real API server (`plover_testkit::cluster`), with the real `plover
//! controller`: a Canary the schema accepts but the controller cannot act on (stable and
//! canary the same workload) gets the `InvalidSpec` condition and one Warning event; a Canary
//! whose VirtualService has no route of the name it gives gets the `TrafficRoutingFailed`
//! condition naming the object and the route, and one Warning event; a Canary naming an
//! AnalysisTemplate that does not exist gets `InvalidSpec` before its first weight. None loops: over the
//! measured window each is reconciled at most a few times and its status is not written again.

use std::time::Duration;

use plover_testkit::{cluster::Cluster, process::ChildGuard};

mod support;
use support::{
    canary_with_steps, cluster_with_base, eventually, install_example, jsonpath, set_image,
    start_controller, watch,
};

const NS: &str = "mock-server";
/// How long the test watches for a hot loop.
const QUIET_WINDOW: Duration = Duration::from_secs(60);

fn condition(cluster: &Cluster, canary: &str, type_: &str) -> String {
    jsonpath(
        cluster,
        NS,
        &format!("canary/{canary}"),
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].status}} {{.status.conditions[?(@.type==\"{type_}\")].message}}"),
    )
}

/// Warning events on `canary` as "REASON COUNT" lines (COUNT: the event series' count, 1
/// when the event never repeated).
fn warnings(cluster: &Cluster, canary: &str) -> Vec<String> {
    jsonpath(
        cluster,
        NS,
        "events",
        &format!(
            "{{range .items[?(@.involvedObject.name==\"{canary}\")]}}{{.type}} {{.reason}} {{.count}}{{\"\\n\"}}{{end}}"
        ),
    )
    .lines()
    .filter_map(|l| l.strip_prefix("Warning "))
    .map(|l| match l.split_once(' ') {
        // An event that never repeated may show no count.
        Some((reason, "")) | Some((reason, "1")) => format!("{reason} 1"),
        _ => l.to_owned(),
    })
    .collect()
}

#[test]
fn invalid_specs_and_missing_routes_get_a_condition_one_event_and_no_hot_loop() {
    let cluster = cluster_with_base();
    let example_canary = install_example(&cluster, "istio-subsets", NS);

    // Same workload twice: the schema cannot say it, the controller's validation does.
    let invalid = r#"apiVersion: plover.dev/v1alpha1
kind: Canary
metadata: {name: invalid, namespace: mock-server}
spec:
  workload: {stable: mock-server, canary: mock-server}
  trafficRouting:
    istio:
      virtualService: {name: mock-server, routes: [primary]}
  steps: [{setWeight: 20}]
"#;
    // The example's Canary, pointing at a route its VirtualService does not have.
    let mut missing = canary_with_steps(&example_canary, serde_json::json!([{"setWeight": 20}]));
    missing["metadata"]["name"] = "missing-route".into();
    missing["spec"]["trafficRouting"]["istio"]["virtualService"]["routes"] =
        serde_json::json!(["secondary"]);
    // The example's Canary with a step analysis whose template does not exist: refused before
    // its first weight, not when the step is reached.
    let mut no_template = canary_with_steps(
        &example_canary,
        serde_json::json!([
            {"setWeight": 20},
            {"analysis": {"templates": [{"templateName": "no-such-template"}]}}
        ]),
    );
    no_template["metadata"]["name"] = "missing-template".into();
    // A metric no provider here can measure (Datadog): refused the same way, as `plover
    // analyze` refuses it, rather than an Error that would roll back once the step is reached.
    let mut job_metric = canary_with_steps(
        &example_canary,
        serde_json::json!([
            {"setWeight": 20},
            {"analysis": {"metrics": [{"name": "load-test", "provider": {"datadog": {
                "query": "avg:requests.error.rate{service:mock-server}"}}}]}}
        ]),
    );
    job_metric["metadata"]["name"] = "job-metric".into();
    cluster
        .apply(&serde_json::to_string(&job_metric).unwrap())
        .unwrap();
    cluster.apply(invalid).unwrap();
    cluster
        .apply(&serde_json::to_string(&missing).unwrap())
        .unwrap();
    cluster
        .apply(&serde_json::to_string(&no_template).unwrap())
        .unwrap();
    // A new canary revision, so that the second Canary routes.
    set_image(
        &cluster,
        NS,
        "mock-server-canary",
        "mock-server",
        "ghcr.io/ssup2/mock-go-server:1.0.1",
    );

    let mut controller = start_controller(&cluster, "plover-a", &[]);
    let minute = Duration::from_secs(60);
    // The condition `type_` of `canary` once True (within a minute), as "True MESSAGE".
    let condition_true = |controller: &mut ChildGuard, canary: &str, type_: &str, what: &str| {
        eventually((&cluster, NS), what, minute, controller, || {
            let c = condition(&cluster, canary, type_);
            c.starts_with("True ").then_some(c.clone()).ok_or(c)
        })
    };
    let invalid_condition =
        condition_true(&mut controller, "invalid", "InvalidSpec", "InvalidSpec");
    assert!(
        invalid_condition.contains("spec.workload.canary"),
        "{invalid_condition}"
    );
    let routing_condition = condition_true(
        &mut controller,
        "missing-route",
        "TrafficRoutingFailed",
        "TrafficRoutingFailed",
    );
    assert!(
        routing_condition.contains("mock-server") && routing_condition.contains("secondary"),
        "the condition names the object and the route: {routing_condition}"
    );
    let template_condition = condition_true(
        &mut controller,
        "missing-template",
        "InvalidSpec",
        "InvalidSpec for the missing template",
    );
    assert!(
        template_condition.contains(
            "spec.steps[1].analysis: AnalysisTemplate \"no-such-template\" not found in namespace mock-server"
        ),
        "{template_condition}"
    );
    let job_condition = condition_true(
        &mut controller,
        "job-metric",
        "InvalidSpec",
        "InvalidSpec for the Datadog metric",
    );
    assert!(
        job_condition.contains(
            "spec.steps[1].analysis: metric \"load-test\" cannot be measured here: the datadog provider is not implemented by Plover"
        ) && job_condition.contains("dryRun"),
        "{job_condition}"
    );
    // Nothing was routed by the invalid Canary, the missing route changed nothing, and the
    // Canary with a missing template sent nothing to its canary.
    assert_eq!(
        jsonpath(
            &cluster,
            NS,
            "virtualservice/mock-server",
            "{.spec.http[0].route[*].weight}"
        ),
        "100 0"
    );

    // The quiet window: count the status writes (watch) and reconciles (log lines).
    let versions_log = cluster.dir().join("canary-versions.log");
    let mut watch = watch(
        &cluster,
        &["get", "canaries", "-n", NS, "--watch", "--watch-only"],
        r#"jsonpath={.metadata.name} {.metadata.resourceVersion}{"\n"}"#,
        &versions_log,
    );
    let log_before = controller.log_text();
    std::thread::sleep(QUIET_WINDOW);
    controller.assert_running();
    let log_after = controller.log_text();
    let _ = watch.kill();
    let _ = watch.wait();
    let window_log = &log_after[log_before.len()..];
    let reconciles = |canary: &str| {
        window_log
            .lines()
            .filter(|l| l.contains(&format!("canary={canary} ")))
            .count()
    };
    let writes = std::fs::read_to_string(&versions_log).unwrap();
    println!("invalid: {invalid_condition}\nmissing-route: {routing_condition}\nmissing-template: {template_condition}");
    println!(
        "over {QUIET_WINDOW:?}: invalid reconciled {} times, missing-route {} times, missing-template {} times; status \
         writes: {:?}",
        reconciles("invalid"),
        reconciles("missing-route"),
        reconciles("missing-template"),
        writes.lines().collect::<Vec<_>>()
    );
    assert!(
        writes.trim().is_empty(),
        "status writes in the quiet window:\n{writes}"
    );
    assert!(reconciles("invalid") <= 1, "{window_log}");
    // Looked at again every 30 s (route objects are not watched).
    assert!(reconciles("missing-route") <= 3, "{window_log}");
    // Looked at again every 30 s too (templates are not watched).
    assert!(reconciles("missing-template") <= 3, "{window_log}");

    // One Warning event each, never repeated.
    assert_eq!(warnings(&cluster, "invalid"), ["InvalidSpec 1"]);
    assert_eq!(warnings(&cluster, "missing-route"), ["RouteNotWritable 1"]);
    assert_eq!(warnings(&cluster, "missing-template"), ["InvalidSpec 1"]);
}
