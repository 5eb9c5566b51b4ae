//! Builds the filter for wasm32-unknown-unknown with the size-tuned `wasm` profile, in two
//! modules, and checks them against the recorded size budget (`filter/wasm-size-budget`, bytes):
//! - `target/plover-filter/plover_filter.wasm` counts from `on_log` alone;
//! - `target/plover-filter/plover_filter_tagging.wasm` (feature `tagging`) also writes tag headers, for
//!   routes Plover does not manage.
//!
//! The proxy-wasm SDK exports every callback of the ABI, and Envoy enters the VM for each one a
//! module exports (a few thousand instructions each, per request or per body chunk), whether the
//! filter does anything there or not. So each module keeps only the exports it uses: the other
//! ones are removed from the export section of the built module (the code stays, unreachable).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo_bin, run, workspace_root};

const TARGET: &str = "wasm32-unknown-unknown";

/// Per-stream and network callbacks neither module implements.
const UNUSED_EXPORTS: &[&str] = &[
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_data",
    "proxy_on_upstream_connection_close",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_queue_ready",
    "proxy_on_foreign_function",
];

/// The header hooks, used only by the tagging module.
const HEADER_HOOKS: &[&str] = &["proxy_on_request_headers", "proxy_on_response_headers"];

/// The two filter modules.
pub struct Modules {
    /// `plover_filter.wasm`: counts only.
    pub counting: PathBuf,
    /// `plover_filter_tagging.wasm`: counts and writes `tagging`'s headers.
    pub tagging: PathBuf,
}

/// The exports a module that counts from `on_log` alone does without.
pub fn counting_only_removals() -> Vec<&'static str> {
    [UNUSED_EXPORTS, HEADER_HOOKS].concat()
}

/// Builds both filter modules and checks their size budget.
pub fn build_modules() -> Result<Modules, String> {
    let out_dir = workspace_root().join("target/plover-filter");
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let module = |features: &[&str], removed: &[&[&str]], name: &str| {
        let built = build_package_with("plover-filter", "plover_filter", features)?;
        let out = out_dir.join(name);
        let removed: Vec<&str> = removed.concat();
        strip_exports(&built, &out, &removed)?;
        check_budget(&out)?;
        Ok::<_, String>(out)
    };
    Ok(Modules {
        counting: module(&[], &[UNUSED_EXPORTS, HEADER_HOOKS], "plover_filter.wasm")?,
        tagging: module(
            &["tagging"],
            &[UNUSED_EXPORTS],
            "plover_filter_tagging.wasm",
        )?,
    })
}

/// Builds both modules; returns the path of the counting one, the one gateways load.
pub fn build() -> Result<PathBuf, String> {
    Ok(build_modules()?.counting)
}

/// `cargo build` of one package for wasm32 with the size-tuned `wasm` profile.
fn build_args(package: &str, features: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "build",
        "--package",
        package,
        "--target",
        TARGET,
        "--profile",
        "wasm",
    ]
    .map(String::from)
    .to_vec();
    if !features.is_empty() {
        args.extend(["--features".to_owned(), features.join(",")]);
    }
    args
}

/// Builds one cdylib package for wasm32; returns the path of `<artifact>.wasm`.
pub fn build_package(package: &str, artifact: &str) -> Result<PathBuf, String> {
    build_package_with(package, artifact, &[])
}

fn build_package_with(package: &str, artifact: &str, features: &[&str]) -> Result<PathBuf, String> {
    let root = workspace_root();
    if rustup_has_target(TARGET) || rustup_add_target(TARGET).is_ok() {
        run(Command::new(cargo_bin())
            .current_dir(&root)
            .args(build_args(package, features)))?;
        Ok(root
            .join("target")
            .join(TARGET)
            .join(format!("wasm/{artifact}.wasm")))
    } else {
        debian_build(package, artifact, features)
    }
}

/// Whether rustup has `target` installed.
pub fn rustup_has_target(target: &str) -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == target)
        })
        .unwrap_or(false)
}

/// Adds `target` with rustup.
pub fn rustup_add_target(target: &str) -> Result<(), String> {
    println!("xtask: adding the {target} target with rustup");
    run(Command::new("rustup").args(["target", "add", target]))
}

/// Where rustup cannot fetch the target: Debian's toolchain with the standard library built
/// from source (`-Zbuild-std`), linked by lld's `wasm-ld`.
fn debian_build(package: &str, artifact: &str, features: &[&str]) -> Result<PathBuf, String> {
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
        .args(build_args(package, features))
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
            "{} grew to {size} bytes, past its budget of {budget} (filter/wasm-size-budget); \
             shrink it, or raise the budget in a commit that says why",
            module.display()
        ));
    }
    Ok(())
}

/// Copies the module `input` to `output` without the exports named in `removed`. Only the
/// export section changes; every other section is copied byte for byte.
pub fn strip_exports(input: &Path, output: &Path, removed: &[&str]) -> Result<(), String> {
    let bytes = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let stripped = without_exports(&bytes, removed).map_err(|e| {
        format!(
            "{}: not a module this build understands: {e}",
            input.display()
        )
    })?;
    std::fs::write(output, stripped).map_err(|e| format!("{}: {e}", output.display()))
}

/// The wasm binary `module` without the named exports (each must be there: a name missing means
/// the SDK changed, and the list must be looked at again).
fn without_exports(module: &[u8], removed: &[&str]) -> Result<Vec<u8>, String> {
    const EXPORT_SECTION: u8 = 7;
    if module.get(..8) != Some(b"\0asm\x01\0\0\0".as_slice()) {
        return Err("no wasm version 1 header".into());
    }
    let mut out = module[..8].to_vec();
    let mut at = 8;
    let mut found = 0;
    while at < module.len() {
        let id = module[at];
        let (size, header) = read_leb(module, at + 1)?;
        let start = at + 1 + header;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= module.len())
            .ok_or("section past the end")?;
        if id != EXPORT_SECTION {
            out.extend_from_slice(&module[at..end]);
            at = end;
            continue;
        }
        let (count, mut pos) = read_leb(module, start)?;
        pos += start;
        let mut kept = Vec::new();
        let mut kept_count = 0u32;
        for _ in 0..count {
            let entry_start = pos;
            let (name_len, n) = read_leb(module, pos)?;
            let name = module
                .get(pos + n..pos + n + name_len)
                .ok_or("export name past the end")?;
            pos += n + name_len + 1; // the name, then the export's kind
            let (_, n) = read_leb(module, pos)?;
            pos += n; // its index
            if removed.iter().any(|r| r.as_bytes() == name) {
                found += 1;
            } else {
                kept.extend_from_slice(&module[entry_start..pos]);
                kept_count += 1;
            }
        }
        if pos != end {
            return Err("export section length mismatch".into());
        }
        let mut payload = leb(kept_count as usize);
        payload.extend(kept);
        out.push(EXPORT_SECTION);
        out.extend(leb(payload.len()));
        out.extend(payload);
        at = end;
    }
    if found != removed.len() {
        return Err(format!(
            "{} of the {} exports to remove were found",
            found,
            removed.len()
        ));
    }
    Ok(out)
}

/// An unsigned LEB128 at `at`: its value and its length in bytes.
fn read_leb(bytes: &[u8], at: usize) -> Result<(usize, usize), String> {
    let mut value = 0usize;
    for i in 0..5 {
        let byte = *bytes.get(at + i).ok_or("LEB128 past the end")?;
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err("LEB128 longer than 5 bytes".into())
}

fn leb(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module: a type section, then an export section listing `exports` (name, function).
    fn module(exports: &[(&str, usize)]) -> Vec<u8> {
        let mut section = leb(exports.len());
        for (name, index) in exports {
            section.extend(leb(name.len()));
            section.extend(name.as_bytes());
            section.push(0);
            section.extend(leb(*index));
        }
        let mut out = b"\0asm\x01\0\0\0".to_vec();
        out.extend([1, 4, 1, 0x60, 0, 0]); // one type: () -> ()
        out.push(7);
        out.extend(leb(section.len()));
        out.extend(section);
        out
    }

    #[test]
    fn named_exports_are_removed_and_the_rest_kept_byte_for_byte() {
        let all = [
            ("memory", 0),
            ("proxy_on_log", 1),
            ("proxy_on_request_body", 2),
            ("proxy_on_tick", 3),
        ];
        let stripped = without_exports(&module(&all), &["proxy_on_request_body"]).unwrap();
        assert_eq!(stripped, module(&[all[0], all[1], all[3]]));
    }

    #[test]
    fn a_missing_export_or_a_broken_module_is_an_error() {
        let m = module(&[("proxy_on_log", 0)]);
        assert!(without_exports(&m, &["proxy_on_request_body"]).is_err());
        assert!(without_exports(&m[..m.len() - 1], &[]).is_err());
        assert!(without_exports(b"not wasm", &[]).is_err());
    }
}
