//! Images built by the tests' own code from local files: layers as tar
//! streams, a config, and the two archive formats `ferry load` reads
//! (`docker save` and an OCI image layout), written as the formats' specs
//! say.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub fn digest(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// A layer being written: entries in tar order.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        Self { builder }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut h, path, &[][..])
            .expect("tar dir");
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder
            .append_data(&mut h, path, data)
            .expect("tar file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("tar symlink");
        self
    }

    /// Hides `dir/name` of the layers below.
    pub fn whiteout(self, dir: &str, name: &str) -> Self {
        self.file(&format!("{dir}/.wh.{name}"), 0o644, b"")
    }

    /// Hides everything the layers below have in `dir`.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    /// The host's static busybox with these applets, a page and a CGI
    /// script for its httpd.
    pub fn busybox(self, applets: &[&str]) -> Self {
        let busybox = std::fs::read("/bin/busybox").expect("busybox-static");
        let mut layer = self
            .dir("bin")
            .file("bin/busybox", 0o755, &busybox)
            .dir("etc")
            .file(
                "etc/passwd",
                0o644,
                b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/sh\n",
            )
            .file("etc/group", 0o644, b"root:x:0:\nwww:x:33:\n")
            .dir("www")
            .dir("www/cgi-bin")
            .file("www/index.html", 0o644, b"hello from an image\n")
            .file(
                "www/cgi-bin/peer",
                0o755,
                b"#!/bin/sh\necho Content-Type: text/plain\necho\necho peer $REMOTE_ADDR\n",
            );
        for applet in applets {
            layer = layer.symlink(&format!("bin/{applet}"), "busybox");
        }
        layer
    }

    /// A directory of the host, as `path` in the image (symlinks kept).
    pub fn tree(mut self, path: &str, host_dir: &Path) -> Self {
        self.builder
            .append_dir_all(path, host_dir)
            .unwrap_or_else(|e| panic!("tar {}: {e}", host_dir.display()));
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("tar")
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// An image config over `layers` (uncompressed tars): `config` is its
/// `config` object (Cmd, Env, ...).
pub fn config(layers: &[Vec<u8>], config: Value) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("config JSON")
}

/// A tar archive of (path, bytes) files.
fn archive(path: &Path, files: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = Layer::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, &data[..])
            .expect("archive entry");
    }
    std::fs::write(path, b.into_inner().expect("archive")).expect("write archive");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// `docker save` output: manifest.json, the config, `<n>/layer.tar`.
pub fn docker_archive(path: &Path, tags: &[&str], layers: &[Vec<u8>], config: &[u8]) {
    let config_name = format!("{}.json", hex(&digest(config)));
    let layer_names: Vec<String> = (0..layers.len())
        .map(|i| format!("{i}/layer.tar"))
        .collect();
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": tags,
        "Layers": layer_names,
    }]);
    let mut files = vec![
        (
            "manifest.json".to_owned(),
            serde_json::to_vec(&manifest).expect("manifest"),
        ),
        (config_name, config.to_vec()),
    ];
    files.extend(layer_names.into_iter().zip(layers.iter().cloned()));
    archive(path, &files);
}

/// A file of an archive: (path, bytes).
type Entry = (String, Vec<u8>);

fn blob(bytes: &[u8]) -> Entry {
    (
        format!("blobs/sha256/{}", hex(&digest(bytes))),
        bytes.to_vec(),
    )
}

/// One image's manifest over gzip-compressed `layers`, with its blobs
/// (manifest, config, layers; `damage` flips a byte of that layer's blob
/// after its digest was taken) and its descriptor.
fn oci_image(layers: &[Vec<u8>], config: &[u8], damage: Option<usize>) -> (Vec<Entry>, Value) {
    let blobs: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(config),
            "size": config.len(),
        },
        "layers": blobs.iter().map(|b| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest(b),
            "size": b.len(),
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest");
    let descriptor = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest(&manifest),
        "size": manifest.len(),
    });
    let mut files = vec![blob(&manifest), blob(config)];
    for (i, b) in blobs.iter().enumerate() {
        let (name, mut data) = blob(b);
        if damage == Some(i) {
            let at = data.len() / 2;
            data[at] ^= 0xff;
        }
        files.push((name, data));
    }
    (files, descriptor)
}

/// Writes a layout whose index.json names `top` (annotated with `name`).
fn oci_layout(path: &Path, name: &str, mut files: Vec<Entry>, mut top: Value) {
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
    let index = json!({ "schemaVersion": 2, "manifests": [top] });
    files.push((
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    files.push((
        "index.json".to_owned(),
        serde_json::to_vec(&index).expect("index"),
    ));
    files.sort();
    files.dedup();
    archive(path, &files);
}

/// An OCI image layout with gzip-compressed layers; `name` goes in the
/// index's annotations. `damage` flips a byte of that layer's blob after
/// its digest was taken.
pub fn oci_archive(
    path: &Path,
    name: &str,
    layers: &[Vec<u8>],
    config: &[u8],
    damage: Option<usize>,
) {
    let (files, descriptor) = oci_image(layers, config, damage);
    oci_layout(path, name, files, descriptor);
}

/// One platform's image: architecture, layers (uncompressed tars), config.
pub type Platform<'a> = (&'a str, &'a [Vec<u8>], &'a [u8]);

/// An OCI image layout whose index.json names one image index (a
/// multi-platform image): one manifest per platform, gzip layers, `name` in
/// the annotations.
pub fn oci_index_archive(path: &Path, name: &str, images: &[Platform]) {
    let mut files = Vec::new();
    let mut entries = Vec::new();
    for (arch, layers, config) in images {
        let (blobs, mut descriptor) = oci_image(layers, config, None);
        descriptor["platform"] = json!({ "architecture": arch, "os": "linux" });
        entries.push(descriptor);
        files.extend(blobs);
    }
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .expect("index");
    files.push(blob(&nested));
    let top = json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": digest(&nested),
        "size": nested.len(),
    });
    oci_layout(path, name, files, top);
}
