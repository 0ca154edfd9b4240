//! `ferry system df` and the prunes: what images and containers take on
//! disk, and removing what nothing uses.

use std::collections::HashSet;

use tracing::{info, warn};

use super::Daemon;
use crate::{
    api::{ApiError, ContainerDf, PruneReport, SystemDf},
    state::Status,
};

impl Daemon {
    /// Images (each layer counted once) and containers' own writes.
    pub async fn system_df(&self) -> SystemDf {
        let images = self.image_list().await;
        let containers: Vec<ContainerDf> = {
            let inner = self.inner.lock().await;
            inner
                .containers
                .values()
                .map(|c| ContainerDf {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    image: c.image.clone(),
                    state: c.status.as_str().to_owned(),
                    // Summed below, off the lock.
                    size_rw: 0,
                })
                .collect()
        };
        let store = self.images.clone();
        let records = store.list();
        let dirs: Vec<_> = {
            let inner = self.inner.lock().await;
            containers
                .iter()
                .map(|c| inner.store.rootfs_upper(&c.id))
                .collect()
        };
        let used_ids: HashSet<String> = images
            .iter()
            .filter(|i| i.containers > 0)
            .map(|i| i.id.clone())
            .collect();
        let sizes = tokio::task::spawn_blocking(move || {
            let mut all = HashSet::new();
            let mut used = HashSet::new();
            for (record, _) in &records {
                for layer in &record.layers {
                    all.insert(layer.clone());
                    if used_ids.contains(&record.id) {
                        used.insert(layer.clone());
                    }
                }
            }
            let size = |set: &HashSet<String>| set.iter().map(|l| store.layer_size(l)).sum::<u64>();
            let rw: Vec<u64> = dirs.iter().map(|d| ferry_image::disk_usage(d)).collect();
            (size(&all), size(&used), rw)
        })
        .await;
        let (layers_size, layers_used, rw) = sizes.unwrap_or_default();
        SystemDf {
            layers_size,
            layers_reclaimable: layers_size.saturating_sub(layers_used),
            images,
            containers: containers
                .into_iter()
                .zip(rw.into_iter().chain(std::iter::repeat(0)))
                .map(|(c, size_rw)| ContainerDf { size_rw, ..c })
                .collect(),
        }
    }

    /// Removes every container that is not running.
    pub async fn container_prune(&self) -> Result<PruneReport, ApiError> {
        let stopped: Vec<(String, std::path::PathBuf)> = {
            let inner = self.inner.lock().await;
            inner
                .containers
                .values()
                .filter(|c| c.status != Status::Running)
                .map(|c| (c.id.clone(), inner.store.container_dir(&c.id)))
                .collect()
        };
        let mut report = PruneReport::default();
        for (id, dir) in stopped {
            let size = tokio::task::spawn_blocking(move || ferry_image::disk_usage(&dir))
                .await
                .unwrap_or(0);
            match self.remove(&id, false).await {
                Ok(()) => {
                    report.space_reclaimed += size;
                    report.containers_deleted.push(id);
                }
                // Started again meanwhile, or already gone: not ours to prune.
                Err(e) => warn!(%id, "not pruned: {e}"),
            }
        }
        info!(
            containers = report.containers_deleted.len(),
            bytes = report.space_reclaimed,
            "containers pruned"
        );
        Ok(report)
    }

    /// Removes images no container uses: those without a name, or with
    /// `all` every one.
    pub async fn image_prune(&self, all: bool) -> Result<PruneReport, ApiError> {
        let unused: Vec<String> = self
            .image_list()
            .await
            .into_iter()
            .filter(|i| i.containers == 0 && (all || i.repo_tags.is_empty()))
            .map(|i| i.id)
            .collect();
        let layers = self.images.clone();
        let before = self.images_disk_usage(&layers).await;
        let mut report = PruneReport::default();
        for id in unused {
            // A container may have started with it since: the removal
            // checks again under the lock, and refuses.
            match self.image_remove(&id, true).await {
                Ok(deleted) => report.images_deleted.extend(deleted),
                Err(e) => warn!(%id, "not pruned: {e}"),
            }
        }
        report.space_reclaimed = before.saturating_sub(self.images_disk_usage(&layers).await);
        info!(
            images = report.images_deleted.len(),
            bytes = report.space_reclaimed,
            "images pruned"
        );
        Ok(report)
    }

    async fn images_disk_usage(&self, store: &std::sync::Arc<ferry_image::Store>) -> u64 {
        let root = store.root().to_owned();
        tokio::task::spawn_blocking(move || ferry_image::disk_usage(&root))
            .await
            .unwrap_or(0)
    }
}
