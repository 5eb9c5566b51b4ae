//! Real Istio end to end: the real API server (with kube-controller-manager and KWOK),
//! istiod built from `istio.io/istio`, and the PyPI Envoy as the ingress gateway pod, which
//! istiod programs over plaintext xDS. Plover is installed with the README's commands
//! (overlay `istio-ingress`, the `wasm-https` component pointing the WasmPlugin at the built
//! module by a `file://` URL); the example `istio-subsets` is applied as a user would; the
//! controller runs in cluster mode as its ServiceAccount.
//!
//! Pods run for real where traffic reaches them: the gateway, the exporter and the app's
//! revisions each get a network namespace with the address KWOK gave the pod
//! (`plover_testkit::kubelet`), so the gateway reaches the revisions as the endpoints istiod
//! read from the EndpointSlices, through the subsets' labels. Checked: a healthy release is
//! promoted and a bad one (20% 5xx) rolled back; the WasmPlugin's rules matched the clusters
//! istiod generated; the exporter's counts per revision equal what each revision served; the
//! weights the controller wrote are the split the backends saw.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plover_testkit::backend::{Backend, Behaviour};
use plover_testkit::cluster::{Cluster, CONTROLLER_NAMESPACE};
use plover_testkit::istio::{start_gateway, GatewayPod, Istiod, GATEWAY_ADMIN_PORT};
use plover_testkit::kubelet::{Kubelet, Pod, Running, Runtime};
use plover_testkit::podnet::{PodNamespace, PodNetwork};
use plover_testkit::process::{tail, wait_until, ChildGuard};
use plover_testkit::prometheus::{scrape_config, Prometheus};
use plover_testkit::tools::{filter_wasm, workspace_root};
use serde_json::{json, Value};
use support::{controller_command, eventually, jsonpath, set_image};

const NS: &str = "mock-server";
const HOST: &str = "mock-server.example.com";
const TOKEN: &str = "istio-e2e-ingest-token-0123456789abcdef";
/// The example's app image, and the releases' (the tag decides how the revision behaves).
const IMAGE: &str = "ghcr.io/ssup2/mock-go-server";
const HEALTHY_TAGS: [&str; 2] = ["1.0.0", "2.0.0"];
const BAD_TAG: &str = "3.0.0";
const BAD_ERROR_SHARE: f64 = 0.2;

/// What each revision served, the ground truth: pod-template-hash → (track, backends).
#[derive(Default)]
struct Served {
    revisions: BTreeMap<String, (String, Vec<Arc<Backend>>)>,
}

impl Served {
    fn total(&self, revision: &str) -> u64 {
        self.revisions
            .get(revision)
            .map(|(_, backends)| backends.iter().map(|b| b.served()).sum())
            .unwrap_or(0)
    }

    fn track(&self, revision: &str) -> Option<String> {
        self.revisions.get(revision).map(|(track, _)| track.clone())
    }
}

/// A revision's pod: its backend stops when the pod goes away (its counts stay in `Served`).
struct AppPod(Arc<Backend>);

impl Drop for AppPod {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The exporter's pod: `plover_exporter::run` with the container's own arguments, on a
/// listener in the pod's namespace; stopped when the pod goes away.
struct ExporterPod {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ExporterPod {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The pods' addresses the test needs once they run.
#[derive(Default)]
struct Addresses {
    gateway: Option<Ipv4Addr>,
    exporter: Option<Ipv4Addr>,
}

/// The test's kubelet runtime: the gateway as Envoy, the exporter in-process, the app's
/// revisions as backends behaving as their image tag says; every other pod (the controller's
/// Deployment: the test runs the controller itself, as a process on the host) stays an API
/// object.
fn runtime(
    cluster: &Cluster,
    istiod: SocketAddr,
    served: Arc<Mutex<Served>>,
    addresses: Arc<Mutex<Addresses>>,
) -> Runtime {
    let dir = cluster.dir().join("pods");
    std::fs::create_dir_all(&dir).unwrap();
    let kubectl = cluster.kubectl_path();
    let kubeconfig = cluster.admin_kubeconfig.clone();
    Box::new(
        move |pod: &Pod, netns: &PodNamespace| -> Result<Option<Running>, String> {
            if pod.label("istio") == Some("ingressgateway") {
                let labels = pod.object["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let gateway = GatewayPod {
                    name: &pod.name,
                    namespace: &pod.namespace,
                    labels: &labels,
                    service_account: pod.object["spec"]["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default"),
                    deployment: "istio-ingressgateway",
                };
                let envoy = start_gateway(&gateway, netns, istiod, &dir);
                addresses.lock().unwrap().gateway = Some(pod.ip);
                return Ok(Some(Box::new(envoy)));
            }
            if pod.label("app.kubernetes.io/name") == Some("plover-exporter") {
                let exporter = start_exporter(pod, netns, &dir, &kubectl, &kubeconfig)?;
                addresses.lock().unwrap().exporter = Some(pod.ip);
                return Ok(Some(Box::new(exporter)));
            }
            if pod.label("app") == Some("mock-server") {
                let image = pod.container()["image"].as_str().unwrap_or_default();
                let behaviour = match image.rsplit_once(':') {
                    Some((IMAGE, tag)) if HEALTHY_TAGS.contains(&tag) => Behaviour::default(),
                    Some((IMAGE, BAD_TAG)) => Behaviour {
                        error_share: BAD_ERROR_SHARE,
                        ..Behaviour::default()
                    },
                    _ => return Err(format!("no behaviour for image {image}")),
                };
                let port = pod.container()["ports"][0]["containerPort"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or("the container has no port")?;
                let revision = pod
                    .label("pod-template-hash")
                    .ok_or("no pod-template-hash label")?
                    .to_owned();
                let track = pod.label("track").unwrap_or_default().to_owned();
                let backend = Arc::new(Backend::serve(netns.bind(port)?, &revision, behaviour));
                served
                    .lock()
                    .unwrap()
                    .revisions
                    .entry(revision)
                    .or_insert_with(|| (track, Vec::new()))
                    .1
                    .push(backend.clone());
                return Ok(Some(Box::new(AppPod(backend))));
            }
            Ok(None)
        },
    )
}

/// The exporter as its pod runs it: the container's arguments, with the Secret volume the
/// token file comes from written out under the pod's directory.
fn start_exporter(
    pod: &Pod,
    netns: &PodNamespace,
    dir: &Path,
    kubectl: &Path,
    kubeconfig: &Path,
) -> Result<ExporterPod, String> {
    let container = pod.container();
    let mut args: Vec<String> = container["args"]
        .as_array()
        .ok_or("the exporter container has no args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    for mount in container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let mount_path = mount["mountPath"].as_str().unwrap_or_default();
        let volume = pod.object["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
            .ok_or("a mount without its volume")?;
        let secret = volume["secret"]["secretName"]
            .as_str()
            .ok_or("only Secret volumes are mounted")?;
        let out = Command::new(kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["get", "secret", secret, "-n", &pod.namespace, "-o", "json"])
            .output()
            .map_err(|e| e.to_string())?;
        let object: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("secret {secret}: {e}"))?;
        let local = dir.join(&pod.name).join(mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&local).map_err(|e| e.to_string())?;
        for item in volume["secret"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let key = item["key"].as_str().unwrap_or_default();
            let encoded = object["data"][key].as_str().ok_or("a missing Secret key")?;
            let value = base64_decode(encoded)?;
            let path = item["path"].as_str().unwrap_or(key);
            std::fs::write(local.join(path), value).map_err(|e| e.to_string())?;
        }
        for arg in &mut args {
            *arg = arg.replace(mount_path, &local.display().to_string());
        }
    }
    let mut argv = vec!["plover-exporter".to_owned()];
    argv.extend(args);
    let config = plover_exporter::Config::parse_from(&argv)
        .map_err(|e| format!("the exporter's arguments {argv:?}: {e}"))?;
    let listener = netns.bind(config.listen.port())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("exporter-{}", pod.name))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the exporter's runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                if let Err(e) = plover_exporter::run(config, listener, async {
                    let _ = stopped.await;
                })
                .await
                {
                    eprintln!("exporter stopped: {e}");
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(ExporterPod {
        stop: Some(stop),
        thread: Some(thread),
    })
}

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .map_err(|e| e.to_string())?;
    Ok(out.stdout)
}

/// One response the load saw: when, from which revision, with which status.
struct Response {
    at: Instant,
    revision: String,
    status: u16,
}

/// Steady load on the gateway pod's port 8080 with the example's host: `workers` clients,
/// each a request every `pause`, recording every response.
struct Load {
    running: Arc<AtomicBool>,
    responses: Arc<Mutex<Vec<Response>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(gateway: Ipv4Addr, workers: usize, pause: Duration) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let responses = Arc::new(Mutex::new(Vec::new()));
        let address = SocketAddr::from((gateway, 8080));
        let threads = (0..workers)
            .map(|_| {
                let (running, responses) = (running.clone(), responses.clone());
                std::thread::spawn(move || {
                    while running.load(Ordering::Relaxed) {
                        if let Some((status, body)) =
                            plover_testkit::http::blocking_request(address, HOST, "/")
                        {
                            responses.lock().unwrap().push(Response {
                                at: Instant::now(),
                                revision: body.trim().to_owned(),
                                status,
                            });
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            running,
            responses,
            threads,
        }
    }

    fn since(&self, from: Instant) -> Vec<(Instant, String, u16)> {
        self.responses
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.at >= from)
            .map(|r| (r.at, r.revision.clone(), r.status))
            .collect()
    }

    fn stop(mut self) -> Vec<Response> {
        self.running.store(false, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.responses.lock().unwrap())
    }
}

/// The canary weight of the VirtualService, polled every 100 ms with the time it was seen.
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

/// `kubectl kustomize` of a user's overlay as the README writes it (the `istio-ingress`
/// overlay, the `wasm-https` component), with the README's `sed` replacements: the token, and
/// the module's URL (here `file://`, which istiod hands to Envoy as a local file) and sha256.
fn render_install(cluster: &Cluster) -> String {
    let root = workspace_root();
    let overlay = cluster.dir().join("my-plover");
    std::fs::create_dir_all(&overlay).unwrap();
    // Kustomize takes only relative paths: up to `/`, then down to the repository.
    let up = "../".repeat(overlay.components().count() - 1);
    let relative = |dir: &str| {
        format!(
            "{up}{}",
            root.join(dir).display().to_string().trim_start_matches('/')
        )
    };
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "resources: [{}]\ncomponents: [{}]\n",
            relative("manifests/overlays/istio-ingress"),
            relative("manifests/components/wasm-https")
        ),
    )
    .unwrap();
    let wasm = filter_wasm();
    let sha = Command::new("sha256sum").arg(&wasm).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    cluster
        .kubectl_ok(&["kustomize", &overlay.display().to_string()])
        .replace("PLOVER_INGEST_TOKEN", TOKEN)
        .replace("PLOVER_WASM_URL", &format!("file://{}", wasm.display()))
        .replace("PLOVER_WASM_SHA256", &sha)
}

/// The example's Canary with the test's timings: shorter steps and windows, and without the
/// `success-rate` step, whose query reads `istio_requests_total` — a metric only Istio's own
/// Envoy build (its `istio.stats` extension) produces, which upstream Envoy has not.
fn canary(example: &str) -> Value {
    let mut canary: Value = serde_yaml::from_str(example).unwrap();
    let spec = &mut canary["spec"];
    spec["steps"] = json!([
        {"setWeight": 20},
        {"pause": {"duration": "15s"}},
        {"setWeight": 50},
        {"pause": {"duration": "15s"}},
        {"setWeight": 100},
        {"pause": {"duration": "5s"}}
    ]);
    spec["trafficCheck"]["window"] = json!("5s");
    spec["trafficCheck"]["minRequests"] = json!(50);
    spec["trafficCheck"]["tolerance"] = json!(10);
    for metric in spec["analysis"]["metrics"].as_array_mut().unwrap() {
        metric["interval"] = json!("1s");
        metric["provider"]["plover"]["window"] = json!("10s");
        metric["provider"]["plover"]["minRequests"] = json!(20);
    }
    canary
}

/// The exporter's cumulative request counts by revision (its `/metrics`).
fn exporter_counts(exporter: Ipv4Addr) -> BTreeMap<String, u64> {
    let text = plover_testkit::http::get_text(&format!("http://{exporter}:9464/metrics"))
        .unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("plover_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").unwrap();
        let revision = labels
            .split("revision=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        *counts.entry(revision).or_insert(0) += value.trim().parse::<f64>().unwrap() as u64;
    }
    counts
}

/// What istiod and the gateway say: for failures.
fn diagnostics(cluster: &Cluster, istiod: &Istiod, gateway: Ipv4Addr) -> String {
    let admin = |path: &str| {
        plover_testkit::http::get_text(&format!("http://{gateway}:{GATEWAY_ADMIN_PORT}{path}"))
            .unwrap_or_default()
    };
    let envoy_logs: String = std::fs::read_dir(cluster.dir().join("pods"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with("-envoy.log"))
                .map(|e| tail(&std::fs::read_to_string(e.path()).unwrap_or_default(), 30))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "--- istiod (last lines) ---\n{}\n--- gateway Envoy log ---\n{envoy_logs}\n\
         --- listeners ---\n{}\n--- clusters (names) ---\n{}\n--- pods ---\n{}",
        istiod.log_tail(40),
        admin("/listeners"),
        admin("/clusters")
            .lines()
            .filter(|l| l.ends_with("::observability_name::") || l.contains("::cx_active::"))
            .map(|l| l.split("::").next().unwrap_or_default())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&cluster.kubectl(&["get", "pods", "-A", "-o", "wide"]).stdout)
    )
}

#[test]
fn istio_subsets_release_promoted_and_bad_rolled_back_through_istiod() {
    let network = Arc::new(PodNetwork::create());
    let cluster = Cluster::start_on(&network);
    cluster.install_prerequisites();
    let istiod = Istiod::start(&cluster, network.node_ip());
    cluster
        .apply(include_str!("fixtures/istio-ingressgateway.yaml"))
        .unwrap();
    cluster.apply(&render_install(&cluster)).unwrap();
    cluster.wait_established(&["crd/canaries.plover.dev"]);

    let served = Arc::new(Mutex::new(Served::default()));
    let addresses = Arc::new(Mutex::new(Addresses::default()));
    let kubelet = Kubelet::start(
        cluster.kubectl_path(),
        cluster.admin_kubeconfig.clone(),
        network.clone(),
        runtime(&cluster, istiod.xds, served.clone(), addresses.clone()),
    );
    let started = |what: &str, f: &dyn Fn(&Addresses) -> Option<Ipv4Addr>| {
        let mut ip = None;
        wait_until(what, Duration::from_secs(90), || {
            ip = f(&addresses.lock().unwrap());
            ip.is_some() || {
                assert!(
                    kubelet.errors().is_empty(),
                    "kubelet: {:?}",
                    kubelet.errors()
                );
                false
            }
        });
        ip.unwrap()
    };
    let gateway = started("the gateway pod", &|a| a.gateway);
    let exporter = started("the exporter pod", &|a| a.exporter);

    // Prometheus where the example's templates look for it, scraping the exporter pod.
    let prometheus_ip = Ipv4Addr::new(
        127,
        network.node_ip().octets()[1],
        network.node_ip().octets()[2],
        9,
    );
    let prometheus_dir = cluster.dir().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let _prometheus = Prometheus::start_on(
        &prometheus_dir,
        &scrape_config("plover-exporter", &[format!("{exporter}:9464")]),
        &prometheus_dir.join("data"),
        &[],
        SocketAddr::from((prometheus_ip, 9090)),
    )
    .unwrap();

    // The example as a user applies it, but its Canary, which comes once the controller runs.
    let rendered = cluster.kustomize(&workspace_root().join("manifests/examples/istio-subsets"));
    let (canary_doc, rest): (Vec<&str>, Vec<&str>) = rendered
        .split("\n---\n")
        .partition(|doc| doc.contains("\nkind: Canary"));
    cluster.apply(&rest.join("\n---\n")).unwrap();
    cluster.kubectl_ok(&[
        "-n",
        NS,
        "rollout",
        "status",
        "--timeout=90s",
        "deployment/mock-server",
        "deployment/mock-server-canary",
    ]);

    // Traffic through the gateway once istiod has programmed it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer =
            plover_testkit::http::blocking_request(SocketAddr::from((gateway, 8080)), HOST, "/");
        if answer.as_ref().is_some_and(|(status, _)| *status == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway does not route {HOST} (last answer {answer:?})\n{}",
            diagnostics(&cluster, &istiod, gateway)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let load = Load::start(gateway, 4, Duration::from_millis(30));

    // The filter's rules matched the clusters istiod generated: their names are in Envoy's.
    let clusters =
        plover_testkit::http::get_text(&format!("http://{gateway}:{GATEWAY_ADMIN_PORT}/clusters"))
            .unwrap();
    for subset in ["stable", "canary"] {
        let name = format!("outbound|80|{subset}|mock-server.mock-server.svc.cluster.local");
        assert!(
            clusters.contains(&name),
            "{name} not in Envoy's clusters:\n{}",
            tail(&clusters, 40)
        );
    }

    // The xDS push delay: a VirtualService write to Envoy serving the new split.
    let revision_of = |track: &str| {
        jsonpath(
            &cluster,
            NS,
            "replicasets",
            &format!(
            "{{.items[?(@.metadata.labels.track==\"{track}\")].metadata.labels.pod-template-hash}}"
        ),
        )
    };
    let (stable_rev, canary_rev) = (revision_of("stable"), revision_of("canary"));
    let mut push_delays = Vec::new();
    for (weights, target) in [("[0,100]", &canary_rev), ("[100,0]", &stable_rev)] {
        let [stable_w, canary_w]: [u32; 2] = serde_json::from_str(weights).unwrap();
        let patch = format!(
            r#"[{{"op":"replace","path":"/spec/http/0/route/0/weight","value":{stable_w}}},{{"op":"replace","path":"/spec/http/0/route/1/weight","value":{canary_w}}}]"#
        );
        let written = Instant::now();
        cluster.kubectl_ok(&[
            "patch",
            "virtualservice/mock-server",
            "-n",
            NS,
            "--type=json",
            "-p",
            &patch,
        ]);
        wait_until(
            "Envoy to serve the new split",
            Duration::from_secs(30),
            || {
                let recent = load.since(written + Duration::from_millis(1));
                recent.len() >= 10 && recent.iter().rev().take(10).all(|(_, r, _)| r == target)
            },
        );
        let first = load
            .since(written)
            .iter()
            .find(|(_, r, _)| r == target)
            .map(|(at, _, _)| at.duration_since(written))
            .unwrap();
        push_delays.push(first);
    }
    println!("xDS push delay (VirtualService write → first response from the new target): {push_delays:?}");

    // The controller, in cluster mode as its ServiceAccount; the cluster's service names
    // resolve as cluster DNS would resolve them for it.
    let hosts = cluster.dir().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1 localhost\n{exporter} plover-exporter.plover-system.svc.cluster.local\n\
             {prometheus_ip} prometheus.istio-system.svc.cluster.local\n"
        ),
    )
    .unwrap();
    // The exporter address the controller Deployment's pods are given.
    let exporter_address = jsonpath(
        &cluster,
        CONTROLLER_NAMESPACE,
        "deployment/plover-controller",
        "{.spec.template.spec.containers[0].env[?(@.name==\"PLOVER_EXPORTER_ADDRESS\")].value}",
    );
    let mut command = controller_command(&cluster, "istio-e2e", &[]);
    command.env("PLOVER_EXPORTER_ADDRESS", exporter_address);
    let command = plover_testkit::podnet::with_hosts_file(command, &hosts);
    let mut controller =
        ChildGuard::spawn("controller", command, &cluster.dir().join("controller.log"));
    let minute = Duration::from_secs(60);
    let phase = || jsonpath(&cluster, NS, "canary/mock-server", "{.status.phase}");
    let weights = || {
        jsonpath(
            &cluster,
            NS,
            "virtualservice/mock-server",
            "{.spec.http[0].route[*].weight}",
        )
    };
    let stable_image = || {
        jsonpath(
            &cluster,
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
        .apply(&serde_json::to_string(&canary(canary_doc[0])).unwrap())
        .unwrap();
    eventually((&cluster, NS), "Healthy", minute, &mut controller, || {
        state("Healthy", "100 0")
    });

    let recording = Arc::new(AtomicBool::new(true));
    let weight_log = record_weights(&cluster, recording.clone());

    // A healthy release: promoted.
    let release_started = Instant::now();
    set_image(
        &cluster,
        NS,
        "mock-server-canary",
        "mock-server",
        &format!("{IMAGE}:{}", HEALTHY_TAGS[1]),
    );
    eventually(
        (&cluster, NS),
        "the healthy release promoted",
        3 * minute,
        &mut controller,
        || {
            state("Healthy", "100 0")?;
            let image = stable_image();
            (image.ends_with(HEALTHY_TAGS[1]))
                .then_some(())
                .ok_or(image)
        },
    );
    let promoted_after = release_started.elapsed();

    // A bad release: rolled back.
    let bad_started = Instant::now();
    set_image(
        &cluster,
        NS,
        "mock-server-canary",
        "mock-server",
        &format!("{IMAGE}:{BAD_TAG}"),
    );
    eventually(
        (&cluster, NS),
        "the bad release rolled back",
        2 * minute,
        &mut controller,
        || state("Degraded", "100 0"),
    );
    let rolled_back_after = bad_started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    recording.store(false, Ordering::Relaxed);
    let weight_changes = weight_log.join().unwrap();
    let responses = load.stop();
    // The filters flush every second: wait for the last batch.
    std::thread::sleep(Duration::from_millis(2500));

    // The bad revision: from its first request through the gateway to all traffic on stable.
    let bad_revision = {
        let served = served.lock().unwrap();
        served
            .revisions
            .iter()
            .find(|(_, (_, backends))| {
                backends
                    .iter()
                    .any(|b| b.served_by_status().contains_key(&500))
            })
            .map(|(revision, _)| revision.clone())
            .expect("the bad revision served errors")
    };
    let bad: Vec<&Response> = responses
        .iter()
        .filter(|r| r.revision == bad_revision)
        .collect();
    let rollback = bad
        .last()
        .unwrap()
        .at
        .duration_since(bad.first().unwrap().at);
    println!(
        "healthy release promoted after {promoted_after:.1?}; bad release rolled back after \
         {rolled_back_after:.1?}, {rollback:.1?} from its first request to all traffic on stable \
         ({} bad-revision responses, {} of them 5xx)",
        bad.len(),
        bad.iter().filter(|r| r.status >= 500).count()
    );

    // Exact counts: the exporter's per revision equal what each revision's backends served.
    let counts = exporter_counts(exporter);
    let served = served.lock().unwrap();
    for revision in served.revisions.keys() {
        assert_eq!(
            counts.get(revision).copied().unwrap_or(0),
            served.total(revision),
            "revision {revision}: exporter {counts:?}"
        );
    }
    assert!(
        counts.values().sum::<u64>() >= responses.len() as u64,
        "{counts:?} vs {} responses",
        responses.len()
    );

    // The split the backends saw, per weight the controller wrote (after a 1 s allowance for
    // the push), is the weight within binomial noise (4 standard deviations, at least 3 points).
    for pair in weight_changes.windows(2) {
        let ((from, weight), (to, _)) = (pair[0], pair[1]);
        let window: Vec<&Response> = responses
            .iter()
            .filter(|r| r.at >= from + Duration::from_secs(1) && r.at < to)
            .collect();
        if window.len() < 100 {
            continue;
        }
        let canary = window
            .iter()
            .filter(|r| served.track(&r.revision).as_deref() == Some("canary"))
            .count() as f64;
        let n = window.len() as f64;
        let p = f64::from(weight) / 100.0;
        let share = canary / n;
        let allowed = (4.0 * (p * (1.0 - p) / n).sqrt()).max(0.03);
        println!(
            "weight {weight}%: canary share {:.1}% of {n} responses",
            share * 100.0
        );
        assert!(
            (share - p).abs() <= allowed,
            "weight {weight}: canary share {share} of {n}"
        );
    }
    drop(kubelet);
}
