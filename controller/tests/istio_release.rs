//! Real Istio end to end ([`plover_testkit::mesh`]): the real API server with
//! kube-controller-manager and KWOK, istiod built from `istio.io/istio`, and the PyPI Envoy as
//! the ingress gateway pod, programmed by istiod over plaintext xDS. Plover is installed with
//! the README's commands; the example `istio-subsets` is applied as a user would; the
//! controller runs in cluster mode as its ServiceAccount.
//!
//! Checked: the WasmPlugin's rules match the clusters istiod generated; a healthy release is
//! promoted and a bad one (20% 5xx) rolled back; the exporter's counts per revision equal what
//! each revision's pods served; the weights the controller wrote are the split the pods saw.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plover_testkit::backend::Behaviour;
use plover_testkit::cluster::Cluster;
use plover_testkit::mesh::{push_delay, quick_canary, App, Load, Mesh, Response};
use support::{eventually, jsonpath, set_image};

const NS: &str = "mock-server";
const HOST: &str = "mock-server.example.com";
const IMAGE: &str = "ghcr.io/ssup2/mock-go-server";
/// Releases: a healthy image, and a bad one whose pods fail 20% of requests with a 500.
const HEALTHY: &str = "2.0.0";
const BAD: &str = "3.0.0";

fn app() -> App {
    let bad = Behaviour {
        error_share: 0.2,
        ..Behaviour::default()
    };
    App {
        label: "mock-server",
        images: vec![
            (format!("{IMAGE}:1.0.0"), Behaviour::default()),
            (format!("{IMAGE}:{HEALTHY}"), Behaviour::default()),
            (format!("{IMAGE}:{BAD}"), bad),
        ],
    }
}

/// The canary weight of the VirtualService, polled every 100 ms, with when each was first seen.
fn record_weights(
    cluster: &Cluster,
    running: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, u32)>> {
    let kubectl = cluster.kubectl_path();
    let kubeconfig = cluster.admin_kubeconfig.clone();
    std::thread::spawn(move || {
        let mut seen: Vec<(Instant, u32)> = Vec::new();
        while running.load(Ordering::Relaxed) {
            let out = Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "virtualservice/mock-server", "-n", NS, "-o"])
                .arg("jsonpath={.spec.http[0].route[1].weight}")
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
fn istio_subsets_release_promoted_and_bad_rolled_back_through_istiod() {
    let mesh = Mesh::start(app());
    let cluster = &mesh.cluster;
    let example_canary = mesh.apply_example("istio-subsets", NS);
    mesh.wait_routed(HOST);
    let load = Load::start(mesh.gateway_address(), HOST, 4, Duration::from_millis(30));

    // The filter's rules name the clusters istiod generated for the subsets.
    let clusters = mesh.gateway_admin("/clusters");
    for subset in ["stable", "canary"] {
        let name = format!("outbound|80|{subset}|mock-server.mock-server.svc.cluster.local");
        assert!(
            clusters.contains(&name),
            "{name} is not a gateway cluster\n{}",
            mesh.diagnostics()
        );
    }

    // The xDS push delay: a VirtualService write to the gateway serving the new split.
    let (stable, canary) = (
        mesh.revision_of_track(NS, "stable"),
        mesh.revision_of_track(NS, "canary"),
    );
    let delays = [
        push_delay(cluster, &load, (NS, "mock-server"), (0, 100), &canary),
        push_delay(cluster, &load, (NS, "mock-server"), (100, 0), &stable),
    ];
    println!(
        "xDS push delay, VirtualService write → first response from the new subset: {delays:?}"
    );

    let mut controller =
        mesh.start_controller(Path::new(env!("CARGO_BIN_EXE_plover")), "istio-e2e");
    let minute = Duration::from_secs(60);
    let phase = || jsonpath(cluster, NS, "canary/mock-server", "{.status.phase}");
    let weights = || {
        jsonpath(
            cluster,
            NS,
            "virtualservice/mock-server",
            "{.spec.http[0].route[*].weight}",
        )
    };
    let stable_image = || {
        jsonpath(
            cluster,
            NS,
            "deployment/mock-server",
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
        .apply(&serde_json::to_string(&quick_canary(&example_canary)).unwrap())
        .unwrap();
    eventually((cluster, NS), "Healthy", minute, &mut controller, || {
        state("Healthy", "100 0")
    });

    let recording = Arc::new(AtomicBool::new(true));
    let weight_log = record_weights(cluster, recording.clone());

    // A healthy release: promoted.
    let started = Instant::now();
    set_image(
        cluster,
        NS,
        "mock-server-canary",
        "mock-server",
        &format!("{IMAGE}:{HEALTHY}"),
    );
    eventually(
        (cluster, NS),
        "the healthy release promoted",
        3 * minute,
        &mut controller,
        || {
            state("Healthy", "100 0")?;
            let image = stable_image();
            image.ends_with(HEALTHY).then_some(()).ok_or(image)
        },
    );
    let promoted_after = started.elapsed();

    // A bad release: rolled back.
    let started = Instant::now();
    set_image(
        cluster,
        NS,
        "mock-server-canary",
        "mock-server",
        &format!("{IMAGE}:{BAD}"),
    );
    eventually(
        (cluster, NS),
        "the bad release rolled back",
        2 * minute,
        &mut controller,
        || state("Degraded", "100 0"),
    );
    let rolled_back_after = started.elapsed();
    let bad = mesh.revision_of_track(NS, "canary");
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
        "healthy release promoted after {promoted_after:.1?}; bad release rolled back after \
         {rolled_back_after:.1?}: {:.1?} from its first request to all traffic on stable \
         ({} requests, {} of them 5xx)",
        last.duration_since(first),
        served.total(&bad),
        served.errors(&bad)
    );
    assert!(
        served.errors(&bad) > 0,
        "the bad revision failed no request"
    );

    // Exact counts: the exporter's per revision are what each revision's pods served.
    let counts = mesh.exporter_counts();
    for revision in served.revisions.keys() {
        assert_eq!(
            counts.get(revision).copied().unwrap_or(0),
            served.total(revision),
            "revision {revision}: the exporter counted {counts:?}"
        );
    }
    let answered = responses.len() as u64;
    assert!(
        counts.values().sum::<u64>() >= answered,
        "{counts:?} < {answered} answers"
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
            "weight {weight}%: {:.1}% of {n} responses from the canary",
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
