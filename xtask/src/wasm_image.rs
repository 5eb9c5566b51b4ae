//! `cargo xtask wasm-image`: the filter as an OCI image that Istio's WasmPlugin can pull
//! (`url: oci://…`), written as an OCI image layout directory with no container tooling.
//!
//! The image is the "compat" variant of the Wasm image specification that Istio's image
//! fetcher accepts from every version on: one `application/vnd.oci.image.layer.v1.tar+gzip`
//! layer holding `plugin.wasm`, a standard `application/vnd.oci.image.config.v1+json` config,
//! and an `application/vnd.oci.image.manifest.v1+json` manifest — what `docker build` of
//! `FROM scratch` + `COPY plover_filter.wasm ./plugin.wasm` gives, so any registry stores it.
//! The layer is reproducible (fixed tar header fields, gzip of stored deflate blocks), so the
//! same `.wasm` always gives the same manifest digest. Push the directory with
//! `skopeo copy oci:DIR:TAG docker://REGISTRY/REPO:TAG`, `oras cp --from-oci-layout DIR:TAG
//! REGISTRY/REPO:TAG` or `crane push DIR REGISTRY/REPO:TAG`.

use std::fs;
use std::path::{Path, PathBuf};

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The file name Istio looks for inside the layer.
pub const WASM_FILE_NAME: &str = "plugin.wasm";

const USAGE: &str = "usage: cargo xtask wasm-image [--wasm FILE] [--out DIR] [--tag TAG]
  --wasm FILE  the module to package (default: build plover_filter.wasm with `cargo xtask wasm`)
  --out DIR    OCI image layout directory to write (default: target/plover-filter-oci)
  --tag TAG    reference name in index.json (default: the workspace version)";

pub fn run(args: &[&str]) -> Result<(), String> {
    let (mut wasm, mut out, mut tag) = (None, None, env!("CARGO_PKG_VERSION").to_owned());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .map(|v| (*v).to_owned())
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match *arg {
            "--wasm" => wasm = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--tag" => tag = value()?,
            _ => return Err(format!("unknown argument {arg}\n{USAGE}")),
        }
    }
    let wasm = match wasm {
        Some(path) => path,
        None => crate::wasm::build()?,
    };
    let out = out.unwrap_or_else(|| crate::workspace_root().join("target/plover-filter-oci"));
    let module = fs::read(&wasm).map_err(|e| format!("reading {}: {e}", wasm.display()))?;
    let image = write_layout(&out, &module, &tag)?;
    println!("xtask: OCI image layout {} (tag {tag})", out.display());
    println!("  manifest  sha256:{}", image.manifest_digest);
    println!("  config    sha256:{}", image.config_digest);
    println!(
        "  layer     sha256:{} ({LAYER_MEDIA_TYPE}, {WASM_FILE_NAME})",
        image.layer_digest
    );
    println!(
        "  module    sha256:{} ({} bytes, {})",
        image.wasm_sha256,
        module.len(),
        wasm.display()
    );
    println!("push it (any one of):");
    println!(
        "  skopeo copy oci:{}:{tag} docker://REGISTRY/plover/plover-filter:{tag}",
        out.display()
    );
    println!(
        "  oras cp --from-oci-layout {}:{tag} REGISTRY/plover/plover-filter:{tag}",
        out.display()
    );
    println!(
        "  crane push {} REGISTRY/plover/plover-filter:{tag}",
        out.display()
    );
    println!(
        "then WasmPlugin url: oci://REGISTRY/plover/plover-filter:{tag} (or @sha256:{})",
        image.manifest_digest
    );
    println!(
        "plain https instead: serve {} and use sha256: {}",
        wasm.display(),
        image.wasm_sha256
    );
    Ok(())
}

/// Digests (hex) of what was written.
pub struct Image {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub wasm_sha256: String,
}

/// Writes `dir` as an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) holding
/// one image whose layer carries `module` as `plugin.wasm`. Replaces an earlier layout there.
pub fn write_layout(dir: &Path, module: &[u8], tag: &str) -> Result<Image, String> {
    if !module.starts_with(b"\0asm") {
        return Err("the module is not WebAssembly (no \\0asm magic)".into());
    }
    let mut image = write_image(
        dir,
        &[LayerFile {
            path: WASM_FILE_NAME,
            mode: 0o644,
            data: module,
        }],
        "{}",
        &format!("cargo xtask wasm-image: plover_filter.wasm as /{WASM_FILE_NAME}"),
        tag,
    )?;
    image.wasm_sha256 = hex(&sha256(module));
    Ok(image)
}

/// A regular file of an image's layer.
pub struct LayerFile<'a> {
    /// Relative to the root, no leading `/` (`usr/local/bin/plover`).
    pub path: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

/// Writes `dir` as an OCI image layout of one image: one reproducible layer holding `files`
/// (and their parent directories), `config` as the image config's `config` object (JSON:
/// entrypoint, user, env), `created_by` in its history. Replaces an earlier layout there.
pub fn write_image(
    dir: &Path,
    files: &[LayerFile],
    config: &str,
    created_by: &str,
    tag: &str,
) -> Result<Image, String> {
    let tar = tar_files(files)?;
    let layer = gzip_stored(&tar);
    let diff_id = hex(&sha256(&tar));
    let layer_digest = hex(&sha256(&layer));
    let created_by = created_by.replace('\\', "\\\\").replace('"', "\\\"");
    let config = format!(
        concat!(
            r#"{{"architecture":"amd64","os":"linux","config":{},"#,
            r#""rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}},"#,
            r#""history":[{{"created_by":"{}"}}]}}"#
        ),
        config, diff_id, created_by
    );
    let config_digest = hex(&sha256(config.as_bytes()));
    let manifest = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"{}","#,
            r#""config":{{"mediaType":"{}","digest":"sha256:{}","size":{}}},"#,
            r#""layers":[{{"mediaType":"{}","digest":"sha256:{}","size":{}}}]}}"#
        ),
        MANIFEST_MEDIA_TYPE,
        CONFIG_MEDIA_TYPE,
        config_digest,
        config.len(),
        LAYER_MEDIA_TYPE,
        layer_digest,
        layer.len()
    );
    let manifest_digest = hex(&sha256(manifest.as_bytes()));
    if tag.is_empty() || tag.contains('"') || tag.contains('\\') {
        return Err(format!("invalid tag {tag:?}"));
    }
    let index = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","#,
            r#""manifests":[{{"mediaType":"{}","digest":"sha256:{}","size":{},"#,
            r#""annotations":{{"org.opencontainers.image.ref.name":"{}"}}}}]}}"#
        ),
        MANIFEST_MEDIA_TYPE,
        manifest_digest,
        manifest.len(),
        tag
    );
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| format!("creating {}: {e}", blobs.display()))?;
    let write = |path: PathBuf, bytes: &[u8]| {
        fs::write(&path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write(dir.join("index.json"), index.as_bytes())?;
    write(blobs.join(&manifest_digest), manifest.as_bytes())?;
    write(blobs.join(&config_digest), config.as_bytes())?;
    write(blobs.join(&layer_digest), &layer)?;
    Ok(Image {
        manifest_digest,
        config_digest,
        layer_digest,
        wasm_sha256: String::new(),
    })
}

/// A POSIX ustar archive of `files` and their parent directories (0755), every entry owned
/// by 0:0 with mtime 0, directories first in path order: the same files, the same bytes.
fn tar_files(files: &[LayerFile]) -> Result<Vec<u8>, String> {
    let mut directories: Vec<String> = Vec::new();
    for file in files {
        let parts: Vec<&str> = file.path.split('/').collect();
        for depth in 1..parts.len() {
            let directory = format!("{}/", parts[..depth].join("/"));
            if !directories.contains(&directory) {
                directories.push(directory);
            }
        }
    }
    directories.sort();
    let mut out = Vec::new();
    for directory in &directories {
        out.extend_from_slice(&tar_header(directory, 0o755, 0, b'5')?);
    }
    let mut sorted: Vec<&LayerFile> = files.iter().collect();
    sorted.sort_by_key(|f| f.path);
    for file in sorted {
        out.extend_from_slice(&tar_header(
            file.path,
            file.mode,
            file.data.len() as u64,
            b'0',
        )?);
        out.extend_from_slice(file.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok(out)
}

/// One ustar header: `kind` b'0' (file) or b'5' (directory).
fn tar_header(name: &str, mode: u32, size: u64, kind: u8) -> Result<[u8; 512], String> {
    if name.len() > 100 {
        return Err(format!("tar name too long: {name}"));
    }
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    if size >= 8u64.pow(11) {
        return Err("file too large for a ustar header".into());
    }
    octal(&mut header[124..136], size);
    octal(&mut header[136..148], 0);
    header[156] = kind;
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    Ok(header)
}

/// gzip (RFC 1952) of `data` in stored deflate blocks (RFC 1951 §3.2.4): valid for every gzip
/// reader, no compressor needed, byte-for-byte reproducible (mtime 0).
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// SHA-256 (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut message = data.to_vec();
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in message.chunks(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_fips_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        assert_eq!(
            hex(&sha256(long)),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    /// The layout is self-consistent (every digest and size is the blob's, checked with
    /// coreutils' sha256sum), and the layer is a tar.gz whose `plugin.wasm` is the module
    /// byte for byte (extracted with the system's tar and gzip, as Istio's fetcher would read it).
    #[test]
    fn images_are_reproducible_and_list_parent_directories_first() {
        let dir = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
        let files = [
            LayerFile {
                path: "usr/local/bin/tool",
                mode: 0o755,
                data: b"#!binary",
            },
            LayerFile {
                path: "etc/ssl/certs/ca.crt",
                mode: 0o644,
                data: b"PEM",
            },
        ];
        let config = r#"{"User":"65532:65532"}"#;
        let first = write_image(&dir, &files, config, "test", "1").unwrap();
        let again = write_image(&dir, &files, config, "test", "1").unwrap();
        assert_eq!(first.manifest_digest, again.manifest_digest);
        let tar = tar_files(&files).unwrap();
        let names: Vec<String> = tar
            .chunks(512)
            .filter(|h| h[257..262] == *b"ustar")
            .map(|h| {
                String::from_utf8_lossy(&h[..100])
                    .trim_end_matches('\0')
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/ssl/",
                "etc/ssl/certs/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "etc/ssl/certs/ca.crt",
                "usr/local/bin/tool"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_layout_holds_the_module_under_correct_digests() {
        use std::process::Command;
        let dir =
            std::env::temp_dir().join(format!("plover-wasm-image-test-{}", std::process::id()));
        let module: Vec<u8> = b"\0asm\x01\0\0\0"
            .iter()
            .copied()
            .chain((0..200_000u32).map(|i| (i % 251) as u8))
            .collect();
        let image = write_layout(&dir, &module, "0.1.0").unwrap();
        let read = |p: &str| fs::read_to_string(dir.join(p)).unwrap();
        assert_eq!(read("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#);
        let index = read("index.json");
        let manifest = read(&format!("blobs/sha256/{}", image.manifest_digest));
        assert!(
            index.contains(&format!(
                r#""digest":"sha256:{}","size":{}"#,
                image.manifest_digest,
                manifest.len()
            )),
            "{index}"
        );
        assert!(index.contains(r#""org.opencontainers.image.ref.name":"0.1.0""#));
        let layer = fs::read(dir.join(format!("blobs/sha256/{}", image.layer_digest))).unwrap();
        let config = read(&format!("blobs/sha256/{}", image.config_digest));
        assert!(manifest.contains(&format!(
            r#""mediaType":"{LAYER_MEDIA_TYPE}","digest":"sha256:{}","size":{}"#,
            image.layer_digest,
            layer.len()
        )));
        assert!(manifest.contains(&format!(
            r#""mediaType":"{CONFIG_MEDIA_TYPE}","digest":"sha256:{}","size":{}"#,
            image.config_digest,
            config.len()
        )));
        let sums = Command::new("sha256sum")
            .current_dir(dir.join("blobs/sha256"))
            .args([
                &image.manifest_digest,
                &image.config_digest,
                &image.layer_digest,
            ])
            .output()
            .unwrap();
        for line in String::from_utf8(sums.stdout).unwrap().lines() {
            let (sum, name) = line.split_once("  ").unwrap();
            assert_eq!(sum, name, "blob {name} is not named by its sha256");
        }
        let extracted = Command::new("tar")
            .args(["-xzOf"])
            .arg(dir.join(format!("blobs/sha256/{}", image.layer_digest)))
            .arg(WASM_FILE_NAME)
            .output()
            .unwrap();
        assert!(
            extracted.status.success(),
            "{}",
            String::from_utf8_lossy(&extracted.stderr)
        );
        assert!(
            extracted.stdout == module,
            "plugin.wasm differs from the module"
        );
        let diff_id = hex(&sha256(
            &Command::new("gzip")
                .arg("-dc")
                .arg(dir.join(format!("blobs/sha256/{}", image.layer_digest)))
                .output()
                .unwrap()
                .stdout,
        ));
        assert!(
            config.contains(&format!("sha256:{diff_id}")),
            "rootfs.diff_ids must be the uncompressed layer's digest"
        );
        assert_eq!(image.wasm_sha256, hex(&sha256(&module)));
        // Reproducible: the same module gives the same manifest digest.
        assert_eq!(
            write_layout(&dir, &module, "0.1.0")
                .unwrap()
                .manifest_digest,
            image.manifest_digest
        );
        assert!(write_layout(&dir, b"not wasm", "x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
