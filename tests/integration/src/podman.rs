//! podman from Debian's packages as a real CNI runtime, kept inside a
//! world: its own storage, run and configuration directories, the CNI
//! backend with ferry-cni installed by `ferry cni install`, and a busybox
//! image made here (no registry). Dropping it removes its containers. For
//! the bench, also podman on Debian's own bridge and portmap plugins in a
//! namespace of its own.
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

use crate::{World, busybox_tar, check, in_netns, output};

/// The network podman 4 writes for its CNI backend (`podman`, on
/// cni-podman0), as Debian's plugins run it.
const DEBIAN_BRIDGE: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "podman",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni-podman0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "10.88.0.0/16", "gateway": "10.88.0.1" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "firewall" },
    { "type": "tuning" }
  ]
}
"#;

/// The image every podman test runs (see [`busybox_tar`]).
pub const IMAGE: &str = "localhost/ferry-busybox:test";

pub struct Podman {
    dir: PathBuf,
    conf: PathBuf,
    /// The network namespace podman runs in (its host ports, and for
    /// Debian's plugins their bridge and rules), else the caller's.
    netns: Option<PathBuf>,
}

impl Podman {
    /// podman for `world`, with the CNI network `name` on ferry network
    /// `network`, and the test image imported (see [`Podman::beside`]).
    pub fn new(world: &World, name: &str, network: &str) -> Self {
        let podman = Self::beside(world, name, network);
        podman.import_image();
        podman
    }

    /// podman for `world` running in its host namespace, beside ferryd as
    /// on a real host (its host-port reservations share ferryd's
    /// namespace), with the CNI network `name` on ferry network `network`;
    /// no image.
    pub fn beside(world: &World, name: &str, network: &str) -> Self {
        let dir = world.dir.join("podman");
        install(world, &dir, name, network);
        Self::configured(&dir, &dir.join("cni-bin"), Some(world.host_ns_path()))
    }

    /// podman in the namespace at `netns` with its default network made of
    /// Debian's CNI plugins (bridge, portmap, firewall, tuning: what podman
    /// 4 writes for its CNI backend), state under `dir`; no image.
    pub fn with_debian_bridge(dir: &Path, netns: &Path) -> Self {
        let net_conf = dir.join("cni-conf");
        std::fs::create_dir_all(&net_conf).expect("cni conf dir");
        std::fs::write(net_conf.join("87-podman.conflist"), DEBIAN_BRIDGE).expect("conflist");
        Self::configured(dir, Path::new("/usr/lib/cni"), Some(netns.to_owned()))
    }

    fn configured(dir: &Path, plugins: &Path, netns: Option<PathBuf>) -> Self {
        let net_conf = dir.join("cni-conf");
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
        std::fs::create_dir_all(dir).expect("podman dir");
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
                bin = plugins.display(),
                net = net_conf.display(),
            ),
        )
        .expect("containers.conf");
        Self {
            dir: dir.to_owned(),
            conf,
            netns,
        }
    }

    /// A podman command on this world's storage and configuration.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => in_netns(ns, "podman", &[]),
            None => Command::new("podman"),
        };
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
        self.import(&tar, IMAGE);
    }

    /// `podman import TAR NAME`: a root filesystem tarball as an image.
    pub fn import(&self, tar: &Path, name: &str) {
        self.ok(&["import", &tar.display().to_string(), name]);
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
