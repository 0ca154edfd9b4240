//! `ferry pull`: an image from a registry speaking the OCI distribution API
//! (Docker Registry HTTP API v2), its layers downloaded side by side and
//! unpacked while they arrive, every digest checked.

use std::{
    io::{self, Read},
    sync::Arc,
};

use bytes::{Buf as _, Bytes};
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    errors::OciDistributionError,
    manifest::OciDescriptor,
    secrets::RegistryAuth,
};
use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{ImageError, LoadedImage, Store, layer, names};

/// Layers downloaded at once, as Docker does.
const PARALLEL: usize = 3;

/// One line of a pull's progress, per layer as Docker shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Progress {
    /// The layer's short digest, or the image's name.
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub current: u64,
    #[serde(default)]
    pub total: u64,
}

pub type Report = Arc<dyn Fn(Progress) + Send + Sync>;

/// Where to pull from and how.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback ones
    /// always are, as in Docker.
    pub insecure: Vec<String>,
    pub auth: Option<(String, String)>,
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex[..hex.len().min(12)].to_owned()
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The registry's answer, as a user should read it.
fn registry_error(name: &str, registry: &str, e: OciDistributionError) -> ImageError {
    use OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(_) => ImageError::NotFound(format!("{name} (in {registry})")),
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                let code = format!("{:?}", e.code);
                code.contains("ManifestUnknown") || code.contains("NameUnknown")
            }) =>
        {
            ImageError::NotFound(format!("{name} (in {registry})"))
        }
        E::ServerError { code: 404, .. } => ImageError::NotFound(format!("{name} (in {registry})")),
        E::AuthenticationFailure(m) => {
            ImageError::Registry(format!("{registry} refused the credentials: {m}"))
        }
        E::UnauthorizedError { .. }
        | E::ServerError {
            code: 401 | 403, ..
        } => ImageError::Registry(format!(
            "{registry} refused access to {name} (ferry login, or a private image?)"
        )),
        E::RequestError(r) if r.is_connect() || r.is_timeout() => {
            ImageError::Registry(format!("registry {registry} unreachable: {r}"))
        }
        E::DigestError(d) => ImageError::Invalid(format!("{name}: {d}")),
        other => ImageError::Registry(format!("pulling {name} from {registry}: {other}")),
    }
}

/// A blocking reader over chunks sent from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// A client for `registry` (plain HTTP if it is loopback or insecure) and
/// the credentials to present.
fn client_for(registry: &str, options: &PullOptions) -> (Client, RegistryAuth) {
    let plain = is_loopback(registry) || options.insecure.iter().any(|r| r == registry);
    let client = Client::new(ClientConfig {
        protocol: if plain {
            ClientProtocol::HttpsExcept(vec![registry.to_owned()])
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        ..ClientConfig::default()
    });
    let auth = match &options.auth {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    (client, auth)
}

/// Checks `options.auth` against `registry` (`host[:port]`, `docker.io`),
/// as `docker login` does: a token service must grant a token for them, a
/// registry asking for basic credentials must accept them on a request.
pub async fn login(registry: &str, options: &PullOptions) -> Result<(), ImageError> {
    let (client, auth) = client_for(registry, options);
    // Any repository: a token is granted (or basic credentials checked)
    // before the registry says whether it exists.
    let probe: Reference = format!("{registry}/ferry-login-probe:latest")
        .parse()
        .map_err(|e: oci_client::ParseError| ImageError::Reference {
            reference: registry.to_owned(),
            reason: e.to_string(),
        })?;
    let refused = |detail: String| {
        ImageError::Registry(format!(
            "{registry} refused the credentials: {}",
            if detail.is_empty() {
                "incorrect username or password".to_owned()
            } else {
                detail
            }
        ))
    };
    let fail = |e| match e {
        OciDistributionError::AuthenticationFailure(m) => refused(m.trim().to_owned()),
        other => registry_error("the login", registry, other),
    };
    let bearer = client
        .auth(&probe, &auth, oci_client::RegistryOperation::Pull)
        .await
        .map_err(fail)?;
    if bearer.is_some() {
        return Ok(());
    }
    match client.fetch_manifest_digest(&probe, &auth).await {
        Ok(_) => Ok(()),
        Err(
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::ServerError {
                code: 401 | 403, ..
            },
        ) => Err(refused(String::new())),
        Err(e) => match registry_error("the login", registry, e) {
            // The probe does not exist: the registry let us ask.
            ImageError::NotFound(_) => Ok(()),
            other => Err(other),
        },
    }
}

impl Store {
    /// Pulls `name` (`nginx`, `host:5000/app:v1`, `app@sha256:...`).
    pub async fn pull(
        self: &Arc<Self>,
        name: &str,
        options: &PullOptions,
        report: Report,
    ) -> Result<LoadedImage, ImageError> {
        let normalized = names::normalize(name)?;
        let reference: Reference =
            normalized
                .parse()
                .map_err(|e: oci_client::ParseError| ImageError::Reference {
                    reference: name.to_owned(),
                    reason: e.to_string(),
                })?;
        let registry = reference.resolve_registry().to_owned();
        let (client, auth) = client_for(&registry, options);
        let fail = |e| registry_error(name, &registry, e);
        let (manifest, digest, config) = client
            .pull_manifest_and_config(&reference, &auth)
            .await
            .map_err(fail)?;
        report(Progress {
            id: names::familiar(&normalized).to_owned(),
            status: format!("Pulling from {registry}, manifest {digest}"),
            current: 0,
            total: 0,
        });
        let config = config.into_bytes();
        let id = layer::digest_of(&config);
        if manifest.config.digest != id {
            return Err(ImageError::Invalid(format!(
                "{name}: config digest mismatch: the manifest says {}, the content is {id}",
                manifest.config.digest
            )));
        }
        let image: ImageConfiguration = serde_json::from_slice(&config)
            .map_err(|e| ImageError::Invalid(format!("image config {id}: {e}")))?;
        let diff_ids = image.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Invalid(format!(
                "{name}: the config lists {} layers, the manifest {}",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        self.hold(&diff_ids);
        let result = async {
            let jobs: Vec<LayerJob> = manifest
                .layers
                .iter()
                .zip(&diff_ids)
                .map(|(l, diff_id)| LayerJob {
                    client: client.clone(),
                    reference: reference.clone(),
                    descriptor: l.clone(),
                    diff_id: diff_id.clone(),
                    report: report.clone(),
                })
                .collect();
            let store = Arc::clone(self);
            let jobs = jobs
                .into_iter()
                .map(move |job| Arc::clone(&store).pull_layer(job));
            let sizes: Vec<u64> = futures::stream::iter(jobs)
                .buffered(PARALLEL)
                .try_collect()
                .await
                .map_err(|e| match e {
                    PullError::Registry(e) => fail(e),
                    PullError::Image(e) => e,
                })?;
            let record = Store::new_record(&image, id.clone(), sizes.iter().sum());
            let store = Arc::clone(self);
            let names = vec![normalized.clone()];
            tokio::task::spawn_blocking(move || store.commit(record, &config, &names))
                .await
                .map_err(|e| ImageError::Invalid(format!("storing the image: {e}")))?
        }
        .await;
        self.release(&diff_ids);
        result
    }

    async fn pull_layer(self: Arc<Self>, job: LayerJob) -> Result<u64, PullError> {
        let LayerJob {
            client,
            reference,
            descriptor,
            diff_id,
            report,
        } = job;
        let diff_id = diff_id.as_str();
        let id = short(&descriptor.digest);
        let total = u64::try_from(descriptor.size).unwrap_or(0);
        let say = |status: &str, current: u64| {
            report(Progress {
                id: id.clone(),
                status: status.to_owned(),
                current,
                total,
            });
        };
        if self.has_layer(diff_id) {
            say("Already exists", total);
            return Ok(crate::archive::du(&self.layer_dir(diff_id)));
        }
        say("Pulling fs layer", 0);
        let mut stream = client
            .pull_blob_stream(&reference, &descriptor)
            .await
            .map_err(PullError::Registry)?
            .stream;
        let (tx, rx) = mpsc::channel(16);
        let store = Arc::clone(&self);
        let want = descriptor.digest.clone();
        let diff = diff_id.to_owned();
        let label = format!("layer {id}");
        let unpacker = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                chunk: Bytes::new(),
            };
            layer::put(&store, reader, Some(&want), &diff, &label)
        });
        let mut current = 0u64;
        let mut last = 0u64;
        while let Some(chunk) = stream.next().await {
            let failed = chunk.is_err();
            if let Ok(c) = &chunk {
                current += c.len() as u64;
            }
            if tx.send(chunk).await.is_err() || failed {
                // The unpacker stopped (a broken layer), or the download did.
                break;
            }
            if current - last >= 1 << 20 {
                say("Downloading", current);
                last = current;
            }
        }
        drop(tx);
        let size = unpacker
            .await
            .map_err(|e| PullError::Image(ImageError::Invalid(format!("unpacking: {e}"))))?
            .map_err(PullError::Image)?;
        say("Pull complete", current);
        Ok(size)
    }
}

/// One layer to pull, owned by its task.
struct LayerJob {
    client: Client,
    reference: Reference,
    descriptor: OciDescriptor,
    diff_id: String,
    report: Report,
}

enum PullError {
    Registry(OciDistributionError),
    Image(ImageError),
}
