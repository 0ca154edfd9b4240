//! Binaries the benchmarks compare against that no Debian package installs
//! safely: Docker's `docker-proxy` is taken out of the docker.io package
//! (downloaded, not installed: installing it could start dockerd, which
//! rewrites the machine's firewall).

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

use crate::{run_cmd, step, workspace_root};

/// `target/tools/docker-proxy`, fetched once.
pub fn docker_proxy() -> anyhow::Result<PathBuf> {
    let tools = workspace_root().join("target/tools");
    let binary = tools.join("docker-proxy");
    if binary.exists() {
        return Ok(binary);
    }
    step("bench: fetching docker-proxy from Debian's docker.io package (not installing it)");
    let download = tools.join("download");
    std::fs::create_dir_all(&download)?;
    run_cmd(
        Command::new("apt-get")
            .current_dir(&download)
            .args(["download", "-q", "docker.io"]),
    )?;
    let deb = std::fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = download.join("x");
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::copy(unpacked.join("usr/sbin/docker-proxy"), &binary)
        .context("docker-proxy not in the package")?;
    std::fs::remove_dir_all(&download)?;
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
