//! What the cluster tests of the controller share: the real `plover controller` process,
//! waiting on a real API server with useful failures, reading objects, watching a route's
//! writes, `kubectl plover`, Events, and installing the base and an example.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plover_testkit::cluster::Cluster;
use plover_testkit::process::{tail, ChildGuard};
use plover_testkit::tools::workspace_root;

/// A cluster with what the README's install expects and the base installed (CRD, RBAC, the
/// controller's ServiceAccount and Lease Role).
pub fn cluster_with_base() -> Cluster {
    let cluster = Cluster::start();
    cluster.install_prerequisites();
    cluster
        .apply(&cluster.kustomize(&workspace_root().join("manifests/base")))
        .unwrap_or_else(|e| panic!("base: {e}"));
    cluster.wait_established(&["crd/canaries.plover.dev"]);
    cluster
}

/// Installs `manifests/examples/DIR` without its Canary and AnalysisTemplates (the tests bring
/// their own), waits for its Deployments to be available, and returns the example's Canary.
pub fn install_example(cluster: &Cluster, dir: &str, namespace: &str) -> String {
    let rendered = cluster.kustomize(&workspace_root().join("manifests/examples").join(dir));
    let documents: Vec<&str> = rendered.split("\n---\n").collect();
    let canary = documents
        .iter()
        .find(|doc| doc.contains("\nkind: Canary"))
        .expect("the example has a Canary")
        .to_string();
    let kept: Vec<&str> = documents
        .iter()
        .filter(|doc| !doc.contains("\nkind: Canary") && !doc.contains("\nkind: AnalysisTemplate"))
        .copied()
        .collect();
    cluster.apply(&kept.join("\n---\n")).unwrap();
    let deployments = cluster.kubectl_ok(&["get", "deployments", "-n", namespace, "-o", "name"]);
    let mut args = vec!["-n", namespace, "rollout", "status", "--timeout=90s"];
    args.extend(deployments.lines());
    cluster.kubectl_ok(&args);
    canary
}

/// The test's Canary for an example: the example's own workload and routing (its Canary
/// document), its analysis, traffic check and revision tags left out, with `steps`.
pub fn canary_with_steps(example_canary: &str, steps: serde_json::Value) -> serde_json::Value {
    let mut canary: serde_json::Value = serde_yaml::from_str(example_canary).unwrap();
    let spec = canary["spec"].as_object_mut().unwrap();
    spec.remove("analysis");
    spec.remove("trafficCheck");
    spec.insert("steps".into(), steps);
    // These tests count the route's versions as weight changes; no Envoy here reads the
    // revision tags, whose writes `istio_release.rs` checks through istiod.
    if let Some(routing) = spec
        .get_mut("trafficRouting")
        .and_then(|r| r.as_object_mut())
    {
        routing.remove("revisionHeader");
    }
    canary
}

/// A new revision of a canary Deployment: its container runs `image`.
pub fn set_image(
    cluster: &Cluster,
    namespace: &str,
    deployment: &str,
    container: &str,
    image: &str,
) {
    cluster.kubectl_ok(&[
        "set",
        "image",
        "-n",
        namespace,
        &format!("deployment/{deployment}"),
        &format!("{container}={image}"),
    ]);
}

/// `plover controller`, as its ServiceAccount, leader-elected on the manifests' Lease.
pub fn start_controller(cluster: &Cluster, identity: &str, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        identity,
        cluster.controller_command(Path::new(env!("CARGO_BIN_EXE_plover")), identity, extra),
        &cluster.dir().join(format!("{identity}.log")),
    )
}

/// Polls `check` every 200 ms until it returns something; panics after `timeout` with
/// `what`, the last observation, the namespace's objects and the controller's log.
pub fn eventually<T>(
    (cluster, namespace): (&Cluster, &str),
    what: &str,
    timeout: Duration,
    controller: &mut ChildGuard,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        controller.assert_running();
        match check() {
            Ok(value) => return value,
            Err(seen) => last = seen,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let objects = cluster.kubectl(&[
        "get",
        "nodes,deployments,replicasets,pods",
        "-n",
        namespace,
        "-o",
        "wide",
    ]);
    let canary = cluster.kubectl(&["get", "canaries", "-n", namespace, "-o", "yaml"]);
    panic!(
        "timed out after {timeout:?} waiting for {what} in {namespace}; last seen: {last}\n\
         --- objects ---\n{}\n--- canary ---\n{}\n--- controller log (last lines) ---\n{}",
        String::from_utf8_lossy(&objects.stdout),
        String::from_utf8_lossy(&canary.stdout),
        tail(&controller.log_text(), 60)
    );
}

pub fn jsonpath(cluster: &Cluster, namespace: &str, kind_name: &str, path: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        kind_name,
        "-n",
        namespace,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// Every version of the route object the API server sent a watch (resourceVersion and the
/// weights), one line each: a count of the writes.
pub fn watch_weights(
    cluster: &Cluster,
    namespace: &str,
    route: &str,
    weights: &str,
    out: &Path,
) -> Child {
    watch(
        cluster,
        &["get", route, "-n", namespace, "--watch"],
        &format!(r#"jsonpath={{.metadata.resourceVersion}} {weights}{{"\n"}}"#),
        out,
    )
}

/// `kubectl ARGS -o OUTPUT` as the admin, its lines written to `out` until it is killed.
pub fn watch(cluster: &Cluster, args: &[&str], output: &str, out: &Path) -> Child {
    Command::new(cluster.kubectl_path())
        .arg("--kubeconfig")
        .arg(&cluster.admin_kubeconfig)
        .args(args)
        .args(["-o", output])
        .stdout(Stdio::from(std::fs::File::create(out).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `kubectl plover ARGS` as the admin; its output, which must be a success.
pub fn kubectl_plover(cluster: &Cluster, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-plover"))
        .args(args)
        .env("KUBECONFIG", &cluster.admin_kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl plover {}: {text}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

pub fn events(cluster: &Cluster, namespace: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.kind=Canary",
        "-o",
        r#"jsonpath={range .items[*]}{.type} {.reason}: {.message}{"\n"}{end}"#,
    ])
}
