//! A real Envoy (1.40, V8) acting as the gateway: a listener whose one route splits traffic
//! over weighted upstream clusters, optionally with the Plover filter (or any Wasm module)
//! in front of the router and an exporter cluster for its callouts.

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
    /// The revision tag the route sets on requests to this cluster and on their responses
    /// ([`ROUTE_TAG_HEADER`], replacing any value the client or the backend sent), as
    /// Plover's routers write it beside the weights; `None`: no tag.
    pub tag: Option<String>,
}

/// The cluster of the gRPC access-log receiver ([`GatewaySpec::grpc_access_log`]).
const ACCESS_LOG_CLUSTER: &str = "access_log_service";

/// The header of the route tags ([`Upstream::tag`]).
pub const ROUTE_TAG_HEADER: &str = "x-plover-revision";

/// A Wasm HTTP filter to load.
#[derive(Clone, Debug)]
pub struct WasmFilter {
    pub module: PathBuf,
    /// Plugin configuration, handed to `on_configure` as a JSON string.
    pub configuration: String,
    pub root_id: String,
}

/// Plover filter configuration for the end-to-end tests: clusters `stable` and `canary` are
/// revisions `v1` and `v2` of `demo/app`; the exporter is the cluster `plover_exporter`.
/// `extra` is spliced in as further top-level fields (`, "k": v`).
pub fn plover_test_config(token: &str, extra: &str) -> String {
    format!(
        r#"{{
            "gateway_id": "e2e-gateway",
            "exporter": {{"cluster": "plover_exporter", "token": "{token}"}},
            "rules": [
                {{"match": {{"exact": "stable"}}, "namespace": "demo", "service": "app", "role": "stable", "revision": "v1"}},
                {{"match": {{"exact": "canary"}}, "namespace": "demo", "service": "app", "role": "canary", "revision": "v2"}}
            ]{extra}
        }}"#
    )
}

impl WasmFilter {
    /// The Plover filter as built by `cargo xtask wasm`, with `configuration`.
    pub fn plover(configuration: String) -> WasmFilter {
        WasmFilter {
            module: tools::filter_wasm(),
            configuration,
            root_id: "plover".into(),
        }
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
    /// A Wasm module loaded as an access logger (`envoy.access_loggers.wasm`) instead of (or
    /// beside) an HTTP filter: Plover's filter counts each request from its root context then.
    pub access_logger: Option<WasmFilter>,
    /// Port of a gRPC access-log receiver ([`crate::access_log`]) to stream every request's
    /// access-log entry to (Envoy's `http_grpc` access logger).
    pub grpc_access_log: Option<u16>,
}

impl Default for GatewaySpec {
    fn default() -> Self {
        GatewaySpec {
            upstreams: Vec::new(),
            filter: None,
            exporter: None,
            concurrency: 2,
            route_timeout: Duration::from_secs(15),
            grpc_access_log: None,
            access_logger: None,
        }
    }
}

impl GatewaySpec {
    /// Clusters `stable` and `canary` weighted 70/30, with Plover's test configuration
    /// ([`plover_test_config`], ingest `token`) reporting to the exporter (or sink) on
    /// `exporter_port`: the gateway of the measurement-accuracy test and bench.
    pub fn plover_seventy_thirty(
        stable_port: u16,
        canary_port: u16,
        token: &str,
        exporter_port: u16,
    ) -> GatewaySpec {
        GatewaySpec {
            upstreams: vec![
                Upstream {
                    cluster: "stable".into(),
                    port: stable_port,
                    weight: 70,
                    tag: Some("stable/v1".into()),
                },
                Upstream {
                    cluster: "canary".into(),
                    port: canary_port,
                    weight: 30,
                    tag: Some("canary/v2".into()),
                },
            ],
            filter: Some(WasmFilter::plover(plover_test_config(token, ""))),
            exporter: Some(("plover_exporter".into(), exporter_port)),
            ..GatewaySpec::default()
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

/// The `envoy.filters.http.wasm` typed config that loads `filter`.
fn wasm_filter_config(filter: &WasmFilter) -> Value {
    json!({
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
    })
}

/// Where a gateway started by [`Envoy::start_with_filter_file`] reads its Wasm filter from
/// (extension config discovery from a watched file): writing a new filter replaces the plugin,
/// as Istio does when a `WasmPlugin` changes.
pub struct FilterFile {
    file: PathBuf,
    watched_dir: PathBuf,
}

/// Name of the file-discovered filter.
const DISCOVERED_FILTER: &str = "plover";

impl FilterFile {
    /// Writes `filter` as version `version` and moves it into place (Envoy reloads on a move).
    pub fn write(&self, filter: &WasmFilter, version: u32) {
        let mut typed_config = wasm_filter_config(filter);
        typed_config["config"]["name"] = json!(format!("{}-{version}", filter.root_id));
        let document = json!({
            "version_info": version.to_string(),
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": DISCOVERED_FILTER,
                "typed_config": typed_config
            }]
        });
        let staging = self.watched_dir.join(format!(".filter-{version}.json"));
        std::fs::write(
            &staging,
            serde_json::to_vec_pretty(&document).expect("serialize ECDS"),
        )
        .expect("write the filter file");
        std::fs::rename(&staging, &self.file).expect("move the filter file into place");
    }
}

/// The Envoy bootstrap (as JSON) for `spec` on the given ports.
pub fn bootstrap(spec: &GatewaySpec, listener_port: u16, admin_port: u16) -> Value {
    let mut http_filters = Vec::new();
    if let Some(filter) = &spec.filter {
        http_filters.push(json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": wasm_filter_config(filter)
        }));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut clusters: Vec<Value> = spec
        .upstreams
        .iter()
        .map(|u| static_cluster(&u.cluster, u.port))
        .collect();
    if let Some((name, port)) = &spec.exporter {
        clusters.push(static_cluster(name, *port));
    }
    let mut access_log = Vec::new();
    if let Some(logger) = &spec.access_logger {
        access_log.push(json!({
            "name": "envoy.access_loggers.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.wasm.v3.WasmAccessLog",
                "config": wasm_filter_config(logger)["config"]
            }
        }));
    }
    if let Some(port) = spec.grpc_access_log {
        let mut cluster = static_cluster(ACCESS_LOG_CLUSTER, port);
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
        clusters.push(cluster);
        access_log.push(json!({
            "name": "envoy.access_loggers.http_grpc",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                "common_config": {
                    "log_name": "plover-bench",
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": ACCESS_LOG_CLUSTER}}
                }
            }
        }));
    }
    let weighted: Vec<Value> = spec
        .upstreams
        .iter()
        .map(|u| {
            let mut cluster = json!({"name": u.cluster, "weight": u.weight});
            if let Some(tag) = &u.tag {
                let set = json!([{
                    "header": {"key": ROUTE_TAG_HEADER, "value": tag},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
                }]);
                cluster["request_headers_to_add"] = set.clone();
                cluster["response_headers_to_add"] = set;
            }
            cluster
        })
        .collect();
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
                        "http_filters": http_filters,
                        "access_log": access_log
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
        Envoy::start_under(&[], spec, dir)
    }

    /// Starts a gateway like [`Envoy::start`] whose Wasm filter (`spec.filter`, required) is
    /// read from a watched file instead of the bootstrap; the returned [`FilterFile`] replaces it.
    pub fn start_with_filter_file(spec: &GatewaySpec, dir: &Path) -> (Envoy, FilterFile) {
        let filter = spec.filter.as_ref().expect("a filter to discover");
        let watched_dir = dir.join("filter");
        std::fs::create_dir_all(&watched_dir).expect("create the filter directory");
        let filter_file = FilterFile {
            file: watched_dir.join("filter.json"),
            watched_dir: watched_dir.clone(),
        };
        filter_file.write(filter, 1);
        let (listener_port, admin_port) = (free_port(), free_port());
        let mut config = bootstrap(spec, listener_port, admin_port);
        config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0] = json!({
            "name": DISCOVERED_FILTER,
            "config_discovery": {
                "config_source": path_source(&filter_file.file, &watched_dir),
                "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]
            }
        });
        let envoy = Envoy::launch(
            &[],
            config,
            spec.concurrency,
            dir,
            listener_port,
            admin_port,
        );
        (envoy, filter_file)
    }

    /// Starts Envoy as the last argument of `launcher` (e.g. `valgrind --tool=callgrind`),
    /// allowing minutes to come up, since such tools slow it down fifty-fold.
    pub fn start_under(launcher: &[&str], spec: &GatewaySpec, dir: &Path) -> Envoy {
        let (listener_port, admin_port) = (free_port(), free_port());
        Envoy::launch(
            launcher,
            bootstrap(spec, listener_port, admin_port),
            spec.concurrency,
            dir,
            listener_port,
            admin_port,
        )
    }

    /// Starts a gateway whose routes and revision clusters come from watched files (local mode).
    /// The files must exist first: Envoy reads them once at start, then on every move into
    /// `spec.watched_dir`.
    pub fn start_from_files(spec: &FileGatewaySpec, dir: &Path) -> Envoy {
        let (listener_port, admin_port) = (free_port(), free_port());
        Envoy::launch(
            &[],
            file_bootstrap(spec, listener_port, admin_port),
            spec.concurrency,
            dir,
            listener_port,
            admin_port,
        )
    }

    fn launch(
        launcher: &[&str],
        config: Value,
        concurrency: u32,
        dir: &Path,
        listener_port: u16,
        admin_port: u16,
    ) -> Envoy {
        let config_path = dir.join(format!("envoy-{listener_port}.json"));
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).expect("serialize bootstrap"),
        )
        .expect("write the Envoy bootstrap");
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(tools::envoy());
                command
            }
            None => Command::new(tools::envoy()),
        };
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"]);
        let log = dir.join(format!("envoy-{listener_port}.log"));
        let process = ChildGuard::spawn("envoy", command, &log);
        let mut envoy = Envoy {
            listener_port,
            admin_port,
            process,
            config_path,
        };
        let start_limit = Duration::from_secs(if launcher.is_empty() { 30 } else { 600 });
        wait_until("Envoy to become live", start_limit, || {
            envoy.process.assert_running();
            admin_get(admin_port, "/ready").is_some_and(|body| body.contains("LIVE"))
                && port_open(listener_port)
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

/// A gateway for local mode: the listener's routes come from a file-based RDS source and the
/// revision clusters from a file-based CDS source, both in one watched directory, so a
/// controller can shift weights and a promotion can repoint a cluster at another revision's
/// backend while Envoy runs. The exporter cluster stays static.
#[derive(Clone, Debug)]
pub struct FileGatewaySpec {
    /// The directory Envoy watches; both files live in it (a move into it triggers a reload).
    pub watched_dir: PathBuf,
    /// RDS file (a DiscoveryResponse with one RouteConfiguration).
    pub routes_file: PathBuf,
    /// `RouteConfiguration.name` the listener asks for.
    pub route_config_name: String,
    /// CDS file (a DiscoveryResponse of clusters, see [`clusters_document`]).
    pub clusters_file: PathBuf,
    pub filter: Option<WasmFilter>,
    pub exporter: Option<(String, u16)>,
    pub concurrency: u32,
}

fn path_source(file: &Path, watched_dir: &Path) -> Value {
    json!({
        "path_config_source": {"path": file, "watched_directory": {"path": watched_dir}},
        "resource_api_version": "V3"
    })
}

/// The Envoy bootstrap (as JSON) for a file-fed gateway.
pub fn file_bootstrap(spec: &FileGatewaySpec, listener_port: u16, admin_port: u16) -> Value {
    let static_spec = GatewaySpec {
        filter: spec.filter.clone(),
        exporter: spec.exporter.clone(),
        concurrency: spec.concurrency,
        ..GatewaySpec::default()
    };
    // Same listener, filters and exporter cluster as the static gateway; only where the routes
    // and the revision clusters come from differs.
    let mut config = bootstrap(&static_spec, listener_port, admin_port);
    let hcm = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    let hcm = hcm.as_object_mut().expect("the HCM is an object");
    hcm.remove("route_config");
    hcm.insert(
        "rds".into(),
        json!({"route_config_name": spec.route_config_name, "config_source": path_source(&spec.routes_file, &spec.watched_dir)}),
    );
    config["dynamic_resources"] =
        json!({"cds_config": path_source(&spec.clusters_file, &spec.watched_dir)});
    config
}

/// The CDS DiscoveryResponse for `clusters` (name → loopback port): what a file-fed gateway
/// reads from its clusters file.
pub fn clusters_document(clusters: &[(&str, u16)]) -> Value {
    let version: Vec<String> = clusters
        .iter()
        .map(|(name, port)| format!("{name}={port}"))
        .collect();
    let resources: Vec<Value> = clusters
        .iter()
        .map(|(name, port)| {
            let mut cluster = static_cluster(name, *port);
            cluster["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
            cluster
        })
        .collect();
    json!({"version_info": version.join(","), "resources": resources})
}

/// A blocking GET against Envoy's admin interface on loopback; the body of a 200.
pub fn admin_get(port: u16, path: &str) -> Option<String> {
    match crate::http::blocking_get(([127, 0, 0, 1], port).into(), path) {
        Some((200, body)) => Some(body),
        _ => None,
    }
}
