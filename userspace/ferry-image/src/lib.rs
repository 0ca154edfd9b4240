//! ferry's image store.
//!
//! Images arrive as archives (`ferry load`: `docker save` output or an OCI
//! image layout, either possibly gzip-compressed). Every layer is verified
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
mod store;

pub use config::RunConfig;
pub use error::ImageError;
pub use names::{familiar, normalize, split_tag};
pub use store::{ImageRecord, LoadedImage, Store};
