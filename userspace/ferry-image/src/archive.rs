//! `ferry load`: `docker save` archives and OCI image layouts in a tar,
//! plain or compressed.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{self, BufReader, Read, Seek, SeekFrom},
    os::unix::fs::FileExt as _,
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Deserialize;

use crate::{
    ImageError, LoadedImage, Store,
    layer::{self, digest_of},
    names,
};

/// A `docker save` archive's `manifest.json` entry.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Where each file of the archive is: offset and length of its content.
struct Index {
    file: File,
    entries: HashMap<PathBuf, (u64, u64)>,
}

/// Reads `len` bytes from `offset` of a file shared with other readers.
struct Section<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.at).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Normalizes an archive path: no `./`, no leading `/`.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl Index {
    /// Lists the archive once; symlinks and hard links resolve to the file
    /// they name (`docker save` links identical layers).
    fn of(file: File) -> Result<Self, ImageError> {
        let bad = |e: io::Error| ImageError::Invalid(format!("reading the archive: {e}"));
        let mut entries = HashMap::new();
        let mut links = Vec::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries().map_err(bad)? {
                let entry = entry.map_err(bad)?;
                let Some(path) = clean(&entry.path().map_err(bad)?) else {
                    continue;
                };
                let kind = entry.header().entry_type();
                if kind.is_file() {
                    entries.insert(path, (entry.raw_file_position(), entry.size()));
                } else if (kind.is_symlink() || kind.is_hard_link())
                    && let Ok(Some(target)) = entry.link_name()
                {
                    let base = if kind.is_symlink() {
                        path.parent().map(Path::to_owned).unwrap_or_default()
                    } else {
                        PathBuf::new()
                    };
                    if let Some(target) = clean(&base.join(target)) {
                        links.push((path, target));
                    }
                }
            }
        }
        for (path, target) in links {
            if let Some(&at) = entries.get(&target) {
                entries.insert(path, at);
            }
        }
        Ok(Self { file, entries })
    }

    fn open(&self, path: &str) -> Result<Section<'_>, ImageError> {
        let key = clean(Path::new(path)).unwrap_or_default();
        let &(at, len) = self.entries.get(&key).ok_or_else(|| {
            ImageError::Invalid(format!("the archive has no {path} (truncated archive?)"))
        })?;
        Ok(Section {
            file: &self.file,
            at,
            end: at + len,
        })
    }

    fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        self.open(path)?
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| ImageError::Invalid(format!("reading {path}: {e}")))?;
        Ok(out)
    }

    fn has(&self, path: &str) -> bool {
        self.entries.contains_key(Path::new(path))
    }
}

/// Manifests and configs are small; anything bigger is not one.
const MAX_JSON: u64 = 8 << 20;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// A fresh name in the store's temporary directory.
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{what}-{}-{seq}", std::process::id()))
    }
}

/// One image to import: config bytes, and for each layer how to open it and
/// what its blob digest must be (OCI layouts name it; `docker save` does
/// not).
struct Candidate {
    config: Vec<u8>,
    names: Vec<String>,
    layers: Vec<(String, Option<String>)>,
}

impl Store {
    /// Loads every image of the archive at `path` (plain, gzip or zstd tar).
    pub fn load(&self, path: &Path) -> Result<Vec<LoadedImage>, ImageError> {
        let mut file = File::open(path).map_err(ImageError::at(path, "opening"))?;
        let mut head = [0u8; 4];
        let n = file
            .read(&mut head)
            .map_err(ImageError::at(path, "reading"))?;
        file.seek(SeekFrom::Start(0))
            .map_err(ImageError::at(path, "reading"))?;
        let compressed = head[..n].starts_with(&[0x1f, 0x8b])
            || head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
        let plain = if compressed {
            let out = self.tmp_path("archive");
            let result = (|| {
                let mut reader: Box<dyn Read> = if head[0] == 0x1f {
                    Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)))
                } else {
                    Box::new(
                        zstd::stream::read::Decoder::new(file)
                            .map_err(|e| ImageError::Invalid(format!("zstd: {e}")))?,
                    )
                };
                let mut w = File::create(&out).map_err(ImageError::at(&out, "creating"))?;
                io::copy(&mut reader, &mut w)
                    .map_err(|e| ImageError::Invalid(format!("decompressing the archive: {e}")))?;
                File::open(&out).map_err(ImageError::at(&out, "opening"))
            })();
            let _ = fs::remove_file(&out);
            result?
        } else {
            file
        };
        let index = Index::of(plain)?;
        let candidates = if index.has("manifest.json") {
            docker_candidates(&index)?
        } else if index.has("index.json") {
            oci_candidates(&index)?
        } else {
            return Err(ImageError::Invalid(
                "neither a `docker save` archive nor an OCI image layout: it has no \
                 manifest.json or index.json"
                    .into(),
            ));
        };
        let mut loaded = Vec::new();
        for c in candidates {
            loaded.push(self.import(&index, c)?);
        }
        Ok(loaded)
    }

    fn import(&self, index: &Index, c: Candidate) -> Result<LoadedImage, ImageError> {
        let id = digest_of(&c.config);
        let config: ImageConfiguration = serde_json::from_slice(&c.config)
            .map_err(|e| ImageError::Invalid(format!("image config {id}: {e}")))?;
        let diff_ids = config.rootfs().diff_ids().clone();
        if diff_ids.len() != c.layers.len() {
            return Err(ImageError::Invalid(format!(
                "image {id}: the config lists {} layers, the manifest {}",
                diff_ids.len(),
                c.layers.len()
            )));
        }
        let names = c
            .names
            .iter()
            .map(|n| names::normalize(n))
            .collect::<Result<Vec<_>, _>>()?;
        self.hold(&diff_ids);
        let result = (|| {
            let mut size = 0;
            for (i, ((path, blob), diff_id)) in c.layers.iter().zip(&diff_ids).enumerate() {
                size += self.unpack_layer(index, path, blob.as_deref(), diff_id, i)?;
            }
            self.commit(
                Store::new_record(&config, id.clone(), size),
                &c.config,
                &names,
            )
        })();
        self.release(&diff_ids);
        result
    }

    /// Unpacks one layer unless the store has it; returns its size on disk
    /// (measured for layers already present).
    fn unpack_layer(
        &self,
        index: &Index,
        path: &str,
        blob: Option<&str>,
        diff_id: &str,
        n: usize,
    ) -> Result<u64, ImageError> {
        if self.has_layer(diff_id) {
            return Ok(du(&self.layer_dir(diff_id)));
        }
        layer::put(
            self,
            index.open(path)?,
            blob,
            diff_id,
            &format!("layer {n} ({path})"),
        )
    }
}

/// Bytes of regular files under a directory (what it holds, as `docker
/// system df` counts it).
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

fn docker_candidates(index: &Index) -> Result<Vec<Candidate>, ImageError> {
    let bytes = index.read("manifest.json", MAX_JSON)?;
    let manifests: Vec<DockerManifest> = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
    manifests
        .into_iter()
        .map(|m| {
            Ok(Candidate {
                config: index.read(&m.config, MAX_JSON)?,
                names: m.repo_tags.unwrap_or_default(),
                layers: m.layers.into_iter().map(|l| (l, None)).collect(),
            })
        })
        .collect()
}

fn blob_path(d: &Descriptor) -> String {
    let digest = d.digest();
    format!("blobs/{}/{}", digest.algorithm(), digest.digest())
}

/// A blob named by a descriptor, checked against its digest.
fn read_blob(index: &Index, d: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let bytes = index.read(&blob_path(d), MAX_JSON)?;
    let got = digest_of(&bytes);
    if got != d.digest().to_string() {
        return Err(ImageError::Invalid(format!(
            "{}: digest mismatch (content is {got})",
            blob_path(d)
        )));
    }
    Ok(bytes)
}

/// The host's platform in OCI's words.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn for_this_host(d: &Descriptor) -> bool {
    d.platform().as_ref().is_none_or(|p| {
        p.os().to_string() == "linux" && p.architecture().to_string() == host_arch()
    })
}

fn oci_candidates(index: &Index) -> Result<Vec<Candidate>, ImageError> {
    let bytes = index.read("index.json", MAX_JSON)?;
    let top: ImageIndex = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Invalid(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    for d in top.manifests() {
        let annotations = d.annotations().clone().unwrap_or_default();
        // containerd and Docker write the full name; the OCI annotation may be
        // a full name or only a tag, which names nothing without a repository.
        let name = annotations
            .get("io.containerd.image.name")
            .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
            .filter(|n| n.contains(':') || n.contains('/'))
            .cloned();
        let manifest = match d.media_type() {
            MediaType::ImageIndex => {
                let nested: ImageIndex = serde_json::from_slice(&read_blob(index, d)?)
                    .map_err(|e| ImageError::Invalid(format!("{}: {e}", blob_path(d))))?;
                let Some(m) = nested.manifests().iter().find(|m| for_this_host(m)) else {
                    return Err(ImageError::Invalid(format!(
                        "{} has no image for linux/{}",
                        name.as_deref().unwrap_or("an image index"),
                        host_arch()
                    )));
                };
                m.clone()
            }
            _ if !for_this_host(d) => continue,
            _ => d.clone(),
        };
        let m: ImageManifest = serde_json::from_slice(&read_blob(index, &manifest)?)
            .map_err(|e| ImageError::Invalid(format!("{}: {e}", blob_path(&manifest))))?;
        out.push(Candidate {
            config: read_blob(index, m.config())?,
            names: name.into_iter().collect(),
            layers: m
                .layers()
                .iter()
                .map(|l| (blob_path(l), Some(l.digest().to_string())))
                .collect(),
        });
    }
    if out.is_empty() {
        return Err(ImageError::Invalid(format!(
            "index.json lists no image for linux/{}",
            host_arch()
        )));
    }
    Ok(out)
}
