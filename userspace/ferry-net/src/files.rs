//! Files the agent and the daemon keep their state in: written whole or
//! not at all.

use std::{
    io,
    path::{Path, PathBuf},
};

/// A write that failed: which step, on which file.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct WriteError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes `data` to `path` through `<path>.tmp` and a rename, so a reader
/// (or a crash) never sees half a file.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, data).map_err(|source| WriteError {
        op: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| WriteError {
        op: "rename",
        path: path.to_owned(),
        source,
    })
}
