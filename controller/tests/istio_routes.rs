//! Header routes and mirroring through real istiod ([`plover_testkit::mesh`]): the real API
//! server, istiod and the PyPI Envoy as the gateway pods, programmed over xDS from what the
//! controller wrote into the examples' VirtualService (`istio-hosts`) and HTTPRoute
//! (`gateway-api`).
//!
//! Checked, for each: the `setHeaderRoute` and `setMirrorRoute` steps write their routes ahead
//! of the weighted one and write nothing more while nothing changes; through the gateway, a
//! request with the header is answered by the canary and one without by stable, while a copy of
//! it reaches the canary's pods; the exporter counts the canary
//! exactly the requests clients got from it (never the copies); a step without `match` removes
//! its route, and the abort removes the rest.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use plover_testkit::http::blocking_request_with;
use plover_testkit::mesh::{App, Mesh, GATEWAY_PORT, INGRESS_GATEWAY};
use plover_testkit::process::ChildGuard;
use serde_json::json;
use support::{eventually, jsonpath, kubectl_plover, set_image};

struct Example {
    dir: &'static str,
    namespace: &'static str,
    host: &'static str,
    /// `app` label, Canary and stable Deployment name, container name.
    name: &'static str,
    image: &'static str,
    tags: [&'static str; 3],
    gateway: (&'static str, &'static str),
    port: u16,
    /// The route object, and the jsonpath of its routes' names.
    route: &'static str,
    names: &'static str,
}

const EXAMPLES: [Example; 2] = [
    Example {
        dir: "gateway-api",
        namespace: "rollouts-demo",
        host: "rollouts-demo.example.com",
        name: "rollouts-demo",
        image: "argoproj/rollouts-demo",
        tags: ["blue", "yellow", "bad-red"],
        gateway: ("rollouts-demo", "gw-istio"),
        port: 80,
        route: "httproute/rollouts-demo",
        names: "{.spec.rules[*].name}",
    },
    Example {
        dir: "istio-hosts",
        namespace: "podinfo",
        host: "podinfo.example.com",
        name: "podinfo",
        image: "ghcr.io/stefanprodan/podinfo",
        tags: ["6.9.2", "6.10.0", "6.10.1"],
        gateway: INGRESS_GATEWAY,
        port: GATEWAY_PORT,
        route: "virtualservice/podinfo",
        names: "{.spec.http[*].name}",
    },
];

const HEADER: (&str, &str) = ("x-canary", "always");
/// Requests sent each way.
const REQUESTS: u64 = 40;

#[test]
fn header_routes_and_mirroring_through_istiod() {
    let mesh = Mesh::start(
        EXAMPLES
            .iter()
            .map(|e| App::releases(e.name, e.image, e.tags).without_revision_header())
            .collect(),
    );
    let mut controller =
        mesh.start_controller(Path::new(env!("CARGO_BIN_EXE_plover")), "routes-e2e");
    for example in &EXAMPLES {
        check(&mesh, &mut controller, example);
    }
}

/// The example's Canary with the managed routes and these steps, without analysis.
fn canary(example_canary: &str) -> serde_json::Value {
    let mut canary: serde_json::Value = serde_yaml::from_str(example_canary).unwrap();
    let spec = canary["spec"].as_object_mut().unwrap();
    spec.remove("analysis");
    spec.remove("trafficCheck");
    spec.insert(
        "steps".into(),
        json!([
            {"setHeaderRoute": {"name": "canary-by-header",
                "match": [{"headerName": HEADER.0, "headerValue": {"exact": HEADER.1}}]}},
            {"setMirrorRoute": {"name": "mirror-gets", "percentage": 100,
                "match": [{"method": {"exact": "GET"}}]}},
            {"pause": {}},
            {"setMirrorRoute": {"name": "mirror-gets"}},
            {"pause": {}},
            {"setWeight": 50}
        ]),
    );
    canary["spec"]["trafficRouting"]["managedRoutes"] =
        json!([{"name": "canary-by-header"}, {"name": "mirror-gets"}]);
    canary
}

fn check(mesh: &Mesh, controller: &mut ChildGuard, example: &Example) {
    let cluster = &mesh.cluster;
    let (ns, name) = (example.namespace, example.name);
    let example_canary = mesh.apply_example(example.dir, ns);
    let gateway = mesh.gateway_pod(example.gateway);
    let address = SocketAddr::from((gateway.ip, example.port));
    mesh.wait_routed(address, example.host);
    let minute = Duration::from_secs(60);
    let phase = || jsonpath(cluster, ns, &format!("canary/{name}"), "{.status.phase}");
    let names = || jsonpath(cluster, ns, example.route, example.names);
    let state = |want_phase: &str, want_names: &str| {
        let (p, n) = (phase(), names());
        (p == want_phase && n == want_names)
            .then_some(())
            .ok_or(format!("phase {p}, routes [{n}]"))
    };
    let weighted = names();
    cluster
        .apply(&serde_json::to_string(&canary(&example_canary)).unwrap())
        .unwrap();
    eventually((cluster, ns), "Healthy", minute, controller, || {
        state("Healthy", &weighted)
    });

    // A new revision: both managed routes go first, then the pause holds.
    set_image(
        cluster,
        ns,
        &format!("{name}-canary"),
        name,
        &format!("{}:{}", example.image, example.tags[1]),
    );
    let both = format!("canary-by-header mirror-gets {weighted}")
        .trim()
        .to_owned();
    eventually(
        (cluster, ns),
        "the managed routes written",
        2 * minute,
        controller,
        || state("Paused", &both),
    );
    let (stable, canary) = (
        mesh.revision_of_track(ns, "stable"),
        mesh.revision_of_track(ns, "canary"),
    );
    let get = |headers: &[(&str, &str)]| {
        blocking_request_with(address, example.host, "/", headers)
            .map(|(status, body)| (status, body.trim().to_owned()))
    };
    // istiod pushes the routes: the header reaches the canary.
    eventually(
        (cluster, ns),
        "the header route pushed to the gateway",
        minute,
        controller,
        || match get(&[HEADER]) {
            Some((200, revision)) if revision == canary => Ok(()),
            other => Err(format!(
                "{other:?} (stable {stable}, canary {canary})\n{}",
                cluster.kubectl_ok(&["get", example.route, "-n", ns, "-o", "yaml"])
            )),
        },
    );
    // Level-triggered, yet written once: a reconcile (the annotation) finds the routes as
    // wanted, API server defaults included, and writes nothing.
    let version = || jsonpath(cluster, ns, example.route, "{.metadata.resourceVersion}");
    let before = version();
    cluster.kubectl_ok(&[
        "annotate",
        "--overwrite",
        "-n",
        ns,
        &format!("canary/{name}"),
        "plover.dev/poke=1",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(version(), before, "the route object was written again");

    let served_before = mesh.served.lock().unwrap().total(&canary);
    let counted_before = mesh.exporter_counts().get(&canary).copied().unwrap_or(0);
    for _ in 0..REQUESTS {
        assert_eq!(
            get(&[HEADER]),
            Some((200, canary.clone())),
            "with the header"
        );
        assert_eq!(get(&[]), Some((200, stable.clone())), "without it");
    }
    // Copies are sent without waiting for them; the filter flushes every second.
    std::thread::sleep(Duration::from_millis(2500));
    let served = mesh.served.lock().unwrap().total(&canary) - served_before;
    let counted = mesh.exporter_counts().get(&canary).copied().unwrap_or(0) - counted_before;
    println!(
        "{}: canary pods served {served} requests ({REQUESTS} by the header route, the rest \
         mirrored copies); the exporter counted {counted} for the canary",
        example.dir
    );
    // Every request without the header was answered by stable (above), so the canary's pods
    // served the header's requests and a copy of each of the others. istiod (like Istio since
    // 1.24, DISABLE_SHADOW_HOST_SUFFIX) sends copies with the client's host: only the count
    // tells them apart here, and the gateway's filter never sees them.
    assert_eq!(
        served,
        2 * REQUESTS,
        "the header's requests and a copy of every GET without it"
    );
    assert_eq!(
        counted, REQUESTS,
        "the canary is counted exactly the requests clients got from it, never the copies"
    );

    // The step without `match` removes the mirror route; the abort removes the header route.
    kubectl_plover(cluster, &["promote", name, "-n", ns]);
    let header_only = format!("canary-by-header {weighted}").trim().to_owned();
    eventually(
        (cluster, ns),
        "the mirror route removed",
        minute,
        controller,
        || state("Paused", &header_only),
    );
    kubectl_plover(cluster, &["abort", name, "-n", ns]);
    eventually(
        (cluster, ns),
        "the managed routes removed at abort",
        minute,
        controller,
        || state("Degraded", &weighted),
    );
    eventually(
        (cluster, ns),
        "the header answered by stable again",
        minute,
        controller,
        || match get(&[HEADER]) {
            Some((200, revision)) if revision == stable => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}
