//! Builds the filter for wasm32-unknown-unknown with the size-tuned `wasm` profile and checks
//! the module against the recorded size budget (`filter/wasm-size-budget`, in bytes).

use std::path::PathBuf;
use std::process::Command;

use crate::{cargo_bin, run, workspace_root};

const TARGET: &str = "wasm32-unknown-unknown";

/// Builds `plover_filter.wasm` and checks its size budget; returns its path.
pub fn build() -> Result<PathBuf, String> {
    let output = build_package("plover-filter", "plover_filter")?;
    check_budget(&output)?;
    Ok(output)
}

/// `cargo build` of one package for wasm32 with the size-tuned `wasm` profile.
fn build_args(package: &str) -> [&str; 7] {
    [
        "build",
        "--package",
        package,
        "--target",
        TARGET,
        "--profile",
        "wasm",
    ]
}

/// Builds one cdylib package for wasm32; returns the path of `<artifact>.wasm`.
pub fn build_package(package: &str, artifact: &str) -> Result<PathBuf, String> {
    let root = workspace_root();
    if rustup_has_target() || rustup_add_target() {
        run(Command::new(cargo_bin())
            .current_dir(&root)
            .args(build_args(package)))?;
        Ok(root
            .join("target")
            .join(TARGET)
            .join(format!("wasm/{artifact}.wasm")))
    } else {
        debian_build(package, artifact)
    }
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false)
}

fn rustup_add_target() -> bool {
    println!("xtask: adding the {TARGET} target with rustup");
    run(Command::new("rustup").args(["target", "add", TARGET])).is_ok()
}

/// Where rustup cannot fetch the target: Debian's toolchain with the standard library built
/// from source (`-Zbuild-std`), linked by lld's `wasm-ld`.
fn debian_build(package: &str, artifact: &str) -> Result<PathBuf, String> {
    println!("xtask: rustup target unavailable; building with Debian's rustc-web and -Zbuild-std");
    if !PathBuf::from("/usr/bin/wasm-ld").exists()
        || !PathBuf::from("/usr/share/cargo-web").exists()
    {
        crate::install::apt_get(&["update", "-qq"])?;
        crate::install::apt_get(&[
            "install",
            "-y",
            "-qq",
            "rustc-web",
            "cargo-web",
            "rust-web-src",
            "lld",
        ])?;
    }
    let root = workspace_root();
    let target_dir = root.join("target/debian-wasm");
    run(Command::new("/usr/bin/cargo")
        .current_dir(&root)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "wasm-ld")
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(build_args(package))
        .args(["-Zbuild-std=std,panic_abort"]))?;
    Ok(target_dir
        .join(TARGET)
        .join(format!("wasm/{artifact}.wasm")))
}

fn check_budget(module: &PathBuf) -> Result<(), String> {
    let size = std::fs::metadata(module)
        .map_err(|e| format!("{}: {e}", module.display()))?
        .len();
    let budget_file = workspace_root().join("filter/wasm-size-budget");
    let budget: u64 = std::fs::read_to_string(&budget_file)
        .map_err(|e| format!("{}: {e}", budget_file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: not a byte count: {e}", budget_file.display()))?;
    println!(
        "xtask: {} is {size} bytes (budget {budget})",
        module.display()
    );
    if size > budget {
        return Err(format!(
            "plover_filter.wasm grew to {size} bytes, past its budget of {budget} (filter/wasm-size-budget); \
             shrink it, or raise the budget in a commit that says why"
        ));
    }
    Ok(())
}
