//! `cargo xtask istio-tools`: Istio's control plane for the Istio end-to-end test and
//! `cargo xtask demo --istio` — `pilot-discovery` (istiod) and `pilot-agent` built with Go from
//! the pinned `istio.io/istio` module of `tests/istio/go.mod` into `target/istio-tools/bin/`.
//! Like `cluster-tools`, a stamp makes a second run cost milliseconds; times are printed.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Instant;

use crate::cluster::{go_binary, go_build, module_dir, module_hasher};
use crate::workspace_root;

/// Binary name → Go package.
const BINARIES: [(&str, &str); 2] = [
    (
        "pilot-discovery",
        "istio.io/istio/pilot/cmd/pilot-discovery",
    ),
    ("pilot-agent", "istio.io/istio/pilot/cmd/pilot-agent"),
];

/// What `pilot-discovery version` says: the module's `VERSION` file (1.31) as Istio's own
/// Makefile stamps an unreleased build, and the pinned commit of `tests/istio/go.mod`.
const LDFLAGS: &str = "-s -w -X istio.io/istio/pkg/version.buildVersion=1.31-dev \
     -X istio.io/istio/pkg/version.buildGitRevision=eed52ebb66ad \
     -X istio.io/istio/pkg/version.buildStatus=Clean";

/// Istio's own release build tags: generated fast marshalling, no proto validation code.
const TAGS: [&str; 2] = ["vtprotobuf", "disable_pgv"];

/// The module whose commands are built.
const ISTIO_MODULE: &str = "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad";

/// Files of the module the tests need, and their names under `target/istio-tools/`: the Envoy
/// bootstrap template Istio's proxy image ships at `/var/lib/istio/envoy/`, which pilot-agent
/// fills in; and from istiod's Helm chart, its default values and the `kube-gateway` template
/// istiod renders to deploy a Gateway API Gateway, which the chart installs in the
/// `istio-sidecar-injector` ConfigMap.
const FILES: [(&str, &str); 3] = [
    (
        "tools/packaging/common/envoy_bootstrap.json",
        "envoy_bootstrap.json",
    ),
    (
        "manifests/charts/istio-control/istio-discovery/values.yaml",
        "chart/values.yaml",
    ),
    (
        "manifests/charts/istio-control/istio-discovery/files/kube-gateway.yaml",
        "chart/kube-gateway.yaml",
    ),
];

/// Where the Istio tests find the binaries (`bin/`) and [`FILES`].
pub struct IstioTools {
    pub dir: PathBuf,
}

pub fn build() -> Result<IstioTools, String> {
    let started = Instant::now();
    let (go, go_version) = go_binary()?;
    let module = workspace_root().join("tests/istio");
    let out = workspace_root().join("target/istio-tools");
    let bin = out.join("bin");
    let stamp_path = out.join("stamp");
    let mut hasher = module_hasher(&go_version, &module)?;
    BINARIES.hash(&mut hasher);
    TAGS.hash(&mut hasher);
    FILES.hash(&mut hasher);
    LDFLAGS.hash(&mut hasher);
    let stamp = format!("{:016x}\n", hasher.finish());
    let template = out.join("envoy_bootstrap.json");
    let complete = BINARIES.iter().all(|(name, _)| bin.join(name).is_file()) && template.is_file();
    if complete && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(stamp.as_str()) {
        println!(
            "xtask: istiod (pilot-discovery) and pilot-agent up to date in {} ({:.2} s)",
            bin.display(),
            started.elapsed().as_secs_f64()
        );
        return Ok(IstioTools { dir: out });
    }
    println!(
        "xtask: building istiod (pilot-discovery) and pilot-agent from tests/istio/go.mod with {} \
         (the first build takes minutes)",
        go.display()
    );
    go_build(&go, &module, &bin, &TAGS, LDFLAGS, &BINARIES)?;
    let dir = module_dir(&go, &module, ISTIO_MODULE)?;
    for (file, name) in FILES {
        let to = out.join(name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::copy(dir.join(file), &to).map_err(|e| format!("{ISTIO_MODULE}: {file}: {e}"))?;
    }
    std::fs::write(&stamp_path, &stamp).map_err(|e| format!("{}: {e}", stamp_path.display()))?;
    println!(
        "xtask: istiod and pilot-agent built in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        bin.display()
    );
    Ok(IstioTools { dir: out })
}
