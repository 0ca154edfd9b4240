//! Binaries the benchmarks compare against that no Debian package installs
//! safely: Docker's `docker-proxy`, and the Docker engine itself (dockerd,
//! containerd, runc, docker-init), are taken out of Debian's packages
//! (downloaded and unpacked, not installed: installing docker.io would start
//! dockerd in the machine's own namespace, where it rewrites the firewall).

use std::{
    fs::File,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    process::Command,
};

use anyhow::Context as _;

use crate::{step, workspace_root};

/// Debian's Docker packages unpacked (once) under target/tools.
pub fn docker_root() -> anyhow::Result<PathBuf> {
    let root = workspace_root().join("target/tools/docker-root");
    if !root.join(".unpacked").exists() {
        step(
            "bench: fetching Debian's docker.io, containerd, runc and tini (unpacked, not installed)",
        );
    }
    ferry_integration::docker::docker_root().map_err(anyhow::Error::msg)
}

/// Debian's `docker-proxy`, from [`docker_root`].
pub fn docker_proxy() -> anyhow::Result<PathBuf> {
    let binary = docker_root()?.join("usr/sbin/docker-proxy");
    anyhow::ensure!(binary.exists(), "docker-proxy not in the docker.io package");
    Ok(binary)
}

/// Gives `cmd` (a docker-proxy) the status pipe dockerd passes it on fd 3:
/// the proxy reports "0" there once it listens, "1<error>" if it cannot,
/// and then closes fd 3 (without the pipe that fd is its own listening
/// socket). Returns the reading end.
pub fn with_status_pipe(cmd: &mut Command) -> anyhow::Result<File> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both fds were just created and are owned only here.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: dup2 is async-signal-safe; `write` lives in the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(write.as_raw_fd(), 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(read)
}

/// Waits for docker-proxy's start report on its status pipe.
pub fn await_status(mut pipe: File) -> anyhow::Result<()> {
    let mut status = String::new();
    pipe.read_to_string(&mut status)
        .context("docker-proxy status pipe")?;
    anyhow::ensure!(
        status.starts_with('0'),
        "docker-proxy failed to start: {status:?}"
    );
    Ok(())
}
