//! `ferry save`: images as a tar that both `docker load` (Docker 25 and
//! later read its `manifest.json`) and OCI tools (its `index.json`) take:
//! an OCI image layout whose blobs are the config and the layers as they
//! arrived.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, Read as _, Write},
    path::Path,
};

use serde_json::{Value, json};

use crate::{ImageError, Store, layer::Digester, names};

/// The media type of a layer blob, told by its first bytes.
fn layer_media_type(path: &Path) -> Result<&'static str, ImageError> {
    let mut head = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(ImageError::at(path, "reading"))?;
    Ok(if head[..n].starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    })
}

fn digest_file(path: &Path) -> Result<(String, u64), ImageError> {
    let file = File::open(path).map_err(ImageError::at(path, "reading"))?;
    let (digest, size, _) = Digester::new(file)
        .finish()
        .map_err(ImageError::at(path, "reading"))?;
    Ok((digest, size))
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

impl Store {
    /// Writes the images `references` name to `out`.
    pub fn save(&self, references: &[String], out: impl Write) -> Result<(), ImageError> {
        let bad = |e: io::Error| ImageError::Io {
            context: "writing the archive".into(),
            source: e,
        };
        let mut tar = tar::Builder::new(out);
        let append = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, data).map_err(bad)
        };
        let mut written: HashSet<String> = HashSet::new();
        let (mut index, mut docker) = (Vec::new(), Vec::new());
        for reference in references {
            let record = self.resolve(reference)?;
            let config = std::fs::read(self.config_path(&record.id))
                .map_err(ImageError::at(&self.config_path(&record.id), "reading"))?;
            if written.insert(record.id.clone()) {
                append(&mut tar, &blob_name(&record.id), &config)?;
            }
            let mut layers = Vec::new();
            for diff_id in &record.layers {
                let path = self.layer_blob(diff_id);
                if !path.exists() {
                    return Err(ImageError::Invalid(format!(
                        "{reference}: layer {diff_id} was stored before ferry kept layer blobs; \
                         remove the image and load or pull it again to save it"
                    )));
                }
                let (digest, size) = digest_file(&path)?;
                if written.insert(digest.clone()) {
                    tar.append_path_with_name(&path, blob_name(&digest))
                        .map_err(bad)?;
                }
                layers.push(json!({
                    "mediaType": layer_media_type(&path)?,
                    "digest": digest,
                    "size": size,
                }));
            }
            let layer_names: Vec<String> = layers
                .iter()
                .filter_map(|l| l["digest"].as_str().map(blob_name))
                .collect();
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": record.id,
                    "size": config.len(),
                },
                "layers": layers,
            }))
            .map_err(|e| ImageError::Invalid(format!("encoding a manifest: {e}")))?;
            let manifest_digest = crate::layer::digest_of(&manifest);
            if written.insert(manifest_digest.clone()) {
                append(&mut tar, &blob_name(&manifest_digest), &manifest)?;
            }
            // The name as given when it is one of the image's, else all of them.
            let all: Vec<String> = self
                .names_of(&record.id)
                .iter()
                .filter_map(|n| names::normalize(n).ok())
                .collect();
            let tags = match names::normalize(reference) {
                Ok(n) if all.contains(&n) => vec![n],
                _ => all,
            };
            let descriptor = |name: Option<&String>| {
                let mut d = json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": manifest.len(),
                });
                if let Some(n) = name {
                    d["annotations"] = json!({
                        "io.containerd.image.name": n,
                        "org.opencontainers.image.ref.name": names::split_tag(n).1,
                    });
                }
                d
            };
            if tags.is_empty() {
                index.push(descriptor(None));
            }
            index.extend(tags.iter().map(|t| descriptor(Some(t))));
            docker.push(json!({
                "Config": blob_name(&record.id),
                "RepoTags": tags.iter().map(|t| names::familiar(t)).collect::<Vec<_>>(),
                "Layers": layer_names,
            }));
        }
        let index: Value = json!({ "schemaVersion": 2, "manifests": index });
        let encode = |v: &Value| {
            serde_json::to_vec(v).map_err(|e| ImageError::Invalid(format!("encoding: {e}")))
        };
        append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append(&mut tar, "index.json", &encode(&index)?)?;
        append(&mut tar, "manifest.json", &encode(&json!(docker))?)?;
        tar.into_inner().map_err(bad)?.flush().map_err(bad)
    }
}
