//! A real Docker engine (Debian's docker.io, unpacked by `tools`) in the
//! bench's own namespaces, for `docker run -p` side by side with ferry.
//!
//! dockerd runs in a network namespace of its own, so docker0, its iptables
//! rules and `ip_forward` stay there, and in a private mount namespace, so
//! its overlay2 and namespace mounts do too. That mount namespace gets a
//! sysfs of the network namespace (as `ip netns exec` does) with the
//! machine's cgroup hierarchies bound back in, which dockerd's cgroupfs
//! driver needs (`--cgroup-parent` keeps its cgroups under a name of the
//! bench's). The image is imported from a tarball of the host's nginx and
//! the libraries it loads; no registry is involved. Dropping the engine
//! removes its containers, stops dockerd by PID and removes its directories
//! and cgroups.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use ferry_integration::{Background, TempNetns, unique_name, wait_until};

use super::tools;
use crate::{capture, step};

/// The image every engine container runs.
pub const IMAGE: &str = "ferry-bench-nginx";

/// What the image holds besides the libraries these load.
const IMAGE_BINARIES: [&str; 2] = ["/usr/sbin/nginx", "/usr/bin/taskset"];

pub struct DockerEngine {
    /// The namespace playing Docker's host: docker0, iptables, the uplink.
    pub host: TempNetns,
    /// Data root, exec root, socket, image tarball.
    dir: PathBuf,
    docker: PathBuf,
    socket: PathBuf,
    /// `--cgroup-parent`: a directory of that name in every hierarchy.
    cgroup_parent: String,
    daemon: Option<Background>,
}

impl DockerEngine {
    /// Starts dockerd in a new namespace with its state under `out_dir`,
    /// and waits until it answers.
    pub fn start(out_dir: &Path) -> anyhow::Result<Self> {
        let root = tools::docker_root()?;
        let tag = unique_name("fye");
        let host = TempNetns::new(&format!("{tag}-h"));
        host.ip(&["link", "set", "lo", "up"]);
        let dir = out_dir.join(&tag);
        std::fs::create_dir_all(&dir)?;
        let mut engine = Self {
            host,
            socket: dir.join("docker.sock"),
            docker: root.join("usr/bin/docker"),
            dir,
            cgroup_parent: tag,
            daemon: None,
        };
        step("bench: starting Debian's dockerd in its own namespaces");
        let d = |p: &str| engine.dir.join(p).display().to_string();
        let cgroups = d("cgroups");
        let dockerd = [
            root.join("usr/sbin/dockerd").display().to_string(),
            format!("--data-root={}", d("data")),
            format!("--exec-root={}", d("exec")),
            format!("--pidfile={}", d("docker.pid")),
            format!("--host=unix://{}", engine.socket.display()),
            "--storage-driver=overlay2".into(),
            "--exec-opt=native.cgroupdriver=cgroupfs".into(),
            format!("--cgroup-parent={}", engine.cgroup_parent),
            "--bip=172.29.0.1/24".into(),
            format!(
                "--userland-proxy-path={}",
                root.join("usr/sbin/docker-proxy").display()
            ),
            format!("--init-path={}", root.join("usr/bin/docker-init").display()),
            "--log-level=warn".into(),
        ];
        // sysfs for this network namespace over /sys, the cgroup
        // hierarchies bound back below it, then dockerd.
        let script = format!(
            "set -e; mkdir -p {cgroups}; mount --rbind /sys/fs/cgroup {cgroups}; \
             mount -t sysfs sysfs /sys; mount --rbind {cgroups} /sys/fs/cgroup; exec {}",
            dockerd.join(" ")
        );
        let path = std::env::var("PATH").unwrap_or_default();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", engine.host.path().display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .env(
                "PATH",
                format!(
                    "{}:{}:{path}",
                    root.join("usr/bin").display(),
                    root.join("usr/sbin").display()
                ),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(engine.dir.join("dockerd.log"))?);
        engine.daemon = Some(Background::spawn(cmd).with_grace(Duration::from_secs(15)));
        let up = wait_until(Duration::from_secs(30), || {
            engine
                .docker(&["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !up {
            let log = std::fs::read_to_string(engine.dir.join("dockerd.log")).unwrap_or_default();
            anyhow::bail!("dockerd did not come up:\n{log}");
        }
        engine.import_image()?;
        Ok(engine)
    }

    /// A `docker` command (Debian's client, matching the daemon) for this
    /// engine.
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.docker);
        cmd.arg(format!("--host=unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    /// Imports [`IMAGE`]: the host's nginx and taskset with every library
    /// `ldd` names, plus the passwd/group entries nginx looks up.
    fn import_image(&self) -> anyhow::Result<()> {
        let mut paths: Vec<String> = IMAGE_BINARIES.iter().map(|s| (*s).to_owned()).collect();
        for binary in IMAGE_BINARIES {
            let libs = capture(Command::new("ldd").arg(binary))?;
            paths.extend(
                libs.split_whitespace()
                    .filter(|w| w.starts_with('/'))
                    .map(str::to_owned),
            );
        }
        paths.sort();
        paths.dedup();
        let etc = self.dir.join("image/etc");
        std::fs::create_dir_all(&etc)?;
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )?;
        std::fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
        let tarball = self.dir.join("image.tar");
        // -h: store what the library symlinks point at, under their names.
        capture(
            Command::new("tar")
                .arg("-chf")
                .arg(&tarball)
                .arg("-C")
                .arg(self.dir.join("image"))
                .arg("etc")
                .arg("-C")
                .arg("/")
                .args(paths.iter().map(|p| p.trim_start_matches('/'))),
        )?;
        let tarball = tarball.to_str().context("utf-8 path")?;
        capture(&mut self.docker(&["import", tarball, IMAGE]))?;
        Ok(())
    }

    /// `docker run -d -p <publish> -v <out_dir>:<out_dir> IMAGE taskset -c 0
    /// nginx -c <conf>`: the bench directory is bind-mounted, as for ferry.
    pub fn run_nginx(&self, out_dir: &Path, publish: &str, conf: &str) -> anyhow::Result<String> {
        let dir = out_dir.to_str().context("utf-8 path")?;
        let volume = format!("{dir}:{dir}");
        let id = capture(&mut self.docker(&[
            "run", "-d", "-p", publish, "-v", &volume, IMAGE, "taskset", "-c", "0", "nginx", "-c",
            conf,
        ]))?;
        Ok(id.trim().to_owned())
    }
}

impl Drop for DockerEngine {
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
        // is in; up to 15 s for a clean shutdown.
        drop(self.daemon.take());
        // cgroup v1: one directory per hierarchy; v2: one at the top.
        let top = Path::new("/sys/fs/cgroup");
        let hierarchies = std::fs::read_dir(top).into_iter().flatten().flatten();
        for dir in hierarchies.map(|h| h.path()).chain([top.to_owned()]) {
            let _ = std::fs::remove_dir(dir.join(&self.cgroup_parent));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
