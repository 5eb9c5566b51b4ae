//! `cargo xtask cluster-tools`: the real Kubernetes control plane the cluster tests run —
//! kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (Kubernetes v1.37.2),
//! etcd and KWOK — built with Go from the pinned modules of `tests/cluster/go.mod` into
//! `target/cluster-tools/bin/`, and the upstream CRDs the tests install, copied from the pinned
//! Go modules' own files into `target/cluster-tools/crds/`. Nothing is downloaded but Go
//! modules through the module proxy.
//!
//! A second run finds a stamp naming what was built (a hash of `go.mod`, `go.sum` and the
//! build's settings) and costs milliseconds; Go's build cache makes a rebuild after a change
//! cheap too. Cold and warm times are printed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{run, workspace_root};

/// The Go the modules declare (`go 1.26.0` in `tests/cluster/go.mod`).
const GO_MINIMUM: (u32, u32) = (1, 26);

/// The Kubernetes release, stamped into the binaries' version (what `kubectl version` shows).
const KUBERNETES_VERSION: &str = "v1.37.2";

/// Binary name → Go package. kubectl is the release's own, so the tests' client is never
/// skewed from the server.
const BINARIES: [(&str, &str); 6] = [
    ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
    ("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
    (
        "kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
    ),
    ("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
    ("etcd", "go.etcd.io/etcd/server/v3"),
    ("kwok", "sigs.k8s.io/kwok/cmd/kwok"),
];

/// Upstream CRDs: (module@version, file in the module, file written under `crds/`).
const CRDS: [(&str, &str, &str); 9] = [
    (
        "istio.io/api@v1.32.0",
        "kubernetes/customresourcedefinitions.gen.yaml",
        "istio.yaml",
    ),
    (
        "sigs.k8s.io/gateway-api@v1.6.3",
        "config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml",
        "gateway-api-gatewayclasses.yaml",
    ),
    (
        "sigs.k8s.io/gateway-api@v1.6.3",
        "config/crd/standard/gateway.networking.k8s.io_gateways.yaml",
        "gateway-api-gateways.yaml",
    ),
    (
        "sigs.k8s.io/gateway-api@v1.6.3",
        "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml",
        "gateway-api-httproutes.yaml",
    ),
    (
        "sigs.k8s.io/gateway-api@v1.6.3",
        "config/crd/standard/gateway.networking.k8s.io_grpcroutes.yaml",
        "gateway-api-grpcroutes.yaml",
    ),
    (
        "sigs.k8s.io/gateway-api@v1.6.3",
        "config/crd/standard/gateway.networking.k8s.io_referencegrants.yaml",
        "gateway-api-referencegrants.yaml",
    ),
    (
        "github.com/prometheus-operator/prometheus-operator@v0.85.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "prometheus-operator-servicemonitors.yaml",
    ),
    (
        "github.com/argoproj/argo-rollouts@v1.10.1",
        "manifests/crds/analysis-template-crd.yaml",
        "argo-rollouts-analysistemplates.yaml",
    ),
    (
        "github.com/argoproj/argo-rollouts@v1.10.1",
        "manifests/crds/cluster-analysis-template-crd.yaml",
        "argo-rollouts-clusteranalysistemplates.yaml",
    ),
];

/// KWOK's own stages (from its module): a fake node becomes Ready and keeps its Lease; pods on
/// it become Ready, complete and go away as a kubelet's would.
const KWOK_MODULE: &str = "sigs.k8s.io/kwok@v0.8.0";
const KWOK_STAGES: [&str; 5] = [
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
];

/// Where the cluster tests find what was built: `bin/`, `crds/`, `kwok/`.
pub struct ClusterTools {
    pub dir: PathBuf,
}

/// Builds (or finds up to date) the control plane and the CRDs.
pub fn build() -> Result<ClusterTools, String> {
    let started = Instant::now();
    let (go, go_version) = go_binary()?;
    let module = workspace_root().join("tests/cluster");
    let out = workspace_root().join("target/cluster-tools");
    let tools = ClusterTools { dir: out.clone() };
    let (bin, crds, stages) = (out.join("bin"), out.join("crds"), out.join("kwok"));
    let stamp_path = out.join("stamp");
    let stamp = stamp(&go_version, &module)?;
    let complete = BINARIES.iter().all(|(name, _)| bin.join(name).is_file())
        && CRDS.iter().all(|(_, _, file)| crds.join(file).is_file())
        && KWOK_STAGES
            .iter()
            .all(|file| stages.join(file_name(file)).is_file());
    if complete && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        println!(
            "xtask: control plane binaries and CRDs up to date in {} ({:.2} s)",
            out.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(tools);
    }
    println!(
        "xtask: building kube-apiserver, kube-controller-manager, kube-scheduler \
         kubectl ({KUBERNETES_VERSION}), etcd and kwok with {} (the first build takes minutes)",
        go.display()
    );
    let minor = KUBERNETES_VERSION
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .unwrap_or_default();
    let ldflags = format!(
        "-s -w -X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION} \
         -X k8s.io/component-base/version.gitMajor=1 \
         -X k8s.io/component-base/version.gitMinor={minor} \
         -X k8s.io/component-base/version.gitTreeState=clean"
    );
    go_build(&go, &module, &bin, &[], &ldflags, &BINARIES)?;
    // `go build` names a binary after its package path without the major version: etcd's is
    // `server`.
    let etcd = bin.join("server");
    if etcd.is_file() {
        std::fs::rename(&etcd, bin.join("etcd"))
            .map_err(|e| format!("rename {}: {e}", etcd.display()))?;
    }
    let built = started.elapsed();
    copy_crds(&go, &module, &crds)?;
    copy_stages(&go, &module, &stages)?;
    std::fs::write(&stamp_path, &stamp).map_err(|e| format!("{}: {e}", stamp_path.display()))?;
    println!(
        "xtask: control plane built in {:.1} s, CRDs copied in {:.1} s ({})",
        built.as_secs_f64(),
        (started.elapsed() - built).as_secs_f64(),
        out.display()
    );
    Ok(tools)
}

/// `go` and its version (`go1.26.8`), checked to be at least [`GO_MINIMUM`]: one clear error
/// naming what to install.
pub fn go_binary() -> Result<(PathBuf, String), String> {
    let candidates = [PathBuf::from("go"), PathBuf::from("/usr/local/go/bin/go")];
    for go in candidates {
        let Ok(output) = Command::new(&go).args(["env", "GOVERSION"]).output() else {
            continue;
        };
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let parsed: Vec<u32> = version
            .trim_start_matches("go")
            .split(['.', '-', ' '])
            .take(2)
            .filter_map(|n| n.parse().ok())
            .collect();
        return match parsed.as_slice() {
            [major, minor] if (*major, *minor) >= GO_MINIMUM => Ok((go, version)),
            _ => Err(format!(
                "the cluster tests build Kubernetes {KUBERNETES_VERSION} from source and need Go \
                 {}.{} or newer; {} reports {version:?}: install Go {}.{} (e.g. the `golang` \
                 toolchain of your distribution, or set PATH to one)",
                GO_MINIMUM.0,
                GO_MINIMUM.1,
                go.display(),
                GO_MINIMUM.0,
                GO_MINIMUM.1
            )),
        };
    }
    Err(format!(
        "Go not found: the cluster tests build Kubernetes {KUBERNETES_VERSION} from source and \
         need Go {}.{} or newer on the PATH",
        GO_MINIMUM.0, GO_MINIMUM.1
    ))
}

/// `go build` of `binaries` (name → package) into `bin/`, static (no cgo) and without the
/// profile-guided optimisation some commands ship (it slows the build several times).
pub fn go_build(
    go: &Path,
    module: &Path,
    bin: &Path,
    tags: &[&str],
    ldflags: &str,
    binaries: &[(&str, &str)],
) -> Result<(), String> {
    std::fs::create_dir_all(bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let mut command = go_command(go, module);
    command
        .env("CGO_ENABLED", "0")
        .args(["build", "-pgo=off", "-trimpath"]);
    if !tags.is_empty() {
        command.arg(format!("-tags={}", tags.join(",")));
    }
    command
        .args(["-ldflags", ldflags, "-o"])
        .arg(format!("{}/", bin.display()))
        .args(binaries.iter().map(|(_, package)| package));
    run(&mut command)
}

/// `go` in a module of `tests/`, with the machine's Go (no toolchain download) and modules
/// verified against `go.sum`.
pub fn go_command(go: &Path, module: &Path) -> Command {
    let mut command = Command::new(go);
    command
        .current_dir(module)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly");
    command
}

/// The upstream CRD files, from the module cache (`go mod download` fetches a pinned module
/// through the proxy once).
fn copy_crds(go: &Path, module: &Path, crds: &Path) -> Result<(), String> {
    std::fs::create_dir_all(crds).map_err(|e| format!("{}: {e}", crds.display()))?;
    let mut dirs: Vec<(&str, PathBuf)> = Vec::new();
    for (module_version, file, name) in CRDS {
        let dir = match dirs.iter().find(|(m, _)| *m == module_version) {
            Some((_, dir)) => dir.clone(),
            None => {
                let dir = module_dir(go, module, module_version)?;
                dirs.push((module_version, dir.clone()));
                dir
            }
        };
        let from = dir.join(file);
        let to = crds.join(name);
        let text =
            std::fs::read_to_string(&from).map_err(|e| format!("{module_version}: {file}: {e}"))?;
        let header =
            format!("# From {module_version}, {file} (copied by cargo xtask cluster-tools)\n");
        std::fs::write(&to, header + &text).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    Ok(())
}

/// KWOK's stage files, as they are in its module.
fn copy_stages(go: &Path, module: &Path, stages: &Path) -> Result<(), String> {
    std::fs::create_dir_all(stages).map_err(|e| format!("{}: {e}", stages.display()))?;
    let dir = module_dir(go, module, KWOK_MODULE)?;
    for file in KWOK_STAGES {
        let to = stages.join(file_name(file));
        std::fs::copy(dir.join(file), &to).map_err(|e| format!("{KWOK_MODULE}: {file}: {e}"))?;
    }
    Ok(())
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Where `go mod download` put `module@version`.
pub fn module_dir(go: &Path, module: &Path, module_version: &str) -> Result<PathBuf, String> {
    let output = go_command(go, module)
        .args(["mod", "download", "-json", module_version])
        .output()
        .map_err(|e| format!("go mod download {module_version}: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "go mod download {module_version} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // The one field we need from its JSON: "Dir": "/root/go/pkg/mod/…".
    text.lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("\"Dir\": \"")?;
            Some(PathBuf::from(
                value.trim_end_matches(',').trim_end_matches('"'),
            ))
        })
        .ok_or_else(|| format!("go mod download {module_version}: no Dir in {text}"))
}

/// What the built binaries depend on: the module files, the Go version and the build's own
/// settings. A different stamp means a rebuild.
fn stamp(go_version: &str, module: &Path) -> Result<String, String> {
    let mut hasher = module_hasher(go_version, module)?;
    KUBERNETES_VERSION.hash(&mut hasher);
    BINARIES.hash(&mut hasher);
    CRDS.hash(&mut hasher);
    KWOK_STAGES.hash(&mut hasher);
    Ok(format!("{:016x}\n", hasher.finish()))
}

/// A hasher fed with a Go module's `go.mod`, `go.sum` and the Go version: the start of a build
/// stamp.
pub fn module_hasher(go_version: &str, module: &Path) -> Result<DefaultHasher, String> {
    let mut hasher = DefaultHasher::new();
    for file in ["go.mod", "go.sum"] {
        let path = module.join(file);
        std::fs::read(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .hash(&mut hasher);
    }
    go_version.hash(&mut hasher);
    Ok(hasher)
}
