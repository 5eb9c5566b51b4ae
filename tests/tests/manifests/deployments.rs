//! The installation is consistent with the code: the Deployments match what the `plover` and
//! `plover-exporter` binaries read and serve (flags, environment, ports, probes), the Secret and
//! WasmPlugins agree, placeholders are only where the install replaces them.

use super::*;

fn container<'a>(deployment: &'a Object, name: &str) -> &'a Value {
    deployment.value["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("{}: no container {name}", deployment.describe()))
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn container_port(container: &Value, port: &Value) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => container["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["name"] == *name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name} in {}", container["name"]))
            as u16,
        _ => panic!("port {port}"),
    }
}

/// Names of the environment variables a clap command reads, recursively.
fn clap_env_names(command: &clap::Command, path: &[&str]) -> BTreeSet<String> {
    let command = path.iter().fold(command.clone(), |c, sub| {
        c.find_subcommand(sub)
            .unwrap_or_else(|| panic!("no subcommand {sub}"))
            .clone()
    });
    command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[derive(Parser)]
struct PloverCli {
    #[command(subcommand)]
    command: plover_controller::cli::commands::CanaryCommand,
}

/// The container's liveness and readiness probes name the port the server listens on
/// (`listen_port`), and their paths answer 200 from the real server at `addr`.
async fn assert_probes_answer(
    deployment: &Object,
    container: &Value,
    listen_port: u16,
    addr: std::net::SocketAddr,
) {
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(
            container_port(container, &get["port"]),
            listen_port,
            "{}: {probe} port",
            deployment.describe()
        );
        let path = get["path"].as_str().unwrap();
        assert_eq!(
            http_get(addr, path).await,
            200,
            "{}: {probe} GET {path}",
            deployment.describe()
        );
    }
}

/// The status code of `GET path`; 0 when the answer has none.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
    exchange(addr, request.as_bytes())
        .await
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn security_problems(deployment: &Object) -> Vec<String> {
    let mut errors = Vec::new();
    let spec = &deployment.value["spec"]["template"]["spec"];
    for c in spec["containers"].as_array().unwrap() {
        let sc = &c["securityContext"];
        let name = c["name"].as_str().unwrap_or_default();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                errors.push(format!(
                    "{}: container {name}: {what}",
                    deployment.describe()
                ));
            }
        };
        check(
            sc["runAsNonRoot"] == true || spec["securityContext"]["runAsNonRoot"] == true,
            "runAsNonRoot must be true",
        );
        check(
            sc["readOnlyRootFilesystem"] == true,
            "securityContext.readOnlyRootFilesystem must be true",
        );
        check(
            sc["allowPrivilegeEscalation"] == false,
            "securityContext.allowPrivilegeEscalation must be false",
        );
        check(
            sc["capabilities"]["drop"] == json!(["ALL"]),
            "securityContext.capabilities.drop must be [ALL]",
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                check(
                    c["resources"][kind][resource].is_string(),
                    &format!("resources.{kind}.{resource} must be set"),
                );
            }
        }
        check(
            c["livenessProbe"]["httpGet"].is_object(),
            "livenessProbe.httpGet must be set",
        );
        check(
            c["readinessProbe"]["httpGet"].is_object(),
            "readinessProbe.httpGet must be set",
        );
    }
    errors
}

#[tokio::test]
async fn the_controller_deployment_matches_what_the_plover_binary_reads_and_serves() {
    let controller_envs = clap_env_names(&PloverCli::command(), &["controller"]);
    for rendering in install_renderings() {
        let deployment = get(
            rendering,
            "Deployment",
            "plover-system",
            "plover-controller",
        );
        assert_no_errors(&rendering.name, security_problems(deployment));
        assert_eq!(
            deployment.value["spec"]["replicas"],
            2,
            "{}",
            deployment.describe()
        );
        let c = container(deployment, "controller");
        // The arguments are a valid `plover controller` command line.
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let command: Vec<&str> = std::iter::once("plover")
            .chain(args.iter().map(String::as_str))
            .collect();
        assert_eq!(
            args.first().map(String::as_str),
            Some("controller"),
            "{}",
            deployment.describe()
        );
        PloverCli::try_parse_from(&command)
            .unwrap_or_else(|e| panic!("{}: args: {e}", deployment.describe()));
        assert_eq!(c["command"], json!(["plover"]), "{}", deployment.describe());
        // Every variable set is one the binary reads.
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(
                controller_envs.contains(name),
                "{}: env {name} is read by nothing ({controller_envs:?})",
                deployment.describe()
            );
        }
        // Leader election on, identity and Lease namespace from the pod.
        assert_eq!(
            env_value(c, "PLOVER_LEADER_ELECT").map(|e| &e["value"]),
            Some(&json!("true"))
        );
        assert_eq!(
            env_value(c, "POD_NAME").map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]),
            Some(&json!("metadata.name"))
        );
        assert_eq!(
            env_value(c, "POD_NAMESPACE").map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"]),
            Some(&json!("metadata.namespace"))
        );
        // The probes hit the port the metrics server listens on, at paths it answers 200 on.
        let listen: std::net::SocketAddr = env_value(c, "PLOVER_METRICS_ADDR").unwrap()["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(plover_controller::metrics::serve(
            listener,
            std::sync::Arc::new(plover_controller::metrics::Metrics::new()),
        ));
        assert_probes_answer(deployment, c, listen.port(), addr).await;
        // Prometheus annotations (when present) point at the same port.
        if let Some(port) = deployment.value["spec"]["template"]["metadata"]["annotations"]
            ["prometheus.io/port"]
            .as_str()
        {
            assert_eq!(port.parse::<u16>().unwrap(), listen.port());
            assert_eq!(http_get(addr, "/metrics").await, 200);
        }
        server.abort();
        // The exporter address the controller uses is the exporter Service.
        let exporter = env_value(c, "PLOVER_EXPORTER_ADDRESS").unwrap()["value"]
            .as_str()
            .unwrap();
        let service = get(rendering, "Service", "plover-system", "plover-exporter");
        let port = service.value["spec"]["ports"][0]["port"].as_u64().unwrap();
        assert_eq!(
            exporter,
            format!("http://plover-exporter.plover-system.svc.cluster.local:{port}")
        );
        assert_eq!(
            deployment.value["spec"]["template"]["spec"]["serviceAccountName"],
            "plover-controller",
            "{}",
            deployment.describe()
        );
        // The metrics Service selects these pods on the metrics port.
        let metrics = get(
            rendering,
            "Service",
            "plover-system",
            "plover-controller-metrics",
        );
        assert_eq!(
            metrics.value["spec"]["selector"],
            deployment.value["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(
            container_port(c, &metrics.value["spec"]["ports"][0]["targetPort"]),
            listen.port()
        );
    }
}

#[tokio::test]
async fn the_exporter_deployment_service_secret_and_wasmplugins_agree() {
    let exporter_envs = clap_env_names(&plover_exporter::Args::command(), &[]);
    for rendering in install_renderings() {
        let deployment = get(rendering, "Deployment", "plover-system", "plover-exporter");
        assert_no_errors(&rendering.name, security_problems(deployment));
        let c = container(deployment, "exporter");
        assert_eq!(c["command"], json!(["plover-exporter"]));
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap();
            assert!(
                exporter_envs.contains(name),
                "{}: env {name} is read by nothing",
                deployment.describe()
            );
        }
        // The token file is the Secret's `token` key, mounted where --token-file says.
        let secret = get(rendering, "Secret", "plover-system", "plover-ingest-token");
        let token = secret.value["stringData"]["token"]
            .as_str()
            .expect("stringData.token");
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        let token_file = args
            .iter()
            .find_map(|a| a.strip_prefix("--token-file="))
            .expect("--token-file=");
        let (mount_dir, file) = token_file.rsplit_once('/').unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == mount_dir)
            .expect("token mount");
        let volume = deployment.value["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["secret"]["secretName"], "plover-ingest-token");
        assert_eq!(
            volume["secret"]["items"],
            json!([{"key": "token", "path": file}])
        );
        // The arguments are a valid exporter configuration (flags checked by the exporter's
        // own parser), and the server answers the probes and /metrics on the declared port.
        let dir = tempfile::tempdir().unwrap();
        let local_token = dir.path().join(file);
        std::fs::write(&local_token, token).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut argv = vec!["plover-exporter".to_owned()];
        for a in &args {
            argv.push(if a.starts_with("--token-file=") {
                format!("--token-file={}", local_token.display())
            } else {
                a.clone()
            });
        }
        let config = plover_exporter::Config::parse_from(&argv)
            .unwrap_or_else(|e| panic!("{}: args: {e}", deployment.describe()));
        let listen_port = config.listen.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(plover_exporter::run(config, listener, async {
            let _ = stopped.await;
        }));
        assert_probes_answer(deployment, c, listen_port, addr).await;
        let annotations = &deployment.value["spec"]["template"]["metadata"]["annotations"];
        if let Some(port) = annotations["prometheus.io/port"].as_str() {
            assert_eq!(port.parse::<u16>().unwrap(), listen_port);
            assert_eq!(
                http_get(addr, annotations["prometheus.io/path"].as_str().unwrap()).await,
                200
            );
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();

        // The Service: kept in gateways' cluster lists, HTTP, on the exporter's port.
        let service = get(rendering, "Service", "plover-system", "plover-exporter");
        assert_eq!(
            service.value["metadata"]["annotations"]["networking.istio.io/always-include-in-gateways"], "true",
            "{}: gateways must keep the exporter's cluster (see the notes on PILOT_FILTER_GATEWAY_CLUSTER_CONFIG)",
            service.describe()
        );
        let port = &service.value["spec"]["ports"][0];
        assert_eq!(container_port(c, &port["targetPort"]), listen_port);
        assert!(
            port["name"].as_str().unwrap().starts_with("http") && port["appProtocol"] == "http"
        );
        assert_eq!(
            service.value["spec"]["selector"],
            deployment.value["spec"]["selector"]["matchLabels"]
        );
        let cluster = format!(
            "outbound|{}||plover-exporter.plover-system.svc.cluster.local",
            port["port"]
        );

        // Every WasmPlugin: fail open, one way of targeting, a filter configuration the filter
        // accepts, calling the exporter's cluster with the Secret's token.
        let plugins: Vec<&Object> = rendering
            .objects
            .iter()
            .filter(|o| o.kind() == "WasmPlugin")
            .collect();
        if rendering.name.contains("overlays/") {
            assert_eq!(plugins.len(), 1, "{}: one WasmPlugin", rendering.name);
        }
        for plugin in plugins {
            let spec = &plugin.value["spec"];
            assert_eq!(spec["failStrategy"], "FAIL_OPEN", "{}", plugin.describe());
            assert!(
                spec["selector"].is_null() != spec["targetRefs"].is_null(),
                "{}: selector xor targetRefs",
                plugin.describe()
            );
            if rendering.name.contains("istio-ingress") {
                assert_eq!(
                    spec["selector"]["matchLabels"]["istio"],
                    "ingressgateway",
                    "{}",
                    plugin.describe()
                );
            }
            if rendering.name.contains("gateway-api") {
                let refs = spec["targetRefs"].as_array().expect("targetRefs");
                assert!(refs
                    .iter()
                    .all(|r| r["group"] == "gateway.networking.k8s.io" && r["kind"] == "Gateway"));
            }
            let url = spec["url"].as_str().unwrap();
            if rendering.name.contains("wasm-https") {
                assert!(
                    url.starts_with("https://") || url == "PLOVER_WASM_URL",
                    "{}: url {url}",
                    plugin.describe()
                );
                assert!(
                    spec["sha256"].is_string(),
                    "{}: an https module needs its sha256",
                    plugin.describe()
                );
            } else {
                assert!(
                    url.starts_with("oci://"),
                    "{}: url {url}",
                    plugin.describe()
                );
            }
            let config = serde_json::to_vec(&spec["pluginConfig"]).unwrap();
            let parsed = plover_wire::config::FilterConfig::from_json(&config)
                .unwrap_or_else(|e| panic!("{}: pluginConfig: {e}", plugin.describe()));
            assert_eq!(
                parsed.exporter.cluster,
                cluster,
                "{}: pluginConfig.exporter.cluster",
                plugin.describe()
            );
            assert_eq!(
                parsed.exporter.token,
                token,
                "{}: pluginConfig.exporter.token must be the Secret's",
                plugin.describe()
            );
        }
    }
}

#[test]
fn placeholders_are_only_where_the_install_replaces_them() {
    // README's install replaces PLOVER_INGEST_TOKEN (and, with components/wasm-https,
    // PLOVER_WASM_URL and PLOVER_WASM_SHA256) in the rendered output.
    for rendering in install_renderings() {
        let text = serde_json::to_string(
            &rendering
                .objects
                .iter()
                .map(|o| &o.value)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let plugins = rendering
            .objects
            .iter()
            .filter(|o| o.kind() == "WasmPlugin")
            .count();
        assert_eq!(
            text.matches("PLOVER_INGEST_TOKEN").count(),
            1 + plugins,
            "{}",
            rendering.name
        );
        for placeholder in ["PLOVER_WASM_URL", "PLOVER_WASM_SHA256"] {
            let expected = usize::from(rendering.name.contains("wasm-https")) * plugins;
            assert_eq!(
                text.matches(placeholder).count(),
                expected,
                "{}: {placeholder}",
                rendering.name
            );
        }
    }
}
