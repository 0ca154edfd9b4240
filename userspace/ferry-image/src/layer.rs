//! One layer: a tar stream, possibly gzip- or zstd-compressed, unpacked
//! into a directory an overlay mount takes as a lower layer, with both its
//! digests computed on the way.

use std::{
    fs,
    io::{self, BufRead, BufReader, Read},
    path::{Component, Path, PathBuf},
};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use sha2::{Digest as _, Sha256};

use crate::ImageError;

/// The prefix of a whiteout: `.wh.NAME` hides `NAME` of the layers below.
const WHITEOUT: &str = ".wh.";
/// `.wh..wh..opq` in a directory hides everything the layers below have in it.
const OPAQUE: &str = ".wh..wh..opq";
/// What overlayfs reads as an opaque directory.
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

/// A reader that hashes what passes through it.
pub(crate) struct Digester<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Digester<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads what is left, then gives the digest (`sha256:<hex>`) and size
    /// of everything read, and the reader.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex_digest(self.hasher), self.bytes, self.inner))
    }
}

impl<R: Read> Read for Digester<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

pub(crate) fn hex_digest(hasher: Sha256) -> String {
    let sum = hasher.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in sum.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The digest of a byte string, `sha256:<hex>`.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    hex_digest(h)
}

/// A layer's compression, told by its first bytes (an archive's media types
/// are not always right, and `docker save` does not give any).
enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(Box<flate2::bufread::MultiGzDecoder<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, R>>),
}

impl<R: BufRead> Decoder<R> {
    fn new(mut raw: R) -> io::Result<Self> {
        let head = raw.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(raw)))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd(Box::new(zstd::stream::read::Decoder::with_buffer(raw)?))
        } else {
            Self::Plain(raw)
        })
    }

    fn into_inner(self) -> R {
        match self {
            Self::Plain(r) => r,
            Self::Gzip(d) => d.into_inner(),
            Self::Zstd(d) => d.finish(),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(d) => d.read(buf),
            Self::Zstd(d) => d.read(buf),
        }
    }
}

/// What reading a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unpacked {
    /// Digest of the bytes as stored (compressed or not).
    pub blob: String,
    /// Digest of the uncompressed tar stream: the config's `diff_id`.
    pub diff_id: String,
    /// Bytes of file content unpacked.
    pub size: u64,
}

/// Unpacks the layer `raw` into `dir` (which exists and is empty). When the
/// blob's digest is known, a stream that breaks is read to its end: a
/// damaged blob is then reported as a digest mismatch, not as its symptom.
pub(crate) fn unpack(
    raw: impl Read,
    dir: &Path,
    want_blob: Option<&str>,
) -> Result<Unpacked, ImageError> {
    let bad = |e: io::Error| ImageError::Invalid(format!("reading a layer: {e}"));
    let blob = BufReader::with_capacity(256 * 1024, Digester::new(raw));
    let mut archive = tar::Archive::new(Digester::new(Decoder::new(blob).map_err(bad)?));
    let walked = walk(&mut archive, dir);
    let tar_stream = archive.into_inner();
    let mismatch = |got: &str| {
        want_blob.filter(|want| *want != got).map(|want| {
            ImageError::Invalid(format!(
                "digest mismatch: the image says {want}, the content is {got}"
            ))
        })
    };
    let size = match walked {
        Ok(size) => size,
        Err(e) => {
            let raw = tar_stream.inner.into_inner().into_inner();
            return Err(match raw.finish() {
                Ok((got, _, _)) => mismatch(&got).unwrap_or(e),
                Err(_) => e,
            });
        }
    };
    let (diff_id, _, decoder) = tar_stream.finish().map_err(bad)?;
    let (blob, _, _) = decoder.into_inner().into_inner().finish().map_err(bad)?;
    if let Some(e) = mismatch(&blob) {
        return Err(e);
    }
    Ok(Unpacked {
        blob,
        diff_id,
        size,
    })
}

/// Unpacks every entry; returns the bytes of file content.
fn walk<R: Read>(archive: &mut tar::Archive<R>, dir: &Path) -> Result<u64, ImageError> {
    let bad = |e: io::Error| ImageError::Invalid(format!("reading a layer: {e}"));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut size = 0;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(relative) = relative(&path) else {
            return Err(ImageError::Invalid(format!(
                "a layer entry leaves the layer: {}",
                path.display()
            )));
        };
        let name = relative
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == OPAQUE {
            let parent = parent_in(dir, &relative)?;
            xattr::set(&parent, OVERLAY_OPAQUE, b"y")
                .map_err(ImageError::at(&parent, "marking opaque"))?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let target = parent_in(dir, &relative)?.join(hidden);
            remove_any(&target)?;
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
                ImageError::Io {
                    context: format!("whiteout {}", target.display()),
                    source: e.into(),
                }
            })?;
        } else {
            size += entry.header().size().unwrap_or(0);
            entry.unpack_in(dir).map_err(|e| {
                let cause = std::error::Error::source(&e).map(|s| format!(": {s}"));
                ImageError::Invalid(format!(
                    "unpacking {}: {e}{}",
                    path.display(),
                    cause.unwrap_or_default()
                ))
            })?;
        }
    }
    Ok(size)
}

/// Unpacks a layer unless the store has it, checks both its digests and
/// moves it into place; returns its unpacked size.
pub(crate) fn put(
    store: &crate::Store,
    raw: impl Read,
    want_blob: Option<&str>,
    diff_id: &str,
    label: &str,
) -> Result<u64, ImageError> {
    let dest = store.layer_dir(diff_id);
    let tmp = store.tmp_path("layer");
    let tmp_blob = tmp.with_extension("blob");
    fs::create_dir(&tmp).map_err(ImageError::at(&tmp, "creating"))?;
    let blob_file = fs::File::create(&tmp_blob).map_err(ImageError::at(&tmp_blob, "creating"))?;
    // The blob is kept as it came, for `ferry save`.
    let mut tee = Tee {
        inner: raw,
        out: io::BufWriter::with_capacity(256 * 1024, blob_file),
        failed: None,
    };
    let result = unpack(&mut tee, &tmp, want_blob)
        .map_err(|e| match e {
            ImageError::Invalid(m) => ImageError::Invalid(format!("{label}: {m}")),
            other => other,
        })
        .and_then(|got| {
            if got.diff_id == diff_id {
                Ok(got.size)
            } else {
                Err(ImageError::Invalid(format!(
                    "{label}: digest mismatch: the config says {diff_id}, the content is {}",
                    got.diff_id
                )))
            }
        })
        .and_then(|size| {
            let Tee { out, failed, .. } = tee;
            if let Some(e) = failed {
                return Err(ImageError::at(&tmp_blob, "writing")(e));
            }
            out.into_inner()
                .map_err(|e| ImageError::at(&tmp_blob, "writing")(e.into_error()))?;
            Ok(size)
        });
    let moved = result.and_then(|size| {
        // The blob first: a layer directory in place means a complete layer.
        let blob = store.layer_blob(diff_id);
        fs::rename(&tmp_blob, &blob).map_err(ImageError::at(&blob, "moving into place"))?;
        // Another load may have put the same layer in place meanwhile.
        if fs::rename(&tmp, &dest).is_err() && !dest.is_dir() {
            return Err(ImageError::Invalid(format!(
                "cannot move layer {diff_id} into place"
            )));
        }
        tracing::info!(layer = %diff_id, size, "layer unpacked");
        Ok(size)
    });
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_file(&tmp_blob);
    moved
}

/// A reader that copies what it reads into `out`; a write error is kept
/// for the end rather than failing the read (the unpacker decides).
struct Tee<R, W> {
    inner: R,
    out: W,
    failed: Option<io::Error>,
}

impl<R: Read, W: io::Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.failed.is_none()
            && let Err(e) = self.out.write_all(&buf[..n])
        {
            self.failed = Some(e);
        }
        Ok(n)
    }
}

/// `path` as a relative path with no `..`; `None` if it would climb out.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// The directory holding `relative` inside `dir`, created if missing; a
/// symlink on the way (which could point out of the layer) is refused.
fn parent_in(dir: &Path, relative: &Path) -> Result<PathBuf, ImageError> {
    let mut at = dir.to_owned();
    for c in relative.parent().into_iter().flat_map(Path::components) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::Invalid(format!(
                    "a whiteout's directory is not a directory: {}",
                    relative.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(ImageError::at(&at, "creating"))?;
            }
            Err(e) => return Err(ImageError::at(&at, "reading")(e)),
        }
    }
    Ok(at)
}

fn remove_any(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(ImageError::at(path, "removing")),
        Ok(_) => fs::remove_file(path).map_err(ImageError::at(path, "removing")),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    use super::*;

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(1234);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).expect("append");
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_digests_cover_the_streams() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: whiteouts need root (mknod, trusted xattrs)");
            return;
        }
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "etc/", tar::EntryType::Directory, b"");
        add(&mut b, "etc/.wh.gone", tar::EntryType::Regular, b"");
        add(&mut b, "var/lib/.wh..wh..opq", tar::EntryType::Regular, b"");
        add(&mut b, "var/lib/kept", tar::EntryType::Regular, b"hello");
        let tar_bytes = b.into_inner().expect("tar");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar_bytes).expect("gzip");
        let gz = gz.finish().expect("gzip");

        let dir = std::env::temp_dir().join(format!("ferry-layer-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let got = unpack(&gz[..], &dir, Some(&digest_of(&gz)));
        let gone = fs::symlink_metadata(dir.join("etc/gone"));
        let opaque = xattr::get(dir.join("var/lib"), OVERLAY_OPAQUE);
        let kept = fs::metadata(dir.join("var/lib/kept"));
        let _ = fs::remove_dir_all(&dir);

        let got = got.expect("unpacked");
        assert_eq!(got.blob, digest_of(&gz));
        assert_eq!(got.diff_id, digest_of(&tar_bytes));
        assert_eq!(got.size, 5);
        let gone = gone.expect("whiteout made");
        assert!(gone.file_type().is_char_device());
        assert_eq!(gone.rdev(), 0);
        assert_eq!(opaque.expect("xattr read"), Some(b"y".to_vec()));
        assert_eq!(kept.expect("file unpacked").uid(), 1234);
    }

    #[test]
    fn an_entry_that_climbs_out_is_refused() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        // `append_data` refuses `..`; write the name into the header directly.
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).expect("append");
        let bytes = b.into_inner().expect("tar");
        let dir = std::env::temp_dir().join(format!("ferry-layer-esc-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let got = unpack(&bytes[..], &dir, None);
        let _ = fs::remove_dir_all(&dir);
        assert!(matches!(got, Err(ImageError::Invalid(_))), "{got:?}");
    }
}
