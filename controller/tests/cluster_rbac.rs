//! Least privilege is also enough, on a real API server (`plover_testkit::cluster`): the
//! controller runs as its ServiceAccount with the manifests' ClusterRole and Role, and every
//! single rule of them is needed — with the rule removed, the real `plover controller` doing its
//! job (a release of an Istio subset-mode Canary whose analysis templates are namespaced and
//! cluster scoped, one with an arg from a Secret and one with a job metric, and of a Gateway API
//! Canary) is refused by the API
//! server (403) on exactly that resource. With all rules in place the same releases are
//! refused nothing (`cluster_rollout.rs` shows that for whole rollouts).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plover_testkit::cluster::{Cluster, CONTROLLER_NAMESPACE};
use plover_testkit::process::ChildGuard;
use plover_testkit::scripted::{serve, Seen};

mod support;
use support::{
    canary_with_steps, cluster_with_base, eventually, install_example, jsonpath, start_controller,
};

/// The Canaries the releases run: (namespace, example, container).
const CANARIES: [(&str, &str, &str); 2] = [
    ("mock-server", "istio-subsets", "mock-server"),
    ("rollouts-demo", "gateway-api", "rollouts-demo"),
];

/// The test's Canary for an example: its routing, a 20% step and an analysis step.
fn canary(example_canary: &str) -> String {
    serde_json::to_string(&canary_with_steps(
        example_canary,
        serde_json::json!([
            {"setWeight": 20},
            {"analysis": {
                "templates": [
                    {"templateName": "web-health"},
                    {"templateName": "web-health-cluster", "clusterScope": true}
                ]
            }},
            {"setWeight": 60}
        ]),
    ))
    .unwrap()
}

/// A namespaced and a cluster-scoped template measuring the web endpoint, the first with an
/// arg it takes from a Secret.
fn templates(namespace: &str, url: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: analysis, namespace: {namespace}}}
stringData: {{token: s3cret}}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: web-health, namespace: {namespace}}}
spec:
  args: [{{name: token, valueFrom: {{secretKeyRef: {{name: analysis, key: token}}}}}}]
  metrics:
  - name: health
    successCondition: result == 1
    provider:
      web:
        url: {url}/health
        headers: [{{key: Authorization, value: "Bearer {{{{args.token}}}}"}}]
        jsonPath: "{{$.ok}}"
---
apiVersion: argoproj.io/v1alpha1
kind: ClusterAnalysisTemplate
metadata: {{name: web-health-cluster}}
spec:
  metrics:
  - name: health-cluster
    successCondition: result == 1
    provider:
      web:
        url: {url}/health
        jsonPath: "{{$.ok}}"
  - name: smoke-job
    provider:
      job:
        metadata: {{labels: {{purpose: smoke}}}}
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              containers: [{{name: smoke, image: busybox, command: [/bin/true]}}]
"#
    )
}

/// The role objects bound to the controller, as JSON.
fn roles(cluster: &Cluster) -> [(String, serde_json::Value); 2] {
    let get = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&cluster.kubectl_ok(args)).unwrap()
    };
    [
        (
            "ClusterRole".to_owned(),
            get(&["get", "clusterrole", "plover-controller", "-o", "json"]),
        ),
        (
            "Role".to_owned(),
            get(&[
                "get",
                "role",
                "plover-controller-leader-election",
                "-n",
                CONTROLLER_NAMESPACE,
                "-o",
                "json",
            ]),
        ),
    ]
}

/// Replaces a role object with `role` (its rules as given).
fn replace(cluster: &Cluster, role: &serde_json::Value) {
    let mut role = role.clone();
    let metadata = role["metadata"].as_object_mut().unwrap();
    metadata.remove("resourceVersion");
    metadata.remove("managedFields");
    let out = cluster.kubectl_as(
        &cluster.admin_kubeconfig,
        &["replace", "-f", "-"],
        Some(&role.to_string()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the controller's log shows the API server refusing `resource` of `group`.
fn wait_for_refusal(controller: &ChildGuard, group: &str, resource: &str) -> Result<(), String> {
    let needle = format!("resource \"{resource}\" in API group \"{group}\"");
    let deadline = Instant::now() + Duration::from_secs(45);
    while Instant::now() < deadline {
        let log = controller.log_text();
        if log.contains(&needle) && log.contains("forbidden") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "no 403 on {group}/{resource} within 45 s; the controller's log:\n{}",
        controller.log_text()
    ))
}

#[test]
fn every_rule_of_the_controllers_rbac_is_needed() {
    let cluster = cluster_with_base();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (url, _) = runtime.block_on(serve(Arc::new(|_: &Seen| {
        (200, "application/json", "{\"ok\": 1}".to_owned())
    })));
    for (namespace, example, _) in CANARIES {
        let example_canary = install_example(&cluster, example, namespace);
        cluster.apply(&templates(namespace, &url)).unwrap();
        cluster.apply(&canary(&example_canary)).unwrap();
    }
    let release = AtomicUsize::new(1);
    // A new revision of both canaries: the controller starts their rollouts over.
    let new_release = || {
        let n = release.fetch_add(1, Ordering::SeqCst);
        for (namespace, _, container) in CANARIES {
            cluster.kubectl_ok(&[
                "set",
                "env",
                "-n",
                namespace,
                &format!("deployment/{namespace}-canary"),
                "-c",
                container,
                &format!("RELEASE={n}"),
            ]);
        }
    };

    let original = roles(&cluster);
    let mut refused = Vec::new();
    let mut failures = Vec::new();
    for (kind, role) in &original {
        let rules = role["rules"].as_array().unwrap().clone();
        for (index, rule) in rules.iter().enumerate() {
            let group = rule["apiGroups"][0].as_str().unwrap().to_owned();
            for resource in rule["resources"].as_array().unwrap() {
                let resource = resource.as_str().unwrap().to_owned();
                // The role without this resource: one entry of rbac::CONTROLLER gone.
                let mut without = role.clone();
                let rules = without["rules"].as_array_mut().unwrap();
                let resources = rules[index]["resources"].as_array_mut().unwrap();
                resources.retain(|r| r != resource.as_str());
                if resources.is_empty() {
                    rules.remove(index);
                }
                replace(&cluster, &without);
                // The authorizer sees RBAC changes through a watch: give it a moment.
                std::thread::sleep(Duration::from_millis(500));
                let name = format!("rbac-{}", resource.replace('/', "-"));
                // A Lease of its own, so that no controller waits for another's to expire.
                let controller = start_controller(&cluster, &name, &["--lease-name", &name]);
                new_release();
                match wait_for_refusal(&controller, &group, &resource) {
                    Ok(()) => refused.push(format!("{kind} without {group}/{resource}: 403")),
                    Err(e) => failures.push(format!("{kind} without {group}/{resource}: {e}")),
                }
                drop(controller);
                replace(&cluster, role);
            }
        }
    }
    println!("{}", refused.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // With every rule in place, the same release — templates of both scopes, an arg from a
    // Secret, both routers, events, the Lease — goes through, refused nothing.
    let mut controller = start_controller(&cluster, "rbac-all", &["--lease-name", "rbac-all"]);
    let image = |namespace: &str, deployment: &str| {
        jsonpath(
            &cluster,
            namespace,
            &format!("deployment/{deployment}"),
            "{.spec.template.spec.containers[0].env[0].value}",
        )
    };
    new_release();
    for (namespace, _, _) in CANARIES {
        eventually(
            (&cluster, namespace),
            "promotion",
            Duration::from_secs(60),
            &mut controller,
            || {
                let phase = jsonpath(
                    &cluster,
                    namespace,
                    &format!("canary/{namespace}"),
                    "{.status.phase}",
                );
                let (stable, canary) = (
                    image(namespace, namespace),
                    image(namespace, &format!("{namespace}-canary")),
                );
                (phase == "Healthy" && stable == canary)
                    .then_some(())
                    .ok_or(format!(
                        "phase {phase}, stable RELEASE={stable}, canary RELEASE={canary}"
                    ))
            },
        );
    }
    let log = controller.log_text();
    assert!(!log.contains("forbidden"), "{log}");
    assert_eq!(
        refused.len(),
        plover_controller::rbac::CONTROLLER.len(),
        "one refusal per rule of rbac::CONTROLLER"
    );
}
