//! The real `plover controller` binary against a real API server (kube-apiserver v1.37.2 with
//! etcd, kube-controller-manager, kube-scheduler and KWOK; `plover_testkit::cluster`),
//! authenticated as its ServiceAccount with exactly the manifests' RBAC.
//!
//! The Istio subset-mode example is installed as the README says; its Canary's analysis is a
//! `web` metric on a loopback endpoint the test controls. A new canary image is rolled out:
//! the controller sees the new revision, waits for the canary Deployment to be available,
//! writes each weight into the real VirtualService (validated by Istio's CRD schema), runs the
//! analysis step, promotes by copying the pod template and waiting for the stable rollout, and
//! records Events. A user's field and an out-of-band edit made during the rollout survive.
//! Then a failing canary is rolled back. The controller may never be refused (no 403), and
//! `kubectl plover get` shows what happened.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plover_testkit::cluster::Cluster;
use plover_testkit::free_port;
use plover_testkit::process::ChildGuard;
use plover_testkit::scripted::{serve, Seen};
use plover_testkit::tools::workspace_root;

const NS: &str = "mock-server";

/// The test's Canary: 20% → analysis on the web endpoint → 60% → a short pause → promotion.
fn canary() -> &'static str {
    r#"apiVersion: plover.dev/v1alpha1
kind: Canary
metadata: {name: mock-server, namespace: mock-server}
spec:
  workload: {stable: mock-server, canary: mock-server-canary}
  trafficRouting:
    istio:
      virtualService: {name: mock-server, routes: [primary]}
      destinationRule: {name: mock-server, stableSubsetName: stable, canarySubsetName: canary}
  steps:
  - setWeight: 20
  - analysis:
      templates: [{templateName: web-health}]
  - setWeight: 60
  - pause: {duration: 2s}
"#
}

fn analysis_template(url: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: web-health, namespace: mock-server}}
spec:
  metrics:
  - name: health
    count: 2
    interval: 1s
    failureLimit: 0
    successCondition: result == 1
    provider:
      web:
        url: {url}/health
        jsonPath: "{{$.ok}}"
"#
    )
}

/// `plover controller`, as its ServiceAccount, leader-elected on the manifests' Lease.
fn start_controller(cluster: &Cluster, identity: &str) -> ChildGuard {
    let mut command = Command::new(env!("CARGO_BIN_EXE_plover"));
    command
        .args(["controller", "--identity", identity])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--lease-namespace", "plover-system"])
        .env("KUBECONFIG", &cluster.controller_kubeconfig)
        .env("RUST_LOG", "info");
    ChildGuard::spawn(
        identity,
        command,
        &cluster.dir().join(format!("{identity}.log")),
    )
}

/// Polls `check` every 200 ms until it returns something; panics with `what`, the last
/// observation and the controller's log after `timeout`.
fn eventually<T>(
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
    panic!(
        "timed out after {timeout:?} waiting for {what}; last seen: {last}\n--- controller log ---\n{}",
        controller.log_text()
    );
}

fn jsonpath(cluster: &Cluster, kind_name: &str, path: &str) -> String {
    cluster.kubectl_ok(&[
        "get",
        kind_name,
        "-n",
        NS,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

fn weights(cluster: &Cluster) -> String {
    jsonpath(
        cluster,
        "virtualservice/mock-server",
        "{.spec.http[0].route[*].weight}",
    )
}

fn phase(cluster: &Cluster) -> String {
    jsonpath(cluster, "canary/mock-server", "{.status.phase}")
}

/// Every version of the VirtualService's route weights the API server sent a watch, one line
/// each.
fn watch_weights(cluster: &Cluster, out: &Path) -> Child {
    let file = std::fs::File::create(out).unwrap();
    Command::new(cluster.kubectl_path())
        .arg("--kubeconfig")
        .arg(&cluster.admin_kubeconfig)
        .args([
            "get",
            "virtualservice",
            "mock-server",
            "-n",
            NS,
            "--watch",
            "-o",
            r#"jsonpath={.metadata.resourceVersion} {.spec.http[0].route[*].weight}{"\n"}"#,
        ])
        .stdout(Stdio::from(file))
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Sets the canary Deployment's image: a new revision.
fn release(cluster: &Cluster, image: &str) {
    cluster.kubectl_ok(&[
        "set",
        "image",
        "-n",
        NS,
        "deployment/mock-server-canary",
        &format!("mock-server={image}"),
    ]);
}

fn events(cluster: &Cluster) -> String {
    cluster.kubectl_ok(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "involvedObject.kind=Canary",
        "-o",
        r#"jsonpath={range .items[*]}{.type} {.reason}: {.message}{"\n"}{end}"#,
    ])
}

#[test]
fn a_healthy_release_is_promoted_and_a_failing_one_rolled_back_on_a_real_api_server() {
    let cluster = Cluster::start();
    cluster.install_prerequisites();
    let manifests = workspace_root().join("manifests");
    cluster
        .apply(&cluster.kustomize(&manifests.join("base")))
        .unwrap_or_else(|e| panic!("base: {e}"));
    cluster.wait_established(&["crd/canaries.plover.dev"]);

    // The analysis endpoint: healthy until the test says otherwise.
    let healthy = Arc::new(AtomicBool::new(true));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let flag = healthy.clone();
    let (url, seen) = runtime.block_on(serve(Arc::new(move |_: &Seen| {
        let ok = u8::from(flag.load(Ordering::SeqCst));
        (200, "application/json", format!("{{\"ok\": {ok}}}"))
    })));

    // The example, with the test's Canary and template instead of its Prometheus ones.
    let example = cluster.kustomize(&manifests.join("examples/istio-subsets"));
    let kept: Vec<&str> = example
        .split("\n---\n")
        .filter(|doc| !doc.contains("\nkind: Canary") && !doc.contains("\nkind: AnalysisTemplate"))
        .collect();
    cluster.apply(&kept.join("\n---\n")).unwrap();
    cluster.apply(&analysis_template(&url)).unwrap();
    // A field the user keeps on the route: the controller must never drop it.
    cluster.kubectl_ok(&[
        "patch",
        "virtualservice",
        "mock-server",
        "-n",
        NS,
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/spec/http/0/timeout", "value": "7s"}]"#,
    ]);
    cluster.kubectl_ok(&[
        "-n",
        NS,
        "rollout",
        "status",
        "deploy/mock-server",
        "deploy/mock-server-canary",
        "--timeout=90s",
    ]);
    cluster.apply(canary()).unwrap();

    let mut controller = start_controller(&cluster, "plover-a");
    let weight_log = cluster.dir().join("weights.log");
    let mut watch = watch_weights(&cluster, &weight_log);

    // Nothing to roll out: both Deployments run the same template.
    eventually(
        "the Canary to be Healthy",
        Duration::from_secs(60),
        &mut controller,
        || {
            let p = phase(&cluster);
            (p == "Healthy").then_some(()).ok_or(p)
        },
    );
    assert_eq!(weights(&cluster), "100 0");

    // A healthy release.
    let started = Instant::now();
    release(&cluster, "ghcr.io/ssup2/mock-go-server:1.0.1");
    eventually(
        "weight 20",
        Duration::from_secs(60),
        &mut controller,
        || {
            let w = weights(&cluster);
            (w == "80 20").then_some(()).ok_or(w)
        },
    );
    let first_weight = started.elapsed();
    // An out-of-band edit during the rollout: kept, like the user's timeout.
    cluster.kubectl_ok(&[
        "patch",
        "virtualservice",
        "mock-server",
        "-n",
        NS,
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/spec/http/0/retries", "value": {"attempts": 3}}]"#,
    ]);
    eventually(
        "promotion",
        Duration::from_secs(90),
        &mut controller,
        || {
            let (p, w) = (phase(&cluster), weights(&cluster));
            let image = jsonpath(
                &cluster,
                "deployment/mock-server",
                "{.spec.template.spec.containers[0].image}",
            );
            (p == "Healthy" && w == "100 0" && image.ends_with(":1.0.1"))
                .then_some(())
                .ok_or(format!("phase {p}, weights {w}, stable image {image}"))
        },
    );
    let promoted = started.elapsed();
    assert_eq!(
        jsonpath(
            &cluster,
            "virtualservice/mock-server",
            "{.spec.http[0].timeout}"
        ),
        "7s"
    );
    assert_eq!(
        jsonpath(
            &cluster,
            "virtualservice/mock-server",
            "{.spec.http[0].retries.attempts}"
        ),
        "3"
    );
    let healthy_requests = seen.lock().unwrap().len();
    assert!(
        healthy_requests >= 2,
        "the analysis measured {healthy_requests} times"
    );
    let recorded = events(&cluster);
    assert!(recorded.contains("Normal Promoted"), "{recorded}");

    // A failing release: rolled back at the analysis step.
    healthy.store(false, Ordering::SeqCst);
    let started = Instant::now();
    release(&cluster, "ghcr.io/ssup2/mock-go-server:1.0.2");
    eventually(
        "the rollback",
        Duration::from_secs(90),
        &mut controller,
        || {
            let (p, w) = (phase(&cluster), weights(&cluster));
            (p == "Degraded" && w == "100 0")
                .then_some(())
                .ok_or(format!("phase {p}, weights {w}"))
        },
    );
    let rolled_back = started.elapsed();
    let recorded = events(&cluster);
    assert!(recorded.contains("Warning AnalysisFailed"), "{recorded}");
    assert!(recorded.contains("Warning RolloutAborted"), "{recorded}");
    let stable_image = jsonpath(
        &cluster,
        "deployment/mock-server",
        "{.spec.template.spec.containers[0].image}",
    );
    assert!(stable_image.ends_with(":1.0.1"), "{stable_image}");

    // `kubectl plover get` against the same server.
    let get = Command::new(env!("CARGO_BIN_EXE_kubectl-plover"))
        .args(["get", "canary", "mock-server", "-n", NS])
        .env("KUBECONFIG", &cluster.admin_kubeconfig)
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&get.stdout);
    assert!(
        get.status.success(),
        "{tree}{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert!(tree.contains("Degraded"), "{tree}");

    let _ = watch.kill();
    let _ = watch.wait();
    let versions = std::fs::read_to_string(&weight_log).unwrap();
    let log = controller.log_text();
    assert!(
        !log.contains("403") && !log.contains("Forbidden") && !log.contains("forbidden"),
        "the controller was refused something:\n{log}"
    );
    println!(
        "first weight write {:.1} s after the new canary image; promoted after {:.1} s; the \
         failing release rolled back after {:.1} s\nVirtualService versions (resourceVersion, \
         weights):\n{versions}",
        first_weight.as_secs_f64(),
        promoted.as_secs_f64(),
        rolled_back.as_secs_f64()
    );
}
