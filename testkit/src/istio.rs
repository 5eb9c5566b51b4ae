//! Istio's real control plane for a test cluster: istiod (`pilot-discovery`, built from the
//! pinned `istio.io/istio` module by `cargo xtask istio-tools`) against the cluster's API
//! server, and ingress gateway pods run as Istio's gateway image runs them: `pilot-agent proxy
//! router` (built from the same module), which bootstraps and starts the PyPI Envoy and
//! proxies its xDS to istiod over plaintext gRPC.
//!
//! Upstream Envoy lacks Istio's own extensions. They are turned off with istiod's own settings,
//! never by editing what it sends ([`ISTIOD_ENV`], [`MESH_CONFIG`]; the README lists them).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::Cluster;
use crate::free_port;
use crate::podnet::PodNamespace;
use crate::process::{tail, wait_until, ChildGuard};
use crate::tools::envoy;

/// istiod's feature switches, each turning off an Istio-only extension that upstream Envoy
/// would reject, or a part of istiod that needs what a test cluster does not have.
pub const ISTIOD_ENV: [(&str, &str); 7] = [
    // `istio.alpn` (Istio's ALPN override filter for mTLS upstreams).
    ("PILOT_ENABLE_ALPN_FILTER", "false"),
    // `istio.metadata_exchange` / peer metadata filters.
    ("PILOT_ENABLE_METADATA_EXCHANGE", "false"),
    // istiod's certificate authority: xDS here is plaintext, nothing asks for certificates.
    ("ENABLE_CA_SERVER", "false"),
    // No admission webhooks to patch: the test cluster has none installed.
    ("VALIDATION_WEBHOOK_CONFIG_NAME", ""),
    ("INJECTION_WEBHOOK_CONFIG_NAME", ""),
    // The namespace istiod runs in (a pod gets it from the downward API).
    ("POD_NAMESPACE", "istio-system"),
    // Gateway API: istiod watches the Gateway API CRDs the cluster has.
    ("PILOT_ENABLE_GATEWAY_API", "true"),
];

/// Mesh configuration: no auto mTLS (its transport sockets need SDS identities that plaintext
/// xDS never hands out), and no Istio telemetry filters (`istio.stats` exists only in Istio's
/// Envoy build; the mesh's default metrics provider is left empty).
pub const MESH_CONFIG: &str = "\
enableAutoMtls: false
accessLogFile: \"\"
enableTracing: false
defaultProviders:
  metrics: []
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15010
  proxyMetadata: {}
";

/// Where `cargo xtask istio-tools` put istiod and pilot-agent.
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("PLOVER_ISTIO_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::tools::workspace_root().join("target/istio-tools"));
    assert!(
        dir.join("bin/pilot-discovery").is_file(),
        "{} has no bin/pilot-discovery: run `cargo xtask istio-tools` (or `cargo xtask test`), \
         which builds istiod from tests/istio/go.mod with Go",
        dir.display()
    );
    dir
}

/// The `istio-sidecar-injector` ConfigMap as istiod's Helm chart renders it
/// (`templates/istiod-injector-configmap.yaml`), with the one template istiod needs here:
/// `kube-gateway`, which it renders into the Deployment, Service and ServiceAccount of each
/// Gateway API `Gateway` of class `istio`. `values` is the chart's default values, picked as
/// the chart picks them.
pub fn injector_config_map() -> String {
    let chart = tools_dir().join("chart");
    let read = |name: &str| {
        let path = chart.join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let values: Value = serde_yaml::from_str(&read("values.yaml")).expect("the chart's values");
    let defaults = &values["_internal_defaults_do_not_set"];
    let values = serde_json::json!({
        "global": defaults["global"],
        "sidecarInjectorWebhook": defaults["sidecarInjectorWebhook"],
        "revision": defaults["revision"],
        "pilot": {"cni": defaults["cni"], "env": defaults["env"]},
        "gateways": {
            "securityContext": defaults["gateways"]["securityContext"],
            "seccompProfile": defaults["gateways"]["seccompProfile"],
        },
    });
    let config = serde_json::json!({
        "defaultTemplates": ["sidecar"],
        "policy": "enabled",
        "alwaysInjectSelector": [],
        "neverInjectSelector": [],
        "injectedAnnotations": {},
        "template": "{{ Template_Version_And_Istio_Version_Mismatched_Check_Installation }}",
        "templates": {"kube-gateway": read("kube-gateway.yaml")},
    });
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "istio-sidecar-injector",
            "namespace": "istio-system",
            "labels": {"istio.io/rev": "default", "app.kubernetes.io/name": "istiod"},
        },
        "data": {
            "values": serde_json::to_string_pretty(&values).expect("values as JSON"),
            "config": serde_yaml::to_string(&config).expect("config as YAML"),
        },
    })
    .to_string()
}

/// A running istiod.
pub struct Istiod {
    /// Plaintext xDS, on the node's address so gateway pods reach it.
    pub xds: SocketAddr,
    /// istiod's debug and readiness HTTP server (127.0.0.1).
    pub http_port: u16,
    pub process: ChildGuard,
}

impl Istiod {
    /// Starts istiod with the cluster's admin kubeconfig and waits until it is ready
    /// (`/ready` answers 200 once its caches have synced).
    pub fn start(cluster: &Cluster, node_ip: Ipv4Addr) -> Istiod {
        let dir = cluster.dir().join("istiod");
        std::fs::create_dir_all(&dir).expect("istiod's directory");
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, MESH_CONFIG).expect("write the mesh config");
        let networks = dir.join("meshNetworks.yaml");
        std::fs::write(&networks, "networks: {}\n").expect("write the mesh networks");
        let xds = SocketAddr::from((node_ip, free_port_on(node_ip)));
        let http_port = free_port();
        let mut command = Command::new(tools_dir().join("bin/pilot-discovery"));
        command
            .current_dir(&dir)
            .arg("discovery")
            .arg(format!(
                "--kubeconfig={}",
                cluster.admin_kubeconfig.display()
            ))
            .arg(format!("--meshConfig={}", mesh.display()))
            .arg(format!("--networksConfig={}", networks.display()))
            .arg(format!("--grpcAddr={xds}"))
            .arg(format!("--httpAddr=127.0.0.1:{http_port}"))
            .arg(format!("--httpsAddr=127.0.0.1:{}", free_port()))
            .arg(format!("--secureGRPCAddr=127.0.0.1:{}", free_port()))
            .arg(format!("--monitoringAddr=127.0.0.1:{}", free_port()))
            .arg("--profile=false")
            .arg("--log_output_level=default:info")
            .envs(ISTIOD_ENV);
        let mut process = ChildGuard::spawn("istiod", command, &dir.join("istiod.log"));
        wait_until("istiod to be ready", Duration::from_secs(120), || {
            process.assert_running();
            crate::http::get_status(&format!("http://127.0.0.1:{http_port}/ready")) == Some(200)
        });
        Istiod {
            xds,
            http_port,
            process,
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.process.log_text(), lines)
    }
}

/// A port free on `ip` (bound, then released).
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("a free port on {ip}: {e}"))
}

/// The pod an ingress gateway runs as.
pub struct GatewayPod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub labels: &'a serde_json::Map<String, Value>,
    pub service_account: &'a str,
    /// The Deployment that owns it (istiod names the workload after it).
    pub deployment: &'a str,
}

/// Envoy's admin port inside a gateway pod (on the pod's loopback, as pilot-agent binds it).
pub const GATEWAY_ADMIN_PORT: u16 = 15000;

/// pilot-agent's status port in a gateway pod (`/healthz/ready`, on every address).
pub const AGENT_STATUS_PORT: u16 = 15020;

/// A gateway pod's pilot-agent and the Envoy it started: pilot-agent runs in a process group
/// of its own, killed whole when dropped (killing the agent alone would leave its Envoy).
pub struct GatewayAgent {
    pub process: ChildGuard,
}

impl Drop for GatewayAgent {
    fn drop(&mut self) {
        let group = i32::try_from(self.process.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// Starts the gateway pod's `pilot-agent proxy router`, as Istio's gateway image runs it: the
/// agent writes Envoy's bootstrap from Istio's own template (copied from the module by
/// `cargo xtask istio-tools`), starts the PyPI Envoy, and proxies xDS between Envoy and istiod.
/// Plaintext xDS (`controlPlaneAuthPolicy: NONE`) and no certificates (`FILE_MOUNTED_CERTS`:
/// nothing here asks for a workload certificate with auto mTLS off). Returns once the agent's
/// status port answers.
pub fn start_gateway(
    pod: &GatewayPod,
    netns: &PodNamespace,
    istiod: SocketAddr,
    dir: &Path,
) -> GatewayAgent {
    let tools = tools_dir();
    // The agent keeps its sockets under its working directory: a short path keeps them under
    // the 108-byte limit of a Unix socket's name.
    let work = dir.join(format!("gw-{}", netns.ip.octets()[3]));
    std::fs::create_dir_all(work.join("proxy")).expect("the gateway's directory");
    let mesh = work.join("mesh.yaml");
    std::fs::write(
        &mesh,
        format!(
            "defaultConfig:\n  discoveryAddress: {istiod}\n  controlPlaneAuthPolicy: NONE\n  \
             binaryPath: {}\n  configPath: {}\n  proxyBootstrapTemplatePath: {}\n  concurrency: 2\n",
            envoy().display(),
            work.join("proxy").display(),
            tools.join("envoy_bootstrap.json").display()
        ),
    )
    .expect("write the gateway's mesh config");
    let labels = serde_json::to_string(pod.labels).expect("labels as JSON");
    let mut command = netns.command(&tools.join("bin/pilot-agent"));
    command
        .current_dir(&work)
        .args(["proxy", "router", "--meshConfig"])
        .arg(&mesh)
        .args(["--proxyLogLevel", "warning"])
        .env("POD_NAME", pod.name)
        .env("POD_NAMESPACE", pod.namespace)
        .env("INSTANCE_IP", netns.ip.to_string())
        .env("SERVICE_ACCOUNT", pod.service_account)
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env("ISTIO_META_MESH_ID", "cluster.local")
        .env("ISTIO_META_WORKLOAD_NAME", pod.deployment)
        .env(
            "ISTIO_META_OWNER",
            format!(
                "kubernetes://apis/apps/v1/namespaces/{}/deployments/{}",
                pod.namespace, pod.deployment
            ),
        )
        .env("ISTIO_METAJSON_LABELS", labels)
        .env("FILE_MOUNTED_CERTS", "true")
        .env("CLOUD_PLATFORM", "none")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY");
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut agent = GatewayAgent {
        process: ChildGuard::spawn(
            pod.name,
            command,
            &dir.join(format!("{}-agent.log", pod.name)),
        ),
    };
    let status = format!("http://{}:{AGENT_STATUS_PORT}/healthz/ready", netns.ip);
    wait_until(
        "the gateway's pilot-agent to answer",
        Duration::from_secs(30),
        || {
            agent.process.assert_running();
            crate::http::get_status(&status).is_some()
        },
    );
    agent
}
