//! User namespaces for `ferryd --userns-remap`: root in a container is an
//! unprivileged range of host ids.
//!
//! ferryd creates one user namespace, mapping container ids 0..N to the
//! host range (see `create`), and hands it to each container's monitor
//! (see `container`). The workload
//! builds its root as host root, with the image's layers (or the host's
//! root, or `--rootfs`) seen through idmapped mounts: files owned by host
//! root appear owned by the range's first id, so container root owns them
//! inside and copy-up writes them as that id, with nothing copied or
//! chowned per container. Only then does the workload join the user
//! namespace (see `enter`) and drop to the container's user in it.
//!
//! The other namespaces (network, PID, UTS, IPC, mount) stay owned by the
//! host's user namespace, so container root has no capability over them:
//! it cannot bind below port 1024 or open raw sockets unless the network
//! namespace allows it (ferryd sets `ip_unprivileged_port_start` and
//! `ping_group_range`, as Docker does for every container).

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

/// Container ids 0..count are host ids uid..uid+count (and gid..).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl IdMap {
    /// The host id of container id `id` (root: the range's start).
    pub fn host_uid(&self, id: u32) -> u32 {
        self.uid + id
    }

    pub fn host_gid(&self, id: u32) -> u32 {
        self.gid + id
    }
}

/// The hidden first argument that turns `ferryd` into the holder of a new
/// user namespace (see `create`).
pub const HOLDER_ARG: &str = "__userns";

/// Entry point of the holder: it only waits, in its new user namespace,
/// until its stdin closes.
pub fn holder_main() -> ! {
    let _ = io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0)
}

/// Creates a user namespace with `map` and returns it as an fd: a holder
/// process (`ferryd __userns`) unshares it and waits while its maps are
/// written and the namespace is opened. Containers share it: their other
/// namespaces are the host's user namespace's anyway (see the module).
pub fn create(map: &IdMap) -> Result<OwnedFd, String> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(HOLDER_ARG)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    // SAFETY: unshare is async-signal-safe; it runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| unshare(CloneFlags::CLONE_NEWUSER).map_err(io::Error::from));
    }
    let mut holder = cmd
        .spawn()
        .map_err(|e| format!("cannot create a user namespace: {e}"))?;
    let opened = write_maps(holder.id() as i32, map);
    drop(holder.stdin.take());
    let _ = holder.wait();
    opened
}

fn write_maps(pid: i32, map: &IdMap) -> Result<OwnedFd, String> {
    for (file, start) in [("uid_map", map.uid), ("gid_map", map.gid)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, format!("0 {start} {}\n", map.count))
            .map_err(|e| format!("writing {path}: {e}"))?;
    }
    let path = format!("/proc/{pid}/ns/user");
    File::open(&path)
        .map(OwnedFd::from)
        .map_err(|e| format!("opening {path}: {e}"))
}

/// Joins the user namespace: the caller gets every capability in it and
/// keeps its host ids, which it then switches to mapped ones.
pub fn enter(userns: BorrowedFd) -> Result<(), String> {
    setns(userns, CloneFlags::CLONE_NEWUSER).map_err(|e| format!("joining the user namespace: {e}"))
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Mounts `source` (a directory of the host) on `target` as seen through
/// `userns`'s id map: a copy of its mount, idmapped, moved into place.
pub fn idmapped_bind(source: &Path, target: &Path, userns: BorrowedFd) -> Result<(), String> {
    let fail = |what: &str| {
        format!(
            "{what} {}: {}",
            source.display(),
            io::Error::last_os_error()
        )
    };
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("NUL byte in {}", p.display()))
    };
    let (source_c, target_c) = (c(source)?, c(target)?);
    // SAFETY: open_tree reads a NUL-terminated path and returns a new fd.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(fail("cloning the mount of"));
    }
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads one mount_attr of the size given.
    let set = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if set < 0 {
        return Err(fail("idmapping"));
    }
    // SAFETY: move_mount attaches the detached mount `tree` at the
    // NUL-terminated `target`.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(fail("mounting the idmapped"));
    }
    Ok(())
}

/// The user `--userns-remap default` uses, created if missing (Docker's is
/// `dockremap`).
pub const DEFAULT_USER: &str = "ferryremap";
/// Ids in a range ferry adds to /etc/subuid and /etc/subgid.
const RANGE: u32 = 65536;
/// Where added ranges start at the earliest (below: the host's own users).
const FIRST_SUBORDINATE: u32 = 100_000;

/// `--userns-remap default` or `USER[:GROUP]`: the first range of USER in
/// /etc/subuid and of GROUP in /etc/subgid. `default` creates the user
/// `ferryremap` and its ranges when they are missing.
pub fn remap(spec: &str) -> Result<IdMap, String> {
    let (user, group) = match spec {
        "default" => {
            ensure_default_user()?;
            (DEFAULT_USER, DEFAULT_USER)
        }
        other => other.split_once(':').unwrap_or((other, other)),
    };
    let (uid, uids) = first_range(Path::new("/etc/subuid"), user)?;
    let (gid, gids) = first_range(Path::new("/etc/subgid"), group)?;
    Ok(IdMap {
        uid,
        gid,
        count: uids.min(gids),
    })
}

/// Ranges of a subordinate id file: (name, start, count).
fn ranges(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|line| {
        let mut parts = line.trim().split(':');
        let name = parts.next()?;
        let start = parts.next()?.parse().ok()?;
        let count = parts.next()?.parse().ok()?;
        Some((name, start, count))
    })
}

fn first_range(file: &Path, name: &str) -> Result<(u32, u32), String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    // Entries may name the user or give its id.
    let id = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.to_string());
    ranges(&text)
        .find(|(n, _, count)| (*n == name || Some(*n) == id.as_deref()) && *count > 0)
        .map(|(_, start, count)| (start, count))
        .ok_or_else(|| {
            format!(
                "--userns-remap: {name} has no subordinate ids in {} (add a line \
                 {name}:<start>:65536)",
                file.display()
            )
        })
}

/// Creates the `ferryremap` system user and gives it a range in
/// /etc/subuid and /etc/subgid past every range there, if it lacks them.
fn ensure_default_user() -> Result<(), String> {
    let exists = nix::unistd::User::from_name(DEFAULT_USER)
        .map_err(|e| format!("looking up {DEFAULT_USER}: {e}"))?
        .is_some();
    if !exists {
        let out = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                DEFAULT_USER,
            ])
            .output()
            .map_err(|e| format!("cannot run useradd: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "useradd {DEFAULT_USER}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if ranges(&text).any(|(n, _, _)| n == DEFAULT_USER) {
            continue;
        }
        let start = ranges(&text)
            .map(|(_, start, count)| start.saturating_add(count))
            .fold(FIRST_SUBORDINATE, u32::max);
        let mut line = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            line.push('\n');
        }
        line.push_str(&format!("{DEFAULT_USER}:{start}:{RANGE}\n"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| format!("adding {DEFAULT_USER} to {file}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_parse_and_skip_junk() {
        let text = "alice:100000:65536\n# comment\nbad line\nbob:165536:65536\n";
        let all: Vec<_> = ranges(text).collect();
        assert_eq!(
            all,
            vec![("alice", 100_000, 65_536), ("bob", 165_536, 65_536)]
        );
    }
}
