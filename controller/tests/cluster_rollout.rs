//! The real `plover controller` binary against a real API server (kube-apiserver v1.37.2 with
//! etcd, kube-controller-manager, kube-scheduler and KWOK; `plover_testkit::cluster`),
//! authenticated as its ServiceAccount with exactly the manifests' RBAC.
//!
//! Each example (Istio subsets, Istio hosts, Gateway API) is installed as the README says; its
//! Canary's analysis is a `web` metric on a loopback endpoint the test controls. A new canary
//! image is rolled out (`kubectl plover set image`, followed by `kubectl plover status` until
//! Healthy): the controller sees the new revision, waits for the canary Deployment
//! to be available, writes each weight into the real VirtualService or HTTPRoute (validated by
//! the upstream CRD schema), runs the analysis step, pauses until `kubectl plover promote`,
//! promotes by copying the pod template and waiting for the stable rollout, and records
//! Events. A user's field and an out-of-band edit made during the rollout survive. A failing
//! canary is rolled back (`status` exits 1, `list` shows it Degraded, `undo` makes it Healthy);
//! `kubectl plover retry`, `abort` and `promote --full` are exercised. A webhook whose URL is in
//! a Secret is told each phase change, in order.
//! The controller may never be refused (no 403).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plover_testkit::cluster::Cluster;
use plover_testkit::process::ChildGuard;
use plover_testkit::scripted::{serve, Seen};

mod support;
use support::{
    canary_with_steps, cluster_with_base, events, eventually, install_example, jsonpath,
    kubectl_plover, start_controller, watch_weights,
};

/// One of `manifests/examples/`, and what the test needs to know to watch it.
struct Example {
    dir: &'static str,
    namespace: &'static str,
    /// The Canary's name, also the stable Deployment's.
    name: &'static str,
    container: &'static str,
    /// New images for the releases (healthy, failing, retried).
    images: [&'static str; 3],
    /// The route object and where its two weights are (stable first).
    route: &'static str,
    weights: &'static str,
    /// JSON patches of a field a user keeps on the route, and of an out-of-band edit made
    /// during the rollout, with a JSONPath to read each back and its value.
    user_field: (&'static str, &'static str, &'static str),
    out_of_band: (&'static str, &'static str, &'static str),
}

/// On an Istio route: a timeout the user keeps, and retries added by hand mid-rollout.
const ISTIO_USER_FIELD: (&str, &str, &str) = (
    r#"[{"op": "add", "path": "/spec/http/0/timeout", "value": "7s"}]"#,
    "{.spec.http[0].timeout}",
    "7s",
);
const ISTIO_OUT_OF_BAND: (&str, &str, &str) = (
    r#"[{"op": "add", "path": "/spec/http/0/retries", "value": {"attempts": 3}}]"#,
    "{.spec.http[0].retries.attempts}",
    "3",
);

const EXAMPLES: [Example; 3] = [
    Example {
        dir: "istio-subsets",
        namespace: "mock-server",
        name: "mock-server",
        container: "mock-server",
        images: [
            "ghcr.io/ssup2/mock-go-server:1.0.1",
            "ghcr.io/ssup2/mock-go-server:1.0.2",
            "ghcr.io/ssup2/mock-go-server:1.0.3",
        ],
        route: "virtualservice/mock-server",
        weights: "{.spec.http[0].route[*].weight}",
        user_field: ISTIO_USER_FIELD,
        out_of_band: ISTIO_OUT_OF_BAND,
    },
    Example {
        dir: "istio-hosts",
        namespace: "podinfo",
        name: "podinfo",
        container: "podinfo",
        images: [
            "ghcr.io/stefanprodan/podinfo:6.9.3",
            "ghcr.io/stefanprodan/podinfo:6.9.4",
            "ghcr.io/stefanprodan/podinfo:6.9.5",
        ],
        route: "virtualservice/podinfo",
        weights: "{.spec.http[0].route[*].weight}",
        user_field: ISTIO_USER_FIELD,
        out_of_band: ISTIO_OUT_OF_BAND,
    },
    Example {
        dir: "gateway-api",
        namespace: "rollouts-demo",
        name: "rollouts-demo",
        container: "rollouts-demo",
        images: [
            "argoproj/rollouts-demo:green",
            "argoproj/rollouts-demo:red",
            "argoproj/rollouts-demo:yellow",
        ],
        route: "httproute/rollouts-demo",
        weights: "{.spec.rules[0].backendRefs[*].weight}",
        user_field: (
            r#"[{"op": "add", "path": "/spec/rules/0/timeouts", "value": {"request": "7s"}}]"#,
            "{.spec.rules[0].timeouts.request}",
            "7s",
        ),
        out_of_band: (
            r#"[{"op": "add", "path": "/spec/rules/0/filters", "value": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-edited", "value": "by-hand"}]}}]}]"#,
            "{.spec.rules[0].filters[0].requestHeaderModifier.add[0].value}",
            "by-hand",
        ),
    },
];

/// The test's Canary for `example`: the example's own workload and routing, with steps
/// 20% → an analysis of the web endpoint → 60% → a pause until `kubectl plover promote`, and a
/// webhook told of each phase change whose URL is in the Secret `plover-notify`.
fn canary(example_canary: &str) -> String {
    let mut canary = canary_with_steps(
        example_canary,
        serde_json::json!([
            {"setWeight": 20},
            {"analysis": {"templates": [{"templateName": "web-health"}]}},
            {"setWeight": 60},
            {"pause": {}}
        ]),
    );
    canary["spec"]["notifications"] = serde_json::json!([
        {"type": "webhook", "urlFrom": {"secretKeyRef": {"name": "plover-notify", "key": "url"}}}
    ]);
    serde_json::to_string(&canary).unwrap()
}

/// The Secret holding the notification URL of `namespace`'s Canary.
fn notify_secret(namespace: &str, url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: plover-notify, namespace: {namespace}}}\nstringData: {{url: '{url}/notify/{namespace}'}}\n"
    )
}

fn analysis_template(namespace: &str, url: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: web-health, namespace: {namespace}}}
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

/// What one example's rollouts took.
struct Timeline {
    example: &'static str,
    first_weight: Duration,
    paused: Duration,
    promoted: Duration,
    rolled_back: Duration,
    route_versions: usize,
}

/// Installs `example` (with the test's Canary) and runs its releases: healthy and promoted
/// with `kubectl plover promote`; failing and rolled back; retried, aborted, retried again
/// and promoted with `promote --full`.
fn roll_out(
    cluster: &Cluster,
    controller: &mut ChildGuard,
    example: &Example,
    url: &str,
    healthy: &AtomicBool,
    seen: &Mutex<Vec<Seen>>,
) -> Timeline {
    let (ns, name) = (example.namespace, example.name);
    let get = |kind_name: &str, path: &str| jsonpath(cluster, ns, kind_name, path);
    let phase = || get(&format!("canary/{name}"), "{.status.phase}");
    let weights = || get(example.route, example.weights);
    let stable_image = || {
        get(
            &format!("deployment/{name}"),
            "{.spec.template.spec.containers[0].image}",
        )
    };
    // Releases as a user makes them: `kubectl plover set image` on the Canary.
    let release = |image: &str| {
        let done = kubectl_plover(
            cluster,
            &[
                "set",
                "image",
                name,
                &format!("{}={image}", example.container),
                "-n",
                ns,
            ],
        );
        assert!(done.contains("image set to"), "{done}");
    };
    let state = |want_phase: &str, want_weights: &str| {
        let (p, w) = (phase(), weights());
        (p == want_phase && w == want_weights)
            .then_some(())
            .ok_or(format!("phase {p}, weights {w}"))
    };
    let minute = Duration::from_secs(60);

    // The example, with the test's Canary and template instead of its Prometheus ones.
    healthy.store(true, Ordering::SeqCst);
    let example_canary = install_example(cluster, example.dir, ns);
    cluster.apply(&analysis_template(ns, url)).unwrap();
    cluster.apply(&notify_secret(ns, url)).unwrap();
    cluster.kubectl_ok(&[
        "patch",
        example.route,
        "-n",
        ns,
        "--type=json",
        "-p",
        example.user_field.0,
    ]);
    let route_log = cluster.dir().join(format!("{}-route.log", example.dir));
    let mut watch = watch_weights(cluster, ns, example.route, example.weights, &route_log);
    cluster.apply(&canary(&example_canary)).unwrap();

    // Nothing to roll out: both Deployments run the same template.
    eventually((cluster, ns), "Healthy", minute, controller, || {
        state("Healthy", "100 0")
    });

    // A healthy release, held at the pause until `kubectl plover promote`, followed with
    // `kubectl plover get canary --watch` as a user would.
    let watch_output = cluster.dir().join(format!("{}-get-watch.txt", example.dir));
    let mut get_watch = Command::new(env!("CARGO_BIN_EXE_kubectl-plover"))
        .args(["get", "canary", name, "-n", ns, "--watch"])
        .env("KUBECONFIG", &cluster.admin_kubeconfig)
        .stdout(Stdio::from(std::fs::File::create(&watch_output).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    release(example.images[0]);
    // And followed with `kubectl plover status` as a CI pipeline would: it waits through the
    // steps and the pause until the promotion.
    let status_output = cluster.dir().join(format!("{}-status.txt", example.dir));
    let mut status_watch = Command::new(env!("CARGO_BIN_EXE_kubectl-plover"))
        .args(["status", name, "-n", ns, "--timeout", "5m"])
        .env("KUBECONFIG", &cluster.admin_kubeconfig)
        .stdout(Stdio::from(std::fs::File::create(&status_output).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually((cluster, ns), "weight 20", minute, controller, || {
        let w = weights();
        (w == "80 20").then_some(()).ok_or(w)
    });
    let first_weight = started.elapsed();
    // Acted on through the Deployment watch: no periodic poll would be this quick (a Healthy
    // Canary is not requeued at all).
    assert!(first_weight < Duration::from_secs(10), "{first_weight:?}");
    // An out-of-band edit during the rollout: kept, like the user's field.
    cluster.kubectl_ok(&[
        "patch",
        example.route,
        "-n",
        ns,
        "--type=json",
        "-p",
        example.out_of_band.0,
    ]);
    eventually(
        (cluster, ns),
        "the pause at 60%",
        minute,
        controller,
        || state("Paused", "40 60"),
    );
    let paused = started.elapsed();
    // The status names the pod-template-hash the canary's pods carry (what
    // `podTemplateHashValue: Latest` gives templates): its current ReplicaSet's.
    let current_hash = |deployment: &str| {
        let listed = get(
            "rs",
            &format!(
                "{{range .items[?(@.metadata.ownerReferences[0].name==\"{deployment}\")]}}{{.metadata.annotations.deployment\\.kubernetes\\.io/revision}} {{.metadata.labels.pod-template-hash}}{{\"\\n\"}}{{end}}"
            ),
        );
        listed
            .lines()
            .filter_map(|l| {
                let (revision, hash) = l.split_once(' ')?;
                Some((revision.parse::<u64>().ok()?, hash.to_owned()))
            })
            .max()
            .map(|(_, hash)| hash)
            .unwrap_or_else(|| panic!("no ReplicaSet of {deployment}: {listed:?}"))
    };
    assert_eq!(
        get(&format!("canary/{name}"), "{.status.canaryPodTemplateHash}"),
        current_hash(&format!("{name}-canary"))
    );
    assert_eq!(
        get(&format!("canary/{name}"), "{.status.stablePodTemplateHash}"),
        current_hash(name)
    );
    let tree = kubectl_plover(cluster, &["get", "canary", name, "-n", ns]);
    assert!(tree.contains("Paused"), "{tree}");
    assert!(
        kubectl_plover(cluster, &["promote", name, "-n", ns]).contains("promoted"),
        "promote"
    );
    eventually((cluster, ns), "promotion", minute, controller, || {
        state("Healthy", "100 0")?;
        let image = stable_image();
        (image == example.images[0]).then_some(()).ok_or(image)
    });
    let promoted = started.elapsed();
    let status_exit = status_watch.wait().unwrap();
    let statuses = std::fs::read_to_string(&status_output).unwrap();
    assert_eq!(status_exit.code(), Some(0), "{statuses}");
    // (It polls every second: the pause, ended by the test as soon as it is seen, may fall
    // between two polls.)
    assert!(
        statuses.starts_with("Progressing") && statuses.trim_end().ends_with("Healthy"),
        "kubectl plover status printed:\n{statuses}"
    );
    // The watch re-rendered the tree (every 2 s) as the rollout went: progressing, then
    // promoted.
    std::thread::sleep(Duration::from_millis(2500));
    let _ = get_watch.kill();
    let _ = get_watch.wait();
    let frames = std::fs::read_to_string(&watch_output).unwrap();
    let progressing_at = frames.find("Progressing");
    let healthy_at = frames.rfind("Healthy");
    assert!(
        progressing_at.is_some() && healthy_at > progressing_at,
        "kubectl plover get --watch showed:\n{frames}"
    );
    for (patch, path, value) in [example.user_field, example.out_of_band] {
        assert_eq!(get(example.route, path), value, "{patch}");
    }
    let recorded = events(cluster, ns);
    assert!(recorded.contains("Normal Promoted"), "{recorded}");

    // A failing release: rolled back at the analysis step.
    healthy.store(false, Ordering::SeqCst);
    let started = Instant::now();
    release(example.images[1]);
    eventually((cluster, ns), "the rollback", minute, controller, || {
        state("Degraded", "100 0")
    });
    let rolled_back = started.elapsed();
    let recorded = events(cluster, ns);
    assert!(recorded.contains("Warning AnalysisFailed"), "{recorded}");
    assert!(recorded.contains("Warning RolloutAborted"), "{recorded}");
    assert_eq!(stable_image(), example.images[0]);
    // What a user sees of it: `status` ends at Degraded (exit 1), `list` shows it.
    let (code, text) = kubectl_plover_exit(cluster, &["status", name, "-n", ns, "-t", "1m"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.starts_with("Degraded - "), "{text}");
    let listed = kubectl_plover(cluster, &["list", "-n", ns]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(name) && l.contains("Degraded")),
        "{listed}"
    );
    // `undo`: the canary Deployment runs stable's template again; Healthy, no new route write.
    let undone = kubectl_plover(cluster, &["undo", name, "-n", ns]);
    assert!(undone.contains("set back to stable's revision"), "{undone}");
    let (code, text) = kubectl_plover_exit(cluster, &["status", name, "-n", ns, "-t", "1m"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.lines().last(), Some("Healthy"), "{text}");

    // Fixed: retry, abort by hand at the pause, retry, and promote past the pause with --full.
    healthy.store(true, Ordering::SeqCst);
    release(example.images[2]);
    kubectl_plover(cluster, &["retry", name, "-n", ns]);
    eventually(
        (cluster, ns),
        "the retried release's pause",
        minute,
        controller,
        || state("Paused", "40 60"),
    );
    kubectl_plover(cluster, &["abort", name, "-n", ns]);
    eventually((cluster, ns), "the abort", minute, controller, || {
        state("Degraded", "100 0")
    });
    kubectl_plover(cluster, &["retry", name, "-n", ns]);
    eventually(
        (cluster, ns),
        "the second retry's weight",
        minute,
        controller,
        || {
            let w = weights();
            (w == "80 20" || w == "40 60").then_some(()).ok_or(w)
        },
    );
    kubectl_plover(cluster, &["promote", name, "--full", "-n", ns]);
    eventually(
        (cluster, ns),
        "the full promotion",
        minute,
        controller,
        || {
            state("Healthy", "100 0")?;
            let image = stable_image();
            (image == example.images[2]).then_some(()).ok_or(image)
        },
    );

    // The webhook, its URL read from the Secret, was told every phase change in order.
    let told = [
        "progressing",
        "paused",
        "promoted",
        "progressing",
        "rolled-back",
        "healthy",
        "progressing",
        "paused",
        "aborted",
        "progressing",
        "promoted",
    ];
    let notified = || -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| s.target == format!("/notify/{ns}"))
            .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s.body).ok())
            .filter_map(|b| b["event"].as_str().map(str::to_owned))
            .collect()
    };
    eventually(
        (cluster, ns),
        "the notifications",
        minute,
        controller,
        || {
            let events = notified();
            let mut wanted = told.iter().peekable();
            for event in &events {
                if wanted.peek().is_some_and(|w| *w == event) {
                    wanted.next();
                }
            }
            wanted
                .peek()
                .is_none()
                .then_some(())
                .ok_or(format!("{events:?}"))
        },
    );

    let _ = watch.kill();
    let _ = watch.wait();
    let versions = std::fs::read_to_string(&route_log).unwrap();
    println!(
        "{}: route versions (resourceVersion, weights):\n{versions}",
        example.dir
    );
    // Each version is a decision or the test's own edit: no write is repeated, nothing flaps.
    let sequence: Vec<&str> = versions
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, weights)| weights))
        .collect();
    assert_eq!(
        sequence,
        [
            "100 0", // installed
            "80 20", // healthy release, step 0
            "80 20", // the out-of-band edit
            "40 60", // after the analysis
            "100 0", // promoted
            "80 20", // failing release
            "100 0", // rolled back
            "80 20", // fixed release
            "40 60", // its pause
            "100 0", // aborted
            "80 20", // retried
            "100 0", // promoted --full
        ],
        "{}",
        example.dir
    );
    Timeline {
        example: example.dir,
        first_weight,
        paused,
        promoted,
        rolled_back,
        route_versions: versions.lines().count(),
    }
}

/// `kubectl plover ARGS`: its exit status and standard output.
fn kubectl_plover_exit(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-plover"))
        .args(args)
        .env("KUBECONFIG", &cluster.admin_kubeconfig)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn every_example_rolls_out_promotes_and_rolls_back_on_a_real_api_server() {
    let cluster = cluster_with_base();

    // The analysis endpoint: healthy until the test says otherwise.
    let healthy = Arc::new(AtomicBool::new(true));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let flag = healthy.clone();
    let (url, seen) = runtime.block_on(serve(Arc::new(move |_: &Seen| {
        let ok = u8::from(flag.load(Ordering::SeqCst));
        (200, "application/json", format!("{{\"ok\": {ok}}}"))
    })));

    let mut controller = start_controller(&cluster, "plover-a", &[]);
    let timelines: Vec<Timeline> = EXAMPLES
        .iter()
        .map(|example| roll_out(&cluster, &mut controller, example, &url, &healthy, &seen))
        .collect();

    let measured = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.target == "/health")
        .count();
    assert!(
        measured >= 6,
        "the analysis endpoint saw {measured} requests"
    );
    let log = controller.log_text();
    assert!(
        !log.contains("code: 403") && !log.to_lowercase().contains("forbidden"),
        "the controller was refused something:\n{log}"
    );
    for t in &timelines {
        println!(
            "{}: first weight write {:.1} s after the new canary image, paused at 60% at \
             {:.1} s, promoted at {:.1} s (kubectl plover promote at the pause); failing \
             release rolled back after {:.1} s; {} versions of the route object over the three \
             releases",
            t.example,
            t.first_weight.as_secs_f64(),
            t.paused.as_secs_f64(),
            t.promoted.as_secs_f64(),
            t.rolled_back.as_secs_f64(),
            t.route_versions
        );
    }
}
