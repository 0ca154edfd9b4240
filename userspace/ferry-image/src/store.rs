//! The content-addressed store under `<state>/images`:
//!
//! ```text
//! blobs/sha256/<hex>    image configs, by digest (the image ID)
//! layers/<hex>/         unpacked layers, by diff_id
//! records/<hex>.json    one per image: its layers and run config
//! repositories.json     name:tag -> image ID
//! tmp/                  archives being read, layers being unpacked
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{ImageError, RunConfig, names};

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageRecord {
    /// `sha256:<hex>` of its config.
    pub id: String,
    /// Layer diff_ids, the lowest first.
    pub layers: Vec<String>,
    /// Unpacked size of all layers, in bytes.
    pub size: u64,
    /// When the image was built, as its config says.
    #[serde(default)]
    pub created: String,
    pub architecture: String,
    pub os: String,
    pub config: RunConfig,
    /// Unix seconds when this store got it.
    pub added: u64,
}

/// An image `load` brought in, with the names it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LoadedImage {
    pub id: String,
    pub names: Vec<String>,
}

#[derive(Default)]
struct State {
    images: BTreeMap<String, ImageRecord>,
    /// Normalized name -> image ID.
    names: BTreeMap<String, String>,
    /// Layers being unpacked or committed by a load: kept by removals.
    pending: HashMap<String, usize>,
}

pub struct Store {
    root: PathBuf,
    state: Mutex<State>,
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (creating) the store at `root`; what an interrupted load left
    /// in `tmp/` is removed.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let store = Self {
            root: root.to_owned(),
            state: Mutex::new(State::default()),
        };
        let tmp = store.tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(ImageError::at(&tmp, "clearing"))?;
        }
        for dir in [
            store.root.join("blobs/sha256"),
            store.root.join("layers"),
            store.root.join("records"),
            tmp,
        ] {
            fs::create_dir_all(&dir).map_err(ImageError::at(&dir, "creating"))?;
        }
        let mut state = State::default();
        let records = store.root.join("records");
        for entry in fs::read_dir(&records).map_err(ImageError::at(&records, "reading"))? {
            let path = entry.map_err(ImageError::at(&records, "reading"))?.path();
            let record: Option<ImageRecord> = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match record {
                Some(r) if r.layers.iter().all(|l| store.layer_dir(l).is_dir()) => {
                    state.images.insert(r.id.clone(), r);
                }
                _ => warn!(path = %path.display(), "unreadable or incomplete image record skipped"),
            }
        }
        let repositories = store.root.join("repositories.json");
        if let Ok(bytes) = fs::read(&repositories) {
            let names: BTreeMap<String, String> = serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::Invalid(format!("{}: {e}", repositories.display())))?;
            state.names = names
                .into_iter()
                .filter(|(_, id)| state.images.contains_key(id))
                .collect();
        }
        *store.lock() = state;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps: every
        // change is made in memory after the files are written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(hex(diff_id))
    }

    /// A layer's blob as it arrived (compressed or not), for `save`.
    pub(crate) fn layer_blob(&self, diff_id: &str) -> PathBuf {
        self.root
            .join("layers")
            .join(format!("{}.blob", hex(diff_id)))
    }

    pub(crate) fn config_path(&self, id: &str) -> PathBuf {
        self.blob_path(id)
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex(digest))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join("records").join(format!("{}.json", hex(id)))
    }

    /// The layers a container of `image` stacks: their directory and their
    /// names in it, the topmost first (the order overlayfs's `lowerdir`
    /// takes).
    pub fn overlay_layers(&self, image: &ImageRecord) -> (PathBuf, Vec<String>) {
        let names = image.layers.iter().rev().map(|l| hex(l).to_owned());
        (self.root.join("layers"), names.collect())
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes a layer takes unpacked.
    pub fn layer_size(&self, diff_id: &str) -> u64 {
        crate::archive::du(&self.layer_dir(diff_id))
    }

    /// Where uploaded archives wait to be loaded.
    pub fn upload_path(&self) -> PathBuf {
        self.tmp_path("upload")
    }

    /// Marks layers as in use by a load until `release`.
    pub(crate) fn hold(&self, layers: &[String]) {
        let mut s = self.lock();
        for l in layers {
            *s.pending.entry(l.clone()).or_default() += 1;
        }
    }

    pub(crate) fn release(&self, layers: &[String]) {
        let mut s = self.lock();
        for l in layers {
            if let Some(n) = s.pending.get_mut(l) {
                *n -= 1;
                if *n == 0 {
                    s.pending.remove(l);
                }
            }
        }
    }

    /// Writes an image whose layers are all in place, and names it. A name
    /// that pointed to another image moves to this one.
    pub(crate) fn commit(
        &self,
        record: ImageRecord,
        config: &[u8],
        names: &[String],
    ) -> Result<LoadedImage, ImageError> {
        let blob = self.blob_path(&record.id);
        write_atomic(&blob, config)?;
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| ImageError::Invalid(format!("encoding the record: {e}")))?;
        write_atomic(&self.record_path(&record.id), &bytes)?;
        let mut s = self.lock();
        let mut new_names = s.names.clone();
        for n in names {
            new_names.insert(n.clone(), record.id.clone());
        }
        self.write_names(&new_names)?;
        s.names = new_names;
        let id = record.id.clone();
        s.images.insert(id.clone(), record);
        info!(id = %&hex(&id)[..12], ?names, "image stored");
        Ok(LoadedImage {
            id,
            names: names
                .iter()
                .map(|n| names::familiar(n).to_owned())
                .collect(),
        })
    }

    fn write_names(&self, names: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(names)
            .map_err(|e| ImageError::Invalid(format!("encoding names: {e}")))?;
        write_atomic(&self.root.join("repositories.json"), &bytes)
    }

    /// Finds an image by name (`nginx`, `nginx:1.25`, `host:5000/x:y`), ID
    /// (`sha256:<hex>`) or a unique prefix of its ID's hex.
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let s = self.lock();
        resolve_in(&s, reference).and_then(|id| {
            s.images
                .get(&id)
                .cloned()
                .ok_or_else(|| ImageError::NotFound(reference.to_owned()))
        })
    }

    /// Every image with its names (familiar form), newest first.
    pub fn list(&self) -> Vec<(ImageRecord, Vec<String>)> {
        let s = self.lock();
        let mut out: Vec<(ImageRecord, Vec<String>)> = s
            .images
            .values()
            .map(|r| {
                let names = s
                    .names
                    .iter()
                    .filter(|(_, id)| **id == r.id)
                    .map(|(n, _)| names::familiar(n).to_owned())
                    .collect();
                (r.clone(), names)
            })
            .collect();
        out.sort_by(|a, b| b.0.added.cmp(&a.0.added).then(a.0.id.cmp(&b.0.id)));
        out
    }

    /// The names of one image, familiar form.
    pub fn names_of(&self, id: &str) -> Vec<String> {
        let s = self.lock();
        s.names
            .iter()
            .filter(|(_, i)| *i == id)
            .map(|(n, _)| names::familiar(n).to_owned())
            .collect()
    }

    /// The config exactly as the image carries it.
    pub fn config_json(&self, id: &str) -> Result<serde_json::Value, ImageError> {
        let path = self.blob_path(id);
        let bytes = fs::read(&path).map_err(ImageError::at(&path, "reading"))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))
    }

    /// `ferry tag SOURCE TARGET`.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let target = names::normalize(target)?;
        if target.contains('@') {
            return Err(ImageError::Reference {
                reference: target,
                reason: "a tag cannot name a digest".into(),
            });
        }
        let mut s = self.lock();
        let id = resolve_in(&s, source)?;
        let mut new_names = s.names.clone();
        new_names.insert(target, id);
        self.write_names(&new_names)?;
        s.names = new_names;
        Ok(())
    }

    /// `ferry rmi`: a name of an image that has other names is only
    /// untagged; otherwise the image goes, with the layers no other image
    /// uses. `used_by` names a container that uses an image ID, if any:
    /// such an image is never removed. Returns what was untagged and
    /// deleted, as Docker reports it.
    pub fn remove(
        &self,
        reference: &str,
        force: bool,
        used_by: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String)>, ImageError> {
        let mut s = self.lock();
        let id = resolve_in(&s, reference)?;
        let own_names: Vec<String> = s
            .names
            .iter()
            .filter(|(_, i)| **i == id)
            .map(|(n, _)| n.clone())
            .collect();
        let by_name = names::normalize(reference)
            .ok()
            .filter(|n| s.names.contains_key(n));
        let mut report = Vec::new();
        let mut new_names = s.names.clone();
        let remove_image = match &by_name {
            Some(name) if own_names.len() > 1 => {
                new_names.remove(name);
                report.push(("Untagged".to_owned(), names::familiar(name).to_owned()));
                false
            }
            None if own_names.len() > 1 && !force => {
                return Err(ImageError::InUse(format!(
                    "unable to delete {} (must be forced): the image is referenced in several \
                     repositories",
                    &hex(&id)[..12]
                )));
            }
            _ => true,
        };
        if remove_image {
            if let Some(container) = used_by(&id) {
                return Err(ImageError::InUse(format!(
                    "unable to remove image {reference}: container {container} uses image {}",
                    &hex(&id)[..12]
                )));
            }
            for n in &own_names {
                new_names.remove(n);
                report.push(("Untagged".to_owned(), names::familiar(n).to_owned()));
            }
        }
        self.write_names(&new_names)?;
        s.names = new_names;
        if !remove_image {
            return Ok(report);
        }
        let record = self.record_path(&id);
        fs::remove_file(&record).map_err(ImageError::at(&record, "removing"))?;
        let blob = self.blob_path(&id);
        let _ = fs::remove_file(&blob);
        s.images.remove(&id);
        report.push(("Deleted".to_owned(), id.clone()));
        let used: HashSet<&String> = s
            .images
            .values()
            .flat_map(|r| &r.layers)
            .chain(s.pending.keys())
            .collect();
        let layers = self.root.join("layers");
        for entry in fs::read_dir(&layers).map_err(ImageError::at(&layers, "reading"))? {
            let Ok(entry) = entry else { continue };
            let file = entry.file_name().to_string_lossy().into_owned();
            // `<hex>` (the layer) or `<hex>.blob` (its blob).
            let (name, is_blob) = match file.strip_suffix(".blob") {
                Some(name) => (name.to_owned(), true),
                None => (file.clone(), false),
            };
            if used.contains(&format!("sha256:{name}")) {
                continue;
            }
            let path = entry.path();
            let removed = if is_blob {
                fs::remove_file(&path)
            } else {
                fs::remove_dir_all(&path)
            };
            match removed {
                Ok(()) if !is_blob => report.push(("Deleted".to_owned(), format!("sha256:{name}"))),
                Ok(()) => {}
                Err(e) => warn!(path = %path.display(), %e, "cannot remove a layer"),
            }
        }
        info!(%id, "image removed");
        Ok(report)
    }

    /// Whether a layer is already unpacked.
    pub(crate) fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    pub(crate) fn new_record(
        config: &oci_spec::image::ImageConfiguration,
        id: String,
        size: u64,
    ) -> ImageRecord {
        ImageRecord {
            id,
            layers: config.rootfs().diff_ids().clone(),
            size,
            created: config.created().clone().unwrap_or_default(),
            architecture: config.architecture().to_string(),
            os: config.os().to_string(),
            config: RunConfig::of(config),
            added: now(),
        }
    }
}

fn resolve_in(s: &State, reference: &str) -> Result<String, ImageError> {
    let not_found = || ImageError::NotFound(reference.to_owned());
    if let Some(h) = reference.strip_prefix("sha256:") {
        let id = format!("sha256:{h}");
        return s
            .images
            .contains_key(&id)
            .then_some(id)
            .ok_or_else(not_found);
    }
    if let Ok(name) = names::normalize(reference)
        && let Some(id) = s.names.get(&name)
    {
        return Ok(id.clone());
    }
    // A prefix of an ID, as Docker takes them.
    if reference.len() >= 4 && reference.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut hits = s.images.keys().filter(|id| hex(id).starts_with(reference));
        if let (Some(id), None) = (hits.next(), hits.next()) {
            return Ok(id.clone());
        }
    }
    Err(not_found())
}

/// Writes through a temporary file and a rename, so a reader never sees a
/// half-written file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(ImageError::at(&tmp, "writing"))?;
    fs::rename(&tmp, path).map_err(ImageError::at(path, "renaming into"))
}
