//! A real Docker engine (Debian's docker.io, see
//! `ferry_integration::docker`) in the bench's own network namespace, for
//! `docker run -p` side by side with ferry: docker0, its iptables rules
//! and `ip_forward` stay there. The image is imported from a tarball of the
//! host's nginx and the libraries it loads; no registry is involved.

use std::{path::Path, process::Command};

use anyhow::Context as _;
use ferry_integration::{TempNetns, World, docker::Dockerd, unique_name};

use crate::{capture, step};

/// The image every engine container runs.
pub const IMAGE: &str = "ferry-bench-nginx";

/// What the image holds besides the libraries these load.
const IMAGE_BINARIES: [&str; 2] = ["/usr/sbin/nginx", "/usr/bin/taskset"];

pub struct DockerEngine {
    /// dockerd, dropped (containers removed, daemon stopped) before its
    /// namespace goes.
    dockerd: Dockerd,
    /// The namespace playing Docker's host (docker0, iptables, the
    /// uplink) when the engine has one of its own.
    pub host: Option<TempNetns>,
}

impl DockerEngine {
    /// Starts dockerd in a new namespace with its state under `out_dir`,
    /// and waits until it answers.
    pub fn start(out_dir: &Path) -> anyhow::Result<Self> {
        let tag = unique_name("fye");
        let host = TempNetns::new(&format!("{tag}-h"));
        host.ip(&["link", "set", "lo", "up"]);
        step("bench: starting Debian's dockerd in its own namespaces");
        let dockerd = Dockerd::start(&host.path(), &out_dir.join(&tag), None, &[])
            .map_err(anyhow::Error::msg)?;
        let engine = Self {
            dockerd,
            host: Some(host),
        };
        engine.import_image()?;
        Ok(engine)
    }

    /// Starts dockerd in `world`'s host namespace, where it finds ferryd's
    /// network plugin. Drop it before the world: removing its containers
    /// asks the plugin.
    pub fn start_in(world: &World, out_dir: &Path) -> anyhow::Result<Self> {
        step("bench: starting Debian's dockerd beside ferryd (ferry as its network plugin)");
        let dockerd = Dockerd::start(
            &world.host_ns_path(),
            &out_dir.join(unique_name("fye")),
            Some(&world.dir.join("plugins")),
            &[],
        )
        .map_err(anyhow::Error::msg)?;
        let engine = Self {
            dockerd,
            host: None,
        };
        engine.import_image()?;
        Ok(engine)
    }

    /// `docker network create -d ferry --ipam-driver ferry NAME`.
    pub fn network_create(&self, name: &str) -> anyhow::Result<()> {
        capture(&mut self.docker(&[
            "network",
            "create",
            "-d",
            "ferry",
            "--ipam-driver",
            "ferry",
            name,
        ]))?;
        Ok(())
    }

    /// A `docker` command (Debian's client, matching the daemon) for this
    /// engine.
    pub fn docker(&self, args: &[&str]) -> Command {
        self.dockerd.docker(args)
    }

    /// Imports [`IMAGE`] (see [`nginx_image_tar`]).
    fn import_image(&self) -> anyhow::Result<()> {
        let tarball = nginx_image_tar(self.dockerd.dir())?;
        let tarball = tarball.to_str().context("utf-8 path")?;
        capture(&mut self.docker(&["import", tarball, IMAGE]))?;
        Ok(())
    }

    /// `docker run -d -p <publish> -v <out_dir>:<out_dir> IMAGE taskset -c 0
    /// nginx -c <conf>`: the bench directory is bind-mounted, as for ferry.
    pub fn run_nginx(&self, out_dir: &Path, publish: &str, conf: &str) -> anyhow::Result<String> {
        self.run_nginx_on(out_dir, None, publish, conf)
    }

    /// [`DockerEngine::run_nginx`] on `network` (`--network`), if given.
    pub fn run_nginx_on(
        &self,
        out_dir: &Path,
        network: Option<&str>,
        publish: &str,
        conf: &str,
    ) -> anyhow::Result<String> {
        let dir = out_dir.to_str().context("utf-8 path")?;
        let volume = format!("{dir}:{dir}");
        let mut args = vec!["run", "-d", "-p", publish, "-v", &volume];
        if let Some(network) = network {
            args.extend(["--network", network]);
        }
        args.extend([IMAGE, "taskset", "-c", "0", "nginx", "-c", conf]);
        let id = capture(&mut self.docker(&args))?;
        Ok(id.trim().to_owned())
    }
}

/// A root filesystem tarball for the engines' nginx image, made under
/// `dir`: the host's nginx and taskset with every library `ldd` names,
/// plus the passwd/group entries nginx looks up.
pub fn nginx_image_tar(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
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
    let etc = dir.join("image/etc");
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(etc.join("group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let tarball = dir.join("image.tar");
    // -h: store what the library symlinks point at, under their names.
    capture(
        Command::new("tar")
            .arg("-chf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.join("image"))
            .arg("etc")
            .arg("-C")
            .arg("/")
            .args(paths.iter().map(|p| p.trim_start_matches('/'))),
    )?;
    Ok(tarball)
}
