//! The container's filesystem view, built by the workload process itself in
//! its own mount namespace just before exec, so that every mount dies with
//! the container and none can leak onto the host.
//!
//! Root: an overlay of the container's own upper layer on an image's layers
//! or on the host's root, or the `--rootfs` directory bind-mounted in place.
//! On top: a fresh /proc, a minimal /dev, read-only /sys, the per-container
//! /etc/hosts, /etc/hostname and /etc/resolv.conf, bind volumes, Docker's
//! masked and read-only /proc paths, then pivot_root.

use std::{
    fs, io,
    os::{
        fd::BorrowedFd,
        unix::fs::{DirBuilderExt as _, symlink},
    },
    path::{Component, Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::stat::{Mode, SFlag, makedev, mknod},
    unistd::pivot_root,
};
use serde::{Deserialize, Serialize};

/// `/proc` entries Docker hides behind /dev/null or an empty tmpfs.
const MASKED: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// `/proc` entries Docker makes read-only.
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Character devices of the minimal /dev: name, major, minor.
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "invalid volume {0:?}: expected HOST_PATH:CONTAINER_PATH[:ro|rw] with absolute paths \
         (named volumes are not supported)"
    )]
    Syntax(String),
    #[error("invalid volume {spec:?}: {reason}")]
    Path { spec: String, reason: String },
}

/// A bind mount from the host (`-v HOST:CONTAINER[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for Bind {
    type Err = VolumeError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [s, t] => (*s, *t, "rw"),
            [s, t, m] => (*s, *t, *m),
            _ => return Err(VolumeError::Syntax(spec.to_owned())),
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            _ => return Err(VolumeError::Syntax(spec.to_owned())),
        };
        let bad = |reason: &str| VolumeError::Path {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (source, target) = (Path::new(source), Path::new(target));
        if !source.is_absolute() || !target.is_absolute() {
            return Err(VolumeError::Syntax(spec.to_owned()));
        }
        if target.components().any(|c| c == Component::ParentDir) {
            return Err(bad("the container path may not contain .."));
        }
        if target == Path::new("/") {
            return Err(bad("the container path may not be /"));
        }
        Ok(Self {
            source: source.to_owned(),
            target: target.to_owned(),
            read_only,
        })
    }
}

impl Bind {
    /// The host side must exist (ferry never creates host directories).
    pub fn check_source(&self) -> Result<(), VolumeError> {
        if self.source.exists() {
            Ok(())
        } else {
            Err(VolumeError::Path {
                spec: self.source.display().to_string(),
                reason: "bind source path does not exist".into(),
            })
        }
    }
}

/// What the container's root is made of, below its own writable layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lower {
    /// An overlay of the host's root (ferry's and the host's runtime
    /// directories hidden).
    Host,
    /// `--rootfs DIR`, used in place (no overlay).
    Dir(PathBuf),
    /// An image's layers, as directories of `root` (the topmost first),
    /// overlaid with the container's own upper layer.
    Layers { root: PathBuf, layers: Vec<String> },
}

/// overlayfs takes its options in one page.
const MAX_MOUNT_OPTIONS: usize = 4095;

/// Everything the workload needs to build its root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootfsSpec {
    pub lower: Lower,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the root is assembled before pivot_root.
    pub merged: PathBuf,
    pub read_only: bool,
    pub binds: Vec<Bind>,
    /// Host files bound over files of the container (/etc/hosts, ...).
    pub files: Vec<Bind>,
    /// Host directories that must look empty inside (ferry's own state).
    pub hidden: Vec<PathBuf>,
    /// The working directory, created if missing.
    pub workdir: PathBuf,
    /// `--privileged`: /sys writable, no masked or read-only /proc paths.
    #[serde(default)]
    pub privileged: bool,
}

fn fail(what: impl std::fmt::Display) -> impl FnOnce(nix::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn fail_io(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Where `path` is inside the new root, resolved as the container would
/// resolve it: symlinks are followed relative to `root` and `..` never
/// climbs above it, so a link in a rootfs cannot point a mount at the host.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, String> {
    const MAX_LINKS: u32 = 40;
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = vec![path.to_owned()];
    let mut links = 0;
    while let Some(next) = pending.pop() {
        let mut components = next.components();
        let Some(first) = components.next() else {
            continue;
        };
        let rest = components.as_path().to_owned();
        if !rest.as_os_str().is_empty() {
            pending.push(rest);
        }
        match first {
            Component::RootDir => resolved = PathBuf::new(),
            Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                resolved.pop();
            }
            Component::Normal(name) => {
                let candidate = resolved.join(name);
                let on_host = root.join(&candidate);
                match fs::read_link(&on_host) {
                    Ok(target) => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(format!("too many symlinks in {}", path.display()));
                        }
                        pending.push(target);
                    }
                    Err(_) => resolved = candidate,
                }
            }
        }
    }
    Ok(root.join(resolved))
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(fail(format_args!(
        "bind {} on {}",
        source.display(),
        target.display()
    )))?;
    if read_only {
        remount_read_only(target)?;
    }
    Ok(())
}

fn remount_read_only(target: &Path) -> Result<(), String> {
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(fail(format_args!("read-only {}", target.display())))
}

/// Creates the mount point for `source` at `target`: a directory for a
/// directory, an empty file otherwise.
fn mount_point(source: &Path, target: &Path) -> Result<(), String> {
    if source.is_dir() {
        fs::create_dir_all(target).map_err(fail_io(format_args!("mkdir {}", target.display())))
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(fail_io(format_args!("mkdir {}", parent.display())))?;
        }
        if !target.exists() {
            fs::File::create(target)
                .map_err(fail_io(format_args!("create {}", target.display())))?;
        }
        Ok(())
    }
}

fn overlay(root: &Path, lower: &str, spec: &RootfsSpec) -> Result<(), String> {
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        spec.upper.display(),
        spec.work.display()
    );
    if options.len() > MAX_MOUNT_OPTIONS {
        return Err(format!(
            "the image has too many layers ({}) for one overlay mount",
            lower.split(':').count()
        ));
    }
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(fail("mounting the overlay root"))
}

/// Builds the root and pivots into it. Runs in the workload process, in
/// its own (private) mount namespace and PID namespace, before exec. With
/// `userns` (`--userns-remap`), what lies below the container's own layer
/// is seen through idmapped mounts (see `userns`).
pub fn enter(spec: &RootfsSpec, userns: Option<BorrowedFd>) -> Result<(), String> {
    let root = &spec.merged;
    // The lower layers as the container's ids see them.
    let idmapped = |source: &Path| -> Result<PathBuf, String> {
        let Some(userns) = userns else {
            return Ok(source.to_owned());
        };
        let staging = spec.work.with_file_name("idmapped");
        fs::create_dir_all(&staging).map_err(fail_io("mkdir for the idmapped layers"))?;
        crate::userns::idmapped_bind(source, &staging, userns)?;
        Ok(staging)
    };
    match &spec.lower {
        Lower::Dir(dir) => match userns {
            Some(userns) => crate::userns::idmapped_bind(dir, root, userns)?,
            None => bind(dir, root, false)?,
        },
        Lower::Layers {
            root: layers,
            layers: names,
        } => {
            let layers = idmapped(layers)?;
            // Layer names relative to their directory keep the options short
            // (overlayfs resolves them from the working directory).
            std::env::set_current_dir(&layers)
                .map_err(fail_io(format_args!("chdir {}", layers.display())))?;
            let lower = if names.is_empty() {
                // An image with no layer: an empty lower layer.
                spec.work.with_file_name("empty").display().to_string()
            } else {
                names.join(":")
            };
            overlay(root, &lower, spec)?;
        }
        Lower::Host => {
            let lower = idmapped(Path::new("/"))?;
            overlay(root, &lower.display().to_string(), spec)?;
            // Empty tmpfs over the host's runtime and ferry's own
            // directories, which the lower layer would otherwise show.
            for dir in spec
                .hidden
                .iter()
                .map(PathBuf::as_path)
                .chain([Path::new("/run")])
            {
                let target = inside(root, dir)?;
                if target.is_dir() {
                    mount(
                        Some("tmpfs"),
                        &target,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some("mode=755"),
                    )
                    .map_err(fail(format_args!("hiding {}", dir.display())))?;
                }
            }
        }
    }

    let proc = inside(root, Path::new("/proc"))?;
    fs::create_dir_all(&proc).map_err(fail_io("mkdir /proc"))?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(fail("mounting /proc"))?;
    make_dev(&inside(root, Path::new("/dev"))?)?;
    let sys = inside(root, Path::new("/sys"))?;
    fs::create_dir_all(&sys).map_err(fail_io("mkdir /sys"))?;
    mount(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        if spec.privileged {
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
        } else {
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        },
        None::<&str>,
    )
    .map_err(fail("mounting /sys"))?;

    for b in spec.files.iter().chain(&spec.binds) {
        let target = inside(root, &b.target)?;
        mount_point(&b.source, &target)?;
        bind(&b.source, &target, b.read_only)?;
    }
    let (masked, read_only): (&[&str], &[&str]) = if spec.privileged {
        (&[], &[])
    } else {
        (&MASKED, &READ_ONLY)
    };
    for path in masked {
        let target = inside(root, Path::new(path))?;
        if target.is_dir() {
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(fail(format_args!("masking {path}")))?;
        } else if target.exists() {
            bind(Path::new("/dev/null"), &target, false)?;
        }
    }
    for path in read_only {
        let target = inside(root, Path::new(path))?;
        if target.exists() {
            bind(&target, &target, true)?;
        }
    }
    if spec.read_only {
        remount_read_only(root)?;
    }

    // pivot_root(".", "."): the old root ends up stacked under the new one
    // and is detached right away.
    std::env::set_current_dir(root).map_err(fail_io("chdir to the new root"))?;
    pivot_root(".", ".").map_err(fail("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detaching the old root"))?;
    std::env::set_current_dir("/").map_err(fail_io("chdir /"))?;
    if !spec.workdir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&spec.workdir)
            .map_err(fail_io(format_args!(
                "creating the working directory {}",
                spec.workdir.display()
            )))?;
    }
    std::env::set_current_dir(&spec.workdir)
        .map_err(fail_io(format_args!("chdir {}", spec.workdir.display())))
}

/// A tmpfs /dev with the usual character devices, a private devpts, shm.
fn make_dev(dev: &Path) -> Result<(), String> {
    fs::create_dir_all(dev).map_err(fail_io("mkdir /dev"))?;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(fail("mounting /dev"))?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(fail(format_args!("mknod /dev/{name}")))?;
        // mknod applies the umask; devices must be usable by everyone.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &path,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(fail(format_args!("chmod /dev/{name}")))?;
    }
    let pts = dev.join("pts");
    let shm = dev.join("shm");
    for dir in [&pts, &shm] {
        fs::create_dir(dir).map_err(fail_io(format_args!("mkdir {}", dir.display())))?;
    }
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(fail("mounting /dev/pts"))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(fail("mounting /dev/shm"))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).map_err(fail_io(format_args!("symlink /dev/{link}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_root() {
        let root = std::env::temp_dir().join(format!("ferry-rootfs-{}", std::process::id()));
        let etc = root.join("etc");
        fs::create_dir_all(&etc).expect("mkdir");
        symlink("/run/elsewhere/resolv.conf", etc.join("resolv.conf")).expect("symlink");
        symlink("../../../..", etc.join("up")).expect("symlink");
        symlink("loop", etc.join("loop")).expect("symlink");
        let got = inside(&root, Path::new("/etc/resolv.conf"));
        let up = inside(&root, Path::new("/etc/up/etc/hosts"));
        let looped = inside(&root, Path::new("/etc/loop"));
        let _ = fs::remove_dir_all(&root);
        assert_eq!(got, Ok(root.join("run/elsewhere/resolv.conf")));
        assert_eq!(up, Ok(root.join("etc/hosts")));
        assert!(looped.is_err());
    }

    #[test]
    fn volume_specs_parse() {
        let b: Bind = "/srv/www:/usr/share/nginx/html:ro".parse().expect("valid");
        assert_eq!(b.source, Path::new("/srv/www"));
        assert_eq!(b.target, Path::new("/usr/share/nginx/html"));
        assert!(b.read_only);
        let b: Bind = "/data:/data".parse().expect("valid");
        assert!(!b.read_only);
        for bad in [
            "data:/data",
            "/data:data",
            "/data",
            "/data:/data:rx",
            "/a:/b:ro:x",
            "/data:/",
            "/data:/x/../etc",
        ] {
            assert!(bad.parse::<Bind>().is_err(), "{bad} accepted");
        }
    }
}
