//! podman from Debian's packages as a real CNI runtime, kept inside a
//! world: its own storage, run and configuration directories, the CNI
//! backend with ferry-cni installed by `ferry cni install`, and a busybox
//! image made here (no registry). Dropping it removes its containers.
//! runc, not crun: crun refuses this machine's hybrid cgroups.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// `ferry cni install` of network `name` into `dir`'s plugin and
/// configuration directories.
fn install(world: &World, dir: &Path, name: &str, network: &str) {
    let out = world.ferry_ok(&[
        "cni",
        "install",
        "--bin-dir",
        &dir.join("cni-bin").display().to_string(),
        "--conf-dir",
        &dir.join("cni-conf").display().to_string(),
        "--name",
        name,
        "--network",
        network,
    ]);
    assert!(out.contains(&format!("50-{name}.conflist")), "{out}");
}

use crate::{World, busybox_tar, check, output};

/// The image every podman test runs (see [`busybox_tar`]).
pub const IMAGE: &str = "localhost/ferry-busybox:test";

pub struct Podman {
    dir: PathBuf,
    conf: PathBuf,
}

impl Podman {
    /// podman for `world`, with the CNI network `name` on ferry network
    /// `network`, and the test image imported.
    pub fn new(world: &World, name: &str, network: &str) -> Self {
        let dir = world.dir.join("podman");
        let (bin, net_conf) = (dir.join("cni-bin"), dir.join("cni-conf"));
        install(world, &dir, name, network);
        // podman raises the open-files and process limits to values root
        // may not set here (no CAP_SYS_RESOURCE): ask for the hard limits.
        let hard = |resource| {
            nix::sys::resource::getrlimit(resource)
                .map(|(_, hard)| hard)
                .unwrap_or(4096)
        };
        let nofile = hard(nix::sys::resource::Resource::RLIMIT_NOFILE);
        // (A process limit at the hard one is refused all the same; podman's
        // own default is far above what a test needs.)
        let nproc = hard(nix::sys::resource::Resource::RLIMIT_NPROC).min(4096);
        let conf = dir.join("containers.conf");
        std::fs::create_dir_all(&dir).expect("podman dir");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 runtime = \"runc\"\n\
                 tmp_dir = \"{tmp}\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 cni_plugin_dirs = [\"{bin}\"]\n\
                 network_config_dir = \"{net}\"\n",
                tmp = dir.join("tmp").display(),
                bin = bin.display(),
                net = net_conf.display(),
            ),
        )
        .expect("containers.conf");
        let podman = Self { dir, conf };
        podman.import_image();
        podman
    }

    /// A podman command on this world's storage and configuration.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(args);
        cmd
    }

    /// Runs podman; its output, success or not.
    pub fn run(&self, args: &[&str]) -> Output {
        output(&mut self.cmd(args))
    }

    /// Runs podman, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        check(&mut self.cmd(args)).trim().to_owned()
    }

    /// `podman inspect -f FORMAT NAME`.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "-f", format, name])
    }

    /// Imports the busybox image (see [`busybox_tar`]) as [`IMAGE`].
    fn import_image(&self) {
        let tar = busybox_tar(&self.dir);
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// Another CNI network for `ferry network`, beside the first.
    pub fn add_network(&self, world: &World, name: &str, network: &str) {
        install(world, &self.dir, name, network);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Its containers, their network namespaces (under /run/netns) and
        // CNI attachments; the storage goes with the world's directory.
        let _ = self.cmd(&["rm", "-af", "-t", "0"]).output();
    }
}
