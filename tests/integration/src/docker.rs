//! A real Docker engine (Debian's docker.io 20.10, unpacked, never
//! installed) in a network namespace of the caller's: the benchmarks'
//! own, or a world's host namespace, where ferryd serves it the network
//! plugin.
//!
//! dockerd runs in a private mount namespace, which a holder process keeps
//! for restarts (`--live-restore` needs the same one): it gets a sysfs of
//! its network namespace (as `ip netns exec` does) with the machine's
//! cgroup hierarchies bound back in (its cgroupfs driver needs them;
//! `--cgroup-parent` keeps its cgroups under a name of the caller's), a
//! /run of its own (containerd's and the shims' sockets stay there), and
//! the plugin directory it is given at /run/docker/plugins. Dropping it
//! removes its containers, stops dockerd by PID, then the holder, and
//! removes its directories and cgroups.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{Background, unique_name, wait_until};

/// The Debian packages unpacked into [`docker_root`].
const DOCKER_PACKAGES: [&str; 4] = ["docker.io", "containerd", "runc", "tini"];

/// `target/tools/docker-root`: Debian's Docker packages unpacked, fetched
/// once (a marker file says the unpacking finished). Installing docker.io
/// would start dockerd in the machine's own namespace, where it rewrites
/// the firewall.
pub fn docker_root() -> Result<PathBuf, String> {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools");
    let root = tools.join("docker-root");
    let done = root.join(".unpacked");
    if done.exists() {
        return Ok(root);
    }
    // Tests start engines side by side: one fetches, the others wait.
    std::fs::create_dir_all(&tools).map_err(|e| e.to_string())?;
    let lock = std::fs::File::create(tools.join(".docker-root.lock")).map_err(|e| e.to_string())?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking target/tools: {e}"))?;
    if done.exists() {
        return Ok(root);
    }
    let download = tools.join("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(|e| e.to_string())?;
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(Command::new("apt-get")
        .current_dir(&download)
        .args(["download", "-q"])
        .args(DOCKER_PACKAGES))?;
    let debs = std::fs::read_dir(&download).map_err(|e| e.to_string())?;
    for deb in debs.flatten().map(|e| e.path()) {
        if deb.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        }
    }
    std::fs::remove_dir_all(&download).map_err(|e| e.to_string())?;
    std::fs::write(&done, DOCKER_PACKAGES.join("\n")).map_err(|e| e.to_string())?;
    Ok(root)
}

pub struct Dockerd {
    /// Data root, exec root, socket, logs.
    dir: PathBuf,
    netns: PathBuf,
    extra: Vec<String>,
    docker: PathBuf,
    socket: PathBuf,
    /// `--cgroup-parent`: a directory of that name in every hierarchy.
    cgroup_parent: String,
    daemon: Option<Background>,
    /// Holds dockerd's mount namespace, so that a restarted dockerd finds
    /// its running containers' mounts (`--live-restore`). Dropped last.
    holder: Option<Background>,
}

impl Dockerd {
    /// Starts dockerd in the network namespace at `netns` with its state
    /// under `dir`, plugins found in `plugins`, and `extra` flags; waits
    /// until it answers.
    pub fn start(
        netns: &Path,
        dir: &Path,
        plugins: Option<&Path>,
        extra: &[&str],
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let root = docker_root()?;
        let mut dockerd = Self {
            dir: dir.to_owned(),
            netns: netns.to_owned(),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            docker: root.join("usr/bin/docker"),
            socket: dir.join("docker.sock"),
            cgroup_parent: unique_name("fyd"),
            daemon: None,
            holder: None,
        };
        dockerd.hold_mounts(plugins)?;
        dockerd.spawn()?;
        Ok(dockerd)
    }

    /// The mount namespace dockerd runs in: sysfs for its network
    /// namespace over /sys, the cgroup hierarchies bound back below it, a
    /// /run of its own, the plugins; a process keeps it until the drop.
    fn hold_mounts(&mut self, plugins: Option<&Path>) -> Result<(), String> {
        let cgroups = self.dir.join("cgroups").display().to_string();
        let plugins = match plugins {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                format!(
                    "mkdir -p /run/docker/plugins; mount --bind {} /run/docker/plugins; ",
                    dir.display()
                )
            }
            None => String::new(),
        };
        let ready = self.dir.join("mounts.ready");
        let script = format!(
            "set -e; mkdir -p {cgroups}; mount --rbind /sys/fs/cgroup {cgroups}; \
             mount -t sysfs sysfs /sys; mount --rbind {cgroups} /sys/fs/cgroup; \
             mount -t tmpfs ferry-docker-run /run; {plugins}touch {}; exec sleep infinity",
            ready.display()
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.holder = Some(Background::spawn(cmd));
        if wait_until(Duration::from_secs(10), || ready.exists()) {
            Ok(())
        } else {
            Err("dockerd's mount namespace was not set up".into())
        }
    }

    /// Starts (or starts again) the daemon process in the held namespaces.
    fn spawn(&mut self) -> Result<(), String> {
        let root = docker_root()?;
        let holder = self
            .holder
            .as_ref()
            .ok_or("no mount namespace for dockerd")?
            .id();
        // The holder is `unshare`, which exec'd `sh`, which exec'd `sleep`:
        // one process, in the new mount namespace.
        let d = |p: &str| self.dir.join(p).display().to_string();
        let path = std::env::var("PATH").unwrap_or_default();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg(format!("--mount=/proc/{holder}/ns/mnt"))
            .arg(root.join("usr/sbin/dockerd"))
            .args([
                format!("--data-root={}", d("data")),
                format!("--exec-root={}", d("exec")),
                format!("--pidfile={}", d("docker.pid")),
                format!("--host=unix://{}", self.socket.display()),
                "--storage-driver=overlay2".into(),
                "--exec-opt=native.cgroupdriver=cgroupfs".into(),
                format!("--cgroup-parent={}", self.cgroup_parent),
                "--bip=172.29.0.1/24".into(),
                format!(
                    "--userland-proxy-path={}",
                    root.join("usr/sbin/docker-proxy").display()
                ),
                format!("--init-path={}", root.join("usr/bin/docker-init").display()),
                "--log-level=warn".into(),
            ])
            .args(&self.extra)
            .env(
                "PATH",
                format!(
                    "{}:{}:{path}",
                    root.join("usr/bin").display(),
                    root.join("usr/sbin").display()
                ),
            )
            .stdout(Stdio::null())
            .stderr(log);
        self.daemon = Some(Background::spawn(cmd).with_grace(Duration::from_secs(15)));
        let up = wait_until(Duration::from_secs(30), || {
            self.docker(&["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if up {
            Ok(())
        } else {
            Err(format!("dockerd did not come up:\n{}", self.log()))
        }
    }

    /// Stops dockerd (SIGTERM, as a restart or an upgrade would) and starts
    /// it again with the same flags.
    pub fn restart(&mut self) -> Result<(), String> {
        drop(self.daemon.take());
        self.spawn()
    }

    /// What dockerd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// A `docker` command (Debian's client, matching the daemon).
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg(format!("--host=unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    /// Runs `docker`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = crate::output(&mut self.docker(args));
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self
            .docker(&["ps", "-aq"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]).output();
        }
        // SIGTERM to dockerd's process group, which its managed containerd
        // is in; up to 15 s for a clean shutdown. Then the mount namespace.
        drop(self.daemon.take());
        drop(self.holder.take());
        // cgroup v1: one directory per hierarchy; v2: one at the top.
        let top = Path::new("/sys/fs/cgroup");
        let hierarchies = std::fs::read_dir(top).into_iter().flatten().flatten();
        for dir in hierarchies.map(|h| h.path()).chain([top.to_owned()]) {
            let _ = std::fs::remove_dir(dir.join(&self.cgroup_parent));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
