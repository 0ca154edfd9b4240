use std::{io, path::Path};

/// What went wrong with an image; each variant names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image by that name, ID or digest.
    #[error("no such image: {0}")]
    NotFound(String),
    /// A name that is not a valid image reference.
    #[error("invalid reference format {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    /// An archive or image that breaks its format, or whose content does not
    /// match its digests.
    #[error("invalid image: {0}")]
    Invalid(String),
    /// The registry refused, or could not be reached.
    #[error("{0}")]
    Registry(String),
    /// Refused because containers use the image.
    #[error("{0}")]
    InUse(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub(crate) fn at(path: &Path, what: &str) -> impl FnOnce(io::Error) -> Self {
        Self::io(format!("{what} {}", path.display()))
    }
}
