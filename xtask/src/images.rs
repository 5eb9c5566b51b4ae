//! `cargo xtask images`: container images of `plover` and `plover-exporter` as OCI image
//! layouts (`target/images/plover`, `target/images/plover-exporter`), with no Docker or other
//! container tooling.
//!
//! Each binary is built static (`x86_64-unknown-linux-musl`; rustup adds the target, Debian's
//! `musl-tools` gives ring its C compiler), and each image is one layer holding the binary at
//! `/usr/local/bin/` and the build machine's CA bundle (for https providers and notification
//! targets), run as the non-root user 65532 with the binary as entrypoint. The layer is
//! reproducible (see `wasm_image`), so the same binaries always give the same digests;
//! `target/images/digests.txt` lists them for a kustomization (`images: - name: plover,
//! newName: REGISTRY/plover, digest: sha256:…`). Push with `skopeo copy oci:DIR:TAG
//! docker://REGISTRY/plover:TAG` (or oras, crane).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::wasm_image::{write_image, Image, LayerFile};
use crate::{cargo_bin, run, workspace_root};

const TARGET: &str = "x86_64-unknown-linux-musl";
/// The CA bundle of Debian's `ca-certificates`, copied into each image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The images' user: not root (distroless' `nonroot`).
pub const USER: &str = "65532:65532";

/// (package, binary, image name).
const IMAGES: [(&str, &str, &str); 2] = [
    ("plover-controller", "plover", "plover"),
    ("plover-exporter", "plover-exporter", "plover-exporter"),
];

/// What `build` wrote.
pub struct Built {
    /// `target/images`, holding one layout directory per image.
    pub dir: PathBuf,
    pub images: Vec<(&'static str, Image)>,
}

pub fn run_command(args: &[&str]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: cargo xtask images".into());
    }
    let built = build()?;
    for (name, image) in &built.images {
        println!(
            "xtask: {name}: oci:{}:{} sha256:{}",
            built.dir.join(name).display(),
            env!("CARGO_PKG_VERSION"),
            image.manifest_digest
        );
    }
    println!(
        "push: skopeo copy oci:{}/plover:{v} docker://REGISTRY/plover:{v} (and plover-exporter); \
         digests in {}",
        built.dir.display(),
        built.dir.join("digests.txt").display(),
        v = env!("CARGO_PKG_VERSION")
    );
    Ok(())
}

/// Builds the static binaries and writes both image layouts.
pub fn build() -> Result<Built, String> {
    let root = workspace_root();
    if !crate::wasm::rustup_has_target(TARGET) {
        crate::wasm::rustup_add_target(TARGET)?;
    }
    let started = std::time::Instant::now();
    let mut cargo = Command::new(cargo_bin());
    cargo
        .current_dir(&root)
        .args(["build", "--release", "--target", TARGET])
        // ring's C and assembly, for musl.
        .env("CC_x86_64_unknown_linux_musl", "musl-gcc");
    for (package, binary, _) in IMAGES {
        cargo.args(["-p", package, "--bin", binary]);
    }
    run(&mut cargo)?;
    println!(
        "xtask: static binaries built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let ca = std::fs::read(CA_BUNDLE)
        .map_err(|e| format!("{CA_BUNDLE}: {e} (install Debian's ca-certificates)"))?;
    let dir = root.join("target/images");
    let mut images = Vec::new();
    let mut digests = String::new();
    for (_, binary, name) in IMAGES {
        let built = root
            .join("target")
            .join(TARGET)
            .join("release")
            .join(binary);
        let data = std::fs::read(&built).map_err(|e| format!("{}: {e}", built.display()))?;
        let path = format!("usr/local/bin/{binary}");
        let files = [
            LayerFile {
                path: &path,
                mode: 0o755,
                data: &data,
            },
            LayerFile {
                path: CA_BUNDLE.trim_start_matches('/'),
                mode: 0o644,
                data: &ca,
            },
        ];
        let config = format!(
            r#"{{"Entrypoint":["/{path}"],"User":"{USER}","Env":["SSL_CERT_FILE={CA_BUNDLE}"]}}"#
        );
        let image = write_image(
            &dir.join(name),
            &files,
            &config,
            &format!("cargo xtask images: static {binary} ({TARGET})"),
            env!("CARGO_PKG_VERSION"),
        )?;
        digests.push_str(&format!("{name} sha256:{}\n", image.manifest_digest));
        images.push((name, image));
    }
    write(&dir.join("digests.txt"), digests.as_bytes())?;
    Ok(Built { dir, images })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}
