//! Argo's `job` metric on a real API server (`plover_testkit::cluster`: the job controller of
//! kube-controller-manager creates the pods, KWOK runs them): the controller's analysis step
//! creates a Job per measurement and promotes the release when it succeeds, rolls it back when
//! it fails (a Job that cannot be scheduled before its deadline); `plover analyze
//! --kubeconfig` runs the same templates.

use std::time::Duration;

use plover_testkit::cluster::Cluster;

mod support;
use support::{
    canary_with_steps, cluster_with_base, eventually, install_example, jsonpath, set_image,
    start_controller,
};

const NS: &str = "mock-server";

/// `smoke`, whose Job succeeds, and `doomed`, whose Job's pod can never be scheduled and fails
/// at its 3 s deadline.
fn templates() -> String {
    let job = |name: &str, extra: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  metrics:\n  - name: {name}\n    provider:\n      job:\n        metadata: {{labels: {{purpose: {name}}}}}\n        spec:\n          backoffLimit: 0\n{extra}          template:\n            spec:\n              restartPolicy: Never\n{pod}              containers: [{{name: check, image: busybox, command: [/bin/true]}}]\n",
            pod = if extra.is_empty() { "" } else { "              nodeSelector: {plover.dev/no-such-node: \"true\"}\n" }
        )
    };
    format!(
        "{}---\n{}",
        job("smoke", ""),
        job("doomed", "          activeDeadlineSeconds: 3\n")
    )
}

fn canary(example_canary: &str, template: &str) -> String {
    serde_json::to_string(&canary_with_steps(
        example_canary,
        serde_json::json!([
            {"setWeight": 20},
            {"analysis": {"templates": [{"templateName": template}]}},
            {"setWeight": 60}
        ]),
    ))
    .unwrap()
}

fn jobs(cluster: &Cluster, metric: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        "jobs",
        "-n",
        NS,
        "-l",
        &format!("plover.dev/canary=mock-server,plover.dev/metric={metric}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.purpose} {.status.conditions[?(@.status==\"True\")].type}{\"\\n\"}{end}",
    ])
}

#[test]
fn a_job_metric_promotes_when_its_job_succeeds_and_rolls_back_when_it_fails() {
    let cluster = cluster_with_base();
    let example_canary = install_example(&cluster, "istio-subsets", NS);
    cluster.apply(&templates()).unwrap();
    cluster.apply(&canary(&example_canary, "smoke")).unwrap();
    let mut controller = start_controller(&cluster, "plover-job", &[]);
    let minute = Duration::from_secs(60);
    let phase = || jsonpath(&cluster, NS, "canary/mock-server", "{.status.phase}");
    eventually((&cluster, NS), "Healthy", minute, &mut controller, || {
        let p = phase();
        (p == "Healthy").then_some(()).ok_or(p)
    });

    // A release judged by a Job that succeeds: promoted.
    set_image(
        &cluster,
        NS,
        "mock-server-canary",
        "mock-server",
        "mock-server:v2",
    );
    eventually(
        (&cluster, NS),
        "the promotion",
        2 * minute,
        &mut controller,
        || {
            let image = jsonpath(
                &cluster,
                NS,
                "deployment/mock-server",
                "{.spec.template.spec.containers[0].image}",
            );
            (phase() == "Healthy" && image == "mock-server:v2")
                .then_some(())
                .ok_or(format!("{} {image}", phase()))
        },
    );
    let smoke = jobs(&cluster, "smoke");
    assert!(
        smoke.lines().count() == 1 && smoke.starts_with("smoke ") && smoke.contains("Complete"),
        "one Job, kept, complete: {smoke}"
    );

    // Judged by a Job that fails: rolled back, the message saying why.
    cluster.apply(&canary(&example_canary, "doomed")).unwrap();
    set_image(
        &cluster,
        NS,
        "mock-server-canary",
        "mock-server",
        "mock-server:v3",
    );
    eventually(
        (&cluster, NS),
        "the rollback",
        2 * minute,
        &mut controller,
        || {
            let p = phase();
            (p == "Degraded").then_some(()).ok_or(p)
        },
    );
    let doomed = jobs(&cluster, "doomed");
    assert!(doomed.contains("Failed"), "{doomed}");
    let runs = jsonpath(
        &cluster,
        NS,
        "canary/mock-server",
        "{.status.stepAnalysis.metrics[0].latest.message}",
    );
    assert!(runs.contains("failed: DeadlineExceeded"), "{runs}");

    // `plover analyze --kubeconfig` runs the same templates' Jobs.
    let dir = tempfile::tempdir().unwrap();
    let analyze = |template: &str| {
        let file = dir.path().join(format!("{template}.yaml"));
        let text: String = templates()
            .split("---\n")
            .find(|t| t.contains(&format!("name: {template},")))
            .unwrap()
            .to_owned();
        std::fs::write(&file, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_plover"))
            .args(["analyze", "-n", NS, "--kubeconfig"])
            .arg(&cluster.admin_kubeconfig)
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = analyze("smoke");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Successful"), "{text}");
    let out = analyze("doomed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DeadlineExceeded"), "{text}");
}
