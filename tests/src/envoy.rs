//! A real Envoy (1.40, V8) acting as the gateway: a listener whose one route splits traffic
//! over weighted upstream clusters, optionally with the Plover filter (or any Wasm module)
//! in front of the router and an exporter cluster for its callouts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::process::{port_open, wait_until, ChildGuard};
use crate::{free_port, tools};

/// Name of the route the gateway's traffic goes through (`xds.route_name`).
pub const ROUTE_NAME: &str = "app_route";

/// One upstream cluster: a revision's backend on loopback and its route weight.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub cluster: String,
    pub port: u16,
    pub weight: u32,
}

/// A Wasm HTTP filter to load.
#[derive(Clone, Debug)]
pub struct WasmFilter {
    pub module: PathBuf,
    /// Plugin configuration, handed to `on_configure` as a JSON string.
    pub configuration: String,
    pub root_id: String,
}

impl WasmFilter {
    /// The Plover filter as built by `cargo xtask wasm`, with `configuration`.
    pub fn plover(configuration: String) -> WasmFilter {
        WasmFilter { module: tools::filter_wasm(), configuration, root_id: "plover".into() }
    }
}

/// What the gateway looks like.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    pub upstreams: Vec<Upstream>,
    pub filter: Option<WasmFilter>,
    /// Cluster name and port of the exporter (or sink) the filter calls out to.
    pub exporter: Option<(String, u16)>,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// Upstream request timeout for the route.
    pub route_timeout: Duration,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            upstreams: Vec::new(),
            filter: None,
            exporter: None,
            concurrency: 2,
            route_timeout: Duration::from_secs(15),
        }
    }
}

/// A running Envoy. Killed when dropped.
pub struct Envoy {
    pub listener_port: u16,
    pub admin_port: u16,
    pub process: ChildGuard,
    pub config_path: PathBuf,
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        }
    })
}

/// The Envoy bootstrap (as JSON) for `spec` on the given ports.
pub fn bootstrap(spec: &GatewaySpec, listener_port: u16, admin_port: u16) -> Value {
    let mut http_filters = Vec::new();
    if let Some(filter) = &spec.filter {
        http_filters.push(json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": filter.root_id,
                    "root_id": filter.root_id,
                    "failure_policy": "FAIL_OPEN",
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": filter.configuration},
                    "vm_config": {
                        "vm_id": filter.root_id,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": filter.module}}
                    }
                }
            }
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut clusters: Vec<Value> = spec.upstreams.iter().map(|u| static_cluster(&u.cluster, u.port)).collect();
    if let Some((name, port)) = &spec.exporter {
        clusters.push(static_cluster(name, *port));
    }
    let weighted: Vec<Value> =
        spec.upstreams.iter().map(|u| json!({"name": u.cluster, "weight": u.weight})).collect();
    json!({
        "node": {"id": "plover-test-gateway", "cluster": "plover-test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        "route_config": {
                            "name": "local_route",
                            "virtual_hosts": [{
                                "name": "app_vhost",
                                "domains": ["*"],
                                "routes": [{
                                    "name": ROUTE_NAME,
                                    "match": {"prefix": "/"},
                                    "route": {
                                        "weighted_clusters": {"clusters": weighted},
                                        "timeout": format!("{}s", spec.route_timeout.as_secs_f64())
                                    }
                                }]
                            }]
                        },
                        "http_filters": http_filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

impl Envoy {
    /// Writes the bootstrap into `dir` and starts Envoy; returns once it is live and listening.
    pub fn start(spec: &GatewaySpec, dir: &Path) -> Envoy {
        let (listener_port, admin_port) = (free_port(), free_port());
        let config_path = dir.join(format!("envoy-{listener_port}.json"));
        let config = bootstrap(spec, listener_port, admin_port);
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).expect("serialize bootstrap"))
            .expect("write the Envoy bootstrap");
        let mut command = Command::new(tools::envoy());
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &spec.concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"]);
        let log = dir.join(format!("envoy-{listener_port}.log"));
        let process = ChildGuard::spawn("envoy", command, &log);
        let mut envoy = Envoy { listener_port, admin_port, process, config_path };
        wait_until("Envoy to become live", Duration::from_secs(30), || {
            envoy.process.assert_running();
            admin_get(admin_port, "/ready").is_some_and(|body| body.contains("LIVE")) && port_open(listener_port)
        });
        envoy
    }

    /// Body of an admin endpoint (e.g. `/stats?filter=wasm`).
    pub fn admin(&self, path: &str) -> String {
        admin_get(self.admin_port, path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.listener_port, path)
    }

    /// Envoy's log so far (the filter logs there).
    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

/// A blocking GET against Envoy's admin interface.
pub fn admin_get(port: u16, path: &str) -> Option<String> {
    let mut stream =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // Envoy's admin answers HTTP/1.0 with 426 Upgrade Required.
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}
