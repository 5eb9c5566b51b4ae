//! The container images of `cargo xtask images` (`PLOVER_IMAGES`, set by `cargo xtask test`),
//! read as a registry or a runtime would: every blob under its digest, the config's user and
//! entrypoint, the layer unpacked, and each entrypoint run from the unpacked files as the
//! image's non-root user.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

fn images() -> PathBuf {
    PathBuf::from(std::env::var_os("PLOVER_IMAGES").expect(
        "PLOVER_IMAGES is not set: run `cargo xtask test` (or `cargo xtask images` and set it to target/images)",
    ))
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A blob, checked against its digest.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let data = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(
        sha256_hex(&data),
        hex,
        "blob {digest} is what its name says"
    );
    data
}

fn json(data: &[u8]) -> serde_json::Value {
    serde_json::from_slice(data).unwrap()
}

/// (path, mode, kind, contents) of each ustar entry.
fn untar(tar: &[u8]) -> Vec<(String, u32, u8, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        let header = &tar[at..at + 512];
        let text = |range: std::ops::Range<usize>| {
            String::from_utf8_lossy(&header[range])
                .trim_end_matches(['\0', ' '])
                .to_owned()
        };
        let name = text(0..100);
        let mode = u32::from_str_radix(&text(100..108), 8).unwrap();
        let size = usize::from_str_radix(&text(124..136), 8).unwrap();
        let kind = header[156];
        let data = tar[at + 512..at + 512 + size].to_vec();
        entries.push((name, mode, kind, data));
        at += 512 + size.div_ceil(512) * 512;
    }
    entries
}

#[test]
fn each_image_unpacks_and_its_entrypoint_runs_as_the_non_root_user() {
    let dir = images();
    let digests = std::fs::read_to_string(dir.join("digests.txt")).unwrap();
    for (name, binary) in [("plover", "plover"), ("plover-exporter", "plover-exporter")] {
        let layout = dir.join(name);
        assert_eq!(
            std::fs::read_to_string(layout.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
        let index = json(&std::fs::read(layout.join("index.json")).unwrap());
        let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        assert!(
            digests.contains(&format!("{name} {manifest_digest}")),
            "{digests}"
        );
        let manifest = json(&blob(&layout, &manifest_digest));
        let config = json(&blob(
            &layout,
            manifest["config"]["digest"].as_str().unwrap(),
        ));
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["User"], "65532:65532");
        let entrypoint = format!("/usr/local/bin/{binary}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint])
        );

        let layer = blob(&layout, manifest["layers"][0]["digest"].as_str().unwrap());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&layer[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&tar)),
            "the config names the uncompressed layer"
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut files = Vec::new();
        for (path, mode, kind, data) in untar(&tar) {
            let target = root.path().join(&path);
            if kind == b'5' {
                std::fs::create_dir_all(&target).unwrap();
            } else {
                std::fs::write(&target, &data).unwrap();
                files.push((path.clone(), mode));
            }
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        assert_eq!(
            files,
            [
                ("etc/ssl/certs/ca-certificates.crt".to_owned(), 0o644),
                (entrypoint.trim_start_matches('/').to_owned(), 0o755),
            ]
        );
        let program = root.path().join(entrypoint.trim_start_matches('/'));
        let bytes = std::fs::read(&program).unwrap();
        assert!(
            !bytes.windows(18).any(|w| w == b"ld-linux-x86-64.so"),
            "{name}: static, no dynamic loader needed in an image without libc"
        );
        let out = std::process::Command::new(&program)
            .arg("--version")
            .env_clear()
            .uid(65532)
            .gid(65532)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}
