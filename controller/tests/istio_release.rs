//! Real Istio end to end ([`plover_testkit::mesh`]): the real API server with
//! kube-controller-manager and KWOK, istiod built from `istio.io/istio`, and the PyPI Envoy as
//! the ingress gateway pod, programmed by istiod over plaintext xDS. Plover is installed with
//! the README's commands; the examples `istio-subsets` and `istio-hosts` are applied as a user
//! would; the controller runs in cluster mode as its ServiceAccount.
//!
//! Checked: the WasmPlugin's rules match the clusters istiod generated; a healthy release is
//! promoted and a bad one (20% 5xx) rolled back; the exporter's counts per revision equal what
//! each revision's pods served; the weights the controller wrote are the split the pods saw.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plover_testkit::cluster::Cluster;
use plover_testkit::mesh::{
    admin, push_delay, quick_canary, App, Load, Mesh, Response, Route, GATEWAY_PORT,
    INGRESS_GATEWAY,
};
use plover_testkit::process::ChildGuard;
use support::{eventually, jsonpath, set_image};

/// An example run through istiod.
struct Example {
    dir: &'static str,
    namespace: &'static str,
    /// The Gateway's host.
    host: &'static str,
    /// `app` label, Canary, stable Deployment, VirtualService and container name.
    name: &'static str,
    image: &'static str,
    /// The example's image tag, then a healthy and a bad (20% 5xx) release.
    tags: [&'static str; 3],
    /// The gateway clusters istiod generates for stable and canary.
    clusters: [&'static str; 2],
    /// The gateway Deployment serving the example, and its port in the pod.
    gateway: (&'static str, &'static str),
    port: u16,
    /// The route object and where its stable and canary weights are.
    route: &'static str,
    weights: [&'static str; 2],
    /// Seed 000's templates read only `istio_requests_total`, which upstream Envoy does not
    /// produce: such an example is judged by Plover's metric instead.
    plover_analysis: bool,
}

const EXAMPLES: [Example; 3] = [
    // istiod deploys the Gateway `gw` as the Deployment `gw-istio`, listening on port 80.
    Example {
        dir: "gateway-api",
        namespace: "rollouts-demo",
        host: "rollouts-demo.example.com",
        name: "rollouts-demo",
        image: "argoproj/rollouts-demo",
        tags: ["blue", "yellow", "bad-red"],
        clusters: [
            "outbound|80||rollouts-demo-stable.rollouts-demo.svc.cluster.local",
            "outbound|80||rollouts-demo-canary.rollouts-demo.svc.cluster.local",
        ],
        gateway: ("rollouts-demo", "gw-istio"),
        port: 80,
        route: "httproute/rollouts-demo",
        weights: [
            "/spec/rules/0/backendRefs/0/weight",
            "/spec/rules/0/backendRefs/1/weight",
        ],
        plover_analysis: true,
    },
    Example {
        dir: "istio-subsets",
        namespace: "mock-server",
        host: "mock-server.example.com",
        name: "mock-server",
        image: "ghcr.io/ssup2/mock-go-server",
        tags: ["1.0.0", "2.0.0", "3.0.0"],
        clusters: [
            "outbound|80|stable|mock-server.mock-server.svc.cluster.local",
            "outbound|80|canary|mock-server.mock-server.svc.cluster.local",
        ],
        gateway: INGRESS_GATEWAY,
        port: GATEWAY_PORT,
        route: "virtualservice/mock-server",
        weights: VIRTUAL_SERVICE_WEIGHTS,
        plover_analysis: false,
    },
    Example {
        dir: "istio-hosts",
        namespace: "podinfo",
        host: "podinfo.example.com",
        name: "podinfo",
        image: "ghcr.io/stefanprodan/podinfo",
        tags: ["6.9.2", "6.10.0", "6.10.1"],
        clusters: [
            "outbound|80||podinfo-stable.podinfo.svc.cluster.local",
            "outbound|80||podinfo-canary.podinfo.svc.cluster.local",
        ],
        gateway: INGRESS_GATEWAY,
        port: GATEWAY_PORT,
        route: "virtualservice/podinfo",
        weights: VIRTUAL_SERVICE_WEIGHTS,
        plover_analysis: false,
    },
];

const VIRTUAL_SERVICE_WEIGHTS: [&str; 2] =
    ["/spec/http/0/route/0/weight", "/spec/http/0/route/1/weight"];

impl Example {
    fn route(&self) -> Route<'_> {
        Route {
            namespace: self.namespace,
            object: self.route,
            weights: self.weights,
        }
    }

    /// The route's weights as `kubectl get -o jsonpath` shows them (stable first).
    fn weights_jsonpath(&self) -> &'static str {
        if self.route.starts_with("httproute/") {
            "{.spec.rules[0].backendRefs[*].weight}"
        } else {
            "{.spec.http[0].route[*].weight}"
        }
    }

    /// The test's Canary: the example's with quick timings (and Plover's metric, where the
    /// example's templates need Istio's).
    fn canary(&self, example_canary: &str) -> serde_json::Value {
        let mut canary = quick_canary(example_canary);
        if self.plover_analysis {
            canary["spec"]["analysis"] = serde_json::json!({
                "startingStep": 1,
                "metrics": [{
                    "name": "canary-success-rate",
                    "interval": "1s",
                    "failureLimit": 0,
                    "inconclusiveLimit": 3,
                    "successCondition": "result >= 0.99",
                    "provider": {"plover": {
                        "namespace": self.namespace, "service": self.name, "metric": "successRate",
                        "revision": "{{args.canary-hash}}", "window": "10s", "minRequests": 20
                    }}
                }],
                "args": [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}]
            });
        }
        canary
    }

    fn image(&self, release: usize) -> String {
        format!("{}:{}", self.image, self.tags[release])
    }

    /// The example's app; like the real images, its responses do not say their revision:
    /// the route's tag (the examples' `revisionHeader`) is what the filter counts them by.
    fn app(&self) -> App {
        App::releases(self.name, self.image, self.tags).without_revision_header()
    }
}

/// The canary weight of the VirtualService, polled every 100 ms, with when each was first seen.
fn record_weights(
    cluster: &Cluster,
    example: &Example,
    running: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, u32)>> {
    let (namespace, route) = (example.namespace, example.route);
    let canary_weight = example.weights_jsonpath().replace("[*]", "[1]");
    let kubectl = cluster.kubectl_path();
    let kubeconfig = cluster.admin_kubeconfig.clone();
    std::thread::spawn(move || {
        let mut seen: Vec<(Instant, u32)> = Vec::new();
        while running.load(Ordering::Relaxed) {
            let out = Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", route, "-n", namespace, "-o"])
                .arg(format!("jsonpath={canary_weight}"))
                .output();
            if let Some(weight) = out
                .ok()
                .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            {
                if seen.last().map(|(_, w)| *w) != Some(weight) {
                    seen.push((Instant::now(), weight));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    })
}

#[test]
fn istio_examples_promoted_and_rolled_back_through_istiod() {
    let mesh = Mesh::start(EXAMPLES.iter().map(Example::app).collect());
    let mut controller =
        mesh.start_controller(Path::new(env!("CARGO_BIN_EXE_plover")), "istio-e2e");
    for example in &EXAMPLES {
        release(&mesh, &mut controller, example);
    }
}

/// The example installed and its two releases run with steady load through the gateway.
fn release(mesh: &Mesh, controller: &mut ChildGuard, example: &Example) {
    let cluster = &mesh.cluster;
    let (ns, name) = (example.namespace, example.name);
    let example_canary = mesh.apply_example(example.dir, ns);
    let gateway = mesh.gateway_pod(example.gateway);
    let address = SocketAddr::from((gateway.ip, example.port));
    mesh.wait_routed(address, example.host);
    let load = Load::start(address, example.host, 4, Duration::from_millis(30));

    // The filter's rules name the clusters istiod generated.
    let clusters = admin(&gateway, "/clusters");
    for cluster_name in example.clusters {
        assert!(
            clusters.contains(cluster_name),
            "{cluster_name} is not a gateway cluster\n{}",
            mesh.diagnostics()
        );
    }

    // The xDS push delay: a VirtualService write to the gateway serving the new split.
    let (stable, canary) = (
        mesh.revision_of_track(ns, "stable"),
        mesh.revision_of_track(ns, "canary"),
    );
    let delays = [
        push_delay(cluster, &load, &example.route(), (0, 100), &canary),
        push_delay(cluster, &load, &example.route(), (100, 0), &stable),
    ];
    println!(
        "{}: xDS push delay, {} write → first response from the new target: {delays:?}",
        example.dir, example.route
    );

    let minute = Duration::from_secs(60);
    let phase = || jsonpath(cluster, ns, &format!("canary/{name}"), "{.status.phase}");
    let weights = || jsonpath(cluster, ns, example.route, example.weights_jsonpath());
    let stable_image = || {
        jsonpath(
            cluster,
            ns,
            &format!("deployment/{name}"),
            "{.spec.template.spec.containers[0].image}",
        )
    };
    let state = |want_phase: &str, want_weights: &str| {
        let (p, w) = (phase(), weights());
        (p == want_phase && w == want_weights)
            .then_some(())
            .ok_or(format!("phase {p}, weights {w}"))
    };
    cluster
        .apply(&serde_json::to_string(&example.canary(&example_canary)).unwrap())
        .unwrap();
    eventually((cluster, ns), "Healthy", minute, controller, || {
        state("Healthy", "100 0")
    });

    let recording = Arc::new(AtomicBool::new(true));
    let weight_log = record_weights(cluster, example, recording.clone());
    let canary_deployment = format!("{name}-canary");

    // A healthy release: promoted.
    let started = Instant::now();
    set_image(cluster, ns, &canary_deployment, name, &example.image(1));
    eventually(
        (cluster, ns),
        "the healthy release promoted",
        3 * minute,
        controller,
        || {
            state("Healthy", "100 0")?;
            let image = stable_image();
            (image == example.image(1)).then_some(()).ok_or(image)
        },
    );
    let promoted_after = started.elapsed();
    let healthy = mesh.revision_of_track(ns, "canary");

    // A bad release: rolled back.
    let started = Instant::now();
    set_image(cluster, ns, &canary_deployment, name, &example.image(2));
    eventually(
        (cluster, ns),
        "the bad release rolled back",
        2 * minute,
        controller,
        || state("Degraded", "100 0"),
    );
    let rolled_back_after = started.elapsed();
    let bad = mesh.revision_of_track(ns, "canary");
    std::thread::sleep(Duration::from_secs(3));
    recording.store(false, Ordering::Relaxed);
    let weight_changes = weight_log.join().unwrap();
    let responses = load.stop();
    // The filter flushes every second: wait for the last batches.
    std::thread::sleep(Duration::from_millis(2500));

    let served = mesh.served.lock().unwrap();
    let (first, last) = served
        .first_and_last(&bad)
        .expect("the bad revision served requests");
    println!(
        "{}: healthy release promoted after {promoted_after:.1?}; bad release rolled back after \
         {rolled_back_after:.1?}: {:.1?} from its first request to all traffic on stable \
         ({} requests, {} of them 5xx)",
        example.dir,
        last.duration_since(first),
        served.total(&bad),
        served.errors(&bad)
    );
    assert!(
        served.errors(&bad) > 0,
        "the bad revision failed no request"
    );

    // Exact counts. The pods do not say their revision: the route's tag does, on a destination
    // while one revision serves it. Every request is counted once; none under a revision that
    // did not serve it (untagged ones — before the Canary's first write, and while a Deployment
    // rolls out — under none); both releases' canaries, which the analyses judge, exactly.
    let counts = mesh.exporter_counts();
    let served_total: u64 = served.revisions.keys().map(|r| served.total(r)).sum();
    let counted_total: u64 = counts.values().sum();
    // Counted beyond what pods served: answers Envoy gave itself (no healthy upstream while
    // pods come and go), which reached no pod.
    assert!(
        counted_total >= served_total,
        "every request a pod served is counted: {counted_total} < {served_total}: {counts:?}"
    );
    let attributed: u64 = counts
        .iter()
        .filter(|(revision, _)| !revision.is_empty())
        .map(|(_, n)| n)
        .sum();
    assert!(
        attributed <= served_total,
        "no more requests attributed to revisions than pods served: {counts:?}"
    );
    // Envoy's own answers on a tagged destination (a failed connect to one of its pods) carry
    // its tag: a revision may be counted above what its pods served by at most those.
    let own_answers = counted_total - served_total;
    for (revision, &counted) in &counts {
        if revision.is_empty() {
            continue;
        }
        assert!(
            counted <= served.total(revision) + own_answers,
            "revision {revision}: counted {counted}, served {}, Envoy's own answers \
             {own_answers}: {counts:?}",
            served.total(revision)
        );
    }
    for revision in [&healthy, &bad] {
        let counted = counts.get(revision).copied().unwrap_or(0);
        let pods = served.total(revision);
        assert!(
            pods <= counted && counted <= pods + own_answers,
            "canary revision {revision}: its pods served {pods}, the exporter counted \
             {counted} (Envoy's own answers {own_answers}): {counts:?}"
        );
    }
    println!(
        "{}: exporter counts by revision {counts:?} (\"\": untagged): {counted_total} counted, \
         {served_total} served by pods",
        example.dir
    );

    // The split the pods saw under each weight the controller wrote (from 1 s after the
    // write, the push) is that weight within binomial noise: 4 standard deviations.
    let mut checked = 0;
    for pair in weight_changes.windows(2) {
        let ((from, weight), (to, _)) = (pair[0], pair[1]);
        let window: Vec<&Response> = responses
            .iter()
            .filter(|r| r.at >= from + Duration::from_secs(1) && r.at < to)
            .collect();
        if window.len() < 100 {
            continue;
        }
        let n = window.len() as f64;
        let on_canary = window
            .iter()
            .filter(|r| served.track(&r.revision) == Some("canary"))
            .count() as f64;
        let (p, share) = (f64::from(weight) / 100.0, on_canary / n);
        let allowed = (4.0 * (p * (1.0 - p) / n).sqrt()).max(0.01);
        println!(
            "{}: weight {weight}%: {:.1}% of {n} responses from the canary",
            example.dir,
            share * 100.0
        );
        assert!(
            (share - p).abs() <= allowed,
            "weight {weight}%: canary share {share} of {n}"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "too few weights held long enough: {weight_changes:?}"
    );
}
