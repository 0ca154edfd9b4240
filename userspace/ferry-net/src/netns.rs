//! Network namespaces: entering one for the current thread only, and
//! reaching a process's namespace.

use std::{
    fs::File,
    io,
    marker::PhantomData,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};
use tracing::error;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace: {0}")]
    Enter(#[source] nix::Error),
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
}

/// Keeps the current thread inside another network namespace until dropped,
/// then moves it back. `!Send`: namespaces belong to threads, so the guard
/// must be dropped on the thread that created it. Never hold one across an
/// `.await`.
pub struct NetNsGuard {
    original: File,
    _not_send: PhantomData<*const ()>,
}

impl NetNsGuard {
    pub fn enter(target: BorrowedFd<'_>) -> Result<Self, NetnsError> {
        let original = open(Path::new("/proc/thread-self/ns/net"))?;
        setns(target, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
        Ok(Self {
            original,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(err) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stranded in a container's namespace would configure
            // the wrong interfaces from then on; stopping is the safe choice.
            error!(%err, "cannot return to the original network namespace; aborting");
            std::process::abort();
        }
    }
}

/// Opens a namespace file (e.g. `/proc/<pid>/ns/net`).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Opens `path` and checks that it is a network namespace (a bind mount
/// under /run/netns, or /proc/<pid>/ns/net), not any other file.
pub fn open_net(path: &Path) -> Result<File, NetnsError> {
    let file = open(path)?;
    // NS_GET_NSTYPE (linux/nsfs.h: _IO(0xb7, 0x3)) answers the namespace's
    // CLONE_NEW* type; any other file fails it.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and the fd is open for the call.
    let kind = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// The network namespace of a process.
pub fn of_pid(pid: u32) -> Result<File, NetnsError> {
    open(&PathBuf::from(format!("/proc/{pid}/ns/net")))
}

/// Writes a sysctl of the *current thread's* network namespace (files under
/// /proc/sys/net follow the namespace of the thread that opens them). A
/// missing file (e.g. IPv6 compiled out) is not an error.
pub fn write_net_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/net/{key}");
    match std::fs::write(&path, value) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Settings of `lo` that let the host stack take the replies
/// `local_ingress` connections get back through `lo`: unlike a loopback
/// packet from a local socket, such a packet arrives without a route
/// attached and is routed like one from a wire, where 127/8 destinations
/// (`route_localnet`) and local source addresses (`accept_local`) are
/// martians. Only on `lo`: nothing from outside arrives there.
pub const LOOPBACK_SYSCTLS: [&str; 2] =
    ["ipv4/conf/lo/route_localnet", "ipv4/conf/lo/accept_local"];

/// Sets (or clears) [`LOOPBACK_SYSCTLS`] in the current thread's namespace.
pub fn loopback_hairpin(enabled: bool) -> io::Result<()> {
    let value = if enabled { "1" } else { "0" };
    LOOPBACK_SYSCTLS
        .iter()
        .try_for_each(|key| write_net_sysctl(key, value))
}

/// The cookie of the current thread's network namespace (what
/// `bpf_get_netns_cookie` returns for sockets there).
pub fn current_cookie() -> io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
