//! Istio's real control plane for a test cluster: istiod (`pilot-discovery`, built from the
//! pinned `istio.io/istio` module by `cargo xtask istio-tools`) against the cluster's API
//! server, and the PyPI Envoy as an ingress gateway pod connected to it over plaintext xDS.
//!
//! Upstream Envoy lacks Istio's own extensions. They are turned off with istiod's own settings,
//! never by editing what it sends ([`ISTIOD_ENV`], [`MESH_CONFIG`]; the README lists them).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::free_port;
use crate::podnet::PodNamespace;
use crate::process::{tail, wait_until, ChildGuard};
use crate::tools::envoy;

/// The Istio version the gateway's Envoy reports to istiod (the built istiod's own, 1.31):
/// istiod generates configuration for the proxy version it is told.
pub const PROXY_ISTIO_VERSION: &str = "1.31.0";

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

    /// istiod's debug endpoint, e.g. `/debug/configz` or `/debug/syncz`.
    pub fn debug(&self, path: &str) -> String {
        crate::http::get_text(&format!("http://127.0.0.1:{}{path}", self.http_port))
            .unwrap_or_default()
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

/// Envoy's admin port inside a gateway pod.
pub const GATEWAY_ADMIN_PORT: u16 = 15000;

/// The bootstrap pilot-agent would write for a `router` proxy: the node identity and metadata
/// istiod keys the gateway's configuration on, and ADS to istiod over plaintext gRPC.
pub fn gateway_bootstrap(pod: &GatewayPod, ip: Ipv4Addr, istiod: SocketAddr) -> Value {
    let ns = pod.namespace;
    json!({
        "node": {
            "id": format!("router~{ip}~{}.{ns}~{ns}.svc.cluster.local", pod.name),
            "cluster": format!("{}.{ns}", pod.deployment),
            "metadata": {
                "ISTIO_VERSION": PROXY_ISTIO_VERSION,
                "CLUSTER_ID": "Kubernetes",
                "NAMESPACE": ns,
                "NAME": pod.name,
                "LABELS": pod.labels,
                "INSTANCE_IPS": ip.to_string(),
                "MESH_ID": "cluster.local",
                "SERVICE_ACCOUNT": pod.service_account,
                "WORKLOAD_NAME": pod.deployment,
                "OWNER": format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{}", pod.deployment),
                "PILOT_SAN": [],
            }
        },
        "admin": {"address": {"socket_address": {"address": ip.to_string(), "port_value": GATEWAY_ADMIN_PORT}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": istiod.ip().to_string(), "port_value": istiod.port()
                    }}}}]}]
                }
            }]
        }
    })
}

/// Starts the gateway's Envoy in its pod's namespace with [`gateway_bootstrap`]; returns once
/// its admin interface answers (its listeners come from istiod after that).
pub fn start_gateway(
    pod: &GatewayPod,
    netns: &PodNamespace,
    istiod: SocketAddr,
    dir: &Path,
) -> ChildGuard {
    let config = dir.join(format!("{}-bootstrap.json", pod.name));
    std::fs::write(
        &config,
        serde_json::to_vec_pretty(&gateway_bootstrap(pod, netns.ip, istiod))
            .expect("serialize the bootstrap"),
    )
    .expect("write the gateway's bootstrap");
    let mut command = netns.command(&envoy());
    command
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", "2", "--disable-hot-restart"])
        .args(["--log-level", "warn"]);
    let mut process = ChildGuard::spawn(
        pod.name,
        command,
        &dir.join(format!("{}-envoy.log", pod.name)),
    );
    let admin = format!("http://{}:{GATEWAY_ADMIN_PORT}/ready", netns.ip);
    wait_until(
        "the gateway's Envoy to answer",
        Duration::from_secs(30),
        || {
            process.assert_running();
            crate::http::get_status(&admin).is_some()
        },
    );
    process
}
