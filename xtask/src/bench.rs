//! Benchmarks that print ratios measured side by side in one run. The measuring programs live
//! beside the harness they use; this module builds what they need and starts them.

use std::process::Command;

use crate::{cargo_bin, install, run, wasm};

/// `bench filter`: Envoy with no filter, with an empty proxy-wasm filter and with Plover's,
/// measured alternately on one backend.
pub fn filter(extra: &[&str]) -> Result<(), String> {
    install::test_tools()?;
    let plover = wasm::build_modules()?;
    let empty = wasm::build_package("plover-empty-filter", "plover_empty_filter")?;
    // The empty filter with only what counting in `on_log` needs exported: the floor of the
    // counting module.
    let empty_lean = empty.with_file_name("plover_empty_filter_on_log_only.wasm");
    wasm::strip_exports(&empty, &empty_lean, &wasm::counting_only_removals())?;
    let envoy = install::envoy_binary()?;
    run(Command::new(cargo_bin())
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "plover-e2e",
            "--bin",
            "plover-bench-filter",
            "--",
        ])
        .args(extra)
        .env("PLOVER_FILTER_WASM", &plover.counting)
        .env("PLOVER_FILTER_TAGGING_WASM", &plover.tagging)
        .env("PLOVER_EMPTY_FILTER_WASM", &empty)
        .env("PLOVER_EMPTY_FILTER_ON_LOG_ONLY_WASM", &empty_lean)
        .env("PLOVER_ENVOY", &envoy))
}

/// `bench exporter`: in-process ingest and exposition figures.
pub fn exporter(extra: &[&str]) -> Result<(), String> {
    run(Command::new(cargo_bin())
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "plover-exporter",
            "--bin",
            "plover-exporter-bench",
            "--",
        ])
        .args(extra))
}

/// `bench judge`: seeded simulations, Plover's sequential judges beside the seed templates.
pub fn judge(extra: &[&str]) -> Result<(), String> {
    run(Command::new(cargo_bin())
        .args([
            "run",
            "--release",
            "--quiet",
            "--package",
            "plover-sequential",
            "--bin",
            "plover-bench-judge",
            "--",
        ])
        .args(extra))
}
