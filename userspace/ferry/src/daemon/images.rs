//! Images: load, list, inspect, tag and remove through the store, and what
//! running one adds to a run request.

use std::{collections::HashMap, path::Path, sync::Arc};

use ferry_image::{ImageError, ImageRecord, Store};
use ferry_runtime::rootfs::Lower;
use tracing::info;

use super::Daemon;
use crate::api::{ApiError, AuthConfig, ImageDeleted, ImageInspect, ImageSummary, RunRequest};

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::NotFound(_) => Self::NotFound(e.to_string()),
            ImageError::Reference { .. } | ImageError::Invalid(_) => {
                Self::BadRequest(e.to_string())
            }
            ImageError::InUse(_) => Self::Conflict(e.to_string()),
            ImageError::Registry(_) => Self::Unavailable(e.to_string()),
            ImageError::Io { .. } => Self::Internal(e.to_string()),
        }
    }
}

/// Runs a store operation off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from)
}

impl Daemon {
    pub fn image_upload_path(&self) -> std::path::PathBuf {
        self.images.upload_path()
    }

    /// Loads every image of an uploaded archive, then removes the upload.
    pub async fn image_load(
        &self,
        archive: &Path,
    ) -> Result<Vec<ferry_image::LoadedImage>, ApiError> {
        let store = self.images.clone();
        let path = archive.to_owned();
        let result = blocking(move || store.load(&path)).await;
        let _ = tokio::fs::remove_file(archive).await;
        let loaded = result?;
        for image in &loaded {
            info!(id = %image.id, names = ?image.names, "image loaded");
        }
        Ok(loaded)
    }

    /// Pulls an image; progress goes to `report` as it happens. A bad name
    /// is refused before anything is asked of a registry.
    pub fn image_pull(
        self: &Arc<Self>,
        name: &str,
        auth: Option<AuthConfig>,
        report: ferry_image::Report,
    ) -> Result<tokio::task::JoinHandle<Result<ferry_image::LoadedImage, ApiError>>, ApiError> {
        ferry_image::normalize(name)?;
        let daemon = Arc::clone(self);
        let name = name.to_owned();
        let options = ferry_image::PullOptions {
            insecure: self.insecure_registries.clone(),
            auth: auth.map(|a| (a.username, a.password)),
        };
        // The pull goes on if the client goes away, as Docker's does.
        Ok(tokio::spawn(async move {
            let loaded = daemon.images.pull(&name, &options, report).await?;
            info!(id = %loaded.id, names = ?loaded.names, "image pulled");
            Ok(loaded)
        }))
    }

    /// Checks a registry's credentials (see `ferry_image::login`).
    pub async fn image_login(&self, req: AuthConfig) -> Result<(), ApiError> {
        if req.server_address.is_empty() || req.username.is_empty() {
            return Err(ApiError::BadRequest(
                "a login needs a registry and a username".into(),
            ));
        }
        let options = ferry_image::PullOptions {
            insecure: self.insecure_registries.clone(),
            auth: Some((req.username, req.password)),
        };
        ferry_image::login(&req.server_address, &options).await?;
        info!(registry = %req.server_address, "registry credentials checked");
        Ok(())
    }

    /// Writes the named images to a temporary file of the store and
    /// returns it open and already unlinked: the caller streams it, and it
    /// is gone once read.
    pub async fn image_save(&self, names: Vec<String>) -> Result<std::fs::File, ApiError> {
        if names.is_empty() {
            return Err(ApiError::BadRequest("no image given to save".into()));
        }
        let store = self.images.clone();
        let path = self.images.upload_path();
        blocking(move || {
            let result = (|| {
                let file = std::fs::File::create(&path).map_err(|e| ImageError::Io {
                    context: format!("creating {}", path.display()),
                    source: e,
                })?;
                store.save(&names, std::io::BufWriter::new(file))?;
                std::fs::File::open(&path).map_err(|e| ImageError::Io {
                    context: format!("opening {}", path.display()),
                    source: e,
                })
            })();
            let _ = std::fs::remove_file(&path);
            result
        })
        .await
    }

    /// Image IDs in use, with how many containers use each and one name.
    async fn image_users(&self) -> HashMap<String, (usize, String)> {
        let inner = self.inner.lock().await;
        let mut users: HashMap<String, (usize, String)> = HashMap::new();
        for c in inner.containers.values().filter(|c| !c.image_id.is_empty()) {
            let e = users
                .entry(c.image_id.clone())
                .or_insert((0, c.name.clone()));
            e.0 += 1;
        }
        users
    }

    pub async fn image_list(&self) -> Vec<ImageSummary> {
        let users = self.image_users().await;
        self.images
            .list()
            .into_iter()
            .map(|(r, names)| ImageSummary {
                containers: users.get(&r.id).map_or(0, |u| u.0),
                id: r.id,
                repo_tags: names,
                created: r.created,
                size: r.size,
            })
            .collect()
    }

    pub async fn image_inspect(&self, name: &str) -> Result<ImageInspect, ApiError> {
        let r = self.images.resolve(name)?;
        Ok(ImageInspect {
            repo_tags: self.images.names_of(&r.id),
            id: r.id,
            created: r.created,
            size: r.size,
            architecture: r.architecture,
            os: r.os,
            config: r.config,
            layers: r.layers,
        })
    }

    pub async fn image_tag(&self, source: &str, target: &str) -> Result<(), ApiError> {
        Ok(self.images.tag(source, target)?)
    }

    /// `ferry rmi`. The containers' lock is held throughout, so no
    /// container can start on the image while it goes.
    pub async fn image_remove(
        &self,
        name: &str,
        force: bool,
    ) -> Result<Vec<ImageDeleted>, ApiError> {
        let inner = self.inner.lock().await;
        let users: HashMap<String, String> = inner
            .containers
            .values()
            .filter(|c| !c.image_id.is_empty())
            .map(|c| (c.image_id.clone(), c.name.clone()))
            .collect();
        let store = self.images.clone();
        let name = name.to_owned();
        let report =
            blocking(move || store.remove(&name, force, |id| users.get(id).cloned())).await;
        drop(inner);
        Ok(report?
            .into_iter()
            .map(|(what, x)| match what.as_str() {
                "Untagged" => ImageDeleted {
                    untagged: Some(x),
                    deleted: None,
                },
                _ => ImageDeleted {
                    untagged: None,
                    deleted: Some(x),
                },
            })
            .collect())
    }
}

/// A run request with its image's configuration applied, and the layers
/// its root stacks.
pub(super) struct WithImage {
    pub req: RunRequest,
    pub image: Option<(ImageRecord, Lower)>,
}

/// Applies the image a run request names: its command, environment,
/// working directory, user and (with `-P`) exposed ports, as Docker does.
pub(super) fn apply_image(images: &Store, mut req: RunRequest) -> Result<WithImage, ApiError> {
    if req.image.is_empty() {
        if req.entrypoint.is_some() {
            return Err(ApiError::BadRequest(
                "--entrypoint needs an image: without one, give the command".into(),
            ));
        }
        return Ok(WithImage { req, image: None });
    }
    if !req.host_config.rootfs.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "conflicting options: the image {} and --rootfs {}",
            req.image, req.host_config.rootfs
        )));
    }
    let record = images.resolve(&req.image)?;
    let config = &record.config;
    req.cmd = config.command(req.entrypoint.as_deref(), &req.cmd);
    if req.cmd.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "no command specified: the image {} has no Cmd or Entrypoint; give one",
            req.image
        )));
    }
    req.env = config.environment(&req.env);
    if req.working_dir.is_empty() {
        req.working_dir.clone_from(&config.working_dir);
    }
    if req.user.is_empty() {
        req.user.clone_from(&config.user);
    }
    if req.host_config.publish_all_ports {
        let given: Vec<(u16, crate::portmap::Proto)> = req
            .publish
            .iter()
            .filter_map(|p| p.parse::<crate::portmap::PublishSpec>().ok())
            .map(|p| (p.container_ports.0, p.proto))
            .collect();
        for port in &config.exposed_ports {
            let taken = port
                .parse::<crate::portmap::PublishSpec>()
                .is_ok_and(|p| given.contains(&(p.container_ports.0, p.proto)));
            if !taken {
                req.publish.push(port.clone());
            }
        }
    }
    let (root, layers) = images.overlay_layers(&record);
    Ok(WithImage {
        req,
        image: Some((record, Lower::Layers { root, layers })),
    })
}
