//! Checks ferryd makes before touching anything, each failing with the
//! problem and the fix: root, a kernel that accepts BPF, a bpf filesystem.

use std::{io, path::Path};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::geteuid,
};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("ferryd must run as root (it creates namespaces, veths and BPF programs); try sudo")]
    NotRoot,
    #[error(
        "no BPF support: the kernel refused bpf(BPF_MAP_CREATE): {0}; ferryd needs a kernel with \
         CONFIG_BPF_SYSCALL and the CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN capabilities"
    )]
    NoBpf(#[source] io::Error),
    #[error("no bpf filesystem at {path} and it cannot be mounted: {source}")]
    Bpffs {
        path: String,
        #[source]
        source: nix::Error,
    },
    #[error("pin directory {0} is not on a bpf filesystem (it must be under /sys/fs/bpf)")]
    PinDirNotBpffs(String),
}

pub fn require_root() -> Result<(), PreflightError> {
    if geteuid().is_root() {
        Ok(())
    } else {
        Err(PreflightError::NotRoot)
    }
}

/// Raises the soft limit on open files to the hard limit: ferryd holds a
/// socket per published host port, a pidfd per container and map fds, and
/// the usual soft limit (1024) would cap publishes at about a thousand.
/// Returns the new limit.
pub fn raise_open_files() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Creates (and at once closes) a one-entry array map: the cheapest proof
/// that this process may use BPF at all.
pub fn require_bpf() -> Result<(), PreflightError> {
    // The first fields of `union bpf_attr` for BPF_MAP_CREATE.
    #[repr(C)]
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    };
    // SAFETY: bpf(2) reads `size` bytes of a valid, initialised attr struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreateAttr,
            size_of::<MapCreateAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(PreflightError::NoBpf(io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` lives on a bpffs, mounting one at /sys/fs/bpf if the
/// machine has none (Debian does not mount it by default).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), PreflightError> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| PreflightError::Bpffs {
            path: root.display().to_string(),
            source,
        })?;
    }
    let mut probe = pin_dir;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    if is_bpffs(probe) {
        Ok(())
    } else {
        Err(PreflightError::PinDirNotBpffs(
            pin_dir.display().to_string(),
        ))
    }
}
