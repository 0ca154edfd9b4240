//! ferry's image store.
//!
//! Images arrive from a registry (`ferry pull`) or as archives (`ferry load`:
//! `docker save` output or an OCI image layout, possibly compressed). Every layer is verified
//! against the digests the image names while it is read, and unpacked once,
//! keyed by its uncompressed digest (the config's `diff_id`), into a
//! directory that an overlay mount can use as a lower layer as it is:
//! whiteouts become overlay whiteouts (a 0/0 character device) and opaque
//! directories get `trusted.overlay.opaque`. A container of an image mounts
//! the image's layers as the overlay's lower directories, its own directory
//! as the upper one: nothing is copied per container.
//!
//! The store never holds anything half-written: a layer is unpacked into a
//! temporary directory and renamed into place, and an image's record and
//! names are written only once all its layers are in place.

mod archive;
mod config;
mod error;
mod layer;
mod names;
mod pull;
mod save;
mod store;

pub use archive::du as disk_usage;
pub use config::RunConfig;
pub use error::ImageError;
pub use names::{familiar, normalize, split_tag};
pub use pull::{Progress, PullOptions, Report, login};
pub use store::{ImageRecord, LoadedImage, Store};

/// Makes rustls use ring for the registry client's TLS. Call once at start,
/// before any pull.
#[expect(
    deprecated,
    reason = "ring's provider lacks post-quantum key exchange; aws-lc's has it but takes minutes \
              to build, and registries negotiate classical key exchange"
)]
pub fn init_tls() {
    // Err: a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
