//! No traffic on a wrong premise, on a real API server (`plover_testkit::cluster`): while the
//! canary Deployment's new pods cannot become available (here: no node matches their
//! selector, so they stay Pending), the real `plover controller` sends the canary nothing and
//! says what it waits for; once the canary has rolled out, the first weight is set.

use std::time::{Duration, Instant};

mod support;
use support::{
    canary_with_steps, cluster_with_base, eventually, install_example, jsonpath, start_controller,
};

const NS: &str = "mock-server";

#[test]
fn a_canary_whose_pods_are_not_available_gets_no_traffic() {
    let cluster = cluster_with_base();
    let example_canary = install_example(&cluster, "istio-subsets", NS);
    let canary = canary_with_steps(
        &example_canary,
        serde_json::json!([{"setWeight": 20}, {"pause": {}}]),
    );
    cluster.apply(&canary.to_string()).unwrap();
    let mut controller = start_controller(&cluster, "plover-a", &[]);
    let minute = Duration::from_secs(60);
    let state = || {
        (
            jsonpath(&cluster, NS, "canary/mock-server", "{.status.phase}"),
            jsonpath(&cluster, NS, "canary/mock-server", "{.status.message}"),
            jsonpath(
                &cluster,
                NS,
                "virtualservice/mock-server",
                "{.spec.http[0].route[*].weight}",
            ),
        )
    };
    eventually((&cluster, NS), "Healthy", minute, &mut controller, || {
        let s = state();
        (s.0 == "Healthy").then_some(()).ok_or(format!("{s:?}"))
    });

    // A new revision whose pods no node can take.
    cluster.kubectl_ok(&[
        "patch",
        "deployment",
        "mock-server-canary",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec": {"template": {"spec": {
            "containers": [{"name": "mock-server", "image": "ghcr.io/ssup2/mock-go-server:1.0.1"}],
            "nodeSelector": {"plover.test/node": "none"}}}}}"#,
    ]);
    eventually(
        (&cluster, NS),
        "the wait for the canary",
        minute,
        &mut controller,
        || {
            let s = state();
            s.1.contains("waiting for mock-server-canary to roll out revision")
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    );
    // It keeps waiting, and the canary keeps getting nothing.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(5) {
        let s = state();
        assert_eq!(
            (s.0.as_str(), s.2.as_str()),
            ("Progressing", "100 0"),
            "{s:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let pending = jsonpath(
        &cluster,
        NS,
        "pods",
        "{range .items[?(@.status.phase==\"Pending\")]}{.metadata.name}{\"\\n\"}{end}",
    );
    assert!(!pending.trim().is_empty(), "the new canary pod is Pending");

    // Schedulable again: the canary rolls out, then gets its first weight.
    cluster.kubectl_ok(&[
        "patch",
        "deployment",
        "mock-server-canary",
        "-n",
        NS,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/template/spec/nodeSelector"}]"#,
    ]);
    eventually((&cluster, NS), "weight 20", minute, &mut controller, || {
        let s = state();
        (s.0 == "Paused" && s.2 == "80 20")
            .then_some(())
            .ok_or(format!("{s:?}"))
    });
    let available = jsonpath(
        &cluster,
        NS,
        "deployment/mock-server-canary",
        "{.status.updatedReplicas}/{.status.availableReplicas}/{.spec.replicas}",
    );
    assert_eq!(available, "1/1/1");
}
