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

/// The module whose commands are built, and the file of it the gateway pods need: the Envoy
/// bootstrap template Istio's proxy image ships at `/var/lib/istio/envoy/`, which pilot-agent
/// fills in.
const ISTIO_MODULE: &str = "istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad";
const BOOTSTRAP_TEMPLATE: &str = "tools/packaging/common/envoy_bootstrap.json";

/// Where the Istio tests find the binaries: `bin/`, and `envoy_bootstrap.json`.
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
    BOOTSTRAP_TEMPLATE.hash(&mut hasher);
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
    let source = module_dir(&go, &module, ISTIO_MODULE)?.join(BOOTSTRAP_TEMPLATE);
    std::fs::copy(&source, &template).map_err(|e| format!("{}: {e}", source.display()))?;
    std::fs::write(&stamp_path, &stamp).map_err(|e| format!("{}: {e}", stamp_path.display()))?;
    println!(
        "xtask: istiod and pilot-agent built in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        bin.display()
    );
    Ok(IstioTools { dir: out })
}
